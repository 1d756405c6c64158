//! One scheduler per host: a pool of worker threads, each with a local FIFO deque and a
//! LIFO slot, one global injector, stealing when idle, and parking that burns no CPU.
//!
//! The scheduler runs *runnables*, anything implementing [`Runnable`], through its vtable
//! (as tokio runs tasks): a native process's cell (its step is `step.rs`'s), a Lua shard
//! stepping many processes within a budget, or any other unit of work. It knows nothing of
//! processes, cells or the node: the workers only keep the scheduler's *owner* (the node,
//! opaque here) alive for runnables that ask whose worker they run on ([`worker_owner`]).
//! A process woken by the process running on a worker goes to that worker's LIFO slot, so a
//! request/response pair stays on one core and hot in its cache (ping-pong); at most
//! `LIFO_STREAK` LIFO runs happen in a row so the local queue is never starved. Spawned and
//! preempted runnables go to the back of the local deque (or the injector once the deque
//! holds `local_queue_size`). Wake-ups from outside the host's workers go to the injector.
//!
//! Parking protocol (no lost wake-ups): a worker registers as sleeping, issues a SeqCst
//! fence, re-checks every queue, then parks. A producer pushes, issues a SeqCst fence, and
//! wakes one registered sleeper if there is any. One of the two always sees the other.
//!
//! Must never: know what a runnable is, or run one on a thread that is not its host's.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::sync::{Parker, Unparker};
use parking_lot::Mutex;

/// Something a worker can run: a group of processes (a Lua shard) or any other unit of
/// work that belongs to a host. `run` must return in bounded time (it is preempted only
/// by its own budget).
pub trait Runnable: Send + Sync + 'static {
    fn run(self: Arc<Self>);
}

/// What the queues hold: a runnable, run through its vtable.
pub(crate) type Task = Arc<dyn Runnable>;

/// What a scheduler's workers run for (the node), opaque to the scheduler.
pub(crate) type Owner = dyn Any + Send + Sync;

/// Why a task is being scheduled; decides which queue it goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Hint {
    /// Woken by a message or event (LIFO slot when on one of the host's workers).
    Woken,
    /// New, or preempted and still runnable (back of the local deque).
    Queued,
}

/// After this many LIFO-slot runs in a row, the slot's task goes to the back of the deque.
const LIFO_STREAK: u32 = 3;
/// Every this many runs, the injector is looked at first (so outside wake-ups are not
/// starved by a busy local deque).
const GLOBAL_EVERY: u32 = 61;

/// A worker slot's own queue and parker, while no thread runs it.
type Slot = (Worker<Task>, Parker);

