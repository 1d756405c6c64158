//! The client behind the `http_client` module (SPEC §11.5): one pooled reqwest client per
//! node (keep-alive, 10 idle connections per host, 90 s idle timeout, redirects followed,
//! TLS with the system's roots through rustls). A request is a future the calling process
//! runs as a command; its value is the response table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use wippy_runtime::{Error, ErrorKind, Table, Value};

/// SPEC §11.5 defaults.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BODY: u64 = 125_829_120;

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .pool_max_idle_per_host(10)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(10))
}

fn client() -> Result<reqwest::Client, Error> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT.get_or_init(|| builder().build().map_err(|e| e.to_string())).clone().map_err(|e| Error::internal(format!("http client: {e}")))
}

/// The pooled client for a request that connects through a Unix socket (`unix_socket`) or
/// with TLS settings of its own (`tls`); the node's shared one for any other.
fn client_for(unix_socket: &Option<String>, tls: &Option<crate::tls::ClientTls>) -> Result<reqwest::Client, Error> {
    type Key = (Option<String>, Option<crate::tls::ClientTls>);
    static CLIENTS: OnceLock<Mutex<HashMap<Key, reqwest::Client>>> = OnceLock::new();
    if unix_socket.is_none() && tls.is_none() {
        return client();
    }
    let key = (unix_socket.clone(), tls.clone());
    let mut clients = CLIENTS.get_or_init(Default::default).lock();
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let mut b = builder();
    if let Some(path) = unix_socket {
        b = b.unix_socket(path.as_str());
    }
    if let Some(t) = tls {
        b = b.use_preconfigured_tls(t.config().map_err(Error::invalid)?);
    }
    let c = b.build().map_err(|e| Error::internal(format!("http client: {e}")))?;
    if clients.len() >= 64 {
        clients.clear(); // (a bound, not a cache policy: 64 distinct sockets or TLS settings is already odd)
    }
    clients.insert(key, c.clone());
    Ok(c)
}

/// One file of a multipart upload (`files`).
#[derive(Debug, Default)]
pub struct FilePart {
    pub field: String,
    pub filename: String,
    pub content: Vec<u8>,
    pub content_type: String,
}

/// A request as the Lua side describes it.
#[derive(Debug, Default)]
pub struct Req {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    pub stream: bool,
    pub max_body: u64,
    pub basic_auth: Option<(String, Option<String>)>,
    /// `files`: the body is multipart, with `form_fields` as its text fields.
    pub files: Vec<FilePart>,
    pub form_fields: Vec<(String, String)>,
    /// `unix_socket`: connect through this socket instead of TCP.
    pub unix_socket: Option<String>,
    /// `tls`: the request's own TLS settings.
    pub tls: Option<crate::tls::ClientTls>,
}

/// The URL's host when it is loopback, private, link-local or unspecified, or `localhost`
/// (checked as `http_client.private_ip`). The URL parser's host, as the request will use it:
/// `http://0x7f.1/` is 127.0.0.1 here too.
pub fn private_host(url: &str) -> Option<String> {
    use std::net::IpAddr;
    let u = reqwest::Url::parse(url).ok()?;
    let private = match u.host()? {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost"),
        url::Host::Ipv4(a) => a.is_loopback() || a.is_private() || a.is_link_local() || a.is_unspecified(),
        url::Host::Ipv6(a) => {
            let ip = IpAddr::V6(a);
            ip.is_loopback() || ip.is_unspecified() || (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    private.then(|| u.host_str().unwrap_or_default().to_string())
}

/// Percent-encoding of a query component (space as `+`), as `encode_uri`.
pub fn encode_query(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b' ');
    percent_encoding::utf8_percent_encode(s, SET).to_string().replace(' ', "+")
}

pub fn decode_query(s: &str) -> Result<String, Error> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).decode_utf8().map(|c| c.into_owned()).map_err(|_| Error::invalid("invalid URL encoding: not UTF-8"))
}

/// A reqwest error with its causes (reqwest's own text is only "error sending request for
/// url (…)"; the cause says which: refused, a certificate, a name …).
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

fn transport(e: reqwest::Error) -> Error {
    let text = with_causes(&e);
    if e.is_timeout() {
        Error::new(ErrorKind::Timeout, format!("request timed out: {text}"))
    } else if e.is_connect() {
        Error::unavailable(format!("connection failed: {text}")).with_retryable(true)
    } else if e.is_builder() {
        Error::invalid(format!("invalid request: {text}"))
    } else {
        Error::unavailable(text)
    }
}

/// Open response streams (`stream = true`), by the ID their Lua object holds.
fn streams() -> &'static Mutex<HashMap<u64, Arc<tokio::sync::Mutex<reqwest::Response>>>> {
    static S: OnceLock<Mutex<HashMap<u64, Arc<tokio::sync::Mutex<reqwest::Response>>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// Perform `req`; the response table of SPEC §11.5.
