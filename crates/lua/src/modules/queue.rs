//! `queue` (Wippy's `en/lua/storage/queue.md`, `en/system/queue.md` and
//! `en/guides/queue-consumers.md`) over the memory driver: `queue.queue` entries are bounded
//! in-memory queues, and a `queue.consumer` is a native service process that takes their
//! messages and runs its function once per message, as a process of its own.
//!
//! - `queue.publish(id, data, headers?)` (permissions `queue.publish`, then
//!   `queue.publish.queue` on the ID) adds a message at the end; a full queue (the queue's
//!   `driver_options.memory.max_length`, default 1000) refuses it.
//! - `queue.message()` in a consumer's handler is the delivery being handled: `id`,
//!   `header`, `headers`, `ack`, `nack`. Settlement is single-shot: the first wins.
//! - `queue.info(id)`: `message_count` (waiting), `consumer_count`, `ready`.
//!
//! The consumer keeps at most `prefetch` messages taken from the queue (waiting in its buffer
//! or being handled) and runs at most `concurrency` handlers at once. A handler that ends
//! without settling is settled by how it ended, as Wippy's: acked when it returned, nacked
//! (the message goes back at the end of the queue) when it failed. A delivery whose consumer
//! is gone before it was settled goes back to the queue too, so a message is handled at
//! least once. Nothing here waits on a thread: a consumer with nothing to do is a parked
//! process that the next publish wakes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::{Context, Error, ErrorKind, Event, Events, NodeRef, Pid, Process, Spawn, Status, Value};

use super::{fail, invalid, or_fail};
use crate::catalog::Catalog;

type Answer = mlua::Result<(LuaValue, LuaValue)>;

/// The memory driver's bound when a queue sets none (Wippy's).
pub const DEFAULT_MAX_LENGTH: usize = 1000;
/// The topic a consumer is woken with when a message arrives.
const READY: &str = "queue.ready";
/// How long a consumer waits before trying again to start a handler the host refused.
const RETRY: Duration = Duration::from_millis(100);

/// One message: what was published, its headers, and the ID it is known by.
#[derive(Clone)]
pub(crate) struct QueuedMessage {
    id: Arc<str>,
    body: Value,
    headers: Arc<Vec<(String, Value)>>,
}

struct Inner {
    items: VecDeque<QueuedMessage>,
    /// Consumers that found the queue empty with room to take more: woken by the next push.
    hungry: Vec<Pid>,
    consumers: usize,
}

/// One `queue.queue` entry.
pub struct MemQueue {
    id: String,
    inner: Mutex<Inner>,
    max_length: Mutex<usize>,
}

impl MemQueue {
    pub(crate) fn new(id: &str, max_length: usize) -> MemQueue {
        MemQueue { id: id.to_string(), inner: Mutex::new(Inner { items: VecDeque::new(), hungry: Vec::new(), consumers: 0 }), max_length: Mutex::new(max_length) }
    }

    pub(crate) fn set_max_length(&self, n: usize) {
        *self.max_length.lock() = n;
    }

    /// Add `m` at the end (the front when `front`, for a message a stopping consumer had not
    /// started). The consumers to wake, or the error when the queue is full.
    fn push(&self, m: QueuedMessage, front: bool) -> Result<Vec<Pid>, Error> {
        let max = *self.max_length.lock();
        let mut q = self.inner.lock();
        if q.items.len() >= max && !front {
            return Err(Error::new(ErrorKind::Internal, format!("publish failed: queue {} is full ({max} messages)", self.id)).with_retryable(false));
        }
        if front {
            q.items.push_front(m);
        } else {
            q.items.push_back(m);
        }
        Ok(std::mem::take(&mut q.hungry))
    }

    /// Take up to `n` messages; when fewer were there, `pid` is woken by the next push.
    fn take(&self, n: usize, pid: Pid) -> Vec<QueuedMessage> {
        let mut q = self.inner.lock();
        let k = n.min(q.items.len());
        let got: Vec<_> = q.items.drain(..k).collect();
        if got.len() < n && !q.hungry.contains(&pid) {
            q.hungry.push(pid);
        }
        got
    }

    fn consumer(&self, pid: Pid, joins: bool) {
        let mut q = self.inner.lock();
        if joins {
            q.consumers += 1;
        } else {
            q.consumers = q.consumers.saturating_sub(1);
            q.hungry.retain(|p| *p != pid);
        }
    }
}

fn wake(node: &NodeRef, pids: Vec<Pid>) {
    for p in pids {
        let _ = node.send(p, READY, Default::default());
    }
}

const OPEN: u8 = 0;
const ACKED: u8 = 1;
const NACKED: u8 = 2;
/// Never handed to a handler (its process could not start): the consumer holds the message
/// again, so the delivery's Drop must not put it back.
const WITHDRAWN: u8 = 3;

/// The delivery a handler process is given (its attachment; `queue.message()`).
pub(crate) struct Delivery {
    msg: QueuedMessage,
    queue: Arc<MemQueue>,
    node: NodeRef,
    state: AtomicU8,
}

