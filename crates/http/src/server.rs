//! An `http.service`: a listener process (supervised like any service) whose connections
//! are served by hyper on the node's tokio runtime. Each routed request runs its
//! endpoint's function as a process of its own (SPEC §11.2); the connection task waits for
//! that process's response, never a worker thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch, Semaphore};
use wippy_runtime::{Context, Error, Event, Events, NodeRef, Pid, Process, Spawn, Status, Value};

use crate::exchange::{text_response, Exchange, HttpResponse, RespBody};
use crate::middleware::{Middleware, TokenResolver};
use crate::route::{Found, Table};
use crate::statics::StaticMount;

/// A server's settings (`http.service`, SPEC §11.1.1).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub id: String,
    /// Where to listen, Go form (`:8080`, `127.0.0.1:8080`).
    pub addr: String,
    /// Reading a request's head and body (0: the head within [`DEFAULT_HEADER_TIMEOUT`]).
    pub read_timeout: Duration,
    /// An idle keep-alive connection is closed after this (0: [`DEFAULT_HEADER_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// A write the client does not take within this closes the connection (0: none).
    pub write_timeout: Duration,
    /// TLS termination (`tls.mode: manual`); none: plain HTTP.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// The largest request head (431 above it).
    pub max_header_bytes: usize,
    /// The largest request body (413 above a declared length; `body()` fails above it).
    pub max_body: u64,
    /// The host handler processes run on.
    pub handler_host: String,
    /// `lifecycle.security`: the actor and scope a request's handler runs with when
    /// `token_auth` gives none (Wippy's server baseline).
    pub identity: Option<Baseline>,
}

/// A server's baseline identity; two are equal when they name the same actor and policies
/// (a reload that changes neither keeps the server running).
#[derive(Clone, Debug)]
pub struct Baseline(pub Arc<wippy_runtime::Identity>);

impl PartialEq for Baseline {
    fn eq(&self, other: &Self) -> bool {
        let ids = |i: &wippy_runtime::Identity| i.scope.as_ref().map(|s| s.policies().iter().map(|p| p.id.clone()).collect::<Vec<_>>());
        self.0.actor == other.0.actor && ids(&self.0) == ids(&other.0)
    }
}

/// A client that sends no complete request head within this is disconnected (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1 << 20;
/// SPEC §11.3 `http.request` `max_body` default: 120 MiB.
pub const DEFAULT_MAX_BODY: u64 = 125_829_120;
/// An endpoint whose handler has not answered after this gets a 504.
pub const DEFAULT_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a route leads to.
pub struct Target {
    pub endpoint: Arc<str>,
    pub func: Arc<str>,
    pub timeout: Duration,
    /// The router's middleware.
    pub mw: Arc<Middleware>,
    /// `sendfile`: the directory of the router's `sendfile.fs`.
    pub files: Option<Arc<crate::statics::SendFile>>,
}

/// A server's routes and static mounts (swapped whole on a change; a clone shares them).
#[derive(Default, Clone)]
pub struct Routes {
    pub table: Arc<Table<Arc<Target>>>,
    pub statics: Vec<Arc<StaticMount>>,
}

/// One server's shared state: settings and the current routes.
pub struct ServerState {
    pub config: ServiceConfig,
    pub routes: RwLock<Arc<Routes>>,
    pub(crate) id: Arc<str>,
    /// How `token_auth` resolves a token (none: every token is unknown).
    pub tokens: Option<TokenResolver>,
}

impl ServerState {
    pub fn new(config: ServiceConfig, tokens: Option<TokenResolver>) -> Arc<ServerState> {
        let id = Arc::from(config.id.as_str());
        Arc::new(ServerState { config, routes: RwLock::new(Arc::new(Routes::default())), id, tokens })
    }
    pub fn set_routes(&self, routes: Routes) {
        *self.routes.write() = Arc::new(routes);
    }
}

/// Parse a Go-form listen address.
pub fn listen_addr(addr: &str) -> Result<SocketAddr, String> {
    if addr.is_empty() {
        return Err("empty address".into());
    }
    let full = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
    if let Ok(a) = full.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    full.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| format!("invalid listen address {addr:?} (expected host:port or :port)"))
}

/// The listener process of one `http.service`.
pub struct ServerProcess {
    state: Arc<ServerState>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::AbortHandle>,
}

