//! `env.get(name)`: the `env.variable` entries the project declares (by entry ID or
//! variable name; one whose storage is `env.storage.os` reads the OS environment at load).
//! Nothing else of the OS environment is readable: a process reads only what the project
//! declared (SECURITY.md). Checked as `env.get` on the name; `nil, err` (NotFound) when no
//! variable of that name is declared or set.

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
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("env.get", &name)))? {
                return fail(lua, e);
            }
            let declared = catalog.upgrade().and_then(|c| c.env.read().get(&name).cloned());
            match declared {
                Some(v) => Ok((LuaValue::String(lua.create_string(v)?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("environment variable '{}' is not set", wippy_runtime::Echo(&name)))),
            }
        })?,
    )?;
    Ok(t)
}
