//! A shard: one Lua 5.4 VM hosting many Lua processes, scheduled on its host as one
//! runnable. Owns the VM, the shard's ready queue (processes the runtime asked it to run),
//! its load count, and its preemption state (which Lua thread is running, since when).
//!
//! The VM is touched by one worker at a time: `run` holds the VM lock for the whole turn and
//! publishes the VM in a thread-local so the process being stepped can reach it. A shard is
//! queued on its host at most once at a time; whichever worker pops it runs it, so a shard
//! with ready processes moves to an idle worker as a unit.
//!
//! Must never: step a process that was not handed to it by `schedule`, or keep the VM past
//! its turn.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mlua::ffi;
use parking_lot::Mutex;
use wippy_runtime::{HostRef, ProcessGroup, ProcessRef, Runnable};

use crate::catalog::Catalog;
use crate::convert::Marks;
use crate::sandbox::Vm;

/// A host gets a second (third...) shard, up to one per worker, once its least-loaded
/// shard holds this many processes.
const SPREAD_FROM: usize = 64;

/// The most process steps one turn of a shard runs before it lets other runnables go.
const TURN_STEPS: usize = 64;

thread_local! {
    /// The VM of the shard running on this thread (null outside a turn).
    static CURRENT_VM: Cell<*mut Vm> = const { Cell::new(std::ptr::null_mut()) };
    /// The preemption state of the shard running on this thread.
    static CURRENT_PREEMPT: Cell<*const Preempt> = const { Cell::new(std::ptr::null()) };
}

/// The VM of the shard whose turn is running on this thread.
///
/// # Safety
/// Only call from a process step that a shard turn started; the reference must not outlive
/// the step.
pub(crate) unsafe fn current_vm<'a>() -> Option<&'a mut Vm> {
    let p = CURRENT_VM.with(|c| c.get());
    if p.is_null() {
        None
    } else {
        Some(&mut *p)
    }
}

/// Which Lua thread of a shard is running, for the watchdog to arm the hook on.
///
/// The watchdog arms the hook on `thread` while it holds `arm`, so the thread must stay
/// alive while `arm` is held. A process's main coroutine dies only after `forget` (its
/// process let go of it), which takes `arm`; a task's or a user coroutine's dies only after
/// the prelude switched away from it with `R.cur`, which also takes `arm`. So the
/// per-resume switch to a main coroutine is a plain store: a stale main coroutine the
/// watchdog may still read is alive (at worst it gets one spurious preemption).
pub(crate) struct Preempt {
    /// The running Lua thread (a process's main coroutine or one of its coroutines), or 0.
    thread: AtomicUsize,
    arm: Mutex<()>,
    /// Odd while a process step runs; bumped at each start and end of a step (only by the
    /// worker running the shard: a load and a store).
    generation: AtomicU64,
    /// Set by the hook when it suspended a coroutine; read by the runner.
    pub(crate) fired: AtomicBool,
}

impl Preempt {
    fn new() -> Preempt {
        Preempt { thread: AtomicUsize::new(0), arm: Mutex::new(()), generation: AtomicU64::new(0), fired: AtomicBool::new(false) }
    }
    /// A process's main coroutine runs now (see the type's comment).
    pub(crate) fn set_main(&self, l: *mut ffi::lua_State) {
        self.thread.store(l as usize, Ordering::Release);
    }
    /// Any coroutine runs now; the one running before may die after this.
    pub(crate) fn set_thread(&self, l: *mut ffi::lua_State) {
        let _arm = self.arm.lock();
        self.thread.store(l as usize, Ordering::Release);
    }
    /// The main coroutine `l` is about to be let go of: never arm it again.
    pub(crate) fn forget(&self, l: *mut ffi::lua_State) {
        let _arm = self.arm.lock();
        let _ = self.thread.compare_exchange(l as usize, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
    /// A process step starts; it ends when the guard drops.
    pub(crate) fn step(&self) -> StepGuard<'_> {
        self.bump();
        StepGuard(self)
    }
    fn bump(&self) {
        let g = self.generation.load(Ordering::Relaxed);
        self.generation.store(g.wrapping_add(1), Ordering::Release);
    }
}

pub(crate) struct StepGuard<'a>(&'a Preempt);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.bump();
    }
}

