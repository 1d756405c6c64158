//! `security`: the running process's actor and scope, making new ones (for `with_actor` /
//! `with_scope` on spawners, which the runtime checks as `process.security`), named
//! policies and groups, and `can(action, resource, meta?)`.

use std::sync::Arc;

use mlua::{AnyUserData, Lua, MetaMethod, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{evaluate, Actor, Error, Identity, Policy, Request, Scope, Value};

use super::{bad_arg, fail, or_fail};
use crate::convert::{from_value, to_value};
use crate::current;

pub(crate) struct LuaActor(pub(crate) Arc<Actor>);
pub(crate) struct LuaScope(pub(crate) Arc<Scope>);
pub(crate) struct LuaPolicy(pub(crate) Arc<Policy>);

impl UserData for LuaActor {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("id", |_, a, ()| Ok(a.0.id.clone()));
        m.add_method("meta", |lua, a, ()| from_value(lua, &Value::table(a.0.meta.clone())));
        m.add_meta_method(MetaMethod::ToString, |_, a, ()| Ok(format!("actor {}", a.0.id)));
    }
}

/// A permission SPEC §12.9 makes the call raise without.
fn require(action: &str, resource: &str) -> mlua::Result<()> {
    if current::with(|cx, _| Ok(cx.can(action, resource))).unwrap_or(true) {
        Ok(())
    } else {
        Err(mlua::Error::runtime(format!("not allowed: {action} on {resource}")))
    }
}

/// `evaluate(actor, action, resource, meta?)` arguments (SPEC §12.9).
fn eval_args(lua: &Lua, actor: &LuaValue, action: &LuaValue, resource: &LuaValue, meta: &LuaValue) -> mlua::Result<(Arc<Actor>, String, String, Option<Arc<wippy_runtime::Table>>)> {
    let actor = match actor {
        LuaValue::UserData(ud) => ud.borrow::<LuaActor>().map_err(|_| bad_arg(1, "evaluate", "actor", actor))?.0.clone(),
        other => return Err(bad_arg(1, "evaluate", "actor", other)),
    };
    let text = |v: &LuaValue, n: usize| match v {
        LuaValue::String(s) => Ok(s.to_string_lossy().to_string()),
        other => Err(bad_arg(n, "evaluate", "string", other)),
    };
    let (action, resource) = (text(action, 2)?, text(resource, 3)?);
    let meta = match meta {
        LuaValue::Table(_) => {
            let marks = current::state(|st| st.shard.marks).unwrap_or_default();
            match to_value(meta, &marks, "meta") {
                Ok(Value::Table(t)) => Some(t),
                _ => None,
            }
        }
        _ => None,
    };
    let _ = lua;
    Ok((actor, action, resource, meta))
}

/// One policy's answer: "allow", "deny", or "undefined" when it does not apply.
fn policy_answer(p: &Policy, actor: &Actor, req: &Request<'_>) -> &'static str {
    if !p.applies(actor, req) {
        "undefined"
    } else if p.effect == wippy_runtime::Effect::Deny {
        "deny"
    } else {
        "allow"
    }
}

impl UserData for LuaScope {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        // every policy together: any deny denies, else any allow allows (SPEC §12.9)
        m.add_method("evaluate", |lua, s, (actor, action, resource, meta): (LuaValue, LuaValue, LuaValue, LuaValue)| {
            let (actor, action, resource, meta) = eval_args(lua, &actor, &action, &resource, &meta)?;
            let req = Request { action: &action, resource: &resource, pid: current::with(|cx, _| Ok(cx.pid())).ok(), meta: meta.as_deref(), target: None };
            let mut answer = "undefined";
            for p in s.0.policies() {
                match policy_answer(p, &actor, &req) {
                    "deny" => return Ok("deny"),
                    "allow" => answer = "allow",
                    _ => {}
                }
            }
            Ok(answer)
        });
        m.add_method("contains", |_, s, p: LuaValue| {
            let id = match &p {
                LuaValue::String(id) => id.to_string_lossy().to_string(),
                LuaValue::UserData(ud) => match ud.borrow::<LuaPolicy>() {
                    Ok(p) => p.0.id.clone(),
                    Err(_) => return Ok(false),
                },
                LuaValue::Table(t) => {
                    let ns: String = t.raw_get::<Option<String>>("ns")?.unwrap_or_default();
                    let name: String = t.raw_get::<Option<String>>("name")?.unwrap_or_default();
                    format!("{ns}:{name}")
                }
                _ => return Ok(false),
            };
            Ok(s.0.policies().iter().any(|q| q.id == id))
        });
        m.add_method("policies", |lua, s, ()| {
            let t = lua.create_table()?;
            for p in s.0.policies() {
                t.raw_push(lua.create_userdata(LuaPolicy(p.clone()))?)?;
            }
            Ok(t)
        });
        m.add_method("with", |_, s, p: AnyUserData| {
            require("security.scope.create", "with")?;
            let p = p.borrow::<LuaPolicy>()?.0.clone();
            let mut ps = s.0.policies().to_vec();
            if !ps.iter().any(|q| Arc::ptr_eq(q, &p)) {
                ps.push(p);
            }
            Ok(LuaScope(Arc::new(Scope::new(ps))))
        });
        m.add_method("without", |_, s, p: LuaValue| {
            require("security.scope.create", "without")?;
            let id = match &p {
                LuaValue::String(id) => id.to_string_lossy().to_string(),
                LuaValue::UserData(ud) => ud.borrow::<LuaPolicy>()?.0.id.clone(),
                LuaValue::Table(t) => format!("{}:{}", t.raw_get::<Option<String>>("ns")?.unwrap_or_default(), t.raw_get::<Option<String>>("name")?.unwrap_or_default()),
                other => return Err(bad_arg(1, "without", "policy", other)),
            };
            let ps = s.0.policies().iter().filter(|p| p.id != id).cloned().collect();
            Ok(LuaScope(Arc::new(Scope::new(ps))))
        });
        m.add_meta_method(MetaMethod::ToString, |_, s, ()| Ok(format!("scope of {} policies", s.0.policies().len())));
    }
}

