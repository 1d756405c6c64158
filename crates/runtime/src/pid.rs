//! PIDs: the identity of a process, its string form `{<host-id>|0x<hex>}` (on a clustered
//! node `{<node>@<host-id>|0x<hex>}`, SPEC §13.3) and the parser.
//!
//! A PID is the node-wide sequence number (never reused in a node's life), the interned
//! name of the host the process was spawned on and the interned name of its node (the empty
//! name when clustering is off). Interning keeps `Pid` `Copy` and 16 bytes, so sending one
//! around never allocates or touches a reference count.
//! This module never looks at the process table: a PID says nothing about liveness.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::RwLock;

/// An interned host name. Cheap to copy and compare; `as_str` gives the name back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(u32);

/// Interned names live for the rest of the program (a node has a handful of hosts; a
/// name interned once is never freed), so they can be handed out as `&'static str`.
struct Interner {
    names: Vec<&'static str>,
    index: HashMap<&'static str, u32>,
}

fn interner() -> &'static RwLock<Interner> {
    static I: OnceLock<RwLock<Interner>> = OnceLock::new();
    I.get_or_init(|| {
        // Index 0 is the empty host: the PID of "nobody" (`{|}`), used as the sender of
        // events the runtime itself raises (shutdown CANCEL).
        let mut index = HashMap::new();
        index.insert("", 0);
        RwLock::new(Interner { names: vec![""], index })
    })
}

/// Up to this many names, each thread keeps its own copy of the table and looks names up
/// there: formatting and parsing PIDs then takes no lock shared between workers.
const LOCAL_NAMES: usize = 32;

