//! `ctx`: the context values a process was spawned with (`with_context`), read-only.
//! `get(key)` -> value, or `nil, err` (NotFound for a missing key, Invalid for `""`).

use mlua::{Lua, Table, Value as LuaValue};

use wippy_runtime::Error;

use crate::convert::from_value;
use crate::current;

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(|lua, key: String| {
            if key.is_empty() {
                return super::fail(lua, Error::invalid("ctx.get: empty key"));
            }
            if key == super::io::ARGS_KEY {
                return super::fail(lua, Error::not_found(format!("key not found: {key}")));
            }
            // a missing key is nil + NotFound, never a plain nil (SPEC §12.10)
            match current::with(|cx, _| Ok(cx.context_values().and_then(|c| c.get_str(&key)).cloned())) {
                Ok(Some(v)) => Ok((from_value(lua, &v)?, LuaValue::Nil)),
                Ok(None) => super::fail(lua, Error::not_found(format!("key not found: {}", wippy_runtime::Echo(&key)))),
                Err(_) => super::fail(lua, Error::internal("ctx.get: no context (not called from a process)")),
            }
        })?,
    )?;
    t.raw_set(
        "all",
        lua.create_function(|lua, ()| {
            current::with(|cx, _| {
                let out = lua.create_table()?;
                if let Some(c) = cx.context_values() {
                    for (k, v) in &c.map {
                        if k.as_str() == Some(super::io::ARGS_KEY) {
                            continue;
                        }
                        out.raw_set(from_value(lua, k)?, from_value(lua, v)?)?;
                    }
                }
                Ok(out)
            })
        })?,
    )?;
    Ok(t)
}
