//! `errors` (SPEC §5): structured error objects (userdata with `kind`, `message`,
//! `retryable`, `details`, `stack`), `errors.new`, `wrap`, `is`, `call_stack`, and the kind
//! constants. Error objects cross process boundaries as runtime errors.

use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{Error, ErrorKind};

use crate::convert::{from_value, to_value, Marks};

/// An error object as Lua sees it.
#[derive(Clone, Debug)]
pub struct LuaError {
    pub error: Error,
    pub stack: Option<String>,
}

impl LuaError {
    pub fn new(error: Error) -> LuaError {
        LuaError { error, stack: None }
    }
}

impl UserData for LuaError {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("kind", |_, e, ()| Ok(e.error.kind.as_str()));
        m.add_method("message", |_, e, ()| Ok(e.error.message.clone()));
        m.add_method("retryable", |_, e, ()| Ok(e.error.retryable));
        m.add_method("details", |lua, e, ()| match &e.error.details {
            Some(d) => from_value(lua, d),
            None => Ok(LuaValue::Nil),
        });
        m.add_method("stack", |_, e, ()| Ok(e.stack.clone()));
        m.add_meta_method(MetaMethod::ToString, |_, e, ()| Ok(e.error.message.clone()));
        m.add_meta_function(MetaMethod::Concat, |lua, (a, b): (LuaValue, LuaValue)| {
            let s = |v: &LuaValue| -> mlua::Result<String> {
                match v {
                    LuaValue::UserData(ud) => match ud.borrow::<LuaError>() {
                        Ok(e) => Ok(e.error.message.clone()),
                        Err(_) => Err(mlua::Error::runtime("attempt to concatenate a userdata value")),
                    },
                    other => match lua.coerce_string(other.clone())? {
                        Some(s) => Ok(s.to_string_lossy().to_string()),
                        None => Err(mlua::Error::runtime(format!("attempt to concatenate a {} value", other.type_name()))),
                    },
                }
            };
            Ok(s(&a)? + &s(&b)?)
        });
        m.add_meta_method(MetaMethod::Eq, |_, a, b: mlua::AnyUserData| {
            Ok(b.borrow::<LuaError>().map(|b| b.error == a.error).unwrap_or(false))
        });
    }
}

/// The error carried by a Lua error value: an error object as is, a string as Internal.
pub(crate) fn error_from_lua(v: &LuaValue) -> Error {
    match v {
        LuaValue::UserData(ud) => match ud.borrow::<LuaError>() {
            Ok(e) => e.error.clone(),
            Err(_) => Error::internal(format!("{v:?}")),
        },
        LuaValue::String(s) => Error::internal(s.to_string_lossy().to_string()),
        LuaValue::Table(t) => error_from_table(t),
        LuaValue::Error(e) => error_from_mlua(e),
        LuaValue::Nil => Error::internal("nil"),
        other => Error::internal(other.to_string().unwrap_or_else(|_| format!("({})", other.type_name()))),
    }
}

/// A table raised (`error({code = 1})`) or returned as an error (`return nil, {msg = "x"}`):
/// an error object keeping its fields. Its message is its `message`, `msg` or `error`
/// string (else the table written out), its kind and retryable its `kind` and `retryable`
/// when they are valid, and every field is in `details`.
pub(crate) fn error_from_table(t: &Table) -> Error {
    let text = |k: &str| match t.raw_get::<LuaValue>(k) {
        Ok(LuaValue::String(s)) => Some(s.to_string_lossy().to_string()),
        _ => None,
    };
    let details = to_value(&LuaValue::Table(t.clone()), &Marks::default(), "the error").ok();
    let message = text("message")
        .or_else(|| text("msg"))
        .or_else(|| text("error"))
        .unwrap_or_else(|| details.as_ref().map(|d| format!("{d:?}")).unwrap_or_else(|| "error".into()));
    let mut e = Error::new(text("kind").and_then(|k| ErrorKind::parse(&k)).unwrap_or(ErrorKind::Internal), message);
    if let Ok(LuaValue::Boolean(r)) = t.raw_get::<LuaValue>("retryable") {
        e.retryable = Some(r);
    }
    e.details = details;
    e
}

