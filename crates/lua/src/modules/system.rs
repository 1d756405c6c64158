//! `system`: what the node is doing, for processes whose policy allows it (Wippy's module
//! of that name): memory, GC, worker threads, the OS process, the supervisor's services,
//! and (ours) the hosts and their processes. Every function checks its permission first
//! (`system.read` / `system.control` / `system.gc` / `system.exit` on the resource Wippy
//! names) and returns `value, nil` or `nil, error`.
//!
//! Where Wippy reports Go runtime figures this runtime has no equivalent of, the closest
//! one is given and the rest are 0: `memory.stats()` counts the Lua VMs' heaps (`alloc`,
//! `heap_alloc`) and the OS process's resident memory (`sys`, `heap_sys`);
//! `runtime.goroutines()` is the number of live processes; `runtime.max_procs` reads and
//! sets the worker threads of the caller's host. `memory.set_limit` and `gc.set_percent`
//! are recorded and read back (Go's soft limit and GC target have no counterpart: Lua
//! memory is bounded per process by `max_process_memory`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Weak;

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::{Context, Error, HostStats, ProcessInfo, ServiceStatus};

use super::fail;
use crate::catalog::Catalog;
use crate::current;

/// Go's default memory limit (math.MaxInt64): no limit.
static MEMORY_LIMIT: AtomicI64 = AtomicI64::new(i64::MAX);
static GC_PERCENT: AtomicI64 = AtomicI64::new(100);

/// Run `f` with the process context after checking `action` on `resource`.
fn guarded(
    lua: &Lua,
    action: &str,
    resource: &str,
    f: impl FnOnce(&Lua, &mut Context<'_>) -> mlua::Result<Result<LuaValue, Error>>,
) -> mlua::Result<(LuaValue, LuaValue)> {
    guarded_as(lua, action, resource, false, f)
}

/// [`guarded`], with a denied permission reported as Invalid when `denied_invalid`.
fn guarded_as(
    lua: &Lua,
    action: &str,
    resource: &str,
    denied_invalid: bool,
    f: impl FnOnce(&Lua, &mut Context<'_>) -> mlua::Result<Result<LuaValue, Error>>,
) -> mlua::Result<(LuaValue, LuaValue)> {
    let r = current::with(|cx, _| {
        if let Err(e) = cx.allow(action, resource) {
            return Ok(Err(if denied_invalid { Error::invalid(e.message) } else { e }));
        }
        f(lua, cx)
    });
    match r {
        Ok(Ok(v)) => Ok((v, LuaValue::Nil)),
        Ok(Err(e)) => fail(lua, e),
        Err(_) => fail(lua, Error::internal("system: no process context")),
    }
}

/// Resident memory of the OS process, in bytes (0 where /proc is missing).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn lua_memory(catalog: &Weak<Catalog>) -> u64 {
    catalog.upgrade().map(|c| c.hosts.read().values().map(|h| h.memory() as u64).sum()).unwrap_or(0)
}

fn service_table(lua: &Lua, s: &ServiceStatus) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("id", s.id.as_str())?;
    t.raw_set("status", s.state.to_string().to_lowercase())?;
    t.raw_set("desired", if s.wanted { "running" } else { "stopped" })?;
    t.raw_set("retry_count", s.attempt.saturating_sub(1))?;
    t.raw_set("restarts", s.restarts)?;
    t.raw_set("last_update", s.last_update)?;
    t.raw_set("started_at", s.started)?;
    if let Some(pid) = s.pid {
        t.raw_set("pid", pid.to_string())?;
    }
    if let Some(e) = &s.error {
        t.raw_set("details", e.as_str())?;
    }
    Ok(t)
}

fn host_table(lua: &Lua, h: &HostStats) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("id", h.name.as_str())?;
    t.raw_set("workers", h.workers)?;
    t.raw_set("busy", h.busy)?;
    t.raw_set("queued", h.queued)?;
    t.raw_set("queue_depth", h.queued)?; // (Wippy's name for it)
    t.raw_set("processes", h.processes)?;
    t.raw_set("max_processes", h.max_processes)?;
    Ok(t)
}

