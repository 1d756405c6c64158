//! `sse_relay` (SPEC §11.6): a handler hands its response to a process as a stream of
//! server-sent events. It sets the response header `X-SSE-Relay` to a JSON object
//! `{target_pid?, message_topic = "sse.message", heartbeat_interval = "30s", idle_timeout,
//! hard_timeout, metadata}` and writes nothing; the response then becomes an event stream
//! whose writer is a process of its own (the stream PID) on the server's handler host:
//! - with `target_pid` (managed): the stream monitors the target and sends it `sse.join`
//!   (`{client_pid, metadata}`); the target's exit ends the stream;
//! - without (detached): the stream's first event is `ready`
//!   (`{stream_pid, message_topic, metadata}`), for a producer to attach later.
//!
//! Whatever is sent to the stream PID on the message topic (`*` or empty: any topic) goes
//! out as an event named by its topic (a string as it is, other values as JSON). Topic
//! `sse.close` ends the stream (reason: the payload), `sse.control` changes the target,
//! topic, metadata or timers. Every heartbeat interval the target gets `sse.heartbeat`
//! (`{client_pid, uptime, message_count, metadata}`) and the client a `: ping` comment; an
//! idle timeout (no event for that long) or a hard timeout ends the stream. Every end but a
//! client that went away writes a last event `done` (`{"reason": …}`); the target then
//! gets `sse.leave`.
//!
//! The stream's writer is a tokio task that owns the response body (a bounded channel
//! hyper reads) and the timers; the process reaches it through a bounded channel (a client
//! that does not read is disconnected, not buffered without end) and the task reaches the
//! process through its mailbox (topics sent from outside any process, which no process
//! can forge).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::StatusCode;
use tokio::sync::mpsc;
use wippy_runtime::{Context, Event, Events, NodeRef, Pid, Process, Spawn, Status, Table, Value};

use crate::exchange::{text_response, HttpResponse, RespBody};
use crate::middleware::{control_table, glob, go_duration, origins, split_origin, DurationParser};

/// The response header a handler sets to turn its response into a relayed event stream.
pub const HEADER: &str = "x-sse-relay";
/// Events the stream process may have queued for the writer before the client counts as
/// not reading.
const OUTBOX: usize = 256;
/// Events the body holds for hyper (Wippy's per-session capacity).
const BODY: usize = 32;
const DEFAULT_TOPIC: &str = "sse.message";
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// The middleware's settings.
#[derive(Clone)]
pub struct SseRelay {
    origins: Vec<String>,
    parse: DurationParser,
}

impl SseRelay {
    pub fn from_options(options: &BTreeMap<String, String>, parse: DurationParser) -> SseRelay {
        SseRelay { origins: origins(options, "sserelay.allowed.origins"), parse }
    }

    /// Whether a page from `origin` may open the stream: no Origin header (not a browser),
    /// yes; no list, same host only; else `*`, the origin itself, or a pattern with `*`
    /// (`https://*.example.com`; `*` does not cross a `/`).
    fn allows(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin.and_then(|o| o.to_str().ok()).map(str::trim).filter(|o| !o.is_empty()) else { return true };
        if self.origins.is_empty() {
            let (_, origin_host) = split_origin(origin);
            return host.and_then(|h| h.to_str().ok()).is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
        }
        self.origins.iter().any(|p| p == "*" || p == origin || glob(p.as_bytes(), origin.as_bytes()))
    }
}

/// Timers of a stream (zero: off).
#[derive(Clone, Copy, Default)]
struct Timers {
    heartbeat: Duration,
    idle: Duration,
    hard: Duration,
}

/// What the handler's `X-SSE-Relay` header says.
struct Plan {
    target: Option<Pid>,
    topic: String,
    timers: Timers,
    metadata: Value,
}

fn duration(j: &serde_json::Value, key: &str, parse: DurationParser) -> Result<Option<Duration>, String> {
    match j.get(key).and_then(|v| v.as_str()) {
        None | Some("") => Ok(None),
        Some(d) => parse(d).map(Some).map_err(|e| format!("{key}: {e}")),
    }
}

