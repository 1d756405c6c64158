//! The door to other nodes (SPEC §13): what this node does with a PID of another node or a
//! cluster-wide name, and how what other nodes send comes in.
//!
//! The runtime knows no transport. A cluster (crate `wippy-cluster`) implements [`Remote`]
//! and installs it with [`NodeRef::set_remote`]; the node calls it only on paths a local
//! operation never takes (a PID whose node is not this one, a name not registered locally,
//! the exit of a process that has relations elsewhere), so a node without a cluster pays
//! one comparison per send. What arrives from other nodes comes back through the
//! `NodeRef::remote_*` calls below, which apply it with the local rules (SPEC §4).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use smol_str::SmolStr;

use crate::cell::KILL_LINKED;
use crate::error::Error;
use crate::node::NodeRef;
use crate::pid::{HostName, Pid};
use crate::process::{Event, ExitResult, Message, Payload};
use crate::topic::Topic;

/// A relation one process asks of another (SPEC §13.4's `pid.link.request` … kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Link,
    Unlink,
    Monitor,
    Unmonitor,
}

/// Which side of a relation an exit travels along: the EXIT a monitor gets, or the
/// LINK_DOWN (or kill) a linked process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Along {
    Monitor,
    Link,
}

/// The scope of a registered name (SPEC §13.5; the Lua constants' values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameScope {
    Local = 0,
    Eventual = 1,
    Consistent = 2,
    Strong = 3,
}

impl NameScope {
    pub fn from_code(n: i64) -> Option<NameScope> {
        Some(match n {
            0 => NameScope::Local,
            1 => NameScope::Eventual,
            2 => NameScope::Consistent,
            3 => NameScope::Strong,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            NameScope::Local => "local",
            NameScope::Eventual => "eventual",
            NameScope::Consistent => "consistent",
            NameScope::Strong => "strong",
        }
    }
}

/// Who asks, as the far side sees it: the sender's PID, its host and its actor (beyond
/// Wippy, the actor travels with every message so the receiving node can check its own
/// host boundary).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub pid: Pid,
    pub host: &'a str,
    pub actor: Option<&'a str>,
}

impl Origin<'static> {
    /// The runtime itself (an embedder's `NodeRef::terminate`/`cancel`).
    pub const NOBODY: Origin<'static> = Origin { pid: Pid::NOBODY, host: "", actor: None };
}

/// What the node needs from a cluster. Every call returns at once: a request to another
/// node is queued, not awaited (its answer, an EXIT or a LINK_DOWN, arrives as an event),
/// except a cluster-wide name's registration, which waits for the store's answer.
/// Work a registration still has to do (see [`Remote::register_later`]).
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;

