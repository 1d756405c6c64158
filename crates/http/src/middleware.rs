//! Router middleware (SPEC §11.4): `cors`, `real_ip`, `ratelimit`, `compress`,
//! `token_auth`, `endpoint_firewall`, `metrics` and the websocket and SSE relays are built in; a name this runtime does not
//! have is a load error naming it. A router's middleware (both lists) applies to every route
//! it owns; the order is fixed: metrics (around everything), real IP, rate limit, token,
//! firewall, the handler, compression, CORS.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use wippy_runtime::{Identity, Table, Value};

/// Middleware accepted and doing nothing here, with why: `otel` traces requests only when
/// Wippy's OpenTelemetry export is enabled (`otel.enabled`, off by default), and this runtime
/// has no OTLP exporter, so a router that lists it behaves as Wippy's does with export off.
pub const INERT: &[(&str, &str)] = &[("otel", "this runtime exports no OpenTelemetry traces; the middleware passes requests through, as Wippy's does with otel.enabled off")];

/// The middleware names this runtime has.
pub const AVAILABLE: &str = "cors, real_ip, ratelimit, compress, token_auth, endpoint_firewall, resource_firewall, sendfile, metrics, websocket_relay, sse_relay, otel (inert)";

/// A setting from a router's options map; old underscore keys (`cors_allow_origins`) too.
pub(crate) fn opt<'a>(options: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    options.get(key).or_else(|| options.get(&key.replace('.', "_"))).map(String::as_str)
}

/// [`opt`], else the first of Wippy's legacy names for the setting (`token_store`,
/// `allow_origins`, ...) that is given.
pub(crate) fn opt_or<'a>(options: &'a BTreeMap<String, String>, key: &str, legacy: &[&str]) -> Option<&'a str> {
    opt(options, key).or_else(|| legacy.iter().find_map(|l| options.get(*l)).map(String::as_str))
}

/// A relay's allowed origins: its own key (`wsrelay.allowed.origins`,
/// `sserelay.allowed.origins`), else the shared `allow_origins`, else the legacy
/// `allowed_origins`, as Wippy reads them; comma-separated.
pub(crate) fn origins(options: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    let list = opt_or(options, key, &["allow_origins", "allowed_origins"]);
    list.unwrap_or("").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// An `Origin` header's scheme and host (`https://app.example:8443` gives `https` and
/// `app.example:8443`; without a scheme, all of it is the host).
pub(crate) fn split_origin(origin: &str) -> (&str, &str) {
    let (scheme, rest) = origin.split_once("://").unwrap_or(("", origin));
    (scheme, rest.split('/').next().unwrap_or(""))
}

/// A duration as Go prints it (`1h2m3.5s`, `2.5s`, `250ms`): the form Wippy's heartbeat
/// reports uptime in.
pub(crate) fn go_duration(d: Duration) -> String {
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1000.0;
        return if ms >= 1.0 { format!("{}ms", trim(format!("{ms:.6}"))) } else { format!("{}µs", trim(format!("{:.3}", ms * 1000.0))) };
    }
    let total = d.as_secs();
    let (h, m) = (total / 3600, total / 60 % 60);
    let s = (total % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
    let secs = format!("{}s", trim(format!("{s:.9}")));
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// A relay's control message as a table: a table as it is, or a JSON object in a string
/// (Wippy unmarshals either); `None` for anything else.
pub(crate) fn control_table(v: &Value) -> Option<std::borrow::Cow<'_, Table>> {
    match v {
        Value::Table(t) => Some(std::borrow::Cow::Borrowed(&**t)),
        Value::Str(s) => match serde_json::from_slice::<serde_json::Value>(s).map(|j| crate::json::from_json(&j)) {
            Ok(Value::Table(t)) => Some(std::borrow::Cow::Owned((*t).clone())),
            _ => None,
        },
        _ => None,
    }
}

/// `*` (any run of bytes but `/`) and `?` (one byte but `/`), as Go's `path.Match`.
pub(crate) fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => s.first().is_some_and(|&c| c != b'/') && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn flag(options: &BTreeMap<String, String>, key: &str) -> Result<bool, String> {
    bool_of(key, opt(options, key).unwrap_or("false"))
}

fn bool_of(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        other => Err(format!("options.{key}: expected true or false, got {other:?}")),
    }
}

