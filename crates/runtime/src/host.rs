//! A process host: a named place where processes run, with its own scheduler (worker
//! pool), its limits, and its run state. Hosts never share load with each other.
//!
//! The host counts its live processes (for `max_processes` and for shutdown); it does not
//! know what the processes are. Its security boundary (SPEC §7.3: who may send in and out,
//! the actor processes run as) is checked by `Context` on every send and spawn across it.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::node::NodeInner;
use crate::pid::HostName;
use crate::security::Identity;
use crate::scheduler::{Hint, Runnable, Scheduler};

/// The default bound of a host's live processes: Erlang/OTP's default process limit, so that
/// a spawn loop ends with LimitExceeded instead of taking the node's memory (~2.6 GB of
/// parked Lua processes at this bound). Wippy has none; `max_processes: 0` asks for none.
pub const DEFAULT_MAX_PROCESSES: usize = 1 << 20;

/// The default bound of a mailbox's bytes: 256 MiB, about a million small messages. Far
/// past any healthy backlog, and small beside a node's memory.
pub const DEFAULT_MAX_MAILBOX_BYTES: usize = 256 * 1024 * 1024;

/// A host's settings (the `host:` block of a `process.host` entry).
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub name: String,
    /// Worker threads (default: the number of cores).
    pub workers: usize,
    /// Capacity hint for the global queue; it never drops or blocks (unbounded).
    pub queue_size: usize,
    /// Tasks a worker keeps in its own deque before overflowing to the global queue.
    pub local_queue_size: usize,
    /// The most live processes (spawned and not yet exited, started or not); 0 = no limit.
    /// Default [`DEFAULT_MAX_PROCESSES`].
    pub max_processes: usize,
    /// The most messages (and other events) a process's mailbox may hold; 0 = no limit.
    /// One more ends the process with LimitExceeded (SECURITY.md).
    pub max_mailbox: usize,
    /// The most bytes a process's mailbox may hold (queue nodes and payloads, as
    /// [`Value::heap_bytes`](crate::Value::heap_bytes) counts them); 0 = no limit. Default
    /// [`DEFAULT_MAX_MAILBOX_BYTES`], so that with nothing configured one process cannot
    /// take the node's memory by flooding another that never reads.
    pub max_mailbox_bytes: usize,
    /// How long a process may compute before it is preempted (Lua processes).
    pub time_slice: Duration,
    /// Reductions per step: a native process consults this budget (one per message in
    /// the handler layer) and yields when it is spent.
    pub budget: u32,
    /// How long processes get to react to the shutdown CANCEL before they are terminated.
    pub stop_timeout: Duration,
    /// The host's boundary (SPEC §7.3).
    pub security: Arc<HostSecurity>,
}

/// What a host allows its processes (SPEC §7.3); `None` = no restriction.
#[derive(Debug, Clone, Default)]
pub struct HostSecurity {
    /// The only modules its processes may bind.
    pub modules: Option<Vec<String>>,
    /// Hosts its processes may message.
    pub send_to: Option<Vec<String>>,
    /// Hosts whose processes may message it.
    pub receive_from: Option<Vec<String>>,
    /// Forced actor and/or scope for every process on the host.
    pub identity: Option<Arc<Identity>>,
}

impl HostSecurity {
    /// Whether a process of host `from` may message one of host `to`.
    pub fn crossing_allowed(from: &HostConfig, to: &HostConfig) -> bool {
        if from.name == to.name {
            return true;
        }
        let ok_out = from.security.send_to.as_ref().is_none_or(|l| l.contains(&to.name));
        let ok_in = to.security.receive_from.as_ref().is_none_or(|l| l.contains(&from.name));
        ok_out && ok_in
    }
}

impl HostConfig {
    pub fn new(name: impl Into<String>) -> HostConfig {
        HostConfig {
            name: name.into(),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            queue_size: 1024,
            local_queue_size: 256,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_mailbox: 0,
            max_mailbox_bytes: DEFAULT_MAX_MAILBOX_BYTES,
            time_slice: Duration::from_millis(2),
            budget: 1000,
            stop_timeout: Duration::from_secs(10),
            security: Arc::new(HostSecurity::default()),
        }
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn max_processes(mut self, n: usize) -> Self {
        self.max_processes = n;
        self
    }
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }
    pub fn max_mailbox(mut self, messages: usize) -> Self {
        self.max_mailbox = messages;
        self
    }
    pub fn max_mailbox_bytes(mut self, bytes: usize) -> Self {
        self.max_mailbox_bytes = bytes;
        self
    }
    /// Whether a mailbox holding `queued` items in `bytes` bytes is past a limit: the
    /// kill code for the limit it broke.
    #[inline]
    pub(crate) fn mailbox_over(&self, queued: usize, bytes: usize) -> Option<u8> {
        if self.max_mailbox != 0 && queued > self.max_mailbox {
            Some(crate::cell::KILL_MAILBOX)
        } else if self.max_mailbox_bytes != 0 && bytes > self.max_mailbox_bytes {
            Some(crate::cell::KILL_MAILBOX_BYTES)
        } else {
            None
        }
    }
    pub fn budget(mut self, b: u32) -> Self {
        self.budget = b;
        self
    }
    pub fn time_slice(mut self, d: Duration) -> Self {
        self.time_slice = d;
        self
    }

