//! A shard: one Lua 5.4 VM hosting many Lua processes, scheduled on its host as one
//! runnable. Owns the VM, the shard's ready queue (processes the runtime asked it to run),
//! its load count, and its preemption state (which Lua thread is running, since when).
//!
//! The VM is touched by one worker at a time: the one running the shard's turn, which
//! publishes it in a thread-local so the process being stepped can reach it. A shard is
//! queued on its host at most once at a time (`Queue::scheduled`, set when a process is
//! queued and cleared, under the queue's lock, only when the turn is done with the VM);
//! whichever worker pops it runs it, so a shard with ready processes moves to an idle
//! worker as a unit. The VM needs no lock of its own: that flag is one.
//!
//! Must never: step a process that was not handed to it by `schedule`, or keep the VM past
//! its turn.

use std::collections::VecDeque;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use wippy_runtime::{HostRef, ProcessGroup, ProcessRef, Runnable};

use crate::catalog::Catalog;
use crate::convert::Marks;
use crate::vm::preempt::{self, current_preempt, Preempt};
use crate::vm::sandbox::Vm;

/// The lock of a shard's run queue (see `Shard::queue`).
type QueueLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// The most process steps one turn of a shard runs before it lets other runnables go.
const TURN_STEPS: usize = 64;

/// After this many full turns without a step of a process that computes for whole slices,
/// the next turn gives it one first.
const STARVED_TURNS: u32 = 8;

/// Options a host gives its Lua processes.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// One process per shard (own heap, exact memory limit).
    pub isolated: bool,
    /// Most processes in one shared shard.
    pub shard_size: usize,
    /// Per-process memory limit in bytes (0 = none).
    pub max_process_memory: usize,
    /// Whether processes on this host may bind `io` (the terminal host).
    pub grants_io: bool,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions { isolated: false, shard_size: 4096, max_process_memory: 0, grants_io: false }
    }
}

pub(crate) struct Shard {
    me: Weak<Shard>,
    /// Touched only by the turn (see the module's comment) and by `stats`, which borrows
    /// the shard as a turn would.
    vm: UnsafeCell<Vm>,
    /// A spin lock (yielding when it finds the queue taken): held for a push or a pop of a
    /// few words, and its unlock is a plain store, where parking_lot's is a locked
    /// compare-and-swap; every message to a process of the shard takes it once to queue the
    /// process and the turn once more to pop it.
    queue: QueueLock<Queue>,
    /// Live processes placed here (including ones not started yet).
    pub(crate) members: AtomicUsize,
    /// The VM's memory when last read for operators (`stats`).
    last_memory: AtomicUsize,
    /// `stats` found the shard busy and wants `last_memory` refreshed by the turn.
    memory_wanted: AtomicBool,
    pub(crate) host: HostRef,
    pub(crate) preempt: Preempt,
    pub(crate) options: ShardOptions,
    pub(crate) catalog: Arc<Catalog>,
    /// The VM's metatables that mark channels, payloads and messages (fixed once its
    /// prelude ran).
    pub(crate) marks: Marks,
}

impl Shard {
    pub(crate) fn new(vm: Vm, host: HostRef, options: ShardOptions, catalog: Arc<Catalog>) -> Arc<Shard> {
        let marks = vm.marks;
        Arc::new_cyclic(|me| Shard {
            me: me.clone(),
            last_memory: AtomicUsize::new(vm.lua.used_memory()),
            memory_wanted: AtomicBool::new(false),
            vm: UnsafeCell::new(vm),
            queue: QueueLock::new(Queue::default()),
            members: AtomicUsize::new(0),
            host,
            preempt: Preempt::new(),
            options,
            catalog,
            marks,
        })
    }
}

/// The processes a shard was asked to run.
#[derive(Default)]
struct Queue {
    ready: VecDeque<ProcessRef>,
    /// Processes whose last step the watchdog cut (they computed for a whole slice): one of
    /// them runs per turn, after the ready ones.
    slow: VecDeque<ProcessRef>,
    /// The shard is queued on its host or running.
    scheduled: bool,
    /// Turns in a row that ran no slow one though there was one (their ready ones filled
    /// them): at `STARVED_TURNS` the next turn starts with one, so a busy process is
    /// slowed, never starved.
    starved: u32,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.slow.is_empty()
    }
}

