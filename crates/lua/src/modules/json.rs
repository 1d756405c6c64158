//! `json` (SPEC §12.10): `encode(v)` -> string or `nil, err` (Internal) for what JSON cannot
//! hold; `decode(s)` -> value or `nil, err` (Invalid for a non-string or empty input,
//! Internal for bad JSON). An empty table and a table with keys 1..n are arrays (`{}` encodes
//! as `[]`, as in Wippy), string keys only an object, anything else an error.

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value as Json};
use wippy_runtime::Error;

use super::fail;

use crate::vm::json::{MAX_DEPTH, MAX_EXACT};

pub(crate) fn to_json(v: &LuaValue, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("json.encode: nesting deeper than {MAX_DEPTH} (or a cycle)"));
    }
    Ok(match v {
        LuaValue::Nil => Json::Null,
        LuaValue::Boolean(b) => Json::Bool(*b),
        LuaValue::Integer(i) => Json::Number((*i).into()),
        // As Wippy's encoder writes numbers (every Lua number is a float64 there): Inf and
        // NaN as null, a whole float as an integer ("5", not "5.0"), any other float as is.
        LuaValue::Number(n) if !n.is_finite() => Json::Null,
        LuaValue::Number(n) if n.fract() == 0.0 && n.abs() < MAX_EXACT => Json::Number((*n as i64).into()),
        LuaValue::Number(n) => Number::from_f64(*n).map(Json::Number).unwrap_or(Json::Null),
        LuaValue::String(s) => Json::String(s.to_string_lossy().to_string()),
        LuaValue::Table(t) => {
            // An empty table is an array; keys 1..n without gaps an array; string keys only
            // an object; anything else (a sparse array, mixed keys) an error.
            // (one walk over the pairs: each step of mlua's iterator is a protected call)
            let (mut ints, mut max) = (0usize, 0i64);
            let mut fields = Vec::new();
            for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                let (k, item) = pair.map_err(|e| e.to_string())?;
                match k {
                    LuaValue::Integer(i) if i >= 1 => {
                        ints += 1;
                        max = max.max(i);
                    }
                    LuaValue::String(k) => fields.push((k, item)),
                    other => return Err(format!("json.encode: a {} key cannot be encoded", super::lua_type(&other))),
                }
            }
            if fields.is_empty() {
                if max as usize != ints {
                    return Err("json.encode: a sparse array cannot be encoded".into());
                }
                let mut arr = Vec::with_capacity(ints);
                for i in 1..=ints {
                    let item: LuaValue = t.raw_get(i).map_err(|e| e.to_string())?;
                    arr.push(to_json(&item, depth + 1)?);
                }
                Json::Array(arr)
            } else if ints == 0 {
                let mut m = Map::new();
                for (k, item) in &fields {
                    m.insert(k.to_string_lossy().to_string(), to_json(item, depth + 1)?);
                }
                Json::Object(m)
            } else {
                return Err("json.encode: a table with both integer and string keys cannot be encoded".into());
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

/// `json.decode` through mlua: the errors, and the reference the stack decoder is held to.
pub(crate) fn decode(lua: &Lua, s: LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    let LuaValue::String(s) = &s else {
        return fail(lua, Error::invalid(format!("json.decode: a string expected, got {}", super::lua_type(&s))));
    };
    if s.as_bytes().is_empty() {
        return fail(lua, Error::invalid("json.decode: empty input"));
    }
    match serde_json::from_slice::<Json>(&s.as_bytes()) {
        Ok(j) => Ok((from_json(lua, &j)?, LuaValue::Nil)),
        Err(e) => fail(lua, Error::internal(format!("json.decode: {e}"))),
    }
}

pub(crate) fn from_json(lua: &Lua, j: &Json) -> mlua::Result<LuaValue> {
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

/// Compiled JSON Schemas by content hash (SPEC §12.10: 100 of them).
fn validator(schema: &Json) -> Result<std::sync::Arc<jsonschema::Validator>, String> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::sync::{Arc, OnceLock};
    static CACHE: OnceLock<parking_lot::Mutex<HashMap<u64, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let text = schema.to_string();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let key = h.finish();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().get(&key) {
        return Ok(v.clone());
    }
    let v = Arc::new(jsonschema::validator_for(schema).map_err(|e| format!("json.validate: the schema does not compile: {e}"))?);
    let mut c = cache.lock();
    if c.len() >= 100 {
        c.clear();
    }
    c.insert(key, v.clone());
    Ok(v)
}

/// `validate` / `validate_string`: `true`, or `false, err` (Invalid) for every failure.
fn validate(lua: &Lua, schema: &LuaValue, data: Result<Json, String>) -> mlua::Result<(LuaValue, LuaValue)> {
    let invalid = |m: String| -> mlua::Result<(LuaValue, LuaValue)> {
        let mut e = Error::invalid(m);
        e.retryable = Some(false);
        Ok((LuaValue::Boolean(false), LuaValue::UserData(lua.create_userdata(super::errors::LuaError::new(e))?)))
    };
    let schema = match schema {
        LuaValue::Nil => return invalid("json.validate: schema is required".into()),
        LuaValue::Table(_) => match to_json(schema, 0) {
            Ok(j) => j,
            Err(m) => return invalid(m),
        },
        LuaValue::String(s) => match serde_json::from_slice::<Json>(&s.as_bytes()) {
            Ok(j) => j,
            Err(e) => return invalid(format!("json.validate: the schema is not JSON: {e}")),
        },
        other => return invalid(format!("json.validate: the schema must be a table or a JSON string, got {}", super::lua_type(other))),
    };
    let data = match data {
        Ok(d) => d,
        Err(m) => return invalid(m),
    };
    let v = match validator(&schema) {
        Ok(v) => v,
        Err(m) => return invalid(m),
    };
    let errors: Vec<String> = v.iter_errors(&data).map(|e| format!("{} (at {})", e, e.instance_path)).collect();
    if errors.is_empty() {
        Ok((LuaValue::Boolean(true), LuaValue::Nil))
    } else {
        invalid(format!("json.validate: {}", errors.join("; ")))
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "validate",
        lua.create_function(|lua, (schema, data): (LuaValue, LuaValue)| {
            let data = match &data {
                LuaValue::Nil => Err("json.validate: data is required".to_string()),
                d => to_json(d, 0),
            };
            validate(lua, &schema, data)
        })?,
    )?;
    t.raw_set(
        "validate_string",
        lua.create_function(|lua, (schema, text): (LuaValue, LuaValue)| {
            let data = match &text {
                LuaValue::String(s) => serde_json::from_slice::<Json>(&s.as_bytes()).map_err(|e| format!("json.validate_string: not JSON: {e}")),
                other => Err(format!("json.validate_string: the text must be a string, got {}", super::lua_type(other))),
            };
            validate(lua, &schema, data)
        })?,
    )?;
    t.raw_set(
        "encode",
        // (plain data is written straight from the stack: crate::vm::json)
        crate::vm::json::encoder(
            lua,
            lua.create_function(|lua, v: LuaValue| match to_json(&v, 0) {
                Ok(j) => Ok((LuaValue::String(lua.create_string(j.to_string())?), LuaValue::Nil)),
                Err(m) => fail(lua, Error::internal(m)),
            })?,
        )?,
    )?;
    // (a document that parses is pushed straight onto the stack: crate::vm::json)
    t.raw_set("decode", crate::vm::json::decoder(lua, lua.create_function(decode)?)?)?;
    Ok(t)
}

/// The payload formats (SPEC §12.8) that Lua can transcode between.
pub(crate) const LUA: &str = "lua/any";
const JSON: &str = "json/plain";
const YAML: &str = "yaml/plain";
const MSGPACK: &str = "application/msgpack";
const STRING: &str = "text/plain";
const BYTES: &str = "application/octet-stream";

/// `v` held in format `from`, as a value in format `to` (a Lua value for `lua/any`, else
/// the encoded text or bytes as a Lua string). JSON, YAML and MessagePack go through a JSON
/// document; text and bytes hold strings only.
pub(crate) fn transcode(lua: &Lua, v: &LuaValue, from: &str, to: &str) -> Result<LuaValue, String> {
    if from == to {
        return Ok(v.clone());
    }
    let bytes = |v: &LuaValue| match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(format!("a {from} payload holds a string, not a {}", super::lua_type(other))),
    };
    // to a Lua value first
    let value: LuaValue = match from {
        LUA => v.clone(),
        JSON => from_json(lua, &serde_json::from_slice::<Json>(&bytes(v)?).map_err(|e| format!("json: {e}"))?).map_err(|e| e.to_string())?,
        YAML => {
            let text = String::from_utf8(bytes(v)?).map_err(|_| "yaml: not UTF-8".to_string())?;
            let doc: Json = serde_saphyr::from_str(&text).map_err(|e| format!("yaml: {e}"))?;
            from_json(lua, &doc).map_err(|e| e.to_string())?
        }
        MSGPACK => from_json(lua, &rmp_serde::from_slice::<Json>(&bytes(v)?).map_err(|e| format!("msgpack: {e}"))?).map_err(|e| e.to_string())?,
        STRING | BYTES => LuaValue::String(lua.create_string(bytes(v)?).map_err(|e| e.to_string())?),
        other => return Err(format!("cannot transcode from format {other:?}")),
    };
    let string = |b: &[u8]| lua.create_string(b).map(LuaValue::String).map_err(|e| e.to_string());
    match to {
        LUA => Ok(value),
        JSON => string(to_json(&value, 0)?.to_string().as_bytes()),
        YAML => string(serde_saphyr::to_string(&to_json(&value, 0)?).map_err(|e| format!("yaml: {e}"))?.as_bytes()),
        MSGPACK => string(&rmp_serde::to_vec(&to_json(&value, 0)?).map_err(|e| format!("msgpack: {e}"))?),
        STRING | BYTES => match &value {
            LuaValue::String(_) => Ok(value),
            other => Err(format!("only a string can become {to}, not a {}", super::lua_type(other))),
        },
        other => Err(format!("cannot transcode to format {other:?}")),
    }
}
