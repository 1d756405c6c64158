//! Entry IDs: `namespace:name`, split at the first colon.

use std::fmt;
use std::str::FromStr;

/// An entry ID `namespace:name`, split at the FIRST colon: the namespace may contain
/// dots, the name may contain dots and further colons.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    full: String,
    colon: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entry ID {input:?}: {reason}")]
pub struct EntryIdError {
    pub input: String,
    pub reason: &'static str,
}

impl EntryId {
    pub fn namespace(&self) -> &str {
        &self.full[..self.colon]
    }
    pub fn name(&self) -> &str {
        &self.full[self.colon + 1..]
    }
    pub fn as_str(&self) -> &str {
        &self.full
    }
    /// Resolve a reference written inside `namespace`: a full ID as is, a bare name in
    /// the same namespace.
    pub fn resolve(reference: &str, namespace: &str) -> Result<EntryId, EntryIdError> {
        if reference.contains(':') {
            reference.parse()
        } else {
            format!("{namespace}:{reference}").parse()
        }
    }
}

impl FromStr for EntryId {
    type Err = EntryIdError;
    fn from_str(s: &str) -> Result<EntryId, EntryIdError> {
        let err = |reason| EntryIdError { input: s.to_string(), reason };
        let colon = s.find(':').ok_or_else(|| err("expected namespace:name"))?;
        if colon == 0 {
            return Err(err("empty namespace"));
        }
        if colon + 1 == s.len() {
            return Err(err("empty name"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(err("contains whitespace"));
        }
        Ok(EntryId { full: s.to_string(), colon })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_colon() {
        let id: EntryId = "app.sub:name.with:colon".parse().unwrap();
        assert_eq!(id.namespace(), "app.sub");
        assert_eq!(id.name(), "name.with:colon");
    }

    #[test]
    fn bare_names_resolve_in_namespace() {
        assert_eq!(EntryId::resolve("worker", "app").unwrap().as_str(), "app:worker");
        assert_eq!(EntryId::resolve("sys:host", "app").unwrap().as_str(), "sys:host");
    }

    #[test]
    fn rejects_malformed() {
        for s in ["noColon", ":x", "x:", "a b:c"] {
            assert!(s.parse::<EntryId>().is_err(), "{s}");
        }
    }
}