fn process_table(lua: &Lua, p: &ProcessInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("pid", p.pid.to_string())?;
    if let Some(e) = p.entry {
        t.raw_set("entry", e)?;
        t.raw_set("source", e)?; // (Wippy's name for it)
    }
    if let Some(a) = &p.actor {
        t.raw_set("actor_id", a.as_str())?;
    }
    t.raw_set("host", p.host.as_str())?;
    t.raw_set("state", format!("{:?}", p.state).to_lowercase())?;
    t.raw_set("mailbox", p.queued)?;
    t.raw_set("memory", p.memory)?;
    t.raw_set("memory_exact", p.memory_exact)?;
    t.raw_set("steps", p.steps)?;
    t.raw_set("age_ms", p.age.as_millis() as u64)?;
    // Wippy's start time, in Unix nanoseconds
    t.raw_set("started_at", wippy_runtime::unix_nanos().saturating_sub(p.age.as_nanos() as i64))?;
    let names = lua.create_sequence_from(p.names.iter().map(|n| n.as_str()))?;
    t.raw_set("names", names)?;
    Ok(t)
}

fn int_arg(v: &LuaValue) -> Option<i64> {
    match v {
        LuaValue::Integer(i) => Some(*i),
        LuaValue::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "exit",
        lua.create_function(|lua, code: LuaValue| {
            let code = match code {
                LuaValue::Nil => 0,
                ref v => match int_arg(v) {
                    Some(c) => c,
                    None => return fail(lua, Error::invalid("system.exit: code must be an integer")),
                },
            };
            guarded(lua, "system.exit", "", |_, cx| {
                if cx.node().request_exit(code.clamp(0, 255) as i32) {
                    Ok(Ok(LuaValue::Boolean(true)))
                } else {
                    Ok(Err(Error::internal("system.exit: this node was not started by a command that can exit")))
                }
            })
        })?,
    )?;
    t.raw_set(
        "modules",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "modules", |lua, _| {
                let list = lua.create_table()?;
                for (i, name) in ["process", "errors", "payload", "channel", "coroutine"]
                    .iter()
                    .chain(crate::catalog::MODULES.iter())
                    .enumerate()
                {
                    let m = lua.create_table()?;
                    m.raw_set("name", *name)?;
                    m.raw_set("description", describe(name))?;
                    let class = if crate::catalog::MODULES.contains(name) { "optional" } else { "core" };
                    m.raw_set("class", lua.create_sequence_from([class])?)?;
                    list.raw_set(i + 1, m)?;
                }
                Ok(Ok(LuaValue::Table(list)))
            })
        })?,
    )?;

    let memory = lua.create_table()?;
    let c = catalog.clone();
    memory.raw_set(
        "stats",
        lua.create_function(move |lua, ()| {
            let c = c.clone();
            guarded(lua, "system.read", "memory", move |lua, cx| {
                let alloc = lua_memory(&c);
                let sys = resident_bytes();
                let s = lua.create_table()?;
                for (k, v) in [
                    ("alloc", alloc),
                    ("total_alloc", alloc),
                    ("sys", sys),
                    ("heap_alloc", alloc),
                    ("heap_sys", sys),
                    ("heap_idle", 0),
                    ("heap_in_use", alloc),
                    ("heap_released", 0),
                    ("heap_objects", 0),
                    ("stack_in_use", 0),
                    ("stack_sys", 0),
                    ("mspan_in_use", 0),
                    ("mspan_sys", 0),
                    ("num_gc", 0),
                    ("next_gc", 0),
                ] {
                    s.raw_set(k, v)?;
                }
                s.raw_set("processes", cx.node().process_count())?;
                Ok(Ok(LuaValue::Table(s)))
            })
        })?,
    )?;
    let c = catalog.clone();
    memory.raw_set(
        "allocated",
        lua.create_function(move |lua, ()| {
            let c = c.clone();
            guarded(lua, "system.read", "memory", move |_, _| Ok(Ok(LuaValue::Integer(lua_memory(&c) as i64))))
        })?,
    )?;
    memory.raw_set(
        "heap_objects",
        lua.create_function(|lua, ()| guarded(lua, "system.read", "memory", |_, _| Ok(Ok(LuaValue::Integer(0)))))?,
    )?;
    memory.raw_set(
        "set_limit",
        lua.create_function(|lua, limit: LuaValue| {
            let Some(limit) = int_arg(&limit) else { return fail(lua, Error::invalid("system.memory.set_limit: limit must be an integer")) };
            guarded(lua, "system.control", "memory_limit", move |_, _| {
                let limit = if limit < 0 { i64::MAX } else { limit };
                Ok(Ok(LuaValue::Integer(MEMORY_LIMIT.swap(limit, Ordering::Relaxed))))
            })
        })?,
    )?;
    memory.raw_set(
        "get_limit",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "memory_limit", |_, _| Ok(Ok(LuaValue::Integer(MEMORY_LIMIT.load(Ordering::Relaxed)))))
        })?,
    )?;
    t.raw_set("memory", memory)?;

    let gc = lua.create_table()?;
    gc.raw_set(
        "collect",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.gc", "gc", |lua, _| {
                // the caller's own VM (its shard): other VMs collect on their own schedule
                lua.gc_collect()?;
                Ok(Ok(LuaValue::Boolean(true)))
            })
        })?,
    )?;
    gc.raw_set(
        "set_percent",
        lua.create_function(|lua, p: LuaValue| {
            let Some(p) = int_arg(&p) else { return fail(lua, Error::invalid("system.gc.set_percent: percent must be an integer")) };
            guarded(lua, "system.gc", "gc_percent", move |_, _| Ok(Ok(LuaValue::Integer(GC_PERCENT.swap(p, Ordering::Relaxed)))))
        })?,
    )?;
    gc.raw_set(
        "get_percent",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "gc_percent", |_, _| Ok(Ok(LuaValue::Integer(GC_PERCENT.load(Ordering::Relaxed)))))
        })?,
    )?;
    t.raw_set("gc", gc)?;

    let runtime = lua.create_table()?;
    runtime.raw_set(
        "goroutines",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "goroutines", |_, cx| Ok(Ok(LuaValue::Integer(cx.node().process_count() as i64))))
        })?,
    )?;
    runtime.raw_set(
        "max_procs",
        lua.create_function(|lua, n: LuaValue| match n {
            LuaValue::Nil => guarded(lua, "system.read", "gomaxprocs", |_, cx| Ok(Ok(LuaValue::Integer(cx.host().workers() as i64)))),
            v => {
                let Some(n) = int_arg(&v).filter(|n| *n > 0) else {
                    return fail(lua, Error::invalid("system.runtime.max_procs: n must be a positive integer"));
                };
                guarded(lua, "system.control", "gomaxprocs", move |_, cx| {
                    let host = cx.host();
                    let before = host.workers();
                    let name = host.config().name.clone();
                    match cx.node().rescale_host(&name, n as usize) {
                        Ok(_) => Ok(Ok(LuaValue::Integer(before as i64))),
                        Err(e) => Ok(Err(e)),
                    }
                })
            }
        })?,
    )?;
    runtime.raw_set(
        "cpu_count",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "cpu", |_, _| {
                Ok(Ok(LuaValue::Integer(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64)))
            })
        })?,
    )?;
    t.raw_set("runtime", runtime)?;

    let process = lua.create_table()?;
    process.raw_set(
        "pid",
        lua.create_function(|lua, ()| guarded(lua, "system.read", "pid", |_, _| Ok(Ok(LuaValue::Integer(std::process::id() as i64)))))?,
    )?;
    process.raw_set(
        "hostname",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "hostname", |lua, _| match std::fs::read_to_string("/proc/sys/kernel/hostname") {
                Ok(h) => Ok(Ok(LuaValue::String(lua.create_string(h.trim())?))),
                Err(e) => Ok(Err(Error::internal(format!("cannot read the host name: {e}")))),
            })
        })?,
    )?;
    process.raw_set(
        "cwd",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "cwd", |lua, _| match std::env::current_dir() {
                Ok(d) => Ok(Ok(LuaValue::String(lua.create_string(d.to_string_lossy().as_bytes())?))),
                Err(e) => Ok(Err(Error::internal(format!("cannot read the working directory: {e}")))),
            })
        })?,
    )?;
    t.raw_set("process", process)?;

    let supervisor = lua.create_table()?;
    supervisor.raw_set(
        "state",
        lua.create_function(|lua, id: LuaValue| {
            let id = match &id {
                LuaValue::String(s) if !s.as_bytes().is_empty() => s.to_string_lossy().to_string(),
                _ => return fail(lua, Error::invalid("system.supervisor.state: service_id is required")),
            };
            guarded(lua, "system.read", "supervisor", move |lua, cx| match cx.node().services().iter().find(|s| s.id == id) {
                Some(s) => Ok(Ok(LuaValue::Table(service_table(lua, s)?))),
                None => Ok(Err(Error::not_found(format!("service not found: {}", wippy_runtime::Echo(&id))))),
            })
        })?,
    )?;
    supervisor.raw_set(
        "states",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "supervisor", |lua, cx| {
                let list = lua.create_table()?;
                for (i, s) in cx.node().services().iter().enumerate() {
                    list.raw_set(i + 1, service_table(lua, s)?)?;
                }
                Ok(Ok(LuaValue::Table(list)))
            })
        })?,
    )?;
    t.raw_set("supervisor", supervisor)?;

    let hosts = lua.create_table()?;
    hosts.raw_set(
        "list",
        lua.create_function(|lua, ()| {
            guarded(lua, "system.read", "hosts", |lua, cx| {
                let list = lua.create_table()?;
                for (i, h) in cx.node().host_stats().iter().enumerate() {
                    list.raw_set(i + 1, host_table(lua, h)?)?;
                }
                Ok(Ok(LuaValue::Table(list)))
            })
        })?,
    )?;
    hosts.raw_set(
        "processes",
        lua.create_function(|lua, host: Option<String>| {
            guarded(lua, "system.read", "processes", move |lua, cx| {
                let node = cx.node();
                if let Some(h) = &host {
                    if node.host(h).is_none() {
                        return Ok(Err(Error::not_found(format!("host not found: {}", wippy_runtime::Echo(h)))));
                    }
                }
                let list = lua.create_table()?;
                for (i, p) in node.processes(host.as_deref()).iter().enumerate() {
                    list.raw_set(i + 1, process_table(lua, p)?)?;
                }
                Ok(Ok(LuaValue::Table(list)))
            })
        })?,
    )?;
    t.raw_set("hosts", hosts)?;
    cluster_calls(lua, &t)?;
    Ok(t)
}

