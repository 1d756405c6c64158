//! Membership and liveness: who is in the cluster, and when a node is down.
//!
//! Every node publishes a heartbeat (its name and incarnation) every `heartbeat` (100 ms)
//! and answers probes on its ping subject. A node unheard for `probe_after` (300 ms) is
//! probed: NATS answers "no responders" at once when the node's connection is gone (killed,
//! crashed, its connection cut), so that node is down within about 0.4 s; a node that
//! answers is alive; a node that stays silent for `silent_after` (2 s: stopped, or cut off
//! in a way the server has not noticed) is down. A node that declares another down tells
//! everyone (`<p>.down`), so all nodes agree within one message; the incarnation it
//! declared down stays down (a stopped node that resumes learns it was declared down,
//! drops its own relations with every other node and rejoins as a new incarnation).
//!
//! Each live peer has an outbox: the envelopes queued for it (a frame, header first), and
//! one task that publishes them in order, so everything one node sends another keeps the
//! order it was queued in (per-sender FIFO, SPEC §13.4).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind, HostName, Member};

use crate::{wire, Inner};

/// A frame is published once it holds this much (envelopes are never split).
const FRAME_BYTES: usize = 64 * 1024;
/// How long a probe of another node waits for its answer.
const PROBE_LIMIT: Duration = Duration::from_millis(500);
/// What may wait for one node before senders get LimitExceeded.
const MAX_QUEUED: usize = 64 * 1024 * 1024;

pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) node: HostName,
    subject: String,
    pub(crate) incarnation: u64,
    pub(crate) last_seen: AtomicU64,
    pub(crate) alive: AtomicBool,
    probing: AtomicBool,
    header: Vec<u8>,
    out: Mutex<Outbox>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Outbox {
    current: Vec<u8>,
    ready: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Peer {
    /// Append what `write` encodes to this node's outbox.
    pub(crate) fn queue(&self, inner: &Inner, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Error> {
        let mut o = self.out.lock();
        if o.current.is_empty() {
            o.current.extend_from_slice(&self.header);
        }
        let before = o.current.len();
        write(&mut o.current);
        let n = o.current.len() - before;
        if n + self.header.len() > inner.max_payload {
            o.current.truncate(before);
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("a message of {n} bytes is larger than the NATS server's max_payload ({} bytes)", inner.max_payload),
            ));
        }
        if o.bytes + n > MAX_QUEUED {
            o.current.truncate(before);
            return Err(Error::new(ErrorKind::LimitExceeded, format!("the queue to node {} is full ({MAX_QUEUED} bytes waiting)", self.name)));
        }
        let first = o.bytes == 0;
        o.bytes += n;
        if o.current.len() > FRAME_BYTES.min(inner.max_payload) && before > self.header.len() {
            // the frame is full without this envelope: publish it, start the next with it
            let mut next = Vec::with_capacity(self.header.len() + n);
            next.extend_from_slice(&self.header);
            next.extend_from_slice(&o.current[before..]);
            o.current.truncate(before);
            let full = std::mem::replace(&mut o.current, next);
            o.ready.push_back(full);
        }
        drop(o);
        if first {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The next frame to publish (empty: nothing waits).
    fn take(&self) -> Vec<u8> {
        let mut o = self.out.lock();
        let f = match o.ready.pop_front() {
            Some(f) => f,
            None => std::mem::take(&mut o.current),
        };
        o.bytes = o.bytes.saturating_sub(f.len().saturating_sub(self.header.len()));
        if o.ready.is_empty() && o.current.is_empty() {
            o.bytes = 0;
        }
        f
    }
}


fn hb_body(inner: &Inner) -> bytes::Bytes {
    notice(&inner.name, inner.incarnation(), None)
}

/// `[version, name, incarnation]` (a heartbeat, a leave), and `by` after them (a down).
fn notice(name: &str, incarnation: u64, by: Option<&str>) -> bytes::Bytes {
    let mut b = Vec::with_capacity(48);
    let _ = rmp::encode::write_uint(&mut b, wire::VERSION as u64);
    let _ = rmp::encode::write_str(&mut b, name);
    let _ = rmp::encode::write_uint(&mut b, incarnation);
    if let Some(by) = by {
        let _ = rmp::encode::write_str(&mut b, by);
    }
    b.into()
}

/// `[version, name, incarnation, ...]` as sent by [`hb_body`] (and `down`: a fourth field).
fn read_hb(data: &[u8]) -> Option<(String, u64, wire::Reader<'_>)> {
    let mut r = wire::Reader::new(data);
    if r.uint().ok()? != wire::VERSION as u64 {
        return None;
    }
    let name = r.str().ok()?.to_string();
    let inc = r.uint().ok()?;
    Some((name, inc, r))
}

impl Inner {
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        let (lock, cv) = &self.changes;
        *lock.lock() += 1;
        cv.notify_all();
    }
}

/// Make sure no live node holds this node's name, then take it (SPEC §13 issue: "a node
/// cannot claim another live node's name").
pub(crate) async fn claim_name(inner: &Arc<Inner>) -> Result<(), Error> {
    let held = |why: String| Error::new(ErrorKind::AlreadyExists, format!("node name '{}' is already live in the cluster: {why}", inner.name));
    match ask(inner, &inner.name, Duration::from_secs(1)).await {
        Asked::Gone => {}
        Asked::Answered(_) | Asked::Garbled => return Err(held("it answered".into())),
        Asked::NoAnswer => return Err(held("it holds its subjects but does not answer".into())),
        Asked::Failed(e) => return Err(Error::new(ErrorKind::Unavailable, format!("cannot check the node name '{}': {e}", inner.name))),
    }
    crate::names::claim_node(inner).await.map_err(|e| held(e.message))
}

/// Subscribe to this node's subjects, start the heartbeat and the failure detector, and
/// give the members a moment to answer the first heartbeat.
pub(crate) async fn start(inner: &Arc<Inner>, connected: Arc<AtomicBool>) -> Result<(), Error> {
    let sub = |s: String| {
        let c = inner.client.clone();
        async move { c.subscribe(s.clone()).await.map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot subscribe to {s}: {e}"))) }
    };
    let p = &inner.config.prefix;
    let mut data = sub(inner.subject("node", &inner.name)).await?;
    let mut ping = sub(inner.subject("ping", &inner.name)).await?;
    let mut hb = sub(format!("{p}.hb")).await?;
    let mut leave = sub(format!("{p}.leave")).await?;
    let mut down = sub(format!("{p}.down")).await?;
    let mut spawns = sub(inner.subject("spawn", &inner.name)).await?;
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = spawns.next().await {
            if i.silent.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(reply) = m.reply {
                let answer = crate::answer_spawn(&i, &m.payload);
                let _ = i.client.publish(reply, answer.into()).await;
            }
        }
    });

    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = data.next().await {
            i.receive(&m.payload);
        }
    });
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = ping.next().await {
            if i.silent.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(reply) = m.reply {
                let mut b = Vec::new();
                let _ = rmp::encode::write_uint(&mut b, i.incarnation());
                let _ = i.client.publish(reply, b.into()).await;
            }
        }
    });
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = hb.next().await {
            match read_hb(&m.payload) {
                Some((name, inc, _)) => heard(&i, &name, inc),
                None => {
                    i.garbage.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("refused a malformed heartbeat");
                }
            }
        }
    });
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = leave.next().await {
            if let Some((name, inc, _)) = read_hb(&m.payload) {
                let peer = i.peers.read().get(&HostName::new(&name)).cloned();
                if let Some(peer) = peer.filter(|p| p.incarnation == inc) {
                    declare_down(&i, &peer, "left the cluster", false).await;
                }
            }
        }
    });
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = down.next().await {
            let Some((name, inc, mut r)) = read_hb(&m.payload) else { continue };
            let by = r.str().unwrap_or("?").to_string();
            let known = |n: &str| i.peers.read().get(&HostName::new(n)).is_some_and(|p| p.alive.load(Ordering::Acquire));
            if name == i.name {
                if inc == i.incarnation() && known(&by) {
                    rejoin(&i, &by).await;
                }
                continue;
            }
            let peer = i.peers.read().get(&HostName::new(&name)).cloned();
            if let Some(peer) = peer.filter(|p| p.incarnation == inc) {
                // believed only when the node does not answer for itself
                let i = i.clone();
                tokio::spawn(async move {
                    if !matches!(ask(&i, &peer.name, PROBE_LIMIT).await, Asked::Answered(x) if x == peer.incarnation) {
                        declare_down(&i, &peer, &format!("declared down by node {by}"), false).await;
                    }
                });
            }
        }
    });
    // heartbeat
    let i = inner.clone();
    inner.rt.spawn(async move {
        let mut tick = tokio::time::interval(i.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !i.stopped.load(Ordering::Acquire) {
            tick.tick().await;
            let _ = i.client.publish(format!("{}.hb", i.config.prefix), hb_body(&i)).await;
        }
    });
    // failure detector
    let i = inner.clone();
    inner.rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        while !i.stopped.load(Ordering::Acquire) {
            tick.tick().await;
            let now = i.now_ms();
            let up = connected.load(Ordering::Acquire);
            i.connected.store(up, Ordering::Release);
            let peers: Vec<Arc<Peer>> = i.peers.read().values().filter(|p| p.alive.load(Ordering::Acquire)).cloned().collect();
            if !up || !was_connected {
                // judging nobody while our own connection is down, nor on the tick it returns
                for p in &peers {
                    p.last_seen.store(now, Ordering::Release);
                }
                was_connected = up;
                continue;
            }
            for p in peers {
                let silence = now.saturating_sub(p.last_seen.load(Ordering::Acquire));
                if silence >= i.config.silent_after.as_millis() as u64 {
                    declare_down(&i, &p, &format!("silent for {silence} ms"), true).await;
                } else if silence >= i.config.probe_after.as_millis() as u64 && !p.probing.swap(true, Ordering::AcqRel) {
                    let i = i.clone();
                    tokio::spawn(async move { probe(&i, &p).await });
                }
            }
        }
    });
    // say hello; members answer a newcomer's heartbeat with their own at once
    let _ = inner.client.publish(format!("{p}.hb"), hb_body(inner)).await;
    let _ = inner.client.flush().await;
    tokio::time::sleep(inner.config.heartbeat.max(Duration::from_millis(150))).await;
    Ok(())
}

