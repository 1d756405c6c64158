//! `registry`: `get(id)`, `find{kind = ..., ["meta.key"] = value}`, `version()` over the
//! current version; `snapshot()` (a version that never changes under the reader:
//! `:version()`, `:get`, `:find`); `changes()` → a changeset (`:create(entry)`,
//! `:update(entry)`, `:delete(id)`, `:apply()` → new version or `nil, err`, all or
//! nothing); `apply_version(v)` rolls back to version `v`'s entries. Entries are
//! `{id, kind, meta, data}`. Writes are checked as `registry.write` on the entry ID.

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{Error, Value};

use super::{bad_arg, fail};
use crate::catalog::{Catalog, RegistryChange, RegistryItem, RegistryView};
use crate::convert::{from_value, to_value, Marks};
use crate::current;

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

fn get(lua: &Lua, view: &RegistryView, id: &LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    let LuaValue::String(id) = id else { return Err(bad_arg(1, "get", "string", id)) };
    let id = id.to_str()?.to_string();
    match view.items.iter().find(|i| i.id == id) {
        Some(it) => Ok((LuaValue::Table(item_table(lua, it)?), LuaValue::Nil)),
        None => fail(lua, Error::not_found(format!("entry not found: {id}"))),
    }
}

fn find(lua: &Lua, view: &RegistryView, q: &LuaValue) -> mlua::Result<Table> {
    let LuaValue::Table(q) = q else { return Err(bad_arg(1, "find", "table", q)) };
    let mut wants = Vec::new();
    for pair in q.clone().pairs::<String, LuaValue>() {
        let (k, v) = pair?;
        let v = to_value(&v, &Marks::default(), &k).map_err(mlua::Error::runtime)?;
        wants.push((k, v));
    }
    let out = lua.create_table()?;
    let mut n = 0;
    for it in &view.items {
        if wants.iter().all(|(k, v)| matches(it, k, v)) {
            n += 1;
            out.raw_set(n, item_table(lua, it)?)?;
        }
    }
    Ok(out)
}

struct Snapshot(Arc<RegistryView>);

impl UserData for Snapshot {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("version", |_, s, ()| Ok(s.0.version as i64));
        m.add_method("get", |lua, s, id: LuaValue| get(lua, &s.0, &id));
        m.add_method("find", |lua, s, q: LuaValue| find(lua, &s.0, &q));
    }
}

struct ChangeSet {
    catalog: Weak<Catalog>,
    changes: Vec<RegistryChange>,
}

/// `{id, kind, meta?, data?}` from Lua.
fn item_from(v: &LuaValue, fname: &str) -> mlua::Result<Result<RegistryItem, Error>> {
    let LuaValue::Table(t) = v else { return Err(bad_arg(1, fname, "table", v)) };
    let id: Option<String> = t.raw_get("id")?;
    let kind: Option<String> = t.raw_get("kind")?;
    let (Some(id), Some(kind)) = (id, kind) else {
        return Ok(Err(Error::invalid(format!("{fname}: an entry needs id and kind"))));
    };
    let conv = |key: &str| -> mlua::Result<Result<Value, Error>> {
        let v: LuaValue = t.raw_get(key)?;
        Ok(match v {
            LuaValue::Nil => Ok(Value::table(wippy_runtime::Table::new())),
            other => to_value(&other, &Marks::default(), key).map_err(Error::invalid),
        })
    };
    let meta = match conv("meta")? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let data = match conv("data")? {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(RegistryItem { id, kind, meta, data }))
}

fn check_write(id: &str) -> mlua::Result<Result<(), Error>> {
    current::with(|cx, _| Ok(cx.allow("registry.write", id)))
}

