//! `logger` and `print`: structured log lines through `tracing`, each carrying the
//! process's PID and entry ID. `logger:with(fields)` and `logger:named(name)` make child
//! loggers (plain tables of fields; the functions are shared).

use mlua::{Lua, Table, Value as LuaValue, Variadic};

use crate::current;

/// A field's value: a table as the data it holds (Wippy's logger encodes it), not as its
/// address; one JSON cannot hold, and anything else, as `print` shows it.
fn render_field(v: &LuaValue) -> String {
    match v {
        LuaValue::Table(_) => super::json::to_json(v, 0).map(|j| j.to_string()).unwrap_or_else(|_| render(v)),
        other => render(other),
    }
}

/// A value as Lua's `tostring` shows it.
fn render(v: &LuaValue) -> String {
    match v {
        LuaValue::String(s) => s.to_string_lossy().to_string(),
        LuaValue::UserData(ud) => LuaValue::UserData(ud.clone()).to_string().unwrap_or_else(|_| "userdata".into()),
        other => other.to_string().unwrap_or_else(|_| format!("{}: {:p}", super::lua_type(other), other.to_pointer())),
    }
}

fn fields_text(fields: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in fields {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

fn collect(into: &mut Vec<(String, String)>, t: &Table) -> mlua::Result<()> {
    for pair in t.clone().pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair?;
        into.push((render(&k), render_field(&v)));
    }
    Ok(())
}

fn emit(level: &str, name: Option<String>, msg: &str, fields: &[(String, String)]) -> mlua::Result<()> {
    let (pid, entry) = current::with(|cx, st| Ok((cx.pid().to_string(), st.entry.id.clone())))
        .unwrap_or_else(|_| (String::new(), String::new()));
    // One line: "[name: ]message key=value ..." with the process's PID and entry ID.
    let mut line = match name {
        Some(n) if !n.is_empty() => format!("{n}: {msg}"),
        _ => msg.to_string(),
    };
    if !fields.is_empty() {
        line.push(' ');
        line.push_str(&fields_text(fields));
    }
    // a field the caller wrote itself wins over the one the runtime adds (one `pid=`, not two)
    let own = |key: &str| fields.iter().any(|(k, _)| k == key);
    let (own_pid, own_entry) = (own("pid"), own("entry"));
    macro_rules! event {
        ($level:expr) => {
            match (own_pid, own_entry) {
                (false, false) => tracing::event!(target: "lua", $level, pid = %pid, entry = %entry, "{line}"),
                (true, false) => tracing::event!(target: "lua", $level, entry = %entry, "{line}"),
                (false, true) => tracing::event!(target: "lua", $level, pid = %pid, "{line}"),
                (true, true) => tracing::event!(target: "lua", $level, "{line}"),
            }
        };
    }
    match level {
        "debug" => event!(tracing::Level::DEBUG),
        "warn" => event!(tracing::Level::WARN),
        "error" => event!(tracing::Level::ERROR),
        _ => event!(tracing::Level::INFO),
    }
    Ok(())
}

pub(crate) fn print_function(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_function(|_, args: Variadic<LuaValue>| {
        let line = args.iter().map(render).collect::<Vec<_>>().join("\t");
        emit("info", None, &line, &[])
    })
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let mt = lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        t.raw_set(
            level,
            lua.create_function(move |_, (this, msg, fields): (Table, LuaValue, Option<Table>)| {
                let mut all = Vec::new();
                if let Some(base) = this.raw_get::<Option<Table>>("_fields")? {
                    collect(&mut all, &base)?;
                }
                if let Some(f) = fields {
                    collect(&mut all, &f)?;
                }
                let name: Option<String> = this.raw_get("_name")?;
                emit(level, name, &render(&msg), &all)
            })?,
        )?;
    }
    let mt2 = mt.clone();
    t.raw_set(
        "with",
        lua.create_function(move |lua, (this, fields): (Table, Table)| {
            let merged = lua.create_table()?;
            if let Some(base) = this.raw_get::<Option<Table>>("_fields")? {
                for pair in base.pairs::<LuaValue, LuaValue>() {
                    let (k, v) = pair?;
                    merged.raw_set(k, v)?;
                }
            }
            for pair in fields.pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair?;
                merged.raw_set(k, v)?;
            }
            let child = lua.create_table()?;
            child.raw_set("_fields", merged)?;
            child.raw_set("_name", this.raw_get::<LuaValue>("_name")?)?;
            child.set_metatable(Some(mt2.clone()))?;
            Ok(child)
        })?,
    )?;
    let mt3 = mt.clone();
    t.raw_set(
        "named",
        lua.create_function(move |lua, (this, name): (Table, String)| {
            if name.is_empty() {
                return Err(mlua::Error::runtime("bad argument #1 to 'named' (name cannot be empty)"));
            }
            let child = lua.create_table()?;
            child.raw_set("_fields", this.raw_get::<LuaValue>("_fields")?)?;
            let full = match this.raw_get::<Option<String>>("_name")? {
                Some(p) => format!("{p}.{name}"),
                None => name,
            };
            child.raw_set("_name", full)?;
            child.set_metatable(Some(mt3.clone()))?;
            Ok(child)
        })?,
    )?;
    mt.raw_set("__index", t.clone())?;
    mt.raw_set("__metatable", false)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_field_shows_its_data_and_print_shows_lua_names() {
        let lua = Lua::new();
        let t: LuaValue = lua.load("return { list = { 1, 2 } }").eval().unwrap();
        assert_eq!(render_field(&t), r#"{"list":[1,2]}"#);
        assert!(render(&t).starts_with("table: "), "{}", render(&t));
        let f: LuaValue = lua.load("return { f = print }").eval().unwrap();
        assert!(render_field(&f).starts_with("table: "), "what JSON cannot hold is named as Lua names it");
    }
}