impl ServerProcess {
    pub fn new(state: Arc<ServerState>) -> ServerProcess {
        ServerProcess { state, stop: None, task: None }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // terminated (or stopped): no connection outlives its server
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

const DRAINED: &str = "http.drained";

impl Process for ServerProcess {
    fn init(&mut self, cx: &mut Context<'_>, _method: &str, _args: Vec<Value>) -> Status {
        let cfg = &self.state.config;
        let addr = match listen_addr(&cfg.addr) {
            Ok(a) => a,
            Err(e) => return Status::Exit(Err(Error::invalid(format!("{}: {e}", cfg.id)))),
        };
        let std_listener = match std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
            Ok(l) => l,
            Err(e) => return Status::Exit(Err(Error::unavailable(format!("{}: cannot listen on {}: {e}", cfg.id, cfg.addr)))),
        };
        let local = std_listener.local_addr().ok();
        let node = cx.node();
        let handle = node.tokio_handle();
        let listener = {
            let _in = handle.enter();
            match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => return Status::Exit(Err(Error::unavailable(format!("{}: {e}", cfg.id)))),
            }
        };
        let tls = match &cfg.tls {
            None => None,
            Some(t) => match t.acceptor() {
                Ok(a) => Some(a),
                Err(e) => return Status::Exit(Err(Error::invalid(format!("{}: {e}", cfg.id)))),
            },
        };
        let (tx, rx) = watch::channel(false);
        self.stop = Some(tx);
        let me = cx.pid();
        let state = self.state.clone();
        let task = handle.spawn(async move {
            accept_loop(listener, state, node.clone(), rx, tls).await;
            let _ = node.send(me, DRAINED, Default::default());
        });
        self.task = Some(task.abort_handle());
        tracing::info!(server = %self.state.id, addr = %local.map(|a| a.to_string()).unwrap_or_default(), "http server listening");
        Status::Wait
    }

