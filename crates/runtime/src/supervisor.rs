//! Services: processes (and hosts) the node keeps running. Owns the service lifecycle
//! (Unknown → Starting → Running → Stopping → Stopped; Failed → Starting; Exited), the
//! restart policy with exponential backoff and jitter, dependency order (a service starts
//! when everything it requires is Running; stop runs in reverse), and the graceful stop.
//!
//! Supervision is built on the process model, as SPEC §8.1 says: on every host that runs
//! services, one native process (the host's *agent*) spawns them monitored, hears their
//! ends as EXIT events and times restarts with its own timers (`Command::After`). Nothing
//! costs a thread or a task per service; a node with 10,000 services has one agent per
//! host. The state table and the policy live here, behind one lock that agents and the
//! embedder's calls (start, stop, status) share; only agents spawn service processes.
//!
//! An agent lives as long as its host: when the host stops, it waits for the services it
//! watches to end, then ends too. A lost agent (terminated by hand) is made again on the
//! next start on its host; the services it watched are no longer seen to exit.
//!
//! Time goes through a [`Clock`], so tests drive restart delays by hand; with the
//! [`SystemClock`] the agents' timers run them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::context::Context;
use crate::host::HostConfig;
use crate::node::{NodeRef, Spawn};
use crate::pid::Pid;
use crate::process::{Command, CommandId, Event, Events, ExitResult, Payload, Process, Status};
use crate::security::Identity;
use crate::value::{Table, Value};
use crate::Error;

const DEPENDENCY_FAILED: &str = "dependency failed: ";

/// How a failed service is restarted (SPEC §8.2).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub backoff_factor: f64,
    /// ±fraction of the delay, 0..=1.
    pub jitter: f64,
    /// Give up after this many failed runs in a row (0 = never).
    pub max_attempts: u32,
    /// A run longer than this resets the failure count.
    pub stable_threshold: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(90),
            backoff_factor: 2.0,
            jitter: 0.1,
            max_attempts: 0,
            stable_threshold: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// The delay before the restart that follows the `n`-th failure in a row (n ≥ 1):
    /// `min(initial_delay × backoff_factor^(n−1), max_delay)`, moved by `jitter × r` of
    /// itself for `r` in [-1, 1].
    pub fn delay(&self, n: u32, r: f64) -> Duration {
        let base = self.initial_delay.as_secs_f64() * self.backoff_factor.powi(n.saturating_sub(1).min(1 << 16) as i32);
        let capped = base.min(self.max_delay.as_secs_f64());
        let moved = capped * (1.0 + self.jitter * r.clamp(-1.0, 1.0));
        Duration::from_secs_f64(moved.max(0.0))
    }
}

/// What a service runs.
#[derive(Clone)]
pub enum ServiceKind {
    /// A process: `spawn` is made anew for every run, on `host`.
    Process { host: String, entry: String, args: Vec<Value>, context: Option<Arc<Table>>, identity: Option<Arc<Identity>> },
    /// A host: started once; stopped after the services that need it.
    Host(HostConfig),
}

#[derive(Clone)]
pub struct ServiceSpec {
    pub id: String,
    pub kind: ServiceKind,
    /// Services that must be Running first (a process service's host belongs here too).
    pub requires: Vec<String>,
    pub auto_start: bool,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Unknown,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Exited,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One logged transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub service: String,
    pub state: ServiceState,
    pub attempt: u32,
    pub error: Option<String>,
    /// When, by the supervisor's clock.
    pub at: Duration,
    /// The restart delay, on transitions to Failed.
    pub delay: Option<Duration>,
}

/// A service's state now.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub id: String,
    pub state: ServiceState,
    pub attempt: u32,
    pub pid: Option<Pid>,
    pub error: Option<String>,
    /// Starts after the first one (restarts, over the service's life).
    pub restarts: u64,
    /// Started (wanted running) or not.
    pub wanted: bool,
    /// Wall-clock times (Unix nanoseconds) of its last state change and of its current
    /// run's start (0: never).
    pub last_update: i64,
    pub started: i64,
}

/// What the stop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopSummary {
    pub services_stopped: usize,
    /// Processes terminated because they outlived their stop timeout.
    pub terminated: usize,
}