impl UserData for LuaPolicy {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("id", |_, p, ()| Ok(p.0.id.clone()));
        // this policy alone (SPEC §12.9)
        m.add_method("evaluate", |lua, p, (actor, action, resource, meta): (LuaValue, LuaValue, LuaValue, LuaValue)| {
            let (actor, action, resource, meta) = eval_args(lua, &actor, &action, &resource, &meta)?;
            let req = Request { action: &action, resource: &resource, pid: current::with(|cx, _| Ok(cx.pid())).ok(), meta: meta.as_deref(), target: None };
            Ok(policy_answer(&p.0, &actor, &req))
        });
        m.add_meta_method(MetaMethod::ToString, |_, p, ()| Ok(format!("policy {}", p.0.id)));
    }
}

/// The identity a spawner's `with_actor`/`with_scope` asks for (`sec` = `{actor=, scope=}`),
/// filling what it does not set from the spawner's own.
pub(crate) fn requested_identity(sec: &LuaValue, current: Option<&Arc<Identity>>) -> mlua::Result<Option<Arc<Identity>>> {
    let LuaValue::Table(t) = sec else { return Ok(None) };
    let actor = match t.raw_get::<LuaValue>("actor")? {
        LuaValue::UserData(ud) => Some(ud.borrow::<LuaActor>()?.0.clone()),
        _ => None,
    };
    let scope = match t.raw_get::<LuaValue>("scope")? {
        LuaValue::UserData(ud) => Some(ud.borrow::<LuaScope>()?.0.clone()),
        _ => None,
    };
    if actor.is_none() && scope.is_none() {
        return Ok(None);
    }
    let actor = actor.or_else(|| current.and_then(|i| i.actor.clone()));
    let scope = scope.or_else(|| current.and_then(|i| i.scope.clone()));
    Ok(Some(Arc::new(Identity::new(actor, scope))))
}

/// A token store as Lua holds it (`security.token_store(id)`); `None` once closed.
struct LuaTokenStore {
    id: String,
    store: Option<Arc<crate::tokens::TokenStore>>,
}

/// Token-store errors (SPEC §12.9): a denial is Invalid, a closed store Internal.
fn store_of<'a>(s: &'a LuaTokenStore, action: &str) -> Result<&'a Arc<crate::tokens::TokenStore>, Error> {
    let store = s.store.as_ref().ok_or_else(|| Error::internal("store closed"))?;
    let allowed = current::with(|cx, _| Ok(cx.can(action, &s.id))).unwrap_or(false);
    if !allowed {
        return Err(Error::invalid(format!("not allowed: {action} on {}", wippy_runtime::Echo(&s.id))));
    }
    Ok(store)
}