/// As [`guarded`], but a denied permission is Invalid (SPEC §13.2: Wippy's choice for the
/// cluster calls).
fn cluster_guarded(
    lua: &Lua,
    action: &str,
    resource: &str,
    f: impl FnOnce(&Lua, &mut Context<'_>) -> mlua::Result<Result<LuaValue, Error>>,
) -> mlua::Result<(LuaValue, LuaValue)> {
    guarded_as(lua, action, resource, true, f)
}

fn lock_name(v: &LuaValue) -> mlua::Result<Option<String>> {
    Ok(match v {
        LuaValue::String(s) => Some(s.to_str()?.to_string()),
        _ => None,
    })
}

/// SPEC §13.2: `system.node`, `system.cluster`, `system.raft` and `system.lock`. On this
/// engine the name store is NATS JetStream's (its own replication and leader), so in a
/// cluster the raft calls describe a node that is no raft member: role "non-member", no
/// leader, term 0. A node without a cluster answers as Wippy's does without clustering:
/// `system.raft.*` (but `role`) and `system.node.addr()` are Internal errors.
fn cluster_calls(lua: &Lua, t: &Table) -> mlua::Result<()> {
    /// Wippy's answer where there is no cluster to ask.
    fn standalone(cx: &Context<'_>, what: &str) -> Option<Error> {
        cx.node().remote().is_none().then(|| Error::internal(format!("{what} not available")))
    }
    fn node_id(cx: &Context<'_>) -> String {
        let n = cx.node().node_name();
        if n.is_none() { "local".to_string() } else { n.as_str().to_string() }
    }
    let node = lua.create_table()?;
    node.raw_set(
        "id",
        lua.create_function(|lua, ()| cluster_guarded(lua, "system.read", "node", |lua, cx| Ok(Ok(LuaValue::String(lua.create_string(node_id(cx))?)))))?,
    )?;
    node.raw_set(
        "addr",
        lua.create_function(|lua, ()| {
            cluster_guarded(lua, "system.read", "node", |lua, cx| match standalone(cx, "membership") {
                Some(e) => Ok(Err(e)),
                None => Ok(Ok(LuaValue::String(lua.create_string("")?))),
            })
        })?,
    )?;
    let role = lua.create_function(|lua, ()| cluster_guarded(lua, "system.read", "node", |lua, _| Ok(Ok(LuaValue::String(lua.create_string("non-member")?)))))?;
    node.raw_set("role", role.clone())?;
    t.raw_set("node", node)?;

    let cluster = lua.create_table()?;
    cluster.raw_set(
        "members",
        lua.create_function(|lua, ()| {
            cluster_guarded(lua, "system.read", "cluster", |lua, cx| {
                let out = lua.create_table()?;
                let members = match cx.node().remote() {
                    Some(r) => r.members(),
                    None => vec![wippy_runtime::Member { id: node_id(cx), is_local: true, addr: None }],
                };
                for (i, m) in members.iter().enumerate() {
                    let row = lua.create_table()?;
                    row.raw_set("id", m.id.as_str())?;
                    row.raw_set("is_local", m.is_local)?;
                    if let Some(a) = &m.addr {
                        row.raw_set("addr", a.as_str())?;
                    }
                    out.raw_set(i + 1, row)?;
                }
                Ok(Ok(LuaValue::Table(out)))
            })
        })?,
    )?;
    cluster.raw_set(
        "size",
        lua.create_function(|lua, ()| {
            cluster_guarded(lua, "system.read", "cluster", |_, cx| Ok(Ok(LuaValue::Integer(cx.node().remote().map_or(1, |r| r.members().len()) as i64))))
        })?,
    )?;
    cluster.raw_set(
        "leader",
        lua.create_function(|lua, ()| cluster_guarded(lua, "system.read", "cluster", |lua, _| Ok(Ok(LuaValue::String(lua.create_string("")?)))))?,
    )?;
    t.raw_set("cluster", cluster)?;

    let raft = lua.create_table()?;
    raft.raw_set("role", role)?;
    for (name, v) in [("is_leader", LuaValue::Boolean(false)), ("is_member", LuaValue::Boolean(false)), ("term", LuaValue::Integer(0)), ("commit_index", LuaValue::Integer(0))] {
        raft.raw_set(
            name,
            lua.create_function(move |lua, ()| {
                let v = v.clone();
                cluster_guarded(lua, "system.read", "raft", move |_, cx| Ok(standalone(cx, "raft").map_or(Ok(v), Err)))
            })?,
        )?;
    }
    raft.raw_set(
        "stats",
        lua.create_function(|lua, ()| {
            cluster_guarded(lua, "system.read", "raft_stats", |lua, cx| {
                if let Some(e) = standalone(cx, "raft") {
                    return Ok(Err(e));
                }
                let s = lua.create_table()?;
                s.raw_set("engine", "nats-jetstream")?;
                Ok(Ok(LuaValue::Table(s)))
            })
        })?,
    )?;
    t.raw_set("raft", raft)?;

    // a cluster lock is a STRONG name held by the caller (SPEC §13.2)
    let lock = lua.create_table()?;
    lock.raw_set(
        "acquire",
        lua.create_function(|lua, name: LuaValue| {
            let Some(name) = lock_name(&name)? else { return fail(lua, Error::invalid("system.lock.acquire: name must be a string")) };
            current::with(|cx, _| {
                if let Err(e) = cx.allow("system.lock", &name) {
                    return Ok((LuaValue::Boolean(false), fail(lua, e)?.1));
                }
                let me = cx.pid();
                if cx.lookup(&name) == Some(me) {
                    return Ok((LuaValue::Boolean(true), LuaValue::Nil));
                }
                super::process::registered(lua, cx, &name, me, wippy_runtime::NameScope::Strong, LuaValue::Boolean(false))
            })
        })?,
    )?;
    lock.raw_set(
        "release",
        lua.create_function(|lua, name: LuaValue| {
            let Some(name) = lock_name(&name)? else { return fail(lua, Error::invalid("system.lock.release: name must be a string")) };
            let r = current::with(|cx, _| {
                if let Err(e) = cx.allow("system.lock", &name) {
                    return Ok(Err(e));
                }
                if cx.lookup(&name) != Some(cx.pid()) {
                    return Ok(Ok(false));
                }
                Ok(cx.unregister(&name))
            })?;
            match r {
                Ok(b) => Ok((LuaValue::Boolean(b), LuaValue::Nil)),
                Err(e) => Ok((LuaValue::Boolean(false), fail(lua, e)?.1)),
            }
        })?,
    )?;
    t.raw_set("lock", lock)?;
    Ok(())
}

fn describe(name: &str) -> &'static str {
    match name {
        "process" => "processes: spawn, send, receive, links, monitors, names",
        "errors" => "structured error values",
        "payload" => "message payloads and their formats",
        "channel" => "channels and select",
        "coroutine" => "coroutines inside a process",
        "time" => "time, durations, timers, tickers, zones",
        "json" => "JSON encoding, decoding and schema validation",
        "logger" => "structured logs",
        "env" => "environment variables and env storages",
        "ctx" => "context values of the process",
        "funcs" => "calling function entries",
        "registry" => "the entry registry, its versions and changes",
        "io" => "terminal input and output",
        "security" => "actors, scopes, policies, token stores",
        "uuid" => "UUID generation and parsing",
        "metrics" => "counters, gauges and histograms for the Prometheus endpoint",
        "events" => "the system event bus",
        "system" => "node, memory, supervisor and host statistics",
        "base64" => "base64 encoding and decoding",
        "hash" => "digests, HMACs, FNV and PBKDF2",
        "yaml" => "YAML encoding and decoding",
        "fs" => "files in fs.directory volumes",
        "store" => "key-value stores with TTLs and versions",
        "text" => "regular expressions",
        "sql" => "SQLite databases, statements, transactions and a query builder",
        "queue" => "message queues and their consumers",
        "contract" => "contracts and their bindings to functions",
        "templates" => "Jet templates of template.set entries",
        "exec" => "OS commands run by exec.native executors",
        "crypto" => "random values, AEAD encryption, HMACs, JWTs and key derivation",
        "compress" => "gzip, deflate, zlib, brotli and zstd",
        "http" => "the HTTP request and response of a handler",
        "http_client" => "HTTP requests to other servers",
        _ => "",
    }
}
