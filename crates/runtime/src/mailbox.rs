//! A process's mailbox and its scheduling state word, and the protocol that ties them:
//! a message pushed into the mailbox of a waiting process makes it runnable exactly once,
//! and a message pushed while it runs is never missed.
//!
//! The queue is an intrusive multi-producer single-consumer linked list (Vyukov's): a push
//! is one atomic swap and never blocks or reallocates; only the process's owner pops. A
//! push that has swapped the tail but not yet linked its node is invisible to the consumer
//! for an instant; that is safe, because the producer wakes the process only after linking.
//!
//! State word: `READY` (in a run queue), `RUNNING` (a worker owns it), `IDLE` (waiting for a
//! message), `BLOCKED` (waiting for a command's completion), `COMPLETE` (exited). A wake-up
//! that finds the process running sets the `NOTIFIED` bit instead; the worker sees it when it
//! tries to park the process and runs it again. Only the worker that moved the process to
//! `RUNNING` may call `pop`, `park`, `yield_now` and `complete`.
//!
//! Every write to the state word is a read-modify-write. The queue's links are published by
//! the producer's wake-up RMW and acquired by the owner's next RMW (`start`, `park`); a
//! plain load or store anywhere in that chain lets a message sit unseen in the queue of a
//! parked process. The loom models below check exactly this.
//!
//! This module never schedules anything itself: it tells the caller whether to.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ptr;

use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};

pub(crate) const IDLE: u8 = 0;
pub(crate) const BLOCKED: u8 = 1;
pub(crate) const READY: u8 = 2;
pub(crate) const RUNNING: u8 = 3;
pub(crate) const COMPLETE: u8 = 4;
pub(crate) const NOTIFIED: u8 = 0x10;

/// The state a process is in, as diagnostics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Ready,
    Running,
    Blocked,
    Idle,
    Complete,
}

/// What a parked process waits for (both wake on any event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    Idle,
    Blocked,
}

struct Link {
    next: AtomicPtr<Link>,
}

/// A queued item: the link first, so a `*mut Link` is a `*mut Node<T>`. `units` is what
/// the item costs while queued (the node and what its value holds, in [`UNIT`]s).
#[repr(C)]
struct Node<T> {
    link: Link,
    units: u32,
    value: MaybeUninit<T>,
}

/// The mailbox counts what it holds in units of this many bytes.
pub(crate) const UNIT: usize = 16;

/// Items and their cost in one counter word: the item count times 2^32 plus the cost in
/// units. Producers add to `pushed`, the owner to `popped`; the wrapping difference of the
/// two decodes to what is queued (`decode`), exactly while fewer than 2^31 items and 2^31
/// units (32 GiB) are queued. One word instead of two keeps a push to one atomic add and
/// the mailbox (and so every process) as small as before it counted bytes.
#[inline]
fn word(items: usize, units: u64) -> u64 {
    ((items as u64) << 32).wrapping_add(units)
}

/// (items, bytes) queued, from `pushed - popped`. A pop can be counted a moment before its
/// push (the producer counts after linking): a negative part reads as 0.
#[inline]
fn decode(d: u64) -> (usize, usize) {
    let units = d as u32 as i32;
    let items = (d.wrapping_sub(units as i64 as u64) >> 32) as u32 as i32;
    (items.max(0) as usize, units.max(0) as usize * UNIT)
}

/// Items linked by one producer, not yet queued (see `chain_with`, `push_chain`).
pub(crate) struct Chain<T> {
    first: *mut Link,
    last: *mut Link,
    len: usize,
    units: u64,
    _items: std::marker::PhantomData<T>,
}