fn plan(text: &str, parse: DurationParser) -> Result<Plan, String> {
    let j: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("invalid relay configuration: {e}"))?;
    if !j.is_object() {
        return Err("invalid relay configuration: not a JSON object".into());
    }
    let target = match j.get("target_pid").and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<Pid>().map_err(|e| format!("invalid target_pid {s:?}: {e}"))?),
    };
    let timers = Timers {
        heartbeat: duration(&j, "heartbeat_interval", parse)?.unwrap_or(DEFAULT_HEARTBEAT),
        idle: duration(&j, "idle_timeout", parse)?.unwrap_or_default(),
        hard: duration(&j, "hard_timeout", parse)?.unwrap_or_default(),
    };
    Ok(Plan {
        target,
        topic: j.get("message_topic").and_then(|v| v.as_str()).filter(|t| !t.is_empty()).unwrap_or(DEFAULT_TOPIC).to_string(),
        timers,
        metadata: j.get("metadata").map(crate::json::from_json).unwrap_or(Value::Nil),
    })
}

/// The handler answered a relayed route: with `X-SSE-Relay` (and nothing written, status
/// 200), the answer becomes an event stream written by a new stream process; otherwise it
/// stands, without the header.
pub fn answer(relay: &SseRelay, mut resp: HttpResponse, origin: Option<&HeaderValue>, host_header: Option<&HeaderValue>, node: &NodeRef, host: &str) -> HttpResponse {
    let Some(text) = resp.headers_mut().remove(HEADER) else { return resp };
    let written = match resp.body() {
        RespBody::Full(b) => b.as_ref().is_some_and(|b| !b.is_empty()),
        RespBody::Chan(_) => true,
    };
    if written || resp.status() != StatusCode::OK {
        tracing::warn!(status = resp.status().as_u16(), "cannot start the sse relay: the handler already answered");
        return resp;
    }
    if !relay.allows(origin, host_header) {
        return text_response(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let plan = match text.to_str().map_err(|e| format!("invalid relay configuration: {e}")).and_then(|t| plan(t, relay.parse)) {
        Ok(p) => p,
        Err(e) => return text_response(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let (items_tx, items) = mpsc::channel(OUTBOX);
    let (body_tx, body) = mpsc::channel(BODY);
    let stream = Stream {
        out: items_tx,
        target: plan.target,
        topic: plan.topic,
        metadata: plan.metadata,
        started: Instant::now(),
        count: 0,
        parse: relay.parse,
    };
    let pid = match node.spawn(host, Spawn::process(stream)) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!("sse relay: cannot start the stream process: {}", e.message);
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "internal error\n");
        }
    };
    tokio::spawn(write(items, body_tx, node.clone(), pid, plan.timers));
    let h = resp.headers_mut();
    h.remove(CONTENT_LENGTH);
    for (name, value) in [(CONTENT_TYPE, "text/event-stream"), (CACHE_CONTROL, "no-cache"), (CONNECTION, "keep-alive")] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    if !h.contains_key("x-accel-buffering") {
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    *resp.body_mut() = RespBody::Chan(body);
    resp
}

/// From the stream process to its writer.
enum Item {
    /// Bytes for the client; `true` when they are an event (they restart the idle timer).
    Out(Bytes, bool),
    /// New timers: the ones given restart.
    Timers { heartbeat: Option<Duration>, idle: Option<Duration>, hard: Option<Duration> },
    /// The stream is over.
    End,
}

/// The writer: the body's only sender, and the stream's clocks.
async fn write(mut items: mpsc::Receiver<Item>, body: mpsc::Sender<Bytes>, node: NodeRef, pid: Pid, mut t: Timers) {
    let at = |d: Duration| tokio::time::Instant::now() + if d.is_zero() { Duration::from_secs(86_400 * 365) } else { d };
    let (mut beat, mut idle, mut hard) = (at(t.heartbeat), at(t.idle), at(t.hard));
    loop {
        tokio::select! {
            item = items.recv() => match item {
                Some(Item::Out(bytes, event)) => {
                    if body.send(bytes).await.is_err() {
                        let _ = node.send(pid, "sse.gone", Default::default());
                        return;
                    }
                    if event {
                        idle = at(t.idle);
                    }
                }
                Some(Item::Timers { heartbeat, idle: i, hard: h }) => {
                    if let Some(d) = heartbeat {
                        t.heartbeat = d;
                        beat = at(d);
                    }
                    if let Some(d) = i {
                        t.idle = d;
                        idle = at(d);
                    }
                    if let Some(d) = h {
                        t.hard = d;
                        hard = at(d);
                    }
                }
                Some(Item::End) | None => return,
            },
            _ = tokio::time::sleep_until(beat), if !t.heartbeat.is_zero() => {
                beat = at(t.heartbeat);
                let _ = node.send(pid, "sse.tick", Default::default());
                if body.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                    let _ = node.send(pid, "sse.gone", Default::default());
                    return;
                }
            }
            _ = tokio::time::sleep_until(idle), if !t.idle.is_zero() => {
                t.idle = Duration::ZERO;
                let _ = node.send(pid, "sse.idle", Default::default());
            }
            _ = tokio::time::sleep_until(hard), if !t.hard.is_zero() => {
                t.hard = Duration::ZERO;
                let _ = node.send(pid, "sse.hard", Default::default());
            }
            _ = body.closed() => {
                let _ = node.send(pid, "sse.gone", Default::default());
                return;
            }
        }
    }
}

/// One event frame: `event: <name>` (when named) and one `data:` line per line of data.
fn frame(name: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(name.len() + data.len() + 16);
    if !name.is_empty() && !name.contains(['\r', '\n']) {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// An event's data: a string as it is (base64 when it is not UTF-8), anything else as JSON.
fn data(v: &Value) -> String {
    use base64::Engine;
    match v {
        Value::Str(s) => match std::str::from_utf8(s) {
            Ok(t) => t.to_string(),
            Err(_) => base64::engine::general_purpose::STANDARD.encode(s),
        },
        other => crate::json::encode(other),
    }
}

/// The stream's process: the event stream's side in the process world.
struct Stream {
    out: mpsc::Sender<Item>,
    target: Option<Pid>,
    topic: String,
    metadata: Value,
    started: Instant,
    count: i64,
    parse: DurationParser,
}

impl Stream {
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
            tracing::debug!(stream = %cx.pid(), "sse relay: {topic} not delivered: {}", e.message);
        }
    }

    /// Watch `target` and tell it the stream joined.
    fn attach(&mut self, cx: &mut Context<'_>, target: Pid) {
        if let Err(e) = cx.monitor(target) {
            tracing::warn!(stream = %cx.pid(), "sse relay: cannot monitor the target {target}: {}", e.message);
        }
        let v = self.about(cx);
        self.tell(cx, target, "sse.join", v);
        self.target = Some(target);
    }

    /// Stop watching the target and tell it the stream left.
    fn detach(&mut self, cx: &mut Context<'_>) {
        if let Some(t) = self.target.take() {
            let _ = cx.unmonitor(t);
            let v = self.about(cx);
            self.tell(cx, t, "sse.leave", v);
        }
    }

    /// Queue bytes for the writer; `false` when the client does not keep up (or is gone).
    fn push(&self, item: Item) -> bool {
        self.out.try_send(item).is_ok()
    }

    /// The last event (`done` with the reason), then the end.
    fn done(&mut self, cx: &mut Context<'_>, reason: &str) -> Status {
        let mut t = Table::new();
        t.set(Value::str("reason"), Value::str(reason));
        let _ = self.push(Item::Out(frame("done", &crate::json::encode(&Value::table(t))), false));
        self.end(cx)
    }

    fn end(&mut self, cx: &mut Context<'_>) -> Status {
        self.detach(cx);
        let _ = self.push(Item::End);
        Status::Exit(Ok(Value::Nil))
    }

    /// `sse.control`: keys that are present change (an empty string restores the default).
    fn control(&mut self, cx: &mut Context<'_>, v: &Value) {
        let Some(t) = control_table(v) else {
            return tracing::warn!(stream = %cx.pid(), "sse relay: a control message that is not an object");
        };
        let text = |k: &str| t.get(&Value::str(k)).map(|v| match v {
            Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
            _ => String::new(),
        });
        if let Some(topic) = text("message_topic") {
            self.topic = if topic.is_empty() { DEFAULT_TOPIC.to_string() } else { topic };
        }
        if let Some(m) = t.get(&Value::str("metadata")) {
            self.metadata = m.clone();
        }
        let (parse, me) = (self.parse, cx.pid());
        let timer = |k: &str, default: Duration| -> Option<Duration> {
            let s = text(k)?;
            if s.is_empty() {
                return Some(default);
            }
            match parse(&s) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(stream = %me, "sse relay: control {k} {s:?}: {e}");
                    None
                }
            }
        };
        let (heartbeat, idle, hard) = (timer("heartbeat_interval", DEFAULT_HEARTBEAT), timer("idle_timeout", Duration::ZERO), timer("hard_timeout", Duration::ZERO));
        if heartbeat.is_some() || idle.is_some() || hard.is_some() {
            let _ = self.push(Item::Timers { heartbeat, idle, hard });
        }
        if let Some(target) = text("target_pid") {
            if target.is_empty() {
                self.detach(cx);
            } else {
                match target.parse::<Pid>() {
                    Ok(p) if Some(p) == self.target => {}
                    Ok(p) => {
                        self.detach(cx);
                        self.attach(cx, p);
                    }
                    Err(e) => tracing::warn!(stream = %cx.pid(), "sse relay: control target_pid {target:?}: {e}"),
                }
            }
        }
    }

    fn forwards(&self, topic: &str) -> bool {
        !matches!(topic, "sse.control" | "sse.close" | "sse.join" | "sse.leave" | "sse.heartbeat") && (self.topic == "*" || self.topic == topic)
    }
}

