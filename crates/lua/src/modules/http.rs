//! `http` (SPEC §11.3): the request and response of the HTTP call this process answers.
//! The exchange comes attached to the handler's process (`Spawn::attach`, wippy-http);
//! any other process gets `nil, err`. What waits (reading the body, a write to a slow
//! client) starts a command and the prelude's wrapper waits for it (`R.http_async`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mlua::{Lua, Table, UserData, UserDataMethods, Value as LuaValue};
use wippy_http::exchange::Write;
use wippy_http::Exchange;
use wippy_runtime::{Command, Error, ErrorKind, Value};

use super::{bad_arg, fail};
use crate::current;
use crate::vm::objects::{Data, Fast, ObjectType};

const STATUS: &[(&str, i64)] = &[
    ("OK", 200), ("CREATED", 201), ("ACCEPTED", 202), ("NO_CONTENT", 204), ("PARTIAL_CONTENT", 206),
    ("MOVED_PERMANENTLY", 301), ("FOUND", 302), ("SEE_OTHER", 303), ("NOT_MODIFIED", 304), ("TEMPORARY_REDIRECT", 307), ("PERMANENT_REDIRECT", 308),
    ("BAD_REQUEST", 400), ("UNAUTHORIZED", 401), ("PAYMENT_REQUIRED", 402), ("FORBIDDEN", 403), ("NOT_FOUND", 404), ("METHOD_NOT_ALLOWED", 405),
    ("NOT_ACCEPTABLE", 406), ("CONFLICT", 409), ("GONE", 410), ("UNPROCESSABLE", 422), ("TOO_MANY_REQUESTS", 429),
    ("INTERNAL_ERROR", 500), ("INTERNAL_SERVER_ERROR", 500), ("NOT_IMPLEMENTED", 501), ("BAD_GATEWAY", 502), ("SERVICE_UNAVAILABLE", 503),
    ("GATEWAY_TIMEOUT", 504), ("VERSION_NOT_SUPPORTED", 505),
];

fn exchange() -> mlua::Result<Option<Arc<Exchange>>> {
    current::state(|st| exchange_of(st))
}

/// The HTTP exchange a request handler process was given, if this process is one.
fn exchange_of(st: &current::ProcState) -> Option<Arc<Exchange>> {
    st.attachment.as_deref().cloned().and_then(|a| a.downcast::<Exchange>().ok())
}

fn no_context(lua: &Lua) -> mlua::Result<(LuaValue, LuaValue)> {
    fail(lua, Error::internal("no HTTP request context found"))
}

fn err_value(lua: &Lua, e: Error) -> mlua::Result<LuaValue> {
    Ok(fail(lua, e)?.1)
}

/// Start a command that waits outside the process; its ID.
fn start(fut: impl std::future::Future<Output = Result<Value, Error>> + Send + 'static) -> mlua::Result<u64> {
    current::with(|cx, _| match cx.try_command(Command::Task(Box::pin(fut))) {
        Ok(id) => Ok(id.0),
        Err(e) => Err(mlua::Error::external(super::errors::LuaError::new(e))),
    })
}

struct Request {
    ex: Arc<Exchange>,
    max_body: u64,
    timeout: Option<Duration>,
}

struct Response {
    ex: Arc<Exchange>,
}

fn opt_str(v: Option<&hyper::header::HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A query key or value decoded (`+` a space, `%XX` a byte); text that is not UTF-8 once
/// decoded stays as written.
fn decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(wippy_http::client::decode_query(s).unwrap_or_else(|_| s.to_string()))
}

