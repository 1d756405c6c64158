//! The runtime's record of one live process: PID, mailbox + state word, kill flag, the
//! process object itself, and its topology (links, monitors, names, timers).
//!
//! `slot` is touched only by the worker that moved the state word to RUNNING (the mailbox
//! protocol guarantees there is exactly one); everything else is atomics or behind a lock.
//! Kept small: a parked native process costs this struct plus its own state.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use smol_str::SmolStr;

use crate::error::Error;
use crate::host::Host;
use crate::mailbox::Mailbox;
use crate::pid::Pid;
use crate::process::{CommandId, Event, ExitResult, Process};
use crate::security::Identity;
use crate::value::{Table, Value};
use crate::warm::Warm;

pub(crate) const KILL_NONE: u8 = 0;

/// Bits of `ProcCell::work` that count steps (1.1e12 before they wrap).
pub(crate) const STEP_BITS: u32 = 40;
pub(crate) const STEP_MASK: u64 = (1 << STEP_BITS) - 1;
pub(crate) const KILL_TERMINATED: u8 = 1;
pub(crate) const KILL_LINKED: u8 = 2;
/// Its mailbox went past the host's `max_mailbox` messages / `max_mailbox_bytes`.
pub(crate) const KILL_MAILBOX: u8 = 3;
pub(crate) const KILL_MAILBOX_BYTES: u8 = 4;

/// A group of processes scheduled as one runnable (a Lua shard). The runtime calls
/// `schedule` whenever a member becomes runnable, instead of queueing the member itself;
/// the group then runs members with [`ProcessRef::run`] from its own `Runnable::run`.
pub trait ProcessGroup: Send + Sync + 'static {
    /// `woken`: a message or event made the member ready (the group may then go to the
    /// waking worker's LIFO slot, [`HostRef::wake`](crate::HostRef::wake)); otherwise it is
    /// new, or was preempted (the back of the queue, [`HostRef::schedule`](crate::HostRef::schedule),
    /// where an idle worker can take it).
    fn schedule(&self, process: ProcessRef, woken: bool);

    /// Memory and membership, for operators (`wippy ps`); may wait for a running turn.
    fn stats(&self) -> GroupStats {
        GroupStats::default()
    }
}

/// What a process group reports about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupStats {
    /// Bytes the group's state holds (a Lua VM's heap).
    pub memory: usize,
    /// Live members.
    pub members: usize,
    /// One member only, by construction: its memory is that member's own.
    pub isolated: bool,
}

/// A handle on a live (or just exited) process, for process groups.
#[derive(Clone)]
pub struct ProcessRef(pub(crate) Arc<ProcCell>);

impl ProcessRef {
    pub fn pid(&self) -> Pid {
        self.0.pid
    }
    /// Run one step of this process on the calling thread. Must be called only for a
    /// process the group was asked to `schedule`, once per `schedule` call.
    pub fn run(&self) {
        crate::step::step(&self.0);
    }
}

/// A custom first call (a method other than `main`, or arguments): taken by the first
/// step. Whether the first call is still due is `next_command == 0` (see [`Slot`]), so a
/// plain `main` start allocates nothing and the slot stays one word smaller.
pub(crate) type Init = Option<Box<(SmolStr, Vec<Value>)>>;

pub(crate) fn init_of(method: SmolStr, args: Vec<Value>) -> Init {
    if method == "main" && args.is_empty() {
        None
    } else {
        Some(Box::new((method, args)))
    }
}

/// The first call, if it is still due (then commands start being numbered from 1).
pub(crate) fn take_init(init: &mut Init, next_command: &mut u64) -> Option<(SmolStr, Vec<Value>)> {
    if *next_command != 0 {
        return None;
    }
    *next_command = 1;
    Some(init.take().map(|b| *b).unwrap_or_else(|| (SmolStr::new_static("main"), Vec::new())))
}

pub(crate) struct Slot {
    pub(crate) process: Option<Box<dyn Process>>,
    pub(crate) init: Init,
    /// The next command ID; 0 until the first call (`init`) has run.
    pub(crate) next_command: u64,
    /// The process this one last sent to, so repeated sends skip the table.
    pub(crate) last_target: Option<Arc<ProcCell>>,
    /// Values set by `with_context`, inherited by children.
    pub(crate) context: Option<Arc<Table>>,
}

/// Rarely used parts of a process's topology, allocated on first use.
#[derive(Default)]
pub(crate) struct TopoMore {
    /// Processes linked with this one.
    pub(crate) links: Vec<Pid>,
    /// Processes that monitor this one.
    pub(crate) monitors: Vec<Pid>,
    /// Processes this one monitors (to take its entries out of theirs when it exits).
    pub(crate) monitoring: Vec<Pid>,
    /// Function calls this one made (`funcs.call`/`async`): CANCEL "caller context canceled"
    /// reaches those still running when it exits (SPEC §12.4.4).
    pub(crate) calls: Vec<Pid>,
    pub(crate) names: Vec<SmolStr>,
    pub(crate) timers: Vec<(CommandId, tokio::task::AbortHandle)>,
    /// Recently cancelled commands: a completion of theirs that was already on its way
    /// (a ticker's tick queued before the cancel) is dropped, never delivered.
    pub(crate) cancelled: Vec<CommandId>,
    pub(crate) watchers: Vec<Watcher>,
}

/// Told of a process's exit from outside any process.
pub(crate) enum Watcher {
    /// [`crate::ExitWatch`]: a blocking wait.
    Chan(std::sync::mpsc::SyncSender<ExitResult>),
    /// [`crate::Node::spawn_then`]: called once, on the thread the process exited on, with
    /// no lock held.
    Call(crate::node::ExitCallback),
}