    fn step(&mut self, _cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        while let Some(ev) = events.next() {
            match ev {
                Event::Cancel { .. } => {
                    // stop accepting; let in-flight requests finish (the supervisor
                    // terminates us after the stop timeout)
                    if let Some(s) = &self.stop {
                        let _ = s.send(true);
                    }
                }
                Event::Message(m) if m.topic.as_str() == DRAINED => {
                    self.task = None;
                    tracing::info!(server = %self.state.id, "http server stopped");
                    return Status::Exit(Ok(Value::Nil));
                }
                _ => {}
            }
        }
        Status::Wait
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<ServerState>, node: NodeRef, mut stop: watch::Receiver<bool>, tls: Option<tokio_rustls::TlsAcceptor>) {
    // each connection task holds a sender: when all are dropped, every connection ended
    // (hyper-util's GracefulShutdown does not take connections with upgrades)
    let (live, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let slots = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let header_timeout = [state.config.read_timeout, state.config.idle_timeout].into_iter().filter(|d| !d.is_zero()).min().unwrap_or(DEFAULT_HEADER_TIMEOUT);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // out of descriptors and the like: back off, keep serving
                    tracing::warn!(server = %state.id, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn { state: state.clone(), node: node.clone(), remote, header_timeout, stop: stop.clone(), live: live.clone(), permit };
        // timeouts.write: a client that takes no bytes for that long is disconnected
        // (only then: the plain socket is the request path's fast case)
        let io = if state.config.write_timeout.is_zero() {
            tokio_util::either::Either::Left(stream)
        } else {
            let mut t = tokio_io_timeout::TimeoutStream::new(stream);
            t.set_write_timeout(Some(state.config.write_timeout));
            tokio_util::either::Either::Right(Box::pin(t))
        };
        match &tls {
            None => {
                tokio::spawn(conn.serve(io));
            }
            Some(acceptor) => {
                let accept = acceptor.accept(io);
                let id = state.id.clone();
                tokio::spawn(async move {
                    // the handshake within the head's deadline too (a client that never
                    // finishes one is a slow client)
                    match tokio::time::timeout(conn.header_timeout, accept).await {
                        Ok(Ok(tls)) => conn.serve(tls).await,
                        Ok(Err(e)) => tracing::debug!(server = %id, "tls handshake: {e}"),
                        Err(_) => tracing::debug!(server = %id, "tls handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    drop(live);
    let _ = all_done.recv().await;
}

/// One accepted connection, served until it ends or the server stops.
struct Conn {
    state: Arc<ServerState>,
    node: NodeRef,
    remote: SocketAddr,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
    /// Held while the connection lives (the server's stop waits for every one).
    live: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { state, node, remote, header_timeout, mut stop, live, permit } = self;
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new()).writev(false).header_read_timeout(header_timeout).max_buf_size(state.config.max_header_bytes.max(8192)).keep_alive(true);
        let st = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            let nd = node.clone();
            async move { Ok::<_, std::convert::Infallible>(serve(&st, &nd, req, remote).await) }
        });
        let conn = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                // finish the request in flight, then close
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(permit);
        drop(live);
    }
}

/// Answer one request.
async fn serve(state: &Arc<ServerState>, node: &NodeRef, req: Request<Incoming>, remote: SocketAddr) -> HttpResponse {
    let routes = state.routes.read().clone();
    let found = routes.table.lookup(req.method().as_str(), req.uri().path());
    match found {
        Found::Route(route, params) => {
            let target = route.target.clone();
            let mw = &target.mw;
            // a `*` route has no router OPTIONS answer: `cors` answers an allowed preflight
            // itself, any other OPTIONS request reaches the function (as Wippy's)
            if let (true, Some(c)) = (route.any_method() && req.method() == hyper::Method::OPTIONS, &mw.cors) {
                if let Some(resp) = c.preflight(req.headers()) {
                    return resp;
                }
            }
            let mut metered = mw.metrics.then(|| crate::middleware::RequestMetrics::start(req.method().as_str(), route.pattern.to_string()));
            let mut req = req;
            let origin = req.headers().get(hyper::header::ORIGIN).cloned();
            let host_header = mw.sse_relay.as_ref().and_then(|_| req.headers().get(hyper::header::HOST).cloned());
            let file_request = target.files.as_ref().map(|_| (req.method().clone(), req.headers().clone()));
            let accept = req.headers().get(hyper::header::ACCEPT_ENCODING).cloned();
            // a websocket request on a relayed route: the handler answers, then the socket
            // (the request's upgrade and headers are kept only when it asks for a websocket)
            let upgrade = (mw.ws_relay.is_some() && crate::wsrelay::is_upgrade(req.headers())).then(|| (hyper::upgrade::on(&mut req), req.headers().clone()));
            let mut resp = match before(state, node, &target, &req, remote) {
                Ok((remote, identity)) => call(state, node, &target, req, remote, params, identity).await,
                Err(resp) => resp,
            };
            if let Some(ws) = &mw.ws_relay {
                resp = crate::wsrelay::answer(ws, resp, upgrade, node, &state.config.handler_host);
            }
            if let (Some(files), Some((method, headers))) = (&target.files, &file_request) {
                resp = files.answer(method, headers, resp).await;
            }
            if let Some(sse) = &mw.sse_relay {
                resp = crate::sserelay::answer(sse, resp, origin.as_ref(), host_header.as_ref(), node, &state.config.handler_host);
            }
            if let Some(c) = &mw.compress {
                compress(c, accept.as_ref(), &mut resp);
            }
            if let Some(c) = &mw.cors {
                c.apply(origin.as_ref(), resp.headers_mut(), false);
            }
            if let Some(m) = metered.as_mut() {
                m.answered(resp.status().as_u16());
            }
            resp
        }
        Found::Options(route) => {
            let mut resp = Response::new(RespBody::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            if let Some(c) = &route.target.mw.cors {
                c.apply(req.headers().get(hyper::header::ORIGIN), resp.headers_mut(), true);
            }
            resp
        }
        Found::MethodNotAllowed(allow) => {
            let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert(ALLOW, v);
            }
            resp
        }
        Found::NotFound => {
            let path = req.uri().path();
            match routes.statics.iter().filter(|m| m.covers(path)).max_by_key(|m| m.prefix.len()) {
                Some(m) => m.serve(&req).await,
                None => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
            }
        }
    }
}

/// The router's middleware before the handler (SPEC §11.4): the client's address through a
/// trusted proxy, the rate limit, the token's actor and scope, the endpoint firewall. The
/// address and identity the call runs with, or the response that ends the request here.
fn before(state: &ServerState, node: &NodeRef, target: &Target, req: &Request<Incoming>, peer: SocketAddr) -> Result<(SocketAddr, Option<Arc<wippy_runtime::Identity>>), HttpResponse> {
    let mw = &target.mw;
    let remote = mw.real_ip.as_ref().map_or(peer, |r| r.client(peer, req.headers()));
    if let Some(rl) = &mw.ratelimit {
        match rl.admit(remote.ip(), req.headers(), req.uri().query()) {
            Ok(()) => {}
            Err(crate::middleware::Refused::NoKey) => return Err(text_response(StatusCode::BAD_REQUEST, "Rate limit key extraction failed\n")),
            Err(crate::middleware::Refused::Limited(headers)) => {
                let mut resp = text_response(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded\n");
                for (k, v) in headers {
                    resp.headers_mut().insert(k, v);
                }
                return Err(resp);
            }
        }
    }
    let identity = match &mw.token_auth {
        Some(ta) => match (ta.token(req.headers(), req.uri().query()), &state.tokens) {
            (Some(token), Some(resolve)) => resolve(&ta.store, &token),
            _ => None,
        },
        None => None,
    };
    // a token's actor and scope, else the server's baseline (`lifecycle.security`)
    let identity = identity.or_else(|| state.config.identity.as_ref().map(|b| b.0.clone()));
    let guards = mw.resource_firewall.iter().map(|(a, r)| (a.as_str(), r.as_str(), "resource")).chain(mw.firewall.iter().map(|a| (a.as_str(), &*target.endpoint, "endpoint")));
    for (action, resource, what) in guards {
        firewall(node, identity.as_deref(), action, resource, what)?;
    }
    Ok((remote, identity))
}

/// `endpoint_firewall` / `resource_firewall`, as Wippy's: a request needs an actor (401
/// otherwise: the token middleware found none), the actor a scope, and the scope must allow
/// `action` on `resource` (403 otherwise); each refusal is Wippy's JSON error body.
fn firewall(node: &NodeRef, identity: Option<&wippy_runtime::Identity>, action: &str, resource: &str, what: &str) -> Result<(), HttpResponse> {
    let refuse = |status: StatusCode, error: &str, details: String| {
        let body = serde_json::json!({ "success": false, "error": error, "details": details });
        let mut r = text_response(status, &format!("{body}\n"));
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let Some(identity) = identity.filter(|i| i.actor.as_ref().is_some_and(|a| !a.id.is_empty())) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "Authentication required", format!("You must be authenticated to access this {what}")));
    };
    if identity.scope.is_none() {
        return Err(refuse(StatusCode::FORBIDDEN, "Access denied", "No authorization scope available".into()));
    }
    let r = wippy_runtime::Request { action, resource, pid: None, meta: None, target: None };
    if !wippy_runtime::evaluate(Some(identity), node.security().strict(), &r) {
        tracing::warn!(actor = %identity.actor.as_ref().map_or("", |a| a.id.as_str()), action, resource, "{what} firewall: permission denied");
        return Err(refuse(StatusCode::FORBIDDEN, "Access denied", format!("You don't have permission to access this {what}")));
    }
    Ok(())
}

/// gzip a whole response body when the client takes it (`compress`); a streamed or
/// already encoded body goes as it is.
fn compress(c: &crate::middleware::Compress, accept: Option<&HeaderValue>, resp: &mut HttpResponse) {
    // (a part of a file, or an answer that has no body, stays as it is)
    if resp.headers().contains_key(hyper::header::CONTENT_ENCODING) || resp.headers().contains_key(hyper::header::CONTENT_RANGE) || resp.status() == StatusCode::PARTIAL_CONTENT {
        return;
    }
    let RespBody::Full(Some(body)) = resp.body() else { return };
    let Some(gz) = c.gzip(accept, body) else { return };
    *resp.body_mut() = RespBody::Full(Some(bytes::Bytes::from(gz)));
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.remove(CONTENT_LENGTH);
    h.append(hyper::header::VARY, HeaderValue::from_static("Accept-Encoding"));
}

/// Cancels a handler whose client went away before it answered.
struct CancelOnDrop {
    node: NodeRef,
    pid: Option<Pid>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = self.node.cancel(pid, "client disconnected");
        }
    }
}

/// Run the endpoint's function for this request and wait for its response.
async fn call(
    state: &Arc<ServerState>,
    node: &NodeRef,
    target: &Arc<Target>,
    req: Request<Incoming>,
    remote: SocketAddr,
    params: Vec<(String, String)>,
    identity: Option<Arc<wippy_runtime::Identity>>,
) -> HttpResponse {
    let (parts, body) = req.into_parts();
    if let Some(n) = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if n > state.config.max_body {
            return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
    }
    let (tx, rx) = oneshot::channel();
    let ex = Arc::new(Exchange::new(parts, body, remote, Some(params), state.id.clone(), target.endpoint.clone(), tx));
    let done = ex.clone();
    let endpoint = target.endpoint.clone();
    let mut spawn = Spawn::entry(&target.func).attach(ex);
    if let Some(identity) = identity {
        spawn = spawn.identity(identity);
    }
    let then = Box::new(move |pid: Pid, result: wippy_runtime::ExitResult| {
        if let Err(e) = &result {
            tracing::error!(%pid, endpoint = %endpoint, kind = e.kind.as_str(), "http handler failed: {}", e.message);
        }
        done.finish(&result);
    });
    let pid = match node.spawn_then(&state.config.handler_host, spawn, then) {
        Ok(pid) => pid,
        Err(e) => {
            tracing::error!(endpoint = %target.endpoint, "cannot start the http handler {}: {}", target.func, e.message);
            let status = if e.kind == wippy_runtime::ErrorKind::LimitExceeded { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
            return text_response(status, "internal error\n");
        }
    };
    let mut guard = CancelOnDrop { node: node.clone(), pid: Some(pid) };
    let answer = if target.timeout.is_zero() { Ok(rx.await) } else { tokio::time::timeout(target.timeout, rx).await };
    guard.pid = None;
    match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
        Err(_) => {
            tracing::warn!(%pid, endpoint = %target.endpoint, "http handler did not answer within {:?}: terminated", target.timeout);
            let _ = node.terminate(pid);
            text_response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n")
        }
    }
}
