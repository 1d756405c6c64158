//! `registry` (SPEC §6.4, §12.6): `get(id)`, `find(criteria)`, `parse_id`, versions
//! (`current_version()`, `versions()`, `history()`, `snapshot_at(n)`: Version objects with
//! `id`, `previous`, `next`, `string`), snapshots (a version that never changes under the
//! reader: `entries`, `get`, `namespace`, `find`, `version`, `changes`), changesets
//! (`create`/`update`/`delete` return the changeset, `ops()`, `apply()` → the new Version or
//! `nil, err`, all or nothing), `build_delta`, and `apply_version(v)`, which makes an
//! earlier version's entries current again. Entries are `{id, kind, meta, data}`. Writes are
//! checked as `registry.write` on the entry ID; version 0 is the project as loaded.

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{Error, Value};

use super::{bad_arg, fail, or_fail};
use wippy_registry::{Entry, Snapshot as View};

use crate::catalog::{Catalog, RegistryChange, RegistryItem};
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

/// An entry as Lua sees it: `{id, kind, meta, data}`, with `data.source` the source's name.
fn entry_table(lua: &Lua, e: &Entry) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("id", e.id.as_str())?;
    t.raw_set("kind", e.kind.as_str())?;
    let mut data = e.fields.clone();
    if let Some(src) = &e.source {
        data.insert("source".into(), serde_json::Value::String(src.name.clone()));
    }
    t.raw_set("meta", from_value(lua, &json(serde_json::Value::Object(e.meta.clone())))?)?;
    t.raw_set("data", from_value(lua, &json(serde_json::Value::Object(data)))?)?;
    Ok(t)
}

fn json(v: serde_json::Value) -> Value {
    wippy_http::json::from_json(&v)
}

/// `value` against a glob with at most one `*`.
fn glob(pattern: &str, value: &str) -> bool {
    wippy_runtime::events::glob_match(pattern, value)
}

fn meta_at(e: &Entry, path: &str) -> Option<Value> {
    let mut parts = path.split('.');
    let mut cur = e.meta.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(wippy_http::json::from_json(cur))
}

/// One criterion of `find` (SPEC §12.6.1; a bare `kind`/`ns`/`name`/`id` means `.kind`...,
/// any other bare key `meta.K`: ours).
fn matches(it: &Entry, key: &str, want: &Value) -> bool {
    let own = |field: &str| -> Option<&str> {
        match field {
            "kind" => Some(it.kind.as_str()),
            "ns" | "namespace" => Some(it.id.namespace()),
            "name" => Some(it.id.name()),
            "id" => Some(it.id.as_str()),
            _ => None,
        }
    };
    let field = key.strip_prefix('.').unwrap_or(key);
    if let Some(v) = own(field) {
        return want.as_str().is_some_and(|p| glob(p, v));
    }
    let (op, rest) = match key.chars().next() {
        Some(c @ ('~' | '*' | '^' | '$')) => (Some(c), &key[1..]),
        _ => (None, key),
    };
    let path = rest.strip_prefix("meta.").unwrap_or(rest);
    let Some(have) = meta_at(it, path) else { return false };
    match op {
        None => match (&have, want) {
            // a list of strings as the value: meta[K] holds all of them
            (Value::Table(h), Value::Table(w)) if !w.array.is_empty() && w.map.is_empty() && w.array.iter().all(|x| x.as_str().is_some()) => {
                w.array.iter().all(|x| h.array.iter().any(|y| y == x))
            }
            _ => &have == want,
        },
        Some(op) => {
            let Some(pat) = want.as_str() else { return false };
            let test = |s: &str| match op {
                '~' => regex_lite::Regex::new(pat).is_ok_and(|r| r.is_match(s)),
                '*' => s.contains(pat),
                '^' => s.starts_with(pat),
                _ => s.ends_with(pat),
            };
            match &have {
                Value::Table(t) if op == '*' => t.array.iter().any(|x| x.as_str().is_some_and(test)),
                other => other.as_str().is_some_and(test),
            }
        }
    }
}

fn get(lua: &Lua, view: &View, id: &LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    let LuaValue::String(id) = id else { return Err(bad_arg(1, "get", "string", id)) };
    let id = id.to_str()?.to_string();
    if !may_read(&id) {
        return fail(lua, wippy_runtime::denied("registry.get", &id));
    }
    match view.get_str(&id) {
        Some(e) => Ok((LuaValue::Table(entry_table(lua, e)?), LuaValue::Nil)),
        None => fail(lua, Error::not_found(format!("entry not found: {id}"))),
    }
}

