//! The node: one runtime instance. Owns the hosts, the process table, the name registry,
//! the dispatch runtime and the entry factories; routes sends; spawns; steps processes;
//! announces exits (SPEC §4.1 order: table, names, monitors, links).
//!
//! `Node` is the owner (dropping it shuts everything down); `NodeRef` is a cheap handle for
//! other threads. Nothing here knows about Lua or YAML.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use smol_str::SmolStr;

use crate::cell::{ProcCell, ProcessGroup, ProcessRef};
use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::Error;
use crate::host::{Host, HostConfig, HostRef, RUNNING, STOPPED, STOPPING};
use crate::mailbox::ProcessState;
use crate::names::Names;
use crate::pid::{HostName, Pid, PidCounter};
use crate::process::{Attachment, Event, Events, ExitResult, Message, Payload, Process, ProcessFactory, Status};
use crate::security::{Identity, Security};
use crate::topic::Topic;
use crate::scheduler::Hint;
use crate::table::ProcessTable;
use crate::value::{Table, Value};

/// Where a message or request goes: a PID or a registered name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Pid(Pid),
    Name(SmolStr),
}

impl From<Pid> for Dest {
    fn from(p: Pid) -> Dest {
        Dest::Pid(p)
    }
}
impl From<&Pid> for Dest {
    fn from(p: &Pid) -> Dest {
        Dest::Pid(*p)
    }
}
impl Dest {
    /// The one reading of a destination string, for every path that takes one (SPEC §4.2):
    /// a string that starts with `{` is a PID and must parse as one; any other string is a
    /// registered name.
    pub fn parse(s: &str) -> Result<Dest, crate::pid::PidParseError> {
        if s.starts_with('{') {
            s.parse::<Pid>().map(Dest::Pid)
        } else {
            Ok(Dest::Name(SmolStr::new(s)))
        }
    }
}

impl From<&str> for Dest {
    /// As [`Dest::parse`]; a malformed PID is kept as written, and sending to it fails with
    /// the parse error (Invalid), as it does from Lua.
    fn from(s: &str) -> Dest {
        Dest::parse(s).unwrap_or_else(|_| Dest::Name(SmolStr::new(s)))
    }
}
impl From<String> for Dest {
    fn from(s: String) -> Dest {
        Dest::from(s.as_str())
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Pid(p) => write!(f, "{p}"),
            Dest::Name(n) => write!(f, "'{n}'"),
        }
    }
}

enum What {
    Process(Box<dyn Process>),
    Entry(SmolStr),
}

/// What to spawn and how.
pub struct Spawn {
    what: What,
    method: SmolStr,
    args: Vec<Value>,
    pub(crate) link: bool,
    pub(crate) monitor: bool,
    group: Option<Arc<dyn ProcessGroup>>,
    context: Option<Arc<Table>>,
    identity: Option<Arc<Identity>>,
    /// Spawned by `exec` (checked as `process.exec`).
    exec: bool,
    /// A function call (`funcs.call`/`async`: checked as `funcs.call`, `funcs.context` and
    /// `funcs.security`).
    call: bool,
    /// Handed to the process before its first step (see [`Process::attach`]).
    attachment: Option<Attachment>,
    /// One of the runtime's own processes, shown under this label (its PID comes from
    /// the system range: see [`PidCounter`]).
    system: Option<&'static str>,
}

/// Called with a process's exit result (see [`Node::spawn_then`]).
pub type ExitCallback = Box<dyn FnOnce(Pid, ExitResult) + Send>;

