//! `templates` (Wippy's `en/lua/text/template.md`) over `template.set` / `template.jet`
//! entries, rendered by the Jet engine in `crate::jet`. `templates.get(id)` (permission
//! `templates.get` on the set ID) gives a set with `render(name, data?)` and `release()`;
//! a template's name is its entry's name or its `meta.name`. The data table's keys are the
//! template's variables and the table its context (`.`).

use std::sync::{Arc, Weak};

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{Error, Value};

use super::{fail, invalid, or_fail};
use crate::catalog::Catalog;

type Answer = mlua::Result<(LuaValue, LuaValue)>;


struct SetHandle {
    id: String,
    set: Arc<crate::jet::Set>,
    released: std::sync::atomic::AtomicBool,
}

impl UserData for SetHandle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("render", |lua, h, (name, data): (LuaValue, LuaValue)| -> Answer {
            if h.released.load(std::sync::atomic::Ordering::Relaxed) {
                return fail(lua, Error::internal(format!("template set {} is released", h.id)).with_retryable(false));
            }
            let name = match &name {
                LuaValue::String(s) if !s.as_bytes().is_empty() => s.to_string_lossy().to_string(),
                _ => return fail(lua, invalid("template name is empty")),
            };
            let data = match &data {
                LuaValue::Nil => Value::Nil,
                other => match crate::current::with(|_, st| Ok(crate::convert::to_value(other, &st.shard.marks, "template data")))? {
                    Ok(v) => v,
                    Err(m) => return fail(lua, invalid(m)),
                },
            };
            if !h.set.has(&name) {
                return fail(lua, Error::not_found(format!("template not found: {name}")).with_retryable(false));
            }
            match h.set.render(&name, &data) {
                Ok(text) => Ok((LuaValue::String(lua.create_string(&text)?), LuaValue::Nil)),
                Err(e) => fail(lua, Error::internal(format!("template {name}: {e}")).with_retryable(false)),
            }
        });
        m.add_method("release", |_, h, ()| {
            h.released.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(true)
        });
    }
}

pub(crate) fn library(lua: &Lua, catalog: Weak<Catalog>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(move |lua, id: LuaValue| -> Answer {
            let id = or_fail!(lua, super::resource_id(&id, "template set"));
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("templates.get", &id)))? {
                return fail(lua, e);
            }
            let Some(set) = catalog.upgrade().and_then(|c| c.template_sets.read().get(&id).cloned()) else {
                return fail(lua, Error::not_found(format!("template set not found: {id}")).with_retryable(false));
            };
            Ok((LuaValue::UserData(lua.create_userdata(SetHandle { id, set, released: false.into() })?), LuaValue::Nil))
        })?,
    )?;
    Ok(t)
}