pub async fn perform(req: Req) -> Result<Value, Error> {
    let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()).map_err(|_| Error::invalid(format!("invalid HTTP method {:?}", req.method)))?;
    let url = reqwest::Url::parse(&req.url).map_err(|e| Error::invalid(format!("invalid URL {:?}: {e}", req.url)))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::invalid(format!("unsupported URL scheme {:?}", url.scheme())));
    }
    let c = client_for(&req.unix_socket, &req.tls)?;
    let mut b = c.request(method, url).timeout(req.timeout.unwrap_or(DEFAULT_TIMEOUT));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some((u, p)) = &req.basic_auth {
        b = b.basic_auth(u, p.as_ref());
    }
    if !req.files.is_empty() {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in req.form_fields {
            form = form.text(k, v);
        }
        for f in req.files {
            let ct = if f.content_type.is_empty() { "application/octet-stream".to_string() } else { f.content_type };
            let part = reqwest::multipart::Part::bytes(f.content).file_name(f.filename).mime_str(&ct).map_err(|e| Error::invalid(format!("files: content_type {ct:?}: {e}")))?;
            form = form.part(f.field, part);
        }
        b = b.multipart(form);
    } else if let Some(body) = req.body {
        b = b.body(body);
    }
    let resp = b.send().await.map_err(transport)?;
    let mut t = Table::new();
    t.set("status_code", Value::Int(resp.status().as_u16() as i64));
    t.set("url", Value::str(resp.url().as_str()));
    let mut headers = Table::new();
    let mut joined: Vec<(String, String)> = Vec::new();
    for (k, v) in resp.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let name = canonical(k.as_str());
        match joined.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => {
                old.push_str(", ");
                old.push_str(&v);
            }
            None => joined.push((name, v)),
        }
    }
    for (k, v) in joined {
        headers.set(Value::str(&k), Value::str(&v));
    }
    t.set("headers", Value::table(headers));
    let mut cookies = Table::new();
    for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
        if let Some((name, rest)) = c.to_str().ok().and_then(|s| s.split_once('=')) {
            cookies.set(Value::str(name.trim()), Value::str(rest.split(';').next().unwrap_or("")));
        }
    }
    t.set("cookies", Value::table(cookies));
    let max = if req.max_body == 0 { DEFAULT_MAX_BODY } else { req.max_body };
    if req.stream {
        let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        streams().lock().insert(id, Arc::new(tokio::sync::Mutex::new(resp)));
        t.set("body_size", Value::Int(-1));
        t.set("stream_id", Value::Int(id as i64));
        return Ok(Value::table(t));
    }
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(Error::limit_exceeded(format!("response body larger than {max} bytes")));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(Error::limit_exceeded(format!("response body larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    t.set("body_size", Value::Int(body.len() as i64));
    t.set("body", Value::Str(Arc::from(body)));
    Ok(Value::table(t))
}

/// The next chunk of an open response stream (at most `n` bytes are asked of it; a chunk
/// may be shorter), or nil at its end (the stream is then closed).
pub async fn read_stream(id: u64) -> Result<Value, Error> {
    let s = streams().lock().get(&id).cloned().ok_or_else(|| Error::invalid("the stream is closed"))?;
    let mut r = s.lock().await;
    match r.chunk().await.map_err(transport)? {
        Some(c) => Ok(Value::Str(Arc::from(&c[..]))),
        None => {
            drop(r);
            streams().lock().remove(&id);
            Ok(Value::Nil)
        }
    }
}

pub fn close_stream(id: u64) {
    streams().lock().remove(&id);
}

/// `content-type` → `Content-Type` (Go's canonical header keys, which Wippy returns).
pub fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = true;
    for c in name.chars() {
        out.push(if up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        up = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::private_host;

    #[test]
    fn private_hosts_as_the_request_would_reach_them() {
        for (url, host) in [
            ("http://127.0.0.1:8080/x", Some("127.0.0.1")),
            ("http://localhost/", Some("localhost")),
            ("http://api.LOCALHOST/", Some("api.localhost")),
            ("http://10.1.2.3/", Some("10.1.2.3")),
            ("http://[::1]:9/", Some("[::1]")),
            ("http://[fd00::1]/", Some("[fd00::1]")),
            ("http://0x7f.1/", Some("127.0.0.1")),
            ("http://user:pw@192.168.0.1/", Some("192.168.0.1")),
            ("https://example.com/", None),
            ("http://8.8.8.8/", None),
            ("not a url", None),
        ] {
            assert_eq!(private_host(url).as_deref(), host, "{url}");
        }
    }
}