async fn probe(inner: &Arc<Inner>, peer: &Arc<Peer>) {
    match ask(inner, &peer.name, PROBE_LIMIT).await {
        Asked::Gone => declare_down(inner, peer, "its connection to NATS is gone", true).await,
        Asked::Answered(inc) if inc == peer.incarnation => peer.last_seen.store(inner.now_ms(), Ordering::Release),
        Asked::Answered(_) => declare_down(inner, peer, "restarted as a new incarnation", true).await,
        Asked::NoAnswer | Asked::Garbled | Asked::Failed(_) => {}
    }
    peer.probing.store(false, Ordering::Release);
}

/// A frame or heartbeat came from node `name`, incarnation `inc`.
pub(crate) fn heard(inner: &Arc<Inner>, name: &str, inc: u64) {
    if name == inner.name || inner.stopped.load(Ordering::Acquire) {
        return;
    }
    let node = HostName::new(name);
    let now = inner.now_ms();
    let peer = inner.peers.read().get(&node).cloned();
    if let Some(p) = &peer {
        if p.incarnation == inc && p.alive.load(Ordering::Acquire) {
            p.last_seen.store(now, Ordering::Release);
            return;
        }
    }
    if inner.tombstones.lock().contains(&(node, inc)) || !inner.verifying.lock().insert((node, inc)) {
        return;
    }
    let inner = inner.clone();
    let name = name.to_string();
    let rt = inner.rt.clone();
    rt.spawn(async move {
        // Believe a new node (or a new life of one) only when its own ping subject answers
        // with that incarnation: anyone with the credentials can publish a heartbeat.
        match ask(&inner, &name, PROBE_LIMIT).await {
            Asked::Answered(real) if real == inc => {
                if let Some(p) = peer.filter(|p| p.alive.load(Ordering::Acquire)) {
                    declare_down(&inner, &p, "restarted as a new incarnation", true).await;
                }
                up(&inner, &name, inc).await;
            }
            Asked::Gone => {
                if let Some(p) = peer.filter(|p| p.alive.load(Ordering::Acquire)) {
                    declare_down(&inner, &p, "its connection to NATS is gone", true).await;
                }
            }
            Asked::Answered(_) => {
                inner.garbage.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %name, incarnation = inc, "refused a heartbeat its node does not confirm");
            }
            Asked::NoAnswer | Asked::Garbled | Asked::Failed(_) => {}
        }
        inner.verifying.lock().remove(&(node, inc));
    });
}

enum Asked {
    /// It answered with its incarnation.
    Answered(u64),
    /// Something answered, not with an incarnation.
    Garbled,
    /// NATS says nobody holds the node's ping subject: its connection is gone.
    Gone,
    /// Nobody answered in time.
    NoAnswer,
    /// The question could not be asked.
    Failed(String),
}

/// Ask node `name` which incarnation it is, waiting at most `limit`.
async fn ask(inner: &Inner, name: &str, limit: Duration) -> Asked {
    use async_nats::client::RequestErrorKind;
    let ping = inner.subject("ping", name);
    match tokio::time::timeout(limit, inner.client.request(ping, bytes::Bytes::new())).await {
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Asked::Gone,
        Ok(Ok(m)) => match wire::Reader::new(&m.payload).uint() {
            Ok(inc) => Asked::Answered(inc),
            Err(_) => Asked::Garbled,
        },
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Asked::NoAnswer,
        Err(_) => Asked::NoAnswer,
        Ok(Err(e)) => Asked::Failed(e.to_string()),
    }
}

