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
        lua.create_function(move |lua, n: Option<i64>| {
            if !granted {
                return unavailable(lua);
            }
            // up to n bytes, what one read gives (it does not wait for all n); n missing or
            // <= 0 is 1024, as Wippy's; nothing left (end of input) is nil
            let n = n.filter(|n| *n > 0).unwrap_or(1024).min(1 << 20) as usize;
            let mut buf = vec![0u8; n];
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) => Ok((LuaValue::Nil, LuaValue::Nil)),
                Ok(got) => Ok((LuaValue::String(lua.create_string(&buf[..got])?), LuaValue::Nil)),
                Err(e) => fail(lua, Error::internal(format!("io.read: {e}"))),
            }
        })?,
    )?;
    t.raw_set(
        "raw",
        lua.create_function(move |lua, enable: Option<bool>| {
            if !granted {
                return unavailable(lua);
            }
            match raw_mode(enable.unwrap_or(true)) {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => fail(lua, Error::internal(format!("io.raw: {e}"))),
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

/// How many `io.raw(true)` are not yet matched by an `io.raw(false)`: the terminal is in raw
/// mode while this is above 0 (Wippy counts the same way).
static RAW_DEPTH: parking_lot::Mutex<usize> = parking_lot::Mutex::new(0);

fn raw_mode(enable: bool) -> std::io::Result<()> {
    let mut depth = RAW_DEPTH.lock();
    if enable {
        if *depth == 0 {
            crossterm::terminal::enable_raw_mode()?;
        }
        *depth += 1;
    } else if *depth > 0 {
        if *depth == 1 {
            crossterm::terminal::disable_raw_mode()?;
        }
        *depth -= 1;
    }
    Ok(())
}

/// Put the terminal back in its normal mode if a process left it raw (the command calls
/// this as the node exits).
pub fn reset_terminal() {
    let mut depth = RAW_DEPTH.lock();
    if *depth > 0 {
        let _ = crossterm::terminal::disable_raw_mode();
        *depth = 0;
    }
}
