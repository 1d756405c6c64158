//! Node-wide counters for operators (`wippy ps`/`top`, the `system` module, Prometheus):
//! messages, spawns, exits by kind. Each thread counts into its own cache line with plain
//! loads and stores (one writer), so counting costs a hot path a thread-local access and an
//! add; a reader sums every thread's line. A thread that ends folds its counts into the
//! retired totals and gives its line back for the next thread.
//!
//! Also the interned entry labels processes carry (one leaked string per distinct entry ID
//! ever spawned: bounded by the registry's entries, which a process cannot create freely).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// The entry a process was spawned from, interned: a thin `'static` pointer in its cell.
#[derive(Debug)]
pub struct EntryLabel {
    pub id: Box<str>,
}

impl EntryLabel {
    /// The one label for `id`.
    pub fn intern(id: &str) -> &'static EntryLabel {
        static LABELS: OnceLock<Mutex<HashMap<Box<str>, &'static EntryLabel>>> = OnceLock::new();
        let mut map = LABELS.get_or_init(Default::default).lock();
        if let Some(l) = map.get(id) {
            return l;
        }
        let label: &'static EntryLabel = Box::leak(Box::new(EntryLabel { id: id.into() }));
        map.insert(id.into(), label);
        label
    }
}

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Messages queued into a mailbox (one per message, batched sends included).
    Messages = 0,
    Spawns,
    /// Exits by kind: returned normally, with an error, terminated/killed (by a terminate,
    /// a linked failure or a limit).
    ExitsNormal,
    ExitsError,
    ExitsKilled,
}

const COUNTERS: usize = 5;

#[derive(Default)]
struct Line([AtomicU64; COUNTERS]);

struct Registry {
    lines: Vec<&'static CachePadded<Line>>,
    free: Vec<&'static CachePadded<Line>>,
    retired: [u64; COUNTERS],
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry { lines: Vec::new(), free: Vec::new(), retired: [0; COUNTERS] }))
}

struct Local(&'static CachePadded<Line>);

impl Local {
    fn new() -> Local {
        let mut r = registry().lock();
        let line = r.free.pop().unwrap_or_else(|| {
            let l: &'static CachePadded<Line> = Box::leak(Box::default());
            r.lines.push(l);
            l
        });
        Local(line)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut r = registry().lock();
        for (i, c) in self.0 .0.iter().enumerate() {
            r.retired[i] += c.swap(0, Relaxed);
        }
        r.free.push(self.0);
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

/// Add `n` to `counter` for this thread.
#[inline]
pub(crate) fn add(counter: Counter, n: u64) {
    let _ = LOCAL.try_with(|l| {
        let c = &l.0 .0[counter as usize];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    });
}

/// Node-wide totals since the OS process started (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub messages: u64,
    pub spawns: u64,
    pub exits_normal: u64,
    pub exits_error: u64,
    pub exits_killed: u64,
}

/// Sum every thread's counts. A line handed over between a thread's end and the next
/// thread's start is counted once: the fold and the reuse both hold the registry lock.
pub fn totals() -> Totals {
    let r = registry().lock();
    let mut sum = r.retired;
    for line in &r.lines {
        for (i, c) in line.0.iter().enumerate() {
            sum[i] += c.load(Relaxed);
        }
    }
    Totals { messages: sum[0], spawns: sum[1], exits_normal: sum[2], exits_error: sum[3], exits_killed: sum[4] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_threads_that_ended_are_kept() {
        let before = totals();
        std::thread::spawn(|| add(Counter::Spawns, 3)).join().unwrap();
        add(Counter::Spawns, 2);
        assert!(totals().spawns >= before.spawns + 5);
    }

    #[test]
    fn labels_are_interned() {
        let a = EntryLabel::intern("app:x");
        let b = EntryLabel::intern("app:x");
        assert!(std::ptr::eq(a, b));
        assert_eq!(&*a.id, "app:x");
    }
}
