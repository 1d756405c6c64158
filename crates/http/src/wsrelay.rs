//! `websocket_relay` (SPEC §11.6): Wippy has no Lua websocket server; a handler names a
//! process in the response header `X-WS-Relay` and the connection becomes a websocket whose
//! client is a process of its own on the server's handler host. As Wippy's relay:
//! - the client monitors its target: the target's exit closes the socket;
//! - the target gets `ws.join` and `ws.leave` (`{client_pid, metadata}`), each client frame
//!   on `message_topic` from the client's PID (a text frame as a string, a binary one as
//!   bytes), and `ws.heartbeat` (`{client_pid, uptime, message_count, metadata}`) every
//!   `heartbeat_interval`;
//! - whatever else is sent to the client's PID goes out as one TEXT frame per payload,
//!   `{"topic": TOPIC, "data": VALUE}` (bytes that are not UTF-8 in base64);
//! - topic `ws.close` closes the socket (the payload is the close frame's reason), and
//!   `ws.control` changes the target (leave to the old, join to the new), topic, metadata
//!   or heartbeat interval.
//!
//! The socket is a tokio task (tokio-tungstenite over hyper's upgraded connection); the
//! client process is a native process that the task talks to through its mailbox (topics
//! `ws.in`, `ws.tick`, `ws.gone`, sent from outside any process, so no process can forge
//! them) and that talks to the task through a bounded channel: a client that does not read
//! is disconnected rather than buffered without end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;
use wippy_runtime::{Context, Event, Events, NodeRef, Pid, Process, Spawn, Status, Table, Value};

use crate::exchange::{text_response, HttpResponse, RespBody};
use crate::middleware::{control_table, glob, go_duration, origins, split_origin, DurationParser};

/// The response header a handler sets to hand its connection to a process.
pub const HEADER: &str = "x-ws-relay";
/// Frames the client process may have queued for the socket before the client counts as
/// not reading (and is disconnected).
const OUTBOX: usize = 256;

/// The middleware's settings.
#[derive(Clone)]
pub struct WsRelay {
    origins: Vec<String>,
    parse: DurationParser,
}

impl WsRelay {
    pub fn from_options(options: &BTreeMap<String, String>, parse: DurationParser) -> WsRelay {
        WsRelay { origins: origins(options, "wsrelay.allowed.origins"), parse }
    }

    /// Whether a browser page from `origin` may open the socket, as Wippy's websocket
    /// library decides: no Origin header (not a browser), yes; a page of the request's own
    /// host, yes; else a pattern (`*` and `?`, not crossing `/`, case-insensitive) that
    /// matches the origin's host, or its `scheme://host` when the pattern has a scheme.
    fn allows(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin.and_then(|o| o.to_str().ok()).filter(|o| !o.is_empty()) else { return true };
        let (scheme, origin_host) = split_origin(origin);
        let origin_host = origin_host.to_ascii_lowercase();
        if host.and_then(|h| h.to_str().ok()).is_some_and(|h| h.eq_ignore_ascii_case(&origin_host)) {
            return true;
        }
        self.origins.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            let target = if p.contains("://") { format!("{}://{origin_host}", scheme.to_ascii_lowercase()) } else { origin_host.clone() };
            glob(p.as_bytes(), target.as_bytes())
        })
    }
}

/// Whether the request asks for a websocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has("connection", "upgrade") && has("upgrade", "websocket") && headers.contains_key("sec-websocket-key")
}

/// What the handler's `X-WS-Relay` header says.
struct Plan {
    target: Pid,
    topic: String,
    heartbeat: Duration,
    metadata: Value,
}

/// What is wrong with an `X-WS-Relay` header.
enum Bad {
    /// Not a JSON object.
    Json(String),
    /// A field that does not hold.
    Field(String),
}