fn find(lua: &Lua, view: &View, q: &LuaValue) -> mlua::Result<Table> {
    let LuaValue::Table(q) = q else { return Err(bad_arg(1, "find", "table", q)) };
    let mut wants = Vec::new();
    for pair in q.clone().pairs::<String, LuaValue>() {
        let (k, v) = pair?;
        // keys under a `meta = {...}` sub-table are folded into the top level
        if let (true, LuaValue::Table(sub)) = (k == "meta", &v) {
            for pair in sub.clone().pairs::<String, LuaValue>() {
                let (mk, mv) = pair?;
                let mv = to_value(&mv, &Marks::default(), &mk).map_err(mlua::Error::runtime)?;
                wants.push((format!("meta.{mk}"), mv));
            }
            continue;
        }
        let v = to_value(&v, &Marks::default(), &k).map_err(mlua::Error::runtime)?;
        wants.push((k, v));
    }
    let out = lua.create_table()?;
    let mut n = 0;
    for it in view.entries() {
        if wants.iter().all(|(k, v)| matches(it, k, v)) && may_read(it.id.as_str()) {
            n += 1;
            out.raw_set(n, entry_table(lua, it)?)?;
        }
    }
    Ok(out)
}

/// A registry version as Lua holds it.
#[derive(Clone)]
struct Version {
    id: u64,
    catalog: Weak<Catalog>,
}

impl Version {
    fn view(&self) -> Option<Arc<View>> {
        self.catalog.upgrade()?.registry.read().snapshot_at(self.id)
    }
    fn near(&self, id: u64) -> Option<Version> {
        let v = Version { id, catalog: self.catalog.clone() };
        v.view().map(|_| v)
    }
}

impl UserData for Version {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("id", |_, v, ()| Ok(v.id as i64));
        m.add_method("previous", |_, v, ()| Ok(v.id.checked_sub(1).and_then(|p| v.near(p))));
        m.add_method("next", |_, v, ()| Ok(v.near(v.id + 1)));
        m.add_method("string", |_, v, ()| Ok(format!("registry.Version{{id={}}}", v.id)));
        m.add_meta_method(mlua::MetaMethod::ToString, |_, v, ()| Ok(format!("registry.Version{{id={}}}", v.id)));
        m.add_meta_method(mlua::MetaMethod::Eq, |_, a, b: mlua::AnyUserData| Ok(b.borrow::<Version>().map(|b| b.id == a.id).unwrap_or(false)));
    }
}

struct Snapshot {
    view: Arc<View>,
    catalog: Weak<Catalog>,
}

fn entries_table<'a>(lua: &Lua, items: impl Iterator<Item = &'a Arc<Entry>>) -> mlua::Result<Table> {
    let out = lua.create_table()?;
    for (i, it) in items.enumerate() {
        out.raw_set(i + 1, entry_table(lua, it)?)?;
    }
    Ok(out)
}

impl UserData for Snapshot {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("version", |_, s, ()| Ok(Version { id: s.view.version, catalog: s.catalog.clone() }));
        m.add_method("get", |lua, s, id: LuaValue| get(lua, &s.view, &id));
        m.add_method("find", |lua, s, q: LuaValue| find(lua, &s.view, &q));
        m.add_method("entries", |lua, s, ()| Ok((entries_table(lua, readable(&s.view))?, LuaValue::Nil)));
        m.add_method("namespace", |lua, s, ns: String| {
            entries_table(lua, readable(&s.view).filter(|it| it.id.namespace() == ns))
        });
        m.add_method("changes", |_, s, ()| Ok(ChangeSet { catalog: s.catalog.clone(), changes: Vec::new() }));
        m.add_meta_method(mlua::MetaMethod::ToString, |_, s, ()| Ok(format!("registry.Snapshot{{version={}}}", s.view.version)));
    }
}

/// The entries of `view` the running process may read (`registry.get` on each ID).
fn readable(view: &View) -> impl Iterator<Item = &Arc<Entry>> + '_ {
    view.entries().filter(|it| may_read(it.id.as_str()))
}