fn number(options: &BTreeMap<String, String>, key: &str, default: u64) -> Result<u64, String> {
    match opt(options, key) {
        None | Some("") => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("options.{key}: expected a whole number, got {v:?}")),
    }
}

/// Reads a Go-form duration ("1m", "500ms"): the embedder's parser (the registry's).
pub type DurationParser = fn(&str) -> Result<Duration, String>;

fn duration(options: &BTreeMap<String, String>, key: &str, default: Duration, parse: DurationParser) -> Result<Duration, String> {
    match opt(options, key) {
        None | Some("") => Ok(default),
        Some(v) => parse(v).map_err(|e| format!("options.{key}: {e}")),
    }
}

/// Resolves a bearer token in a token store to the actor and scope it stands for (the
/// embedder's: the `wippy` binary answers from its `security.token_store` entries).
pub type TokenResolver = Arc<dyn Fn(&str, &str) -> Option<Arc<Identity>> + Send + Sync>;

/// Everything a router's middleware lists asks for.
#[derive(Default)]
pub struct Middleware {
    pub cors: Option<Cors>,
    pub real_ip: Option<RealIp>,
    pub ratelimit: Option<RateLimit>,
    pub compress: Option<Compress>,
    pub token_auth: Option<TokenAuth>,
    /// `endpoint_firewall`: the action checked on the endpoint's ID.
    pub firewall: Option<String>,
    /// `resource_firewall`: the action checked on a resource the router names
    /// (`resource_firewall.action`, `access` by default, on `resource_firewall.target`).
    pub resource_firewall: Option<(String, String)>,
    /// `sendfile`: the `fs.directory` entry (`sendfile.fs`) whose files a handler may
    /// answer with (the embedder resolves it to a directory for the routes).
    pub sendfile: Option<String>,
    /// `websocket_relay`: the handler's `X-WS-Relay` answer turns the request into a socket.
    pub ws_relay: Option<crate::wsrelay::WsRelay>,
    /// `sse_relay`: the handler's `X-SSE-Relay` answer turns the response into an event
    /// stream a process writes.
    pub sse_relay: Option<crate::sserelay::SseRelay>,
    /// `metrics`: count, time and gauge the route's requests ([`RequestMetrics`]).
    pub metrics: bool,
}

impl Middleware {
    /// From a router's lists and their options maps, in order (a later list's settings of a
    /// kind win): what they make, and the first problem of each list that has one, with the
    /// list's index.
    pub fn build(lists: &[(&[String], &BTreeMap<String, String>)], parse: DurationParser) -> (Middleware, Vec<(usize, String)>) {
        let mut m = Middleware::default();
        let mut problems = Vec::new();
        for (i, (names, options)) in lists.iter().enumerate() {
            if let Err(e) = names.iter().try_for_each(|n| m.add(n, options, parse)) {
                problems.push((i, e));
            }
        }
        (m, problems)
    }

    fn add(&mut self, name: &str, options: &BTreeMap<String, String>, parse: DurationParser) -> Result<(), String> {
        match name {
            "cors" => self.cors = Some(Cors::from_options(options)?),
            "real_ip" => self.real_ip = Some(RealIp::from_options(options)?),
            "ratelimit" => self.ratelimit = Some(RateLimit::from_options(options, parse)?),
            "compress" => self.compress = Some(Compress::from_options(options)?),
            "token_auth" => self.token_auth = Some(TokenAuth::from_options(options)?),
            "websocket_relay" => self.ws_relay = Some(crate::wsrelay::WsRelay::from_options(options, parse)),
            "metrics" => self.metrics = true,
            "resource_firewall" => {
                let action = opt_or(options, "resource_firewall.action", &["resource_action"]).filter(|a| !a.is_empty()).unwrap_or("access");
                let target = opt_or(options, "resource_firewall.target", &["resource_target"]).unwrap_or("");
                if target.is_empty() {
                    return Err("options.resource_firewall.target: missing (required): the resource the firewall guards".into());
                }
                self.resource_firewall = Some((action.to_string(), target.to_string()));
            }
            "sendfile" => {
                let fs = opt_or(options, "sendfile.fs", &["fs"]).unwrap_or("");
                if fs.is_empty() {
                    return Err("options.sendfile.fs: missing (required): the fs.directory entry files are sent from".into());
                }
                self.sendfile = Some(fs.to_string());
            }
            "sse_relay" => self.sse_relay = Some(crate::sserelay::SseRelay::from_options(options, parse)),
            "endpoint_firewall" => self.firewall = Some(opt(options, "endpoint_firewall.action").filter(|a| !a.is_empty()).unwrap_or("access").to_string()),
            other if INERT.iter().any(|(n, _)| *n == other) => {}
            other => return Err(format!("unknown middleware {other:?} (available: {AVAILABLE})")),
        }
        Ok(())
    }
}

