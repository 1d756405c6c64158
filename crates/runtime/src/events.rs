//! The system event bus (SPEC §12.7): processes subscribe to a system pattern (and
//! optionally one kind); an event `{system, kind, path, data}` is delivered to every matching
//! subscriber as a message on the subscription's private topic (`events@<id>`), so it queues
//! in the subscriber's mailbox like any message.
//!
//! Owns the subscriptions only. Must never: hold its lock while sending (a send can run a
//! mailbox overflow, which must not wait on the bus).

use parking_lot::RwLock;

use crate::pid::Pid;
use crate::value::{Table, Value};

struct Sub {
    id: u64,
    pid: Pid,
    system: String,
    kind: Option<String>,
}

/// The node's subscriptions.
#[derive(Default)]
pub struct EventBus {
    subs: RwLock<Vec<Sub>>,
    next: std::sync::atomic::AtomicU64,
}

/// `pattern` with `*` matching any run of characters.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

impl EventBus {
    /// A new subscription of `pid`; its events arrive on the topic [`EventBus::topic`].
    pub fn subscribe(&self, pid: Pid, system: &str, kind: Option<&str>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.subs.write().push(Sub { id, pid, system: system.to_string(), kind: kind.map(str::to_string) });
        id
    }

    /// The private topic of subscription `id`.
    pub fn topic(id: u64) -> String {
        format!("events@{id}")
    }

    /// End subscription `id` of `pid`; `false` if there was none.
    pub fn unsubscribe(&self, pid: Pid, id: u64) -> bool {
        let mut subs = self.subs.write();
        let before = subs.len();
        subs.retain(|s| !(s.id == id && s.pid == pid));
        subs.len() != before
    }

    /// Subscriptions now (for diagnostics and tests).
    pub fn len(&self) -> usize {
        self.subs.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who gets an event of `system` / `kind`: (subscriber, topic).
    pub(crate) fn matching(&self, system: &str, kind: &str) -> Vec<(Pid, String)> {
        self.subs
            .read()
            .iter()
            .filter(|s| glob_match(&s.system, system) && s.kind.as_deref().is_none_or(|k| k == kind))
            .map(|s| (s.pid, EventBus::topic(s.id)))
            .collect()
    }

    /// Forget every subscription of a process that is gone.
    pub(crate) fn drop_pid(&self, pid: Pid) {
        self.subs.write().retain(|s| s.pid != pid);
    }

    /// The event value: `{system, kind, path, data}`.
    pub fn event(system: &str, kind: &str, path: &str, data: Value) -> Value {
        let mut t = Table::new();
        t.set(Value::str("system"), Value::str(system));
        t.set(Value::str("kind"), Value::str(kind));
        t.set(Value::str("path"), Value::str(path));
        if !matches!(data, Value::Nil) {
            t.set(Value::str("data"), data);
        }
        Value::table(t)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("app.*", "app.users"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*z", "abcz") && !glob_match("a*z", "abc"));
        assert!(glob_match("app", "app") && !glob_match("app", "apps"));
        assert!(glob_match("*.lua", "x.lua") && !glob_match("*.lua", "x.luax"));
        assert!(!glob_match("app.*", "other.users"));
    }
}
