//! Cluster-wide names (SPEC §13.5) in the JetStream key-value bucket `<p>_names`.
//!
//! A key is the name in hex (key characters are restricted); its value is the owner's PID,
//! the scope and the owner node's incarnation. Every node keeps a replica of the bucket,
//! kept current by a watch, and resolves names from it (reads may lag by one message).
//!
//! - CONSISTENT: a create-if-absent on the key; the revision that created it is the fence
//!   token (strictly increasing, the same on every node, kept across server restarts with
//!   file storage). A key held by a PID of a node that is not alive is taken over with a
//!   compare-and-set on its revision.
//! - STRONG: as CONSISTENT, then every live node is asked (`<p>.sync.<node>`) to answer once
//!   its replica has applied that revision; past the deadline (10 s) the key is deleted and
//!   the call fails naming the nodes that did not answer. A node that goes down meanwhile
//!   is no longer waited for.
//! - EVENTUAL: registered in the local replica at once (available while the store is
//!   not), then written in the background; when two nodes claim one name, every node keeps
//!   the claim with the higher rank (a fixed hash of the name and the claiming node), and
//!   the loser's process gets a CANCEL "name revoked: <name>".
//!
//! Names die with their owner (exit: `released`; node down: `node_down`), each removal a
//! delete that expects the revision it saw, so it never removes a newer claim.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parking_lot::RwLock;
use smol_str::SmolStr;
use wippy_runtime::{Error, ErrorKind, HostName, NameScope, Pid};

use crate::{token, wire, Config, Inner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: Pid,
    scope: NameScope,
    incarnation: u64,
    /// The key's revision (0: an EVENTUAL claim not written yet).
    rev: u64,
}

pub(crate) struct Names {
    kv: kv::Store,
    nodes: kv::Store,
    replica: RwLock<HashMap<SmolStr, Owner>>,
    /// The last revision the watch applied (STRONG acknowledgements wait on it).
    applied: AtomicU64,
    progress: tokio::sync::Notify,
}

fn key_of(name: &str) -> String {
    let mut s = String::with_capacity(2 * name.len() + 1);
    s.push('n');
    for b in name.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn name_of(key: &str) -> Option<SmolStr> {
    let hex = key.strip_prefix('n')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok().map(SmolStr::from)
}

fn encode(o: &Owner) -> bytes::Bytes {
    let mut b = Vec::with_capacity(64);
    let _ = rmp::encode::write_array_len(&mut b, 3);
    o.pid.with_text(|t| {
        let _ = rmp::encode::write_str(&mut b, t);
    });
    let _ = rmp::encode::write_uint(&mut b, o.scope as u64);
    let _ = rmp::encode::write_uint(&mut b, o.incarnation);
    b.into()
}

fn decode(data: &[u8], rev: u64) -> Option<Owner> {
    let mut r = wire::Reader::new(data);
    let t = r.value(0).ok()?;
    let t = t.as_table()?;
    let pid = t.array.first()?.as_str()?.parse::<Pid>().ok()?;
    let scope = NameScope::from_code(t.array.get(1)?.as_int()?)?;
    let incarnation = match t.array.get(2)? {
        wippy_runtime::Value::Int(i) => *i as u64,
        _ => return None,
    };
    Some(Owner { pid, scope, incarnation, rev })
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("cluster name service: {e}")).with_retryable(true)
}

async fn bucket(js: &async_nats::jetstream::Context, name: String, replicas: usize) -> Result<kv::Store, Error> {
    if let Ok(s) = js.get_key_value(name.clone()).await {
        return Ok(s);
    }
    js.create_key_value(kv::Config { bucket: name.clone(), history: 1, storage: async_nats::jetstream::stream::StorageType::File, num_replicas: replicas.max(1), ..Default::default() })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cluster: cannot open the JetStream bucket '{name}' (is JetStream enabled on the NATS server, `nats-server -js`?): {e}"),
            )
        })
}

impl Names {
    pub(crate) async fn open(client: &async_nats::Client, config: &Config) -> Result<Names, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = bucket(&js, format!("{}_names", config.prefix), config.replicas).await?;
        let nodes = bucket(&js, format!("{}_nodes", config.prefix), config.replicas).await?;
        Ok(Names { kv, nodes, replica: RwLock::new(HashMap::new()), applied: AtomicU64::new(0), progress: tokio::sync::Notify::new() })
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<(Pid, u64)> {
        let r = self.replica.read();
        let o = r.get(name)?;
        Some((o.pid, if o.scope >= NameScope::Consistent { o.rev } else { 0 }))
    }