impl Spawn {
    /// Spawn this process object.
    pub fn process(p: impl Process) -> Spawn {
        Spawn::boxed(Box::new(p))
    }
    pub fn boxed(p: Box<dyn Process>) -> Spawn {
        Spawn { what: What::Process(p), method: SmolStr::new_static("main"), args: Vec::new(), link: false, monitor: false, group: None, context: None, identity: None, exec: false, call: false, attachment: None, system: None }
    }
    /// Spawn the entry `id` through its registered factory.
    pub fn entry(id: &str) -> Spawn {
        Spawn { what: What::Entry(SmolStr::new(id)), ..Spawn::boxed(Box::new(Nothing)) }
    }
    pub fn method(mut self, m: &str) -> Spawn {
        self.method = SmolStr::new(m);
        self
    }
    pub fn args(mut self, args: Vec<Value>) -> Spawn {
        self.args = args;
        self
    }
    pub fn arg(mut self, a: impl Into<Value>) -> Spawn {
        self.args.push(a.into());
        self
    }
    /// Link the child with the spawner before the child's first step.
    pub fn linked(mut self) -> Spawn {
        self.link = true;
        self
    }
    /// Monitor the child from the spawner before the child's first step.
    pub fn monitored(mut self) -> Spawn {
        self.monitor = true;
        self
    }
    /// Give the child these context values instead of the spawner's (see
    /// [`Context::context_values`]).
    pub fn context(mut self, values: Arc<Table>) -> Spawn {
        self.context = Some(values);
        self
    }
    /// Run the child under this actor and scope instead of the spawner's (a process
    /// needs `process.security` to do this).
    pub fn identity(mut self, identity: Arc<Identity>) -> Spawn {
        self.identity = Some(identity);
        self
    }
    /// Mark this spawn as an `exec` (checked as `process.exec`).
    pub fn for_exec(mut self) -> Spawn {
        self.exec = true;
        self
    }
    /// Mark this spawn as a function call (checked as `funcs.call` on the entry, and
    /// `funcs.context` / `funcs.security` for its context and identity).
    pub fn for_call(mut self) -> Spawn {
        self.call = true;
        self
    }
    /// Hand the new process this object before its first step (see [`Process::attach`]):
    /// how an embedder gives one process something that is not a message value, such as
    /// the HTTP exchange a request handler answers.
    pub fn attach(mut self, a: Attachment) -> Spawn {
        self.attachment = Some(a);
        self
    }
    /// Mark this spawn as one of the runtime's own processes, labelled `label`.
    pub(crate) fn system(mut self, label: &'static str) -> Spawn {
        self.system = Some(label);
        self
    }
    pub(crate) fn is_call(&self) -> bool {
        self.call
    }
    pub(crate) fn entry_id(&self) -> &str {
        match &self.what {
            What::Entry(id) => id,
            What::Process(_) => "native",
        }
    }
    /// An entry spawn's entry, method and arguments (`None` for a process object).
    pub(crate) fn entry_parts(&self) -> Option<(&str, &str, &[Value])> {
        match &self.what {
            What::Entry(id) => Some((id, &self.method, &self.args)),
            What::Process(_) => None,
        }
    }
    pub(crate) fn sets_context(&self) -> bool {
        self.context.is_some()
    }
    pub(crate) fn sets_identity(&self) -> bool {
        self.identity.is_some()
    }
    pub(crate) fn is_exec(&self) -> bool {
        self.exec
    }
    /// Schedule the child through a process group instead of on its own.
    pub fn in_group(mut self, g: Arc<dyn ProcessGroup>) -> Spawn {
        self.group = Some(g);
        self
    }
}

struct Nothing;
impl Process for Nothing {
    fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status {
        Status::Exit(Ok(Value::Nil))
    }
}

/// Waits for a process's exit result (see [`Node::spawn_watched`]).
pub struct ExitWatch {
    rx: std::sync::mpsc::Receiver<ExitResult>,
}

impl ExitWatch {
    /// Block until the process exits.
    pub fn wait(self) -> ExitResult {
        self.rx.recv().unwrap_or_else(|_| Err(Error::internal("node stopped before the process exited")))
    }
    /// Block at most `d`; `None` if it is still running.
    pub fn wait_timeout(&self, d: Duration) -> Option<ExitResult> {
        self.rx.recv_timeout(d).ok()
    }
}

/// What stopping a host did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Processes that got the shutdown CANCEL.
    pub canceled: usize,
    /// Processes still alive after the stop timeout, terminated.
    pub terminated: usize,
    /// Processes that did not end even after being terminated (a native step that never
    /// returns); their worker threads are left behind.
    pub stuck: usize,
}

/// Diagnostics for one process.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: Pid,
    pub state: ProcessState,
    /// Messages waiting: in the mailbox, and those the process took from it but has not
    /// received yet (a Lua process's pending messages, see `Context::set_backlog`).
    pub queued: usize,
    pub trap_links: bool,
    /// The process group (Lua shard) it runs in, as an identity: equal for two processes
    /// of one group while that group lives; `None` for a process scheduled on its own.
    pub group: Option<usize>,
    /// The host it runs on.
    pub host: String,
    /// The entry it was spawned from (`None`: a process object spawned directly).
    pub entry: Option<&'static str>,
    /// Bytes its queued messages hold beyond their fixed part.
    pub queued_bytes: usize,
    /// Names registered to it.
    pub names: Vec<SmolStr>,
    pub links: Vec<Pid>,
    /// Processes monitoring it.
    pub monitors: Vec<Pid>,
    /// Processes it monitors.
    pub monitoring: Vec<Pid>,
    /// Timers and other commands still pending.
    pub pending_commands: usize,
    /// Steps it has run (each a resume: the runtime's unit of CPU work).
    pub steps: u64,
    /// Time since it was spawned (to about 10 ms).
    pub age: Duration,
    /// The actor it runs as.
    pub actor: Option<String>,
    /// Memory it holds: its own (`memory_exact`: a Lua process with `isolation: process`,
    /// whose VM is its own) or its share (its group's memory over the group's members, or
    /// for a native process its record and mailbox).
    pub memory: usize,
    pub memory_exact: bool,
}