pub(crate) struct Scheduler {
    injector: Injector<Task>,
    /// One per worker slot; slots `0..active` have a running worker.
    stealers: Box<[Stealer<Task>]>,
    unparkers: Box<[Unparker]>,
    /// Workers running now (the host can be rescaled up to `stealers.len()`).
    active: AtomicUsize,
    /// The queues and parkers of slots without a worker yet (taken when one starts).
    idle_slots: Mutex<Vec<Option<Slot>>>,
    owner: Weak<Owner>,
    thread_name: String,
    sleeping: Mutex<Vec<usize>>,
    num_sleeping: AtomicUsize,
    shutdown: AtomicBool,
    local_queue_size: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How many worker slots a host gets: room to rescale to four times the cores (or the
/// configured count, if more).
fn slots_for(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    workers.max(cores * 4).max(8)
}

struct WorkerLocal {
    sched: *const Scheduler,
    /// The data pointer of the owner this worker runs for (its `worker_main` holds the Arc
    /// for the thread's life).
    owner: *const (),
    queue: Worker<Task>,
    lifo: Cell<Option<Task>>,
}

thread_local! {
    static CURRENT: Cell<*const WorkerLocal> = const { Cell::new(ptr::null()) };
}

/// The owner (see [`Scheduler::start`]) of the worker running on this thread, as the data
/// pointer of its `Arc`, which the worker holds until it stops; null off a worker. A
/// runnable that needs the node compares this with its own (a `Weak`'s pointer) and may
/// then borrow it for the rest of its run without reference counting.
pub(crate) fn worker_owner() -> *const () {
    let here = CURRENT.with(Cell::get);
    // SAFETY: CURRENT points at the WorkerLocal of this thread's `worker_main` while it
    // runs (reset before it returns).
    unsafe { here.as_ref() }.map_or(ptr::null(), |w| w.owner)
}

/// The worker of a scheduler running on this thread (see [`Scheduler::here`]); not `Send`,
/// used at once.
pub(crate) struct Here(*const WorkerLocal);

impl Here {
    /// Queue `task` on this worker (the LIFO slot when woken), touching no reference count.
    #[inline]
    pub(crate) fn push(self, task: Task, hint: Hint) {
        // SAFETY: made by `Scheduler::here` on this thread, inside its worker_main, whose
        // frame holds the WorkerLocal and (through its Arc) the scheduler.
        let w = unsafe { &*self.0 };
        unsafe { &*w.sched }.push_here(w, task, hint);
    }
}

impl Scheduler {
    /// Start `workers` threads named `<thread_name>:<i>`.
    /// `owner`: what the workers run for (the node); kept alive by every worker, handed to
    /// none (see [`worker_owner`]).
    pub(crate) fn start(
        owner: Weak<Owner>,
        thread_name: &str,
        workers: usize,
        local_queue_size: usize,
    ) -> std::io::Result<Arc<Scheduler>> {
        let workers = workers.max(1);
        let slots = slots_for(workers);
        let queues: Vec<Worker<Task>> = (0..slots).map(|_| Worker::new_fifo()).collect();
        let parkers: Vec<Parker> = (0..slots).map(|_| Parker::new()).collect();
        let sched = Arc::new(Scheduler {
            injector: Injector::new(),
            stealers: queues.iter().map(Worker::stealer).collect(),
            unparkers: parkers.iter().map(|p| p.unparker().clone()).collect(),
            active: AtomicUsize::new(0),
            idle_slots: Mutex::new(queues.into_iter().zip(parkers).map(Some).collect()),
            owner,
            thread_name: thread_name.to_string(),
            sleeping: Mutex::new(Vec::with_capacity(slots)),
            num_sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            local_queue_size: local_queue_size.max(1),
            threads: Mutex::new(Vec::new()),
        });
        if let Err(e) = sched.rescale(workers) {
            sched.stop();
            sched.join();
            return Err(e);
        }
        Ok(sched)
    }

    /// Run `workers` worker threads from now on (at most the host's slot count). Extra
    /// workers start at once; surplus ones finish what they hold, hand their queue to the
    /// others and stop. Processes are not disturbed.
    pub(crate) fn rescale(self: &Arc<Self>, workers: usize) -> std::io::Result<usize> {
        let workers = workers.clamp(1, self.stealers.len());
        let mut threads = self.threads.lock();
        threads.retain(|h| !h.is_finished());
        let current = self.active.load(Ordering::SeqCst);
        if workers < current {
            self.active.store(workers, Ordering::SeqCst);
            for u in &self.unparkers[workers..current] {
                u.unpark();
            }
            return Ok(workers);
        }
        let Some(owner) = self.owner.upgrade() else { return Ok(current) };
        for index in current..workers {
            // A slot whose worker is still winding down from an earlier shrink is reused
            // once that worker has given its queue back. A worker of this host never waits
            // for that (the one winding down may be itself): it grows as far as it can now.
            let slot = loop {
                if let Some(slot) = self.idle_slots.lock()[index].take() {
                    break slot;
                }
                if self.is_current() {
                    return Ok(self.active.load(Ordering::SeqCst));
                }
                std::thread::yield_now();
            };
            let (queue, parker) = slot;
            let s = self.clone();
            let n = owner.clone();
            // Counted active before it runs: a worker that finds its index outside the
            // active ones leaves at once.
            self.active.store(index + 1, Ordering::SeqCst);
            match std::thread::Builder::new().name(format!("{}:{index}", self.thread_name)).spawn(move || worker_main(n, s, index, queue, parker)) {
                Ok(h) => threads.push(h),
                Err(e) => {
                    self.active.store(index, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// (workers running, workers not parked, runnables queued) at this moment.
    pub(crate) fn load(&self) -> (usize, usize, usize) {
        let active = self.workers();
        let sleeping = self.num_sleeping.load(Ordering::Relaxed).min(active);
        let queued = self.injector.len() + self.stealers[..active.min(self.stealers.len())].iter().map(Stealer::len).sum::<usize>();
        (active, active - sleeping, queued)
    }

    /// Workers running now.
    pub(crate) fn workers(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// This scheduler's worker running on this thread, if it is one.
    #[inline]
    pub(crate) fn here(&self) -> Option<Here> {
        let w = CURRENT.with(Cell::get);
        // SAFETY: CURRENT points at the running worker's own WorkerLocal, which lives on
        // that worker's stack for as long as the pointer is set.
        let w = unsafe { w.as_ref() }?;
        ptr::eq(w.sched, self).then_some(Here(w))
    }

    #[inline]
    fn push_here(&self, w: &WorkerLocal, task: Task, hint: Hint) {
        match hint {
            Hint::Woken => {
                // Into an empty LIFO slot without waking anyone: this worker is awake and
                // runs it next, when the running task ends its step. A second woken task
                // pushes the first out to the stealable deque, and that wakes a worker.
                if let Some(prev) = w.lifo.replace(Some(task)) {
                    self.push_local(w, prev);
                }
            }
            Hint::Queued => self.push_local(w, task),
        }
    }

    /// Queue a task on this scheduler.
    pub(crate) fn schedule(&self, task: Task, hint: Hint) {
        if let Some(here) = self.here() {
            here.push(task, hint);
            return;
        }
        self.injector.push(task);
        self.notify_one();
    }

    fn push_local(&self, w: &WorkerLocal, task: Task) {
        if w.queue.len() >= self.local_queue_size {
            self.injector.push(task);
        } else {
            w.queue.push(task);
        }
        self.notify_one();
    }

    /// Wake one sleeping worker, if any sleeps.
    fn notify_one(&self) {
        fence(Ordering::SeqCst);
        if self.num_sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        let idx = {
            let mut s = self.sleeping.lock();
            let i = s.pop();
            if i.is_some() {
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            i
        };
        if let Some(i) = idx {
            self.unparkers[i].unpark();
        }
    }

    fn has_work(&self) -> bool {
        let n = self.active.load(Ordering::Relaxed).max(1);
        !self.injector.is_empty() || self.stealers[..n.min(self.stealers.len())].iter().any(|s| !s.is_empty())
    }

    /// Stop the workers (after the host's processes are gone) and wait for them.
    pub(crate) fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for u in self.unparkers.iter() {
            u.unpark();
        }
    }

    pub(crate) fn join(&self) {
        let handles = std::mem::take(&mut *self.threads.lock());
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    /// Whether the calling thread is one of this scheduler's workers.
    pub(crate) fn is_current(&self) -> bool {
        self.here().is_some()
    }
}

fn worker_main(owner: Arc<Owner>, sched: Arc<Scheduler>, index: usize, queue: Worker<Task>, parker: Parker) {
    let local = WorkerLocal { sched: Arc::as_ptr(&sched), owner: Arc::as_ptr(&owner) as *const (), queue, lifo: Cell::new(None) };
    CURRENT.with(|c| c.set(&local));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(ptr::null()));
        }
    }
    let _reset = Reset;
    let mut tick: u32 = 0;
    let mut streak: u32 = 0;
    loop {
        tick = tick.wrapping_add(1);
        let n = sched.active.load(Ordering::Relaxed);
        if index >= n && !sched.shutdown.load(Ordering::SeqCst) {
            // Rescaled away: give what this worker holds to the others, free the slot.
            if let Some(t) = local.lifo.take() {
                sched.injector.push(t);
            }
            while let Some(t) = local.queue.pop() {
                sched.injector.push(t);
            }
            sched.notify_one();
            CURRENT.with(|c| c.set(ptr::null()));
            let WorkerLocal { queue, .. } = local;
            sched.idle_slots.lock()[index] = Some((queue, parker));
            return;
        }
        let task = next_task(&sched, &local, index, n.max(1), tick, &mut streak);
        match task {
            Some(r) => {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| r.run())) {
                    tracing::error!(panic = %crate::error::panic_message(&*p), "a runnable panicked");
                }
            }
            None => {
                if sched.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                park(&sched, &local, index, &parker);
            }
        }
    }
    // Drop whatever is left (processes of a host that was force-stopped).
    drop(local.lifo.take());
    while local.queue.pop().is_some() {}
}

fn next_task(sched: &Scheduler, w: &WorkerLocal, index: usize, n: usize, tick: u32, streak: &mut u32) -> Option<Task> {
    if tick % GLOBAL_EVERY == 0 {
        if let Some(t) = steal_global(sched, w) {
            return Some(t);
        }
    }
    if let Some(t) = w.lifo.take() {
        // The streak limit protects the local deque; with nothing there, keep going.
        if *streak < LIFO_STREAK || w.queue.is_empty() {
            *streak += 1;
            return Some(t);
        }
        w.queue.push(t);
    }
    *streak = 0;
    if let Some(t) = w.queue.pop() {
        return Some(t);
    }
    if let Some(t) = steal_global(sched, w) {
        return Some(t);
    }
    // Steal from the others, starting after ourselves.
    for k in 1..n {
        let victim = &sched.stealers[(index + k) % n];
        loop {
            match victim.steal_batch_and_pop(&w.queue) {
                Steal::Success(t) => return Some(t),
                Steal::Empty => break,
                Steal::Retry => continue,
            }
        }
    }
    None
}

fn steal_global(sched: &Scheduler, w: &WorkerLocal) -> Option<Task> {
    loop {
        match sched.injector.steal_batch_and_pop(&w.queue) {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

fn park(sched: &Scheduler, w: &WorkerLocal, index: usize, parker: &Parker) {
    // A short spin first: a reply often arrives within a microsecond.
    for _ in 0..64 {
        if sched.has_work() || !w.queue.is_empty() {
            return;
        }
        std::hint::spin_loop();
    }
    {
        let mut s = sched.sleeping.lock();
        s.push(index);
        sched.num_sleeping.fetch_add(1, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
    if sched.has_work() || sched.shutdown.load(Ordering::SeqCst) {
        unregister(sched, index);
        return;
    }
    parker.park();
    unregister(sched, index);
}

fn unregister(sched: &Scheduler, index: usize) {
    let mut s = sched.sleeping.lock();
    if let Some(pos) = s.iter().position(|&i| i == index) {
        s.swap_remove(pos);
        sched.num_sleeping.fetch_sub(1, Ordering::SeqCst);
    }
}