    /// Apply one watched change (in stream order); the local owner that lost the name to
    /// another claim, if any.
    fn apply(&self, me: HostName, name: SmolStr, rev: u64, owner: Option<Owner>) -> Option<Pid> {
        let mut r = self.replica.write();
        let old = r.get(&name).copied();
        if old.is_some_and(|o| o.rev > rev) {
            return None; // our own newer write got here first
        }
        let revoked = match (old, owner) {
            (Some(o), Some(n)) if o.pid != n.pid && o.pid.node() == me => Some(o.pid),
            _ => None,
        };
        match owner {
            Some(o) => r.insert(name, o),
            None => r.remove(&name),
        };
        revoked
    }
}

/// Take this node's name in `<p>_nodes` (a compare-and-set, so two nodes starting with one
/// name at once cannot both have it).
pub(crate) async fn claim_node(inner: &Arc<Inner>) -> Result<(), Error> {
    let key = format!("n{}", token(&inner.name));
    let mut v = Vec::new();
    let _ = rmp::encode::write_uint(&mut v, inner.incarnation());
    let nodes = &inner.names.nodes;
    let taken = |e: String| Error::new(ErrorKind::AlreadyExists, format!("another node took the name at the same moment ({e})"));
    match nodes.entry(key.clone()).await.map_err(unavailable)? {
        Some(e) if e.operation == kv::Operation::Put => {
            nodes.update(key, v.into(), e.revision).await.map_err(|e| taken(e.to_string()))?;
        }
        _ => {
            nodes.create(key, v.into()).await.map_err(|e| taken(e.to_string()))?;
        }
    }
    Ok(())
}