    /// Reject settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid("host name must not be empty"));
        }
        if self.name.contains(['{', '}', '|']) || self.name.chars().any(char::is_whitespace) {
            return Err(Error::invalid(format!("host name '{}' contains a character not allowed in a PID", self.name)));
        }
        if self.workers == 0 {
            return Err(Error::invalid(format!("host '{}': workers must be positive, got 0", self.name)));
        }
        if self.local_queue_size == 0 {
            return Err(Error::invalid(format!("host '{}': local_queue_size must be positive", self.name)));
        }
        if self.budget == 0 {
            return Err(Error::invalid(format!("host '{}': budget must be positive", self.name)));
        }
        Ok(())
    }
}

pub(crate) const RUNNING: u8 = 0;
pub(crate) const STOPPING: u8 = 1;
pub(crate) const STOPPED: u8 = 2;

pub(crate) struct Host {
    pub(crate) name: HostName,
    pub(crate) config: HostConfig,
    pub(crate) sched: Arc<Scheduler>,
    /// Processes living here, the runtime's own included (a stop waits for all of them).
    live: AtomicUsize,
    /// Of those, the runtime's own (service agents): not counted against `max_processes`
    /// nor shown as the host's processes.
    system: AtomicUsize,
    pub(crate) state: AtomicU8,
    pub(crate) node: Weak<NodeInner>,
    empty_lock: Mutex<()>,
    empty: Condvar,
}

impl Host {
    pub(crate) fn start(node: &Arc<NodeInner>, config: HostConfig) -> Result<Arc<Host>, Error> {
        config.validate()?;
        let owner: Weak<crate::scheduler::Owner> = Arc::downgrade(node) as Weak<NodeInner>;
        let sched = Scheduler::start(owner, &format!("wippy:{}", config.name), config.workers, config.local_queue_size)
            .map_err(|e| Error::unavailable(format!("host '{}': cannot start worker threads: {e}", config.name)))?;
        Ok(Arc::new(Host {
            name: HostName::new(&config.name),
            config,
            sched,
            live: AtomicUsize::new(0),
            system: AtomicUsize::new(0),
            state: AtomicU8::new(RUNNING),
            node: Arc::downgrade(node),
            empty_lock: Mutex::new(()),
            empty: Condvar::new(),
        }))
    }

    pub(crate) fn node(&self) -> Option<Arc<NodeInner>> {
        self.node.upgrade()
    }

    /// Count a new process in, or say why it cannot start here (`system`: one of the
    /// runtime's own, which `max_processes` does not count).
    pub(crate) fn reserve(&self, system: bool) -> Result<(), Error> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => {}
            STOPPING => return Err(Error::unavailable(format!("host is shutting down: {}", self.config.name))),
            _ => return Err(Error::unavailable(format!("host is not running: {}", self.config.name))),
        }
        let max = self.config.max_processes;
        if max == 0 || system {
            if system {
                self.system.fetch_add(1, Ordering::Relaxed);
            }
            self.live.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut n = self.live.load(Ordering::Relaxed);
        loop {
            if n.saturating_sub(self.system.load(Ordering::Relaxed)) >= max {
                return Err(Error::limit_exceeded(format!(
                    "host '{}' is at max_processes ({max})",
                    self.config.name
                )));
            }
            match self.live.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(a) => n = a,
            }
        }
    }

    pub(crate) fn release(&self, system: bool) {
        if system {
            self.system.fetch_sub(1, Ordering::Relaxed);
        }
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 && self.state.load(Ordering::Acquire) != RUNNING {
            let _g = self.empty_lock.lock();
            self.empty.notify_all();
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The processes of the host's users (the runtime's own left out).
    pub(crate) fn user_processes(&self) -> usize {
        self.live().saturating_sub(self.system.load(Ordering::Acquire))
    }

    /// Wait until no process lives here, at most `timeout`. `true` if empty.
    pub(crate) fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.empty_lock.lock();
        while self.live() > 0 {
            if self.empty.wait_until(&mut g, deadline).timed_out() {
                return self.live() == 0;
            }
        }
        true
    }
}

/// A handle on a running host, for embedders and process groups.
#[derive(Clone)]
pub struct HostRef(pub(crate) Arc<Host>);

impl std::fmt::Debug for HostRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostRef({})", self.0.config.name)
    }
}

impl HostRef {
    pub fn name(&self) -> HostName {
        self.0.name
    }
    pub fn config(&self) -> &HostConfig {
        &self.0.config
    }
    /// Live processes on this host.
    /// Worker threads running now (see `NodeRef::rescale_host`).
    pub fn workers(&self) -> usize {
        self.0.sched.workers()
    }
    pub fn process_count(&self) -> usize {
        self.0.user_processes()
    }
    pub fn is_running(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == RUNNING
    }
    /// Queue a runnable (a process group) on this host's workers.
    pub fn schedule(&self, r: Arc<dyn Runnable>) {
        self.0.sched.schedule(r, Hint::Queued);
    }
    /// Queue a runnable that a message or event made ready (the LIFO slot when called on
    /// one of this host's workers, like a woken process).
    pub fn wake(&self, r: Arc<dyn Runnable>) {
        self.0.sched.schedule(r, Hint::Woken);
    }
    /// Whether the calling thread is one of this host's workers.
    pub fn is_current_thread(&self) -> bool {
        self.0.sched.is_current()
    }
}
