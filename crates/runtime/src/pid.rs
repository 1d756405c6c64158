//! PIDs: the identity of a process, its string form `{<host-id>|0x<hex>}` and the parser.
//!
//! A PID is two words: the node-wide sequence number (never reused in a node's life) and
//! the interned name of the host the process was spawned on. Interning keeps `Pid` `Copy`
//! and 16 bytes, so sending one around never allocates or touches a reference count.
//! This module never looks at the process table: a PID says nothing about liveness.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

/// An interned host name. Cheap to copy and compare; `as_str` gives the name back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(u32);

struct Interner {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

fn interner() -> &'static RwLock<Interner> {
    static I: OnceLock<RwLock<Interner>> = OnceLock::new();
    I.get_or_init(|| {
        // Index 0 is the empty host: the PID of "nobody" (`{|}`), used as the sender of
        // events the runtime itself raises (shutdown CANCEL).
        let empty: Arc<str> = Arc::from("");
        let mut index = HashMap::new();
        index.insert(empty.clone(), 0);
        RwLock::new(Interner { names: vec![empty], index })
    })
}

impl HostName {
    /// Intern `name` (idempotent).
    pub fn new(name: &str) -> HostName {
        if let Some(&i) = interner().read().index.get(name) {
            return HostName(i);
        }
        let mut w = interner().write();
        if let Some(&i) = w.index.get(name) {
            return HostName(i);
        }
        let i = w.names.len() as u32;
        let s: Arc<str> = Arc::from(name);
        w.names.push(s.clone());
        w.index.insert(s, i);
        HostName(i)
    }

    /// The host's name.
    pub fn as_str(&self) -> Arc<str> {
        interner().read().names[self.0 as usize].clone()
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.as_str())
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A process identifier. Ordered by sequence number (= spawn order).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid {
    seq: u64,
    host: HostName,
}

impl Pid {
    /// The PID of nobody, `{|}`: the sender of events raised by the runtime itself.
    pub const NOBODY: Pid = Pid { seq: 0, host: HostName(0) };

    /// Build a PID from its parts. Only the node allocates fresh sequence numbers; this is
    /// for parsers and tests.
    pub fn from_parts(host: HostName, seq: u64) -> Pid {
        Pid { seq, host }
    }

    /// The node-wide sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The host the process was spawned on.
    pub fn host(&self) -> HostName {
        self.host
    }

    pub fn is_nobody(&self) -> bool {
        self.seq == 0
    }
}

impl PartialOrd for Pid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.seq, self.host).cmp(&(other.seq, other.host))
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_nobody() {
            return f.write_str("{|}");
        }
        write!(f, "{{{}|0x{:05x}}}", self.host, self.seq)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a PID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PID {input:?}: {reason}")]
pub struct PidParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Pid {
    type Err = PidParseError;

    /// Parse `{host|0xHEX}`. The cluster form `{node@host|0xHEX}` is recognised and
    /// rejected, since this node has no cluster yet.
    fn from_str(s: &str) -> Result<Pid, PidParseError> {
        let err = |reason| PidParseError { input: s.to_string(), reason };
        if s == "{|}" {
            return Ok(Pid::NOBODY);
        }
        let inner = s
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| err("must be enclosed in { and }"))?;
        let (host, num) = inner.rsplit_once('|').ok_or_else(|| err("missing '|' between host and number"))?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.contains(['{', '}', '|']) || host.chars().any(char::is_whitespace) {
            return Err(err("host contains a forbidden character"));
        }
        if host.contains('@') {
            return Err(err("cluster PIDs (node@host) are not supported on a single node"));
        }
        let hex = num.strip_prefix("0x").ok_or_else(|| err("number must start with 0x"))?;
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("number must be hexadecimal digits"));
        }
        let seq = u64::from_str_radix(hex, 16).map_err(|_| err("number out of range"))?;
        if seq == 0 {
            return Err(err("number 0 is not a process"));
        }
        Ok(Pid { seq, host: HostName::new(host) })
    }
}

/// The node-wide PID counter: starts at 1, never reuses a number.
#[derive(Debug)]
pub struct PidCounter(AtomicU64);

impl Default for PidCounter {
    fn default() -> Self {
        PidCounter(AtomicU64::new(1))
    }
}

impl PidCounter {
    pub fn next(&self, host: HostName) -> Pid {
        Pid { seq: self.0.fetch_add(1, Ordering::Relaxed), host }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_wippy() {
        let h = HostName::new("app:processes");
        assert_eq!(Pid::from_parts(h, 3).to_string(), "{app:processes|0x00003}");
        assert_eq!(Pid::from_parts(h, 0x1abcdef).to_string(), "{app:processes|0x1abcdef}");
        assert_eq!(Pid::NOBODY.to_string(), "{|}");
    }

    #[test]
    fn parses_its_own_output() {
        let h = HostName::new("app.sub:workers");
        for seq in [1u64, 255, 0x12345, u64::MAX] {
            let p = Pid::from_parts(h, seq);
            assert_eq!(p.to_string().parse::<Pid>().unwrap(), p);
        }
        assert_eq!("{|}".parse::<Pid>().unwrap(), Pid::NOBODY);
        assert_eq!("{x|0xAB}".parse::<Pid>().unwrap().seq(), 0xab);
    }

    #[test]
    fn rejects_malformed() {
        for (s, why) in [
            ("app|0x1", "enclosed"),
            ("{app0x1}", "missing '|'"),
            ("{|0x1}", "empty host"),
            ("{app|1}", "0x"),
            ("{app|0x}", "hexadecimal"),
            ("{app|0xzz}", "hexadecimal"),
            ("{app|0x0}", "number 0"),
            ("{app|0x11111111111111111}", "out of range"),
            ("{n@app|0x1}", "cluster"),
            ("{a b|0x1}", "forbidden"),
        ] {
            let e = s.parse::<Pid>().unwrap_err();
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn counter_starts_at_one_and_never_repeats() {
        let c = PidCounter::default();
        let h = HostName::new("h");
        assert_eq!(c.next(h).seq(), 1);
        assert_eq!(c.next(h).seq(), 2);
    }
}