/// `metrics`: Wippy's three request series, through the `metrics` facade, so they reach
/// whatever recorder the embedder installed (the `wippy` binary's Prometheus endpoint,
/// `metrics.prometheus.address`) and cost a no-op call when there is none:
/// `wippy_http_requests_total` and `wippy_http_request_duration_seconds` by method, route
/// (the route's pattern, `/api/users/{id}`) and status, and `wippy_http_requests_in_flight`
/// by method and route. The duration runs until the response's head is ready (a streamed
/// body goes on after it). Made when a request on such a route starts; recorded when it is
/// dropped, so a request whose client went away is still counted (as 499, nginx's "client
/// closed request").
pub struct RequestMetrics {
    method: String,
    route: String,
    start: std::time::Instant,
    status: u16,
}

pub const REQUESTS_TOTAL: &str = "wippy_http_requests_total";
pub const REQUEST_DURATION: &str = "wippy_http_request_duration_seconds";
/// Prometheus's default histogram buckets (its client libraries' `DefBuckets`), in seconds:
/// the request durations' buckets, as Wippy's, and those of the Lua `metrics` module's
/// histograms.
pub const DEFAULT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
pub const REQUESTS_IN_FLIGHT: &str = "wippy_http_requests_in_flight";

impl RequestMetrics {
    pub fn start(method: &str, route: String) -> RequestMetrics {
        metrics::gauge!(REQUESTS_IN_FLIGHT, "method" => method.to_string(), "route" => route.clone()).increment(1.0);
        RequestMetrics { method: method.to_string(), route, start: std::time::Instant::now(), status: 499 }
    }

    /// The status the request was answered with.
    pub fn answered(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        let (method, route) = (std::mem::take(&mut self.method), std::mem::take(&mut self.route));
        metrics::gauge!(REQUESTS_IN_FLIGHT, "method" => method.clone(), "route" => route.clone()).decrement(1.0);
        let status = self.status.to_string();
        metrics::counter!(REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status.clone()).increment(1);
        metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route, "status" => status).record(self.start.elapsed().as_secs_f64());
    }
}

/// `real_ip`: the client address from `True-Client-IP` / `X-Real-IP` / `X-Forwarded-For`
/// when the peer is a trusted proxy.
#[derive(Debug, Clone)]
pub struct RealIp {
    trusted: Vec<ipnet::IpNet>,
    trust_all: bool,
}

impl RealIp {
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<RealIp, String> {
        let mut trusted = Vec::new();
        // as Wippy: the legacy `trusted_subnets` too, and without either the loopback,
        // private, link-local and CGNAT ranges a proxy in front of the node comes from
        let list = opt_or(options, "real_ip.trusted.subnets", &["trusted_subnets"]).filter(|l| !l.trim().is_empty());
        let list = list.unwrap_or("127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,::1/128,fc00::/7,fe80::/10");
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = s.parse::<ipnet::IpNet>().or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from)).map_err(|_| format!("options.real_ip.trusted.subnets: {s:?} is not a CIDR subnet or an IP address"))?;
            trusted.push(net);
        }
        Ok(RealIp { trusted, trust_all: flag(options, "real_ip.trust_all")? })
    }

    /// The client's address as seen through a trusted proxy (the peer's port kept).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !(self.trust_all || self.trusted.iter().any(|n| n.contains(&peer.ip()))) {
            return peer;
        }
        // Wippy's order: True-Client-IP, X-Real-IP, then the first X-Forwarded-For entry
        let named = ["true-client-ip", "x-real-ip", "x-forwarded-for"].into_iter().find_map(|n| headers.get(n).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()));
        match named.and_then(|v| v.split(',').next()).and_then(|v| v.trim().parse::<IpAddr>().ok()) {
            Some(ip) => SocketAddr::new(ip, peer.port()),
            None => peer,
        }
    }
}

/// `ratelimit`: a token bucket per key (GCRA, the `governor` crate).
pub struct RateLimit {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    requests: u64,
    window: String,
    key: RateKey,
    max_entries: usize,
    cleanup_every: u64,
    seen: AtomicU64,
}

