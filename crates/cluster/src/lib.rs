//! Several wippy nodes as one system (SPEC §13), on NATS.
//!
//! A node joins by connecting to a NATS server (with the credentials and TLS the server
//! asks for) and answering on its own subjects under a prefix (`wippy` by default):
//!
//! | subject | carries |
//! |---|---|
//! | `<p>.node.<node>` | frames of envelopes for the node's processes (messages, link/monitor requests, exits, terminate, cancel), batched per destination node |
//! | `<p>.ping.<node>` | liveness probe, answered with the node's incarnation |
//! | `<p>.hb` | every node's heartbeat (every 100 ms) |
//! | `<p>.leave` | a node leaving on purpose |
//! | `<p>.sync.<node>` | "has your replica applied name revision R?" (STRONG names) |
//! | `<p>.spawn.<node>` | spawn an entry on one of the node's hosts (request/reply; beyond Wippy) |
//!
//! and two JetStream key-value buckets: `<p>_names` (cluster-wide names; a key's revision is
//! its fence token) and `<p>_nodes` (which incarnation holds a node name).
//!
//! Liveness (see `members.rs`): a node unheard for 300 ms is probed; NATS answers a probe
//! of a node whose connection is gone with "no responders" at once, so a node that died or
//! lost its connection is down within about 0.4 s; a node that is connected but silent (a
//! stopped process, a cut network the server has not noticed) is down after 2 s of silence.
//! While this node's own connection is down it judges nobody.

mod members;
mod names;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use smol_str::SmolStr;
use wippy_runtime::{Along, Error, ErrorKind, ExitResult, HostName, NameScope, NodeRef, Origin, Payload, Pid, Relation, Remote, Table, Value};

use crate::members::Peer;
use crate::wire::Envelope;

pub use wippy_runtime::Member;

/// See [`Cluster::fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Disconnect,
    Silence,
}

/// How a node proves itself to the NATS server (`cluster.nats.*`).
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    UserPassword { user: String, password: String },
    Token(String),
    /// An NKey seed.
    NKey(String),
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
}

/// TLS to the NATS server.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub required: bool,
    /// CA certificates to trust (PEM), besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's ID (`cluster.name`): unique among live nodes.
    pub node: String,
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// Subject and bucket prefix: nodes with the same prefix on one NATS system are one
    /// cluster (`cluster.nats.prefix`, default `wippy`).
    pub prefix: String,
    pub auth: Auth,
    pub tls: Tls,
    /// How often a node says it is alive.
    pub heartbeat: Duration,
    /// Silence after which a node is probed.
    pub probe_after: Duration,
    /// Silence after which a node that still holds its connection is declared down.
    pub silent_after: Duration,
    /// How long a STRONG registration waits for every live node (SPEC §13.5: 10 s).
    pub strong_deadline: Duration,
    /// Replicas of the JetStream buckets (a NATS cluster of 3 servers: 3).
    pub replicas: usize,
}

impl Config {
    pub fn new(node: impl Into<String>, servers: Vec<String>) -> Config {
        Config {
            node: node.into(),
            servers,
            prefix: "wippy".into(),
            auth: Auth::None,
            tls: Tls::default(),
            heartbeat: Duration::from_millis(100),
            probe_after: Duration::from_millis(300),
            silent_after: Duration::from_secs(2),
            strong_deadline: Duration::from_secs(10),
            replicas: 1,
        }
    }
}

/// This node's membership in a cluster. Dropping it does not leave: call [`Cluster::leave`]
/// (the `wippy` command does at shutdown).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) node: NodeRef,
    pub(crate) me: HostName,
    pub(crate) name: String,
    /// This life of the node (a new one when the cluster declared it down and it rejoined).
    pub(crate) incarnation: AtomicU64,
    /// Incarnations declared down: they stay down.
    pub(crate) tombstones: Mutex<HashSet<(HostName, u64)>>,
    /// Incarnations being checked before they are believed.
    pub(crate) verifying: Mutex<HashSet<(HostName, u64)>>,
    pub(crate) config: Config,
    pub(crate) client: async_nats::Client,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) peers: RwLock<HashMap<HostName, Arc<Peer>>>,
    /// Local processes that may hold a link or monitor with a process of each node (what
    /// `node_down` walks; may hold stale entries, never misses one).
    pub(crate) watches: Mutex<HashMap<HostName, HashSet<Pid>>>,
    pub(crate) names: names::Names,
    /// This node's own connection is up (judging others only then).
    pub(crate) connected: AtomicBool,
    /// Bumped at every membership change, for [`Cluster::wait_for`].
    pub(crate) changes: (Mutex<u64>, Condvar),
    pub(crate) epoch: Instant,
    pub(crate) stopped: AtomicBool,
    /// Answer nothing (see [`Cluster::fault`]).
    pub(crate) silent: AtomicBool,
    /// Largest frame the server takes (its `max_payload`).
    pub(crate) max_payload: usize,
    pub(crate) garbage: AtomicU64,
}