thread_local! {
    static NAMES: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// Look in this thread's copy; refresh it from the shared table once when `hit` misses.
fn local<R>(hit: impl Fn(&[&'static str]) -> Option<R>) -> Option<R> {
    NAMES.with(|n| {
        if let Some(r) = hit(&n.borrow()) {
            return Some(r);
        }
        let g = interner().read();
        if g.names.len() > LOCAL_NAMES {
            return None;
        }
        let mut n = n.borrow_mut();
        n.clear();
        n.extend_from_slice(&g.names);
        hit(&n)
    })
}

impl HostName {
    /// Intern `name` (idempotent).
    pub fn new(name: &str) -> HostName {
        if let Some(i) = local(|n| n.iter().position(|s| *s == name)) {
            return HostName(i as u32);
        }
        if let Some(&i) = interner().read().index.get(name) {
            return HostName(i);
        }
        let mut w = interner().write();
        if let Some(&i) = w.index.get(name) {
            return HostName(i);
        }
        let i = w.names.len() as u32;
        let s: &'static str = Box::leak(name.into());
        w.names.push(s);
        w.index.insert(s, i);
        HostName(i)
    }

    /// The host's name.
    pub fn as_str(&self) -> &'static str {
        let i = self.0 as usize;
        local(|n| n.get(i).copied()).unwrap_or_else(|| interner().read().names[i])
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HostName {
    /// The empty name: a PID's node when clustering is off.
    pub const NONE: HostName = HostName(0);
    pub fn is_none(&self) -> bool {
        self.0 == 0
    }
}

/// A process identifier. Ordered by sequence number (= spawn order).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid {
    seq: u64,
    host: HostName,
    /// The node it lives on (interned like host names; [`HostName::NONE`] off a cluster).
    node: HostName,
}

impl Pid {
    /// The PID of nobody, `{|}`: the sender of events raised by the runtime itself.
    pub const NOBODY: Pid = Pid { seq: 0, host: HostName(0), node: HostName(0) };

    /// Build a PID from its parts. Only the node allocates fresh sequence numbers; this is
    /// for parsers and tests.
    pub fn from_parts(host: HostName, seq: u64) -> Pid {
        Pid { seq, host, node: HostName::NONE }
    }

    /// The same process, named on `node` (a clustered node's own PIDs carry its name).
    pub fn on_node(self, node: HostName) -> Pid {
        Pid { node, ..self }
    }

    /// The node this PID names ([`HostName::NONE`]: none, i.e. the local node).
    pub fn node(&self) -> HostName {
        self.node
    }

    /// The node-wide sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// One of the runtime's own processes (a service agent): see [`PidCounter`].
    pub fn is_system(&self) -> bool {
        self.seq >= SYSTEM_SEQ
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

impl Pid {
    /// Call `f` with this PID's string form, made on the stack when it fits (PIDs are
    /// formatted for every spawn and every first message from a sender: no allocation,
    /// no formatting machinery).
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        if self.is_nobody() {
            return f("{|}");
        }
        let node: &[u8] = if self.node.is_none() { b"" } else { self.node.as_str().as_bytes() };
        let host = self.host.as_str().as_bytes();
        let mut hex = [0u8; 16];
        let mut n = 0;
        let mut v = self.seq;
        while v > 0 || n < 5 {
            hex[15 - n] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            n += 1;
        }
        let digits = &hex[16 - n..];
        let at_node = if node.is_empty() { 0 } else { node.len() + 1 };
        let len = at_node + host.len() + digits.len() + 5;
        let mut buf = [0u8; 96];
        let mut heap = Vec::new();
        let out: &mut [u8] = if len <= buf.len() {
            &mut buf[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        out[0] = b'{';
        if at_node > 0 {
            out[1..1 + node.len()].copy_from_slice(node);
            out[at_node] = b'@';
        }
        out[1 + at_node..1 + at_node + host.len()].copy_from_slice(host);
        let at = 1 + at_node + host.len();
        out[at..at + 3].copy_from_slice(b"|0x");
        out[at + 3..at + 3 + digits.len()].copy_from_slice(digits);
        out[len - 1] = b'}';
        // SAFETY: a host name (a str) and ASCII.
        f(unsafe { std::str::from_utf8_unchecked(out) })
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|t| f.write_str(t))
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

    /// Parse `{host|0xHEX}` and the cluster form `{node@host|0xHEX}` (SPEC §13.3; a legacy
    /// middle segment, `{host|x|0xHEX}`, is skipped: the number is the last part).
    fn from_str(s: &str) -> Result<Pid, PidParseError> {
        match parse_plain(s) {
            Some(pid) => Ok(pid),
            None => Pid::from_str_full(s),
        }
    }
}

impl Pid {
    /// The full parser: every form, and the reason a text is not a PID.
    fn from_str_full(s: &str) -> Result<Pid, PidParseError> {
        let err = |reason| PidParseError { input: s.to_string(), reason };
        if s == "{|}" {
            return Ok(Pid::NOBODY);
        }
        let inner = s
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| err("must be enclosed in { and }"))?;
        let (host, num) = inner.rsplit_once('|').ok_or_else(|| err("missing '|' between host and number"))?;
        let host = host.split_once('|').map_or(host, |(h, _)| h);
        let (node, host) = match host.split_once('@') {
            Some((n, h)) => (n, h),
            None => ("", host),
        };
        if node.len() > 255 {
            return Err(err("node name longer than 255 bytes"));
        }
        if node.contains(['{', '}', '|', '@']) || node.chars().any(char::is_whitespace) {
            return Err(err("node contains a forbidden character"));
        }
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.contains(['{', '}', '|', '@']) || host.chars().any(char::is_whitespace) {
            return Err(err("host contains a forbidden character"));
        }
        let hex = num.strip_prefix("0x").ok_or_else(|| err("number must start with 0x"))?;
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("number must be hexadecimal digits"));
        }
        let seq = u64::from_str_radix(hex, 16).map_err(|_| err("number out of range"))?;
        if seq == 0 {
            return Err(err("number 0 is not a process"));
        }
        let node = if node.is_empty() { HostName::NONE } else { HostName::new(node) };
        Ok(Pid { seq, host: HostName::new(host), node })
    }
}

/// One pass over a well-formed PID with an ASCII host and node (what `Display` writes, and
/// what every message carries): `None` for anything else, which the full parser then
/// accepts or words the error for.
fn parse_plain(s: &str) -> Option<Pid> {
    let b = s.as_bytes();
    if b.len() < 6 || b[0] != b'{' || b[b.len() - 1] != b'}' {
        return None;
    }
    let inner = &b[1..b.len() - 1];
    let bar = inner.iter().rposition(|&c| c == b'|')?;
    let (host, hex) = (&inner[..bar], inner[bar + 1..].strip_prefix(b"0x")?);
    // one pass: at most one '@' (after the node), nothing forbidden
    let mut at = None;
    for (i, &c) in host.iter().enumerate() {
        if c == b'@' && at.is_none() {
            at = Some(i);
        } else if matches!(c, b'{' | b'}' | b'|' | b'@') || !c.is_ascii() || (c as char).is_whitespace() {
            return None;
        }
    }
    let node_end = match at {
        Some(0) => return None,
        Some(i) if i > 255 || i + 1 == host.len() => return None,
        Some(i) => i + 1,
        None => 0,
    };
    if host.is_empty() || hex.is_empty() || hex.len() > 16 {
        return None;
    }
    let mut seq = 0u64;
    for &c in hex {
        seq = seq << 4 | (c as char).to_digit(16)? as u64;
    }
    if seq == 0 {
        return None;
    }
    // `host` and the node are ASCII, so their ends are character boundaries of `s`.
    let node = if node_end == 0 { HostName::NONE } else { HostName::new(&s[1..node_end]) };
    Some(Pid { seq, host: HostName::new(&s[1 + node_end..1 + bar]), node })
}

/// The node-wide PID counter: starts at 1, never reuses a number. The runtime's own
/// processes (service agents) count in a range of their own, from [`SYSTEM_SEQ`], so the
/// PIDs a project's processes get do not depend on how many of those there are.
#[derive(Debug)]
pub struct PidCounter(AtomicU64, AtomicU64, HostName);

/// Where the runtime's own processes' sequence numbers start.
pub const SYSTEM_SEQ: u64 = 0xf000_0000_0000_0001;

impl Default for PidCounter {
    fn default() -> Self {
        PidCounter::starting_at(1, HostName::NONE)
    }
}

impl PidCounter {
    /// A counter whose first PID is `first`, on `node`. A clustered node starts from its
    /// start time (see `NodeConfig`), so a node restarted under the same name never hands
    /// out a PID its previous life did (SPEC §13.6).
    pub fn starting_at(first: u64, node: HostName) -> PidCounter {
        PidCounter(AtomicU64::new(first.max(1)), AtomicU64::new(SYSTEM_SEQ), node)
    }
    pub fn next(&self, host: HostName) -> Pid {
        Pid { seq: self.0.fetch_add(1, Ordering::Relaxed), host, node: self.2 }
    }
    /// A PID for one of the runtime's own processes.
    pub(crate) fn next_system(&self, host: HostName) -> Pid {
        Pid { seq: self.1.fetch_add(1, Ordering::Relaxed), host, node: self.2 }
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
        assert_eq!(Pid::from_parts(h, u64::MAX).to_string(), "{app:processes|0xffffffffffffffff}");
        // longer than the stack buffer
        let long = "h".repeat(120);
        assert_eq!(Pid::from_parts(HostName::new(&long), 0x10).to_string(), format!("{{{long}|0x00010}}"));
    }

    #[test]
    fn many_host_names_still_intern_and_read_back() {
        // past the per-thread copy's size: the shared table answers
        let names: Vec<String> = (0..2 * LOCAL_NAMES).map(|i| format!("many-{i}")).collect();
        let ids: Vec<HostName> = names.iter().map(|n| HostName::new(n)).collect();
        for (n, id) in names.iter().zip(&ids) {
            assert_eq!(HostName::new(n), *id);
            assert_eq!(id.as_str(), n.as_str());
        }
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
            ("{n@@app|0x1}", "forbidden"),
            ("{a b|0x1}", "forbidden"),
        ] {
            let e = s.parse::<Pid>().unwrap_err();
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn rejects_malformed_whatever_path_reads_it() {
        // every character class the one-pass reader must hand to the full parser
        for s in ["{a\u{b}b|0x1}", "{a\u{a0}b|0x1}", "{ab |0x1}", "{a{b|0x1}", "{a}b|0x1}", "{a@b@c|0x1}", "{ab|0X1}", "{ab|0x-1}"] {
            assert!(s.parse::<Pid>().is_err(), "{s:?} was accepted");
        }
        assert_eq!("{héte|0x2}".parse::<Pid>().unwrap().host().as_str(), "héte");
        assert_eq!("{ab|0x0000000000000000003}".parse::<Pid>().unwrap().seq(), 3);
    }

    proptest::proptest! {
        // The same inputs on every run; `PROPTEST_RNG_SEED`/`PROPTEST_CASES` explore further.
        #![proptest_config({
            use proptest::test_runner::{Config, RngSeed};
            let d = Config::default();
            let rng_seed = match d.rng_seed { RngSeed::Random => RngSeed::Fixed(0x5EED), s => s };
            Config { cases: d.cases.max(4096), rng_seed, failure_persistence: None, ..d }
        })]
        #[test]
        fn the_one_pass_reader_agrees_with_the_full_parser(host in "[ -~\u{b}\u{a0}é]{0,12}", hex in "[0-9a-fA-Fx]{0,18}") {
            let s = format!("{{{host}|0x{hex}}}");
            if let Some(p) = parse_plain(&s) {
                let full = Pid::from_str_full(&s);
                proptest::prop_assert_eq!(Ok(p), full);
            }
        }
    }

    #[test]
    fn cluster_form_names_the_node() {
        let p: Pid = "{a@app:procs|0x1f}".parse().unwrap();
        assert_eq!((p.node().as_str(), p.host().as_str(), p.seq()), ("a", "app:procs", 0x1f));
        assert_eq!(p.to_string(), "{a@app:procs|0x0001f}");
        assert_ne!(p, Pid::from_parts(HostName::new("app:procs"), 0x1f));
        // a legacy middle segment is skipped; an empty node is the local one
        assert_eq!("{a@h|x|0x2}".parse::<Pid>().unwrap(), Pid::from_parts(HostName::new("h"), 2).on_node(HostName::new("a")));
        assert_eq!("{@h|0x2}".parse::<Pid>().unwrap(), Pid::from_parts(HostName::new("h"), 2));
        assert_eq!(std::mem::size_of::<Pid>(), 16);
        let c = PidCounter::starting_at(1 << 40, HostName::new("n1"));
        assert_eq!(c.next(HostName::new("h")).to_string(), "{n1@h|0x10000000000}");
    }

    #[test]
    fn counter_starts_at_one_and_never_repeats() {
        let c = PidCounter::default();
        let h = HostName::new("h");
        assert_eq!(c.next(h).seq(), 1);
        assert_eq!(c.next(h).seq(), 2);
    }
}