impl ProcessGroup for Shard {
    fn stats(&self) -> wippy_runtime::GroupStats {
        // Asked from inside this shard's own turn (a process of it reading `system`): the
        // VM is this thread's. Else an idle shard is read as a turn would read it; a busy
        // one gives the last figure read and refreshes it at the end of its turn (waiting
        // for a running turn could wait forever: two shards asking about each other).
        let here = current_preempt().is_some_and(|p| std::ptr::eq(p, &self.preempt));
        let read = if here {
            // SAFETY: this thread runs the shard's turn and holds its VM (CURRENT_VM); the
            // allocator's count is only read.
            unsafe { crate::vm::current() }.map(|vm| vm.lua.used_memory())
        } else {
            self.borrowed(|vm| vm.lua.used_memory())
        };
        let memory = match read {
            Some(m) => {
                self.last_memory.store(m, Ordering::Relaxed);
                m
            }
            None => self.last_memory.load(Ordering::Relaxed),
        };
        wippy_runtime::GroupStats { memory, members: self.members.load(Ordering::Relaxed), isolated: self.options.isolated }
    }

    fn schedule(&self, process: ProcessRef, woken: bool) {
        // A process re-queued at the end of a step the watchdog cut (this thread runs this
        // shard's turn, and the cut flag is still up) goes to the slow lane.
        let cut = !woken
            && self.preempt.cut.load(Ordering::Relaxed)
            && current_preempt().is_some_and(|p| std::ptr::eq(p, &self.preempt));
        let mut q = self.queue.lock();
        if cut {
            q.slow.push_back(process);
        } else {
            q.ready.push_back(process);
        }
        if q.scheduled {
            return;
        }
        q.scheduled = true;
        drop(q);
        // Woken by a message: the waking worker runs the shard next, with the VM's shared
        // state still in its cache. New processes: the back of the queue, where another
        // worker can take the shard, so spawning spreads over the workers.
        if let Some(me) = self.me.upgrade() {
            if woken {
                self.host.wake(me);
            } else {
                self.host.schedule(me);
            }
        }
    }
}

impl Shard {
    /// `f` on the VM of an idle shard, holding it as a turn does (marked scheduled, so no
    /// turn starts meanwhile; a process queued meanwhile is run when it is done). `None`
    /// when a turn is running or due.
    fn borrowed<R>(&self, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        {
            let mut q = self.queue.lock();
            if q.scheduled {
                drop(q);
                self.memory_wanted.store(true, Ordering::Relaxed);
                return None;
            }
            q.scheduled = true;
        }
        // SAFETY: `scheduled` was down (no turn held the VM; see the module's comment) and
        // is now ours, so no turn starts until it is lowered again below.
        let r = f(unsafe { &*self.vm.get() });
        let mut q = self.queue.lock();
        if q.is_empty() {
            q.scheduled = false;
        } else {
            drop(q);
            if let Some(me) = self.me.upgrade() {
                self.host.schedule(me);
            }
        }
        Some(r)
    }
}

// SAFETY: the VM (not `Sync`: its `RefCell`s, the Lua state) is reached only by the one
// thread that holds the shard's turn (see the module's comment); every other field is
// atomic or behind a lock.
unsafe impl Sync for Shard {}