/// Subject token for a node name: itself when it is plain, else `x` + hex (subjects allow
/// no `.`, `*`, `>` or whitespace in a token).
pub(crate) fn token(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        name.to_string()
    } else {
        let mut s = String::from("x");
        for b in name.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl Cluster {
    /// Connect `node` (made with `Node::named(Some(config.node))`) to the cluster: connect
    /// to NATS, make sure no live node holds this name, take the name, learn the members,
    /// and start answering. Runs on the node's tokio runtime; blocks until joined.
    pub fn join(node: &NodeRef, config: Config) -> Result<Cluster, Error> {
        if node.node_name().as_str() != config.node {
            return Err(Error::invalid(format!(
                "cluster node name '{}' differs from the runtime node's name '{}'",
                config.node,
                node.node_name()
            )));
        }
        let n = node.clone();
        wait_on(&node.tokio_handle(), Duration::from_secs(30), "joining the cluster took longer than 30 s", Cluster::join_async(n, config))
    }

    async fn join_async(node: NodeRef, config: Config) -> Result<Cluster, Error> {
        let connected = Arc::new(AtomicBool::new(false));
        let client = connect(&config, connected.clone()).await?;
        let max_payload = client.server_info().max_payload.max(64 * 1024);
        let incarnation = {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            (t ^ (std::process::id() as u64).rotate_left(40) ^ (&connected as *const _ as u64)) >> 1
        };
        let names = names::Names::open(&client, &config).await?;
        let inner = Arc::new(Inner {
            me: node.node_name(),
            name: config.node.clone(),
            node,
            incarnation: AtomicU64::new(incarnation),
            tombstones: Mutex::new(HashSet::new()),
            verifying: Mutex::new(HashSet::new()),
            client,
            rt: tokio::runtime::Handle::current(),
            peers: RwLock::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            names,
            connected: AtomicBool::new(true),
            changes: (Mutex::new(0), Condvar::new()),
            epoch: Instant::now(),
            stopped: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            max_payload,
            garbage: AtomicU64::new(0),
            config,
        });
        members::claim_name(&inner).await?;
        let cluster = Cluster { inner: inner.clone() };
        members::start(&inner, connected).await?;
        names::start(&inner).await?;
        inner.node.set_remote(Arc::new(cluster.clone()))?;
        tracing::info!(node = %inner.name, servers = ?inner.config.servers, members = inner.peers.read().len() + 1, "joined the cluster");
        Ok(cluster)
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.inner.name
    }

    /// The members this node sees alive: itself first, then by ID.
    pub fn members(&self) -> Vec<Member> {
        members::list(&self.inner)
    }

    /// Wait (up to `timeout`) until `check` holds for the member list; whether it did.
    /// Event-driven: woken by every membership change.
    pub fn wait_for(&self, timeout: Duration, check: impl Fn(&[Member]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &self.inner.changes;
        let mut g = lock.lock();
        loop {
            if check(&self.members()) {
                return true;
            }
            if cv.wait_until(&mut g, deadline).timed_out() {
                return check(&self.members());
            }
        }
    }

    /// Frames refused as malformed so far.
    pub fn garbage_frames(&self) -> u64 {
        self.inner.garbage.load(Ordering::Relaxed)
    }

    /// Leave on purpose: tell the others (they see this node down at once), stop answering.
    pub fn leave(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let _ = wait(&self.inner, Duration::from_secs(2), async move {
            members::leave(&inner).await;
            Ok(())
        });
    }

    /// Inject a failure (tests, chaos drills): [`Fault::Disconnect`] drops off the cluster
    /// without a word, as a crash would (the connection closes, so NATS knows at once);
    /// [`Fault::Silence`] stops heartbeats and answers but keeps the connection, as a
    /// stopped process would (only the silence timeout can tell).
    pub fn fault(&self, fault: Fault) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.silent.store(true, Ordering::Release);
        if fault == Fault::Disconnect {
            let c = self.inner.client.clone();
            let _ = wait(&self.inner, Duration::from_secs(5), async move {
                let _ = c.drain().await;
                Ok(())
            });
        }
    }

    /// The NATS client (for tests and embedders' own traffic).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

async fn connect(config: &Config, connected: Arc<AtomicBool>) -> Result<async_nats::Client, Error> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("wippy node {}", config.node))
        .connection_timeout(Duration::from_secs(3))
        .ping_interval(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((50 * n as u64).min(1000)))
        .event_callback(move |ev| {
            let connected = connected.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => connected.store(true, Ordering::Release),
                    async_nats::Event::Disconnected => connected.store(false, Ordering::Release),
                    _ => {}
                }
                tracing::info!(event = %ev, "NATS connection");
            }
        });
    o = match &config.auth {
        Auth::None => o,
        Auth::UserPassword { user, password } => o.user_and_password(user.clone(), password.clone()),
        Auth::Token(t) => o.token(t.clone()),
        Auth::NKey(seed) => o.nkey(seed.clone()),
        Auth::CredsFile(p) => o
            .credentials_file(p)
            .await
            .map_err(|e| Error::invalid(format!("cluster.nats.creds_file {}: {e}", p.display())))?,
    };
    if config.tls.required {
        o = o.require_tls(true);
    }
    if let Some(ca) = &config.tls.ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&config.tls.cert_file, &config.tls.key_file) {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>().map_err(|e| Error::invalid(format!("cluster NATS server '{s}': {e}"))))
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(Error::invalid("cluster: no NATS server given (cluster.nats.servers or --cluster)"));
    }
    o.connect(servers.as_slice()).await.map_err(|e| {
        Error::new(ErrorKind::Unavailable, format!("cannot join the cluster through NATS {}: {e}", config.servers.join(", ")))
    })
}

