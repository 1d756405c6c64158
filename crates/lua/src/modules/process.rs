//! `process` (SPEC §6.1), the Rust half: identity, send, spawn, terminate, cancel, monitors,
//! links, options and names. The waiting half (inbox, events, listen, exec, spawners) is in
//! the prelude.

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, Value as LuaValue, Variadic};
use wippy_runtime::{Dest, Error, NameScope, Payload, Pid, Spawn, Value};

use super::{bad_arg, fail, or_fail};
use crate::catalog::{Catalog, EntryKind};
use crate::convert::to_value;
use crate::current;

/// A destination argument: a PID string or a registered name.
pub(crate) fn dest_arg(v: &LuaValue, n: usize, f: &str) -> mlua::Result<Result<Dest, Error>> {
    match v {
        LuaValue::String(s) => Ok(Dest::parse(&s.to_str()?).map_err(|e| Error::invalid(e.to_string()))),
        other => Err(bad_arg(n, f, "string", other)),
    }
}

fn string_arg(v: &LuaValue, n: usize, f: &str) -> mlua::Result<String> {
    match v {
        LuaValue::String(s) => Ok(s.to_str()?.to_string()),
        other => Err(bad_arg(n, f, "string", other)),
    }
}

fn ok_or_fail(lua: &Lua, r: Result<(), Error>) -> mlua::Result<(LuaValue, LuaValue)> {
    match r {
        Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

use crate::vm::abi::{SPAWN_EXEC as EXEC, SPAWN_FUNCTION as FUNCTION, SPAWN_LINKED as LINKED, SPAWN_MONITORED as MONITORED};

fn spawn(
    lua: &Lua,
    catalog: &Weak<Catalog>,
    mode: i64,
    entry: &LuaValue,
    host: &LuaValue,
    ctx: &LuaValue,
    name: &LuaValue,
    sec: &LuaValue,
    args: Variadic<LuaValue>,
) -> mlua::Result<(LuaValue, LuaValue)> {
    let fname = if mode == FUNCTION { "call" } else { "spawn" };
    let entry = string_arg(entry, 1, fname)?;
    let mut host = match (mode, host) {
        (FUNCTION, _) => None,
        (_, LuaValue::String(s)) => Some(s.to_str()?.to_string()),
        (_, other) => return Err(bad_arg(2, fname, "string", other)),
    };
    if mode == FUNCTION {
        // the function ID's shape first (SPEC §12.4.2)
        let bad = match entry.split_once(':') {
            _ if entry.is_empty() => Some("function ID required"),
            None => Some("namespace required in function ID"),
            Some(("", _)) => Some("namespace required in function ID"),
            Some((_, "")) => Some("name required in function ID"),
            Some(_) => None,
        };
        if let Some(m) = bad {
            return fail(lua, Error::invalid(m));
        }
    }
    current::with(|cx, st| {
        let mut values = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            match to_value(a, &st.shard.marks, &format!("argument {}", i + 1)) {
                Ok(v) => values.push(v),
                Err(m) => return fail(lua, Error::invalid(m)),
            }
        }
        if mode == FUNCTION {
            let catalog = catalog.upgrade().ok_or_else(|| mlua::Error::runtime("the Lua runtime is gone"))?;
            match catalog.entry(&entry) {
                Ok(e) if e.kind == EntryKind::Function => {}
                // a process with a default host is a function too (SPEC §12.4.4)
                Ok(e) if e.kind == EntryKind::Process && e.default_host.is_some() => host = e.default_host.clone(),
                Ok(_) => return fail(lua, Error::invalid(format!("entry '{}' is not a function", wippy_runtime::Echo(&entry)))),
                Err(e) => return fail(lua, e),
            }
        }
        let mut sp = Spawn::entry(&entry).args(values);
        if let LuaValue::Table(_) = ctx {
            let given = match to_value(ctx, &st.shard.marks, "context") {
                Ok(Value::Table(t)) => t,
                Ok(_) => return fail(lua, Error::invalid("context values must be a table")),
                Err(m) => return fail(lua, Error::invalid(m)),
            };
            let mut merged = cx.context_values().map(|t| (**t).clone()).unwrap_or_default();
            for (k, v) in &given.map {
                merged.set(k.clone(), v.clone());
            }
            sp = sp.context(Arc::new(merged));
        }
        if let Some(identity) = super::security::requested_identity(sec, cx.identity())? {
            sp = sp.identity(identity);
        }
        if mode == EXEC {
            sp = sp.for_exec();
        }
        if mode == FUNCTION {
            sp = sp.for_call();
        }
        if mode & MONITORED != 0 || mode == EXEC || mode == FUNCTION {
            sp = sp.monitored();
        }
        if mode & LINKED != 0 && mode != EXEC && mode != FUNCTION {
            sp = sp.linked();
        }
        let name = match name {
            LuaValue::String(s) => Some(s.to_str()?.to_string()),
            _ => None,
        };
        if let Some(n) = &name {
            if let Some(pid) = cx.lookup(n) {
                return Ok((LuaValue::String(lua.create_string(pid.to_string())?), LuaValue::Nil));
            }
        }
        let r = match &host {
            Some(h) => cx.spawn_on(h, sp),
            None => cx.spawn(sp),
        };
        match r {
            Ok(pid) => {
                if let Some(n) = &name {
                    if let Err(e) = cx.register_spawned(n, pid) {
                        return fail(lua, e);
                    }
                }
                Ok((LuaValue::String(lua.create_string(pid.to_string())?), LuaValue::Nil))
            }
            Err(e) => fail(lua, e),
        }
    })
}

/// Register a cluster-wide name for `pid`: `true` when done, `failed, err`, or `"wait", id`
/// when the cluster still has to answer: that is a command, which the prelude's wrapper
/// (`settled`) waits for, so the worker runs other processes meanwhile.
pub(crate) fn registered(lua: &Lua, cx: &mut wippy_runtime::Context<'_>, name: &str, pid: Pid, scope: NameScope, failed: LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    match cx.register_scoped_later(name, pid, scope).and_then(|w| w.map(|work| cx.try_command(wippy_runtime::Command::Task(work))).transpose()) {
        Ok(None) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
        Ok(Some(id)) => Ok((LuaValue::String(lua.create_string("wait")?), LuaValue::Integer(id.0 as i64))),
        Err(e) => Ok((failed, fail(lua, e)?.1)),
    }
}