enum RateKey {
    Ip,
    Header(String),
    Query(String),
}

impl RateLimit {
    pub fn from_options(options: &BTreeMap<String, String>, parse: DurationParser) -> Result<RateLimit, String> {
        let requests = number(options, "ratelimit.requests", 100)?;
        let window = duration(options, "ratelimit.window", Duration::from_secs(60), parse)?;
        let burst = number(options, "ratelimit.burst", 20)?;
        if requests == 0 || window.is_zero() {
            return Err("options.ratelimit.requests and ratelimit.window must be more than zero".into());
        }
        let key = match opt(options, "ratelimit.key").unwrap_or("ip") {
            "" | "ip" => RateKey::Ip,
            k => match k.split_once(':') {
                Some(("header", h)) if !h.is_empty() => RateKey::Header(h.to_ascii_lowercase()),
                Some(("query", q)) if !q.is_empty() => RateKey::Query(q.to_string()),
                _ => return Err(format!("options.ratelimit.key: expected ip, header:<name> or query:<name>, got {k:?}")),
            },
        };
        let period = window / u32::try_from(requests).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(u32::try_from(burst.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period.max(Duration::from_nanos(1))).ok_or("options.ratelimit.window: too short")?.allow_burst(burst);
        let cleanup = duration(options, "ratelimit.cleanup_interval", Duration::from_secs(300), parse)?;
        Ok(RateLimit {
            limiter: governor::RateLimiter::keyed(quota),
            requests,
            window: opt(options, "ratelimit.window").unwrap_or("1m").to_string(),
            key,
            max_entries: number(options, "ratelimit.max_entries", 100_000)? as usize,
            // (requests, not seconds: cheap to count, and a quiet server has nothing to clean)
            cleanup_every: cleanup.as_secs().max(1) * 100,
            seen: AtomicU64::new(0),
        })
    }

    /// Whether a request from `client` may go on; why not when not.
    pub fn admit(&self, client: IpAddr, headers: &HeaderMap, query: Option<&str>) -> Result<(), Refused> {
        // as Wippy: a request without the header or parameter the key names is refused
        // (400), not counted in some bucket
        let key = match &self.key {
            RateKey::Ip => Some(client.to_string()),
            RateKey::Header(h) => headers.get(h.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(|v| format!("h:{v}")),
            RateKey::Query(q) => query
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.split_once('=').or(Some((p, ""))))
                .find(|(k, v)| k == q && !v.is_empty())
                .map(|(_, v)| format!("q:{v}")),
        }
        .ok_or(Refused::NoKey)?;
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n % self.cleanup_every == 0 || self.limiter.len() > self.max_entries {
            self.limiter.retain_recent();
        }
        if self.limiter.check_key(&key).is_ok() {
            return Ok(());
        }
        let v = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
        Err(Refused::Limited([(HeaderName::from_static("x-ratelimit-limit"), v(self.requests.to_string())), (HeaderName::from_static("x-ratelimit-window"), v(self.window.clone()))]))
    }
}

/// Why `ratelimit` stopped a request.
pub enum Refused {
    /// The request lacks the header or query parameter the key names (400).
    NoKey,
    /// Over the limit (429), with the limit's headers.
    Limited([(HeaderName, HeaderValue); 2]),
}

/// `compress`: gzip for clients that accept it, on whole bodies of at least `min` bytes.
#[derive(Debug, Clone)]
pub struct Compress {
    pub level: flate2::Compression,
    pub min: usize,
}

impl Compress {
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Compress, String> {
        let level = match opt(options, "compress.level").unwrap_or("default") {
            "" | "default" => flate2::Compression::default(),
            "fastest" => flate2::Compression::fast(),
            "best" => flate2::Compression::best(),
            other => return Err(format!("options.compress.level: expected default, fastest or best, got {other:?}")),
        };
        Ok(Compress { level, min: number(options, "compress.min.length", 1024)? as usize })
    }

    /// The body gzipped, if the client takes gzip and it is worth it.
    pub fn gzip(&self, accept: Option<&HeaderValue>, body: &[u8]) -> Option<Vec<u8>> {
        let takes = accept.and_then(|a| a.to_str().ok()).is_some_and(|a| a.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
        if !takes || body.len() < self.min.max(1) {
            return None;
        }
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), self.level);
        enc.write_all(body).ok()?;
        enc.finish().ok()
    }
}