/// Run `f` on the cluster's runtime and wait for it from a worker thread (a name's
/// registration and a remote spawn wait for their answer: SPEC §13.5's "blocks").
pub(crate) fn wait<T: Send + 'static>(inner: &Arc<Inner>, limit: Duration, f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static) -> Result<T, Error> {
    wait_on(&inner.rt, limit, "the cluster did not answer in time", f)
}

/// Run `f` on `rt` and wait for it from this (non-runtime) thread, at most `limit`; past
/// it, Timeout with `late` as its message.
fn wait_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    limit: Duration,
    late: &str,
    f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, late).with_retryable(true)))
}

/// `[version, from, host, actor, actor meta, [policy IDs], host, entry, method, [args]]`
fn spawn_request(from: &Origin<'_>, identity: Option<&wippy_runtime::Identity>, host: &str, entry: &str, method: &str, args: &[Value]) -> Vec<u8> {
    let mut t = Table::new();
    t.push(Value::Int(wire::VERSION as i64));
    t.push(Value::str(&from.pid.to_string()));
    t.push(Value::str(from.host));
    let actor = identity.and_then(|i| i.actor.as_ref());
    t.push(actor.map_or(Value::Nil, |a| Value::str(&a.id)));
    t.push(actor.map_or(Value::Nil, |a| Value::table(a.meta.clone())));
    let mut policies = Table::new();
    for p in identity.and_then(|i| i.scope.as_ref()).map(|s| s.policies()).unwrap_or(&[]) {
        policies.push(Value::str(&p.id));
    }
    t.push(Value::table(policies));
    for s in [host, entry, method] {
        t.push(Value::str(s));
    }
    let mut a = Table::new();
    a.array.extend(args.iter().cloned());
    t.push(Value::table(a));
    let mut out = Vec::new();
    wire::write_value(&mut out, &Value::table(t));
    out
}

