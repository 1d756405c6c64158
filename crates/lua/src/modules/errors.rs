//! `errors` (SPEC §5): structured error objects (userdata with `kind`, `message`,
//! `retryable`, `details`, `stack`), `errors.new`, `wrap`, `is`, `call_stack`, and the kind
//! constants. Error objects cross process boundaries as runtime errors.

use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_runtime::{Error, ErrorKind, Value};

use crate::convert::{from_value, to_value, Marks};

/// An error object as Lua sees it.
#[derive(Clone, Debug)]
pub struct LuaError {
    pub error: Error,
    /// The context `errors.wrap` added (shown by `string.format("%s")` and `stack()`, not
    /// by `message()`).
    pub context: Option<String>,
    /// The Lua frames captured where the error was made, and those of the errors it wraps
    /// (outermost first).
    pub links: Vec<Link>,
}

/// One error of a wrap chain, as `stack()` and `call_stack()` show it.
#[derive(Clone, Debug, Default)]
pub struct Link {
    pub context: Option<String>,
    pub frames: std::sync::Arc<Vec<Frame>>,
}

/// A Lua frame captured with an error.
#[derive(Clone, Debug)]
pub struct Frame {
    pub source: String,
    pub line: i64,
    pub name: String,
    /// `"Lua"`, `"main"` or `"G"` (a global or field function, as Lua's `what`/`namewhat`).
    pub kind: &'static str,
}

impl LuaError {
    pub fn new(error: Error) -> LuaError {
        LuaError { error, context: None, links: Vec::new() }
    }

    /// A new error made by Lua code now: its frames captured.
    pub fn here(lua: &Lua, error: Error) -> LuaError {
        LuaError { error, context: None, links: vec![Link { context: None, frames: std::sync::Arc::new(capture(lua)) }] }
    }

    /// `"<context>: <message>"` for a wrapped error, else the message (`string.format("%s")`).
    pub fn full_text(&self) -> String {
        match &self.context {
            Some(c) => format!("{c}: {}", self.error.message),
            None => self.error.message.clone(),
        }
    }

    /// `stack()`: per link of the wrap chain, its context line, then its frames.
    pub fn stack_text(&self) -> Option<String> {
        let mut out = String::new();
        for link in &self.links {
            if let Some(c) = &link.context {
                out.push_str(c);
                out.push('\n');
            }
            for f in link.frames.iter() {
                out.push_str(&format!("  {}:{} ({})\n", f.source, f.line, f.name));
            }
        }
        (!out.is_empty()).then(|| out.trim_end().to_string())
    }
}

