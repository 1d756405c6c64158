//! `http_client` (SPEC §11.5): the Rust halves. `_start(method, url, opts, in_batch)`
//! checks the call and starts the request as a command (the prelude waits for it and
//! wraps a streamed body); `encode_uri`/`decode_uri` answer at once. Security: the
//! `http_client.request` action on the URL, `http_client.private_ip` for a loopback or
//! private literal address or `localhost`, `http_client.unix_socket` on the socket's path and
//! `http_client.insecure_tls` on the URL for a request that skips TLS verification.

use std::time::Duration;

use mlua::{Lua, Table, Value as LuaValue};
use wippy_http::client::{self, Req};
use wippy_runtime::{Command, Error};

use super::{bad_arg, fail, or_fail};
use crate::current;

fn string_of(v: &LuaValue) -> mlua::Result<Option<String>> {
    Ok(match v {
        LuaValue::String(s) => Some(s.to_str()?.to_string()),
        LuaValue::Integer(i) => Some(i.to_string()),
        LuaValue::Number(n) => Some(n.to_string()),
        LuaValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    })
}

fn pairs_of(t: &Table) -> mlua::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in t.clone().pairs::<LuaValue, LuaValue>() {
        let (k, v) = p?;
        if let (Some(k), Some(v)) = (string_of(&k)?, string_of(&v)?) {
            out.push((k, v));
        }
    }
    out.sort();
    Ok(out)
}

/// The request an options table describes.
fn build(method: &str, url: &str, opts: &LuaValue) -> mlua::Result<Result<Req, Error>> {
    let mut req = Req { method: method.to_string(), url: url.to_string(), ..Req::default() };
    let o = match opts {
        LuaValue::Nil => return Ok(Ok(req)),
        LuaValue::Table(t) => t,
        other => return Err(bad_arg(2, "request", "table", other)),
    };
    if let LuaValue::Table(q) = o.raw_get::<LuaValue>("query")? {
        let q: Vec<String> = pairs_of(&q)?.iter().map(|(k, v)| format!("{}={}", client::encode_query(k), client::encode_query(v))).collect();
        if !q.is_empty() {
            req.url.push(if req.url.contains('?') { '&' } else { '?' });
            req.url.push_str(&q.join("&"));
        }
    }
    if let LuaValue::Table(h) = o.raw_get::<LuaValue>("headers")? {
        req.headers = pairs_of(&h)?;
    }
    if let LuaValue::Table(c) = o.raw_get::<LuaValue>("cookies")? {
        let c: Vec<String> = pairs_of(&c)?.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !c.is_empty() {
            req.headers.push(("Cookie".into(), c.join("; ")));
        }
    }
    match o.raw_get::<LuaValue>("body")? {
        LuaValue::Nil => {}
        LuaValue::String(s) => req.body = Some(s.as_bytes().to_vec()),
        other => return Ok(Err(Error::invalid(format!("body must be a string, got {}", super::lua_type(&other))))),
    }
    let files = match o.raw_get::<LuaValue>("files")? {
        LuaValue::Nil => None,
        LuaValue::Table(t) => Some(t),
        other => return Ok(Err(Error::invalid(format!("files must be an array of tables, got {}", super::lua_type(&other))))),
    };
    if let LuaValue::Table(f) = o.raw_get::<LuaValue>("form")? {
        if files.is_some() {
            // with files, the form's fields are text parts of the multipart body
            req.form_fields = pairs_of(&f)?;
        } else {
            let body: Vec<String> = pairs_of(&f)?.iter().map(|(k, v)| format!("{}={}", client::encode_query(k), client::encode_query(v))).collect();
            req.body = Some(body.join("&").into_bytes());
            if !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                req.headers.push(("Content-Type".into(), "application/x-www-form-urlencoded".into()));
            }
        }
    }
    if let Some(files) = files {
        for (i, f) in files.sequence_values::<LuaValue>().enumerate() {
            let LuaValue::Table(f) = f? else { return Ok(Err(Error::invalid(format!("files[{}] must be a table {{name, filename, content}}", i + 1)))) };
            let text = |k: &str| -> mlua::Result<Option<String>> { string_of(&f.raw_get::<LuaValue>(k)?) };
            let Some(field) = text("name")? else { return Ok(Err(Error::invalid(format!("files[{}]: name (the form field) is required", i + 1)))) };
            let content = match f.raw_get::<LuaValue>("content")? {
                // (a `reader` was read into `content` by the prelude, in the calling process)
                LuaValue::String(s) => s.as_bytes().to_vec(),
                _ => return Ok(Err(Error::invalid(format!("files[{}]: content (a string) or reader is required", i + 1)))),
            };
            req.files.push(client::FilePart { filename: text("filename")?.unwrap_or_else(|| field.clone()), field, content, content_type: text("content_type")?.unwrap_or_default() });
        }
    }
    match o.raw_get::<LuaValue>("unix_socket")? {
        LuaValue::Nil => {}
        LuaValue::String(p) if !p.as_bytes().is_empty() => req.unix_socket = Some(p.to_str()?.to_string()),
        _ => return Ok(Err(Error::invalid("unix_socket must be a socket path"))),
    }
    if let LuaValue::Table(a) = o.raw_get::<LuaValue>("auth")? {
        let user: Option<String> = a.raw_get("user")?;
        let pass: Option<String> = a.raw_get("pass")?;
        if let Some(u) = user {
            req.basic_auth = Some((u, pass));
        }
    }
    match o.raw_get::<LuaValue>("timeout")? {
        LuaValue::Nil => {}
        LuaValue::Integer(s) if s > 0 => req.timeout = Some(Duration::from_secs(s as u64)),
        LuaValue::Number(s) if s > 0.0 => req.timeout = Some(Duration::from_secs_f64(s)),
        LuaValue::String(s) => match wippy_registry::parse_duration(&s.to_str()?) {
            Ok(ns) if ns > 0 => req.timeout = Some(Duration::from_nanos(ns as u64)),
            _ => return Ok(Err(Error::invalid(format!("invalid timeout {:?}", s.to_str()?.to_string())))),
        },
        _ => {}
    }
    match o.raw_get::<LuaValue>("tls")? {
        LuaValue::Nil => {}
        LuaValue::Table(t) => {
            let text = |k: &str| -> mlua::Result<Option<String>> { Ok(string_of(&t.raw_get::<LuaValue>(k)?)?.filter(|s| !s.is_empty())) };
            let tls = wippy_http::tls::ClientTls {
                cert: text("cert")?,
                key: text("key")?,
                ca: text("ca")?,
                server_name: text("server_name")?,
                insecure_skip_verify: t.raw_get::<Option<bool>>("insecure_skip_verify")?.unwrap_or(false),
            };
            if tls.cert.is_some() != tls.key.is_some() {
                return Ok(Err(Error::invalid("tls: cert and key must be given together")));
            }
            if tls != wippy_http::tls::ClientTls::default() {
                req.tls = Some(tls);
            }
        }
        other => return Ok(Err(Error::invalid(format!("tls must be a table, got {}", super::lua_type(&other))))),
    }
    req.stream = o.raw_get::<Option<bool>>("stream")?.unwrap_or(false);
    req.max_body = o.raw_get::<Option<i64>>("max_response_body")?.unwrap_or(0).max(0) as u64;
    Ok(Ok(req))
}

