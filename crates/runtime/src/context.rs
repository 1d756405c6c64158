//! What a process can do during a step: send, spawn, link, monitor, name, cancel,
//! terminate, yield commands, consult its budget. Every operation is synchronous and
//! returns its result at once; only yielded commands complete later, as events.
//!
//! This is the one door from a process into the runtime: permission checks (security)
//! will be added here, so native and Lua processes are checked alike.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cell::ProcCell;
use crate::error::Error;
use crate::host::HostRef;
use crate::mailbox::{Chain, Mailbox};
use crate::node::{Dest, NodeInner, NodeRef, Spawn};
use crate::process::{Event, Message};
use crate::scheduler::Hint;
use crate::topic::Topic;
use crate::pid::Pid;
use crate::process::{Command, CommandId, Payload};
use crate::value::{Table, Value};

/// A send into a mailbox holding this many messages or more costs one extra reduction
/// per this many messages queued.
const SEND_PENALTY_FROM: usize = 256;

/// Consecutive sends to one receiver within a step are queued together, at most this many
/// at a time: one atomic swap, one count and one wake-up for the lot instead of one each,
/// which is what keeps a receiver's queue from bouncing between cores under fan-in.
const BATCH: usize = 64;

pub struct Context<'a> {
    node: &'a Arc<NodeInner>,
    cell: &'a Arc<ProcCell>,
    next_command: &'a mut u64,
    /// The receiver of the last send (kept across steps: repeated sends skip the table).
    last_target: &'a mut Option<Arc<ProcCell>>,
    context: &'a Option<Arc<Table>>,
    /// Messages for `last_target` not queued yet. Flushed before any other operation,
    /// at `BATCH`, and when the step ends, so every ordering a process can observe holds.
    outbox: Chain<Event>,
    /// The receiver's backlog as of the last flush (for back-pressure).
    backlog: usize,
    budget: u32,
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        node: &'a Arc<NodeInner>,
        cell: &'a Arc<ProcCell>,
        next_command: &'a mut u64,
        last_target: &'a mut Option<Arc<ProcCell>>,
        context: &'a Option<Arc<Table>>,
    ) -> Self {
        // A process with a backlog gets a longer step (up to 32x the host's budget), so a
        // consumer that many producers feed gets a share of the worker that grows with
        // its queue instead of one turn in every N.
        let base = cell.host.config.budget;
        let boost = (cell.mailbox.queued() / 8).min(base as usize * 31) as u32;
        Context { node, cell, next_command, last_target, context, outbox: Chain::new(), backlog: 0, budget: base + boost }
    }

    /// This process's PID.
    pub fn pid(&self) -> Pid {
        self.cell.pid
    }

    /// The host this process runs on.
    pub fn host(&self) -> HostRef {
        HostRef(self.cell.host.clone())
    }

    pub fn node(&self) -> NodeRef {
        NodeRef { inner: self.node.clone() }
    }

    /// Send `payload` on `topic` to a PID or registered name. Per-sender FIFO.
    pub fn send(&mut self, dest: impl Into<Dest>, topic: &str, payload: Payload) -> Result<(), Error> {
        let dest = dest.into();
        crate::node::check_topic(topic)?;
        let pid = self.node.resolve(&dest)?;
        let same = self.last_target.as_ref().is_some_and(|c| c.pid == pid);
        if !same || self.outbox.len() >= BATCH {
            self.flush();
        }
        if !same {
            *self.last_target = Some(self.node.table.get(pid).ok_or_else(|| Error::process_not_found(&dest))?);
        }
        let cell = self.last_target.as_ref().expect("just set");
        if cell.mailbox.is_closed() {
            // The receiver exited: what was pending for it is dropped with it.
            self.outbox = Chain::new();
            *self.last_target = None;
            return Err(Error::process_not_found(&dest));
        }
        let from = self.cell.pid;
        Mailbox::chain_with(&mut self.outbox, || Event::Message(Message { from, topic: Topic::new(topic), payload }));
        // Back-pressure through the scheduler: sending into a long mailbox costs extra
        // reductions, so producers yield sooner and their consumer catches up.
        let backlog = self.backlog + self.outbox.len();
        if backlog >= SEND_PENALTY_FROM {
            self.consume((backlog / SEND_PENALTY_FROM) as u32);
        }
        Ok(())
    }

    /// Queue the pending batch of sends.
    pub(crate) fn flush(&mut self) {
        if self.outbox.len() == 0 {
            return;
        }
        let cell = self.last_target.as_ref().expect("a batch has a receiver");
        let (wake, backlog) = cell.mailbox.push_chain(&mut self.outbox);
        self.backlog = backlog;
        if wake {
            self.node.schedule(cell.clone(), Hint::Woken);
        }
    }

    /// Send a single value.
    pub fn send1(&mut self, dest: impl Into<Dest>, topic: &str, value: impl Into<Value>) -> Result<(), Error> {
        let mut p = Payload::new();
        p.push(value.into());
        self.send(dest, topic, p)
    }

    /// Spawn on this process's own host.
    pub fn spawn(&mut self, spawn: Spawn) -> Result<Pid, Error> {
        self.flush();
        let host = self.cell.host.clone();
        self.node.spawn(Some(self.cell), &host, spawn, None, self.context.clone())
    }

    /// Spawn on the named host.
    pub fn spawn_on(&mut self, host: &str, spawn: Spawn) -> Result<Pid, Error> {
        self.flush();
        let host = if host == self.cell.host.config.name { self.cell.host.clone() } else { self.node.host_for_spawn(host)? };
        self.node.spawn(Some(self.cell), &host, spawn, None, self.context.clone())
    }

    pub fn link(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        self.node.link(self.cell, &dest.into())
    }
    pub fn unlink(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        self.node.unlink(self.cell, &dest.into())
    }
    pub fn monitor(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        self.node.monitor(self.cell, &dest.into())
    }
    pub fn unmonitor(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        self.node.unmonitor(self.cell, &dest.into())
    }

    /// End `dest` at its next scheduling point with "process terminated".
    pub fn terminate(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        self.node.terminate(&dest.into())
    }

    /// Queue a CANCEL event for `dest` (cooperative).
    pub fn cancel(&mut self, dest: impl Into<Dest>, reason: &str) -> Result<(), Error> {
        self.flush();
        self.node.cancel(self.cell.pid, &dest.into(), reason)
    }

    /// Register `name` for this process.
    pub fn register(&mut self, name: &str) -> Result<(), Error> {
        self.flush();
        self.node.names.register(self.cell, name)
    }
    /// Register `name` for another live process.
    pub fn register_for(&mut self, name: &str, pid: Pid) -> Result<(), Error> {
        self.flush();
        self.node.register(name, pid)
    }
    pub fn lookup(&self, name: &str) -> Option<Pid> {
        self.node.names.lookup(name)
    }
    /// `true` if the name was registered (to anyone) and is now removed.
    pub fn unregister(&mut self, name: &str) -> bool {
        self.flush();
        self.node.unregister(name)
    }

    /// Trap links: LINK_DOWN arrives as an event instead of killing this process.
    pub fn set_trap_links(&mut self, on: bool) {
        self.flush();
        self.cell.trap_links.store(on, Ordering::Release);
    }
    pub fn trap_links(&self) -> bool {
        self.cell.trap_links.load(Ordering::Acquire)
    }

    /// Start a command; its completion arrives as an event with the returned id.
    pub fn command(&mut self, cmd: Command) -> CommandId {
        self.flush();
        let id = CommandId(*self.next_command);
        *self.next_command += 1;
        self.node.dispatch.start(self.node, self.cell, id, cmd);
        id
    }

    /// Cancel a pending command (a timer or ticker). `true` if it was still pending.
    pub fn cancel_command(&mut self, id: CommandId) -> bool {
        self.flush();
        let handle = {
            let mut t = self.cell.topo.lock();
            t.more.as_mut().and_then(|m| {
                let i = m.timers.iter().position(|(t, _)| *t == id)?;
                Some(m.timers.swap_remove(i).1)
            })
        };
        match handle {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Reductions left in this step.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Spend `n` reductions; `false` once the budget is spent (time to return `Yield`).
    #[inline]
    pub fn consume(&mut self, n: u32) -> bool {
        self.budget = self.budget.saturating_sub(n);
        self.budget > 0
    }

    /// The host's time slice (how long Lua code may run before it is preempted).
    pub fn time_slice(&self) -> Duration {
        self.cell.host.config.time_slice
    }

    /// The context values this process was spawned with (`with_context`), if any.
    pub fn context_values(&self) -> Option<&Arc<Table>> {
        self.context.as_ref()
    }

    /// Whether someone terminated this process (it ends when the step returns).
    pub fn is_terminated(&self) -> bool {
        self.cell.kill_error().is_some()
    }
}