fn may_read(id: &str) -> bool {
    current::with(|cx, _| Ok(cx.can("registry.get", id))).unwrap_or(true)
}

/// The history object: `versions()`, `get_version(n)`, `snapshot_at(v)`.
struct History(Weak<Catalog>);

fn versions_table(lua: &Lua, catalog: &Weak<Catalog>) -> mlua::Result<Table> {
    let out = lua.create_table()?;
    if let Some(c) = catalog.upgrade() {
        for (i, id) in c.registry.read().versions().into_iter().enumerate() {
            out.raw_set(i + 1, Version { id, catalog: catalog.clone() })?;
        }
    }
    Ok(out)
}

/// A version argument: a Version or its integer id.
fn version_arg(v: &LuaValue) -> Option<i64> {
    match v {
        LuaValue::Integer(i) => Some(*i),
        LuaValue::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        LuaValue::UserData(ud) => ud.borrow::<Version>().ok().map(|v| v.id as i64),
        _ => None,
    }
}

fn snapshot_at(lua: &Lua, catalog: &Weak<Catalog>, v: &LuaValue, zero_ok: bool) -> mlua::Result<(LuaValue, LuaValue)> {
    let Some(n) = version_arg(v) else { return fail(lua, Error::invalid("registry: a version or its number expected")) };
    if n < 0 || (n == 0 && !zero_ok) {
        return fail(lua, Error::invalid(format!("registry: invalid version {n}")));
    }
    let Some(c) = catalog.upgrade() else { return fail(lua, Error::unavailable("the registry is gone")) };
    let view = c.registry.read().snapshot_at(n as u64);
    match view {
        Some(view) => Ok((LuaValue::UserData(lua.create_userdata(Snapshot { view, catalog: catalog.clone() })?), LuaValue::Nil)),
        None => fail(lua, Error::not_found(format!("registry version {n} not found"))),
    }
}

impl UserData for History {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("versions", |lua, h, ()| versions_table(lua, &h.0));
        m.add_method("get_version", |lua, h, n: LuaValue| {
            let Some(n) = version_arg(&n) else { return fail(lua, Error::invalid("registry: a version number expected")) };
            if n < 0 {
                return fail(lua, Error::invalid(format!("registry: invalid version {n}")));
            }
            let v = Version { id: n as u64, catalog: h.0.clone() };
            match v.view() {
                Some(_) => Ok((LuaValue::UserData(lua.create_userdata(v)?), LuaValue::Nil)),
                None => fail(lua, Error::not_found(format!("registry version {n} not found"))),
            }
        });
        m.add_method("snapshot_at", |lua, h, v: LuaValue| snapshot_at(lua, &h.0, &v, true));
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

fn change_table(lua: &Lua, c: &RegistryChange) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match c {
        RegistryChange::Create(it) => {
            t.raw_set("kind", "entry.create")?;
            t.raw_set("entry", item_table(lua, it)?)?;
        }
        RegistryChange::Update(it) => {
            t.raw_set("kind", "entry.update")?;
            t.raw_set("entry", item_table(lua, it)?)?;
        }
        RegistryChange::Delete(id) => {
            t.raw_set("kind", "entry.delete")?;
            let e = lua.create_table()?;
            e.raw_set("id", id.as_str())?;
            t.raw_set("entry", e)?;
        }
    }
    Ok(t)
}

/// `"ns:name"` or `{ns, name}` (or an entry table with `id`).
fn id_arg(v: &LuaValue) -> mlua::Result<Option<String>> {
    Ok(match v {
        LuaValue::String(s) => Some(s.to_str()?.to_string()),
        LuaValue::Table(t) => match t.raw_get::<Option<String>>("id")? {
            Some(id) => Some(id),
            None => match (t.raw_get::<Option<String>>("ns")?, t.raw_get::<Option<String>>("name")?) {
                (Some(ns), Some(name)) => Some(format!("{ns}:{name}")),
                _ => None,
            },
        },
        _ => None,
    })
}