/// The preemption state of the shard running on this thread.
pub(crate) fn current_preempt<'a>() -> Option<&'a Preempt> {
    let p = CURRENT_PREEMPT.with(|c| c.get());
    // SAFETY: set for the duration of a shard turn, which outlives every use inside it.
    unsafe { p.as_ref() }
}

/// The hook armed on a coroutine that overstayed its slice: disarm, then yield where Lua
/// allows it, else check again a little later (inside a C function such as a `table.sort`
/// comparator a yield is impossible).
unsafe extern "C-unwind" fn preempt_hook(l: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    ffi::lua_sethook(l, None, 0, 0);
    if ffi::lua_isyieldable(l) != 0 {
        if let Some(p) = current_preempt() {
            p.fired.store(true, Ordering::Relaxed);
        }
        ffi::lua_yield(l, 0);
    } else {
        ffi::lua_sethook(l, Some(preempt_hook), ffi::LUA_MASKCOUNT, 1000);
    }
}

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
    pub(crate) vm: Mutex<Vm>,
    queue: Mutex<(VecDeque<ProcessRef>, bool)>,
    /// Live processes placed here (including ones not started yet).
    pub(crate) members: AtomicUsize,
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
            vm: Mutex::new(vm),
            queue: Mutex::new((VecDeque::new(), false)),
            members: AtomicUsize::new(0),
            host,
            preempt: Preempt::new(),
            options,
            catalog,
            marks,
        })
    }
}