impl Runnable for Shard {
    fn run(self: Arc<Self>) {
        // SAFETY: this worker popped the shard from its host, which it was put on once when
        // `scheduled` went up; that flag stays up until this turn is done with the VM.
        let vm = unsafe { &*self.vm.get() };
        crate::vm::set_current(vm);
        if self.memory_wanted.load(Ordering::Relaxed) {
            // (at the start: the turn may give the VM up as soon as its queue is empty)
            self.memory_wanted.store(false, Ordering::Relaxed);
            self.last_memory.store(vm.lua.used_memory(), Ordering::Relaxed);
        }
        preempt::set_current(&self.preempt);
        // Published for the watchdog, which times the turn (no clock read here: a turn
        // switch is on the path of every message between two shards).
        RUN_SLOT.with(|slot| slot.enter(&self));
        let mut sliced = false;
        // After a step the watchdog cut (a process that computed for a whole slice), the
        // processes that were waiting behind it still get their step in this turn, so a
        // busy process costs its neighbours in the shard one slice per turn, not one
        // slice plus a wait for every other runnable of the worker.
        let mut after_cut: Option<usize> = None;
        let mut slow_ran = false;
        // The queue ran dry inside the loop and the shard is no longer scheduled: one
        // lock of the queue less per turn (most turns end so).
        let mut finished = false;
        for _ in 0..TURN_STEPS {
            if after_cut == Some(0) {
                sliced = true;
                break;
            }
            let next = {
                let mut q = self.queue.lock();
                let next = if q.starved >= STARVED_TURNS && !q.slow.is_empty() {
                    q.starved = 0;
                    slow_ran = true;
                    q.slow.pop_front()
                } else if let Some(p) = q.ready.pop_front() {
                    Some(p)
                } else if !slow_ran {
                    // the ready ones first, then one slow one per turn
                    slow_ran = true;
                    q.slow.pop_front()
                } else {
                    None
                };
                if next.is_none() && q.is_empty() {
                    // Nothing left: whoever queues a process next schedules the shard
                    // again. From here on this turn touches neither the VM nor the
                    // shard's preemption state, which the next turn may already use.
                    q.scheduled = false;
                    finished = true;
                }
                next
            };
            let Some(p) = next else { break };
            p.run();
            if let Some(n) = after_cut.as_mut() {
                *n -= 1;
            }
            if self.preempt.cut.load(Ordering::Relaxed) {
                self.preempt.cut.store(false, Ordering::Relaxed);
                if after_cut.is_some() {
                    // a second whole slice in one turn: enough
                    sliced = true;
                    break;
                }
                // (the cut process went to the slow lane)
                after_cut = Some(self.queue.lock().ready.len());
            } else if after_cut.is_none() && self.preempt.expired.load(Ordering::Relaxed) {
                // many short steps that add up to a slice
                sliced = true;
                break;
            }
        }
        crate::vm::clear_current();
        preempt::clear_current();
        RUN_SLOT.with(|slot| slot.leave());
        if finished {
            return;
        }
        let mut q = self.queue.lock();
        if q.is_empty() {
            q.scheduled = false;
            return;
        }
        q.starved = if slow_ran || q.slow.is_empty() { 0 } else { q.starved + 1 };
        // Only slow ones left: they had their slice this turn.
        let sliced = sliced || q.ready.is_empty();
        drop(q);
        if sliced {
            // Its time is up: to the back of the queue, after what else waits here.
            self.host.schedule(self.clone());
        } else {
            // Many short steps and more to come (messages between its own processes):
            // keep going on this worker, as a woken runnable does, instead of waking an
            // idle worker to take the VM and its hot state to another core; the worker's
            // own queue still gets its turn (the scheduler's LIFO streak).
            self.host.wake(self.clone());
        }
    }
}

/// The shards of one host.
pub(crate) struct HostShards {
    pub(crate) host: HostRef,
    pub(crate) options: ShardOptions,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// The burst being placed: who spawns, how many so far, and the run in progress.
    burst: Mutex<Burst>,
    /// The shard whose turn it is next (an index into `shards`; written under its lock).
    cursor: AtomicUsize,
    /// Isolated shards (one per process), for counting; swept now and then.
    isolated: Mutex<Vec<Weak<Shard>>>,
}

/// Consecutive placements by one spawner (see [`HostShards::place`]).
#[derive(Default)]
struct Burst {
    spawner: usize,
    placed: usize,
    run: Option<(Arc<Shard>, usize)>,
}

/// A shard is passed over in turn while it holds more than this many members beyond the
/// emptiest one (processes end at different times; the turn alone would not rebalance).
const BALANCE_SLACK: usize = 16;

/// A burst's runs grow by one for every this many processes placed...
const RUN_GROWTH: usize = 64;
/// ...up to this length.
const RUN_MAX: usize = 64;

impl HostShards {
    pub(crate) fn new(host: HostRef, options: ShardOptions) -> HostShards {
        HostShards {
            host,
            options,
            shards: Mutex::new(Vec::new()),
            burst: Mutex::new(Burst::default()),
            cursor: AtomicUsize::new(0),
            isolated: Mutex::new(Vec::new()),
        }
    }