/// A writer on a host with a module list (SPEC §7.3) may not widen it through the
/// registry: no entry binding a module the host forbids, and no host or service (which
/// would run code somewhere the list does not reach).
fn check_entry(item: &RegistryItem) -> mlua::Result<Result<(), Error>> {
    current::with(|cx, _| {
        let host = cx.host();
        let Some(allowed) = &host.config().security.modules else { return Ok(Ok(())) };
        let deny = |what: String| Ok(Err(wippy_runtime::denied("registry.write", &format!("{} ({what})", wippy_runtime::Echo(&item.id)))));
        if matches!(item.kind.as_str(), "process.host" | "terminal.host" | "process.service") {
            return deny(format!("a {} entry, written from host {}, whose module list it would escape", item.kind, host.name()));
        }
        if let Some(Value::Table(t)) = item.data.as_table().and_then(|d| d.get(&Value::str("modules"))) {
            for m in t.array.iter() {
                let name = m.as_str().unwrap_or_default();
                if !allowed.iter().any(|a| a == name) {
                    return deny(format!("module {name}, which host {} does not allow", host.name()));
                }
            }
        }
        Ok(Ok(()))
    })
}

impl UserData for ChangeSet {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        for (name, create) in [("create", true), ("update", false)] {
            m.add_method_mut(name, move |lua, cs, entry: LuaValue| {
                let item = match item_from(&entry, name)? {
                    Ok(i) => i,
                    Err(e) => return fail(lua, e),
                };
                if let Err(e) = check_write(&item.id)? {
                    return fail(lua, e);
                }
                if let Err(e) = check_entry(&item)? {
                    return fail(lua, e);
                }
                cs.changes.push(if create { RegistryChange::Create(item) } else { RegistryChange::Update(item) });
                Ok((LuaValue::Boolean(true), LuaValue::Nil))
            });
        }
        m.add_method_mut("delete", |lua, cs, id: String| {
            if let Err(e) = check_write(&id)? {
                return fail(lua, e);
            }
            cs.changes.push(RegistryChange::Delete(id));
            Ok((LuaValue::Boolean(true), LuaValue::Nil))
        });
        m.add_method_mut("apply", |lua, cs, ()| {
            let Some(c) = cs.catalog.upgrade() else { return fail(lua, Error::unavailable("the registry is gone")) };
            let Some(w) = c.writer.read().clone() else {
                return fail(lua, Error::unavailable("this node's registry is read-only"));
            };
            match w.apply(std::mem::take(&mut cs.changes)) {
                Ok(v) => Ok((LuaValue::Integer(v as i64), LuaValue::Nil)),
                Err(e) => fail(lua, e),
            }
        });
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let view = |c: &Weak<Catalog>| c.upgrade().map(|c| c.registry.read().clone()).unwrap_or_default();
    let c = catalog.clone();
    t.raw_set("get", lua.create_function(move |lua, id: LuaValue| get(lua, &view(&c), &id))?)?;
    let c = catalog.clone();
    t.raw_set("find", lua.create_function(move |lua, q: LuaValue| find(lua, &view(&c), &q))?)?;
    let c = catalog.clone();
    t.raw_set("version", lua.create_function(move |_, ()| Ok(view(&c).version as i64))?)?;
    let c = catalog.clone();
    t.raw_set("snapshot", lua.create_function(move |_, ()| Ok(Snapshot(view(&c))))?)?;
    let c = catalog.clone();
    t.raw_set("changes", lua.create_function(move |_, ()| Ok(ChangeSet { catalog: c.clone(), changes: Vec::new() }))?)?;
    t.raw_set(
        "apply_version",
        lua.create_function(move |lua, v: i64| {
            if let Err(e) = check_write(&format!("version:{v}"))? {
                return fail(lua, e);
            }
            let Some(c) = catalog.upgrade() else { return fail(lua, Error::unavailable("the registry is gone")) };
            let Some(w) = c.writer.read().clone() else {
                return fail(lua, Error::unavailable("this node's registry is read-only"));
            };
            match w.apply_version(v.max(0) as u64) {
                Ok(n) => Ok((LuaValue::Integer(n as i64), LuaValue::Nil)),
                Err(e) => fail(lua, e),
            }
        })?,
    )?;
    Ok(t)
}