/// An expiration: milliseconds, or a duration string; 0: never; absent: the store's
/// `default_expiration` (never, when it has none).
fn expiration(v: &LuaValue, default: Option<std::time::Duration>) -> Result<Option<std::time::Duration>, Error> {
    let ms = match v {
        LuaValue::Nil => return Ok(default),
        LuaValue::Integer(i) => *i,
        LuaValue::Number(n) if n.fract() == 0.0 => *n as i64,
        LuaValue::String(s) => {
            let ns = wippy_registry::parse_duration(&s.to_string_lossy()).map_err(|m| Error::invalid(format!("expiration: {m}")))?;
            ns / 1_000_000
        }
        other => return Err(Error::invalid(format!("expiration must be milliseconds or a duration, got {}", super::lua_type(other)))),
    };
    match ms {
        0 => Ok(None),
        m if m < 0 => Err(Error::invalid("expiration must not be negative")),
        m => Ok(Some(std::time::Duration::from_millis(m as u64))),
    }
}

impl UserData for LuaTokenStore {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("validate", |lua, s, token: LuaValue| {
            let store = match store_of(s, "security.token.validate") {
                Ok(st) => st,
                Err(e) => return Ok((LuaValue::Nil, LuaValue::Nil, fail(lua, e)?.1)),
            };
            let LuaValue::String(token) = &token else {
                return Ok((LuaValue::Nil, LuaValue::Nil, fail(lua, Error::invalid("token must be a string"))?.1));
            };
            match store.validate(&token.to_string_lossy()) {
                Some((a, sc)) => Ok((
                    LuaValue::UserData(lua.create_userdata(LuaActor(a))?),
                    LuaValue::UserData(lua.create_userdata(LuaScope(sc))?),
                    LuaValue::Nil,
                )),
                None => Ok((LuaValue::Nil, LuaValue::Nil, fail(lua, Error::not_found("invalid or expired token"))?.1)),
            }
        });
        m.add_method("create", |lua, s, (actor, scope, opts): (LuaValue, LuaValue, LuaValue)| {
            let store = match store_of(s, "security.token.create") {
                Ok(st) => st.clone(),
                Err(e) => return fail(lua, e),
            };
            let actor = match &actor {
                LuaValue::UserData(ud) => match ud.borrow::<LuaActor>() {
                    Ok(a) => a.0.clone(),
                    Err(_) => return fail(lua, Error::invalid("an actor expected")),
                },
                _ => return fail(lua, Error::invalid("an actor expected")),
            };
            let scope = match &scope {
                LuaValue::UserData(ud) => match ud.borrow::<LuaScope>() {
                    Ok(sc) => sc.0.clone(),
                    Err(_) => return fail(lua, Error::invalid("a scope expected")),
                },
                _ => return fail(lua, Error::invalid("a scope expected")),
            };
            let (ttl, meta) = match &opts {
                LuaValue::Nil => (store.default_ttl(), wippy_runtime::Table::new()),
                LuaValue::Table(t) => {
                    let ttl = or_fail!(lua, expiration(&t.raw_get::<LuaValue>("expiration")?, store.default_ttl()));
                    let meta = match t.raw_get::<LuaValue>("meta")? {
                        m @ LuaValue::Table(_) => match current::with(|_, st| Ok(to_value(&m, &st.shard.marks, "meta")))? {
                            Ok(Value::Table(t)) => (*t).clone(),
                            _ => wippy_runtime::Table::new(),
                        },
                        _ => wippy_runtime::Table::new(),
                    };
                    (ttl, meta)
                }
                _ => return fail(lua, Error::invalid("options must be a table")),
            };
            let token = store.create(actor, scope, ttl, meta);
            Ok((LuaValue::String(lua.create_string(token)?), LuaValue::Nil))
        });
        m.add_method("revoke", |lua, s, token: LuaValue| {
            let store = or_fail!(lua, store_of(s, "security.token.revoke"));
            let LuaValue::String(token) = &token else { return fail(lua, Error::invalid("token must be a string")) };
            store.revoke(&token.to_string_lossy());
            Ok((LuaValue::Boolean(true), LuaValue::Nil))
        });
        m.add_method_mut("close", |_, s, ()| {
            s.store = None;
            Ok(true)
        });
    }
}

