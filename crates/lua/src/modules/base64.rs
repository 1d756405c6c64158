//! `base64` (Wippy's `en/lua/data/base64.md`): standard RFC 4648 Base64 with padding.
//! `encode(data)` and `decode(data)` answer `string, nil`; input that is not a string (or a
//! number, which Lua turns into one) or is not valid Base64 is `nil, err` (Invalid), never a
//! raise. An empty input is an empty string both ways.

use base64::engine::general_purpose::STANDARD;
use base64::{DecodeError, Engine};
use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::Error;

use super::{fail, or_fail};

/// A string argument's bytes: a string, or a number as Lua prints it.
pub(crate) fn bytes_arg(v: &LuaValue, what: &str) -> Result<Vec<u8>, Error> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(i) => Ok(i.to_string().into_bytes()),
        LuaValue::Number(n) => Ok(mlua::Value::Number(*n).to_string().map(String::into_bytes).unwrap_or_default()),
        other => Err(Error::invalid(format!("{what} must be a string, got {}", other.type_name()))),
    }
}

/// The decoder's complaint as Go's `encoding/base64` words it (the byte offset it stopped at).
fn decode_error(e: DecodeError, len: usize) -> Error {
    let at = match e {
        DecodeError::InvalidByte(at, _) | DecodeError::InvalidLastSymbol(at, _) => at,
        DecodeError::InvalidLength(n) => n,
        DecodeError::InvalidPadding => len,
    };
    Error::invalid(format!("illegal base64 data at input byte {at}"))
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "encode",
        lua.create_function(|lua, v: LuaValue| match bytes_arg(&v, "input") {
            Ok(b) => Ok((LuaValue::String(lua.create_string(STANDARD.encode(b))?), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        })?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(|lua, v: LuaValue| {
            let b = or_fail!(lua, bytes_arg(&v, "input"));
            match STANDARD.decode(&b) {
                Ok(out) => Ok((LuaValue::String(lua.create_string(out)?), LuaValue::Nil)),
                Err(e) => fail(lua, decode_error(e, b.len())),
            }
        })?,
    )?;
    Ok(t)
}