/// `token_auth`: a bearer token, resolved in a token store, becomes the call's actor and
/// scope. A request without a valid token goes on with none (a firewall decides).
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub store: String,
    header: String,
    prefix: String,
    query: String,
    cookie: String,
}

impl TokenAuth {
    /// As Wippy reads them: each setting under `token_auth.` or its legacy name (`token_store`,
    /// `header_name`, `header_prefix`, `query_param`, `cookie_name`); an empty one is its
    /// default (`Authorization`, `Bearer `, `x-auth-token`, `x-auth-token`).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<TokenAuth, String> {
        let get = |key: &str, legacy: &str, default: &str| -> String {
            opt_or(options, key, &[legacy]).filter(|s| !s.is_empty()).unwrap_or(default).to_string()
        };
        let store = get("token_auth.store", "token_store", "");
        if store.is_empty() {
            return Err("options.token_auth.store: required (the security.token_store entry that holds the tokens)".into());
        }
        Ok(TokenAuth {
            store,
            header: get("token_auth.header.name", "header_name", "Authorization").to_ascii_lowercase(),
            prefix: get("token_auth.header.prefix", "header_prefix", "Bearer "),
            query: get("token_auth.query.param", "query_param", "x-auth-token"),
            cookie: get("token_auth.cookie.name", "cookie_name", "x-auth-token"),
        })
    }

    /// The token a request carries, if any: the header (after its prefix), else the query
    /// parameter, else the cookie.
    pub fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
        if let Some(v) = headers.get(self.header.as_str()).and_then(|v| v.to_str().ok()) {
            let t = if self.prefix.is_empty() { Some(v) } else { v.strip_prefix(self.prefix.as_str()).or_else(|| v.strip_prefix(self.prefix.trim_end())) };
            if let Some(t) = t.map(str::trim).filter(|t| !t.is_empty()) {
                return Some(t.to_string());
            }
        }
        let from_query = query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == self.query)
            .map(|(_, v)| crate::client::decode_query(v).unwrap_or_else(|_| v.to_string()))
            .filter(|t| !t.is_empty());
        from_query.or_else(|| {
            headers
                .get_all(hyper::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, v)| *k == self.cookie && !v.is_empty())
                .map(|(_, v)| v.trim_matches('"').to_string())
        })
    }
}

/// The `cors` middleware's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    origins: Vec<String>,
    methods: String,
    headers: String,
    expose: String,
    credentials: bool,
    max_age: String,
    private_network: bool,
}

impl Cors {
    /// From a router's options map (`cors.allow.origins` …; old underscore keys such as
    /// `cors_allow_origins` are accepted too).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Cors, String> {
        // `cors.allow.origins`, its underscore form, or Wippy's legacy `allow_origins` (the
        // key without its `cors.`); an empty value is the default, as Wippy reads it
        let get = |key: &str, default: &str| -> String {
            let legacy = key.trim_start_matches("cors.").replace('.', "_");
            opt_or(options, key, &[&legacy]).filter(|v| !v.is_empty()).unwrap_or(default).to_string()
        };
        let max_age = get("cors.max.age", "86400");
        if max_age.parse::<u64>().is_err() {
            return Err(format!("options.cors.max.age: expected a number of seconds, got {max_age:?}"));
        }
        Ok(Cors {
            origins: get("cors.allow.origins", "*").split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            methods: get("cors.allow.methods", "GET,POST,PUT,DELETE,OPTIONS,PATCH"),
            headers: get("cors.allow.headers", "Origin,Content-Type,Accept,Authorization,X-Requested-With"),
            expose: get("cors.expose.headers", ""),
            credentials: bool_of("cors.allow.credentials", &get("cors.allow.credentials", "false"))?,
            max_age,
            private_network: bool_of("cors.allow.private.network", &get("cors.allow.private.network", "false"))?,
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| {
            o == "*" || o == origin
                // `*.example.com`: any subdomain (Wippy's rule: the origin ends with
                // `.example.com` and has something before it)
                || o.strip_prefix('*').is_some_and(|suffix| suffix.starts_with('.') && origin.len() > suffix.len() && origin.ends_with(suffix))
                || (o == "localhost" && {
                    let (_, host) = split_origin(origin);
                    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                    host == "localhost" || host == "127.0.0.1" || host == "[::1]"
                })
        })
    }