/// Time for the supervisor: now, and a callback after a delay.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
    fn after(&self, delay: Duration, fire: Box<dyn FnOnce() + Send>);
    /// A number in [-1, 1] for the jitter.
    fn random(&self) -> f64;
    /// This clock is the runtime's own time: restart delays are timed by the agents'
    /// process timers, and `after` serves only where no agent can run (a host gone).
    fn is_runtime_time(&self) -> bool {
        false
    }
}

/// Wall time; delays run on the node's timer runtime.
pub struct SystemClock {
    origin: Instant,
    tokio: tokio::runtime::Handle,
    seed: Mutex<u64>,
}

impl SystemClock {
    pub fn new(node: &NodeRef) -> SystemClock {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        SystemClock { origin: Instant::now(), tokio: node.tokio_handle(), seed: Mutex::new(seed | 1) }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
    fn after(&self, delay: Duration, fire: Box<dyn FnOnce() + Send>) {
        self.tokio.spawn(async move {
            tokio::time::sleep(delay).await;
            fire();
        });
    }
    fn is_runtime_time(&self) -> bool {
        true
    }
    fn random(&self) -> f64 {
        // xorshift64*: good enough to spread restarts.
        let mut s = self.seed.lock();
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        let x = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

struct Svc {
    spec: ServiceSpec,
    state: ServiceState,
    /// Wanted running (auto-started, required by a wanted one, or started by hand).
    wanted: bool,
    /// Failed runs in a row.
    failures: u32,
    /// The current run's number in this streak (failures + 1 when it started).
    attempt: u32,
    pid: Option<Pid>,
    started_at: Duration,
    /// Bumped on every start: stale exits and timers are ignored.
    instance: u64,
    error: Option<String>,
    /// Set when the current instance has exited.
    exited: bool,
    restarts: u64,
    last_update: i64,
    started: i64,
}

impl Svc {
    /// A service not started yet.
    fn new(spec: ServiceSpec) -> Svc {
        Svc {
            spec,
            state: ServiceState::Unknown,
            wanted: false,
            failures: 0,
            attempt: 0,
            pid: None,
            started_at: Duration::ZERO,
            instance: 0,
            error: None,
            exited: true,
            restarts: 0,
            last_update: 0,
            started: 0,
        }
    }
}

struct State {
    services: Vec<Svc>,
    by_id: HashMap<String, usize>,
    /// Topological order (dependencies first).
    order: Vec<usize>,
    stopping: bool,
    history: Vec<Transition>,
    /// Each host's agent (the process that spawns and watches its services).
    agents: HashMap<String, Pid>,
    /// The IDs some service requires.
    required: HashSet<String>,
}

fn required(specs: &[ServiceSpec]) -> HashSet<String> {
    specs.iter().flat_map(|s| s.requires.iter().cloned()).collect()
}

pub(crate) struct Inner {
    node: NodeRef,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    changed: Condvar,
}

/// The node's services. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Check the specs (unknown requirements, cycles) and take them in, all Unknown.
    pub fn new(node: NodeRef, specs: Vec<ServiceSpec>, clock: Arc<dyn Clock>) -> Result<Supervisor, Error> {
        let by_id: HashMap<String, usize> = specs.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        if by_id.len() != specs.len() {
            return Err(Error::invalid("two services have the same ID"));
        }
        for s in &specs {
            if let Some(r) = s.requires.iter().find(|r| !by_id.contains_key(*r)) {
                return Err(Error::invalid(format!("service {} requires {r}, which is not a service", s.id)));
            }
        }
        let order = topo_order(&specs, &by_id)?;
        let required = required(&specs);
        let services = specs.into_iter().map(Svc::new).collect();
        let state = State { services, by_id, order, stopping: false, history: Vec::new(), agents: HashMap::new(), required };
        let inner = Arc::new(Inner { node: node.clone(), clock, state: Mutex::new(state), changed: Condvar::new() });
        node.inner.supervisors.lock().push(Arc::downgrade(&inner));
        Ok(Supervisor { inner })
    }

    /// Start every `auto_start` service and what it requires; returns at once (services
    /// start as their dependencies become Running).
    pub fn start_auto(&self) {
        let ids: Vec<String> = {
            let st = self.inner.state.lock();
            st.services.iter().filter(|s| s.spec.auto_start).map(|s| s.spec.id.clone()).collect()
        };
        self.start(&ids);
    }

    /// Start these services (and what they require).
    pub fn start(&self, ids: &[String]) {
        let mut st = self.inner.state.lock();
        let mut stack: Vec<usize> = ids.iter().filter_map(|id| st.by_id.get(id).copied()).collect();
        while let Some(i) = stack.pop() {
            if !st.services[i].wanted {
                st.services[i].wanted = true;
                let reqs: Vec<usize> = st.services[i].spec.requires.iter().filter_map(|r| st.by_id.get(r).copied()).collect();
                stack.extend(reqs);
            }
        }
        self.inner.advance(&mut st);
    }

    /// Wait (at most `timeout`) until no wanted service is still waiting to start or
    /// starting. True if everything settled.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock();
        loop {
            let busy = st.services.iter().any(|s| s.wanted && matches!(s.state, ServiceState::Unknown | ServiceState::Starting));
            if !busy || st.stopping {
                return true;
            }
            if self.inner.changed.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
    }

    /// Wait (at most `timeout`) until `pred` holds for the transition history.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&[Transition]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock();
        while !pred(&st.history) {
            if self.inner.changed.wait_until(&mut st, deadline).timed_out() {
                return pred(&st.history);
            }
        }
        true
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.inner.status()
    }

    /// Every transition so far.
    pub fn history(&self) -> Vec<Transition> {
        self.inner.state.lock().history.clone()
    }

    /// Stop every service in reverse dependency order: CANCEL ("service stopping"), then
    /// terminate after its `stop_timeout`; host services stop last of all that need them.
    /// No restart happens once this has begun.
    ///
    /// Services stop in reverse dependency order, and at once where no dependency orders
    /// them: a service stops after every service that requires it has stopped, so a
    /// thousand independent services that ignore CANCEL take one stop timeout, not a
    /// thousand.
    pub fn stop_all(&self) -> StopSummary {
        let waves = {
            let mut st = self.inner.state.lock();
            st.stopping = true;
            stop_waves(&st.order, |i| st.services[i].spec.requires.iter().filter_map(|r| st.by_id.get(r).copied()).collect())
        };
        let mut summary = StopSummary::default();
        for wave in waves {
            let (stopped, terminated) = self.inner.stop_many(&wave, ServiceState::Stopped);
            summary.services_stopped += stopped;
            summary.terminated += terminated;
        }
        summary
    }

    /// Put `spec` in place of the service with its ID (stopping the running one first and
    /// starting the new one if it is auto-started or was wanted), or add it. Blocks while
    /// the old instance stops: call it from a thread of its own, not from a process step.
    pub fn replace(&self, spec: ServiceSpec) {
        let existing = self.inner.state.lock().by_id.get(&spec.id).copied();
        if let Some(i) = existing {
            self.inner.stop_many(&[i], ServiceState::Exited);
        }
        let mut st = self.inner.state.lock();
        let i = match existing {
            Some(i) => i,
            None => {
                let i = st.services.len();
                st.by_id.insert(spec.id.clone(), i);
                st.services.push(Svc::new(spec.clone()));
                i
            }
        };
        let s = &mut st.services[i];
        let was_wanted = s.wanted;
        s.spec = spec;
        s.state = ServiceState::Unknown;
        s.failures = 0;
        s.error = None;
        s.wanted = was_wanted || s.spec.auto_start;
        let specs: Vec<ServiceSpec> = st.services.iter().map(|s| s.spec.clone()).collect();
        match topo_order(&specs, &st.by_id) {
            Ok(order) => {
                st.order = order;
                st.required = required(&specs);
            }
            Err(e) => tracing::error!(error = %e, "service order unchanged"),
        }
        self.inner.advance(&mut st);
    }

    /// Stop one service by hand: it ends Exited and is not restarted.
    pub fn stop(&self, id: &str) -> Result<(), Error> {
        let i = *self.inner.state.lock().by_id.get(id).ok_or_else(|| Error::not_found(format!("no service {id}")))?;
        self.inner.state.lock().services[i].wanted = false;
        self.inner.stop_many(&[i], ServiceState::Exited);
        Ok(())
    }
}

/// The services of `order` (dependencies first) in waves to stop one after the other: a
/// service's wave comes after the waves of every service that requires it.
fn stop_waves(order: &[usize], requires: impl Fn(usize) -> Vec<usize>) -> Vec<Vec<usize>> {
    let n = order.iter().copied().max().map_or(0, |m| m + 1);
    let mut wave = vec![0usize; n];
    // dependents come after their dependencies in `order`: walk it backwards
    for &i in order.iter().rev() {
        for r in requires(i) {
            if r < n {
                wave[r] = wave[r].max(wave[i] + 1);
            }
        }
    }
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for &i in order.iter().rev() {
        let w = wave[i];
        if waves.len() <= w {
            waves.resize(w + 1, Vec::new());
        }
        waves[w].push(i);
    }
    waves
}

fn topo_order(specs: &[ServiceSpec], by_id: &HashMap<String, usize>) -> Result<Vec<usize>, Error> {
    fn visit(i: usize, specs: &[ServiceSpec], by_id: &HashMap<String, usize>, marks: &mut [u8], path: &mut Vec<usize>, out: &mut Vec<usize>) -> Result<(), Error> {
        match marks[i] {
            2 => return Ok(()),
            1 => {
                let from = path.iter().position(|p| *p == i).unwrap_or(0);
                let mut names: Vec<&str> = path[from..].iter().map(|p| specs[*p].id.as_str()).collect();
                names.push(&specs[i].id);
                return Err(Error::invalid(format!("dependency cycle: {}", names.join(" -> "))));
            }
            _ => {}
        }
        marks[i] = 1;
        path.push(i);
        let mut reqs: Vec<usize> = specs[i].requires.iter().filter_map(|r| by_id.get(r).copied()).collect();
        reqs.sort_by(|a, b| specs[*a].id.cmp(&specs[*b].id));
        for r in reqs {
            visit(r, specs, by_id, marks, path, out)?;
        }
        path.pop();
        marks[i] = 2;
        out.push(i);
        Ok(())
    }
    let mut marks = vec![0u8; specs.len()];
    let mut out = Vec::new();
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    ids.extend(specs.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)));
    for &i in ids.values() {
        visit(i, specs, by_id, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

impl Inner {
    pub(crate) fn status(&self) -> Vec<ServiceStatus> {
        let st = self.state.lock();
        st.order
            .iter()
            .map(|&i| {
                let s = &st.services[i];
                ServiceStatus {
                    id: s.spec.id.clone(),
                    state: s.state,
                    attempt: s.attempt,
                    pid: s.pid,
                    error: s.error.clone(),
                    restarts: s.restarts,
                    wanted: s.wanted,
                    last_update: s.last_update,
                    started: s.started,
                }
            })
            .collect()
    }

    fn set(&self, st: &mut State, i: usize, state: ServiceState, error: Option<String>, delay: Option<Duration>) {
        let at = self.clock.now();
        let s = &mut st.services[i];
        s.state = state;
        s.last_update = crate::dispatch::unix_nanos();
        if error.is_some() {
            s.error = error.clone();
        }
        let (id, attempt) = (s.spec.id.clone(), s.attempt);
        // on the system event bus too (SPEC §12.7): system "wippy.service", the state as
        // kind, the service as path
        if !self.node.events().is_empty() {
            let mut data = crate::value::Table::new();
            data.set(Value::str("attempt"), Value::Int(attempt as i64));
            if let Some(e) = &error {
                data.set(Value::str("error"), Value::str(e));
            }
            if let Some(pid) = s.pid {
                data.set(Value::str("pid"), Value::str(&pid.to_string()));
            }
            self.node.publish_event(Pid::NOBODY, "wippy.service", &state.to_string().to_lowercase(), &id, Value::table(data));
        }
        match (&error, delay) {
            (Some(e), Some(d)) => tracing::warn!(service = %id, state = %state, attempt, error = %e, restart_in = ?d, "service state"),
            (Some(e), None) => tracing::error!(service = %id, state = %state, attempt, error = %e, "service state"),
            (None, _) => match s.pid {
                Some(pid) if state == ServiceState::Running => tracing::info!(service = %id, state = %state, attempt, pid = %pid, "service state"),
                _ => tracing::info!(service = %id, state = %state, attempt, "service state"),
            },
        }
        st.history.push(Transition { service: id, state, attempt, error, at, delay });
        self.changed.notify_all();
    }

    /// Start every wanted service whose requirements are Running; fail the ones whose
    /// requirements can no longer run.
    fn advance(self: &Arc<Self>, st: &mut State) {
        if st.stopping {
            return;
        }
        loop {
            let mut progressed = false;
            for k in 0..st.order.len() {
                let i = st.order[k];
                let s = &st.services[i];
                if !s.wanted || s.state != ServiceState::Unknown {
                    continue;
                }
                let mut ready = true;
                let mut broken = None;
                for r in &s.spec.requires {
                    let d = &st.services[st.by_id[r]];
                    match d.state {
                        ServiceState::Running => {}
                        ServiceState::Exited | ServiceState::Stopped if d.error.is_some() => {
                            // A chain: "x -> y -> z: why", however deep.
                            let e = d.error.as_deref().unwrap_or("");
                            broken = Some(match e.strip_prefix(DEPENDENCY_FAILED) {
                                Some(rest) => rest.to_string(),
                                None => format!("{r}: {e}"),
                            });
                        }
                        ServiceState::Exited | ServiceState::Stopped => broken = Some(format!("{r} is not running")),
                        _ => ready = false,
                    }
                }
                if let Some(why) = broken {
                    let chain = format!("{DEPENDENCY_FAILED}{} -> {why}", st.services[i].spec.id);
                    self.set(st, i, ServiceState::Exited, Some(chain), None);
                    progressed = true;
                } else if ready {
                    self.launch(st, i);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn launch(self: &Arc<Self>, st: &mut State, i: usize) {
        let s = &mut st.services[i];
        s.attempt = s.failures + 1;
        if s.instance > 0 {
            s.restarts += 1;
        }
        s.started = crate::dispatch::unix_nanos();
        s.instance += 1;
        s.pid = None;
        s.error = None;
        s.started_at = self.clock.now();
        self.set(st, i, ServiceState::Starting, None, None);
        let s = &mut st.services[i];
        match s.spec.kind.clone() {
            ServiceKind::Host(config) => match self.node.add_host(config) {
                Ok(_) => self.set(st, i, ServiceState::Running, None, None),
                Err(e) => self.set(st, i, ServiceState::Exited, Some(e.to_string()), None),
            },
            ServiceKind::Process { host, .. } => {
                // The host's agent spawns it (and so hears of its exit).
                let instance = s.instance;
                if let Err(e) = self.to_agent(st, &host, "launch", &[i as u64, instance]) {
                    self.failed(st, i, e);
                }
            }
        }
        // (no `advance` here: launch runs inside advance's loop, or after a retry, which
        // advances itself; a recursion here went one frame deep per service)
    }

    /// After service `i` changed state: start or fail what depends on it (a service nobody
    /// requires changes nothing for the others, and is not worth a pass over all of them).
    fn advance_after(self: &Arc<Self>, st: &mut State, i: usize) {
        if st.required.contains(&st.services[i].spec.id) {
            self.advance(st);
        }
    }

    /// Run in the host's agent: spawn the instance `launch` asked for, if it is still the
    /// one wanted.
    fn spawn_instance(self: &Arc<Self>, cx: &mut Context<'_>, i: usize, instance: u64) -> Option<Pid> {
        let mut st = self.state.lock();
        let stopping = st.stopping;
        let s = st.services.get_mut(i)?;
        if stopping || s.instance != instance || s.state != ServiceState::Starting {
            return None;
        }
        let ServiceKind::Process { host, entry, args, context, identity } = s.spec.kind.clone() else { return None };
        let mut spawn = Spawn::entry(&entry).args(args);
        if let Some(c) = context {
            spawn = spawn.context(c);
        }
        if let Some(id) = identity {
            spawn = spawn.identity(id);
        }
        let pid = match cx.spawn_supervised(&host, spawn) {
            Ok(pid) => pid,
            Err(e) => {
                self.failed(&mut st, i, e);
                self.advance_after(&mut st, i);
                return None;
            }
        };
        let s = &mut st.services[i];
        s.pid = Some(pid);
        s.exited = false;
        self.set(&mut st, i, ServiceState::Running, None, None);
        self.advance_after(&mut st, i);
        Some(pid)
    }

    /// Hand host `host`'s agent a request (made when there is none yet, or it is gone).
    fn to_agent(self: &Arc<Self>, st: &mut State, host: &str, topic: &str, args: &[u64]) -> Result<(), Error> {
        let payload: Payload = args.iter().map(|a| Value::Int(*a as i64)).collect();
        if let Some(pid) = st.agents.get(host) {
            if self.node.send(*pid, topic, payload.clone()).is_ok() {
                return Ok(());
            }
        }
        let agent = Agent { inner: Arc::downgrade(self), watching: HashMap::new(), timers: HashMap::new(), stopping: false };
        let pid = self.node.spawn(host, Spawn::process(agent).system("wippy.supervisor"))?;
        st.agents.insert(host.to_string(), pid);
        self.node.send(pid, topic, payload)
    }

    /// The current instance of service `i` exited.
    fn exited(self: &Arc<Self>, i: usize, instance: u64, result: ExitResult) {
        let mut st = self.state.lock();
        let s = &mut st.services[i];
        if s.instance != instance {
            return;
        }
        s.exited = true;
        s.pid = None;
        let stopping_it = s.state == ServiceState::Stopping;
        if st.stopping || stopping_it {
            self.changed.notify_all();
            return;
        }
        match result {
            Ok(_) => {
                st.services[i].failures = 0;
                self.set(&mut st, i, ServiceState::Exited, None, None);
            }
            Err(e) => self.failed(&mut st, i, e),
        }
        self.advance_after(&mut st, i);
    }

    /// A run of service `i` failed: restart after the backoff delay, or give up.
    fn failed(self: &Arc<Self>, st: &mut State, i: usize, e: Error) {
        let now = self.clock.now();
        let s = &mut st.services[i];
        let policy = s.spec.restart.clone();
        let ran = now.saturating_sub(s.started_at);
        s.failures = if ran > policy.stable_threshold { 1 } else { s.failures + 1 };
        let message = e.to_string();
        if e.retryable == Some(false) {
            return self.set(st, i, ServiceState::Exited, Some(format!("{message} (not retryable)")), None);
        }
        if policy.max_attempts > 0 && s.failures >= policy.max_attempts {
            let n = s.failures;
            return self.set(st, i, ServiceState::Exited, Some(format!("{message} (gave up after {n} failed attempts)")), None);
        }
        let delay = policy.delay(s.failures, self.clock.random());
        let instance = s.instance;
        let host = match &s.spec.kind {
            ServiceKind::Process { host, .. } => Some(host.clone()),
            ServiceKind::Host(_) => None,
        };
        self.set(st, i, ServiceState::Failed, Some(message), Some(delay));
        if self.clock.is_runtime_time() {
            let nanos = delay.as_nanos().min(u64::MAX as u128 / 2) as u64;
            if let Some(host) = host {
                if self.to_agent(st, &host, "retry", &[i as u64, instance, nanos]).is_ok() {
                    return;
                }
            }
        }
        let weak = Arc::downgrade(self);
        self.clock.after(
            delay,
            Box::new(move || {
                if let Some(inner) = weak.upgrade() {
                    inner.retry(i, instance);
                }
            }),
        );
    }

    fn retry(self: &Arc<Self>, i: usize, instance: u64) {
        let mut st = self.state.lock();
        let s = &st.services[i];
        if st.stopping || s.instance != instance || s.state != ServiceState::Failed || !s.wanted {
            return;
        }
        self.launch(&mut st, i);
        self.advance_after(&mut st, i);
    }

    /// Stop these services together (CANCEL to each, then terminate each one still alive
    /// after its own `stop_timeout`); each ends as `end`. Returns how many were stopped and
    /// how many processes had to be terminated. Blocks the calling thread only.
    fn stop_many(self: &Arc<Self>, ids: &[usize], end: ServiceState) -> (usize, usize) {
        /// How long a terminated process may take to be gone before the wait gives up.
        const TERMINATE_WAIT: Duration = Duration::from_secs(5);
        let mut st = self.state.lock();
        let (mut stopped, mut terminated) = (0, 0);
        // (service, its process, when to act next, terminated already)
        let mut waiting: Vec<(usize, Pid, Instant, bool)> = Vec::new();
        let mut hosts: Vec<(usize, String)> = Vec::new();
        for &i in ids {
            let s = &st.services[i];
            let (state, pid, exited, timeout) = (s.state, s.pid, s.exited, s.spec.stop_timeout);
            if matches!(state, ServiceState::Unknown | ServiceState::Stopped) || (state == ServiceState::Exited && end == ServiceState::Stopped) {
                continue;
            }
            stopped += 1;
            match (&s.spec.kind, pid) {
                (ServiceKind::Process { .. }, Some(pid)) if !exited => {
                    self.set(&mut st, i, ServiceState::Stopping, None, None);
                    let _ = self.node.cancel(pid, "service stopping");
                    waiting.push((i, pid, Instant::now() + timeout, false));
                }
                (ServiceKind::Host(config), _) if state == ServiceState::Running => {
                    let name = config.name.clone();
                    self.set(&mut st, i, ServiceState::Stopping, None, None);
                    hosts.push((i, name));
                }
                _ => self.stopped(&mut st, i, end),
            }
        }
        while !waiting.is_empty() {
            let now = Instant::now();
            let mut k = 0;
            while k < waiting.len() {
                let (i, pid, at, killed) = waiting[k];
                if st.services[i].exited || (killed && at <= now) {
                    waiting.swap_remove(k);
                    self.stopped(&mut st, i, end);
                    continue;
                }
                if at <= now {
                    let id = st.services[i].spec.id.clone();
                    let timeout = st.services[i].spec.stop_timeout;
                    tracing::warn!(service = %id, pid = %pid, timeout = ?timeout, "service did not stop in time; terminating it");
                    let _ = self.node.terminate(pid);
                    terminated += 1;
                    waiting[k] = (i, pid, now + TERMINATE_WAIT, true);
                }
                k += 1;
            }
            if let Some(next) = waiting.iter().map(|w| w.2).min() {
                self.changed.wait_until(&mut st, next);
            }
        }
        drop(st);
        // Hosts stop together (each waits for its own processes).
        let reports: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = hosts.iter().map(|(_, name)| scope.spawn(move || self.node.stop_host(name).map_or(0, |r| r.terminated))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        terminated += reports.iter().sum::<usize>();
        let mut st = self.state.lock();
        for (i, _) in hosts {
            self.stopped(&mut st, i, end);
        }
        (stopped, terminated)
    }

    fn stopped(&self, st: &mut State, i: usize, end: ServiceState) {
        st.services[i].pid = None;
        self.set(st, i, end, None, None);
    }
}

/// A host's agent: spawns the host's services (monitored), tells the supervisor of their
/// exits, and times their restarts. Takes requests only from the supervisor (sender
/// `{|}`: a process cannot send as nobody).
struct Agent {
    inner: Weak<Inner>,
    /// The service processes it spawned and that have not exited: (service, instance).
    watching: HashMap<Pid, (usize, u64)>,
    /// Restart timers: (service, instance).
    timers: HashMap<CommandId, (usize, u64)>,
    /// Its host is stopping: it ends once the services it watches have.
    stopping: bool,
}

impl Process for Agent {
    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        let Some(inner) = self.inner.upgrade() else { return Status::Exit(Ok(Value::Nil)) };
        while let Some(event) = events.next() {
            match event {
                Event::Message(m) if m.from == Pid::NOBODY => {
                    let arg = |k: usize| m.payload.get(k).and_then(Value::as_int).unwrap_or(0) as u64;
                    let (i, instance) = (arg(0) as usize, arg(1));
                    match m.topic.as_str() {
                        "launch" if !self.stopping => {
                            if let Some(pid) = inner.spawn_instance(cx, i, instance) {
                                self.watching.insert(pid, (i, instance));
                            }
                        }
                        "retry" => {
                            let id = cx.command(Command::After(Duration::from_nanos(arg(2))));
                            self.timers.insert(id, (i, instance));
                        }
                        _ => {}
                    }
                }
                Event::Exit { from, result, .. } => {
                    if let Some((i, instance)) = self.watching.remove(&from) {
                        inner.exited(i, instance, result);
                    }
                }
                Event::Completion { id, .. } => {
                    if let Some((i, instance)) = self.timers.remove(&id) {
                        inner.retry(i, instance);
                    }
                }
                Event::Cancel { .. } => self.stopping = true,
                _ => {}
            }
        }
        if self.stopping && self.watching.is_empty() {
            Status::Exit(Ok(Value::Nil))
        } else {
            Status::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stop_waves;

    #[test]
    fn independent_services_stop_in_one_wave_and_dependents_first() {
        // 0 <- 1 <- 3 (3 requires 1, 1 requires 0); 2 requires 0; 4 and 5 alone
        let requires = |i: usize| match i {
            1 => vec![0],
            2 => vec![0],
            3 => vec![1],
            _ => vec![],
        };
        let order = [0, 1, 2, 3, 4, 5];
        let mut waves = stop_waves(&order, requires);
        for w in &mut waves {
            w.sort();
        }
        assert_eq!(waves, vec![vec![2, 3, 4, 5], vec![1], vec![0]]);
        assert!(stop_waves(&[], |_| vec![]).is_empty());
    }
}