/// Load of one host, for operators.
#[derive(Debug, Clone)]
pub struct HostStats {
    pub name: String,
    /// Worker threads running.
    pub workers: usize,
    /// Workers not parked (running or looking for work) at the moment of the reading.
    pub busy: usize,
    /// Runnables (processes and Lua shards) waiting in the host's queues.
    pub queued: usize,
    pub processes: usize,
    /// 0: no limit.
    pub max_processes: usize,
}

pub(crate) struct NodeInner {
    pub(crate) counter: PidCounter,
    pub(crate) table: ProcessTable,
    pub(crate) names: Names,
    pub(crate) dispatch: Dispatch,
    hosts: RwLock<Vec<Arc<Host>>>,
    /// Hosts the embedder said exist, running or not ([`Node::declare_host`]): a spawn onto
    /// one that is not running is Unavailable, not NotFound (SPEC §4.2, §12.12).
    declared: RwLock<Vec<HostName>>,
    factories: RwLock<HashMap<SmolStr, Arc<dyn ProcessFactory>>>,
    fallback: RwLock<Option<Arc<dyn ProcessFactory>>>,
    pub(crate) security: Security,
    pub(crate) events: crate::events::EventBus,
    /// Supervisors started on this node (for `services`).
    pub(crate) supervisors: parking_lot::Mutex<Vec<std::sync::Weak<crate::supervisor::Inner>>>,
    /// Who ends the node when a process asks (`system.exit`): set by the embedder.
    exit_hook: RwLock<Option<ExitHook>>,
    /// This node's name in a cluster ([`HostName::NONE`]: no cluster); every local PID
    /// carries it.
    pub(crate) local: HostName,
    /// The cluster, once one is set (see `remote.rs`).
    pub(crate) remote: std::sync::OnceLock<Arc<dyn crate::remote::Remote>>,
}

/// A runtime instance. Dropping it stops every host.
pub struct Node {
    inner: Arc<NodeInner>,
}

/// A cheap, cloneable handle on a node (does not keep it running).
#[derive(Clone)]
#[repr(transparent)]
pub struct NodeRef {
    pub(crate) inner: Arc<NodeInner>,
}

impl Node {
    pub fn new() -> Result<Node, Error> {
        Node::named(None)
    }

    /// A node ID is 1 to 255 bytes without whitespace or any of `{ } | @` (it is the node
    /// part of every PID: SPEC §13.3).
    pub fn check_name(n: &str) -> Result<(), Error> {
        if n.is_empty() || n.len() > 255 || n.contains(['{', '}', '|', '@']) || n.chars().any(char::is_whitespace) {
            return Err(Error::invalid(format!(
                "node name '{}' must be 1 to 255 bytes without whitespace or any of {{ }} | @",
                crate::error::Echo(n)
            )));
        }
        Ok(())
    }

