//! `json`: `encode(v)` -> string (raises on values JSON cannot hold), `decode(s)` -> value
//! or `nil, err`. Arrays are tables with keys 1..n; an empty table encodes as `[]`... only
//! when it has no keys at all it is `{}` (Lua cannot tell them apart; Wippy does the same).

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value as Json};
use wippy_runtime::Error;

use super::{bad_arg, fail};

fn to_json(v: &LuaValue, depth: usize) -> Result<Json, String> {
    if depth > 200 {
        return Err("json.encode: nesting too deep (or a cycle)".into());
    }
    Ok(match v {
        LuaValue::Nil => Json::Null,
        LuaValue::Boolean(b) => Json::Bool(*b),
        LuaValue::Integer(i) => Json::Number((*i).into()),
        LuaValue::Number(n) => match Number::from_f64(*n) {
            Some(n) => Json::Number(n),
            None => return Err(format!("json.encode: cannot encode {n}")),
        },
        LuaValue::String(s) => Json::String(s.to_string_lossy().to_string()),
        LuaValue::Table(t) => {
            let len = t.raw_len();
            let mut count = 0usize;
            for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                pair.map_err(|e| e.to_string())?;
                count += 1;
            }
            if len > 0 && count == len {
                let mut arr = Vec::with_capacity(len);
                for i in 1..=len {
                    let item: LuaValue = t.raw_get(i).map_err(|e| e.to_string())?;
                    arr.push(to_json(&item, depth + 1)?);
                }
                Json::Array(arr)
            } else {
                let mut m = Map::new();
                for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                    let (k, item) = pair.map_err(|e| e.to_string())?;
                    let key = match &k {
                        LuaValue::String(s) => s.to_string_lossy().to_string(),
                        LuaValue::Integer(i) => i.to_string(),
                        LuaValue::Number(n) => n.to_string(),
                        other => return Err(format!("json.encode: a {} key cannot be encoded", super::lua_type(other))),
                    };
                    m.insert(key, to_json(&item, depth + 1)?);
                }
                Json::Object(m)
            }
        }
        LuaValue::UserData(ud) => match ud.borrow::<super::errors::LuaError>() {
            Ok(e) => Json::String(e.error.message.clone()),
            Err(_) => match LuaValue::UserData(ud.clone()).to_string() {
                Ok(s) => Json::String(s),
                Err(_) => return Err("json.encode: a userdata value cannot be encoded".into()),
            },
        },
        other => return Err(format!("json.encode: a {} value cannot be encoded", super::lua_type(other))),
    })
}

fn from_json(lua: &Lua, j: &Json) -> mlua::Result<LuaValue> {
    Ok(match j {
        Json::Null => LuaValue::Nil,
        Json::Bool(b) => LuaValue::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => LuaValue::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, item) in a.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Json::Object(m) => {
            let t = lua.create_table_with_capacity(0, m.len())?;
            for (k, item) in m {
                t.raw_set(k.as_str(), from_json(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "encode",
        lua.create_function(|lua, v: LuaValue| match to_json(&v, 0) {
            Ok(j) => Ok((LuaValue::String(lua.create_string(j.to_string())?), LuaValue::Nil)),
            Err(m) => fail(lua, Error::invalid(m)),
        })?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(|lua, s: LuaValue| {
            let LuaValue::String(s) = &s else { return Err(bad_arg(1, "decode", "string", &s)) };
            match serde_json::from_slice::<Json>(&s.as_bytes()) {
                Ok(j) => Ok((from_json(lua, &j)?, LuaValue::Nil)),
                Err(e) => fail(lua, Error::invalid(format!("json.decode: {e}"))),
            }
        })?,
    )?;
    Ok(t)
}