async fn up(inner: &Arc<Inner>, name: &str, inc: u64) {
    let node = HostName::new(name);
    let mut header = Vec::new();
    wire::write_header(&mut header, &inner.name, inner.incarnation());
    let peer = Arc::new(Peer {
        name: name.to_string(),
        node,
        subject: inner.subject("node", name),
        incarnation: inc,
        last_seen: AtomicU64::new(inner.now_ms()),
        alive: AtomicBool::new(true),
        probing: AtomicBool::new(false),
        header,
        out: Mutex::new(Outbox::default()),
        wake: tokio::sync::Notify::new(),
    });
    {
        let mut peers = inner.peers.write();
        if let Some(p) = peers.get(&node) {
            if p.alive.load(Ordering::Acquire) && p.incarnation == inc {
                return;
            }
        }
        if inner.tombstones.lock().contains(&(node, inc)) {
            return;
        }
        peers.insert(node, peer.clone());
    }
    let (i, p) = (inner.clone(), peer.clone());
    inner.rt.spawn(async move { flush_loop(i, p).await });
    tracing::info!(node = name, "node joined");
    inner.changed();
    // a newcomer learns of this node at once
    let _ = inner.client.publish(format!("{}.hb", inner.config.prefix), hb_body(inner)).await;
}

async fn flush_loop(inner: Arc<Inner>, peer: Arc<Peer>) {
    loop {
        peer.wake.notified().await;
        if !peer.alive.load(Ordering::Acquire) {
            return;
        }
        loop {
            let frame = peer.take();
            if frame.is_empty() {
                break;
            }
            if let Err(e) = inner.client.publish(peer.subject.clone(), frame.into()).await {
                tracing::warn!(node = %peer.name, error = %e, "could not publish to node (messages lost)");
            }
        }
    }
}

/// Node `peer` is down (once per incarnation): its relations fire, its names are reaped,
/// and (`tell`) the others hear of it.
pub(crate) async fn declare_down(inner: &Arc<Inner>, peer: &Arc<Peer>, why: &str, tell: bool) {
    if !peer.alive.swap(false, Ordering::AcqRel) {
        return;
    }
    inner.tombstones.lock().insert((peer.node, peer.incarnation));
    peer.wake.notify_one();
    {
        let mut peers = inner.peers.write();
        if peers.get(&peer.node).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            peers.remove(&peer.node);
        }
    }
    let pids: HashSet<_> = inner.watches.lock().remove(&peer.node).unwrap_or_default();
    let fired = inner.node.node_down(peer.node, pids);
    crate::names::node_down(inner, peer.node, peer.incarnation);
    tracing::warn!(node = %peer.name, why, links_and_monitors = fired, "node down");
    inner.changed();
    if tell {
        let body = notice(&peer.name, peer.incarnation, Some(&inner.name));
        let _ = inner.client.publish(format!("{}.down", inner.config.prefix), body).await;
    }
}

/// Another node declared this one down (it was stopped or cut off long enough): every
/// relation with another node is void now, so drop them all and come back as a new
/// incarnation.
async fn rejoin(inner: &Arc<Inner>, by: &str) {
    tracing::warn!(by, "this node was declared down by the cluster; rejoining as a new incarnation");
    let peers: Vec<Arc<Peer>> = inner.peers.read().values().cloned().collect();
    for p in peers {
        declare_down(inner, &p, "this node was declared down", false).await;
    }
    inner.incarnation.fetch_add(1, Ordering::AcqRel);
    let _ = crate::names::claim_node(inner).await;
    let _ = inner.client.publish(format!("{}.hb", inner.config.prefix), hb_body(inner)).await;
}

/// Leave on purpose: what is queued for other nodes goes first (up to 1 s), then the notice.
pub(crate) async fn leave(inner: &Arc<Inner>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        let pending = inner.peers.read().values().any(|p| p.out.lock().bytes > 0);
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = inner.client.publish(format!("{}.leave", inner.config.prefix), hb_body(inner)).await;
    let _ = inner.client.flush().await;
}

pub(crate) fn list(inner: &Inner) -> Vec<Member> {
    let mut v: Vec<Member> = inner
        .peers
        .read()
        .values()
        .filter(|p| p.alive.load(Ordering::Acquire))
        .map(|p| Member { id: p.name.clone(), is_local: false, addr: None })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v.insert(0, Member { id: inner.name.clone(), is_local: true, addr: None });
    v
}
