//! A process's mailbox and its scheduling state word, and the protocol that ties them:
//! a message pushed into the mailbox of a waiting process makes it runnable exactly once,
//! and a message pushed while it runs is never missed.
//!
//! State word: `READY` (in a run queue), `RUNNING` (a worker owns it), `IDLE` (waiting for a
//! message), `BLOCKED` (waiting for a command's completion), `COMPLETE` (exited). A wake-up
//! that finds the process running sets the `NOTIFIED` bit instead; the worker sees it when it
//! tries to park the process and runs it again. Only the worker that moved the process to
//! `RUNNING` may call `take`, `finish` and `complete`.
//!
//! This module never schedules anything itself: it tells the caller whether to.

use std::collections::VecDeque;

use crate::sync::{AtomicU8, Mutex, Ordering};

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

struct Queue<T> {
    items: VecDeque<T>,
    closed: bool,
}

pub(crate) struct Mailbox<T> {
    state: AtomicU8,
    queue: Mutex<Queue<T>>,
}

/// Past this capacity an emptied buffer is shrunk, so one burst does not pin memory forever.
const SHRINK_ABOVE: usize = 4096;

impl<T> Mailbox<T> {
    /// A new mailbox whose process is about to be queued (state `READY`).
    pub(crate) fn new_ready() -> Self {
        Mailbox { state: AtomicU8::new(READY), queue: Mutex::new(Queue { items: VecDeque::new(), closed: false }) }
    }

    /// Queue `item`. `Ok(true)`: the process was parked and is now `READY`: the caller must
    /// schedule it. `Err(item)`: the process has exited.
    pub(crate) fn push(&self, item: T) -> Result<bool, T> {
        {
            let mut q = self.queue.lock();
            if q.closed {
                return Err(item);
            }
            q.items.push_back(item);
        }
        Ok(self.wake())
    }

    /// Make the process runnable without queueing anything (terminate, kill by link).
    /// `true`: the caller must schedule it.
    pub(crate) fn wake(&self) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let new = match s {
                IDLE | BLOCKED => READY,
                RUNNING => RUNNING | NOTIFIED,
                _ => return false, // READY, already notified, or COMPLETE
            };
            match self.state.compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return new == READY,
                Err(actual) => s = actual,
            }
        }
    }

    /// The worker that popped the process from a run queue takes it: `READY -> RUNNING`.
    pub(crate) fn start(&self) {
        let prev = self.state.swap(RUNNING, Ordering::AcqRel);
        debug_assert_eq!(prev, READY, "a process ran while not READY");
    }

    /// Move everything queued so far behind `local` (O(1) when `local` is empty).
    pub(crate) fn take(&self, local: &mut VecDeque<T>) {
        let mut q = self.queue.lock();
        if q.items.is_empty() {
            return;
        }
        if local.is_empty() {
            std::mem::swap(&mut q.items, local);
            if q.items.capacity() > SHRINK_ABOVE {
                q.items.shrink_to(64);
            }
        } else {
            local.extend(q.items.drain(..));
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
                self.state.store(READY, Ordering::Release);
                true
            }
        }
    }

    /// The step ended and the process is still runnable (preempted): `RUNNING -> READY`.
    pub(crate) fn yield_now(&self) {
        self.state.store(READY, Ordering::Release);
    }

    /// The process exited: later pushes fail, queued items are dropped (outside the lock).
    pub(crate) fn complete(&self) {
        self.state.store(COMPLETE, Ordering::Release);
        let dropped = {
            let mut q = self.queue.lock();
            q.closed = true;
            std::mem::take(&mut q.items)
        };
        drop(dropped);
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

    /// Messages waiting in the shared queue (not yet handed to a step).
    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }
}

#[cfg(all(test, not(wippy_loom)))]
mod tests {
    use super::*;

    #[test]
    fn push_to_parked_schedules_once() {
        let m = Mailbox::new_ready();
        m.start();
        assert!(!m.park(Park::Idle));
        assert_eq!(m.push(1), Ok(true));
        assert_eq!(m.push(2), Ok(false), "already READY: no second schedule");
        m.start();
        let mut local = VecDeque::new();
        m.take(&mut local);
        assert_eq!(local, [1, 2]);
    }

    #[test]
    fn push_while_running_is_seen_at_park() {
        let m = Mailbox::new_ready();
        m.start();
        assert_eq!(m.push(1), Ok(false));
        assert!(m.park(Park::Blocked), "notified while running: must run again");
        assert_eq!(m.state(), ProcessState::Ready);
    }

    #[test]
    fn complete_rejects_and_drops() {
        let m = Mailbox::new_ready();
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

    /// One step of the process: take everything, then try to park. `true`: run again.
    fn step(m: &Mailbox<u32>, got: &mut Vec<u32>) -> bool {
        let mut local = VecDeque::new();
        m.take(&mut local);
        got.extend(local);
        m.park(Park::Idle)
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
        loom::model(|| {
            let m = Arc::new(Mailbox::new_ready());
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
    fn loom_wake_without_message_is_never_lost() {
        loom::model(|| {
            let m: Arc<Mailbox<u32>> = Arc::new(Mailbox::new_ready());
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
        loom::model(|| {
            let m = Arc::new(Mailbox::new_ready());
            m.start();
            let t = {
                let m = m.clone();
                loom::thread::spawn(move || m.push(7))
            };
            m.complete();
            let r = t.join().unwrap();
            // Either refused, or accepted before the close and then dropped; never scheduled.
            assert!(matches!(r, Err(7) | Ok(false)), "{r:?}");
            assert_eq!(m.queued(), 0);
        });
    }
}
