//! The Lua modules, one file each, and the Rust primitives the prelude is built on.
//!
//! A module never touches the scheduler: it answers from the process's own state or goes
//! through the process's runtime `Context` (which yields commands for anything that waits).

pub(crate) mod base64;
pub(crate) mod compress;
pub(crate) mod crypto;
pub(crate) mod ctx;
pub(crate) mod env;
pub(crate) mod errors;
pub(crate) mod events;
pub mod exec;
pub(crate) mod fs;
pub(crate) mod funcs;
pub(crate) mod hash;
pub(crate) mod http;
pub(crate) mod http_client;
pub(crate) mod io;
pub(crate) mod json;
pub(crate) mod logger;
pub mod metrics;
pub(crate) mod process;
pub mod queue;
pub(crate) mod templates;
pub(crate) mod registry;
pub(crate) mod security;
pub(crate) mod sql;
pub(crate) mod store;
pub(crate) mod system;
pub(crate) mod text;
pub(crate) mod time;
pub(crate) mod uuid;
pub(crate) mod yaml;

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind};

use crate::catalog::Catalog;
use crate::convert::Marks;

use self::errors::LuaError;


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

/// The message of an error a Rust function raised, without mlua's decoration, in Lua's own
/// wording (`bad argument #2 to 'wrap' (string expected, got table)`).
pub(crate) fn plain_message(e: &mlua::Error) -> String {
    message_in(e, None)
}

fn message_in(e: &mlua::Error, traceback: Option<&str>) -> String {
    match e {
        mlua::Error::CallbackError { cause, traceback } => message_in(cause, Some(traceback)),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::BadArgument { to, pos, cause, .. } => {
            let name = to.clone().or_else(|| traceback.and_then(called_name)).unwrap_or_else(|| "?".into());
            format!("bad argument #{pos} to '{name}' ({})", message_in(cause, None))
        }
        mlua::Error::FromLuaConversionError { from, to, .. } => format!("{} expected, got {}", lua_type_name(to), lua_type_name(from)),
        other => other.to_string(),
    }
}

/// The name of the function a traceback's first `[C]` frame calls (`wrap` in
/// "[C]: in function 'errors.wrap'").
fn called_name(traceback: &str) -> Option<String> {
    let line = traceback.lines().find(|l| l.contains("[C]: in "))?;
    let start = line.find('\'')? + 1;
    let end = start + line[start..].find('\'')?;
    let full = &line[start..end];
    Some(full.rsplit(['.', ':']).next().unwrap_or(full).to_string())
}

/// A Rust type name as Lua calls the type.
fn lua_type_name(rust: &str) -> &str {
    match rust {
        "String" | "BorrowedStr" | "LuaString" | "BString" | "str" | "&str" => "string",
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" | "f32" | "f64" | "integer" | "Integer" | "Number" => "number",
        "Table" => "table",
        "bool" => "boolean",
        "Function" => "function",
        "Thread" => "thread",
        "AnyUserData" => "userdata",
        "Duration" | "wippy_lua::modules::time::Duration" => "duration",
        "Time" | "wippy_lua::modules::time::Time" => "time",
        other => other,
    }
}

/// An `Invalid` error that retrying cannot mend: a module's answer to a bad argument.
pub(crate) fn invalid(m: impl Into<String>) -> Error {
    Error::invalid(m).with_retryable(false)
}

/// The ID a module's lookup names (`sql.get(id)`, `queue.publish(id, ...)`): a non-empty
/// string, else "`what` ID is empty".
pub(crate) fn resource_id(v: &LuaValue, what: &str) -> Result<String, Error> {
    match v {
        LuaValue::String(s) if !s.as_bytes().is_empty() => Ok(s.to_string_lossy().to_string()),
        _ => Err(invalid(format!("{what} ID is empty"))),
    }
}

/// The value of `$result` (a `Result<T, Error>`), or return `nil, err` from the Lua
/// function around it (see [`fail`]).
macro_rules! or_fail {
    ($lua:expr, $result:expr) => {
        match $result {
            Ok(v) => v,
            Err(e) => return $crate::modules::fail($lua, e),
        }
    };
}
pub(crate) use or_fail;