    /// Where a new process goes (see ARCHITECTURE.md, "Placing Lua processes").
    ///
    /// A host has up to one shared shard per worker, made as soon as a second process
    /// would otherwise share one, and more only when all are full (`shard_size`). New
    /// processes go to the shards in turn (passing over one that holds many more than the
    /// emptiest), so any two placed one after the other - a worker pool, the children of
    /// two parents, services at boot, function calls - are on different shards and run in
    /// parallel. A long burst
    /// from one spawner (a ring, a pipeline, ten thousand sessions) is placed in runs that
    /// grow with it, one more for every `RUN_GROWTH` processes up to `RUN_MAX`: neighbours
    /// in spawn order then mostly share a shard and pass messages inside it, while the
    /// shards still fill evenly. The returned shard already counts the new member.
    pub(crate) fn place(&self, make: impl FnOnce() -> Result<Arc<Shard>, mlua::Error>) -> Result<Arc<Shard>, mlua::Error> {
        if self.options.isolated {
            // A shard of its own: nothing to look for, nothing to keep.
            let s = make()?;
            s.members.fetch_add(1, Ordering::AcqRel);
            let mut iso = self.isolated.lock();
            if iso.len() % 1024 == 1023 {
                iso.retain(|w| w.strong_count() > 0);
            }
            iso.push(Arc::downgrade(&s));
            return Ok(s);
        }
        let workers = self.host.workers().max(1);
        let cap = self.options.shard_size.max(1);
        let mut shards = self.shards.lock();
        // Drop shards nobody lives in any more, beyond one per worker (those stay warm:
        // a worker pool spawned again finds its VMs).
        if shards.len() > workers {
            let mut surplus = shards.len() - workers;
            shards.retain(|s| {
                if surplus == 0 || s.members.load(Ordering::Acquire) > 0 {
                    return true;
                }
                surplus -= 1;
                false
            });
        }
        let mut burst = self.burst.lock();
        let spawner = crate::current::identity();
        if burst.spawner != spawner {
            *burst = Burst { spawner, ..Burst::default() };
        }
        burst.placed += 1;
        if let Some((s, left)) = burst.run.as_mut() {
            if *left > 0 && s.members.load(Ordering::Acquire) < cap && shards.iter().any(|x| Arc::ptr_eq(x, s)) {
                *left -= 1;
                let s = s.clone();
                s.members.fetch_add(1, Ordering::AcqRel);
                return Ok(s);
            }
        }
        let n = shards.len();
        // In turn over the shards with room, skipping any that is well above the emptiest.
        let fewest = shards.iter().map(|s| s.members.load(Ordering::Acquire)).min().unwrap_or(0);
        let from = self.cursor.load(Ordering::Relaxed);
        let next = (0..n).map(|i| (from + i) % n).find(|&i| {
            let m = shards[i].members.load(Ordering::Acquire);
            m < cap && m <= fewest + BALANCE_SLACK
        });
        let (at, shard) = match next {
            // Until there is one per worker, a new process gets a shard of its own unless
            // the one found is empty.
            Some(i) if n >= workers || shards[i].members.load(Ordering::Acquire) == 0 => (i, shards[i].clone()),
            _ => {
                let s = make()?;
                shards.push(s.clone());
                (n, s)
            }
        };
        self.cursor.store((at + 1) % shards.len(), Ordering::Relaxed);
        let run = (burst.placed / RUN_GROWTH).min(RUN_MAX);
        burst.run = (run > 0).then(|| (shard.clone(), run));
        shard.members.fetch_add(1, Ordering::AcqRel);
        Ok(shard)
    }

    fn all(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<Arc<Shard>> = self.shards.lock().clone();
        v.extend(self.isolated.lock().iter().filter_map(|w| w.upgrade()));
        v
    }

    pub(crate) fn memory(&self) -> usize {
        self.all().iter().map(|s| wippy_runtime::ProcessGroup::stats(&**s).memory).sum()
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.all().len()
    }
}

/// Where a worker thread publishes the shard it is running, for the watchdog.
///
/// No lock: the worker publishes with a plain store when its turn starts, and when it ends
/// clears the slot and then waits out a watchdog that is reading it (`reading`), so a shard
/// the watchdog found here stays alive until it is done with it (the worker holds an `Arc`
/// of the shard for the whole turn). Both sides' store-then-load is sequentially
/// consistent, so at least one sees the other's store: either the watchdog finds the slot
/// already empty, or the worker finds the watchdog reading and waits for it.
pub(crate) struct RunSlot {
    /// The shard whose turn runs on this worker, or null.
    shard: std::sync::atomic::AtomicPtr<Shard>,
    /// Odd while a turn runs on this worker; bumped at its start and end (only by this
    /// worker). Per worker, not per shard: the next turn of a shard may start on another
    /// worker before this one has left.
    turn: AtomicU64,
    /// The watchdog is looking at `shard`.
    reading: std::sync::atomic::AtomicBool,
}