impl Delivery {
    /// Settle as `how` if nothing settled it yet; whether this call did.
    fn settle(&self, how: u8) -> Result<bool, Error> {
        if self.state.compare_exchange(OPEN, how, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Ok(false);
        }
        if how == NACKED {
            // Wippy's memory driver: a nacked message goes back at the end, which a full
            // queue refuses
            let woken = self.queue.push(self.msg.clone(), false).inspect_err(|e| {
                tracing::warn!(queue = %self.queue.id, id = %self.msg.id, "nacked message dropped: {}", e.message);
            })?;
            wake(&self.node, woken);
        }
        Ok(true)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // neither the handler nor its consumer settled it (the consumer was terminated):
        // the message is handled again rather than lost
        if *self.state.get_mut() == OPEN {
            let _ = self.settle(NACKED);
        }
    }
}

/// A `queue.consumer` entry's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerConfig {
    pub id: String,
    pub queue: String,
    pub func: String,
    pub concurrency: usize,
    pub prefetch: usize,
}

/// The consumer service: see the module's documentation.
struct Consumer {
    config: ConsumerConfig,
    catalog: Weak<Catalog>,
    queue: Option<Arc<MemQueue>>,
    buffered: VecDeque<QueuedMessage>,
    running: HashMap<Pid, Arc<Delivery>>,
    stopping: bool,
    retry_pending: bool,
}

impl Consumer {
    /// Take what there is room for and start handlers for what the workers can run.
    fn fill(&mut self, cx: &mut Context<'_>) {
        let Some(queue) = self.queue.clone() else { return };
        if self.stopping {
            return;
        }
        let room = self.config.prefetch.saturating_sub(self.buffered.len() + self.running.len());
        if room > 0 {
            self.buffered.extend(queue.take(room, cx.pid()));
        }
        while self.running.len() < self.config.concurrency {
            let Some(msg) = self.buffered.pop_front() else { break };
            let delivery = Arc::new(Delivery { msg, queue: queue.clone(), node: cx.node(), state: AtomicU8::new(OPEN) });
            let spawn = Spawn::entry(&self.config.func).args(vec![delivery.msg.body.clone()]).attach(delivery.clone()).for_call().monitored();
            match cx.spawn(spawn) {
                Ok(pid) => {
                    self.running.insert(pid, delivery);
                }
                Err(e) => {
                    // (a full host: try again shortly, the message first in line)
                    tracing::error!(consumer = %self.config.id, func = %self.config.func, "cannot start the handler: {}", e.message);
                    delivery.state.store(WITHDRAWN, Ordering::Release);
                    self.buffered.push_front(delivery.msg.clone());
                    if !self.retry_pending {
                        self.retry_pending = true;
                        cx.command(wippy_runtime::Command::After(RETRY));
                    }
                    break;
                }
            }
        }
    }

    /// Give back what this consumer took but did not start (the front of the queue, in order).
    fn give_back(&mut self, node: &NodeRef) {
        let Some(queue) = &self.queue else { return };
        while let Some(m) = self.buffered.pop_back() {
            if let Ok(woken) = queue.push(m, true) {
                wake(node, woken);
            }
        }
    }
}

impl Process for Consumer {
    fn init(&mut self, cx: &mut Context<'_>, _method: &str, _args: Vec<Value>) -> Status {
        let queue = self.catalog.upgrade().and_then(|c| c.queues.read().get(&self.config.queue).cloned());
        let Some(queue) = queue else {
            return Status::Exit(Err(Error::unavailable(format!("{}: queue {} is not declared", self.config.id, self.config.queue))));
        };
        queue.consumer(cx.pid(), true);
        self.queue = Some(queue);
        tracing::info!(consumer = %self.config.id, queue = %self.config.queue, "queue consumer started");
        self.fill(cx);
        Status::Wait
    }

    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        while let Some(ev) = events.next() {
            match ev {
                Event::Message(m) if m.topic.as_str() == READY => {}
                Event::Completion { .. } => self.retry_pending = false,
                Event::Exit { from, result, .. } => {
                    if let Some(d) = self.running.remove(&from) {
                        let how = match &result {
                            Ok(_) => ACKED,
                            Err(e) => {
                                tracing::error!(consumer = %self.config.id, pid = %from, id = %d.msg.id, "queue handler failed: {}", e.message);
                                NACKED
                            }
                        };
                        let _ = d.settle(how);
                    }
                }
                Event::Cancel { .. } => {
                    // stop taking messages; let the running handlers finish (the supervisor
                    // terminates this process after its stop timeout)
                    self.stopping = true;
                    self.give_back(&cx.node());
                    if let Some(q) = &self.queue {
                        q.consumer(cx.pid(), false);
                    }
                }
                _ => {}
            }
        }
        if self.stopping {
            if self.running.is_empty() {
                tracing::info!(consumer = %self.config.id, "queue consumer stopped");
                return Status::Exit(Ok(Value::Nil));
            }
            return Status::Wait;
        }
        self.fill(cx);
        Status::Wait
    }

    fn close(&mut self, cx: &mut Context<'_>, _result: &wippy_runtime::ExitResult) {
        self.give_back(&cx.node());
        if let Some(q) = self.queue.take() {
            if !self.stopping {
                q.consumer(cx.pid(), false);
            }
        }
        // running handlers keep their deliveries: settled by Drop when they end
    }
}

