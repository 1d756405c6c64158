//! `env.get(name)`: `env.variable` entries the project declares (by entry ID or variable
//! name), then the OS environment; `nil, err` (NotFound) when neither has it.

use std::sync::Weak;

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::Error;

use super::{bad_arg, fail};
use crate::catalog::Catalog;

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(move |lua, name: LuaValue| {
            let LuaValue::String(name) = &name else { return Err(bad_arg(1, "get", "string", &name)) };
            let name = name.to_str()?.to_string();
            let declared = catalog.upgrade().and_then(|c| c.env.read().get(&name).cloned());
            match declared.or_else(|| std::env::var(&name).ok()) {
                Some(v) => Ok((LuaValue::String(lua.create_string(v)?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("environment variable '{}' is not set", wippy_runtime::Echo(&name)))),
            }
        })?,
    )?;
    Ok(t)
}
