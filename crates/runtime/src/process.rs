//! The process state machine every kind of process implements, and what flows in and out
//! of a step: events in (messages, command completions, lifecycle events), a status out,
//! commands yielded through the [`Context`](crate::Context) for everything that waits.
//!
//! Lua processes and native Rust processes implement the same trait; the runtime never
//! knows which one it is stepping. This module holds the types and their small accessors;
//! stepping a process is `step.rs`, what a step may do is `context.rs`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::context::Context;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::pid::Pid;
use crate::topic::Topic;
use crate::value::Value;

/// The payloads of one message (usually one; stored inline when there is one).
pub type Payload = SmallVec<[Value; 1]>;

/// How a process ended: a value (normal exit) or an error (abnormal exit).
pub type ExitResult = Result<Value, Error>;

/// One message, as the receiver sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sending process, or [`Pid::NOBODY`] when sent from outside any process.
    pub from: Pid,
    pub topic: Topic,
    pub payload: Payload,
}

impl Message {
    /// The first payload, or nil.
    pub fn first(&self) -> &Value {
        static NIL: Value = Value::Nil;
        self.payload.first().unwrap_or(&NIL)
    }
}

/// Identifies a command a process yielded, so its completion can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

/// What a process waits for outside itself. Completions come back as
/// [`Event::Completion`] with the id the context returned when the command was yielded.
pub enum Command {
    /// Complete once after the duration, with the unix time in nanoseconds.
    After(Duration),
    /// Complete every period (first after one period) with the unix time in nanoseconds,
    /// until cancelled. A process that does not keep up loses ticks; the ticker never queues
    /// more than one tick per period.
    Ticker(Duration),
    /// Run a future on the node's dispatch runtime; its output is the completion.
    Task(Pin<Box<dyn Future<Output = Result<Value, Error>> + Send + 'static>>),
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::After(d) => write!(f, "After({d:?})"),
            Command::Ticker(d) => write!(f, "Ticker({d:?})"),
            Command::Task(_) => f.write_str("Task(..)"),
        }
    }
}

/// Everything that can wake a process.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Message),
    /// A monitored process exited (any exit).
    Exit { from: Pid, at: i64, result: ExitResult },
    /// A linked process exited abnormally (delivered only to processes trapping links).
    LinkDown { from: Pid, at: i64, error: Error },
    /// Someone asked this process to stop (cooperative).
    Cancel { from: Pid, at: i64, reason: SmolStr },
    /// A yielded command finished.
    Completion { id: CommandId, result: Result<Value, Error> },
}

/// What a step tells the scheduler.
#[derive(Debug)]
pub enum Status {
    /// Still has work (preempted after its budget): run again after others had a turn.
    Yield,
    /// Waits for a message.
    Wait,
    /// Waits for a command's completion.
    Block,
    /// Finished.
    Exit(ExitResult),
}

/// The events of one step, taken from the mailbox in arrival order. Events the step does
/// not take stay queued, in order, and are offered again at the next step (which follows
/// at once).
pub struct Events<'a> {
    pub(crate) mailbox: &'a Mailbox<Event>,
    pub(crate) topo: &'a parking_lot::Mutex<crate::cell::Topo>,
    pub(crate) popped: usize,
}

impl Events<'_> {
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Event> {
        loop {
            let e = self.mailbox.pop();
            self.popped += e.is_some() as usize;
            if let Some(Event::Completion { id, .. }) = &e {
                if self.was_cancelled(*id) {
                    continue;
                }
            }
            return e;
        }
    }
    /// A completion of a command this process cancelled (already on its way then).
    #[cold]
    fn was_cancelled(&self, id: CommandId) -> bool {
        self.topo.lock().more.as_ref().is_some_and(|m| m.cancelled.contains(&id))
    }
    pub fn peek(&self) -> Option<&Event> {
        self.mailbox.peek()
    }
    /// Events still queued (approximate while senders are pushing).
    pub fn len(&self) -> usize {
        self.mailbox.queued().saturating_sub(self.popped)
    }
    pub fn is_empty(&self) -> bool {
        !self.mailbox.has_next()
    }
}

/// A process: a state machine stepped by the scheduler.
///
/// `init` runs first, on a worker of the process's host (never in the spawner), with the
/// entry method and the spawn arguments. Then `step` runs whenever events are queued (or
/// right away after `Yield`). `close` runs once, after the last step, whatever the reason.
/// A panic in any of them ends the process abnormally; it never takes down the worker.
/// Something an embedder hands one process at spawn (see [`crate::Spawn::attach`]); the
/// process downcasts it to the type it knows.
pub type Attachment = std::sync::Arc<dyn std::any::Any + Send + Sync>;

pub trait Process: Send + 'static {
    fn init(&mut self, cx: &mut Context<'_>, method: &str, args: Vec<Value>) -> Status {
        let _ = (cx, method, args);
        Status::Wait
    }
    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status;
    /// Take an object given with [`crate::Spawn::attach`] (before the first step). A
    /// process that has no use for it drops it.
    fn attach(&mut self, attachment: Attachment) {
        let _ = attachment;
    }
    fn close(&mut self, cx: &mut Context<'_>, result: &ExitResult) {
        let _ = (cx, result);
    }
}

/// A process made by a [`ProcessFactory`], and the group that schedules it (a Lua shard),
/// if any.
pub struct NewProcess {
    pub process: Box<dyn Process>,
    pub group: Option<std::sync::Arc<dyn crate::cell::ProcessGroup>>,
    /// The entry label its process carries (for `ps`/`inspect`); `None`: the runtime
    /// interns the entry ID itself (a factory that spawns often keeps one ready).
    pub label: Option<&'static crate::stats::EntryLabel>,
    /// The entry's own `security:` block, applied over the identity the process would
    /// otherwise start with.
    pub security: Option<std::sync::Arc<crate::security::EntrySecurity>>,
}

impl From<Box<dyn Process>> for NewProcess {
    fn from(process: Box<dyn Process>) -> NewProcess {
        NewProcess { process, group: None, label: None, security: None }
    }
}

/// Makes processes for an entry ID, so `spawn("ns:name", ...)` works for any process kind.
/// `host` is where the process will run (a Lua factory picks one of that host's shards).
pub trait ProcessFactory: Send + Sync + 'static {
    fn create(&self, entry: &str, host: &crate::host::HostRef) -> Result<NewProcess, Error>;
}

impl<F> ProcessFactory for F
where
    F: Fn(&str) -> Result<Box<dyn Process>, Error> + Send + Sync + 'static,
{
    fn create(&self, entry: &str, _host: &crate::host::HostRef) -> Result<NewProcess, Error> {
        Ok(self(entry)?.into())
    }
}
