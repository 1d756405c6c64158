//! What a process can do during a step: send, spawn, link, monitor, name, cancel,
//! terminate, yield commands, consult its budget. Every operation is synchronous and
//! returns its result at once; only yielded commands complete later, as events.
//!
//! This is the one door from a process into the runtime: every operation is checked here
//! against the process's actor and scope (SPEC §7.2) and its host's boundary (§7.3), so
//! native and Lua processes are checked alike. A denied operation does nothing.

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
use crate::host::HostSecurity;
use crate::security::{denied, evaluate, Identity, Request, Target};
use crate::value::{Table, Value};
use crate::warm::{prefetch_range, WARM};

/// A send into a mailbox holding this many messages or more costs one extra reduction
/// per this many messages queued.
const SEND_PENALTY_FROM: usize = 256;

/// Consecutive sends to one receiver within a step are queued together, at most this many
/// at a time: one atomic swap, one count and one wake-up for the lot instead of one each,
/// which is what keeps a receiver's queue from bouncing between cores under fan-in.
const BATCH: usize = 64;

/// What a message costs in its receiver's mailbox beyond its queue node: a topic too long
/// to sit inline, payload values past the first, and what the values hold.
#[inline]
pub(crate) fn payload_bytes(topic: &str, payload: &Payload) -> usize {
    let topic = if topic.len() > crate::topic::INLINE { 16 + topic.len() } else { 0 };
    let spilled = if payload.spilled() { payload.len() * std::mem::size_of::<Value>() } else { 0 };
    topic + spilled + payload.iter().map(Value::heap_bytes).sum::<usize>()
}

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

    /// Leave where this process's next step will start in memory (see [`WARM`]): up to
    /// three addresses, each with the two lines after it, that a sender prefetches when it
    /// queues a message for this process. Hints only; null ones are skipped. Set them when
    /// the step ends waiting.
    pub fn set_warm(&mut self, addrs: [*const u8; WARM]) {
        self.cell.warm.set(addrs);
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
            if pid.node() != self.node.local {
                return self.send_remote(pid, topic, payload);
            }
            self.switch_target(pid, &dest)?;
        }
        let cell = self.last_target.as_ref().expect("just set");
        if cell.mailbox.is_closed() {
            return Err(self.target_gone(&dest));
        }
        // Start loading what the receiver's next step touches first (see warm.rs): by the
        // time this step ends and the receiver runs, it is in the cache. Once per batch
        // (the first message of one); the cell from the Arc's two counts before it on.
        if self.outbox.len() == 0 {
            prefetch_range((Arc::as_ptr(cell) as *const u8).wrapping_sub(16), 16 + std::mem::size_of::<ProcCell>());
            cell.warm.prefetch();
        }
        let from = self.cell.pid;
        let extra = payload_bytes(topic, &payload);
        Mailbox::chain_with(&mut self.outbox, extra, || Event::Message(Message { from, topic: Topic::new(topic), payload }));
        // Back-pressure through the scheduler: sending into a long mailbox costs extra
        // reductions, so producers yield sooner and their consumer catches up.
        let backlog = self.backlog + self.outbox.len();
        if backlog >= SEND_PENALTY_FROM {
            self.consume((backlog / SEND_PENALTY_FROM) as u32);
        }
        Ok(())
    }

    /// A send to a process of another node: its permission here (SPEC §13.4: checked on
    /// the caller's node), then queued for its node (which checks its host boundary).
    #[cold]
    #[inline(never)]
    fn send_remote(&mut self, pid: Pid, topic: &str, payload: Payload) -> Result<(), Error> {
        self.check_target("process.send", pid, None)?;
        self.node.remote_for(pid)?.send(&self.cell.origin(), pid, topic, payload)
    }

    /// The receiver exited: what was pending for it is dropped with it.
    #[cold]
    #[inline(never)]
    fn target_gone(&mut self, dest: &Dest) -> Error {
        self.outbox = Chain::new();
        *self.last_target = None;
        Error::process_not_found(dest)
    }

    /// A send to a new receiver: look it up and check the send (once per new receiver:
    /// the decision depends only on this process's identity and the receiver, so a run of
    /// sends to one receiver is checked once). Out of line, so `send` stays small.
    #[cold]
    #[inline(never)]
    fn switch_target(&mut self, pid: Pid, dest: &Dest) -> Result<(), Error> {
        let cell = self.node.table.get(pid).ok_or_else(|| Error::process_not_found(dest))?;
        self.check_boundary("process.send", &pid.to_string(), &cell.host.config)?;
        self.check_target("process.send", pid, Some(&cell))?;
        *self.last_target = Some(cell);
        Ok(())
    }

    /// Queue the pending batch of sends (nothing to do is the common case, checked inline).
    /// Anything that delivers on this process's behalf outside its batch (the event bus)
    /// flushes first, so what it sent before arrives before.
    #[inline]
    pub fn flush(&mut self) {
        if self.outbox.len() != 0 {
            self.flush_batch();
        }
    }

    fn flush_batch(&mut self) {
        let cell = self.last_target.as_ref().expect("a batch has a receiver");
        let n = self.outbox.len();
        let (wake, (queued, bytes)) = cell.mailbox.push_chain(&mut self.outbox);
        crate::stats::add(crate::stats::Counter::Messages, n as u64);
        self.backlog = queued - n.min(queued);
        if wake {
            self.node.schedule_ref(cell, Hint::Woken);
        }
        // Past its host's limits the receiver ends. Until it has run and exited it still
        // takes what arrives; its exit frees the whole queue.
        if let Some(code) = cell.host.config.mailbox_over(queued, bytes) {
            self.node.overflow(cell, code);
        }
    }

    /// Tell operators how many messages this process holds taken from its mailbox but not
    /// yet received (a Lua process's pending queue): `ps` adds them to its mailbox length.
    #[inline]
    pub fn set_backlog(&mut self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let w = self.cell.work.load(Relaxed);
        let n = (n as u64).min((1 << (64 - crate::cell::STEP_BITS)) - 1);
        self.cell.work.store((w & crate::cell::STEP_MASK) | (n << crate::cell::STEP_BITS), Relaxed);
    }

    /// Send a single value.
    pub fn send1(&mut self, dest: impl Into<Dest>, topic: &str, value: impl Into<Value>) -> Result<(), Error> {
        let mut p = Payload::new();
        p.push(value.into());
        self.send(dest, topic, p)
    }

    /// Whether operations of this process need a permission check at all.
    #[inline]
    fn checked(&self) -> bool {
        self.cell.identity.is_some() || self.node.security.strict()
    }

    /// May this process do `action` on `resource`? (SPEC §7.2; `meta.pid` is this PID.)
    pub fn can(&self, action: &str, resource: &str) -> bool {
        self.can_with(action, resource, None)
    }

    fn can_with(&self, action: &str, resource: &str, meta: Option<&Table>) -> bool {
        if !self.checked() {
            return true;
        }
        let req = Request { action, resource, pid: Some(self.cell.pid), meta, target: None };
        evaluate(self.cell.identity.as_deref(), self.node.security.strict(), &req)
    }

    /// `Ok` when allowed, else PermissionDenied naming the action and resource.
    pub fn allow(&self, action: &str, resource: &str) -> Result<(), Error> {
        if self.can(action, resource) {
            Ok(())
        } else {
            Err(denied(action, resource))
        }
    }

    /// As [`Context::allow`], with the request's metadata (`meta.*` in policy conditions).
    pub fn allow_with(&self, action: &str, resource: &str, meta: &Table) -> Result<(), Error> {
        if self.can_with(action, resource, Some(meta)) {
            Ok(())
        } else {
            Err(denied(action, resource))
        }
    }

    /// The permission for an operation on process `pid` (its cell, `None` when it is gone):
    /// the request's `meta.target` describes it (its actor and host), so policies can say
    /// "only processes of my own organisation".
    fn check_target(&self, action: &str, pid: Pid, cell: Option<&ProcCell>) -> Result<(), Error> {
        if !self.checked() {
            return Ok(());
        }
        let target = cell.map(|c| Target { identity: c.identity.as_deref(), host: &c.host.config.name });
        let resource = pid.to_string();
        let req = Request { action, resource: &resource, pid: Some(self.cell.pid), meta: None, target };
        if evaluate(self.cell.identity.as_deref(), self.node.security.strict(), &req) {
            Ok(())
        } else {
            Err(denied(action, &resource))
        }
    }

    /// An operation on another process (by PID or name): its host's boundary (SPEC §7.3),
    /// then the permission (§7.2). A target that is gone is left to the operation itself
    /// to report.
    fn check_dest(&self, action: &str, dest: &Dest) -> Result<(), Error> {
        let pid = self.node.resolve(dest)?;
        // the runtime's own processes (supervisor agents) are nobody's to end or tie to:
        // a terminated agent would leave its services unwatched
        if pid.is_system() && !self.cell.pid.is_system() && matches!(action, "process.terminate" | "process.cancel" | "process.link") {
            return Err(denied(action, &format!("{pid} (a process of the runtime)")));
        }
        let cell = self.node.table.get(pid);
        if let Some(cell) = &cell {
            self.check_boundary(action, &pid.to_string(), &cell.host.config)?;
        }
        self.check_target(action, pid, cell.as_deref())
    }

    /// Nothing crosses a forbidden host boundary (SPEC §7.3): an operation of this process
    /// that reaches into host `to` needs this host's `send_to` and `to`'s `receive_from`
    /// to allow it. Denied: PermissionDenied naming the action, the target and both hosts.
    fn check_boundary(&self, action: &str, target: &str, to: &crate::host::HostConfig) -> Result<(), Error> {
        if HostSecurity::crossing_allowed(&self.cell.host.config, to) {
            return Ok(());
        }
        let from = &self.cell.host.config.name;
        Err(denied(action, &format!("{target} (from host {from} to host {})", to.name)))
    }

    /// The actor and scope this process runs under.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.cell.identity.as_ref()
    }

    /// Spawn on this process's own host.
    pub fn spawn(&mut self, spawn: Spawn) -> Result<Pid, Error> {
        let host = self.cell.host.config.name.clone();
        self.spawn_on(&host, spawn)
    }

    /// Spawn on the named host. Checked: `process.host` (the host), `process.spawn`,
    /// `process.spawn.linked`/`.monitored` or `process.exec` (the entry), and
    /// `process.context` / `process.security` when the spawn sets context or identity.
    pub fn spawn_on(&mut self, host: &str, spawn: Spawn) -> Result<Pid, Error> {
        self.flush();
        let target = if host == self.cell.host.config.name {
            self.cell.host.clone()
        } else {
            // `node@host`: another node's host (beyond Wippy, SPEC §13)
            match host.split_once('@') {
                Some((node, h)) if node != self.node.local.as_str() => return self.spawn_remote(node, h, spawn),
                Some((_, h)) => return self.spawn_on(h, spawn),
                None => self.node.host_for_spawn(host)?,
            }
        };
        // a spawn hands the new process its arguments (and with_message's messages) on `host`
        self.check_boundary("process.host", host, &target.config)?;
        if spawn.is_call() {
            // a function call (SPEC §12.4.2): its own permissions
            if self.checked() && !self.can("funcs.call", spawn.entry_id()) {
                return Err(Error::new(crate::ErrorKind::PermissionDenied, format!("not allowed: {}", crate::error::Echo(spawn.entry_id())))
                    .with_retryable(false));
            }
            if spawn.sets_context() {
                self.allow("funcs.context", "context")?;
            }
            if spawn.sets_identity() {
                self.allow("funcs.security", "security")?;
            }
            return self.node.spawn(Some(self.cell), &target, spawn, None, self.context.clone(), self.cell.identity.clone());
        }
        if self.checked() {
            self.allow("process.host", host)?;
            let action = if spawn.is_exec() {
                "process.exec"
            } else if spawn.link {
                "process.spawn.linked"
            } else if spawn.monitor {
                "process.spawn.monitored"
            } else {
                "process.spawn"
            };
            self.allow(action, spawn.entry_id())?;
        }
        if spawn.sets_context() {
            self.allow("process.context", "context")?;
        }
        if spawn.sets_identity() {
            self.allow("process.security", "security")?;
        }
        self.node.spawn(Some(self.cell), &target, spawn, None, self.context.clone(), self.cell.identity.clone())
    }

    /// Spawn an entry on host `host` of node `node`: that node's policies decide (it checks
    /// the spawn under this process's actor and scope, and its host's boundary). A linked or
    /// monitored spawn is linked or monitored once the child exists (if it exits before, the
    /// link or monitor fires at once, as for any exited process).
    #[cold]
    #[inline(never)]
    fn spawn_remote(&mut self, node: &str, host: &str, spawn: Spawn) -> Result<Pid, Error> {
        let Some((entry, method, args)) = spawn.entry_parts() else {
            return Err(Error::invalid("only an entry can be spawned on another node"));
        };
        let remote = self.node.remote.get().ok_or_else(|| Error::not_found(format!("node not found: {node} (this node is not in a cluster)")))?;
        let node = crate::pid::HostName::new(node);
        let pid = remote.spawn(&self.cell.origin(), self.cell.identity.as_deref(), node, host, entry, method, args)?;
        if spawn.link {
            self.link(pid)?;
        }
        if spawn.monitor {
            self.monitor(pid)?;
        }
        Ok(pid)
    }

    /// Spawn a child monitored by this process, without the checks of [`Self::spawn_on`]:
    /// for the node's service supervisor only, whose services were checked when the
    /// project loaded (a user process cannot reach this).
    pub(crate) fn spawn_supervised(&mut self, host: &str, spawn: Spawn) -> Result<Pid, Error> {
        self.flush();
        let target = self.node.host_for_spawn(host)?;
        self.node.spawn(Some(self.cell), &target, spawn.monitored(), None, None, None)
    }

    pub fn link(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.link", &dest)?;
        self.node.link(self.cell, &dest)
    }
    pub fn unlink(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.unlink", &dest)?;
        self.node.unlink(self.cell, &dest)
    }
    pub fn monitor(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.monitor", &dest)?;
        self.node.monitor(self.cell, &dest)
    }
    pub fn unmonitor(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.unmonitor", &dest)?;
        self.node.unmonitor(self.cell, &dest)
    }

    /// End `dest` at its next scheduling point with "process terminated".
    pub fn terminate(&mut self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.terminate", &dest)?;
        self.node.terminate(&self.cell.origin(), &dest)
    }

    /// Queue a CANCEL event for `dest` (cooperative).
    pub fn cancel(&mut self, dest: impl Into<Dest>, reason: &str) -> Result<(), Error> {
        self.flush();
        let dest = dest.into();
        self.check_dest("process.cancel", &dest)?;
        self.node.cancel(&self.cell.origin(), &dest, reason)
    }

    /// Forward a cancellation to a function call this process is making (SPEC §12.4.4: the
    /// caller was canceled first). No permission of its own: the right came with the call
    /// (`funcs.call`), and only the process this one spawned as a call and still waits on is
    /// meant here (the Lua prelude keeps that list; user code cannot reach this).
    pub fn cancel_call(&mut self, callee: Pid, reason: &str) -> Result<(), Error> {
        self.flush();
        self.node.cancel(&self.cell.origin(), &Dest::Pid(callee), reason)
    }

    /// Register `name` for this process.
    pub fn register(&mut self, name: &str) -> Result<(), Error> {
        self.flush();
        self.allow("process.registry.register", name)?;
        self.node.names.register(self.cell, name)
    }

    /// Register `name` for `pid` (this process, or another live local one with
    /// `process.registry.foreign`) in `scope` (SPEC §13.5): `Local` is this node's table,
    /// the others the cluster's (off a cluster, this node's table too). Checked as
    /// `process.registry.register.<scope>` when the scope is not `Local`.
    pub fn register_scoped(&mut self, name: &str, pid: Pid, scope: crate::remote::NameScope) -> Result<(), Error> {
        match self.register_scoped_later(name, pid, scope)? {
            None => Ok(()),
            Some(work) => {
                // (blocking this worker for the cluster's round trip: see register_scoped_later)
                let (tx, rx) = std::sync::mpsc::channel();
                self.node.dispatch.handle().spawn(async move {
                    let _ = tx.send(work.await);
                });
                rx.recv().unwrap_or_else(|_| Err(Error::internal("name registration was dropped"))).map(|_| ())
            }
        }
    }

    /// [`Context::register_scoped`] without holding this worker while the cluster answers:
    /// `None` when it is done, else the rest of it, for the process to run as a command
    /// (`Command::Task`) and wait for. The name is recorded with the process (its exit
    /// releases it) when that work succeeds.
    pub fn register_scoped_later(
        &mut self,
        name: &str,
        pid: Pid,
        scope: crate::remote::NameScope,
    ) -> Result<Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Error>> + Send>>>, Error> {
        if scope == crate::remote::NameScope::Local {
            return (if pid == self.cell.pid { self.register(name) } else { self.register_for(name, pid) }).map(|_| None);
        }
        let Some(remote) = self.node.remote.get() else {
            // one node is the whole cluster: its table gives every scope's guarantee
            return self.register_scoped_later(name, pid, crate::remote::NameScope::Local);
        };
        self.flush();
        let pid = self.node.resolve(&Dest::Pid(pid))?;
        if pid != self.cell.pid {
            self.check_dest("process.registry.foreign", &Dest::Pid(pid))?;
        }
        self.allow(&format!("process.registry.register.{}", scope.as_str()), name)?;
        let cell = self.node.table.get(pid).ok_or_else(|| Error::process_not_found(pid))?;
        crate::names::check_name(name)?;
        let name = smol_str::SmolStr::new(name);
        match remote.register_later(&name, pid, scope)? {
            None => record_name(remote, &cell, name).map(|_| None),
            Some(work) => {
                let remote = remote.clone();
                Ok(Some(Box::pin(async move {
                    work.await?;
                    record_name(&remote, &cell, name).map(|_| Value::Bool(true))
                })))
            }
        }
    }

    /// Register `name` for another live process (`process.registry.foreign` on its PID).
    pub fn register_for(&mut self, name: &str, pid: Pid) -> Result<(), Error> {
        self.flush();
        if pid != self.cell.pid {
            self.check_dest("process.registry.foreign", &Dest::Pid(pid))?;
        }
        self.allow("process.registry.register", name)?;
        self.node.register(name, pid)
    }

    /// Register `name` for a process this one has just spawned (a spawner's `with_name`):
    /// checked as `process.registry.register` only.
    pub fn register_spawned(&mut self, name: &str, child: Pid) -> Result<(), Error> {
        self.flush();
        self.allow("process.registry.register", name)?;
        self.node.register(name, child)
    }

    /// The process `name` resolves to: a cluster-wide name first, then this node's
    /// (SPEC §13.5's order).
    pub fn lookup(&self, name: &str) -> Option<Pid> {
        self.node.lookup(name)
    }
    /// `Ok(true)` if the name was registered (to anyone) and is now removed.
    pub fn unregister(&mut self, name: &str) -> Result<bool, Error> {
        self.flush();
        self.allow("process.registry.unregister", name)?;
        if let Some(r) = self.node.remote.get() {
            if let Some(done) = r.unregister(name) {
                return Ok(done);
            }
        }
        Ok(self.node.unregister(name))
    }

    /// Trap links: LINK_DOWN arrives as an event instead of killing this process.
    pub fn set_trap_links(&mut self, on: bool) {
        self.flush();
        self.cell.trap_links.store(on, Ordering::Release);
    }
    pub fn trap_links(&self) -> bool {
        self.cell.trap_links.load(Ordering::Acquire)
    }

    /// Start a command, refusing it when this process already has
    /// [`MAX_PENDING_COMMANDS`](crate::MAX_PENDING_COMMANDS) pending (LimitExceeded); its
    /// completion arrives as an event with the returned id.
    pub fn try_command(&mut self, cmd: Command) -> Result<CommandId, Error> {
        let pending = self.cell.topo.lock().more.as_ref().map_or(0, |m| m.timers.len());
        if pending >= crate::dispatch::MAX_PENDING_COMMANDS {
            return Err(crate::dispatch::too_many(self.cell.pid));
        }
        Ok(self.command(cmd))
    }

    /// Start a command; its completion arrives as an event with the returned id (past
    /// the pending limit, at once, with LimitExceeded).
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
                if m.cancelled.len() >= 16 {
                    m.cancelled.remove(0);
                }
                m.cancelled.push(id);
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

    /// Bytes this process's queued messages hold (see `HostConfig::max_mailbox_bytes`):
    /// a process with a memory limit counts them toward it.
    pub fn mailbox_bytes(&self) -> usize {
        self.cell.mailbox.queued_bytes()
    }

    /// Whether someone terminated this process (it ends when the step returns).
    pub fn is_terminated(&self) -> bool {
        self.cell.kill_error().is_some()
    }
}

/// A cluster-wide name now held by `cell`'s process, recorded with it so its exit releases
/// it (see `Remote::released`); a process that exited meanwhile lets it go at once.
fn record_name(remote: &Arc<dyn crate::remote::Remote>, cell: &Arc<ProcCell>, name: smol_str::SmolStr) -> Result<(), Error> {
    let mut t = cell.topo.lock();
    if cell.exited.load(Ordering::Relaxed) {
        drop(t);
        remote.released(cell.pid, &[name]);
        return Err(Error::process_not_found(cell.pid));
    }
    let names = &mut t.more().names;
    if !names.iter().any(|n| *n == name) {
        names.push(name);
    }
    Ok(())
}