impl UserData for LuaError {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("kind", |lua, e, ()| lua.create_string(e.error.kind_str()));
        m.add_method("message", |_, e, ()| Ok(e.error.message.clone()));
        m.add_method("retryable", |_, e, ()| Ok(e.error.retryable));
        m.add_method("details", |lua, e, ()| match &e.error.details {
            Some(Value::Table(t)) if t.array.is_empty() && t.map.is_empty() => Ok(LuaValue::Nil),
            Some(d) => from_value(lua, d),
            None => Ok(LuaValue::Nil),
        });
        m.add_method("stack", |_, e, ()| Ok(e.stack_text()));
        m.add_meta_method(MetaMethod::ToString, |_, e, ()| Ok(e.error.message.clone()));
        // what `string.format("%s", e)` shows (raw.rs string_coerced)
        m.add_meta_method("__fulltext", |_, e, ()| Ok(e.full_text()));
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

/// `e` wrapped with `context` (SPEC §12.1.4): the wrapper's message is the inner error's
/// full text and the new context is kept beside it, with the call stack here. `plain` is
/// the error to wrap when `e` is not an error object.
pub(crate) fn wrap(lua: &Lua, e: &LuaValue, plain: Option<Error>, context: String) -> LuaError {
    let inner = match e {
        LuaValue::UserData(ud) => ud.borrow::<LuaError>().ok().map(|inner| {
            let mut err = inner.error.clone();
            err.message = inner.full_text();
            (err, inner.links.clone())
        }),
        _ => None,
    };
    let (error, mut links) = inner.unwrap_or_else(|| (plain.unwrap_or_else(|| error_from_lua(e)), Vec::new()));
    links.insert(0, Link { context: Some(context.clone()), frames: std::sync::Arc::new(capture(lua)) });
    LuaError { error, context: Some(context), links }
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
    let mut e = match text("kind") {
        Some(k) if !k.is_empty() => Error::with_kind_name(&k, message),
        _ => Error::new(ErrorKind::Internal, message),
    };
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

/// `details` as `errors.new` keeps them (SPEC §12.1.4): string keys only (recursively),
/// numbers as floats, arrays as maps without their integer keys; `None` when nothing is left.
fn clean_details(v: &Value) -> Option<Value> {
    match v {
        Value::Table(t) => {
            let mut out = wippy_runtime::Table::default();
            for (k, item) in &t.map {
                if let Value::Str(_) = k {
                    if let Some(item) = clean_details(item) {
                        out.map.push((k.clone(), item));
                    }
                }
            }
            Some(Value::Table(std::sync::Arc::new(out)))
        }
        Value::Int(i) => Some(Value::Float(*i as f64)),
        other => Some(other.clone()),
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
            let bad = |why: &str| mlua::Error::runtime(format!("bad argument #1 to 'new' ({why})"));
            let err = match &arg {
                LuaValue::String(s) => Error::new(ErrorKind::Unknown, s.to_string_lossy().to_string()),
                LuaValue::Table(spec) => {
                    let message = match spec.raw_get::<LuaValue>("message")? {
                        LuaValue::String(s) => s.to_string_lossy().to_string(),
                        LuaValue::Nil => return Err(bad("message field is required")),
                        _ => return Err(bad("message must be a string")),
                    };
                    // a kind that is not a string (or names no kind) is ignored, and so is a
                    // retryable that is not a boolean
                    let mut e = match spec.raw_get::<LuaValue>("kind")? {
                        // any string is a kind (Wippy's are strings): custom ones are kept
                        LuaValue::String(k) => Error::with_kind_name(&k.to_string_lossy(), message),
                        _ => Error::new(ErrorKind::Unknown, message),
                    };
                    if let LuaValue::Boolean(r) = spec.raw_get::<LuaValue>("retryable")? {
                        e.retryable = Some(r);
                    }
                    let details: LuaValue = spec.raw_get("details")?;
                    if let LuaValue::Table(_) = details {
                        let d = to_value(&details, &m2.lock(), "details").map_err(mlua::Error::runtime)?;
                        e.details = clean_details(&d).filter(|d| !matches!(d, Value::Table(t) if t.array.is_empty() && t.map.is_empty()));
                    }
                    e
                }
                _ => return Err(bad("expected string or table")),
            };
            lua.create_userdata(LuaError::here(lua, err))
        })?,
    )?;
    t.raw_set(
        "wrap",
        lua.create_function(|lua, (e, ctx): (LuaValue, LuaValue)| {
            let context = match &ctx {
                LuaValue::String(s) => s.to_string_lossy().to_string(),
                LuaValue::UserData(ud) if ud.borrow::<LuaError>().is_ok() => ud.borrow::<LuaError>()?.error.message.clone(),
                other => return Err(super::bad_arg(2, "wrap", "string", other)),
            };
            let inner = match &e {
                LuaValue::UserData(ud) if ud.borrow::<LuaError>().is_ok() => None,
                LuaValue::String(s) => Some(Error::new(ErrorKind::Unknown, s.to_string_lossy().to_string())),
                other => return Err(super::bad_arg(1, "wrap", "error or string", other)),
            };
            lua.create_userdata(wrap(lua, &e, inner, context))
        })?,
    )?;
    t.raw_set(
        "is",
        lua.create_function(|_, (e, kind): (LuaValue, String)| {
            Ok(match &e {
                LuaValue::UserData(ud) => ud.borrow::<LuaError>().map(|e| e.error.kind_str() == kind).unwrap_or(false),
                _ => false,
            })
        })?,
    )?;
    t.raw_set(
        "call_stack",
        lua.create_function(|lua, e: LuaValue| {
            let LuaValue::UserData(ud) = &e else { return Ok(LuaValue::Nil) };
            let Ok(le) = ud.borrow::<LuaError>() else { return Ok(LuaValue::Nil) };
            let Some(link) = le.links.first().filter(|l| !l.frames.is_empty()) else { return Ok(LuaValue::Nil) };
            let out = lua.create_table()?;
            out.raw_set("thread", format!("{:p}", std::sync::Arc::as_ptr(&link.frames)))?;
            let frames = lua.create_table()?;
            for (i, f) in link.frames.iter().enumerate() {
                let t = lua.create_table()?;
                t.raw_set("level", i as i64)?;
                t.raw_set("source", f.source.as_str())?;
                t.raw_set("line", f.line)?;
                t.raw_set("name", f.name.as_str())?;
                t.raw_set("type", f.kind)?;
                frames.raw_set(i + 1, t)?;
            }
            out.raw_set("frames", frames)?;
            Ok(LuaValue::Table(out))
        })?,
    )?;
    Ok(t)
}

/// The calling Lua code's frames, innermost first (C functions left out).
pub(crate) fn capture(lua: &Lua) -> Vec<Frame> {
    let mut out = Vec::new();
    for level in 1..32 {
        let Some(frame) = lua.inspect_stack(level, |d| {
            let src = d.source();
            let short = src.short_src.map(|s| s.to_string()).unwrap_or_default();
            let line = d.current_line().unwrap_or(0);
            if line == 0 || short == "[C]" {
                return None;
            }
            let names = d.names();
            let what = src.what;
            let kind = if what == "main" {
                "main"
            } else if matches!(names.name_what, Some("global") | Some("field") | Some("method")) {
                "G"
            } else {
                "Lua"
            };
            Some(Frame { source: short, line: line as i64, name: names.name.map(|n| n.to_string()).unwrap_or_default(), kind })
        }) else {
            break;
        };
        if let Some(f) = frame {
            out.push(f);
        }
    }
    out
}
