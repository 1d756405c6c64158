//! `events` (SPEC §12.7), the Rust half: subscribing a process to the node's system event
//! bus and publishing to it, with the permission checks and error kinds SPEC names. The
//! Subscription object and its channel (a `listen` on the subscription's private topic) are
//! in the prelude.

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::events::EventBus;
use wippy_runtime::Error;

use super::fail;
use crate::convert::to_value;
use crate::current;

fn text(v: &LuaValue) -> Option<String> {
    match v {
        LuaValue::String(s) => Some(s.to_string_lossy().to_string()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

pub(crate) fn library(lua: &Lua, r: &Table) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // R.events_subscribe(system, kind) -> id, topic | nil, err
    r.raw_set(
        "events_subscribe",
        lua.create_function(|lua, (system, kind): (LuaValue, LuaValue)| {
            let Some(system) = text(&system) else { return fail(lua, Error::invalid("system pattern is required")).map(|(a, b)| (a, LuaValue::Nil, b)) };
            let kind = text(&kind);
            let r = current::with(|cx, _| {
                if !cx.can("events.subscribe", &system) {
                    return Ok(Err(Error::invalid(format!("not allowed to subscribe to events from system: {}", wippy_runtime::Echo(&system)))));
                }
                let id = cx.node().events().subscribe(cx.pid(), &system, kind.as_deref());
                Ok(Ok(id))
            });
            match r {
                Ok(Ok(id)) => Ok((LuaValue::Integer(id as i64), LuaValue::String(lua.create_string(EventBus::topic(id))?), LuaValue::Nil)),
                Ok(Err(e)) => fail(lua, e).map(|(a, b)| (a, LuaValue::Nil, b)),
                Err(_) => fail(lua, Error::internal("events.subscribe: no process context")).map(|(a, b)| (a, LuaValue::Nil, b)),
            }
        })?,
    )?;
    r.raw_set(
        "events_unsubscribe",
        lua.create_function(|_, id: i64| current::with(|cx, _| Ok(cx.node().events().unsubscribe(cx.pid(), id as u64))))?,
    )?;
    t.raw_set(
        "send",
        lua.create_function(|lua, (system, kind, path, data): (LuaValue, LuaValue, LuaValue, LuaValue)| {
            let Some(system) = text(&system) else { return fail(lua, Error::invalid("system is required")) };
            let Some(kind) = text(&kind) else { return fail(lua, Error::invalid("kind is required")) };
            let Some(path) = text(&path) else { return fail(lua, Error::invalid("path is required")) };
            let r = current::with(|cx, st| {
                if !cx.can("events.send", &system) {
                    return Ok(Err(Error::invalid(format!("not allowed to send events to system: {}", wippy_runtime::Echo(&system)))));
                }
                // (deep-copied like any message)
                let data = match to_value(&data, &st.shard.marks, "data") {
                    Ok(v) => v,
                    Err(m) => return Ok(Err(Error::invalid(m))),
                };
                cx.flush();
                cx.node().publish_event(cx.pid(), &system, &kind, &path, data);
                Ok(Ok(()))
            });
            match r {
                Ok(Ok(())) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Ok(Err(e)) => fail(lua, e),
                Err(_) => fail(lua, Error::internal("events.send: no process context")),
            }
        })?,
    )?;
    Ok(t)
}
