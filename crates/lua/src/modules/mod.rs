//! The Lua modules, one file each, and the Rust primitives the prelude is built on.
//!
//! A module never touches the scheduler: it answers from the process's own state or goes
//! through the process's runtime `Context` (which yields commands for anything that waits).

pub(crate) mod ctx;
pub(crate) mod env;
pub(crate) mod errors;
pub(crate) mod funcs;
pub(crate) mod io;
pub(crate) mod json;
pub(crate) mod logger;
pub(crate) mod process;
pub(crate) mod registry;
pub(crate) mod time;

use std::os::raw::c_int;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use mlua::{ffi, Lua, Table, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind};

use crate::catalog::Catalog;
use crate::convert::Marks;
use crate::shard::current_preempt;

use self::errors::LuaError;

/// `R.cur(co)`: the Lua thread that runs from now on (for the preemption watchdog).
unsafe extern "C-unwind" fn rt_cur(l: *mut ffi::lua_State) -> c_int {
    let t = ffi::lua_tothread(l, 1);
    if let Some(p) = current_preempt() {
        p.set_thread(t);
    }
    0
}

/// `R.preempted()`: whether the hook suspended a coroutine (clears the flag).
unsafe extern "C-unwind" fn rt_preempted(l: *mut ffi::lua_State) -> c_int {
    let fired = current_preempt().map(|p| p.fired.swap(false, Ordering::Relaxed)).unwrap_or(false);
    ffi::lua_pushboolean(l, fired as c_int);
    1
}

/// `R.preempt_pending()`: the same, without clearing.
unsafe extern "C-unwind" fn rt_preempt_pending(l: *mut ffi::lua_State) -> c_int {
    let fired = current_preempt().map(|p| p.fired.load(Ordering::Relaxed)).unwrap_or(false);
    ffi::lua_pushboolean(l, fired as c_int);
    1
}

/// A `bad argument` error in Lua's own wording.
pub(crate) fn bad_arg(n: usize, f: &str, expected: &str, got: &LuaValue) -> mlua::Error {
    mlua::Error::runtime(format!("bad argument #{n} to '{f}' ({expected} expected, got {})", lua_type(got)))
}

pub(crate) fn lua_type(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        _ => "userdata",
    }
}

/// The message of an error a Rust function raised, without mlua's decoration.
pub(crate) fn plain_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => plain_message(cause),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::BadArgument { pos, name, cause, .. } => {
            format!("bad argument #{pos} to '{}' ({})", name.as_deref().unwrap_or("?"), plain_message(cause))
        }
        mlua::Error::FromLuaConversionError { from, to, .. } => format!("{to} expected, got {from}"),
        other => other.to_string(),
    }
}

/// `nil, err` as Lua values.
pub(crate) fn fail(lua: &Lua, e: Error) -> mlua::Result<(LuaValue, LuaValue)> {
    Ok((LuaValue::Nil, LuaValue::UserData(lua.create_userdata(LuaError::new(e))?)))
}

/// Install the Rust primitives into `r` and the Rust-built libraries into `shared`.
pub(crate) fn install(
    lua: &Lua,
    r: &Table,
    shared: &Table,
    marks: &Arc<Mutex<Marks>>,
    catalog: Weak<Catalog>,
    grants_io: bool,
) -> mlua::Result<()> {
    // SAFETY: plain C functions that only touch their own arguments and thread-locals.
    unsafe {
        r.raw_set("cur", lua.create_c_function(rt_cur)?)?;
        r.raw_set("preempted", lua.create_c_function(rt_preempted)?)?;
        r.raw_set("preempt_pending", lua.create_c_function(rt_preempt_pending)?)?;
        r.raw_set("send_fast", lua.create_c_function(crate::raw::send_fast)?)?;
    }
    r.raw_set(
        "error",
        lua.create_function(|lua, (kind, msg, retryable): (String, String, Option<bool>)| {
            let mut e = Error::new(ErrorKind::parse(&kind).unwrap_or(ErrorKind::Internal), msg);
            e.retryable = retryable;
            let mut le = LuaError::new(e);
            le.stack = errors::stack_of(lua);
            lua.create_userdata(le)
        })?,
    )?;
    r.raw_set(
        "is_error",
        lua.create_function(|_, e: mlua::AnyUserData| Ok(e.borrow::<LuaError>().is_ok()))?,
    )?;
    r.raw_set(
        "norm_error",
        lua.create_function(|lua, e: LuaValue| match &e {
            LuaValue::Error(err) => Ok(LuaValue::String(lua.create_string(plain_message(err))?)),
            other => Ok(other.clone()),
        })?,
    )?;
    for (name, slot) in [("set_channel_mt", 0usize), ("set_payload_mt", 1), ("set_message_mt", 2)] {
        let m = marks.clone();
        r.raw_set(
            name,
            lua.create_function(move |_, t: Table| {
                let p = t.to_pointer() as usize;
                let mut g = m.lock();
                match slot {
                    0 => g.channel = p,
                    1 => g.payload = p,
                    _ => g.message = p,
                }
                Ok(())
            })?,
        )?;
    }

    let base: Table = shared.raw_get("_base")?;
    base.raw_set("print", logger::print_function(lua)?)?;
    shared.raw_set("process", process::library(lua, r, catalog.clone())?)?;
    shared.raw_set("errors", errors::library(lua, marks.clone())?)?;
    shared.raw_set("time", time::library(lua, r)?)?;
    shared.raw_set("json", json::library(lua)?)?;
    shared.raw_set("logger", logger::library(lua)?)?;
    shared.raw_set("env", env::library(lua, catalog.clone())?)?;
    shared.raw_set("ctx", ctx::library(lua)?)?;
    shared.raw_set("funcs", funcs::library(lua)?)?;
    shared.raw_set("registry", registry::library(lua, catalog.clone())?)?;
    shared.raw_set("io", io::library(lua, grants_io)?)?;
    r.raw_set("load_library", funcs::load_library_function(lua, catalog)?)?;
    Ok(())
}