pub(crate) fn library(lua: &Lua, r: &Table) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("encode_uri", lua.create_function(|_, s: String| Ok(client::encode_query(&s)))?)?;
    t.raw_set(
        "decode_uri",
        lua.create_function(|lua, s: String| match client::decode_query(&s) {
            Ok(d) => Ok((LuaValue::String(lua.create_string(d)?), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        })?,
    )?;
    r.raw_set(
        "http_client_start",
        lua.create_function(|lua, (method, url, opts, batch): (String, LuaValue, LuaValue, bool)| {
            let LuaValue::String(url) = &url else { return Err(bad_arg(1, "request", "string", &url)) };
            let url = url.to_str()?.to_string();
            let req = or_fail!(lua, build(&method, &url, &opts)?);
            if batch && req.stream {
                return fail(lua, Error::invalid("stream is not allowed in request_batch"));
            }
            current::with(|cx, _| {
                if !cx.can("http_client.request", &req.url) {
                    return fail(lua, Error::new(wippy_runtime::ErrorKind::PermissionDenied, format!("not allowed: {}", req.url)));
                }
                if let Some(p) = &req.unix_socket {
                    if !cx.can("http_client.unix_socket", p) {
                        return fail(lua, Error::new(wippy_runtime::ErrorKind::PermissionDenied, format!("not allowed: unix socket {p}")));
                    }
                }
                if req.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) && !cx.can("http_client.insecure_tls", &req.url) {
                    return fail(lua, Error::new(wippy_runtime::ErrorKind::PermissionDenied, format!("not allowed: insecure TLS for {}", req.url)));
                }
                if let Some(h) = client::private_host(&req.url).filter(|_| req.unix_socket.is_none()) {
                    if !cx.can("http_client.private_ip", &h) {
                        return fail(lua, Error::new(wippy_runtime::ErrorKind::PermissionDenied, format!("not allowed: private IP {h}")));
                    }
                }
                match cx.try_command(Command::Task(Box::pin(client::perform(req)))) {
                    Ok(id) => Ok((LuaValue::Integer(id.0 as i64), LuaValue::Nil)),
                    Err(e) => fail(lua, e),
                }
            })
        })?,
    )?;
    r.raw_set(
        "http_client_read",
        lua.create_function(|lua, id: i64| {
            current::with(|cx, _| match cx.try_command(Command::Task(Box::pin(client::read_stream(id as u64)))) {
                Ok(c) => Ok((LuaValue::Integer(c.0 as i64), LuaValue::Nil)),
                Err(e) => fail(lua, e),
            })
        })?,
    )?;
    r.raw_set("http_client_close", lua.create_function(|_, id: i64| {
        client::close_stream(id as u64);
        Ok(())
    })?)?;
    Ok(t)
}