impl Process for Stream {
    fn init(&mut self, cx: &mut Context<'_>, _method: &str, _args: Vec<Value>) -> Status {
        match self.target.take() {
            Some(t) => self.attach(cx, t),
            None => {
                let mut t = self.about(cx);
                t.set(Value::str("stream_pid"), Value::str(&cx.pid().to_string()));
                t.set(Value::str("message_topic"), Value::str(&self.topic));
                let _ = self.push(Item::Out(frame("ready", &crate::json::encode(&Value::table(t))), false));
            }
        }
        Status::Wait
    }

    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        while let Some(ev) = events.next() {
            match ev {
                // the writer's news (sent from outside any process: no process can forge it)
                Event::Message(m) if m.from == Pid::NOBODY && matches!(m.topic.as_str(), "sse.tick" | "sse.idle" | "sse.hard" | "sse.gone") => {
                    match m.topic.as_str() {
                        "sse.tick" => {
                            if let Some(target) = self.target {
                                let mut t = self.about(cx);
                                t.set(Value::str("uptime"), Value::str(&go_duration(self.started.elapsed())));
                                t.set(Value::str("message_count"), Value::Int(self.count));
                                self.tell(cx, target, "sse.heartbeat", t);
                            }
                        }
                        "sse.idle" => return self.done(cx, "idle timeout"),
                        "sse.hard" => return self.done(cx, "hard timeout"),
                        _ => return self.end(cx), // the client went away
                    }
                }
                Event::Message(m) if m.topic.as_str() == "sse.control" => self.control(cx, m.first()),
                Event::Message(m) if m.topic.as_str() == "sse.close" => {
                    let reason = match m.first() {
                        Value::Nil => "closed by server".to_string(),
                        Value::Str(s) if s.is_empty() => "closed by server".to_string(),
                        v => data(v),
                    };
                    return self.done(cx, &reason);
                }
                Event::Message(m) if self.forwards(m.topic.as_str()) => {
                    for v in &m.payload {
                        if !self.push(Item::Out(frame(m.topic.as_str(), &data(v)), true)) {
                            tracing::warn!(stream = %cx.pid(), "sse relay: the client does not read; disconnected");
                            return self.end(cx);
                        }
                        self.count += 1;
                    }
                }
                Event::Exit { from, .. } if Some(from) == self.target => return self.done(cx, "target process exited"),
                Event::Cancel { .. } => return self.done(cx, "canceled"),
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
    fn origin_patterns_match_as_go_path_match() {
        assert!(glob(b"https://*.example.com", b"https://app.example.com"));
        assert!(!glob(b"https://*.example.com", b"https://example.com"));
        assert!(!glob(b"http://*", b"http://a/b"), "* does not cross a /");
        assert!(glob(b"http://localhost:300?", b"http://localhost:3001"));
    }

    #[test]
    fn frames_split_data_lines_and_durations_print_as_go() {
        assert_eq!(&frame("tick", "a\nb")[..], b"event: tick\ndata: a\ndata: b\n\n");
        assert_eq!(&frame("", "x")[..], b"data: x\n\n");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
    }
}