pub(crate) fn library(lua: &Lua, r: &Table, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // (a C function: vm::prims; the mlua one raises its error outside a process)
    t.raw_set("pid", crate::vm::fast_pid(lua, lua.create_function(|_, ()| current::with(|cx, _| Ok(cx.pid().to_string())))?)?)?;
    t.raw_set("id", lua.create_function(|_, ()| current::state(|st| st.entry.id.clone()))?)?;
    t.raw_set(
        "send",
        lua.create_function(|lua, (dest, topic, payloads): (LuaValue, LuaValue, Variadic<LuaValue>)| {
            let dest = dest_arg(&dest, 1, "send")?;
            let topic = string_arg(&topic, 2, "send")?;
            current::with(|cx, st| {
                let dest = or_fail!(lua, dest);
                let mut payload = Payload::new();
                for (i, v) in payloads.iter().enumerate() {
                    match to_value(v, &st.shard.marks, &format!("payload {}", i + 1)) {
                        Ok(v) => payload.push(v),
                        Err(m) => return fail(lua, Error::invalid(m)),
                    }
                }
                ok_or_fail(lua, cx.send(dest, &topic, payload))
            })
        })?,
    )?;
    let c = catalog.clone();
    let raw_spawn = lua.create_function(
        move |lua, (mode, entry, host, ctx, name, sec, args): (i64, LuaValue, LuaValue, LuaValue, LuaValue, LuaValue, Variadic<LuaValue>)| {
            spawn(lua, &c, mode, &entry, &host, &ctx, &name, &sec, args)
        },
    )?;
    r.raw_set("spawn", raw_spawn)?;
    // the prelude forwards a caller's cancellation to the function calls it waits on
    r.raw_set(
        "cancel_call",
        lua.create_function(|_, (pid, reason): (String, String)| {
            current::with(|cx, _| match pid.parse::<wippy_runtime::Pid>() {
                Ok(p) => Ok(cx.cancel_call(p, &reason).is_ok()),
                Err(_) => Ok(false),
            })
        })?,
    )?;
    for (fname, mode) in [("spawn", 0i64), ("spawn_monitored", 1), ("spawn_linked", 2), ("spawn_linked_monitored", 3)] {
        let c = catalog.clone();
        t.raw_set(
            fname,
            lua.create_function(move |lua, (entry, host, args): (LuaValue, LuaValue, Variadic<LuaValue>)| {
                spawn(lua, &c, mode, &entry, &host, &LuaValue::Nil, &LuaValue::Nil, &LuaValue::Nil, args)
            })?,
        )?;
    }
    type Op = fn(&mut wippy_runtime::Context<'_>, Dest) -> Result<(), Error>;
    let ops: [(&str, Op); 5] = [
        ("terminate", |cx, d| cx.terminate(d)),
        ("monitor", |cx, d| cx.monitor(d)),
        ("unmonitor", |cx, d| cx.unmonitor(d)),
        ("link", |cx, d| cx.link(d)),
        ("unlink", |cx, d| cx.unlink(d)),
    ];
    for (fname, op) in ops {
        t.raw_set(
            fname,
            lua.create_function(move |lua, dest: LuaValue| {
                let dest = dest_arg(&dest, 1, fname)?;
                current::with(|cx, _| match dest {
                    Ok(d) => ok_or_fail(lua, op(cx, d)),
                    Err(e) => fail(lua, e),
                })
            })?,
        )?;
    }
    t.raw_set(
        "cancel",
        lua.create_function(|lua, (dest, reason): (LuaValue, Option<String>)| {
            let dest = dest_arg(&dest, 1, "cancel")?;
            current::with(|cx, _| match dest {
                Ok(d) => ok_or_fail(lua, cx.cancel(d, reason.as_deref().unwrap_or(""))),
                Err(e) => fail(lua, e),
            })
        })?,
    )?;
    t.raw_set(
        "get_options",
        lua.create_function(|lua, ()| {
            current::with(|cx, st| {
                let o = lua.create_table()?;
                o.raw_set("trap_links", cx.trap_links())?;
                o.raw_set("upgradable", st.upgradable)?;
                Ok(o)
            })
        })?,
    )?;
    t.raw_set(
        "set_options",
        lua.create_function(|_, opts: LuaValue| {
            // `false, err` (Invalid)
            let refuse = |m: String| Ok((false, Some(super::errors::LuaError::new(Error::invalid(m)))));
            let LuaValue::Table(opts) = opts else {
                return refuse(format!("set_options: table expected, got {}", super::lua_type(&opts)));
            };
            let mut trap = None;
            let mut upgradable = None;
            for pair in opts.pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair?;
                let key = match &k {
                    LuaValue::String(s) => s.to_string_lossy().to_string(),
                    other => format!("{other:?}"),
                };
                let b = match v {
                    LuaValue::Boolean(b) => b,
                    other => {
                        return refuse(format!("set_options: option '{key}' must be a boolean, got {}", super::lua_type(&other)))
                    }
                };
                match key.as_str() {
                    "trap_links" => trap = Some(b),
                    "upgradable" => upgradable = Some(b),
                    _ => return refuse(format!("set_options: unknown option '{key}' (known: trap_links, upgradable)")),
                }
            }
            current::with(|cx, st| {
                if let Some(b) = trap {
                    cx.set_trap_links(b);
                }
                if let Some(b) = upgradable {
                    if st.upgradable != b {
                        st.shard.catalog.set_upgradable(cx.pid(), &st.entry, b);
                    }
                    st.upgradable = b;
                }
                Ok(())
            })?;
            Ok((true, None))
        })?,
    )?;

    let reg = lua.create_table()?;
    reg.raw_set("LOCAL", 0)?;
    reg.raw_set("EVENTUAL", 1)?;
    reg.raw_set("CONSISTENT", 2)?;
    reg.raw_set("STRONG", 3)?;
    reg.raw_set(
        "register",
        lua.create_function(|lua, (name, pid, scope): (LuaValue, LuaValue, LuaValue)| {
            let name = string_arg(&name, 1, "register")?;
            let pid = match &pid {
                LuaValue::Nil => None,
                LuaValue::String(s) => match s.to_str()?.parse::<Pid>() {
                    Ok(p) => Some(p),
                    Err(e) => return fail(lua, Error::invalid(e.to_string())),
                },
                other => return Err(bad_arg(2, "register", "string", other)),
            };
            // SPEC §13.5: LOCAL = 0, EVENTUAL = 1, CONSISTENT = 2, STRONG = 3
            let scope = match &scope {
                LuaValue::Nil => NameScope::Local,
                LuaValue::Integer(n) => match NameScope::from_code(*n) {
                    Some(s) => s,
                    None => return fail(lua, Error::invalid(format!("register: unknown scope {n} (LOCAL 0, EVENTUAL 1, CONSISTENT 2, STRONG 3)"))),
                },
                LuaValue::Number(f) if f.fract() == 0.0 => match NameScope::from_code(*f as i64) {
                    Some(s) => s,
                    None => return fail(lua, Error::invalid(format!("register: unknown scope {f}"))),
                },
                other => return fail(lua, Error::invalid(format!("register: scope must be a number, got {}", other.type_name()))),
            };
            current::with(|cx, _| {
                let r = match (pid, scope) {
                    (p, NameScope::Local) => match p {
                        Some(p) if p != cx.pid() => cx.register_for(&name, p),
                        _ => cx.register(&name),
                    },
                    (p, s) => {
                        let p = p.unwrap_or_else(|| cx.pid());
                        return registered(lua, cx, &name, p, s, LuaValue::Nil);
                    }
                };
                ok_or_fail(lua, r)
            })
        })?,
    )?;
    reg.raw_set(
        "lookup",
        lua.create_function(|lua, name: LuaValue| {
            let name = string_arg(&name, 1, "lookup")?;
            current::with(|cx, _| match cx.lookup(&name) {
                Some(p) => Ok((LuaValue::String(lua.create_string(p.to_string())?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("no process registered as '{}'", wippy_runtime::Echo(&name)))),
            })
        })?,
    )?;
    // SPEC §13.5: fences of CONSISTENT/STRONG names; the top-level names are deprecated
    // aliases that warn once
    let debug = lua.create_table()?;
    let lookup_with_fence = lua.create_function(|lua, name: LuaValue| {
        let name = string_arg(&name, 1, "lookup_with_fence")?;
        current::with(|cx, _| match cx.node().remote().and_then(|r| r.fence(&name)) {
            Some((pid, fence)) => {
                let t = lua.create_table()?;
                t.raw_set("pid", pid.to_string())?;
                t.raw_set("fence_token", fence as i64)?;
                Ok((LuaValue::Table(t), LuaValue::Nil))
            }
            None => fail(lua, Error::not_found(format!("could not resolve: {}", wippy_runtime::Echo(&name)))),
        })
    })?;
    let validate_fence = lua.create_function(|lua, (name, token): (LuaValue, LuaValue)| {
        let name = string_arg(&name, 1, "validate_fence")?;
        let token = match token {
            LuaValue::Integer(i) => i,
            LuaValue::Number(f) => f as i64,
            other => return Err(bad_arg(2, "validate_fence", "number", &other)),
        };
        current::with(|cx, _| match cx.node().remote().and_then(|r| r.fence(&name)) {
            Some((_, fence)) if fence as i64 == token => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
            _ => {
                let (_, e) = fail(lua, Error::new(wippy_runtime::ErrorKind::Conflict, "stale fence").with_retryable(true))?;
                Ok((LuaValue::Boolean(false), e))
            }
        })
    })?;
    debug.raw_set("lookup_with_fence", lookup_with_fence.clone())?;
    debug.raw_set("validate_fence", validate_fence.clone())?;
    reg.raw_set("debug", debug)?;
    for (alias, f) in [("lookup_with_fence", lookup_with_fence), ("validate_fence", validate_fence)] {
        let warned = std::sync::atomic::AtomicBool::new(false);
        reg.raw_set(
            alias,
            lua.create_function(move |_, args: mlua::MultiValue| {
                if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("process.registry.{alias} is deprecated: use process.registry.debug.{alias}");
                }
                f.call::<mlua::MultiValue>(args)
            })?,
        )?;
    }
    reg.raw_set(
        "unregister",
        lua.create_function(|lua, name: LuaValue| {
            let name = string_arg(&name, 1, "unregister")?;
            current::with(|cx, _| match cx.unregister(&name) {
                Ok(b) => Ok((LuaValue::Boolean(b), LuaValue::Nil)),
                Err(e) => fail(lua, e),
            })
        })?,
    )?;
    t.raw_set("registry", reg)?;
    Ok(t)
}