pub(crate) fn library(lua: &Lua, catalog: std::sync::Weak<crate::catalog::Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "token_store",
        lua.create_function(move |lua, id: LuaValue| {
            let LuaValue::String(id) = &id else { return Err(bad_arg(1, "token_store", "string", &id)) };
            let id = id.to_string_lossy().to_string();
            if id.is_empty() {
                return fail(lua, Error::invalid("token store ID required"));
            }
            if !current::with(|cx, _| Ok(cx.can("security.token_store.get", &id))).unwrap_or(false) {
                return fail(lua, Error::invalid(format!("not allowed: security.token_store.get on {}", wippy_runtime::Echo(&id))));
            }
            let store = catalog.upgrade().and_then(|c| c.token_stores.read().get(&id).cloned());
            match store {
                Some(store) => Ok((LuaValue::UserData(lua.create_userdata(LuaTokenStore { id, store: Some(store) })?), LuaValue::Nil)),
                None => fail(lua, Error::internal(format!("{} is not a security.token_store entry", wippy_runtime::Echo(&id)))),
            }
        })?,
    )?;
    t.raw_set(
        "actor",
        lua.create_function(|lua, ()| {
            current::with(|cx, _| match cx.identity().and_then(|i| i.actor.clone()) {
                Some(a) => Ok(LuaValue::UserData(lua.create_userdata(LuaActor(a))?)),
                None => Ok(LuaValue::Nil),
            })
        })?,
    )?;
    t.raw_set(
        "scope",
        lua.create_function(|lua, ()| {
            current::with(|cx, _| match cx.identity().and_then(|i| i.scope.clone()) {
                Some(s) => Ok(LuaValue::UserData(lua.create_userdata(LuaScope(s))?)),
                None => Ok(LuaValue::Nil),
            })
        })?,
    )?;
    t.raw_set(
        "new_actor",
        lua.create_function(|lua, (id, meta): (LuaValue, LuaValue)| {
            let LuaValue::String(id) = &id else { return Err(bad_arg(1, "new_actor", "string", &id)) };
            require("security.actor.create", &id.to_string_lossy())?;
            let meta = match &meta {
                LuaValue::Nil => wippy_runtime::Table::new(),
                LuaValue::Table(_) => {
                    let converted: Result<Value, String> = current::with(|_, st| Ok(to_value(&meta, &st.shard.marks, "meta")))?;
                    match converted {
                        Ok(Value::Table(t)) => (*t).clone(),
                        Ok(_) => wippy_runtime::Table::new(),
                        Err(m) => return Err(mlua::Error::runtime(Error::invalid(m).message)),
                    }
                }
                other => return Err(bad_arg(2, "new_actor", "table", other)),
            };
            Ok(LuaValue::UserData(lua.create_userdata(LuaActor(Arc::new(Actor::new(id.to_str()?.to_string()).with_meta(meta))))?))
        })?,
    )?;
    t.raw_set(
        "new_scope",
        lua.create_function(|_, policies: Option<Table>| {
            require("security.scope.create", "custom")?;
            let mut ps = Vec::new();
            if let Some(list) = policies {
                for p in list.sequence_values::<AnyUserData>() {
                    ps.push(p?.borrow::<LuaPolicy>()?.0.clone());
                }
            }
            Ok(LuaScope(Arc::new(Scope::new(ps))))
        })?,
    )?;
    t.raw_set(
        "policy",
        lua.create_function(|lua, id: String| {
            current::with(|cx, _| {
                if !cx.can("security.policy.get", &id) {
                    return fail(lua, Error::invalid(format!("not allowed: security.policy.get on {}", wippy_runtime::Echo(&id))));
                }
                match cx.node().security().policy(&id) {
                    Some(p) => Ok((LuaValue::UserData(lua.create_userdata(LuaPolicy(p))?), LuaValue::Nil)),
                    None => fail(lua, Error::internal(format!("policy not found: {}", wippy_runtime::Echo(&id)))),
                }
            })
        })?,
    )?;
    t.raw_set(
        "named_scope",
        lua.create_function(|lua, group: String| {
            current::with(|cx, _| {
                if !cx.can("security.policy_group.get", &group) {
                    return fail(lua, Error::invalid(format!("not allowed: security.policy_group.get on {}", wippy_runtime::Echo(&group))));
                }
                match cx.node().security().group(&group) {
                    Some(ps) => Ok((LuaValue::UserData(lua.create_userdata(LuaScope(Arc::new(Scope::new(ps))))?), LuaValue::Nil)),
                    None => fail(lua, Error::internal(format!("policy group not found: {}", wippy_runtime::Echo(&group)))),
                }
            })
        })?,
    )?;
    t.raw_set(
        "can",
        lua.create_function(|_, (action, resource, meta): (String, String, LuaValue)| {
            current::with(|cx, st| {
                let meta = match &meta {
                    LuaValue::Table(_) => match to_value(&meta, &st.shard.marks, "meta") {
                        Ok(Value::Table(t)) => Some(t),
                        _ => None,
                    },
                    _ => None,
                };
                let req = Request { action: &action, resource: &resource, pid: Some(cx.pid()), meta: meta.as_deref(), target: None };
                Ok(evaluate(cx.identity().map(|i| &**i), cx.node().security().strict(), &req))
            })
        })?,
    )?;
    Ok(t)
}