/// The process a `queue.consumer` entry runs as.
pub(crate) fn consumer(config: ConsumerConfig, catalog: Weak<Catalog>) -> Box<dyn Process> {
    Box::new(Consumer { config, catalog, queue: None, buffered: VecDeque::new(), running: HashMap::new(), stopping: false, retry_pending: false })
}


/// `queue.message()`'s handle.
struct MessageHandle(Arc<Delivery>);

impl UserData for MessageHandle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("id", |lua, h, ()| Ok((LuaValue::String(lua.create_string(&*h.0.msg.id)?), LuaValue::Nil)));
        m.add_method("header", |lua, h, key: String| {
            let v = h.0.msg.headers.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            Ok((v.map(|v| crate::convert::from_value(lua, v)).transpose()?.unwrap_or(LuaValue::Nil), LuaValue::Nil))
        });
        m.add_method("headers", |lua, h, ()| {
            let t = lua.create_table()?;
            for (k, v) in h.0.msg.headers.iter() {
                t.raw_set(k.as_str(), crate::convert::from_value(lua, v)?)?;
            }
            Ok((LuaValue::Table(t), LuaValue::Nil))
        });
        m.add_method("ack", |lua, h, ()| settle(lua, &h.0, ACKED));
        m.add_method("nack", |lua, h, ()| settle(lua, &h.0, NACKED));
    }
}

fn settle(lua: &Lua, d: &Delivery, how: u8) -> Answer {
    match d.settle(how) {
        Ok(done) => Ok((LuaValue::Boolean(done), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

fn find(catalog: &Weak<Catalog>, id: &str) -> Result<Arc<MemQueue>, Error> {
    catalog.upgrade().and_then(|c| c.queues.read().get(id).cloned()).ok_or_else(|| Error::not_found(format!("queue not found: {id}")).with_retryable(false))
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let cat = catalog.clone();
    t.raw_set(
        "publish",
        lua.create_function(move |lua, (id, data, headers): (LuaValue, LuaValue, LuaValue)| {
            let id = or_fail!(lua, super::resource_id(&id, "queue"));
            if data.is_nil() {
                return fail(lua, invalid("message data is empty"));
            }
            crate::current::with(|cx, st| {
                // both checked, the general one first (Wippy's); a refusal is Invalid there
                for (action, resource) in [("queue.publish", ""), ("queue.publish.queue", id.as_str())] {
                    if let Err(e) = cx.allow(action, resource) {
                        return fail(lua, Error::invalid(format!("publish not allowed: {}", e.message)).with_retryable(false));
                    }
                }
                let queue = or_fail!(lua, find(&cat, &id));
                let body = match crate::convert::to_value(&data, &st.shard.marks, "message data") {
                    Ok(v) => v,
                    Err(m) => return fail(lua, invalid(m)),
                };
                let headers = match &headers {
                    LuaValue::Nil => Vec::new(),
                    LuaValue::Table(_) => match crate::convert::to_value(&headers, &st.shard.marks, "headers") {
                        Ok(Value::Table(t)) => t.map.iter().filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v.clone()))).collect(),
                        Ok(_) => Vec::new(),
                        Err(m) => return fail(lua, invalid(m)),
                    },
                    other => return Err(super::bad_arg(3, "publish", "table", other)),
                };
                let id = Arc::from(::uuid::Uuid::new_v4().to_string());
                match queue.push(QueuedMessage { id, body, headers: Arc::new(headers) }, false) {
                    Ok(woken) => {
                        for p in woken {
                            let _ = cx.send(p, READY, Default::default());
                        }
                        Ok((LuaValue::Boolean(true), LuaValue::Nil))
                    }
                    Err(e) => fail(lua, e),
                }
            })
        })?,
    )?;
    t.raw_set(
        "message",
        lua.create_function(|lua, ()| {
            let d = crate::current::state(|st| st.attachment.as_deref().cloned().and_then(|a| a.downcast::<Delivery>().ok()))?;
            match d {
                Some(d) => Ok((LuaValue::UserData(lua.create_userdata(MessageHandle(d))?), LuaValue::Nil)),
                None => fail(lua, invalid("no delivery context: queue.message() is for a queue consumer's handler")),
            }
        })?,
    )?;
    t.raw_set(
        "info",
        lua.create_function(move |lua, id: LuaValue| {
            let id = or_fail!(lua, super::resource_id(&id, "queue"));
            let queue = or_fail!(lua, find(&catalog, &id));
            let (waiting, consumers) = {
                let q = queue.inner.lock();
                (q.items.len(), q.consumers)
            };
            let t = lua.create_table()?;
            t.raw_set("message_count", waiting as i64)?;
            t.raw_set("consumer_count", consumers as i64)?;
            t.raw_set("ready", waiting as i64)?;
            Ok((LuaValue::Table(t), LuaValue::Nil))
        })?,
    )?;
    Ok(t)
}