impl RunSlot {
    fn enter(&self, shard: &Arc<Shard>) {
        shard.preempt.expired.store(false, Ordering::Relaxed);
        self.shard.store(Arc::as_ptr(shard).cast_mut(), Ordering::Release);
        let t = self.turn.load(Ordering::Relaxed);
        self.turn.store(t.wrapping_add(1), Ordering::Release);
    }
    fn leave(&self) {
        let t = self.turn.load(Ordering::Relaxed);
        self.turn.store(t.wrapping_add(1), Ordering::Release);
        self.shard.store(std::ptr::null_mut(), Ordering::SeqCst);
        while self.reading.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
    }
}

thread_local! {
    static RUN_SLOT: Arc<RunSlot> = {
        let slot = Arc::new(RunSlot { shard: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()), reading: std::sync::atomic::AtomicBool::new(false), turn: AtomicU64::new(0) });
        watchdog().slots.lock().push(Arc::downgrade(&slot));
        slot
    };
}

/// One thread for every Lua shard of the process: every tick it looks at the shard each
/// worker is running; a step still running since the previous tick has overstayed its
/// slice, and the hook is armed on the Lua thread it runs. The cost is per worker, not per
/// shard or process.
pub(crate) struct Watchdog {
    slots: Mutex<Vec<Weak<RunSlot>>>,
}

static WATCHDOG: std::sync::OnceLock<Arc<Watchdog>> = std::sync::OnceLock::new();

pub(crate) fn watchdog() -> &'static Arc<Watchdog> {
    WATCHDOG.get_or_init(|| {
        let w = Arc::new(Watchdog { slots: Mutex::new(Vec::new()) });
        let w2 = w.clone();
        std::thread::Builder::new()
            .name("wippy-lua-watchdog".into())
            .spawn(move || w2.main())
            .expect("cannot start the Lua preemption watchdog thread");
        w
    })
}

impl Watchdog {
    fn main(&self) {
        // Per slot: the step generation and the turn seen at the last tick.
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let mut idle_ticks = 0u32;
        loop {
            let slots: Vec<Arc<RunSlot>> = {
                let mut g = self.slots.lock();
                g.retain(|w| w.strong_count() > 0);
                g.iter().filter_map(|w| w.upgrade()).collect()
            };
            seen.resize(slots.len(), (0, 0));
            let mut tick = Duration::from_millis(1);
            let mut busy = false;
            for (i, slot) in slots.iter().enumerate() {
                slot.reading.store(true, Ordering::SeqCst);
                // SAFETY: see RunSlot: the turn that set it keeps the shard alive until it
                // has cleared it and seen `reading` down.
                let Some(shard) = (unsafe { slot.shard.load(Ordering::SeqCst).as_ref() }) else {
                    slot.reading.store(false, Ordering::Release);
                    seen[i] = (0, 0);
                    continue;
                };
                // Half a slice: a step seen running at two ticks in a row has run for
                // between one and one and a half slices when it is cut.
                tick = tick.min((shard.host.config().time_slice / 2).max(Duration::from_micros(100)));
                // (read after the shard: a turn seen at the same odd count as a tick ago is
                // the one that published this shard, since `leave` waits for `reading`)
                let turn = slot.turn.load(Ordering::Acquire);
                if turn & 1 == 1 && turn == seen[i].1 {
                    // The same turn as a tick ago: it has had its slice.
                    shard.preempt.expired.store(true, Ordering::Relaxed);
                }
                let g = shard.preempt.generation.load(Ordering::Relaxed);
                if g & 1 == 1 {
                    busy = true;
                    if g == seen[i].0 {
                        shard.preempt.arm();
                    }
                }
                seen[i] = (g, turn);
                slot.reading.store(false, Ordering::Release);
            }
            drop(slots);
            idle_ticks = if busy { 0 } else { idle_ticks.saturating_add(1) };
            // After a long idle spell, look less often: a runaway loop is then caught within
            // 20 ms of starting, and every tick after that.
            let wait = if idle_ticks > 500 { Duration::from_millis(20) } else { tick };
            std::thread::sleep(wait);
        }
    }
}