pub trait Remote: Send + Sync + 'static {
    /// Queue a message for `to` (a PID of another node). `true` once queued, as SPEC §13.4
    /// says; NotFound when `to`'s node is not a live member.
    fn send(&self, from: &Origin<'_>, to: Pid, topic: &str, payload: Payload) -> Result<(), Error>;
    /// Ask `to`'s node to record (or drop) a relation from `from`.
    fn relate(&self, from: &Origin<'_>, to: Pid, relation: Relation) -> Result<(), Error>;
    fn terminate(&self, from: &Origin<'_>, to: Pid) -> Result<(), Error>;
    fn cancel(&self, from: &Origin<'_>, to: Pid, reason: &str) -> Result<(), Error>;
    /// The local process `from` exited; `to` (on another node) links or monitors it.
    fn exited(&self, from: Pid, to: Pid, along: Along, result: &ExitResult);
    /// A cluster-wide name (CONSISTENT/STRONG, then EVENTUAL: SPEC §13.5's order).
    fn lookup(&self, name: &str) -> Option<Pid>;
    /// Register `name` for the local process `pid` in `scope` (not `Local`), without
    /// blocking: `None` when it is done already, else the work that finishes it (a process
    /// runs it as a command instead of holding its worker).
    fn register_later(&self, name: &str, pid: Pid, scope: NameScope) -> Result<Option<Pending>, Error>;
    /// Remove a cluster-wide name: `None` when it is not one (the caller tries the local
    /// table), else whether it was registered.
    fn unregister(&self, name: &str) -> Option<bool>;
    /// `pid` exited holding `names`: release those that are cluster-wide.
    fn released(&self, pid: Pid, names: &[SmolStr]);
    /// Spawn entry `entry` on host `host` of node `node` for `from` (running as
    /// `identity`): that node decides; its answer is awaited.
    #[allow(clippy::too_many_arguments)]
    fn spawn(&self, from: &Origin<'_>, identity: Option<&crate::security::Identity>, node: HostName, host: &str, entry: &str, method: &str, args: &[crate::value::Value]) -> Result<Pid, Error>;
    /// The live members: this node first, then by ID (SPEC §13.2).
    fn members(&self) -> Vec<Member>;
    /// A CONSISTENT or STRONG name's owner and fence token (SPEC §13.5).
    fn fence(&self, name: &str) -> Option<(Pid, u64)>;
}

/// A node of the cluster, as `system.cluster.members()` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub is_local: bool,
    /// Where its connection to NATS comes from, when known.
    pub addr: Option<String>,
}

/// The error a link or monitor to a process of a node that went down carries.
pub const NODE_DISCONNECTED: &str = "node disconnected";

impl NodeRef {
    /// Make this node part of a cluster: `remote` handles every operation on another node's
    /// PID. Set once, before processes run; a second call is refused.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> Result<(), Error> {
        self.inner.remote.set(remote).map_err(|_| Error::invalid("this node already has a cluster"))
    }

    /// This node's name in its cluster ([`HostName::NONE`] when it has none).
    pub fn node_name(&self) -> HostName {
        self.inner.local
    }

    /// The cluster this node is in, if any.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.inner.remote.get()
    }

    /// A message from a process of another node for the local process `to`. Dropped
    /// (`false`) when `to` is gone or its host does not receive from the sender's host
    /// (SPEC §7.3, checked here with the host the message says it comes from).
    pub fn remote_send(&self, from: &Origin<'_>, to: Pid, topic: &str, payload: Payload) -> bool {
        let to = self.inner.localize(to);
        let Some(cell) = self.inner.table.get(to) else { return false };
        if !receives_from(&cell.host.config, from.host) {
            tracing::warn!(from = %from.pid, to = %to, host = from.host, "message from another node refused by the host boundary");
            return false;
        }
        if topic.starts_with('@') {
            return false;
        }
        let ev = Event::Message(Message { from: from.pid, topic: Topic::new(topic), payload });
        self.inner.deliver(to, ev).is_ok()
    }

    /// A process of another node asks for (or drops) a relation with the local process
    /// `to`. `Err` when `to` is gone: the asker then gets what a relation to an exited
    /// process gives (an EXIT for a monitor, a LINK_DOWN for a link, "process not found").
    pub fn remote_relate(&self, from: &Origin<'_>, to: Pid, relation: Relation) -> Result<(), Error> {
        let to = self.inner.localize(to);
        let Some(cell) = self.inner.table.get(to) else { return Err(Error::process_not_found(to)) };
        if matches!(relation, Relation::Link | Relation::Monitor) && !receives_from(&cell.host.config, from.host) {
            return Err(crate::security::denied(if relation == Relation::Link { "process.link" } else { "process.monitor" }, &to.to_string()));
        }
        let mut t = cell.topo.lock();
        if cell.exited.load(Ordering::Relaxed) {
            return Err(Error::process_not_found(to));
        }
        let m = t.more();
        let list = match relation {
            Relation::Link | Relation::Unlink => &mut m.links,
            Relation::Monitor | Relation::Unmonitor => &mut m.monitors,
        };
        match relation {
            Relation::Link | Relation::Monitor => {
                if !list.contains(&from.pid) {
                    list.push(from.pid);
                }
            }
            Relation::Unlink | Relation::Unmonitor => list.retain(|p| *p != from.pid),
        }
        Ok(())
    }

    /// `from`, a process of another node that the local process `to` links or monitors,
    /// exited with `result`.
    pub fn remote_exit(&self, from: Pid, to: Pid, along: Along, result: ExitResult) {
        let to = self.inner.localize(to);
        let at = crate::dispatch::unix_secs();
        match along {
            Along::Link => self.inner.link_gone(to, from, at, result.as_ref().err()),
            Along::Monitor => {
                let Some(cell) = self.inner.table.get(to) else { return };
                // only a watch still held fires (an unmonitor may have crossed the exit)
                let held = match cell.topo.lock().more.as_mut() {
                    Some(m) => {
                        let before = m.monitoring.len();
                        m.monitoring.retain(|p| *p != from);
                        m.monitoring.len() != before
                    }
                    None => false,
                };
                if held {
                    let _ = self.inner.deliver(to, Event::Exit { from, at, result });
                }
            }
        }
    }

    /// A process of another node asks to spawn `entry` on the local host `host` (beyond
    /// Wippy). It runs as the asker's actor, with the asker's scope made of this node's
    /// policies of the same IDs (an ID this node does not know gives nothing); the spawn is
    /// checked here as a local one would be (`process.host`, `process.spawn`), and the
    /// host must receive from the asker's host.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_spawn(&self, from: &Origin<'_>, actor: Option<crate::security::Actor>, policies: &[String], host: &str, entry: &str, method: &str, args: Vec<crate::value::Value>) -> Result<Pid, Error> {
        let target = self.inner.host_for_spawn(host)?;
        if !receives_from(&target.config, from.host) {
            return Err(crate::security::denied("process.host", &format!("{host} (from host {} of another node)", from.host)));
        }
        let identity = if actor.is_some() || !policies.is_empty() {
            let scope: Vec<_> = policies.iter().filter_map(|id| self.inner.security.policy(id)).collect();
            Some(Arc::new(crate::security::Identity::new(actor.map(Arc::new), Some(Arc::new(crate::security::Scope::new(scope))))))
        } else {
            None
        };
        let strict = self.inner.security.strict();
        if identity.is_some() || strict {
            for (action, resource) in [("process.host", host), ("process.spawn", entry)] {
                let req = crate::security::Request { action, resource, pid: Some(from.pid), meta: None, target: None };
                if !crate::security::evaluate(identity.as_deref(), strict, &req) {
                    return Err(crate::security::denied(action, resource));
                }
            }
        }
        let mut spawn = crate::node::Spawn::entry(entry).method(method).args(args);
        if let Some(i) = &identity {
            spawn = spawn.identity(i.clone());
        }
        self.inner.spawn(None, &target, spawn, None, None, identity)
    }

    /// Another node asks to end the local process `to` (SPEC §13.4).
    pub fn remote_terminate(&self, from: &Origin<'_>, to: Pid) -> bool {
        let to = self.inner.localize(to);
        match self.inner.table.get(to) {
            Some(cell) if receives_from(&cell.host.config, from.host) => {
                self.inner.kill(&cell, crate::cell::KILL_TERMINATED);
                true
            }
            _ => false,
        }
    }

    /// Another node's CANCEL for the local process `to`.
    pub fn remote_cancel(&self, from: &Origin<'_>, to: Pid, reason: &str) -> bool {
        let to = self.inner.localize(to);
        match self.inner.table.get(to) {
            Some(cell) if receives_from(&cell.host.config, from.host) => {
                let ev = Event::Cancel { from: from.pid, at: crate::dispatch::unix_secs(), reason: SmolStr::new(reason) };
                self.inner.deliver(to, ev).is_ok()
            }
            _ => false,
        }
    }

    /// Node `node` is down (SPEC §13.6): each of `locals` (local processes that may hold a
    /// relation with one of its processes) loses those relations; a monitor gets an EXIT
    /// and a link a LINK_DOWN (killing a process that does not trap links), both with
    /// error "node disconnected". How many events fired.
    pub fn node_down(&self, node: HostName, locals: impl IntoIterator<Item = Pid>) -> usize {
        let at = crate::dispatch::unix_secs();
        let error = Error::new(crate::ErrorKind::Unavailable, NODE_DISCONNECTED);
        let mut fired = 0;
        for pid in locals {
            let Some(cell) = self.inner.table.get(pid) else { continue };
            let (links, monitoring) = {
                let mut t = cell.topo.lock();
                if cell.exited.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(m) = t.more.as_mut() else { continue };
                let on = |p: &Pid| p.node() == node;
                m.monitors.retain(|p| !on(p));
                let links: Vec<Pid> = m.links.iter().copied().filter(on).collect();
                let monitoring: Vec<Pid> = m.monitoring.iter().copied().filter(on).collect();
                m.links.retain(|p| !on(p));
                m.monitoring.retain(|p| !on(p));
                (links, monitoring)
            };
            for from in monitoring {
                fired += self.inner.deliver(pid, Event::Exit { from, at, result: Err(error.clone()) }).is_ok() as usize;
            }
            if !links.is_empty() {
                fired += links.len();
                if cell.trap_links.load(Ordering::Acquire) {
                    for from in links {
                        let _ = self.inner.deliver(pid, Event::LinkDown { from, at, error: error.clone() });
                    }
                } else {
                    self.inner.kill(&cell, KILL_LINKED);
                }
            }
        }
        fired
    }
}

/// Whether a host takes messages and requests from processes of host `from` (its
/// `receive_from` list; a remote sender's own `send_to` was checked on its node).
fn receives_from(to: &crate::host::HostConfig, from: &str) -> bool {
    to.security.receive_from.as_ref().is_none_or(|l| l.iter().any(|h| h == from)) || to.name == from
}