/// `nil, err` as Lua values.
pub(crate) fn fail(lua: &Lua, mut e: Error) -> mlua::Result<(LuaValue, LuaValue)> {
    // a module's error says whether it is worth retrying: false unless it says so (SPEC §12.1.3)
    e.retryable.get_or_insert(false);
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
    crate::vm::install_primitives(lua, r)?;
    r.raw_set(
        "error",
        lua.create_function(|lua, (kind, msg, retryable): (String, String, Option<bool>)| {
            let mut e = Error::new(ErrorKind::parse(&kind).unwrap_or(ErrorKind::Internal), msg);
            // a module's error says whether it is worth retrying: false unless it says so
            // (SPEC §12.1.3)
            e.retryable = Some(retryable.unwrap_or(false));
            lua.create_userdata(LuaError::here(lua, e))
        })?,
    )?;
    // errors.wrap with the kind replaced, and not retryable (Future:error(): SPEC §12.4.3;
    // Wippy's future page: "a non-retryable INTERNAL wrapper")
    r.raw_set(
        "wrap_kind",
        lua.create_function(|lua, (e, ctx, kind): (LuaValue, String, String)| {
            let mut w = errors::wrap(lua, &e, None, ctx);
            w.error.kind = ErrorKind::parse(&kind).unwrap_or(ErrorKind::Internal);
            w.error.custom_kind = None;
            w.error.retryable = Some(false);
            lua.create_userdata(w)
        })?,
    )?;
    // whether the running process may do `action` on `resource` (meta.pid = itself)
    r.raw_set("can", lua.create_function(|_, (action, resource): (String, String)| crate::current::with(|cx, _| Ok(cx.can(&action, &resource))))?)?;
    r.raw_set(
        "is_error",
        lua.create_function(|_, v: LuaValue| Ok(matches!(&v, LuaValue::UserData(ud) if ud.borrow::<LuaError>().is_ok())))?,
    )?;
    // payload transcoding (SPEC §12.8): value, or nil + the reason
    r.raw_set(
        "transcode",
        lua.create_function(|lua, (v, from, to): (LuaValue, String, String)| match json::transcode(lua, &v, &from, &to) {
            Ok(v) => Ok((v, LuaValue::Nil)),
            Err(m) => Ok((LuaValue::Nil, LuaValue::String(lua.create_string(m)?))),
        })?,
    )?;
    r.raw_set("memfail", lua.create_function(|_, ()| crate::current::state(|st| st.memfail = true))?)?;
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
    shared.raw_set("security", security::library(lua, catalog.clone())?)?;
    shared.raw_set("uuid", uuid::library(lua)?)?;
    // Libraries built into a VM when one of its processes first binds them (the prelude's
    // LAZY): a project uses few of them, and every VM (an isolated process owns one) carried
    // them all. Their nested tables are made read-only as the eager ones' are.
    type Build = fn(&Lua, Weak<Catalog>) -> mlua::Result<Table>;
    const LAZY_LIBS: &[(&str, Build)] = &[
        ("base64", |lua, _| base64::library(lua)),
        ("hash", |lua, _| hash::library(lua)),
        ("crypto", |lua, _| crypto::library(lua)),
        ("compress", |lua, _| compress::library(lua)),
        ("yaml", |lua, _| yaml::library(lua)),
        ("fs", fs::library),
        ("store", store::library),
        ("text", |lua, _| text::library(lua)),
        ("sql", sql::library),
        ("queue", queue::library),
        ("templates", templates::library),
    ];
    r.raw_set("lazy_libs", lua.create_sequence_from(LAZY_LIBS.iter().map(|(name, _)| *name))?)?;
    let (lazy_shared, lazy_catalog) = (shared.clone(), catalog.clone());
    r.raw_set(
        "build_lib",
        lua.create_function(move |lua, name: String| {
            let Some((_, build)) = LAZY_LIBS.iter().find(|(n, _)| *n == name) else {
                return Err(mlua::Error::runtime(format!("no lazy library {name}")));
            };
            let lib = build(lua, lazy_catalog.clone())?;
            crate::vm::sandbox::lock_nested(lua, &lib)?;
            lazy_shared.raw_set(name, lib)
        })?,
    )?;
    r.raw_set("sql_builder", sql::builder_loader(lua)?)?;
    // Lua written parts of libraries, compiled on a VM's first use of them (the prelude's
    // LAZY passes what each needs)
    r.raw_set(
        "load_lazy",
        lua.create_function(|lua, (name, deps): (String, Table)| {
            let (src, chunk) = match name.as_str() {
                "contract" => (include_str!("../lua/contract.lua"), "@wippy/contract.lua"),
                "exec" => (include_str!("../lua/exec.lua"), "@wippy/exec.lua"),
                other => return Err(mlua::Error::runtime(format!("no lazy library {other}"))),
            };
            lua.load(src).set_name(chunk).call::<()>(deps)
        })?,
    )?;
    // exec: written in the prelude over R.exec_* (its waits are commands)
    shared.raw_set("exec", lua.create_table()?)?;
    exec::internal(lua, r, catalog.clone())?;
    // contract: written in the prelude over funcs, reading the registry through R
    shared.raw_set("contract", lua.create_table()?)?;
    registry::internal(lua, r, catalog.clone())?;
    shared.raw_set("metrics", metrics::library(lua)?)?;
    shared.raw_set("system", system::library(lua, catalog.clone())?)?;
    shared.raw_set("events", events::library(lua, r)?)?;
    shared.raw_set("http", http::library(lua, r)?)?;
    shared.raw_set("http_client", http_client::library(lua, r)?)?;
    r.raw_set("load_library", funcs::load_library_function(lua, catalog)?)?;
    Ok(())
}