impl UserData for ChangeSet {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        // each returns the same changeset (SPEC §12.6), or nil + Invalid for a bad shape
        for (name, create) in [("create", true), ("update", false)] {
            m.add_function(name, move |lua, (ud, entry): (mlua::AnyUserData, LuaValue)| {
                if !matches!(entry, LuaValue::Table(_)) {
                    return fail(lua, Error::invalid(format!("{name}: an entry table expected")));
                }
                let item = or_fail!(lua, item_from(&entry, name)?);
                if let Err(e) = check_write(&item.id)? {
                    return fail(lua, e);
                }
                if let Err(e) = check_entry(&item)? {
                    return fail(lua, e);
                }
                ud.borrow_mut::<ChangeSet>()?.changes.push(if create { RegistryChange::Create(item) } else { RegistryChange::Update(item) });
                Ok((LuaValue::UserData(ud), LuaValue::Nil))
            });
        }
        m.add_function("delete", |lua, (ud, id): (mlua::AnyUserData, LuaValue)| {
            let Some(id) = id_arg(&id)? else { return fail(lua, Error::invalid("delete: \"ns:name\" or {ns, name} expected")) };
            if let Err(e) = check_write(&id)? {
                return fail(lua, e);
            }
            ud.borrow_mut::<ChangeSet>()?.changes.push(RegistryChange::Delete(id));
            Ok((LuaValue::UserData(ud), LuaValue::Nil))
        });
        m.add_method("ops", |lua, cs, ()| {
            let out = lua.create_table()?;
            for (i, c) in cs.changes.iter().enumerate() {
                out.raw_set(i + 1, change_table(lua, c)?)?;
            }
            Ok(out)
        });
        m.add_method_mut("apply", |lua, cs, ()| {
            if cs.changes.is_empty() {
                return fail(lua, Error::invalid("registry: no changes to apply"));
            }
            let Some(c) = cs.catalog.upgrade() else { return fail(lua, Error::unavailable("the registry is gone")) };
            let Some(w) = c.writer.read().clone() else {
                return fail(lua, Error::unavailable("this node's registry is read-only"));
            };
            match w.apply(std::mem::take(&mut cs.changes)) {
                Ok(v) => Ok((LuaValue::UserData(lua.create_userdata(Version { id: v, catalog: cs.catalog.clone() })?), LuaValue::Nil)),
                Err(e) if e.kind == wippy_runtime::ErrorKind::PermissionDenied || e.kind == wippy_runtime::ErrorKind::Invalid => fail(lua, e),
                Err(e) => fail(lua, Error::internal(e.message)),
            }
        });
    }
}

/// `build_delta(from, to)`: what turns the entries `from` into `to`.
fn build_delta(lua: &Lua, from: &LuaValue, to: &LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    let (LuaValue::Table(from), LuaValue::Table(to)) = (from, to) else {
        return fail(lua, Error::invalid("build_delta: two arrays of entries expected"));
    };
    let read = |t: &Table| -> mlua::Result<Result<Vec<RegistryItem>, Error>> {
        let mut out = Vec::new();
        for v in t.clone().sequence_values::<LuaValue>() {
            match item_from(&v?, "build_delta")? {
                Ok(i) => out.push(i),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(out))
    };
    let (from, to) = match (read(from)?, read(to)?) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(lua, e),
    };
    let mut changes = Vec::new();
    for it in &to {
        match from.iter().find(|f| f.id == it.id) {
            None => changes.push(RegistryChange::Create(it.clone())),
            Some(f) if f.kind != it.kind || f.meta != it.meta || f.data != it.data => changes.push(RegistryChange::Update(it.clone())),
            Some(_) => {}
        }
    }
    for f in &from {
        if !to.iter().any(|t| t.id == f.id) {
            changes.push(RegistryChange::Delete(f.id.clone()));
        }
    }
    let out = lua.create_table()?;
    for (i, c) in changes.iter().enumerate() {
        let t = change_table(lua, c)?;
        if let RegistryChange::Delete(id) = c {
            if let Some(f) = from.iter().find(|f| &f.id == id) {
                t.raw_set("entry", item_table(lua, f)?)?;
            }
        }
        out.raw_set(i + 1, t)?;
    }
    Ok((LuaValue::Table(out), LuaValue::Nil))
}