    /// A node that will be part of a cluster as `name` (SPEC §13): its PIDs read
    /// `{name@host|0x…}` and start from a number taken from the clock (about a million per
    /// millisecond of wall time since 1970, far above what one node life can spawn), so a
    /// node restarted under the same name never reuses a PID of its previous life.
    pub fn named(name: Option<&str>) -> Result<Node, Error> {
        let (local, first) = match name {
            None => (HostName::NONE, 1),
            Some(n) => {
                Node::check_name(n)?;
                let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
                (HostName::new(n), (ms & ((1 << 42) - 1)) << 20)
            }
        };
        Ok(Node {
            inner: Arc::new(NodeInner {
                counter: PidCounter::starting_at(first, local),
                table: ProcessTable::new(),
                names: Names::default(),
                dispatch: Dispatch::new()?,
                hosts: RwLock::new(Vec::new()),
                declared: RwLock::new(Vec::new()),
                factories: RwLock::new(HashMap::new()),
                fallback: RwLock::new(None),
                security: Security::default(),
                events: crate::events::EventBus::default(),
                supervisors: Default::default(),
                exit_hook: RwLock::new(None),
                local,
                remote: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn handle(&self) -> NodeRef {
        NodeRef { inner: self.inner.clone() }
    }

    /// Stop every host (last started first), then the dispatch runtime.
    pub fn shutdown(&self) -> StopReport {
        let hosts: Vec<HostName> = self.inner.hosts.read().iter().rev().map(|h| h.name).collect();
        let mut total = StopReport::default();
        for h in hosts {
            if let Ok(r) = self.inner.stop_host(h) {
                total.canceled += r.canceled;
                total.terminated += r.terminated;
                total.stuck += r.stuck;
            }
        }
        self.inner.dispatch.shutdown();
        total
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::ops::Deref for Node {
    type Target = NodeRef;
    fn deref(&self) -> &NodeRef {
        // SAFETY: NodeRef is a transparent wrapper of the same Arc.
        unsafe { &*(&self.inner as *const Arc<NodeInner> as *const NodeRef) }
    }
}

impl NodeRef {
    /// The system event bus's subscriptions (SPEC §12.7).
    pub fn events(&self) -> &crate::events::EventBus {
        &self.inner.events
    }

    /// Publish `{system, kind, path, data}` to every matching subscriber, as a message from
    /// `from` on its subscription's topic; how many got it. A subscriber that is gone loses
    /// its subscriptions here.
    pub fn publish_event(&self, from: Pid, system: &str, kind: &str, path: &str, data: Value) -> usize {
        let targets = self.inner.events.matching(system, kind);
        if targets.is_empty() {
            return 0;
        }
        let ev = crate::events::EventBus::event(system, kind, path, data);
        let mut delivered = 0;
        for (pid, topic) in targets {
            let mut p = Payload::new();
            p.push(ev.clone());
            match self.inner.send(from, &Dest::Pid(pid), &topic, p) {
                Ok(()) => delivered += 1,
                Err(_) if self.inner.table.get(pid).is_none() => self.inner.events.drop_pid(pid),
                Err(_) => {}
            }
        }
        delivered
    }

    /// Start a host with its own worker pool.
    pub fn add_host(&self, config: HostConfig) -> Result<HostRef, Error> {
        let name = HostName::new(&config.name);
        let mut hosts = self.inner.hosts.write();
        if hosts.iter().any(|h| h.name == name) {
            return Err(Error::already_exists(format!("host '{}' already exists", config.name)));
        }
        let host = Host::start(&self.inner, config)?;
        hosts.push(host.clone());
        Ok(HostRef(host))
    }

    pub fn host(&self, name: &str) -> Option<HostRef> {
        self.inner.host(HostName::new(name)).map(HostRef)
    }

    /// Say that a host named `name` exists in this node's configuration even while it is
    /// not started (a project's `process.host` or `terminal.host` entry): a spawn onto it
    /// then fails with Unavailable "host is not running", as SPEC §4.2 says, instead of
    /// NotFound.
    pub fn declare_host(&self, name: &str) {
        let name = HostName::new(name);
        let mut d = self.inner.declared.write();
        if !d.contains(&name) {
            d.push(name);
        }
    }

    /// Stop a host: CANCEL every process on it ("scheduler shutdown", from `{|}`), wait up
    /// to its stop timeout, terminate the survivors, then stop its workers.
    pub fn stop_host(&self, name: &str) -> Result<StopReport, Error> {
        self.inner.stop_host(HostName::new(name))
    }

    /// Make `spawn(Spawn::entry(id))` create processes with `factory`.
    pub fn register_entry(&self, id: &str, factory: Arc<dyn ProcessFactory>) {
        self.inner.factories.write().insert(SmolStr::new(id), factory);
    }

    /// The factory asked for entries that have none of their own (the registry's kinds).
    pub fn set_entry_fallback(&self, factory: Arc<dyn ProcessFactory>) {
        *self.inner.fallback.write() = Some(factory);
    }

    /// Spawn a process from outside any process (no parent: no link or monitor).
    pub fn spawn(&self, host: &str, spawn: Spawn) -> Result<Pid, Error> {
        let host = self.inner.host_for_spawn(host)?;
        self.inner.spawn(None, &host, spawn, None, None, None)
    }

    /// Spawn and get a handle that yields the exit result.
    pub fn spawn_watched(&self, host: &str, spawn: Spawn) -> Result<(Pid, ExitWatch), Error> {
        let host = self.inner.host_for_spawn(host)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pid = self.inner.spawn(None, &host, spawn, Some(crate::cell::Watcher::Chan(tx)), None, None)?;
        Ok((pid, ExitWatch { rx }))
    }

    /// Spawn and have `then` called with the exit result (once, on the worker thread the
    /// process exits on, with no lock held: it must not block). For embedders that wait
    /// on processes from async code.
    pub fn spawn_then(&self, host: &str, spawn: Spawn, then: ExitCallback) -> Result<Pid, Error> {
        let host = self.inner.host_for_spawn(host)?;
        self.inner.spawn(None, &host, spawn, Some(crate::cell::Watcher::Call(then)), None, None)
    }

    /// Watch a live process from outside: the handle yields its exit result.
    pub fn watch(&self, pid: Pid) -> Result<ExitWatch, Error> {
        let cell = self.inner.table.get(pid).ok_or_else(|| Error::process_not_found(pid))?;
        let mut t = cell.topo.lock();
        if cell.exited.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::process_not_found(pid));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        t.more().watchers.push(crate::cell::Watcher::Chan(tx));
        Ok(ExitWatch { rx })
    }

    /// Spawn, wait for the exit, return the result (blocks the calling thread).
    pub fn exec(&self, host: &str, spawn: Spawn) -> ExitResult {
        self.spawn_watched(host, spawn)?.1.wait()
    }

    /// Send from outside any process (the receiver sees sender `{|}`).
    pub fn send(&self, dest: impl Into<Dest>, topic: &str, payload: Payload) -> Result<(), Error> {
        self.inner.send(Pid::NOBODY, &dest.into(), topic, payload)
    }

    pub fn lookup(&self, name: &str) -> Option<Pid> {
        self.inner.names.lookup(name)
    }

    pub fn register(&self, name: &str, pid: Pid) -> Result<(), Error> {
        self.inner.register(name, pid)
    }

    pub fn terminate(&self, dest: impl Into<Dest>) -> Result<(), Error> {
        self.inner.terminate(&crate::remote::Origin::NOBODY, &dest.into())
    }

    pub fn cancel(&self, dest: impl Into<Dest>, reason: &str) -> Result<(), Error> {
        self.inner.cancel(&crate::remote::Origin::NOBODY, &dest.into(), reason)
    }

    pub fn is_alive(&self, pid: Pid) -> bool {
        self.inner.table.get(pid).is_some()
    }

    /// Live processes on the node.
    /// Live processes (the runtime's own service agents left out).
    pub fn process_count(&self) -> usize {
        let system: usize = self.inner.hosts.read().iter().map(|h| h.live().saturating_sub(h.user_processes())).sum();
        self.inner.table.len().saturating_sub(system)
    }

    /// Registered names on the node.
    pub fn name_count(&self) -> usize {
        self.inner.names.len()
    }

    pub fn process_info(&self, pid: Pid) -> Option<ProcessInfo> {
        let cell = self.inner.table.get(pid)?;
        Some(describe(&cell, &mut HashMap::new()))
    }

    /// Every live process (on `host` only, when given), in PID order. Costs a lock of each
    /// table shard and of each process's topology, and of each Lua shard once: for
    /// operators, not for hot paths.
    pub fn processes(&self, host: Option<&str>) -> Vec<ProcessInfo> {
        let cells = match host {
            Some(h) => self.inner.table.on_host(HostName::new(h)),
            None => self.inner.table.all(),
        };
        let mut groups = HashMap::new();
        cells.iter().filter(|c| !c.pid.is_system()).map(|c| describe(c, &mut groups)).collect()
    }

    /// What `request_exit` calls (the `wippy` command: a graceful stop with that code).
    pub fn set_exit_hook(&self, hook: ExitHook) {
        *self.inner.exit_hook.write() = Some(hook);
    }

    /// Ask the embedder to end the node with `code`; false when nobody listens.
    pub fn request_exit(&self, code: i32) -> bool {
        let hook = self.inner.exit_hook.read().clone();
        match hook {
            Some(h) => {
                h(code);
                true
            }
            None => false,
        }
    }

    /// The state of every service of every supervisor on this node, in start order.
    pub fn services(&self) -> Vec<crate::supervisor::ServiceStatus> {
        let sups: Vec<_> = {
            let mut v = self.inner.supervisors.lock();
            v.retain(|w| w.strong_count() > 0);
            v.iter().filter_map(|w| w.upgrade()).collect()
        };
        sups.iter().flat_map(|s| s.status()).collect()
    }

    /// Every host's load.
    pub fn host_stats(&self) -> Vec<HostStats> {
        self.inner
            .hosts
            .read()
            .iter()
            .map(|h| {
                let (workers, busy, queued) = h.sched.load();
                HostStats {
                    name: h.config.name.clone(),
                    workers,
                    busy,
                    queued,
                    processes: h.user_processes(),
                    max_processes: h.config.max_processes,
                }
            })
            .collect()
    }

    /// The node's tokio runtime handle (for embedders' own async work).
    /// Change how many worker threads a running host has (its processes keep running).
    /// Returns the count now in effect (capped at the host's slot count).
    pub fn rescale_host(&self, name: &str, workers: usize) -> Result<usize, Error> {
        if workers == 0 {
            return Err(Error::invalid(format!("host '{name}': workers must be positive, got 0")));
        }
        let host = self.inner.host_for_spawn(name)?;
        host.sched.rescale(workers).map_err(|e| Error::internal(format!("host '{name}': cannot start a worker: {e}")))
    }

    /// Deliver a runtime notice on a reserved `@` topic to `pid` (sender `{|}`), e.g. the
    /// Lua runtime's `@outdated`. `false` when the process is gone.
    pub fn notify(&self, pid: Pid, topic: &str, payload: Payload) -> bool {
        let ev = Event::Message(Message { from: Pid::NOBODY, topic: Topic::new(topic), payload });
        self.inner.deliver(pid, ev).is_ok()
    }

    /// The node's security settings and named policies.
    pub fn security(&self) -> &Security {
        &self.inner.security
    }

    pub fn tokio_handle(&self) -> tokio::runtime::Handle {
        self.inner.dispatch.handle().clone()
    }
}

/// What `system.exit` calls with its code.
pub type ExitHook = Arc<dyn Fn(i32) + Send + Sync>;

/// One process's record for operators; `groups` caches each group's statistics.
fn describe(cell: &Arc<ProcCell>, groups: &mut HashMap<usize, crate::cell::GroupStats>) -> ProcessInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let group = cell.group.as_ref().map(|g| Arc::as_ptr(g) as *const u8 as usize);
    let (names, links, monitors, monitoring, pending_commands) = match cell.topo.lock().more.as_deref() {
        Some(m) => (m.names.clone(), m.links.clone(), m.monitors.clone(), m.monitoring.clone(), m.timers.len()),
        None => Default::default(),
    };
    let queued_bytes = cell.mailbox.queued_bytes();
    let work = cell.work.load(Relaxed);
    let (memory, memory_exact) = match (&cell.group, group) {
        (Some(g), Some(key)) => {
            let st = *groups.entry(key).or_insert_with(|| g.stats());
            if st.isolated {
                (st.memory, true)
            } else {
                (st.memory / st.members.max(1), false)
            }
        }
        _ => (std::mem::size_of::<ProcCell>() + 16 + queued_bytes, false),
    };
    ProcessInfo {
        pid: cell.pid,
        state: cell.mailbox.state(),
        queued: cell.mailbox.queued() + (work >> crate::cell::STEP_BITS) as usize,
        trap_links: cell.trap_links.load(Relaxed),
        group,
        host: cell.host.config.name.clone(),
        entry: cell.label.map(|l| &*l.id),
        queued_bytes,
        names,
        links,
        monitors,
        monitoring,
        pending_commands,
        steps: work & crate::cell::STEP_MASK,
        age: Duration::from_millis(crate::clock::age_ms(cell.born)),
        actor: cell.identity.as_ref().and_then(|i| i.actor.as_ref()).map(|a| a.id.clone()),
        memory,
        memory_exact,
    }
}

impl NodeInner {
    pub(crate) fn host(&self, name: HostName) -> Option<Arc<Host>> {
        self.hosts.read().iter().find(|h| h.name == name).cloned()
    }

    pub(crate) fn host_for_spawn(&self, name: &str) -> Result<Arc<Host>, Error> {
        let host = HostName::new(name);
        self.host(host).ok_or_else(|| {
            if self.declared.read().contains(&host) {
                Error::unavailable(format!("host is not running: {name}"))
            } else {
                Error::not_found(format!("host not found: {}", crate::error::Echo(name)))
            }
        })
    }

    fn factory(&self, id: &str) -> Result<Arc<dyn ProcessFactory>, Error> {
        if let Some(f) = self.factories.read().get(id) {
            return Ok(f.clone());
        }
        self.fallback.read().clone().ok_or_else(|| Error::not_found(format!("entry not found: {id}")))
    }

    pub(crate) fn resolve(&self, dest: &Dest) -> Result<Pid, Error> {
        match dest {
            Dest::Pid(p) if p.node() == self.local => Ok(*p),
            Dest::Pid(p) => Ok(self.localize(*p)),
            Dest::Name(n) => self.lookup(n).ok_or_else(|| unresolved(n)),
        }
    }

    /// The process `name` resolves to: a cluster's names first, then this node's (SPEC
    /// §13.5's resolution order).
    pub(crate) fn lookup(&self, name: &str) -> Option<Pid> {
        if let Some(r) = self.remote.get() {
            if let Some(p) = r.lookup(name) {
                return Some(p);
            }
        }
        self.names.lookup(name)
    }

    /// A PID with no node on a clustered node is one of its own (SPEC §13.3).
    #[cold]
    #[inline(never)]
    pub(crate) fn localize(&self, p: Pid) -> Pid {
        if p.node().is_none() && !p.is_nobody() {
            p.on_node(self.local)
        } else {
            p
        }
    }

    /// The cluster that reaches `pid`'s node; NotFound "node not found" without one.
    #[cold]
    #[inline(never)]
    pub(crate) fn remote_for(&self, pid: Pid) -> Result<&Arc<dyn crate::remote::Remote>, Error> {
        self.remote.get().ok_or_else(|| Error::not_found(format!("node not found: {} (this node is not in a cluster)", pid.node())))
    }

    pub(crate) fn spawn(
        &self,
        parent: Option<&Arc<ProcCell>>,
        host: &Arc<Host>,
        spawn: Spawn,
        watcher: Option<crate::cell::Watcher>,
        inherited: Option<Arc<Table>>,
        inherited_identity: Option<Arc<Identity>>,
    ) -> Result<Pid, Error> {
        let Spawn { what, method, args, link, monitor, mut group, context, identity, exec: _, call, attachment, system } = spawn;
        let (mut process, label, entry_security) = match what {
            What::Process(p) => (p, system.map(crate::stats::EntryLabel::intern), None),
            What::Entry(id) => {
                let made = self.factory(&id)?.create(&id, &HostRef(host.clone()))?;
                group = group.or(made.group);
                (made.process, Some(made.label.unwrap_or_else(|| crate::stats::EntryLabel::intern(&id))), made.security)
            }
        };
        if let Some(a) = attachment {
            process.attach(a);
        }
        // Context values and identity: given, else inherited from the spawner; the entry's
        // own `security:` block applies over that, and a host's forced actor/scope replaces
        // them.
        let context = context.or(inherited);
        let mut identity = identity.or(inherited_identity);
        if let Some(own) = entry_security {
            identity = Some(Arc::new(own.apply(identity.as_deref())));
        }
        if let Some(forced) = &host.config.security.identity {
            identity = Some(Arc::new(identity.as_deref().map(|i| i.overridden_by(forced)).unwrap_or_else(|| (**forced).clone())));
        }
        host.reserve(system.is_some())?;
        let pid = if system.is_some() { self.counter.next_system(host.name) } else { self.counter.next(host.name) };
        let cell = ProcCell::new_arc(pid, host.clone(), group, process, method, args, context, identity, label);
        crate::stats::add(crate::stats::Counter::Spawns, 1);
        if let Some(parent) = parent.filter(|_| link || monitor) {
            let mut t = cell.topo.lock();
            let m = t.more();
            if monitor {
                m.monitors.push(parent.pid);
            }
            if link {
                m.links.push(parent.pid);
            }
            drop(t);
            let mut pt = parent.topo.lock();
            if link {
                pt.more().links.push(pid);
            }
            if monitor {
                pt.more().monitoring.push(pid);
            }
            if call {
                let calls = &mut pt.more().calls;
                // (ended calls are dropped now and then, not at each exit: a long-lived
                // caller's list stays short without a lock per callee's exit; at each power
                // of two, so many calls alive at once do not make every spawn sweep them)
                if calls.len() >= 32 && calls.len().is_power_of_two() {
                    calls.retain(|p| self.table.get(*p).is_some());
                }
                calls.push(pid);
            }
        }
        if let Some(w) = watcher {
            cell.topo.lock().more().watchers.push(w);
        }
        self.table.insert(cell.clone());
        self.schedule(cell, Hint::Queued);
        Ok(pid)
    }

    /// Queue a process the caller hands over (a new one): a process of no group goes to
    /// the run queue without touching its count; one of a group as [`schedule_ref`]
    /// (Self::schedule_ref) queues it.
    #[inline]
    pub(crate) fn schedule(&self, cell: Arc<ProcCell>, hint: Hint) {
        match &cell.group {
            Some(_) => self.schedule_ref(&cell, hint),
            None => crate::step::queue(cell, hint),
        }
    }

    /// Queue a process for a caller that keeps its own reference to the cell (a sender's
    /// last target, the stepping worker's): that reference keeps the group alive through
    /// the call, so the group is borrowed, not counted (two locked instructions less on the
    /// path of every message to a Lua process).
    #[inline]
    pub(crate) fn schedule_ref(&self, cell: &Arc<ProcCell>, hint: Hint) {
        match &cell.group {
            Some(g) => g.schedule(ProcessRef(cell.clone()), hint == Hint::Woken),
            None => crate::step::queue(cell.clone(), hint),
        }
    }

    /// Queue an event for `pid`; `Err(event)` when it is not alive.
    #[inline]
    pub(crate) fn deliver(&self, pid: Pid, ev: Event) -> Result<(), Event> {
        let (extra, message) = match &ev {
            Event::Message(m) => (crate::context::payload_bytes(m.topic.as_str(), &m.payload), true),
            _ => (0, false),
        };
        let (wake, over) = self.table.with(pid, ev, |cell, ev| {
            if cell.mailbox.is_closed() {
                return Err(ev);
            }
            let (wake, (queued, bytes)) = cell.mailbox.push_with(extra, || ev);
            if message {
                crate::stats::add(crate::stats::Counter::Messages, 1);
            }
            let over = cell.host.config.mailbox_over(queued, bytes);
            Ok(((wake || over.is_some()).then(|| (cell.clone(), wake)), over))
        })??;
        if let Some((cell, wake)) = wake {
            if wake {
                self.schedule_ref(&cell, Hint::Woken);
            }
            if let Some(code) = over {
                self.overflow(&cell, code);
            }
        }
        Ok(())
    }

    /// A push left `cell`'s mailbox past its host's limits: the process ends with
    /// LimitExceeded (its queue is freed when it exits; monitors and links see the error).
    /// The sender and the node go on.
    #[cold]
    #[inline(never)]
    pub(crate) fn overflow(&self, cell: &Arc<ProcCell>, code: u8) {
        if cell.set_kill(code) {
            tracing::warn!(pid = %cell.pid, queued = cell.mailbox.queued(), bytes = cell.mailbox.queued_bytes(), "mailbox limit exceeded: ending the process");
        }
        if cell.mailbox.wake() {
            self.schedule_ref(&cell, Hint::Woken);
        }
    }

    /// Send from outside a step (processes send through their `Context`, which batches).
    pub(crate) fn send(&self, from: Pid, dest: &Dest, topic: &str, payload: Payload) -> Result<(), Error> {
        check_topic(topic)?;
        let pid = self.resolve(dest)?;
        if pid.node() != self.local {
            return self.remote_for(pid)?.send(&crate::remote::Origin { pid: from, host: from.host().as_str(), actor: None }, pid, topic, payload);
        }
        let ev = Event::Message(Message { from, topic: Topic::new(topic), payload });
        self.deliver(pid, ev).map_err(|_| Error::process_not_found(dest))
    }

    pub(crate) fn register(&self, name: &str, pid: Pid) -> Result<(), Error> {
        let cell = self.table.get(pid).ok_or_else(|| Error::process_not_found(pid))?;
        self.names.register(&cell, name)
    }

    /// Unregister `name`; `true` if it was registered.
    pub(crate) fn unregister(&self, name: &str) -> bool {
        match self.names.unregister(name) {
            Some(pid) => {
                if let Some(cell) = self.table.get(pid) {
                    if let Some(m) = cell.topo.lock().more.as_mut() {
                        m.names.retain(|n| n != name);
                    }
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn kill(&self, cell: &Arc<ProcCell>, code: u8) {
        cell.set_kill(code);
        if cell.mailbox.wake() {
            self.schedule_ref(&cell, Hint::Woken);
        }
    }

    pub(crate) fn terminate(&self, from: &crate::remote::Origin<'_>, dest: &Dest) -> Result<(), Error> {
        let pid = self.resolve(dest)?;
        if pid.node() != self.local {
            return self.remote_for(pid)?.terminate(from, pid);
        }
        let cell = self.table.get(pid).ok_or_else(|| Error::process_not_found(dest))?;
        self.kill(&cell, crate::cell::KILL_TERMINATED);
        Ok(())
    }

    pub(crate) fn cancel(&self, from: &crate::remote::Origin<'_>, dest: &Dest, reason: &str) -> Result<(), Error> {
        let pid = self.resolve(dest)?;
        if pid.node() != self.local {
            return self.remote_for(pid)?.cancel(from, pid, reason);
        }
        let from = from.pid;
        let ev = Event::Cancel { from, at: crate::dispatch::unix_secs(), reason: SmolStr::new(reason) };
        self.deliver(pid, ev).map_err(|_| Error::process_not_found(dest))
    }

    pub(crate) fn stop_host(&self, name: HostName) -> Result<StopReport, Error> {
        let host = self.host(name).ok_or_else(|| Error::not_found(format!("host not found: {}", crate::error::Echo(&name))))?;
        if host.state.compare_exchange(RUNNING, STOPPING, std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire).is_err() {
            return Err(Error::unavailable(format!("host '{name}' is already stopping")));
        }
        let mut report = StopReport::default();
        let at = crate::dispatch::unix_secs();
        for cell in self.table.on_host(name) {
            let ev = Event::Cancel { from: Pid::NOBODY, at, reason: SmolStr::new_static("scheduler shutdown") };
            if self.deliver(cell.pid, ev).is_ok() {
                report.canceled += !cell.pid.is_system() as usize;
            }
        }
        if !host.wait_empty(host.config.stop_timeout) {
            for cell in self.table.on_host(name) {
                report.terminated += !cell.pid.is_system() as usize;
                self.kill(&cell, crate::cell::KILL_TERMINATED);
            }
            if !host.wait_empty(host.config.stop_timeout.max(Duration::from_secs(1))) {
                report.stuck = host.live();
                tracing::error!(host = %name, stuck = report.stuck, "processes did not end after terminate; leaving their workers behind");
            }
        }
        host.sched.stop();
        if report.stuck == 0 {
            host.sched.join();
        }
        host.state.store(STOPPED, std::sync::atomic::Ordering::Release);
        self.hosts.write().retain(|h| h.name != name);
        Ok(report)
    }
}

/// Why a name did not resolve (out of line: the send path only tests for it).
#[cold]
#[inline(never)]
fn unresolved(n: &str) -> Error {
    match Dest::parse(n) {
        // (a malformed PID given as a string: see `Dest::parse`)
        Err(e) => Error::invalid(e.to_string()),
        Ok(_) => Error::not_found(format!("no process registered as '{}'", crate::error::Echo(n))),
    }
}

/// Topics starting with '@' belong to the runtime.
pub(crate) fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.starts_with('@') {
        return Err(reserved_topic(topic));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn reserved_topic(topic: &str) -> Error {
    Error::invalid(format!("topic '{}' is reserved: topics starting with '@' belong to the runtime", crate::error::Echo(topic)))
}