impl<T> Chain<T> {
    pub(crate) fn new() -> Self {
        Chain { first: ptr::null_mut(), last: ptr::null_mut(), len: 0, units: 0, _items: std::marker::PhantomData }
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<T> Drop for Chain<T> {
    /// A chain never queued (its receiver closed): drop its items.
    fn drop(&mut self) {
        // SAFETY: the chain owns its nodes; each holds an initialised value.
        unsafe { drop_nodes::<T>(self.first) };
    }
}

/// Drop the values of `cur` and every node after it, and free the nodes.
///
/// # Safety
/// The caller owns these nodes exclusively, each holds an initialised value, and none is
/// a mailbox's embedded stub.
unsafe fn drop_nodes<T>(mut cur: *mut Link) {
    while !cur.is_null() {
        // SAFETY: the caller's contract: `cur` is a node of ours, allocated by `push`, its
        // value initialised (a MaybeUninit: dropped explicitly, then the node freed).
        unsafe {
            let next = (*cur).next.load(Ordering::Acquire);
            let mut node = Box::from_raw(cur as *mut Node<T>);
            ptr::drop_in_place(node.value.as_mut_ptr());
            drop(node);
            cur = next;
        }
    }
}

// SAFETY: a chain owns its nodes exclusively.
unsafe impl<T: Send> Send for Chain<T> {}

pub(crate) struct Mailbox<T> {
    state: AtomicU8,
    closed: AtomicBool,
    /// Items (and their cost, see `word`) pushed so far (producers add) and popped so far
    /// (only the owner writes it, so a plain store): their difference is the backlog, for
    /// back-pressure, mailbox limits and diagnostics.
    pushed: AtomicU64,
    popped: AtomicU64,
    /// Producers swap themselves in here.
    tail: AtomicPtr<Link>,
    /// The consumer's end: the last popped node (or the stub), whose value is gone.
    head: UnsafeCell<*mut Link>,
    /// The initial empty node, inside the mailbox itself (so an idle process costs no
    /// allocation). `init` points head and tail at it once the mailbox has its final address.
    stub: Link,
    _items: std::marker::PhantomData<T>,
}

// SAFETY: `head` is touched only by the single consumer (the owning worker); the rest is
// atomics. Items cross threads, so T must be Send.
unsafe impl<T: Send> Send for Mailbox<T> {}
unsafe impl<T: Send> Sync for Mailbox<T> {}

impl<T> Mailbox<T> {
    /// A new mailbox whose process is about to be queued (state `READY`). Call `init`
    /// once it is at its final address (inside its `Arc`), before anyone else sees it.
    pub(crate) fn new_ready() -> Self {
        Mailbox {
            state: AtomicU8::new(READY),
            closed: AtomicBool::new(false),
            pushed: AtomicU64::new(0),
            popped: AtomicU64::new(0),
            tail: AtomicPtr::new(ptr::null_mut()),
            head: UnsafeCell::new(ptr::null_mut()),
            stub: Link { next: AtomicPtr::new(ptr::null_mut()) },
            _items: std::marker::PhantomData,
        }
    }

    /// Point the queue at the embedded stub. The mailbox must not move afterwards.
    pub(crate) fn init(&self) {
        let stub = &self.stub as *const Link as *mut Link;
        self.tail.store(stub, Ordering::Relaxed);
        // SAFETY: not shared yet.
        unsafe { *self.head.get() = stub };
    }

    /// Queue `item`. `Ok(true)`: the process was parked and is now `READY`: the caller must
    /// schedule it. `Err(item)`: the process has exited.
    /// (The runtime pushes with `push_with` or `push_chain`, which count bytes too.)
    #[cfg(test)]
    pub(crate) fn push(&self, item: T) -> Result<bool, T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        Ok(self.push_with(0, || item).0)
    }

    /// What an item costs while queued, in units: its node, plus `extra` bytes its value
    /// holds (an item of 64 GiB and more counts as 64 GiB: it is past any limit anyway).
    #[inline]
    fn cost(extra: usize) -> u32 {
        ((std::mem::size_of::<Node<T>>() + extra).div_ceil(UNIT)).min(u32::MAX as usize) as u32
    }

    /// Start a chain of items for one later `push_chain` (built by one producer). `extra`:
    /// the bytes the item holds beyond its node (its payload's heap).
    #[inline]
    pub(crate) fn chain_with(chain: &mut Chain<T>, extra: usize, make: impl FnOnce() -> T) {
        let units = Self::cost(extra);
        let link = Self::new_node(units, make);
        chain.units += units as u64;
        if chain.first.is_null() {
            chain.first = link;
        } else {
            // SAFETY: `last` is a node of this chain, not yet shared.
            unsafe { (*chain.last).next.store(link, Ordering::Relaxed) };
        }
        chain.last = link;
        chain.len += 1;
    }

    /// Queue a whole chain with one swap: the items stay together and in order.
    /// Returns (must schedule, (items, bytes) queued with the chain). The caller has
    /// checked `is_closed`; a chain racing the close is dropped with the mailbox.
    pub(crate) fn push_chain(&self, chain: &mut Chain<T>) -> (bool, (usize, usize)) {
        // Take the nodes out without dropping the chain (its Drop would free them).
        let first = std::mem::replace(&mut chain.first, ptr::null_mut());
        let last = std::mem::replace(&mut chain.last, ptr::null_mut());
        let n = std::mem::take(&mut chain.len);
        let units = std::mem::take(&mut chain.units);
        if first.is_null() {
            return (false, (0, 0));
        }
        let prev = self.tail.swap(last, Ordering::AcqRel);
        // SAFETY: as in `push_with`.
        unsafe { (*prev).next.store(first, Ordering::Release) };
        (self.wake(), self.count(word(n, units)))
    }

    /// Count a push of `w` (see `word`); (items, bytes) queued with it.
    #[inline]
    fn count(&self, w: u64) -> (usize, usize) {
        let after = self.pushed.fetch_add(w, Ordering::Relaxed).wrapping_add(w);
        decode(after.wrapping_sub(self.popped.load(Ordering::Relaxed)))
    }

    fn new_node(units: u32, make: impl FnOnce() -> T) -> *mut Link {
        let mut node: Box<MaybeUninit<Node<T>>> = Box::new_uninit();
        let raw = node.as_mut_ptr();
        // SAFETY: writing the fields of a fresh allocation, then taking ownership of it.
        unsafe {
            ptr::addr_of_mut!((*raw).link).write(Link { next: AtomicPtr::new(ptr::null_mut()) });
            ptr::addr_of_mut!((*raw).units).write(units);
            ptr::addr_of_mut!((*raw).value).write(MaybeUninit::new(make()));
            Box::into_raw(node) as *mut Link
        }
    }

    /// Build the item straight into its queue node (no moves through the caller's frames).
    /// The caller has checked `is_closed`; a push racing the close is dropped with the
    /// mailbox. Returns (must schedule, (items, bytes) queued with this one).
    #[inline]
    pub(crate) fn push_with(&self, extra: usize, make: impl FnOnce() -> T) -> (bool, (usize, usize)) {
        let units = Self::cost(extra);
        let link = Self::new_node(units, make);
        let prev = self.tail.swap(link, Ordering::AcqRel);
        debug_assert!(!prev.is_null(), "mailbox used before init");
        // SAFETY: `prev` stays allocated until the consumer has moved past it, which it
        // cannot do before this store makes `link` reachable.
        unsafe { (*prev).next.store(link, Ordering::Release) };
        let queued = self.count(word(1, units as u64));
        (self.wake(), queued)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Make the process runnable without queueing anything (terminate, kill by link).
    /// `true`: the caller must schedule it.
    ///
    /// Always a read-modify-write, even when the state does not change (READY, already
    /// NOTIFIED): the consumer's next RMW on the word then synchronises with it, so the
    /// item the producer linked just before is visible to the consumer's next `pop`. A
    /// plain load here loses messages (found by the loom model).
    pub(crate) fn wake(&self) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let new = match s {
                IDLE | BLOCKED => READY,
                RUNNING => RUNNING | NOTIFIED,
                COMPLETE => return false,
                _ => s, // READY, or RUNNING | NOTIFIED
            };
            match self.state.compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return matches!(s, IDLE | BLOCKED),
                Err(actual) => s = actual,
            }
        }
    }

    /// The worker that popped the process from a run queue takes it: `READY -> RUNNING`.
    /// A swap, not a store: it must synchronise with the wake-ups that happened while the
    /// process was READY, so their items are visible to this run.
    pub(crate) fn start(&self) {
        let prev = self.state.swap(RUNNING, Ordering::AcqRel);
        debug_assert_eq!(prev, READY, "a process ran while not READY");
    }

    /// Take the oldest item, if one is visible. Owner only.
    pub(crate) fn pop(&self) -> Option<T> {
        // SAFETY: only the owner touches head; nodes after head are fully linked and
        // initialised (their producers stored the link after writing the value).
        unsafe {
            let head = *self.head.get();
            let next = (*head).next.load(Ordering::Acquire);
            if next.is_null() {
                return None;
            }
            *self.head.get() = next;
            let node = next as *mut Node<T>;
            // only the owner writes popped: a plain load and store (the count follows in
            // `consumed`, at the end of the step)
            self.popped.store(self.popped.load(Ordering::Relaxed).wrapping_add((*node).units as u64), Ordering::Relaxed);
            let value = ptr::read((*node).value.as_ptr());
            self.free(head);
            Some(value)
        }
    }

    /// A reference to the oldest visible item. Owner only.
    pub(crate) fn peek(&self) -> Option<&T> {
        // SAFETY: as in `pop`; the node stays until the owner pops past it.
        unsafe {
            let next = (**self.head.get()).next.load(Ordering::Acquire);
            (!next.is_null()).then(|| &*(*(next as *mut Node<T>)).value.as_ptr())
        }
    }

    /// Whether an item is visible to the consumer. Owner only.
    pub(crate) fn has_next(&self) -> bool {
        // SAFETY: as in `pop`.
        unsafe { !(**self.head.get()).next.load(Ordering::Acquire).is_null() }
    }

    /// The owner popped `n` items during its step.
    pub(crate) fn consumed(&self, n: usize) {
        if n > 0 {
            let total = self.popped.load(Ordering::Relaxed).wrapping_add(word(n, 0));
            self.popped.store(total, Ordering::Relaxed);
        }
    }

    /// Free a node whose value has been moved out (never the embedded stub).
    ///
    /// # Safety
    /// `link` is this mailbox's stub or a node it allocated, unlinked, and not used after.
    unsafe fn free(&self, link: *mut Link) {
        if !ptr::eq(link, &self.stub) {
            // SAFETY: the caller's contract: a node `push` allocated (`Box::into_raw`).
            drop(unsafe { Box::from_raw(link as *mut Node<T>) });
        }
    }

    /// The step ended and the process wants to wait. `true`: a wake-up arrived while it
    /// ran, so it is `READY` again and the caller must schedule it.
    pub(crate) fn park(&self, how: Park) -> bool {
        let to = match how {
            Park::Idle => IDLE,
            Park::Blocked => BLOCKED,
        };
        match self.state.compare_exchange(RUNNING, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => false,
            Err(actual) => {
                debug_assert_eq!(actual, RUNNING | NOTIFIED);
                // A swap, not a store: a plain store would cut the release sequence of a
                // producer's wake-up that lands between the CAS and here.
                self.state.swap(READY, Ordering::AcqRel);
                true
            }
        }
    }

    /// The step ended and the process is still runnable (preempted): `RUNNING -> READY`.
    /// A swap for the same reason as in `park`.
    pub(crate) fn yield_now(&self) {
        self.state.swap(READY, Ordering::AcqRel);
    }

    /// The process exited: later pushes fail, queued items are dropped. An item pushed
    /// in the instant before the close is dropped with the mailbox. Owner only.
    pub(crate) fn complete(&self) {
        self.closed.store(true, Ordering::Release);
        self.state.store(COMPLETE, Ordering::Release);
        let mut n = 0;
        while self.pop().is_some() {
            n += 1;
        }
        self.consumed(n);
    }

    pub(crate) fn state(&self) -> ProcessState {
        match self.state.load(Ordering::Acquire) & !NOTIFIED {
            IDLE => ProcessState::Idle,
            BLOCKED => ProcessState::Blocked,
            READY => ProcessState::Ready,
            RUNNING => ProcessState::Running,
            _ => ProcessState::Complete,
        }
    }

    /// Messages pushed and not yet taken by a step.
    pub(crate) fn queued(&self) -> usize {
        self.backlog().0
    }

    /// (items, bytes) pushed and not yet taken.
    #[inline]
    fn backlog(&self) -> (usize, usize) {
        decode(self.pushed.load(Ordering::Relaxed).wrapping_sub(self.popped.load(Ordering::Relaxed)))
    }

    /// Bytes the queued items hold (their nodes and payloads), as pushes and pops counted
    /// them; like `queued`, a moment behind a push in flight.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.backlog().1
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        // No producer is left: every node is linked. Drop the values after head.
        // SAFETY: exclusive access.
        unsafe {
            let head = *self.head.get();
            if head.is_null() {
                return;
            }
            let rest = (*head).next.load(Ordering::Acquire);
            self.free(head);
            drop_nodes::<T>(rest);
        }
    }
}