/// The query's pairs as written (not decoded).
fn raw_pairs(ex: &Exchange) -> impl Iterator<Item = (&str, &str)> {
    let q = ex.uri.query().unwrap_or("");
    q.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The query's pairs, decoded.
fn query_pairs(ex: &Exchange) -> Vec<(String, String)> {
    raw_pairs(ex).map(|(k, v)| (decode(k).into_owned(), decode(v).into_owned())).collect()
}

/// The decoded value of the first pair whose decoded key is `key` (one lookup decodes
/// nothing but the keys that need it and the value found).
fn query_value(ex: &Exchange, key: &str) -> Option<String> {
    raw_pairs(ex).find(|(k, _)| decode(k) == key).map(|(_, v)| decode(v).into_owned())
}

/// Every value of header `name`, joined with ", " (nil when it has none).
fn header_value(ex: &Exchange, name: &str) -> Option<String> {
    let mut vals = ex.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = vals.next()?;
    Some(vals.fold(first.to_string(), |mut all, v| {
        all.push_str(", ");
        all.push_str(v);
        all
    }))
}

/// The request's methods (`m`: its type's `__index`, see [`Methods`]).
fn request_methods(m: &Methods<Request>) -> mlua::Result<()> {
    m.hot("method", Fast::Text(fast_method), |_, r, ()| Ok(r.ex.method.as_str().to_string()))?;
    m.hot("path", Fast::Text(fast_path), |_, r, ()| Ok(r.ex.uri.path().to_string()))?;
    m.hot("query", Fast::TextOf(fast_query), |_, r, key: mlua::LuaString| Ok(query_value(&r.ex, &key.to_str()?)))?;
    m.add("query_params", |lua, r, ()| {
        let t = lua.create_table()?;
        for (k, v) in query_pairs(&r.ex) {
            let old: Option<String> = t.raw_get(k.as_str())?;
            t.raw_set(k.as_str(), match old {
                Some(o) => format!("{o},{v}"),
                None => v,
            })?;
        }
        Ok(t)
    })?;
    m.hot("header", Fast::TextOf(fast_request_header), |_, r, name: String| Ok(header_value(&r.ex, &name)))?;
    m.add("headers", |lua, r, ()| {
        let t = lua.create_table()?;
        for name in r.ex.headers.keys() {
            let vals: Vec<&str> = r.ex.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            t.raw_set(wippy_http::client::canonical(name.as_str()), vals.join(", "))?;
        }
        Ok(t)
    })?;
    m.hot("content_type", Fast::Text(fast_request_content_type), |_, r, ()| Ok(opt_str(r.ex.headers.get(hyper::header::CONTENT_TYPE))))?;
    m.add("content_length", |_, r, ()| {
        Ok(opt_str(r.ex.headers.get(hyper::header::CONTENT_LENGTH)).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0))
    })?;
    m.add("host", |_, r, ()| Ok(opt_str(r.ex.headers.get(hyper::header::HOST)).or_else(|| r.ex.uri.host().map(str::to_string))))?;
    m.add("remote_addr", |_, r, ()| Ok(r.ex.remote.to_string()))?;
    m.add("has_body", |_, r, ()| {
        let n = opt_str(r.ex.headers.get(hyper::header::CONTENT_LENGTH)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(n > 0 || r.ex.headers.contains_key(hyper::header::TRANSFER_ENCODING))
    })?;
    m.add("accepts", |_, r, ct: String| {
        let a = opt_str(r.ex.headers.get(hyper::header::ACCEPT)).unwrap_or_default();
        Ok(a.contains(&ct) || a.contains("*/*"))
    })?;
    m.add("is_content_type", |_, r, prefix: String| {
        Ok(opt_str(r.ex.headers.get(hyper::header::CONTENT_TYPE)).is_some_and(|c| c.starts_with(&prefix)))
    })?;
    m.hot("param", Fast::TextOf(fast_param), |lua, r, name: String| match &r.ex.params {
        Some(p) => match p.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => Ok((LuaValue::String(lua.create_string(v)?), LuaValue::Nil)),
            None => Ok((LuaValue::Nil, LuaValue::Nil)),
        },
        None => fail(lua, Error::internal("no route parameters: not a routed call")),
    })?;
    m.add("params", |lua, r, ()| match &r.ex.params {
        Some(p) => {
            let t = lua.create_table()?;
            for (k, v) in p {
                t.raw_set(k.as_str(), v.as_str())?;
            }
            Ok((LuaValue::Table(t), LuaValue::Nil))
        }
        None => fail(lua, Error::internal("no route parameters: not a routed call")),
    })?;
    // the waiting halves (the prelude's `body`, `body_json` wait for the command)
    m.add("_body", |lua, r, json: bool| {
        let fut = match r.ex.read_body(r.max_body) {
            Ok(f) => f,
            Err(e) => return Ok((LuaValue::Nil, err_value(lua, e)?)),
        };
        let timeout = r.timeout;
        let id = start(async move {
            let body = reading(timeout, fut).await?;
            if !json {
                return Ok(body);
            }
            let bytes = body.as_bytes().unwrap_or(&[]);
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(j) => Ok(wippy_http::json::from_json(&j)),
                Err(e) => Err(Error::invalid(format!("request body is not valid JSON: {e}"))),
            }
        })?;
        Ok((LuaValue::Integer(id as i64), LuaValue::Nil))
    })?;
    // req:stream(): a handle the prelude's stream object reads through
    m.add("_stream", |lua, r, ()| match r.ex.stream_body(r.max_body) {
        Ok(s) => Ok((LuaValue::UserData(lua.create_userdata(BodyStream { s, timeout: r.timeout })?), LuaValue::Nil)),
        Err(e) => Ok((LuaValue::Nil, err_value(lua, e)?)),
    })?;
    // req:parse_multipart(max_memory): a command whose value the prelude dresses as files
    m.add("_multipart", |lua, r, max_memory: Option<i64>| {
        let max_memory = max_memory.filter(|n| *n > 0).map_or(DEFAULT_MULTIPART_MEMORY, |n| n as u64);
        let fut = match r.ex.read_multipart(r.max_body, max_memory) {
            Ok(f) => f,
            Err(e) => return Ok((LuaValue::Nil, err_value(lua, e)?)),
        };
        let timeout = r.timeout;
        let id = start(reading(timeout, fut))?;
        Ok((LuaValue::Integer(id as i64), LuaValue::Nil))
    })?;
    Ok(())
}

