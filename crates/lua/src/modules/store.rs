//! `store` (Wippy's `en/lua/storage/store.md`) over `store.memory` entries: a node-wide
//! key-value store with TTLs, versions and conditional writes. `store.get(id)` (permission
//! `store.get` on the ID) gives a handle with `get`, `entry`, `set`, `put`, `list`, `has`,
//! `delete`, `info` and `release`; each operation is checked as Wippy's (`store.key.get`,
//! `store.key.set`, `store.key.delete`, `store.key.has`, `store.key.list`, `store.info` on
//! the store ID).
//!
//! Values are copied in and out as messages are (a table read back is a new table; no
//! process shares another's). A key past its TTL is gone to every reader at once; the
//! memory it holds is reclaimed when the store is next written or listed. A full store
//! (`max_size` live keys) refuses new keys with LimitExceeded; a write to an existing key
//! still succeeds. The data lives as long as the node, across `--watch` reloads that keep
//! the entry.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind, Value};

use super::{fail, invalid};
use crate::catalog::Catalog;

type Answer = mlua::Result<(LuaValue, LuaValue)>;

/// The default (and a zero) `max_size`, as Wippy's.
pub const DEFAULT_MAX_SIZE: usize = 10_000;
/// `list` without a `limit`, and the most one page holds.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 10_000;

struct Item {
    value: Value,
    version: u64,
    expires: Option<Instant>,
}

impl Item {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// One `store.memory` entry's data.
pub(crate) struct MemStore {
    items: Mutex<BTreeMap<String, Item>>,
    max_size: Mutex<usize>,
    next_version: std::sync::atomic::AtomicU64,
}

impl MemStore {
    pub(crate) fn new(max_size: usize) -> MemStore {
        MemStore { items: Mutex::new(BTreeMap::new()), max_size: Mutex::new(max_size), next_version: 1.into() }
    }

    pub(crate) fn set_max_size(&self, n: usize) {
        *self.max_size.lock() = n;
    }

    /// Write `key` (with the conditions `put` may set); the new version.
    fn write(&self, key: &str, value: Value, ttl: Option<Duration>, cond: Cond) -> Result<u64, Error> {
        let now = Instant::now();
        let mut items = self.items.lock();
        let current = items.get(key).filter(|i| i.live(now));
        match (&cond, current) {
            (Cond::Absent, Some(_)) => return Err(Error::already_exists(format!("key already exists: {key}"))),
            (Cond::Version(v), cur) if cur.map(|c| c.version.to_string()).as_deref() != Some(v.as_str()) => {
                let mut e = Error::new(ErrorKind::Conflict, format!("version mismatch for key {key}"));
                e.retryable = Some(true);
                return Err(e);
            }
            _ => {}
        }
        if current.is_none() {
            let max = *self.max_size.lock();
            if items.len() >= max {
                items.retain(|_, i| i.live(now));
            }
            if items.len() >= max && !items.contains_key(key) {
                return Err(Error::new(ErrorKind::LimitExceeded, format!("store is full ({max} keys)")));
            }
        }
        let version = self.next_version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        items.insert(key.to_string(), Item { value, version, expires: ttl.map(|d| now + d) });
        Ok(version)
    }

    fn read(&self, key: &str) -> Option<(Value, u64)> {
        let items = self.items.lock();
        items.get(key).filter(|i| i.live(Instant::now())).map(|i| (i.value.clone(), i.version))
    }

    fn delete(&self, key: &str) -> bool {
        let mut items = self.items.lock();
        let now = Instant::now();
        items.remove(key).is_some_and(|i| i.live(now))
    }

    /// Live entries after `after` with `prefix`, in key order: at most `limit`, and whether
    /// more follow.
    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> (Vec<(String, Value, u64)>, bool) {
        let now = Instant::now();
        let mut items = self.items.lock();
        items.retain(|_, i| i.live(now));
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut out = Vec::new();
        let mut more = false;
        for (k, i) in items.range((start, std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                if k.as_str() > prefix {
                    break;
                }
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push((k.clone(), i.value.clone(), i.version));
        }
        (out, more)
    }
}

enum Cond {
    None,
    Absent,
    Version(String),
}

/// A handle from `store.get`: usable until `release()`.
struct Handle {
    id: String,
    store: Arc<MemStore>,
    released: std::sync::atomic::AtomicBool,
}


fn err(lua: &Lua, e: Error) -> Answer {
    fail(lua, e)
}

/// Checks a handle is live and the caller may do `action` on the store.
fn guard(h: &Handle, action: &str) -> mlua::Result<Result<(), Error>> {
    if h.released.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Err(invalid(format!("store {} is released", h.id))));
    }
    crate::current::with(|cx, _| Ok(cx.allow(action, &h.id)))
}