fn plan(text: &str, parse: DurationParser) -> Result<Plan, Bad> {
    let j: serde_json::Value = serde_json::from_str(text).map_err(|e| Bad::Json(e.to_string()))?;
    if !j.is_object() {
        return Err(Bad::Json("not a JSON object".into()));
    }
    let s = |k: &str| j.get(k).and_then(|v| v.as_str());
    let target = s("target_pid").unwrap_or("");
    let target = target.parse::<Pid>().map_err(|e| Bad::Field(format!("Invalid target PID: {e}")))?;
    let heartbeat = match s("heartbeat_interval") {
        None | Some("") => Duration::from_secs(30),
        Some(d) => parse(d).map_err(|e| Bad::Field(format!("X-WS-Relay heartbeat_interval: {e}")))?,
    };
    Ok(Plan {
        target,
        topic: s("message_topic").filter(|t| !t.is_empty()).unwrap_or("ws.message").to_string(),
        heartbeat,
        metadata: j.get("metadata").map(crate::json::from_json).unwrap_or(Value::Nil),
    })
}

/// The handler answered a relayed route: with `X-WS-Relay` on a websocket request, switch
/// protocols and start the client; the answer otherwise stands (a relay header on a plain
/// request is 400).
pub fn answer(
    relay: &WsRelay,
    resp: HttpResponse,
    upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderMap)>,
    node: &NodeRef,
    host: &str,
) -> HttpResponse {
    let mut resp = resp;
    let Some(text) = resp.headers_mut().remove(HEADER) else { return resp };
    // As Wippy: a header that is not JSON is logged and the handler's answer stands; a
    // target that is not a PID is 400; then the handshake (426 for a request that is not a
    // websocket one) and the origin (403).
    let plan = match plan(text.to_str().unwrap_or(""), relay.parse) {
        Ok(p) => p,
        Err(Bad::Json(e)) => {
            tracing::error!("websocket relay: invalid relay configuration: {e}");
            return resp;
        }
        Err(Bad::Field(e)) => return text_response(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let Some((upgrade, req_headers, key)) = upgrade.and_then(|(u, h)| h.get("sec-websocket-key").cloned().map(|k| (u, h, k))) else {
        let mut r = text_response(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
        r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
        r.headers_mut().insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    };
    if !relay.allows(req_headers.get(hyper::header::ORIGIN), req_headers.get(hyper::header::HOST)) {
        return text_response(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let (tx, rx) = mpsc::channel(OUTBOX);
    let heartbeat = plan.heartbeat;
    let client = Client { out: tx, target: plan.target, topic: plan.topic, metadata: plan.metadata, started: Instant::now(), count: 0, parse: relay.parse };
    let pid = match node.spawn(host, Spawn::process(client)) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!("websocket relay: cannot start the client process: {}", e.message);
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "internal error\n");
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let node = node.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                pump(ws, rx, &node, pid, heartbeat).await;
            }
            Err(e) => tracing::debug!("websocket relay: upgrade failed: {e}"),
        }
        let _ = node.send(pid, "ws.gone", Default::default());
    });
    let mut r = Response::new(RespBody::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// What the client process hands the socket's task.
enum Out {
    /// A frame to write (a close frame ends the socket).
    Frame(Frame),
    /// `ws.control` changed the heartbeat interval.
    Heartbeat(Duration),
}

/// The socket's life: frames in go to the client process, its frames go out, a heartbeat
/// ticks; ends when either side closes.
async fn pump<S>(ws: WebSocketStream<S>, mut out: mpsc::Receiver<Out>, node: &NodeRef, pid: Pid, heartbeat: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    // (a zero interval sends no heartbeats, as the SSE relay's)
    let ticker = |every: Duration| {
        let every = if every.is_zero() { Duration::from_secs(86_400 * 365) } else { every.max(Duration::from_millis(10)) };
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    };
    let mut tick = ticker(heartbeat);
    loop {
        tokio::select! {
            f = out.recv() => match f {
                Some(Out::Frame(f)) => {
                    let last = f.is_close();
                    if sink.send(f).await.is_err() || last {
                        break;
                    }
                }
                Some(Out::Heartbeat(every)) => tick = ticker(every),
                None => break,
            },
            f = stream.next() => match f {
                Some(Ok(Frame::Text(t))) => {
                    if node.send(pid, "ws.in", wippy_runtime::payload![Value::str(t.as_str())]).is_err() {
                        break;
                    }
                }
                Some(Ok(Frame::Binary(b))) => {
                    if node.send(pid, "ws.in", wippy_runtime::payload![Value::bytes(&b)]).is_err() {
                        break;
                    }
                }
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
            },
            _ = tick.tick() => {
                if node.send(pid, "ws.tick", Default::default()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// One value sent to the client PID, as the `data` of the `{topic, data}` frame Wippy's
/// relay writes: a string as a JSON string, bytes that are not UTF-8 in base64, any other
/// value as JSON.
fn wire(v: &Value) -> serde_json::Value {
    use base64::Engine;
    match v {
        Value::Str(s) => match std::str::from_utf8(s) {
            Ok(t) => serde_json::Value::String(t.to_string()),
            Err(_) => serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(s)),
        },
        other => crate::json::to_json(other),
    }
}

/// The client's process: the socket's side in the process world. It watches its target
/// (the target's exit closes the socket, as Wippy's relay does) and counts the client's
/// frames for the heartbeat.
struct Client {
    out: mpsc::Sender<Out>,
    target: Pid,
    topic: String,
    metadata: Value,
    started: Instant,
    count: i64,
    parse: DurationParser,
}

impl Client {
    /// `{client_pid, metadata}` (metadata left out when there is none).
    fn about(&self, cx: &Context<'_>) -> Table {
        let mut t = Table::new();
        t.set(Value::str("client_pid"), Value::str(&cx.pid().to_string()));
        if !matches!(self.metadata, Value::Nil) {
            t.set(Value::str("metadata"), self.metadata.clone());
        }
        t
    }

    fn tell(&self, cx: &mut Context<'_>, to: Pid, topic: &str, v: Table) {
        if let Err(e) = cx.send(to, topic, wippy_runtime::payload![Value::table(v)]) {
            tracing::debug!(client = %cx.pid(), "websocket relay: {topic} not delivered: {}", e.message);
        }
    }

    /// Watch `target` and tell it the client joined.
    fn attach(&mut self, cx: &mut Context<'_>, target: Pid) {
        self.target = target;
        if let Err(e) = cx.monitor(target) {
            tracing::warn!(client = %cx.pid(), "websocket relay: cannot monitor the target {target}: {}", e.message);
        }
        let v = self.about(cx);
        self.tell(cx, target, "ws.join", v);
    }

    /// Stop watching the target and tell it the client left.
    fn detach(&mut self, cx: &mut Context<'_>) {
        let _ = cx.unmonitor(self.target);
        let v = self.about(cx);
        self.tell(cx, self.target, "ws.leave", v);
    }

    /// `ws.control`: a new target (left, then joined), topic, metadata or heartbeat.
    fn control(&mut self, cx: &mut Context<'_>, v: &Value) {
        let Some(t) = control_table(v) else {
            return tracing::warn!(client = %cx.pid(), "websocket relay: a control message that is not an object");
        };
        let text = |k: &str| match t.get(&Value::str(k)) {
            Some(Value::Str(s)) if !s.is_empty() => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        };
        if let Some(m) = t.get(&Value::str("metadata")).filter(|m| !matches!(m, Value::Nil)) {
            self.metadata = m.clone();
        }
        if let Some(target) = text("target_pid") {
            match target.parse::<Pid>() {
                Ok(p) if p == self.target => {}
                Ok(p) => {
                    self.detach(cx);
                    self.attach(cx, p);
                }
                Err(e) => tracing::warn!(client = %cx.pid(), "websocket relay: control target_pid {target:?}: {e}"),
            }
        }
        if let Some(topic) = text("message_topic") {
            self.topic = topic;
        }
        if let Some(every) = text("heartbeat_interval") {
            match (self.parse)(&every) {
                Ok(d) => {
                    let _ = self.out.try_send(Out::Heartbeat(d));
                }
                Err(e) => tracing::warn!(client = %cx.pid(), "websocket relay: control heartbeat_interval {every:?}: {e}"),
            }
        }
    }

    /// The end: the target hears `ws.leave`, the socket gets a close frame with the reason.
    fn close(&mut self, cx: &mut Context<'_>, reason: &str) -> Status {
        self.detach(cx);
        // a close frame's reason is at most 123 bytes
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self.out.try_send(Out::Frame(Frame::Close(Some(CloseFrame { code: 1000.into(), reason: reason[..end].into() }))));
        Status::Exit(Ok(Value::str("websocket connection closed")))
    }
}

impl Process for Client {
    fn init(&mut self, cx: &mut Context<'_>, _method: &str, _args: Vec<Value>) -> Status {
        let target = self.target;
        self.attach(cx, target);
        Status::Wait
    }

    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        while let Some(ev) = events.next() {
            match ev {
                // the socket's news (sent from outside any process: no process can forge it)
                Event::Message(m) if m.from == Pid::NOBODY && m.topic.as_str() == "ws.in" => {
                    self.count += 1;
                    let topic = self.topic.clone();
                    if let Err(e) = cx.send(self.target, &topic, m.payload.clone()) {
                        tracing::debug!(client = %cx.pid(), "websocket relay: {topic} not delivered: {}", e.message);
                    }
                }
                Event::Message(m) if m.from == Pid::NOBODY && m.topic.as_str() == "ws.tick" => {
                    let mut t = self.about(cx);
                    t.set(Value::str("uptime"), Value::str(&go_duration(self.started.elapsed())));
                    t.set(Value::str("message_count"), Value::Int(self.count));
                    let target = self.target;
                    self.tell(cx, target, "ws.heartbeat", t);
                }
                Event::Message(m) if m.from == Pid::NOBODY && m.topic.as_str() == "ws.gone" => return self.close(cx, "client disconnected"),
                Event::Message(m) if m.topic.as_str() == "ws.close" => {
                    let reason = match m.first() {
                        Value::Nil => "Connection closed by server".to_string(),
                        Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
                        v => crate::json::encode(v),
                    };
                    return self.close(cx, &reason);
                }
                Event::Message(m) if m.topic.as_str() == "ws.control" => self.control(cx, m.first()),
                Event::Message(m) => {
                    // each payload a TEXT frame `{"topic": …, "data": …}`, as Wippy's relay writes
                    for v in &m.payload {
                        let frame = format!(r#"{{"topic":{},"data":{}}}"#, serde_json::Value::from(m.topic.as_str()), wire(v));
                        if self.out.try_send(Out::Frame(Frame::text(frame))).is_err() {
                            tracing::warn!(client = %cx.pid(), "websocket relay: the client does not read; disconnected");
                            return self.close(cx, "client does not read");
                        }
                    }
                }
                Event::Exit { from, .. } if from == self.target => return self.close(cx, "target process exited"),
                Event::Cancel { .. } => return self.close(cx, "canceled"),
                _ => {}
            }
        }
        Status::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_as_wippys_websocket_library_does() {
        let parse: DurationParser = |_| Ok(Duration::ZERO);
        let opts = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let r = WsRelay::from_options(&opts("wsrelay.allowed.origins", "*.example.com, http://localhost:*"), parse);
        let ok = |origin: &str, host: &str| r.allows(Some(&HeaderValue::from_str(origin).unwrap()), Some(&HeaderValue::from_str(host).unwrap()));
        assert!(ok("https://app.example.com", "api.test"), "a host pattern matches any scheme");
        assert!(ok("http://localhost:3000", "api.test"));
        assert!(!ok("https://localhost:3000", "api.test"), "a pattern with a scheme matches that scheme only");
        assert!(!ok("https://example.com", "api.test"));
        assert!(ok("https://API.test", "api.test"), "the request's own host always");
        assert!(r.allows(None, None), "no Origin: not a browser");
        let shared = WsRelay::from_options(&opts("allow_origins", "*"), parse);
        assert!(shared.allows(Some(&HeaderValue::from_static("https://anywhere.example")), None), "the shared key, and * for any host");
    }
}