#[cfg(all(test, not(wippy_loom)))]
mod tests {
    use super::*;

    fn boxed<T>() -> Box<Mailbox<T>> {
        let m = Box::new(Mailbox::new_ready());
        m.init();
        m
    }

    #[test]
    fn the_counter_word_decodes_what_is_queued_across_wraps() {
        // cumulative counts far past 2^32 items and units: only the difference matters
        let base = word(usize::MAX - 5, u64::MAX - 7);
        let pushed = base.wrapping_add(word(10, 300));
        let popped = base.wrapping_add(word(4, 100));
        assert_eq!(decode(pushed.wrapping_sub(popped)), (6, 200 * UNIT));
        // a pop counted before its push: units or items a moment negative read as 0
        assert_eq!(decode(word(3, 0).wrapping_sub(word(0, 5))), (3, 0));
        assert_eq!(decode(word(0, 9).wrapping_sub(word(2, 0))), (0, 9 * UNIT));
    }

    #[test]
    fn bytes_are_counted_in_and_out() {
        let m = boxed::<u8>();
        m.start();
        let node = std::mem::size_of::<Node<u8>>();
        m.push_with(1000, || 1);
        let mut c = Chain::new();
        Mailbox::chain_with(&mut c, 0, || 2);
        Mailbox::chain_with(&mut c, 40, || 3);
        m.push_chain(&mut c);
        let cost = |extra: usize| (node + extra).div_ceil(UNIT) * UNIT;
        assert_eq!((m.queued(), m.queued_bytes()), (3, cost(1000) + cost(0) + cost(40)));
        m.pop();
        m.consumed(1);
        assert_eq!((m.queued(), m.queued_bytes()), (2, cost(0) + cost(40)));
        m.complete();
        assert_eq!((m.queued(), m.queued_bytes()), (0, 0));
    }

