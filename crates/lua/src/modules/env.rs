//! `env` (SPEC §12.11): `get(name)`, `set(name, value)`, `get_all()` over the project's
//! `env.variable` entries and their storages (crate::envstore). A name is looked up as a
//! variable name, then as an entry name in the caller's namespace, then as an entry ID.
//! Nothing else of the OS environment is readable: a process reads only what the project
//! declared (SECURITY.md). Checked as `env.get` / `env.set` on the name.

use std::sync::Weak;

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::{Echo, Error};

use super::{fail, or_fail};
use crate::catalog::Catalog;

fn name_arg(lua: &Lua, v: &LuaValue, f: &str) -> mlua::Result<Result<String, (LuaValue, LuaValue)>> {
    match v {
        LuaValue::String(s) if !s.as_bytes().is_empty() => Ok(Ok(s.to_str()?.to_string())),
        LuaValue::String(_) => Ok(Err(fail(lua, Error::invalid(format!("env.{f}: empty variable name")))?)),
        other => Err(super::bad_arg(1, f, "string", other)),
    }
}

fn namespace() -> String {
    crate::current::state(|st| st.entry.id.split_once(':').map(|(ns, _)| ns.to_string()).unwrap_or_default()).unwrap_or_default()
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let c = catalog.clone();
    t.raw_set(
        "get",
        lua.create_function(move |lua, name: LuaValue| {
            let name = match name_arg(lua, &name, "get")? {
                Ok(n) => n,
                Err(r) => return Ok(r),
            };
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("env.get", &name)))? {
                return fail(lua, e);
            }
            let Some(cat) = c.upgrade() else { return fail(lua, Error::unavailable("the runtime is gone")) };
            let config = cat.env_config.read().clone();
            let value = match config.find(&name, &namespace()) {
                Some(var) => or_fail!(lua, var.value()),
                None => cat.env.read().get(&name).cloned(),
            };
            match value {
                Some(v) => Ok((LuaValue::String(lua.create_string(v)?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("environment variable '{}' is not set", Echo(&name)))),
            }
        })?,
    )?;
    let c = catalog.clone();
    t.raw_set(
        "set",
        lua.create_function(move |lua, (name, value): (LuaValue, LuaValue)| {
            let name = match name_arg(lua, &name, "set")? {
                Ok(n) => n,
                Err(r) => return Ok(r),
            };
            let value = match &value {
                LuaValue::String(s) => s.to_str()?.to_string(),
                LuaValue::Integer(i) => i.to_string(),
                LuaValue::Number(n) => n.to_string(),
                LuaValue::Boolean(b) => b.to_string(),
                other => return Err(super::bad_arg(2, "set", "string", other)),
            };
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("env.set", &name)))? {
                return fail(lua, e);
            }
            let Some(cat) = c.upgrade() else { return fail(lua, Error::unavailable("the runtime is gone")) };
            let config = cat.env_config.read().clone();
            let Some(var) = config.find(&name, &namespace()) else {
                return fail(lua, Error::not_found(format!("environment variable '{}' is not declared", Echo(&name))));
            };
            if var.readonly {
                return fail(lua, Error::invalid(format!("environment variable '{}' is read-only", Echo(&name))));
            }
            let Some(storage) = &var.storage else {
                return fail(lua, Error::invalid(format!("environment variable '{}' has no storage", Echo(&name))));
            };
            match storage.set(&var.variable, &value) {
                Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => fail(lua, e),
            }
        })?,
    )?;
    t.raw_set(
        "get_all",
        lua.create_function(move |lua, ()| {
            let out = lua.create_table()?;
            let Some(cat) = catalog.upgrade() else { return Ok(out) };
            let config = cat.env_config.read().clone();
            for var in &config.variables {
                let allowed = crate::current::with(|cx, _| Ok(cx.can("env.get", &var.variable))).unwrap_or(false);
                if !allowed {
                    continue;
                }
                if let Ok(Some(v)) = var.value() {
                    out.raw_set(var.variable.as_str(), v)?;
                }
            }
            Ok(out)
        })?,
    )?;
    Ok(t)
}
