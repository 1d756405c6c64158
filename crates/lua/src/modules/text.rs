//! `text` (Wippy's `en/lua/text/text.md`), its regular expressions: `text.regexp.compile`
//! with the `regex` crate, whose syntax is RE2's (Go's `regexp`), and Go's method set
//! (`match_string`, `find_string`, `find_all_string`, `find_string_submatch`,
//! `find_all_string_submatch`, `find_string_index`, `find_all_string_index`,
//! `replace_all_string` with `$1`/`${name}`, `split`, `num_subexp`, `subexp_names`,
//! `string`). Indexes are 1-based and inclusive (`{start, end}`), as Lua's `string.find`.
//! A pattern that does not compile is `nil, err` (Invalid). The page's diff and document
//! splitters are not here.

use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use regex::Regex;
use wippy_runtime::Error;

use super::fail;

struct Re(Regex);

/// Go's `n`: below 0 all matches, else at most `n`.
fn limit(n: Option<i64>) -> usize {
    match n {
        Some(n) if n >= 0 => n as usize,
        _ => usize::MAX,
    }
}

fn strings(lua: &Lua, items: impl IntoIterator<Item = String>) -> mlua::Result<Table> {
    lua.create_sequence_from(items)
}

fn bounds(lua: &Lua, m: regex::Match<'_>) -> mlua::Result<Table> {
    lua.create_sequence_from([m.start() as i64 + 1, m.end() as i64])
}

fn submatches(lua: &Lua, c: &regex::Captures<'_>) -> mlua::Result<Table> {
    strings(lua, c.iter().map(|g| g.map_or(String::new(), |m| m.as_str().to_string())))
}

impl UserData for Re {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("match_string", |_, r, s: mlua::LuaString| Ok(r.0.is_match(&s.to_string_lossy())));
        m.add_method("find_string", |lua, r, s: mlua::LuaString| match r.0.find(&s.to_string_lossy()) {
            Some(m) => Ok(LuaValue::String(lua.create_string(m.as_str())?)),
            None => Ok(LuaValue::Nil),
        });
        m.add_method("find_all_string", |lua, r, (s, n): (mlua::LuaString, Option<i64>)| {
            let s = s.to_string_lossy();
            strings(lua, r.0.find_iter(&s).take(limit(n)).map(|m| m.as_str().to_string()))
        });
        m.add_method("find_string_submatch", |lua, r, s: mlua::LuaString| match r.0.captures(&s.to_string_lossy()) {
            Some(c) => Ok(LuaValue::Table(submatches(lua, &c)?)),
            None => Ok(LuaValue::Nil),
        });
        m.add_method("find_all_string_submatch", |lua, r, (s, n): (mlua::LuaString, Option<i64>)| {
            let s = s.to_string_lossy();
            let all = lua.create_table()?;
            for (i, c) in r.0.captures_iter(&s).take(limit(n)).enumerate() {
                all.raw_set(i + 1, submatches(lua, &c)?)?;
            }
            Ok(all)
        });
        m.add_method("find_string_index", |lua, r, s: mlua::LuaString| match r.0.find(&s.to_string_lossy()) {
            Some(m) => Ok(LuaValue::Table(bounds(lua, m)?)),
            None => Ok(LuaValue::Nil),
        });
        m.add_method("find_all_string_index", |lua, r, (s, n): (mlua::LuaString, Option<i64>)| {
            let s = s.to_string_lossy();
            let all = lua.create_table()?;
            for (i, m) in r.0.find_iter(&s).take(limit(n)).enumerate() {
                all.raw_set(i + 1, bounds(lua, m)?)?;
            }
            Ok(if all.raw_len() == 0 { LuaValue::Nil } else { LuaValue::Table(all) })
        });
        m.add_method("replace_all_string", |lua, r, (s, repl): (mlua::LuaString, mlua::LuaString)| {
            let (s, repl) = (s.to_string_lossy(), repl.to_string_lossy());
            lua.create_string(r.0.replace_all(&s, &*repl).as_bytes())
        });
        m.add_method("split", |lua, r, (s, n): (mlua::LuaString, Option<i64>)| {
            let s = s.to_string_lossy();
            match n.unwrap_or(-1) {
                0 => lua.create_table(),
                n if n < 0 => strings(lua, r.0.split(&s).map(str::to_string)),
                n => strings(lua, r.0.splitn(&s, n as usize).map(str::to_string)),
            }
        });
        m.add_method("num_subexp", |_, r, ()| Ok(r.0.captures_len() as i64 - 1));
        // (as Go's SubexpNames: index 0 is the whole match, "" for a group without a name)
        m.add_method("subexp_names", |lua, r, ()| strings(lua, r.0.capture_names().map(|n| n.unwrap_or("").to_string())));
        m.add_method("string", |_, r, ()| Ok(r.0.as_str().to_string()));
        m.add_meta_method(mlua::MetaMethod::ToString, |_, r, ()| Ok(r.0.as_str().to_string()));
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let regexp = lua.create_table()?;
    regexp.raw_set(
        "compile",
        lua.create_function(|lua, pattern: LuaValue| {
            let LuaValue::String(p) = &pattern else {
                return fail(lua, Error::invalid(format!("pattern must be a string, got {}", super::lua_type(&pattern))));
            };
            match Regex::new(&p.to_string_lossy()) {
                Ok(re) => Ok((LuaValue::UserData(lua.create_userdata(Re(re))?), LuaValue::Nil)),
                Err(e) => fail(lua, Error::invalid(format!("invalid pattern: {e}"))),
            }
        })?,
    )?;
    t.raw_set("regexp", regexp)?;
    Ok(t)
}
