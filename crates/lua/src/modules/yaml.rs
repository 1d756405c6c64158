//! `yaml` (Wippy's `en/lua/data/yaml.md`): `encode(table, options?)` -> YAML text,
//! `decode(text)` -> value, with serde-saphyr. Tables convert as `json` converts them (an
//! array for keys 1..n, a mapping for string keys). A mapping's keys come out sorted, as Go's
//! YAML encoder writes a map; `options.field_order` puts the keys it lists first, in its
//! order (`sort_unordered` is accepted: the others are sorted either way). Errors are
//! `nil, err`: Invalid for a non-table to `encode` and a non-string or empty string to
//! `decode`, Internal for what YAML cannot hold or does not parse.

use mlua::{Lua, Table, Value as LuaValue};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value as Json;
use wippy_runtime::Error;

use super::fail;
use super::json::{from_json, to_json};

/// A JSON value whose mappings keep the order `encode` chose.
struct Ordered<'a> {
    value: &'a Json,
    first: &'a [String],
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Ordered { value: v, first: self.first })?;
                }
                seq.end()
            }
            Json::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                let rank = |k: &String| self.first.iter().position(|f| f == k).unwrap_or(usize::MAX);
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    map.serialize_entry(k, &Ordered { value: &m[k], first: self.first })?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

fn encode(lua: &Lua, (v, options): (LuaValue, LuaValue)) -> mlua::Result<(LuaValue, LuaValue)> {
    if !matches!(v, LuaValue::Table(_)) {
        return fail(lua, Error::invalid(format!("yaml.encode: input must be a table, got {}", super::lua_type(&v))));
    }
    let mut first = Vec::new();
    if let LuaValue::Table(o) = &options {
        if let LuaValue::Table(order) = o.raw_get::<LuaValue>("field_order")? {
            for f in order.sequence_values::<LuaValue>() {
                match f? {
                    LuaValue::String(s) => first.push(s.to_string_lossy().to_string()),
                    other => return fail(lua, Error::invalid(format!("yaml.encode: field_order holds a {}, not a string", super::lua_type(&other)))),
                }
            }
        }
    }
    let json = match to_json(&v, 0) {
        Ok(j) => j,
        Err(m) => return fail(lua, Error::internal(m.replace("json.encode", "yaml.encode"))),
    };
    match serde_saphyr::to_string(&Ordered { value: &json, first: &first }) {
        Ok(text) => Ok((LuaValue::String(lua.create_string(text)?), LuaValue::Nil)),
        Err(e) => fail(lua, Error::internal(format!("yaml.encode: {e}"))),
    }
}

fn decode(lua: &Lua, v: LuaValue) -> mlua::Result<(LuaValue, LuaValue)> {
    let LuaValue::String(s) = &v else {
        return fail(lua, Error::invalid(format!("yaml.decode: input must be a string, got {}", super::lua_type(&v))));
    };
    let text = s.to_string_lossy();
    if text.trim().is_empty() {
        return fail(lua, Error::invalid("yaml.decode: empty input"));
    }
    match serde_saphyr::from_str::<Json>(&text) {
        Ok(j) => Ok((from_json(lua, &j)?, LuaValue::Nil)),
        Err(e) => {
            // (the parser's first line says what and where; the rest is a source snippet)
            let e = e.to_string();
            let first = e.lines().next().unwrap_or("").trim_start_matches("error: ");
            fail(lua, Error::internal(format!("yaml.decode: {first}")))
        }
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("encode", lua.create_function(encode)?)?;
    t.raw_set("decode", lua.create_function(decode)?)?;
    Ok(t)
}
