//! Lua values <-> runtime [`Value`]s: deep copies, cycles rejected, binary-safe strings,
//! integers kept integers, error objects kept. What cannot cross a process boundary
//! (functions, coroutines, channels, userdata other than errors) is refused with an error
//! naming the field.
//!
//! Must never: hand a Lua reference of one process to another (everything is copied).

use std::ffi::c_void;

use mlua::{Lua, Table as LuaTable, Value as LuaValue};
use wippy_runtime::{Table, Value, MAX_DEPTH};

use crate::modules::errors::LuaError;

/// Metatable identities of the prelude's process-local objects.
#[derive(Clone, Copy, Default)]
pub(crate) struct Marks {
    pub(crate) channel: usize,
    pub(crate) payload: usize,
    pub(crate) message: usize,
}

/// Convert one Lua value. `what` names it in errors ("payload 2", "argument 1").
pub(crate) fn to_value(v: &LuaValue, marks: &Marks, what: &str) -> Result<Value, String> {
    let mut path = Vec::new();
    let mut seen = Vec::new();
    convert(v, marks, &mut path, &mut seen).map_err(|(field, why)| {
        if field.is_empty() {
            format!("{what}: {why}")
        } else {
            format!("{what}: field '{field}': {why}")
        }
    })
}

type Fail = (String, String);

fn field_name(path: &[String]) -> String {
    path.join(".")
}

fn convert(v: &LuaValue, marks: &Marks, path: &mut Vec<String>, seen: &mut Vec<*const c_void>) -> Result<Value, Fail> {
    let refuse = |path: &Vec<String>, what: &str| Err((field_name(path), format!("{what} cannot be sent to another process")));
    match v {
        LuaValue::Nil => Ok(Value::Nil),
        LuaValue::Boolean(b) => Ok(Value::Bool(*b)),
        LuaValue::Integer(i) => Ok(Value::Int(*i)),
        LuaValue::Number(n) => Ok(Value::Float(*n)),
        LuaValue::String(s) => Ok(Value::bytes(&s.as_bytes())),
        LuaValue::Table(t) => {
            if let Some(mt) = t.metatable() {
                let p = mt.to_pointer() as usize;
                if p == marks.channel {
                    return refuse(path, "a channel");
                }
                if p == marks.message {
                    return refuse(path, "a message object (send its payload instead)");
                }
                if p == marks.payload {
                    let inner: LuaValue = t.raw_get(1).unwrap_or(LuaValue::Nil);
                    return convert(&inner, marks, path, seen);
                }
            }
            let ptr = t.to_pointer();
            if seen.contains(&ptr) {
                return Err((field_name(path), "the table contains a cycle".into()));
            }
            if seen.len() >= MAX_DEPTH {
                return Err((field_name(path), format!("tables nested deeper than {MAX_DEPTH}")));
            }
            seen.push(ptr);
            let r = convert_table(t, marks, path, seen);
            seen.pop();
            r
        }
        LuaValue::UserData(ud) => match ud.borrow::<LuaError>() {
            Ok(e) => Ok(Value::Error(std::sync::Arc::new(e.error.clone()))),
            // a channel is held as a userdata handle whose metatable's __name is "channel"
            // (written "channel: 0x..." by tostring; mlua's type_name only reads its own types)
            Err(_) if v.to_string().is_ok_and(|t| t.starts_with("channel: ")) => refuse(path, "a channel"),
            Err(_) => refuse(path, "a userdata value"),
        },
        LuaValue::Function(_) => refuse(path, "a function"),
        LuaValue::Thread(_) => refuse(path, "a coroutine"),
        LuaValue::LightUserData(_) => refuse(path, "a light userdata"),
        LuaValue::Error(e) => Ok(Value::Error(std::sync::Arc::new(wippy_runtime::Error::internal(e.to_string())))),
        _ => refuse(path, "this value"),
    }
}

fn convert_table(t: &LuaTable, marks: &Marks, path: &mut Vec<String>, seen: &mut Vec<*const c_void>) -> Result<Value, Fail> {
    let mut out = Table::new();
    let len = t.raw_len();
    let mut array_ok = true;
    if len > 0 {
        out.array.reserve(len);
        for i in 1..=len {
            let v: LuaValue = t.raw_get(i).map_err(|e| (field_name(path), e.to_string()))?;
            if v.is_nil() {
                array_ok = false;
                out.array.clear();
                break;
            }
            path.push(i.to_string());
            let cv = convert(&v, marks, path, seen);
            path.pop();
            out.array.push(cv?);
        }
    }
    let skip = if array_ok { len as i64 } else { 0 };
    for pair in t.clone().pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| (field_name(path), e.to_string()))?;
        if let LuaValue::Integer(i) = k {
            if i >= 1 && i <= skip {
                continue;
            }
        }
        let key_name = match &k {
            LuaValue::String(s) => s.to_string_lossy().to_string(),
            LuaValue::Integer(i) => i.to_string(),
            LuaValue::Number(n) => n.to_string(),
            LuaValue::Boolean(b) => b.to_string(),
            _ => "<key>".to_string(),
        };
        path.push(key_name);
        let kv = convert(&k, marks, path, seen);
        let vv = kv.and_then(|kv| convert(&v, marks, path, seen).map(|vv| (kv, vv)));
        path.pop();
        let (kv, vv) = vv?;
        out.map.push((kv, vv));
    }
    Ok(Value::table(out))
}

/// A runtime value as a fresh Lua value (`raw::push`, the one encoder, on a stack of its own).
pub(crate) fn from_value(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    crate::vm::raw::to_lua(lua, v)
}
