//! `ctx`: the context values a process was spawned with (`with_context`), read-only.

use mlua::{Lua, Table, Value as LuaValue};

use crate::convert::from_value;
use crate::current;

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(|lua, key: String| {
            current::with(|cx, _| match cx.context_values().and_then(|c| c.get_str(&key)) {
                Some(v) => from_value(lua, v),
                None => Ok(LuaValue::Nil),
            })
        })?,
    )?;
    t.raw_set(
        "all",
        lua.create_function(|lua, ()| {
            current::with(|cx, _| {
                let out = lua.create_table()?;
                if let Some(c) = cx.context_values() {
                    for (k, v) in &c.map {
                        out.raw_set(from_value(lua, k)?, from_value(lua, v)?)?;
                    }
                }
                Ok(out)
            })
        })?,
    )?;
    Ok(t)
}