    #[test]
    fn push_to_parked_schedules_once() {
        let m = boxed();
        m.start();
        assert!(!m.park(Park::Idle));
        assert_eq!(m.push(1), Ok(true));
        assert_eq!(m.push(2), Ok(false), "already READY: no second schedule");
        m.start();
        assert_eq!(m.queued(), 2);
        assert_eq!(m.peek(), Some(&1));
        assert_eq!((m.pop(), m.pop(), m.pop()), (Some(1), Some(2), None));
        m.consumed(2);
        assert_eq!(m.queued(), 0);
    }

    #[test]
    fn chains_queue_in_order_and_unqueued_chains_drop_their_items() {
        let m = boxed();
        m.start();
        let mut c = Chain::new();
        for i in 0..5 {
            Mailbox::chain_with(&mut c, 0, || i);
        }
        assert_eq!(c.len(), 5);
        assert!(!m.push_chain(&mut c).0);
        assert_eq!((0..5).map(|_| m.pop().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        let v = std::sync::Arc::new(());
        let mut c = Chain::new();
        Mailbox::<std::sync::Arc<()>>::chain_with(&mut c, 0, || v.clone());
        drop(c);
        assert_eq!(std::sync::Arc::strong_count(&v), 1);
    }

    #[test]
    fn drop_frees_queued_values() {
        let v = std::sync::Arc::new(());
        let m = boxed();
        for _ in 0..10 {
            m.push(v.clone()).unwrap();
        }
        drop(m.pop());
        drop(m);
        assert_eq!(std::sync::Arc::strong_count(&v), 1);
    }

    #[test]
    fn push_while_running_is_seen_at_park() {
        let m = boxed();
        m.start();
        assert_eq!(m.push(1), Ok(false));
        assert!(m.park(Park::Blocked), "notified while running: must run again");
        assert_eq!(m.state(), ProcessState::Ready);
    }

    #[test]
    fn complete_rejects_and_drops() {
        let m = boxed();
        m.start();
        m.push(1).unwrap();
        m.complete();
        assert_eq!(m.push(2), Err(2));
        assert_eq!(m.queued(), 0);
        assert!(!m.wake());
    }
}

/// Model checks of the wake-up protocol: every interleaving of senders, a terminating
/// peer and the worker. Run with
/// `RUSTFLAGS="--cfg wippy_loom" cargo test -p wippy-runtime --lib --release loom`.
#[cfg(all(test, wippy_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    /// Every interleaving with up to 3 preemptions (loom's recommended bound; the lost
    /// wake-ups it found needed 2).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// One step of the process: take everything, then try to park. `true`: run again.
    fn step(m: &Mailbox<u32>, got: &mut Vec<u32>) -> bool {
        while let Some(v) = m.pop() {
            got.push(v);
        }
        m.park(Park::Idle)
    }

    fn new() -> Arc<Mailbox<u32>> {
        let m = Arc::new(Mailbox::new_ready());
        m.init();
        m
    }

    /// Run the process while it is owed a run; returns what it received.
    fn worker(m: &Mailbox<u32>, scheduled: &AtomicUsize, got: &mut Vec<u32>) {
        while step(m, got) {
            m.start();
        }
        let _ = scheduled;
    }

    #[test]
    fn loom_no_lost_wakeup_two_senders() {
        model(|| {
            let m = new();
            let scheduled = Arc::new(AtomicUsize::new(0));
            m.start();
            let senders: Vec<_> = (1..=2u32)
                .map(|i| {
                    let m = m.clone();
                    let s = scheduled.clone();
                    loom::thread::spawn(move || {
                        if m.push(i) == Ok(true) {
                            s.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            let mut got = Vec::new();
            worker(&m, &scheduled, &mut got);
            for t in senders {
                t.join().unwrap();
            }
            // A sender that found the process parked scheduled it: run it (at most once).
            let owed = scheduled.load(Ordering::SeqCst);
            assert!(owed <= 1, "scheduled twice");
            if owed == 1 {
                m.start();
                worker(&m, &scheduled, &mut got);
            }
            got.sort();
            assert_eq!(got, vec![1, 2], "a message was lost");
            assert_eq!(m.state(), ProcessState::Idle);
        });
    }

    #[test]
    fn loom_chain_and_single_push_are_both_seen_in_order() {
        model(|| {
            let m = new();
            let scheduled = Arc::new(AtomicUsize::new(0));
            m.start();
            let t = {
                let m = m.clone();
                let s = scheduled.clone();
                loom::thread::spawn(move || {
                    let mut c = Chain::new();
                    Mailbox::chain_with(&mut c, 0, || 1);
                    Mailbox::chain_with(&mut c, 0, || 2);
                    if m.push_chain(&mut c).0 {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            if m.push(3) == Ok(true) {
                scheduled.fetch_add(1, Ordering::SeqCst);
            }
            let mut got = Vec::new();
            worker(&m, &scheduled, &mut got);
            t.join().unwrap();
            if scheduled.load(Ordering::SeqCst) == 1 {
                m.start();
                worker(&m, &scheduled, &mut got);
            }
            let pos = |v| got.iter().position(|x| *x == v);
            assert_eq!(got.len(), 3, "lost: {got:?}");
            assert!(pos(1) < pos(2), "a chain keeps its order: {got:?}");
        });
    }

    #[test]
    fn loom_wake_without_message_is_never_lost() {
        model(|| {
            let m = new();
            let woke = Arc::new(AtomicUsize::new(0));
            m.start();
            let t = {
                let m = m.clone();
                let w = woke.clone();
                loom::thread::spawn(move || {
                    if m.wake() {
                        w.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            // The worker parks once; a wake while it ran makes park report "run again".
            let again = m.park(Park::Blocked);
            t.join().unwrap();
            let owed = woke.load(Ordering::SeqCst) + again as usize;
            assert_eq!(owed, 1, "the wake-up was lost or doubled");
        });
    }

    #[test]
    fn loom_push_races_with_exit() {
        model(|| {
            let m = new();
            m.start();
            let t = {
                let m = m.clone();
                loom::thread::spawn(move || m.push(7))
            };
            m.complete();
            let r = t.join().unwrap();
            // Either refused, or accepted around the close and dropped (now or with the
            // mailbox); never scheduled.
            assert!(matches!(r, Err(7) | Ok(false)), "{r:?}");
        });
    }
}