/// The runtime's own readers for the `contract` module (on `R`, out of user code's reach):
/// `R.entry_of(id)` an entry as `{id, kind, meta, data}` or nil, with no `registry.get`
/// check (the contract module checks its own permissions), and `R.bindings_of(contract)` the
/// IDs of the `contract.binding` entries that implement a contract, in registry order.
pub(crate) fn internal(lua: &Lua, r: &Table, catalog: Weak<Catalog>) -> mlua::Result<()> {
    let view = |c: &Weak<Catalog>| c.upgrade().map(|c| c.registry.read().snapshot()).unwrap_or_default();
    let c = catalog.clone();
    r.raw_set(
        "entry_of",
        lua.create_function(move |lua, id: String| match view(&c).get_str(&id) {
            Some(e) => Ok(LuaValue::Table(entry_table(lua, e)?)),
            None => Ok(LuaValue::Nil),
        })?,
    )?;
    r.raw_set(
        "bindings_of",
        lua.create_function(move |lua, contract: String| {
            let out = lua.create_table()?;
            let v = view(&catalog);
            let mut n = 0;
            for e in v.entries().filter(|e| e.kind == "contract.binding") {
                let Some(serde_json::Value::Array(items)) = e.fields.get("contracts") else { continue };
                let implements = items.iter().any(|it| it.get("contract").and_then(|c| c.as_str()).and_then(|c| wippy_registry::EntryId::resolve(c, e.id.namespace()).ok()).is_some_and(|id| id.as_str() == contract));
                if implements {
                    n += 1;
                    out.raw_set(n, e.id.as_str())?;
                }
            }
            Ok(out)
        })?,
    )?;
    Ok(())
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let view = |c: &Weak<Catalog>| c.upgrade().map(|c| c.registry.read().snapshot()).unwrap_or_default();
    let c = catalog.clone();
    t.raw_set("get", lua.create_function(move |lua, id: LuaValue| get(lua, &view(&c), &id))?)?;
    let c = catalog.clone();
    t.raw_set("find", lua.create_function(move |lua, q: LuaValue| find(lua, &view(&c), &q))?)?;
    let c = catalog.clone();
    t.raw_set("version", lua.create_function(move |_, ()| Ok(view(&c).version as i64))?)?;
    let c = catalog.clone();
    t.raw_set("current_version", lua.create_function(move |_, ()| Ok(Version { id: view(&c).version, catalog: c.clone() }))?)?;
    let c = catalog.clone();
    t.raw_set("versions", lua.create_function(move |lua, ()| versions_table(lua, &c))?)?;
    let c = catalog.clone();
    t.raw_set("history", lua.create_function(move |_, ()| Ok(History(c.clone())))?)?;
    let c = catalog.clone();
    t.raw_set("snapshot", lua.create_function(move |_, ()| Ok(Snapshot { view: view(&c), catalog: c.clone() }))?)?;
    let c = catalog.clone();
    t.raw_set("snapshot_at", lua.create_function(move |lua, v: LuaValue| snapshot_at(lua, &c, &v, false))?)?;
    let c = catalog.clone();
    t.raw_set("changes", lua.create_function(move |_, ()| Ok(ChangeSet { catalog: c.clone(), changes: Vec::new() }))?)?;
    t.raw_set(
        "parse_id",
        lua.create_function(|lua, s: String| {
            let (ns, name) = s.split_once(':').unwrap_or(("", s.as_str()));
            let out = lua.create_table()?;
            out.raw_set("ns", ns)?;
            out.raw_set("name", name)?;
            Ok(out)
        })?,
    )?;
    t.raw_set("build_delta", lua.create_function(|lua, (a, b): (LuaValue, LuaValue)| build_delta(lua, &a, &b))?)?;
    t.raw_set(
        "apply_version",
        lua.create_function(move |lua, v: LuaValue| {
            let no = |e: Error| -> mlua::Result<(LuaValue, LuaValue)> { Ok((LuaValue::Boolean(false), fail(lua, e)?.1)) };
            let Some(n) = version_arg(&v).filter(|n| *n >= 0) else { return no(Error::invalid("apply_version: a version or its number expected")) };
            if let Err(e) = current::with(|cx, _| Ok(cx.allow("registry.apply_version", "")))? {
                return no(e);
            }
            let Some(c) = catalog.upgrade() else { return no(Error::unavailable("the registry is gone")) };
            let Some(w) = c.writer.read().clone() else {
                return no(Error::unavailable("this node's registry is read-only"));
            };
            match w.apply_version(n as u64) {
                Ok(_) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
                Err(e) => no(e),
            }
        })?,
    )?;
    Ok(t)
}
