//! `io` (terminal host only): `write`, `print`, `eprint`, `read(n?)`, `readline()`,
//! `flush()`, `args()`. On any other host every function returns `nil, err` (Unavailable).

use std::io::{BufRead, Read, Write};

use mlua::{Lua, Table, Value as LuaValue, Variadic};
use wippy_runtime::Error;

use super::fail;
use crate::convert::from_value;
use crate::current;

/// The context key a terminal command's arguments travel under (`io.args()`); plumbing,
/// so `ctx.get`/`ctx.all` do not show it.
pub const ARGS_KEY: &str = "@args";

fn text(args: &Variadic<LuaValue>, sep: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(sep.as_bytes());
        }
        match a {
            LuaValue::String(s) => out.extend_from_slice(&s.as_bytes()),
            LuaValue::UserData(ud) => out.extend_from_slice(LuaValue::UserData(ud.clone()).to_string().unwrap_or_default().as_bytes()),
            other => out.extend_from_slice(other.to_string().unwrap_or_else(|_| super::lua_type(other).to_string()).as_bytes()),
        }
    }
    out
}

pub(crate) fn library(lua: &Lua, granted: bool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let unavailable = |lua: &Lua| fail(lua, Error::unavailable("io is only available to processes on a terminal host"));
    let write_fn = move |stderr: bool, sep: &'static str, newline: bool| {
        move |lua: &Lua, args: Variadic<LuaValue>| {
            if !granted {
                return unavailable(lua);
            }
            let mut bytes = text(&args, sep);
            if newline {
                bytes.push(b'\n');
            }
            let r = if stderr { std::io::stderr().write_all(&bytes) } else { std::io::stdout().lock().write_all(&bytes) };
            match r {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => fail(lua, Error::internal(format!("io: {e}"))),
            }
        }
    };
    t.raw_set("write", lua.create_function(write_fn(false, "", false))?)?;
    t.raw_set("print", lua.create_function(write_fn(false, "\t", true))?)?;
    t.raw_set("eprint", lua.create_function(write_fn(true, "\t", true))?)?;
    t.raw_set(
        "flush",
        lua.create_function(move |lua, ()| {
            if !granted {
                return unavailable(lua);
            }
            let _ = std::io::stdout().flush();
            Ok((LuaValue::Boolean(true), LuaValue::Nil))
        })?,
    )?;
    t.raw_set(
        "readline",
        lua.create_function(move |lua, ()| {
            if !granted {
                return unavailable(lua);
            }
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) => Ok((LuaValue::Nil, LuaValue::Nil)),
                Ok(_) => {
                    let l = line.trim_end_matches(['\n', '\r']);
                    Ok((LuaValue::String(lua.create_string(l)?), LuaValue::Nil))
                }
                Err(e) => fail(lua, Error::internal(format!("io.readline: {e}"))),
            }
        })?,
    )?;
    t.raw_set(
        "read",
        lua.create_function(move |lua, n: Option<usize>| {
            if !granted {
                return unavailable(lua);
            }
            let mut buf = Vec::new();
            let r = match n {
                Some(n) => std::io::stdin().lock().take(n as u64).read_to_end(&mut buf),
                None => std::io::stdin().lock().read_to_end(&mut buf),
            };
            match r {
                Ok(0) if n.is_some() => Ok((LuaValue::Nil, LuaValue::Nil)),
                Ok(_) => Ok((LuaValue::String(lua.create_string(&buf)?), LuaValue::Nil)),
                Err(e) => fail(lua, Error::internal(format!("io.read: {e}"))),
            }
        })?,
    )?;
    t.raw_set(
        "args",
        lua.create_function(move |lua, ()| {
            if !granted {
                return Ok(LuaValue::Nil);
            }
            current::with(|cx, _| match cx.context_values().and_then(|c| c.get_str(ARGS_KEY)) {
                Some(v) => from_value(lua, v),
                None => Ok(LuaValue::Table(lua.create_table()?)),
            })
        })?,
    )?;
    Ok(t)
}