impl ProcessGroup for Shard {
    fn schedule(&self, process: ProcessRef, woken: bool) {
        let mut q = self.queue.lock();
        q.0.push_back(process);
        if q.1 {
            return;
        }
        q.1 = true;
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

impl Runnable for Shard {
    fn run(self: Arc<Self>) {
        let mut vm = self.vm.lock();
        CURRENT_VM.with(|c| c.set(&mut *vm as *mut Vm));
        CURRENT_PREEMPT.with(|c| c.set(&self.preempt as *const Preempt));
        let slot = RUN_SLOT.with(|s| s.clone());
        *slot.shard.lock() = Some(self.clone());
        let slice = self.host.config().time_slice;
        let started = Instant::now();
        for i in 0..TURN_STEPS {
            let next = self.queue.lock().0.pop_front();
            let Some(p) = next else { break };
            p.run();
            if i % 8 == 7 && started.elapsed() >= slice {
                break;
            }
        }
        CURRENT_VM.with(|c| c.set(std::ptr::null_mut()));
        CURRENT_PREEMPT.with(|c| c.set(std::ptr::null()));
        *slot.shard.lock() = None;
        drop(vm);
        let mut q = self.queue.lock();
        if q.0.is_empty() {
            q.1 = false;
            return;
        }
        drop(q);
        self.host.schedule(self.clone());
    }
}

/// The shards of one host.
pub(crate) struct HostShards {
    pub(crate) host: HostRef,
    pub(crate) options: ShardOptions,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// The shard new processes went to lately, and how many in a row: placement goes in
    /// runs of `SPREAD_FROM`, so processes spawned together mostly share a shard (their
    /// messages stay inside it) while the host's shards still fill evenly.
    run: Mutex<Option<(Arc<Shard>, usize)>>,
    /// Isolated shards (one per process), for counting; swept now and then.
    isolated: Mutex<Vec<Weak<Shard>>>,
}

impl HostShards {
    pub(crate) fn new(host: HostRef, options: ShardOptions) -> HostShards {
        HostShards { host, options, shards: Mutex::new(Vec::new()), run: Mutex::new(None), isolated: Mutex::new(Vec::new()) }
    }

    /// The least-loaded shard with room, or a new one made by `make`. The returned shard
    /// already counts the new member.
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
        let mut shards = self.shards.lock();
        // Drop shards nobody lives in any more (keep one warm).
        if shards.len() > 1 {
            let mut kept_empty = false;
            shards.retain(|s| {
                if s.members.load(Ordering::Acquire) > 0 {
                    return true;
                }
                let keep = !kept_empty;
                kept_empty = true;
                keep
            });
        }
        let cap = self.options.shard_size.max(1);
        let mut run = self.run.lock();
        if let Some((s, n)) = run.as_mut() {
            if *n < SPREAD_FROM && s.members.load(Ordering::Acquire) < cap && shards.iter().any(|x| Arc::ptr_eq(x, s)) {
                *n += 1;
                s.members.fetch_add(1, Ordering::AcqRel);
                return Ok(s.clone());
            }
        }
        let best = shards
            .iter()
            .map(|s| (s.members.load(Ordering::Acquire), s))
            .filter(|(n, _)| *n < cap)
            .min_by_key(|(n, _)| *n)
            .map(|(_, s)| s.clone());
        // Once there is enough to share, every worker of the host gets a shard to run, so
        // Lua processes use all cores (a shard runs on one worker at a time).
        let spread = shards.len() < self.host.config().workers
            && best.as_ref().is_some_and(|s| s.members.load(Ordering::Acquire) >= SPREAD_FROM);
        let shard = match best {
            Some(s) if !spread => s,
            _ => {
                let s = make()?;
                shards.push(s.clone());
                s
            }
        };
        shard.members.fetch_add(1, Ordering::AcqRel);
        *run = Some((shard.clone(), 1));
        Ok(shard)
    }

    fn all(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<Arc<Shard>> = self.shards.lock().clone();
        v.extend(self.isolated.lock().iter().filter_map(|w| w.upgrade()));
        v
    }

    pub(crate) fn memory(&self) -> usize {
        self.all().iter().map(|s| s.vm.lock().lua.used_memory()).sum()
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.all().len()
    }
}

/// Where a worker thread publishes the shard it is running, for the watchdog.
pub(crate) struct RunSlot {
    shard: Mutex<Option<Arc<Shard>>>,
}

thread_local! {
    static RUN_SLOT: Arc<RunSlot> = {
        let slot = Arc::new(RunSlot { shard: Mutex::new(None) });
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
        let mut seen: Vec<u64> = Vec::new();
        let mut idle_ticks = 0u32;
        loop {
            let slots: Vec<Arc<RunSlot>> = {
                let mut g = self.slots.lock();
                g.retain(|w| w.strong_count() > 0);
                g.iter().filter_map(|w| w.upgrade()).collect()
            };
            seen.resize(slots.len(), 0);
            let mut tick = Duration::from_millis(2);
            let mut busy = false;
            for (i, slot) in slots.iter().enumerate() {
                let shard = slot.shard.lock().clone();
                let Some(shard) = shard else {
                    seen[i] = 0;
                    continue;
                };
                tick = tick.min(shard.host.config().time_slice.max(Duration::from_micros(100)));
                let g = shard.preempt.generation.load(Ordering::Relaxed);
                if g & 1 == 1 {
                    busy = true;
                    if g == seen[i] {
                        let _arm = shard.preempt.arm.lock();
                        let t = shard.preempt.thread.load(Ordering::Acquire);
                        if t != 0 {
                            // SAFETY: the thread stays alive while `arm` is held (see
                            // Preempt); lua_sethook is documented safe to call
                            // asynchronously.
                            unsafe { ffi::lua_sethook(t as *mut ffi::lua_State, Some(preempt_hook), ffi::LUA_MASKCOUNT, 1) };
                        }
                    }
                }
                seen[i] = g;
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
