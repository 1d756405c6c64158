//! One registry entry: its ID, kind, free-form `meta`, the kind's fields, where it was
//! defined, and its Lua source when it has one.

use std::path::PathBuf;
use std::sync::Arc;

use crate::EntryId;

/// A YAML mapping, as loaded.
pub type Data = serde_json::Map<String, serde_json::Value>;

/// Where an entry was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The YAML file, relative to the project directory.
    pub file: String,
    /// Line and column (1-based) where the entry's mapping starts.
    pub line: u64,
    pub column: u64,
    /// The last line that belongs to the entry (the next entry starts after it).
    pub end_line: u64,
}

/// An entry's `source`: a `file://` path (relative to its YAML file) and its text, or
/// inline text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What error messages call it: the file path relative to the project, or the entry
    /// ID for inline source.
    pub name: String,
    pub path: Option<PathBuf>,
    pub text: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: String,
    pub meta: Data,
    /// Every field other than `name`, `kind` and `meta`.
    pub fields: Data,
    pub origin: Origin,
    pub source: Option<Source>,
}

impl Entry {
    /// A field by dotted path: `host.workers`; `meta.x` looks into `meta`.
    pub fn get(&self, path: &str) -> Option<&serde_json::Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut cur = if first == "meta" {
            let key = parts.next()?;
            self.meta.get(key)?
        } else {
            self.fields.get(first)?
        };
        // (a number steps into a list: `contracts.0.contract`)
        for p in parts {
            cur = match cur {
                serde_json::Value::Array(items) => items.get(p.parse::<usize>().ok()?)?,
                other => other.as_object()?.get(p)?,
            };
        }
        Some(cur)
    }

    /// `meta.<key>` as a string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta.get(key).and_then(|v| v.as_str())
    }
}