/// [`guard`], then the key argument: what every keyed operation starts with.
fn keyed(h: &Handle, action: &str, key: &LuaValue) -> mlua::Result<Result<String, Error>> {
    Ok(guard(h, action)?.and_then(|()| key_arg(key)))
}

fn key_arg(v: &LuaValue) -> Result<String, Error> {
    match v {
        LuaValue::String(s) if !s.as_bytes().is_empty() => Ok(s.to_string_lossy().to_string()),
        LuaValue::Integer(i) => Ok(i.to_string()),
        LuaValue::String(_) | LuaValue::Nil => Err(invalid("key is empty")),
        other => Err(invalid(format!("key must be a string, got {}", super::lua_type(other)))),
    }
}

/// A TTL in seconds (0 or nil: none).
fn ttl_arg(v: &LuaValue) -> Result<Option<Duration>, Error> {
    let secs = match v {
        LuaValue::Nil => return Ok(None),
        LuaValue::Integer(i) => *i as f64,
        LuaValue::Number(n) => *n,
        other => return Err(invalid(format!("ttl must be a number of seconds, got {}", super::lua_type(other)))),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(invalid("ttl must not be negative"));
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e12))))
}

fn value_in(v: &LuaValue) -> mlua::Result<Result<Value, Error>> {
    crate::current::with(|_, st| Ok(crate::convert::to_value(v, &st.shard.marks, "value").map_err(invalid)))
}

fn entry_table(lua: &Lua, key: &str, value: &Value, version: u64) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("key", key)?;
    t.raw_set("value", crate::convert::from_value(lua, value)?)?;
    t.raw_set("version", version.to_string())?;
    Ok(t)
}