/// Answer another node's spawn request.
pub(crate) fn answer_spawn(inner: &Inner, data: &[u8]) -> Vec<u8> {
    let result = (|| {
        let v = wire::Reader::new(data).value(0).map_err(|e| Error::invalid(format!("malformed spawn request: {e}")))?;
        let t = v.as_table().filter(|t| t.array.len() == 10 && t.array[0].as_int() == Some(wire::VERSION as i64)).ok_or_else(|| Error::invalid("malformed spawn request"))?;
        let s = |i: usize| t.array[i].as_str().ok_or_else(|| Error::invalid("malformed spawn request"));
        let from: Pid = s(1)?.parse().map_err(|e: wippy_runtime::PidParseError| Error::invalid(e.to_string()))?;
        if from.node().is_none() || from.node() == inner.me {
            return Err(Error::invalid("a spawn request names no other node as its sender"));
        }
        let actor = match &t.array[3] {
            Value::Nil => None,
            v => Some(wippy_runtime::Actor::new(v.as_str().unwrap_or_default()).with_meta(t.array[4].as_table().cloned().unwrap_or_default())),
        };
        let policies: Vec<String> = t.array[5].as_table().map(|p| p.array.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
        let args = t.array[9].as_table().map(|a| a.array.clone()).unwrap_or_default();
        let origin = Origin { pid: from, host: s(2)?, actor: t.array[3].as_str() };
        inner.node.remote_spawn(&origin, actor, &policies, s(6)?, s(7)?, s(8)?, args)
    })();
    let mut reply = Table::new();
    match result {
        Ok(pid) => {
            reply.push(Value::Bool(true));
            reply.push(Value::str(&pid.to_string()));
        }
        Err(e) => {
            reply.push(Value::Bool(false));
            reply.push(Value::Error(Arc::new(e)));
        }
    }
    let mut out = Vec::new();
    wire::write_value(&mut out, &Value::table(reply));
    out
}

impl Inner {
    /// `<prefix>.<what>.<node>`: one of a node's own subjects.
    pub(crate) fn subject(&self, what: &str, node: &str) -> String {
        format!("{}.{what}.{}", self.config.prefix, token(node))
    }

    /// Milliseconds since this node joined (the clock of liveness).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Remember that local `pid` may hold a relation with a process of `node`.
    pub(crate) fn watch(&self, node: HostName, pid: Pid) {
        self.watches.lock().entry(node).or_default().insert(pid);
    }

    /// Queue what `write` appends for `to`'s node.
    fn queue(&self, to: Pid, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
        let peer = self.peers.read().get(&to.node()).filter(|p| p.alive.load(Ordering::Acquire)).cloned();
        let Some(peer) = peer else {
            return Err(Error::not_found(format!("node not found: {}", to.node())));
        };
        peer.queue(self, write)
    }

    /// Apply one frame from another node.
    pub(crate) fn receive(self: &Arc<Self>, data: &[u8]) {
        if self.silent.load(Ordering::Relaxed) {
            return;
        }
        let mut r = wire::Reader::new(data);
        let header = match r.header() {
            Ok(h) => h,
            Err(e) => return self.garbage(&e.0),
        };
        members::heard(self, &header.node, header.incarnation);
        while !r.is_empty() {
            match r.envelope() {
                Ok(e) => self.apply(&header, e),
                Err(e) => return self.garbage(&format!("from node {}: {e}", header.node)),
            }
        }
    }

    fn garbage(&self, why: &str) {
        self.garbage.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(why, "refused a malformed cluster frame");
    }

    fn apply(self: &Arc<Self>, header: &wire::Header, e: Envelope) {
        let sender = HostName::new(&header.node);
        // Every PID the sender names as its own must be on the sender's node.
        let own = |p: Pid| p.node() == sender;
        match e {
            Envelope::Msg { from, host, actor, to, topic, payload } if own(from) => {
                self.node.remote_send(&Origin { pid: from, host: &host, actor: actor.as_deref() }, to, &topic, payload);
            }
            Envelope::Relate { from, host, actor, to, relation } if own(from) => {
                let origin = Origin { pid: from, host: &host, actor: actor.as_deref() };
                if matches!(relation, Relation::Link | Relation::Monitor) {
                    self.watch(sender, to.on_node(self.me));
                }
                if let Err(err) = self.node.remote_relate(&origin, to, relation) {
                    // a relation to a process that is gone fires at once, as locally
                    let along = match relation {
                        Relation::Link => Along::Link,
                        Relation::Monitor => Along::Monitor,
                        _ => return,
                    };
                    let _ = self.queue(from, |out| wire::write_exit(out, to, from, along, &Err(err)));
                }
            }
            Envelope::Exit { from, to, along, result } if own(from) => self.node.remote_exit(from, to, along, result),
            Envelope::Terminate { from, host, actor, to } if own(from) => {
                self.node.remote_terminate(&Origin { pid: from, host: &host, actor: actor.as_deref() }, to);
            }
            Envelope::Cancel { from, host, actor, to, reason } if own(from) => {
                self.node.remote_cancel(&Origin { pid: from, host: &host, actor: actor.as_deref() }, to, &reason);
            }
            other => self.garbage(&format!("node {} sent an envelope in another node's name: {other:?}", header.node)),
        }
    }
}

impl Remote for Cluster {
    fn send(&self, from: &Origin<'_>, to: Pid, topic: &str, payload: Payload) -> Result<(), Error> {
        self.inner.queue(to, |out| wire::write_msg(out, from.pid, from.host, from.actor, to, topic, &payload))
    }

    fn relate(&self, from: &Origin<'_>, to: Pid, relation: Relation) -> Result<(), Error> {
        if matches!(relation, Relation::Link | Relation::Monitor) {
            self.inner.watch(to.node(), from.pid);
        }
        self.inner.queue(to, |out| wire::write_relate(out, from.pid, from.host, from.actor, to, relation))
    }

    fn terminate(&self, from: &Origin<'_>, to: Pid) -> Result<(), Error> {
        self.inner.queue(to, |out| wire::write_terminate(out, from.pid, from.host, from.actor, to))
    }

    fn cancel(&self, from: &Origin<'_>, to: Pid, reason: &str) -> Result<(), Error> {
        self.inner.queue(to, |out| wire::write_cancel(out, from.pid, from.host, from.actor, to, reason))
    }

    fn exited(&self, from: Pid, to: Pid, along: Along, result: &ExitResult) {
        let _ = self.inner.queue(to, |out| wire::write_exit(out, from, to, along, result));
    }

    fn lookup(&self, name: &str) -> Option<Pid> {
        self.inner.names.lookup(name).map(|(p, _)| p)
    }

    fn register_later(&self, name: &str, pid: Pid, scope: NameScope) -> Result<Option<wippy_runtime::Pending>, Error> {
        names::register_later(&self.inner, name, pid, scope)
    }

    fn unregister(&self, name: &str) -> Option<bool> {
        names::unregister(&self.inner, name)
    }

    fn released(&self, pid: Pid, names: &[SmolStr]) {
        names::released(&self.inner, pid, names)
    }

    fn spawn(&self, from: &Origin<'_>, identity: Option<&wippy_runtime::Identity>, node: HostName, host: &str, entry: &str, method: &str, args: &[Value]) -> Result<Pid, Error> {
        let alive = self.inner.peers.read().get(&node).is_some_and(|p| p.alive.load(Ordering::Acquire));
        if !alive {
            return Err(Error::not_found(format!("node not found: {node}")));
        }
        let body = spawn_request(from, identity, host, entry, method, args);
        let subject = self.inner.subject("spawn", node.as_str());
        let client = self.inner.client.clone();
        let reply = wait(&self.inner, Duration::from_secs(6), async move {
            match tokio::time::timeout(Duration::from_secs(5), client.request(subject, body.into())).await {
                Ok(Ok(m)) => Ok(m.payload),
                Ok(Err(e)) => Err(Error::new(ErrorKind::Unavailable, format!("spawn on node {node}: {e}")).with_retryable(true)),
                Err(_) => Err(Error::new(ErrorKind::Timeout, format!("spawn on node {node}: no answer in 5 s")).with_retryable(true)),
            }
        })?;
        let v = wire::Reader::new(&reply).value(0).map_err(|e| Error::internal(format!("spawn on node {node}: malformed answer: {e}")))?;
        match v.as_table().map(|t| t.array.as_slice()) {
            Some([Value::Bool(true), Value::Str(p)]) => std::str::from_utf8(p).ok().and_then(|p| p.parse().ok()).ok_or_else(|| Error::internal("spawn: malformed PID")),
            Some([Value::Bool(false), Value::Error(e)]) => Err((**e).clone()),
            _ => Err(Error::internal(format!("spawn on node {node}: malformed answer"))),
        }
    }

    fn members(&self) -> Vec<wippy_runtime::Member> {
        Cluster::members(self)
    }

    fn fence(&self, name: &str) -> Option<(Pid, u64)> {
        self.inner.names.lookup(name).filter(|(_, f)| *f > 0)
    }
}