impl Watcher {
    pub(crate) fn tell(self, pid: Pid, result: &ExitResult) {
        match self {
            Watcher::Chan(tx) => {
                let _ = tx.try_send(result.clone());
            }
            Watcher::Call(f) => f(pid, result.clone()),
        }
    }
}

#[derive(Default)]
pub(crate) struct Topo {
    pub(crate) more: Option<Box<TopoMore>>,
}

impl Topo {
    pub(crate) fn more(&mut self) -> &mut TopoMore {
        self.more.get_or_insert_with(Default::default)
    }
}

/// Laid out by hand (`repr(C)`): the words every step writes (the mailbox's state, `work`)
/// sit together, and the rest in the order the runtime had before introspection moved in,
/// so that what a sender reads of a busy receiver (its host, warm-up hints) does not share
/// a cache line with a counter the receiver bumps on every step (measured: 0.8x native
/// ping-pong with the order rustc chose).
#[repr(C)]
pub(crate) struct ProcCell {
    pub(crate) host: Arc<Host>,
    pub(crate) pid: Pid,
    pub(crate) mailbox: Mailbox<Event>,
    /// Written only by the worker running it, read by introspection: the steps run so far
    /// (low `STEP_BITS` bits, wrapping) and the messages the process took out of its mailbox
    /// but has not received yet (the high bits, saturating; see [`Context::set_backlog`]).
    pub(crate) work: AtomicU64,
    pub(crate) group: Option<Arc<dyn ProcessGroup>>,
    pub(crate) slot: UnsafeCell<Slot>,
    pub(crate) topo: Mutex<Topo>,
    /// The actor and scope this process runs under (fixed at spawn; children inherit it).
    /// Readable from any thread: checks of operations on this process look at it.
    pub(crate) identity: Option<Arc<Identity>>,
    /// The entry it was spawned from (`None` for a process object spawned directly).
    pub(crate) label: Option<&'static crate::stats::EntryLabel>,
    /// Where this process's next step starts in memory, for its senders to prefetch.
    pub(crate) warm: Warm,
    pub(crate) kill: AtomicU8,
    pub(crate) trap_links: AtomicBool,
    /// The process has exited: read and written only while `topo` is locked (an atomic so
    /// that it can live outside the lock's data, which keeps the cell in its size class).
    pub(crate) exited: AtomicBool,
    /// When it was spawned ([`crate::clock::coarse_ticks`], 10 ms units).
    pub(crate) born: u32,
}

// SAFETY: `slot` is only accessed by the single worker that owns the RUNNING state (see the
// mailbox protocol); all other fields are Sync.
unsafe impl Sync for ProcCell {}

impl ProcCell {
    /// This process as another node sees it when it asks something (see `remote.rs`).
    pub(crate) fn origin(&self) -> crate::remote::Origin<'_> {
        crate::remote::Origin {
            pid: self.pid,
            host: &self.host.config.name,
            actor: self.identity.as_ref().and_then(|i| i.actor.as_ref()).map(|a| a.id.as_str()),
        }
    }

    /// A new cell in its final place (its mailbox points into it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_arc(
        pid: Pid,
        host: Arc<Host>,
        group: Option<Arc<dyn ProcessGroup>>,
        process: Box<dyn Process>,
        method: SmolStr,
        args: Vec<Value>,
        context: Option<Arc<Table>>,
        identity: Option<Arc<Identity>>,
        label: Option<&'static crate::stats::EntryLabel>,
    ) -> Arc<ProcCell> {
        let cell = Arc::new(ProcCell {
            pid,
            mailbox: Mailbox::new_ready(),
            kill: AtomicU8::new(KILL_NONE),
            trap_links: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            born: crate::clock::coarse_ticks(),
            host,
            group,
            slot: UnsafeCell::new(Slot {
                process: Some(process),
                init: init_of(method, args),
                next_command: 0,
                last_target: None,
                context,
            }),
            identity,
            topo: Mutex::new(Topo::default()),
            warm: Warm::default(),
            label,
            work: AtomicU64::new(0),
        });
        cell.mailbox.init();
        cell
    }

    /// Set the kill reason (the first one wins). `true` if this call set it.
    pub(crate) fn set_kill(&self, code: u8) -> bool {
        self.kill.compare_exchange(KILL_NONE, code, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Why this process must end, if something killed it (checked at every step: the
    /// common "not killed" answer stays inline, the error is built out of line).
    #[inline]
    pub(crate) fn kill_error(&self) -> Option<Error> {
        match self.kill.load(Ordering::Acquire) {
            KILL_NONE => None,
            code => Some(self.kill_error_of(code)),
        }
    }

    #[cold]
    #[inline(never)]
    fn kill_error_of(&self, code: u8) -> Error {
        let cfg = &self.host.config;
        match code {
            KILL_LINKED => Error::linked_failed(),
            KILL_MAILBOX => Error::limit_exceeded(format!(
                "mailbox limit exceeded: more than {} messages queued (host {} max_mailbox)",
                cfg.max_mailbox, cfg.name
            ))
            .with_retryable(false),
            KILL_MAILBOX_BYTES => Error::limit_exceeded(format!(
                "mailbox limit exceeded: more than {} bytes queued (host {} max_mailbox_bytes)",
                cfg.max_mailbox_bytes, cfg.name
            ))
            .with_retryable(false),
            _ => Error::terminated(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Introspection fields live in what was padding: a cell (with its reference counts)
    /// stays in the allocator's 224-byte class.
    #[test]
    fn a_cell_stays_in_its_size_class() {
        assert!(std::mem::size_of::<super::ProcCell>() + 16 <= 224, "{}", std::mem::size_of::<super::ProcCell>());
    }
}