/// An mlua error raised out of Lua code, as a runtime error.
pub(crate) fn error_from_mlua(e: &mlua::Error) -> Error {
    match e {
        mlua::Error::MemoryError(_) => Error::limit_exceeded("memory limit exceeded").with_retryable(false),
        mlua::Error::CallbackError { cause, .. } => match cause.as_ref() {
            mlua::Error::BadArgument { .. } => Error::internal(super::plain_message(e)),
            inner => error_from_mlua(inner),
        },
        mlua::Error::ExternalError(x) => match x.downcast_ref::<LuaError>() {
            Some(le) => le.error.clone(),
            None => Error::internal(x.to_string()),
        },
        mlua::Error::SyntaxError { message: m, .. } => Error::internal(m.clone()),
        other => Error::internal(super::plain_message(other)),
    }
}

impl std::error::Error for LuaError {}

impl std::fmt::Display for LuaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error.message)
    }
}

/// The `errors` library table.
pub(crate) fn library(lua: &Lua, marks: std::sync::Arc<parking_lot::Mutex<Marks>>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for k in ErrorKind::ALL {
        let name = match k {
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::Invalid => "INVALID",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Canceled => "CANCELED",
            ErrorKind::Conflict => "CONFLICT",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::RateLimited => "RATE_LIMITED",
            ErrorKind::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorKind::Unknown => "UNKNOWN",
        };
        t.raw_set(name, k.as_str())?;
    }
    let m2 = marks.clone();
    t.raw_set(
        "new",
        lua.create_function(move |lua, arg: LuaValue| {
            let mut err = match &arg {
                LuaValue::String(s) => Error::new(ErrorKind::Unknown, s.to_string_lossy().to_string()),
                LuaValue::Table(spec) => {
                    let message: Option<String> = spec.get("message")?;
                    let kind: Option<String> = spec.get("kind")?;
                    let kind = match kind {
                        None => ErrorKind::Unknown,
                        Some(k) => ErrorKind::parse(&k).ok_or_else(|| mlua::Error::runtime(format!("errors.new: unknown kind '{k}'")))?,
                    };
                    let mut e = Error::new(kind, message.unwrap_or_default());
                    let retryable: Option<bool> = spec.get("retryable")?;
                    e.retryable = retryable;
                    let details: LuaValue = spec.get("details")?;
                    if !details.is_nil() {
                        let d = to_value(&details, &m2.lock(), "details").map_err(mlua::Error::runtime)?;
                        e.details = Some(d);
                    }
                    e
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad argument #1 to 'new' (string or table expected, got {})",
                        other.type_name()
                    )))
                }
            };
            if err.message.is_empty() {
                err.message = "error".into();
            }
            let mut le = LuaError::new(err);
            le.stack = stack_of(lua);
            lua.create_userdata(le)
        })?,
    )?;
    t.raw_set(
        "wrap",
        lua.create_function(|lua, (e, ctx): (LuaValue, String)| {
            let inner = error_from_lua(&e);
            let mut wrapped = inner.clone();
            wrapped.message = format!("{ctx}: {}", inner.message);
            let mut le = LuaError::new(wrapped);
            le.stack = stack_of(lua);
            lua.create_userdata(le)
        })?,
    )?;
    t.raw_set(
        "is",
        lua.create_function(|_, (e, kind): (LuaValue, String)| {
            Ok(match &e {
                LuaValue::UserData(ud) => ud.borrow::<LuaError>().map(|e| e.error.kind.as_str() == kind).unwrap_or(false),
                _ => false,
            })
        })?,
    )?;
    t.raw_set(
        "call_stack",
        lua.create_function(|_, e: LuaValue| {
            Ok(match &e {
                LuaValue::UserData(ud) => ud.borrow::<LuaError>().ok().and_then(|e| e.stack.clone()),
                _ => None,
            })
        })?,
    )?;
    Ok(t)
}

/// A short traceback of the calling Lua code (file:line per frame).
pub(crate) fn stack_of(lua: &Lua) -> Option<String> {
    let mut out = String::new();
    for level in 1..16 {
        let Some(line) = lua.inspect_stack(level, |d| {
            let src = d.source();
            let short = src.short_src.map(|s| s.to_string()).unwrap_or_default();
            let line = d.current_line().unwrap_or(0);
            if line == 0 || short == "[C]" {
                None
            } else {
                Some(format!("{short}:{line}"))
            }
        }) else {
            break;
        };
        if let Some(l) = line {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&l);
        }
    }
    (!out.is_empty()).then_some(out)
}
