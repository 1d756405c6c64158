//! One request and its response, shared by the connection that serves it and the handler
//! process that answers it (attached to that process at spawn, `Spawn::attach`).
//!
//! The handler's writes go to a buffer; the response leaves when the handler's call ends
//! (one whole body with a Content-Length), or earlier as a stream once the handler flushes
//! (or writes SSE events), after which every write is a chunk on a bounded channel. The
//! head therefore stays open to `write_json`'s content type until something is sent.
//! Nothing here blocks: what has to wait (reading the body, a full stream channel) is a
//! future the caller runs as a process command.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode, Uri};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use wippy_runtime::{Error, ExitResult, Value};

/// Chunks a streaming response may have in flight before a write waits for the client.
const STREAM_CHUNKS: usize = 16;

/// A response body: whole (known length) or streamed from the handler.
pub enum RespBody {
    Full(Option<Bytes>),
    Chan(mpsc::Receiver<Bytes>),
}

impl RespBody {
    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }
    pub fn text(s: impl Into<Bytes>) -> RespBody {
        RespBody::Full(Some(s.into()))
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            RespBody::Chan(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RespBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Chan(_) => SizeHint::default(),
        }
    }
}

pub type HttpResponse = Response<RespBody>;

/// A plain-text response.
pub fn text_response(status: StatusCode, body: &str) -> HttpResponse {
    let mut r = Response::new(RespBody::text(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

struct Resp {
    status: Option<StatusCode>,
    headers: HeaderMap,
    /// `set_status` or a write happened: headers are final.
    committed: bool,
    /// Anything was set or written: the auto-responses are off.
    handled: bool,
    buf: Vec<u8>,
    /// Streaming: the channel the body goes out on.
    stream: Option<mpsc::Sender<Bytes>>,
    /// Where the head goes; `None` once it went.
    to: Option<oneshot::Sender<HttpResponse>>,
}

/// A request being answered.
pub struct Exchange {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub remote: SocketAddr,
    /// Route parameters (`None`: not a routed call).
    pub params: Option<Vec<(String, String)>>,
    /// The `http.service` and `http.endpoint` entries.
    pub server: Arc<str>,
    pub endpoint: Arc<str>,
    body: Mutex<Option<Incoming>>,
    resp: Mutex<Resp>,
}

/// What a write asks of its caller.
pub enum Write {
    Done,
    /// The stream channel is full: run this to finish the write (it waits for the client).
    Wait(Pin<Box<dyn Future<Output = Result<Value, Error>> + Send>>),
}

impl Exchange {
    pub fn new(
        parts: hyper::http::request::Parts,
        body: Incoming,
        remote: SocketAddr,
        params: Option<Vec<(String, String)>>,
        server: Arc<str>,
        endpoint: Arc<str>,
        to: oneshot::Sender<HttpResponse>,
    ) -> Exchange {
        Exchange {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            remote,
            params,
            server,
            endpoint,
            body: Mutex::new(Some(body)),
            resp: Mutex::new(Resp { status: None, headers: HeaderMap::new(), committed: false, handled: false, buf: Vec::new(), stream: None, to: Some(to) }),
        }
    }

    /// The request body, read whole (at most `max` bytes); readable once.
    pub fn read_body(&self, max: u64) -> Result<impl Future<Output = Result<Value, Error>> + Send + 'static, Error> {
        let body = self.body.lock().take().ok_or_else(|| Error::invalid("the request body was already read"))?;
        if let Some(n) = body.size_hint().exact() {
            if n > max {
                return Err(Error::invalid(format!("request body of {n} bytes is larger than the limit of {max}")));
            }
        }
        Ok(async move {
            match http_body_util::Limited::new(body, max as usize).collect().await {
                Ok(c) => Ok(Value::Str(Arc::from(&c.to_bytes()[..]))),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::invalid(format!("request body is larger than the limit of {max} bytes"))),
                Err(e) => Err(Error::internal(format!("reading the request body: {e}"))),
            }
        })
    }

    /// The request body as a stream (`req:stream()`): read in pieces, at most `max` bytes in
    /// all; takes the body like [`Exchange::read_body`].
    pub fn stream_body(&self, max: u64) -> Result<Arc<BodyStream>, Error> {
        let body = self.body.lock().take().ok_or_else(|| Error::invalid("the request body was already read"))?;
        Ok(Arc::new(BodyStream { inner: tokio::sync::Mutex::new(StreamState { body: Some(body), pending: Bytes::new(), read: 0, max }) }))
    }

    /// The body parsed as `multipart/form-data` (`req:parse_multipart(max_memory)`): Invalid
    /// at once when the request is not multipart; the parse reads the body (at most `max`
    /// bytes) and keeps every part in memory, the whole at most `max_memory` bytes.
    pub fn read_multipart(&self, max: u64, max_memory: u64) -> Result<impl Future<Output = Result<Value, Error>> + Send + 'static, Error> {
        let ct = self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let boundary = multer::parse_boundary(ct).map_err(|_| Error::invalid(format!("request is not multipart/form-data (content type {ct:?})")))?;
        let stream = self.stream_body(max)?;
        Ok(async move {
            let chunks = futures_util::stream::unfold(stream, |s| async move {
                match s.read(64 * 1024).await {
                    Ok(Some(b)) => Some((Ok::<Bytes, Error>(b), s)),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), s)),
                }
            });
            let limits = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(max_memory));
            let mut mp = multer::Multipart::with_constraints(chunks, boundary, limits);
            let bad = |e: multer::Error| match e {
                multer::Error::StreamReadFailed(inner) => match inner.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(other) => Error::internal(format!("reading the request body: {other}")),
                },
                multer::Error::StreamSizeExceeded { limit } => Error::invalid(format!("multipart body is larger than max_memory ({limit} bytes)")),
                e => Error::invalid(format!("malformed multipart body: {e}")),
            };
            // each field's parts in arrival order (a field may come several times)
            let (mut files, mut values): (Vec<(String, Vec<Value>)>, Vec<(String, Vec<Value>)>) = (Vec::new(), Vec::new());
            let add = |to: &mut Vec<(String, Vec<Value>)>, name: String, v: Value| match to.iter_mut().find(|(n, _)| *n == name) {
                Some((_, list)) => list.push(v),
                None => to.push((name, vec![v])),
            };
            while let Some(field) = mp.next_field().await.map_err(bad)? {
                let name = field.name().unwrap_or("").to_string();
                let file_name = field.file_name().map(str::to_string);
                let mut headers = wippy_runtime::Table::new();
                for (k, v) in field.headers() {
                    if let Ok(v) = v.to_str() {
                        headers.set(Value::str(&crate::client::canonical(k.as_str())), Value::str(v));
                    }
                }
                let data = field.bytes().await.map_err(bad)?;
                match file_name {
                    Some(f) => {
                        let mut file = wippy_runtime::Table::new();
                        file.set(Value::str("name"), Value::str(&f));
                        file.set(Value::str("size"), Value::Int(data.len() as i64));
                        file.set(Value::str("headers"), Value::table(headers));
                        file.set(Value::str("data"), Value::bytes(&data));
                        add(&mut files, name, Value::table(file));
                    }
                    None => add(&mut values, name, Value::bytes(&data)),
                }
            }
            let table = |items: Vec<Value>| {
                let mut t = wippy_runtime::Table::new();
                items.into_iter().for_each(|v| t.push(v));
                Value::table(t)
            };
            let (mut file_table, mut value_table) = (wippy_runtime::Table::new(), wippy_runtime::Table::new());
            for (name, list) in files {
                file_table.set(Value::str(&name), table(list));
            }
            for (name, mut list) in values {
                // one value as a string, several as an array
                let v = if list.len() == 1 { list.pop().unwrap_or(Value::Nil) } else { table(list) };
                value_table.set(Value::str(&name), v);
            }
            let mut out = wippy_runtime::Table::new();
            out.set(Value::str("files"), Value::table(file_table));
            out.set(Value::str("values"), Value::table(value_table));
            Ok(Value::table(out))
        })
    }

    pub fn set_header(&self, name: &str, value: &str) -> Result<(), Error> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::invalid(format!("invalid header name {:?}", name)))?;
        self.set_named_header(name, value)
    }

    /// `set_header` with the name already made (`set_content_type` is called on most
    /// requests: parsing "Content-Type" each time was ~300 instructions of it).
    pub fn set_named_header(&self, name: HeaderName, value: &str) -> Result<(), Error> {
        let value = HeaderValue::from_str(value).map_err(|_| Error::invalid(format!("invalid value for header {name}")))?;
        let mut r = self.resp.lock();
        if r.committed {
            return Err(Error::invalid("cannot set headers after they are sent"));
        }
        r.handled = true;
        r.headers.insert(name, value);
        Ok(())
    }

    /// A handler's returned value as its JSON answer (SPEC §11.2: nothing written, a value
    /// returned): `false`, changing nothing, when the handler wrote anything.
    pub fn answer_json(&self, text: &[u8]) -> bool {
        let mut r = self.resp.lock();
        if r.handled || r.stream.is_some() {
            return false;
        }
        r.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.buf.extend_from_slice(text);
        r.handled = true;
        r.committed = true;
        true
    }

    /// Set the content type unless the head is final or one is set (`write_json`).
    pub fn default_content_type(&self, ct: &'static str) {
        let mut r = self.resp.lock();
        if r.stream.is_none() && !r.headers.contains_key(CONTENT_TYPE) {
            r.headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
    }

    pub fn set_status(&self, code: i64) -> Result<(), Error> {
        let status = u16::try_from(code).ok().and_then(|c| StatusCode::from_u16(c).ok()).ok_or_else(|| Error::invalid(format!("invalid HTTP status {code}")))?;
        let mut r = self.resp.lock();
        if r.committed {
            return Err(Error::invalid("status already sent"));
        }
        r.status = Some(status);
        r.committed = true;
        r.handled = true;
        Ok(())
    }

    /// Whether headers may still be set.
    pub fn head_open(&self) -> bool {
        !self.resp.lock().committed
    }

    /// Add `data` to a buffered answer (true), or do nothing when the answer streams (false).
    pub fn write_buffered(&self, data: &[u8]) -> bool {
        let mut r = self.resp.lock();
        if r.stream.is_some() {
            return false;
        }
        r.handled = true;
        r.committed = true;
        r.buf.extend_from_slice(data);
        true
    }

    /// [`Exchange::write`] of borrowed bytes: copied once, into the buffered answer, or into
    /// a chunk when the answer streams.
    pub fn write_slice(&self, data: &[u8]) -> Write {
        if self.write_buffered(data) {
            return Write::Done;
        }
        self.write(Bytes::copy_from_slice(data))
    }

    pub fn write(&self, data: Bytes) -> Write {
        let mut r = self.resp.lock();
        r.handled = true;
        r.committed = true;
        match &r.stream {
            None => {
                r.buf.extend_from_slice(&data);
                Write::Done
            }
            Some(tx) => match tx.try_send(data) {
                Ok(()) => Write::Done,
                Err(mpsc::error::TrySendError::Full(data)) => {
                    let tx = tx.clone();
                    Write::Wait(Box::pin(async move {
                        tx.send(data).await.map(|_| Value::Nil).map_err(|_| Error::new(wippy_runtime::ErrorKind::Canceled, "the client went away"))
                    }))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Write::Wait(Box::pin(async { Err(Error::new(wippy_runtime::ErrorKind::Canceled, "the client went away")) })),
            },
        }
    }

    /// Send the head and what is buffered; from now on every write is a chunk.
    pub fn flush(&self) -> Write {
        let mut r = self.resp.lock();
        if r.stream.is_some() {
            return Write::Done;
        }
        let Some(to) = r.to.take() else { return Write::Done };
        r.handled = true;
        r.committed = true;
        let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
        let mut resp = Response::new(RespBody::Chan(rx));
        *resp.status_mut() = r.status.unwrap_or(StatusCode::OK);
        *resp.headers_mut() = std::mem::take(&mut r.headers);
        let first = std::mem::take(&mut r.buf);
        if !first.is_empty() {
            let _ = tx.try_send(Bytes::from(first));
        }
        r.stream = Some(tx);
        drop(r);
        let _ = to.send(resp);
        Write::Done
    }

    /// The handler's call ended: send what it wrote, or the automatic response
    /// (SPEC §11.2). Once: later calls (the exit after an early finish) do nothing.
    pub fn finish(&self, result: &ExitResult) {
        let mut r = self.resp.lock();
        r.stream = None; // ends a streamed body
        let Some(to) = r.to.take() else { return };
        let resp = if r.handled {
            let mut resp = Response::new(RespBody::Full(Some(Bytes::from(std::mem::take(&mut r.buf)))));
            *resp.status_mut() = r.status.unwrap_or(StatusCode::OK);
            *resp.headers_mut() = std::mem::take(&mut r.headers);
            resp
        } else {
            match result {
                Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, &public_message(e)),
                Ok(Value::Nil) => text_response(StatusCode::INTERNAL_SERVER_ERROR, "no response sent"),
                Ok(v) => {
                    let mut resp = Response::new(RespBody::text(crate::json::encode(v)));
                    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
            }
        };
        drop(r);
        let _ = to.send(resp);
    }
}

/// A request body read in pieces (`req:stream()`).
pub struct BodyStream {
    inner: tokio::sync::Mutex<StreamState>,
}

struct StreamState {
    /// `None` once the body ended (or was closed).
    body: Option<Incoming>,
    /// Read from the body, not yet handed out.
    pending: Bytes,
    read: u64,
    max: u64,
}

impl BodyStream {
    /// Up to `n` bytes (at least one): `None` at the end of the body. More than the stream's
    /// limit in all, or a body that fails, is an error.
    pub async fn read(&self, n: usize) -> Result<Option<Bytes>, Error> {
        let mut st = self.inner.lock().await;
        while st.pending.is_empty() {
            let Some(body) = st.body.as_mut() else { return Ok(None) };
            match body.frame().await {
                None => st.body = None,
                Some(Err(e)) => {
                    st.body = None;
                    return Err(Error::internal(format!("reading the request body: {e}")));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        st.read += data.len() as u64;
                        if st.read > st.max {
                            st.body = None;
                            return Err(Error::invalid(format!("request body is larger than the limit of {} bytes", st.max)));
                        }
                        st.pending = data;
                    }
                }
            }
        }
        let take = n.max(1).min(st.pending.len());
        Ok(Some(st.pending.split_to(take)))
    }

    /// Stop reading: what is left of the body is dropped.
    pub fn close(&self) {
        if let Ok(mut st) = self.inner.try_lock() {
            st.body = None;
            st.pending = Bytes::new();
        }
    }
}

/// What a client is told of a failed call: the message of an error the handler returned
/// or raised as a value (`return nil, "msg"`, `error(errors.new(...))`), but never the
/// runtime's own account of a crash (a Lua error with its source location, a panic, a
/// memory limit): those are "internal error", and only the log has the details.
pub fn public_message(e: &Error) -> String {
    let m = &e.message;
    // a Lua runtime error starts with its chunk and line: `app:fail:1: …`, `x.lua:3: …`
    let located = m.split_once(": ").is_some_and(|(loc, _)| loc.rsplit_once(':').is_some_and(|(_, line)| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())));
    if located || m.starts_with("panic") || e.kind == wippy_runtime::ErrorKind::Internal && m.contains("memory") {
        "internal error".into()
    } else {
        m.clone()
    }
}
