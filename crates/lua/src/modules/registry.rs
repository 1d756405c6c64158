//! `registry` (read-only): `get(id)` and `find{kind = ..., ["meta.key"] = value}` over the
//! entries the node was given, as `{id, kind, meta, data}` tables.

use std::sync::Weak;

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::{Error, Value};

use super::{bad_arg, fail};
use crate::catalog::{Catalog, RegistryItem};
use crate::convert::{from_value, to_value, Marks};

fn item_table(lua: &Lua, it: &RegistryItem) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("id", it.id.as_str())?;
    t.raw_set("kind", it.kind.as_str())?;
    t.raw_set("meta", from_value(lua, &it.meta)?)?;
    t.raw_set("data", from_value(lua, &it.data)?)?;
    Ok(t)
}

fn matches(it: &RegistryItem, key: &str, want: &Value) -> bool {
    match key {
        "kind" => want.as_bytes() == Some(it.kind.as_bytes()),
        "id" => want.as_bytes() == Some(it.id.as_bytes()),
        "namespace" => want.as_str().is_some_and(|ns| it.id.split_once(':').map(|(n, _)| n) == Some(ns)),
        k => match k.strip_prefix("meta.") {
            Some(path) => {
                let mut cur = &it.meta;
                for part in path.split('.') {
                    match cur.as_table().and_then(|t| t.get_str(part)) {
                        Some(v) => cur = v,
                        None => return false,
                    }
                }
                cur == want
            }
            None => false,
        },
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let c = catalog.clone();
    t.raw_set(
        "get",
        lua.create_function(move |lua, id: LuaValue| {
            let LuaValue::String(id) = &id else { return Err(bad_arg(1, "get", "string", &id)) };
            let id = id.to_str()?.to_string();
            let found = c.upgrade().and_then(|c| c.registry.read().iter().find(|i| i.id == id).cloned());
            match found {
                Some(it) => Ok((LuaValue::Table(item_table(lua, &it)?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("entry not found: {id}"))),
            }
        })?,
    )?;
    t.raw_set(
        "find",
        lua.create_function(move |lua, q: LuaValue| {
            let LuaValue::Table(q) = &q else { return Err(bad_arg(1, "find", "table", &q)) };
            let mut wants = Vec::new();
            for pair in q.clone().pairs::<String, LuaValue>() {
                let (k, v) = pair?;
                let v = to_value(&v, &Marks::default(), &k).map_err(mlua::Error::runtime)?;
                wants.push((k, v));
            }
            let out = lua.create_table()?;
            if let Some(c) = catalog.upgrade() {
                let mut n = 0;
                for it in c.registry.read().iter() {
                    if wants.iter().all(|(k, v)| matches(it, k, v)) {
                        n += 1;
                        out.raw_set(n, item_table(lua, it)?)?;
                    }
                }
            }
            Ok(out)
        })?,
    )?;
    Ok(t)
}