/// Reading the request body, within the `timeout` of `http.request{timeout = ms}` if set.
async fn reading<T>(timeout: Option<Duration>, read: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match timeout {
        Some(t) => tokio::time::timeout(t, read).await.map_err(|_| Error::new(ErrorKind::Internal, "timed out reading the request body"))?,
        None => read.await,
    }
}

/// SPEC §11.3 `parse_multipart`'s default `max_memory`: 32 MiB.
const DEFAULT_MULTIPART_MEMORY: u64 = 32 << 20;

/// The request body being read in pieces (behind the prelude's `stream` object).
struct BodyStream {
    s: Arc<wippy_http::exchange::BodyStream>,
    timeout: Option<Duration>,
}

impl UserData for BodyStream {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        // a read of up to n bytes as a command: a chunk, or nil at the end
        m.add_method("_read", |lua, b, n: i64| {
            let (s, timeout) = (b.s.clone(), b.timeout);
            let n = n.clamp(1, 16 << 20) as usize;
            let id = start(async move {
                let got = reading(timeout, s.read(n)).await?;
                Ok(got.map_or(Value::Nil, |b| Value::Str(Arc::from(&b[..]))))
            });
            match id {
                Ok(id) => Ok((LuaValue::Integer(id as i64), LuaValue::Nil)),
                Err(e) => Ok((LuaValue::Nil, LuaValue::String(lua.create_string(e.to_string())?))),
            }
        });
        m.add_method("close", |_, b, ()| {
            b.s.close();
            Ok(())
        });
    }
}

/// The methods of one object type (see `vm::objects`: plain userdata blocks, methods as
/// C closures), given here the Rust side `get` makes of an object for each call.
struct Methods<'a, T> {
    lua: &'a Lua,
    ty: &'a ObjectType,
    get: fn(Data) -> mlua::Result<T>,
}

