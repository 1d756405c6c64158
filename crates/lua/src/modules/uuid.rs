//! `uuid` (SPEC §12.2): generation (v1, v3, v4, v5, v7) and inspection with the `uuid`
//! crate. Every function answers `value, nil`; bad input is `nil, err` (Invalid), never a
//! raise. Output is lowercase, hyphenated unless asked otherwise.

use std::sync::OnceLock;

use mlua::{Lua, Table, Value as LuaValue};
use uuid::{Uuid, Variant};
use wippy_runtime::Error;

use super::{fail, or_fail};

type Answer = mlua::Result<(LuaValue, LuaValue)>;

fn ok(v: impl mlua::IntoLua, lua: &Lua) -> Answer {
    Ok((v.into_lua(lua)?, LuaValue::Nil))
}

fn text(lua: &Lua, u: Uuid) -> Answer {
    ok(u.hyphenated().to_string(), lua)
}

/// A UUID argument in any accepted form (hyphenated, `urn:uuid:`, braced, 32 hex digits).
fn parse(v: &LuaValue) -> Result<Uuid, Error> {
    let LuaValue::String(s) = v else { return Err(Error::invalid("input must be a string")) };
    let s = s.to_str().map_err(|_| Error::invalid("invalid UUID format"))?;
    Uuid::parse_str(s.trim()).map_err(|_| Error::invalid("invalid UUID format"))
}

/// This node's v1 node ID: random, with the multicast bit set (RFC 9562 §6.10), made once.
fn node_id() -> &'static [u8; 6] {
    static NODE: OnceLock<[u8; 6]> = OnceLock::new();
    NODE.get_or_init(|| {
        let mut b = [0u8; 6];
        b.copy_from_slice(&Uuid::new_v4().as_bytes()[..6]);
        b[0] |= 0x01;
        b
    })
}

fn variant_name(u: &Uuid) -> &'static str {
    match u.get_variant() {
        Variant::NCS => "NCS",
        Variant::RFC4122 => "RFC4122",
        Variant::Microsoft => "Microsoft",
        Variant::Future => "Future",
        _ => "Invalid",
    }
}

/// v3 / v5: `(ns, name)` strings, `ns` a UUID.
fn named(lua: &Lua, ns: &LuaValue, name: &LuaValue, make: fn(&Uuid, &[u8]) -> Uuid) -> Answer {
    let (LuaValue::String(_), LuaValue::String(n)) = (ns, name) else {
        return fail(lua, Error::invalid("namespace and name must be strings"));
    };
    match parse(ns) {
        Ok(ns) => text(lua, make(&ns, &n.as_bytes())),
        Err(_) => fail(lua, Error::invalid("invalid namespace UUID")),
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("v1", lua.create_function(|lua, ()| text(lua, Uuid::now_v1(node_id())))?)?;
    t.raw_set("v4", lua.create_function(|lua, ()| text(lua, Uuid::new_v4()))?)?;
    t.raw_set("v7", lua.create_function(|lua, ()| text(lua, Uuid::now_v7()))?)?;
    t.raw_set("v3", lua.create_function(|lua, (ns, name): (LuaValue, LuaValue)| named(lua, &ns, &name, Uuid::new_v3))?)?;
    t.raw_set("v5", lua.create_function(|lua, (ns, name): (LuaValue, LuaValue)| named(lua, &ns, &name, Uuid::new_v5))?)?;
    t.raw_set("validate", lua.create_function(|lua, v: LuaValue| ok(parse(&v).is_ok(), lua))?)?;
    t.raw_set(
        "version",
        lua.create_function(|lua, v: LuaValue| match parse(&v) {
            Ok(u) => ok(u.get_version_num() as i64, lua),
            Err(e) => fail(lua, e),
        })?,
    )?;
    t.raw_set(
        "variant",
        lua.create_function(|lua, v: LuaValue| match parse(&v) {
            Ok(u) => ok(variant_name(&u), lua),
            Err(e) => fail(lua, e),
        })?,
    )?;
    t.raw_set(
        "parse",
        lua.create_function(|lua, v: LuaValue| {
            let u = or_fail!(lua, parse(&v));
            let out = lua.create_table()?;
            let version = u.get_version_num();
            out.raw_set("version", version as i64)?;
            out.raw_set("variant", variant_name(&u))?;
            if version == 1 || version == 7 {
                if let Some(ts) = u.get_timestamp() {
                    out.raw_set("timestamp", ts.to_unix().0 as i64)?;
                }
            }
            if version == 1 {
                let node: String = u.as_bytes()[10..].iter().map(|b| format!("{b:02x}")).collect();
                out.raw_set("node", node)?;
            }
            ok(out, lua)
        })?,
    )?;
    t.raw_set(
        "format",
        lua.create_function(|lua, (v, fmt): (LuaValue, Option<LuaValue>)| {
            let u = or_fail!(lua, parse(&v));
            let fmt = match &fmt {
                None | Some(LuaValue::Nil) => "standard".to_string(),
                Some(LuaValue::String(s)) => s.to_string_lossy().to_string(),
                Some(_) => return fail(lua, Error::invalid("unsupported format")),
            };
            match fmt.as_str() {
                "standard" => ok(u.hyphenated().to_string(), lua),
                "simple" => ok(u.simple().to_string(), lua),
                "urn" => ok(u.urn().to_string(), lua),
                _ => fail(lua, Error::invalid("unsupported format")),
            }
        })?,
    )?;
    Ok(t)
}