/// Follow the bucket into the replica (waiting until it has caught up), answer STRONG
/// acknowledgement requests, and reap names a previous life of this node left behind.
pub(crate) async fn start(inner: &Arc<Inner>) -> Result<(), Error> {
    let n = &inner.names;
    // (not `status().values()`: the store's stream info is the one cached when it was opened)
    let existing = n.kv.keys().await.map_err(unavailable)?.next().await.is_some();
    // every key's last value first (a node joining late learns the names already held), then changes
    let mut watch = n.kv.watch_with_history(">").await.map_err(unavailable)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let i = inner.clone();
    inner.rt.spawn(async move {
        let mut ready = Some(ready_tx);
        if !existing {
            let _ = ready.take().map(|r| r.send(()));
        }
        while let Some(e) = watch.next().await {
            let Ok(e) = e else { continue };
            let Some(name) = name_of(&e.key) else { continue };
            let owner = match e.operation {
                kv::Operation::Put => decode(&e.value, e.revision),
                _ => None,
            };
            if let Some(loser) = i.names.apply(i.me, name.clone(), e.revision, owner) {
                let _ = i.node.cancel(loser, &format!("name revoked: {name}"));
            }
            i.names.applied.fetch_max(e.revision, Ordering::AcqRel);
            i.names.progress.notify_waiters();
            if e.delta == 0 {
                let _ = ready.take().map(|r| r.send(()));
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    // names of an earlier life of this node
    let stale: Vec<(SmolStr, Owner)> = n.replica.read().iter().filter(|(_, o)| o.pid.node() == inner.me && o.incarnation != inner.incarnation()).map(|(k, o)| (k.clone(), *o)).collect();
    for (name, o) in stale {
        reap(inner, name, o);
    }
    // STRONG acknowledgements
    let mut sync = inner
        .client
        .subscribe(inner.subject("sync", &inner.name))
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot subscribe: {e}")))?;
    let i = inner.clone();
    inner.rt.spawn(async move {
        while let Some(m) = sync.next().await {
            let (Some(reply), Ok(rev)) = (m.reply, wire::Reader::new(&m.payload).uint()) else { continue };
            if i.silent.load(Ordering::Relaxed) {
                continue;
            }
            let i = i.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + i.config.strong_deadline;
                loop {
                    let wait = i.names.progress.notified();
                    if i.names.applied.load(Ordering::Acquire) >= rev {
                        let _ = i.client.publish(reply, bytes::Bytes::new()).await;
                        return;
                    }
                    if tokio::time::timeout_at(deadline.into(), wait).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

use crate::wait;

fn alive(inner: &Inner, pid: Pid) -> bool {
    if pid.node() == inner.me {
        return inner.node.is_alive(pid);
    }
    inner.peers.read().get(&pid.node()).is_some_and(|p| p.alive.load(Ordering::Acquire))
}

/// Register `name`: done at once (EVENTUAL: the replica now, the store in the background),
/// or the future that finishes it, to run off the process's worker.
pub(crate) fn register_later(inner: &Arc<Inner>, name: &str, pid: Pid, scope: NameScope) -> Result<Option<wippy_runtime::Pending>, Error> {
    let mine = Owner { pid, scope, incarnation: inner.incarnation(), rev: 0 };
    if scope == NameScope::Eventual {
        {
            let mut r = inner.names.replica.write();
            match r.get(name) {
                Some(o) if o.pid == pid => return Ok(None),
                Some(o) if alive(inner, o.pid) => {
                    return Err(Error::already_exists(format!("name '{}' is already registered to {}", wippy_runtime::Echo(name), o.pid)))
                }
                _ => {
                    r.insert(SmolStr::new(name), mine);
                }
            }
        }
        let (i, name) = (inner.clone(), SmolStr::new(name));
        inner.rt.spawn(async move { write_eventual(&i, name, mine).await });
        return Ok(None);
    }
    let (i, n) = (inner.clone(), SmolStr::new(name));
    let limit = inner.config.strong_deadline + Duration::from_secs(5);
    let rt = inner.rt.clone();
    let work = async move {
        let rev = claim(&i, &n, mine).await?;
        i.names.replica.write().insert(n.clone(), Owner { rev, ..mine });
        if scope == NameScope::Strong {
            if let Err(e) = acknowledged(&i, rev).await {
                i.names.replica.write().remove(&n);
                let _ = i.names.kv.delete_expect_revision(key_of(&n), Some(rev)).await;
                return Err(Error::new(ErrorKind::Timeout, format!("STRONG name '{}' was not acknowledged {e}", wippy_runtime::Echo(&n))).with_retryable(true));
            }
        }
        Ok(())
    };
    // run on the cluster's runtime whoever polls it (the node's I/O runtime runs commands)
    Ok(Some(Box::pin(async move {
        match tokio::time::timeout(limit, rt.spawn(work)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Error::internal(format!("name registration: {e}"))),
            Err(_) => Err(Error::new(ErrorKind::Timeout, "the cluster did not answer in time").with_retryable(true)),
        }
    })))
}

/// Create the key, or take it over from an owner that is gone: the new revision.
async fn claim(inner: &Arc<Inner>, name: &str, mine: Owner) -> Result<u64, Error> {
    let key = key_of(name);
    for _ in 0..3 {
        match inner.names.kv.create(&key, encode(&mine)).await {
            Ok(rev) => return Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e)),
        }
        let Some(e) = inner.names.kv.entry(key.clone()).await.map_err(unavailable)? else { continue };
        if e.operation != kv::Operation::Put {
            continue;
        }
        let Some(owner) = decode(&e.value, e.revision) else { return Err(unavailable(format!("unreadable entry for '{name}'"))) };
        if owner.pid == mine.pid {
            return Ok(e.revision);
        }
        if alive(inner, owner.pid) {
            return Err(Error::already_exists(format!("name '{}' is already registered to {}", wippy_runtime::Echo(name), owner.pid)));
        }
        match inner.names.kv.update(&key, encode(&mine), e.revision).await {
            Ok(rev) => return Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(Error::new(ErrorKind::Conflict, format!("name '{}' changed hands while it was being registered", wippy_runtime::Echo(name))).with_retryable(true))
}

/// Wait until every live node's replica has applied `rev`; `Err` lists those that did not.
async fn acknowledged(inner: &Arc<Inner>, rev: u64) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + inner.config.strong_deadline;
    let peers: Vec<_> = inner.peers.read().values().filter(|p| p.alive.load(Ordering::Acquire)).cloned().collect();
    let mut asks = Vec::new();
    for p in peers {
        let mut b = Vec::new();
        let _ = rmp::encode::write_uint(&mut b, rev);
        let subject = inner.subject("sync", &p.name);
        let client = inner.client.clone();
        asks.push(async move {
            loop {
                let r = tokio::time::timeout_at(deadline, client.request(subject.clone(), b.clone().into())).await;
                match r {
                    Ok(Ok(_)) => return None,
                    // gone meanwhile: no longer required (SPEC §13.5)
                    _ if !p.alive.load(Ordering::Acquire) => return None,
                    Err(_) => return Some(p.name.clone()),
                    Ok(Err(_)) if tokio::time::Instant::now() >= deadline => return Some(p.name.clone()),
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }
    let missing: Vec<String> = futures_util::future::join_all(asks).await.into_iter().flatten().collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("by every live node within {:?}: missing {}", inner.config.strong_deadline, missing.join(", ")))
    }
}

/// An EVENTUAL name's rank: on a conflict every node keeps the higher one.
fn rank(name: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes().chain([0]).chain(node.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

async fn write_eventual(inner: &Arc<Inner>, name: SmolStr, mine: Owner) {
    let key = key_of(&name);
    for _ in 0..5 {
        let done = match inner.names.kv.create(&key, encode(&mine)).await {
            Ok(rev) => Some(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match inner.names.kv.entry(key.clone()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => match decode(&e.value, e.revision) {
                    Some(o) if o.pid == mine.pid => Some(e.revision),
                    Some(o) if alive(inner, o.pid) && rank(&name, o.pid.node().as_str()) > rank(&name, mine.pid.node().as_str()) => {
                        // the other claim wins everywhere: ours is revoked
                        let lost = {
                            let mut r = inner.names.replica.write();
                            let lost = r.get(&name).is_some_and(|x| x.pid == mine.pid);
                            if lost {
                                r.insert(name.clone(), o);
                            }
                            lost
                        };
                        if lost {
                            let _ = inner.node.cancel(mine.pid, &format!("name revoked: {name}"));
                        }
                        return;
                    }
                    _ => inner.names.kv.update(&key, encode(&mine), e.revision).await.ok(),
                },
                _ => None,
            },
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "EVENTUAL name not written to the cluster store yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        };
        if let Some(rev) = done {
            let mut r = inner.names.replica.write();
            if r.get(&name).is_some_and(|x| x.pid == mine.pid && x.rev < rev) {
                r.insert(name, Owner { rev, ..mine });
            }
            return;
        }
    }
}

pub(crate) fn unregister(inner: &Arc<Inner>, name: &str) -> Option<bool> {
    let o = inner.names.replica.write().remove(name)?;
    if o.rev > 0 {
        let (i, key) = (inner.clone(), key_of(name));
        let _ = wait(inner, Duration::from_secs(5), async move {
            i.names.kv.delete_expect_revision(key, Some(o.rev)).await.map_err(unavailable)
        });
    }
    Some(true)
}

fn reap(inner: &Arc<Inner>, name: SmolStr, o: Owner) {
    {
        let mut r = inner.names.replica.write();
        if r.get(&name).is_some_and(|x| x.pid == o.pid && x.rev == o.rev) {
            r.remove(&name);
        }
    }
    if o.rev == 0 {
        return;
    }
    let i = inner.clone();
    inner.rt.spawn(async move {
        // expecting the revision seen: a newer claim is never removed
        let _ = i.names.kv.delete_expect_revision(key_of(&name), Some(o.rev)).await;
    });
}

/// `pid` exited holding `names`.
pub(crate) fn released(inner: &Arc<Inner>, pid: Pid, names: &[SmolStr]) {
    let owned: Vec<(SmolStr, Owner)> = {
        let r = inner.names.replica.read();
        names.iter().filter_map(|n| r.get(n).filter(|o| o.pid == pid).map(|o| (n.clone(), *o))).collect()
    };
    for (n, o) in owned {
        reap(inner, n, o);
    }
}

/// Incarnation `incarnation` of node `node` is down: its processes' names go (not those a
/// newer incarnation of the node holds).
pub(crate) fn node_down(inner: &Arc<Inner>, node: HostName, incarnation: u64) {
    let theirs: Vec<(SmolStr, Owner)> =
        inner.names.replica.read().iter().filter(|(_, o)| o.pid.node() == node && o.incarnation == incarnation).map(|(k, o)| (k.clone(), *o)).collect();
    for (n, o) in theirs {
        reap(inner, n, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_any_name() {
        for n in ["a", "svc.main", "späce name/x*>", ""] {
            assert_eq!(name_of(&key_of(n)).as_deref(), Some(n));
        }
        assert!(key_of("a.b c").bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn the_rank_is_the_same_everywhere() {
        assert_eq!(rank("x", "a"), rank("x", "a"));
        assert_ne!(rank("x", "a"), rank("x", "b"));
    }
}