impl<T: 'static> Methods<'_, T> {
    /// `f` as the Rust method `vm::objects` calls with the object's words.
    fn on<A, R>(&self, f: impl Fn(&Lua, &T, A) -> mlua::Result<R> + Send + 'static) -> impl Fn(&Lua, Data, A) -> mlua::Result<R> + Send + 'static {
        let get = self.get;
        move |lua, d, a| f(lua, &get(d)?, a)
    }

    fn add<A, R>(&self, name: &str, f: impl Fn(&Lua, &T, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.ty.method(self.lua, name, self.on(f))
    }

    /// A method whose common case `fast` does (see `vm::objects::Fast`).
    fn hot<A, R>(&self, name: &str, fast: Fast, f: impl Fn(&Lua, &T, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.ty.hot(self.lua, name, fast, self.on(f))
    }

    fn meta<A, R>(&self, name: &str, f: impl Fn(&Lua, &T, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.ty.meta(self.lua, name, self.on(f))
    }
}

/// The exchange the running process answers (an object exists only in a handler process).
fn own_exchange() -> mlua::Result<Arc<Exchange>> {
    exchange()?.ok_or_else(|| mlua::Error::runtime("no HTTP request context found"))
}

/// A request object's words: `[max_body, timeout in ms (0: none)]`.
fn request_of(d: Data) -> mlua::Result<Request> {
    Ok(Request { ex: own_exchange()?, max_body: d[0], timeout: (d[1] > 0).then(|| Duration::from_millis(d[1])) })
}

fn response_of(_: Data) -> mlua::Result<Response> {
    Ok(Response { ex: own_exchange()? })
}

/// `f` on the exchange of the running handler process (`None` outside one).
fn on_exchange<R>(f: impl FnOnce(&Exchange) -> Option<R>) -> Option<R> {
    current::state(|st| st.attachment.as_deref().and_then(|a| a.downcast_ref::<Exchange>()).and_then(f)).ok().flatten()
}

/// Whether the running process answers an HTTP request.
fn in_handler() -> bool {
    on_exchange(|_| Some(())).is_some()
}

// The fast paths of the methods every handler calls (`None`: the mlua method answers;
// the setters change nothing when they refuse, so it meets the same refusal and words it).
fn fast_method() -> Option<Option<String>> {
    on_exchange(|ex| Some(Some(ex.method.as_str().to_string())))
}
fn fast_path() -> Option<Option<String>> {
    on_exchange(|ex| Some(Some(ex.uri.path().to_string())))
}
fn fast_request_content_type() -> Option<Option<String>> {
    on_exchange(|ex| Some(opt_str(ex.headers.get(hyper::header::CONTENT_TYPE))))
}
fn fast_request_header(name: &str) -> Option<Option<String>> {
    on_exchange(|ex| Some(header_value(ex, name)))
}
/// (no route parameters: the slow path words the error)
fn fast_param(name: &str) -> Option<Option<String>> {
    on_exchange(|ex| ex.params.as_ref().map(|p| p.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())))
}
fn fast_query(key: &str) -> Option<Option<String>> {
    on_exchange(|ex| Some(query_value(ex, key)))
}
fn fast_status(code: i64) -> Option<()> {
    on_exchange(|ex| ex.set_status(code).ok())
}
fn fast_content_type(ct: &str) -> Option<()> {
    on_exchange(|ex| ex.set_named_header(hyper::header::CONTENT_TYPE, ct).ok())
}
fn fast_header(name: &str, value: &str) -> Option<()> {
    on_exchange(|ex| ex.set_header(name, value).ok())
}
/// JSON text (vm::json) into a buffered answer
fn fast_write_json(text: &[u8]) -> Option<()> {
    on_exchange(|ex| {
        ex.default_content_type("application/json");
        ex.write_buffered(text).then_some(())
    })
}
/// a buffered answer only: a streaming one's write may wait
fn fast_write(data: &[u8]) -> Option<()> {
    on_exchange(|ex| ex.write_buffered(data).then_some(()))
}

fn write_result(lua: &Lua, w: Write) -> mlua::Result<(LuaValue, LuaValue)> {
    match w {
        Write::Done => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
        Write::Wait(fut) => Ok((LuaValue::Boolean(false), LuaValue::Integer(start(fut)? as i64))),
    }
    .or_else(|e: mlua::Error| Ok((LuaValue::Nil, LuaValue::String(lua.create_string(e.to_string())?))))
}

/// The response's methods (`m`: its type's `__index`, see [`Methods`]).
fn response_methods(m: &Methods<Response>) -> mlua::Result<()> {
    m.hot("set_header", Fast::SetText2(fast_header), |lua, r, (name, value): (String, LuaValue)| {
        let value = match &value {
            LuaValue::String(s) => s.to_str()?.to_string(),
            LuaValue::Integer(i) => i.to_string(),
            LuaValue::Number(n) => n.to_string(),
            other => return Err(bad_arg(2, "set_header", "string", other)),
        };
        r.ex.set_header(&name, &value).map_or_else(|e| err_value(lua, e), |_| Ok(LuaValue::Nil))
    })?;
    m.hot("set_content_type", Fast::SetText(fast_content_type), |lua, r, ct: mlua::LuaString| {
        r.ex.set_named_header(hyper::header::CONTENT_TYPE, &ct.to_str()?).map_or_else(|e| err_value(lua, e), |_| Ok(LuaValue::Nil))
    })?;
    m.hot("set_status", Fast::SetInt(fast_status), |lua, r, code: LuaValue| {
        let code = match code {
            LuaValue::Integer(i) => i,
            LuaValue::Number(n) if n.fract() == 0.0 => n as i64,
            other => return Err(bad_arg(1, "set_status", "integer", &other)),
        };
        r.ex.set_status(code).map_or_else(|e| err_value(lua, e), |_| Ok(LuaValue::Nil))
    })?;
    m.hot("_write", Fast::Put(fast_write), |lua, r, data: LuaValue| {
        let w = match &data {
            LuaValue::String(s) => r.ex.write_slice(&s.as_bytes()),
            LuaValue::Integer(_) | LuaValue::Number(_) => r.ex.write(Bytes::from(data.to_string()?)),
            other => return Err(bad_arg(1, "write", "string", other)),
        };
        write_result(lua, w)
    })?;
    m.add("set_transfer", |lua, r, mode: String| {
        if !r.ex.head_open() {
            return err_value(lua, Error::invalid("cannot set transfer mode after headers are sent"));
        }
        let set = |k: &str, v: &str| r.ex.set_header(k, v);
        let res = match mode.as_str() {
            "chunked" => set("Cache-Control", "no-cache"),
            "sse" => set("Content-Type", "text/event-stream").and_then(|_| set("Cache-Control", "no-cache")),
            other => Err(Error::invalid(format!("unknown transfer mode {other:?} (chunked or sse)"))),
        };
        res.map_or_else(|e| err_value(lua, e), |_| Ok(LuaValue::Nil))
    })?;
    m.add("flush", |lua, r, ()| write_result(lua, r.ex.flush()).map(|_| LuaValue::Nil))?;
    m.hot("_write_json", Fast::Json(fast_write_json), |lua, r, v: LuaValue| {
        let text = match super::json::to_json(&v, 0) {
            Ok(j) => j.to_string(),
            Err(m) => return Ok((LuaValue::Nil, err_value(lua, Error::invalid(m))?)),
        };
        r.ex.default_content_type("application/json");
        write_result(lua, r.ex.write(Bytes::from(text)))
    })?;
    m.add("_write_event", |lua, r, ev: LuaValue| {
        let LuaValue::Table(t) = &ev else { return Ok((LuaValue::Nil, err_value(lua, Error::invalid("write_event needs a table {name, data}"))?)) };
        let name: LuaValue = t.raw_get("name")?;
        let data: LuaValue = t.raw_get("data")?;
        let (LuaValue::String(name), false) = (&name, data.is_nil()) else {
            return Ok((LuaValue::Nil, err_value(lua, Error::invalid("write_event needs a name and data"))?));
        };
        let json = match super::json::to_json(&data, 0) {
            Ok(j) => j.to_string(),
            Err(m) => return Ok((LuaValue::Nil, err_value(lua, Error::invalid(m))?)),
        };
        if r.ex.head_open() {
            let _ = r.ex.set_header("Content-Type", "text/event-stream");
            let _ = r.ex.set_header("Cache-Control", "no-cache");
        }
        let frame = format!("event: {}\ndata: {json}\n\n", name.to_str()?);
        match r.ex.write(Bytes::from(frame)) {
            Write::Done => write_result(lua, r.ex.flush()),
            w => write_result(lua, w),
        }
    })?;
    Ok(())
}

pub(crate) fn library(lua: &Lua, r: &Table) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let methods = lua.create_table()?;
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        methods.raw_set(m, m)?;
    }
    t.raw_set("METHOD", methods)?;
    let status = lua.create_table()?;
    for (k, v) in STATUS {
        status.raw_set(*k, *v)?;
    }
    t.raw_set("STATUS", status)?;
    let content = lua.create_table()?;
    for (k, v) in [("JSON", "application/json"), ("FORM", "application/x-www-form-urlencoded"), ("MULTIPART", "multipart/form-data"), ("TEXT", "text/plain"), ("STREAM", "application/octet-stream")] {
        content.raw_set(k, v)?;
    }
    t.raw_set("CONTENT", content)?;
    let transfer = lua.create_table()?;
    transfer.raw_set("CHUNKED", "chunked")?;
    transfer.raw_set("SSE", "sse")?;
    t.raw_set("TRANSFER", transfer)?;
    let errs = lua.create_table()?;
    for k in ["PARSE_FAILED", "INVALID_STATE", "WRITE_FAILED", "STREAM_ERROR"] {
        errs.raw_set(k, k)?;
    }
    t.raw_set("ERROR", errs)?;
    // the two object types (vm::objects: no finalizer, methods as C closures)
    let (req_ty, res_ty) = (ObjectType::new(lua, "Request")?, ObjectType::new(lua, "Response")?);
    let req = Methods { lua, ty: &req_ty, get: request_of };
    request_methods(&req)?;
    req.meta("__tostring", |_, r, ()| Ok(format!("request {} {}", r.ex.method, r.ex.uri.path())))?;
    let res = Methods { lua, ty: &res_ty, get: response_of };
    response_methods(&res)?;
    res.meta("__tostring", |_, _, ()| Ok("response"))?;
    // http.request(opts): the options read by Rust (or nil, err outside a handler), except
    // when none are given inside one
    let opts = lua.create_function(|lua, opts: LuaValue| {
        if !in_handler() {
            return no_context(lua);
        }
        let (mut max_body, mut timeout_ms) = (wippy_http::server::DEFAULT_MAX_BODY, 0u64);
        match &opts {
            LuaValue::Nil => {}
            LuaValue::Table(o) => {
                if let Some(ms) = o.raw_get::<Option<i64>>("timeout")? {
                    if ms > 0 {
                        timeout_ms = ms as u64;
                    }
                }
                if let Some(n) = o.raw_get::<Option<i64>>("max_body")? {
                    if n > 0 {
                        max_body = n as u64;
                    }
                }
            }
            other => return Err(bad_arg(1, "request", "table", other)),
        }
        Ok((LuaValue::Integer(max_body as i64), LuaValue::Integer(timeout_ms as i64)))
    })?;
    let defaults = |given: bool| (!given && in_handler()).then_some([wippy_http::server::DEFAULT_MAX_BODY, 0]);
    t.raw_set("request", req_ty.constructor(lua, defaults, opts)?)?;
    let outside = lua.create_function(|lua, ()| no_context(lua))?;
    t.raw_set("response", res_ty.constructor(lua, |_| in_handler().then_some([0, 0]), outside)?)?;
    let (req_index, res_index) = (req_ty.index, res_ty.index);
    // a handler's returned value, written as the stack encoder writes JSON (the runtime's
    // Value encoder answers what it declines, at the call's end)
    r.raw_set("http_return", crate::vm::json::encode_into(lua, |text| on_exchange(|ex| Some(ex.answer_json(text))).unwrap_or(false))?)?;
    r.raw_set(
        "main_done",
        lua.create_function(|_, vals: mlua::MultiValue| {
            current::state(|st| match exchange_of(st) {
                Some(ex) => {
                    ex.finish(&crate::process::returned_result(vals, &st.shard.marks));
                    true
                }
                None => false,
            })
        })?,
    )?;
    // the methods written in Lua (they wait), which the prelude hands over once
    r.raw_set(
        "http_async",
        lua.create_function(move |_, t: Table| {
            for pair in t.pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair?;
                req_index.raw_set(k.clone(), v.clone())?;
                res_index.raw_set(k, v)?;
            }
            Ok(())
        })?,
    )?;
    Ok(t)
}