    /// The answer to a preflight (an `OPTIONS` request with `Access-Control-Request-Method`)
    /// from an origin this allows: 204 with the preflight headers. None for any other request.
    pub fn preflight(&self, headers: &HeaderMap) -> Option<crate::exchange::HttpResponse> {
        let origin = headers.get(hyper::header::ORIGIN)?;
        if !headers.contains_key(hyper::header::ACCESS_CONTROL_REQUEST_METHOD) || !self.allows(origin.to_str().ok()?) {
            return None;
        }
        let mut resp = hyper::Response::new(crate::exchange::RespBody::empty());
        *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
        self.apply(Some(origin), resp.headers_mut(), true);
        Some(resp)
    }

    /// Add the CORS headers for a request from `origin` (a preflight gets the method,
    /// header and max-age ones too).
    pub fn apply(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap, preflight: bool) {
        let Some(origin) = origin.and_then(|o| o.to_str().ok()) else { return };
        if !self.allows(origin) {
            return;
        }
        let set = |out: &mut HeaderMap, name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                out.insert(HeaderName::from_static(name), v);
            }
        };
        // as Wippy: the request's origin echoed, never `*`
        set(out, "access-control-allow-origin", origin);
        if self.credentials {
            set(out, "access-control-allow-credentials", "true");
        }
        if self.private_network {
            set(out, "access-control-allow-private-network", "true");
        }
        if preflight {
            set(out, "access-control-allow-methods", &self.methods);
            set(out, "access-control-allow-headers", &self.headers);
            set(out, "access-control-max-age", &self.max_age);
            out.append(hyper::header::VARY, HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"));
        } else {
            if !self.expose.is_empty() {
                set(out, "access-control-expose-headers", &self.expose);
            }
            // (appended: gzip's `Accept-Encoding` may be there already)
            out.append(hyper::header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_auth_finds_the_token_in_the_header_then_the_query_then_the_cookie() {
        let t = TokenAuth::from_options(&BTreeMap::from([("token_store".to_string(), "app:tokens".to_string())])).unwrap();
        assert_eq!(t.store, "app:tokens", "the legacy key");
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("theme=dark; x-auth-token=from-cookie"));
        assert_eq!(t.token(&h, Some("a=1")).as_deref(), Some("from-cookie"));
        assert_eq!(t.token(&h, Some("x-auth-token=from%20query")).as_deref(), Some("from query"));
        h.insert("authorization", HeaderValue::from_static("Bearer from-header"));
        assert_eq!(t.token(&h, Some("x-auth-token=q")).as_deref(), Some("from-header"));
    }

    #[test]
    fn real_ip_trusts_private_proxies_by_default_and_reads_wippys_header_order() {
        let r = RealIp::from_options(&BTreeMap::new()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7, 10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("198.51.100.8"));
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        assert_eq!(r.client(peer, &h).ip().to_string(), "198.51.100.8", "X-Real-IP before X-Forwarded-For");
        h.insert("true-client-ip", HeaderValue::from_static("198.51.100.9"));
        assert_eq!(r.client(peer, &h).ip().to_string(), "198.51.100.9", "True-Client-IP first");
        let public: SocketAddr = "203.0.113.1:5000".parse().unwrap();
        assert_eq!(r.client(public, &h), public, "a public peer is not a trusted proxy");
    }

    #[test]
    fn cors_reads_wippys_keys_and_echoes_allowed_origins() {
        let opts = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let c = Cors::from_options(&opts(&[("allow_origins", "*.example.com, localhost"), ("allow_credentials", "true")])).unwrap();
        assert!(c.allows("https://app.example.com") && !c.allows("https://example.com") && !c.allows("https://evil.com"));
        assert!(c.allows("http://localhost:3000"));
        let mut h = HeaderMap::new();
        c.apply(Some(&HeaderValue::from_static("https://app.example.com")), &mut h, false);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://app.example.com");
        assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
        assert_eq!(h.get("vary").unwrap(), "Origin");
        let any = Cors::from_options(&opts(&[("cors.allow.origins", "")])).unwrap();
        let mut h = HeaderMap::new();
        any.apply(Some(&HeaderValue::from_static("https://x.test")), &mut h, true);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://x.test", "echoed, not *");
        assert_eq!(h.get("access-control-max-age").unwrap(), "86400");
    }
}