impl UserData for Handle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, h, key: LuaValue| {
            let key = match keyed(h, "store.key.get", &key)? {
                Ok(k) => k,
                Err(e) => return err(lua, e),
            };
            match h.store.read(&key) {
                Some((v, _)) => Ok((crate::convert::from_value(lua, &v)?, LuaValue::Nil)),
                None => err(lua, Error::not_found(format!("key not found: {key}"))),
            }
        });
        m.add_method("entry", |lua, h, key: LuaValue| {
            let key = match keyed(h, "store.key.get", &key)? {
                Ok(k) => k,
                Err(e) => return err(lua, e),
            };
            match h.store.read(&key) {
                Some((v, version)) => Ok((LuaValue::Table(entry_table(lua, &key, &v, version)?), LuaValue::Nil)),
                None => err(lua, Error::not_found(format!("key not found: {key}"))),
            }
        });
        m.add_method("set", |lua, h, (key, value, ttl): (LuaValue, LuaValue, LuaValue)| {
            if let Err(e) = guard(h, "store.key.set")? {
                return err(lua, e);
            }
            let (key, ttl) = match (key_arg(&key), ttl_arg(&ttl)) {
                (Ok(k), Ok(t)) => (k, t),
                (Err(e), _) | (_, Err(e)) => return err(lua, e),
            };
            let value = match value_in(&value)? {
                Ok(v) => v,
                Err(e) => return err(lua, e),
            };
            match h.store.write(&key, value, ttl, Cond::None) {
                Ok(_) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => err(lua, e),
            }
        });
        m.add_method("put", |lua, h, (key, value, opts): (LuaValue, LuaValue, Option<Table>)| {
            if let Err(e) = guard(h, "store.key.set")? {
                return err(lua, e);
            }
            let key = match key_arg(&key) {
                Ok(k) => k,
                Err(e) => return err(lua, e),
            };
            let (mut ttl, mut cond) = (None, Cond::None);
            if let Some(o) = &opts {
                ttl = match ttl_arg(&o.raw_get("ttl")?) {
                    Ok(t) => t,
                    Err(e) => return err(lua, e),
                };
                let absent = matches!(o.raw_get::<LuaValue>("only_if_absent")?, LuaValue::Boolean(true));
                let version = match o.raw_get::<LuaValue>("if_version")? {
                    LuaValue::Nil => None,
                    LuaValue::String(s) => Some(s.to_string_lossy().to_string()),
                    LuaValue::Integer(i) => Some(i.to_string()),
                    other => return err(lua, invalid(format!("if_version must be a string, got {}", super::lua_type(&other)))),
                };
                cond = match (absent, version) {
                    (true, Some(_)) => return err(lua, invalid("only_if_absent and if_version are mutually exclusive")),
                    (true, None) => Cond::Absent,
                    (false, Some(v)) => Cond::Version(v),
                    (false, None) => Cond::None,
                };
            }
            let value = match value_in(&value)? {
                Ok(v) => v,
                Err(e) => return err(lua, e),
            };
            match h.store.write(&key, value.clone(), ttl, cond) {
                Ok(version) => Ok((LuaValue::Table(entry_table(lua, &key, &value, version)?), LuaValue::Nil)),
                Err(e) => err(lua, e),
            }
        });
        m.add_method("has", |lua, h, key: LuaValue| {
            match keyed(h, "store.key.has", &key)? {
                Ok(k) => Ok((LuaValue::Boolean(h.store.read(&k).is_some()), LuaValue::Nil)),
                Err(e) => err(lua, e),
            }
        });
        m.add_method("delete", |lua, h, key: LuaValue| {
            match keyed(h, "store.key.delete", &key)? {
                Ok(k) => Ok((LuaValue::Boolean(h.store.delete(&k)), LuaValue::Nil)),
                Err(e) => err(lua, e),
            }
        });
        m.add_method("list", |lua, h, opts: Option<Table>| {
            if let Err(e) = guard(h, "store.key.list")? {
                return err(lua, e);
            }
            let (mut prefix, mut after, mut limit) = (String::new(), None, DEFAULT_PAGE);
            if let Some(o) = &opts {
                if let LuaValue::String(s) = o.raw_get::<LuaValue>("prefix")? {
                    prefix = s.to_string_lossy().to_string();
                }
                if let LuaValue::String(s) = o.raw_get::<LuaValue>("after")? {
                    after = Some(s.to_string_lossy().to_string()).filter(|s| !s.is_empty());
                }
                match o.raw_get::<LuaValue>("limit")? {
                    LuaValue::Nil => {}
                    LuaValue::Integer(n) if n > 0 => limit = (n as usize).min(MAX_PAGE),
                    other => return err(lua, invalid(format!("limit must be a positive integer, got {}", super::lua_type(&other)))),
                }
            }
            let (items, more) = h.store.list(&prefix, after.as_deref(), limit);
            let page = lua.create_table()?;
            let list = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, (k, v, version)) in items.iter().enumerate() {
                list.raw_set(i + 1, entry_table(lua, k, v, *version)?)?;
            }
            page.raw_set("items", list)?;
            page.raw_set("cursor", items.last().map(|(k, _, _)| k.as_str()).unwrap_or(""))?;
            page.raw_set("has_more", more)?;
            Ok((LuaValue::Table(page), LuaValue::Nil))
        });
        m.add_method("info", |lua, h, ()| {
            if let Err(e) = guard(h, "store.info")? {
                return err(lua, e);
            }
            let t = lua.create_table()?;
            t.raw_set("id", h.id.as_str())?;
            t.raw_set("backend", "memory")?;
            t.raw_set("consistency", "local")?;
            t.raw_set("durable", false)?;
            for flag in ["list", "versioned", "conditional_put", "ttl"] {
                t.raw_set(flag, true)?;
            }
            Ok((LuaValue::Table(t), LuaValue::Nil))
        });
        m.add_method("release", |_, h, ()| {
            h.released.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(true)
        });
        m.add_meta_method(mlua::MetaMethod::ToString, |_, h, ()| Ok(format!("store: {}", h.id)));
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(move |lua, id: LuaValue| {
            let id = match super::resource_id(&id, "store") {
                Ok(id) => id,
                Err(e) => return err(lua, e),
            };
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("store.get", &id)))? {
                return err(lua, e);
            }
            let Some(store) = catalog.upgrade().and_then(|c| c.stores.read().get(&id).cloned()) else {
                let mut e = Error::not_found(format!("store not found: {id}"));
                e.retryable = Some(false);
                return err(lua, e);
            };
            Ok((LuaValue::UserData(lua.create_userdata(Handle { id, store, released: false.into() })?), LuaValue::Nil))
        })?,
    )?;
    let backend = lua.create_table()?;
    for (k, v) in [("MEMORY", "memory"), ("SQL", "sql"), ("KV_RAFT", "kv.raft"), ("KV_CRDT", "kv.crdt"), ("UNKNOWN", "unknown")] {
        backend.raw_set(k, v)?;
    }
    t.raw_set("backend", backend)?;
    let consistency = lua.create_table()?;
    for (k, v) in [("LINEARIZABLE", "linearizable"), ("EVENTUAL", "eventual"), ("LOCAL", "local"), ("UNKNOWN", "unknown")] {
        consistency.raw_set(k, v)?;
    }
    t.raw_set("consistency", consistency)?;
    Ok(t)
}
