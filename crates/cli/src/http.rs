//! The HTTP entry kinds (SPEC §11.1): `http.service`, `http.router`, `http.endpoint`,
//! `http.static`, and the `fs.directory` a static mount serves. Each is checked alone
//! (fields, references), then per server as a whole (router prefixes, the route table's
//! conflicts, mount paths) so every error names its entry and field; at boot each server
//! becomes a listener service on a host of its own, where its handlers run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use wippy_http::middleware::Middleware;
use wippy_http::route::{self, Pattern, Route, Table};
use wippy_http::server::{self, Routes, ServerState, ServiceConfig, Target};
use wippy_http::statics::StaticMount;
use wippy_registry::{Checker, EntryId, Lifecycle};
use wippy_runtime::{HostConfig, Process};

use crate::plan::Plan;

#[derive(Default)]
pub struct HttpPlan {
    pub services: Vec<(EntryId, ServiceConfig)>,
    pub routers: Vec<RouterPlan>,
    pub endpoints: Vec<EndpointPlan>,
    pub statics: Vec<StaticPlan>,
    /// `fs.directory` entries: their directory (made absolute by the plan).
    pub filesystems: Vec<(EntryId, PathBuf, bool)>,
    /// Each server's routes, built (and checked) once by the plan.
    pub built: HashMap<EntryId, Routes>,
    /// Servers' `tls`, read by [`load_tls`] once paths resolve.
    pub tls: Vec<(EntryId, TlsPlan)>,
    /// Servers' `lifecycle.security`, resolved into their configs once every policy is known.
    pub identities: Vec<(EntryId, crate::plan::IdentitySpec)>,
}

pub struct RouterPlan {
    pub id: EntryId,
    pub server: EntryId,
    pub prefix: String,
    pub mw: Arc<Middleware>,
}

pub struct EndpointPlan {
    pub id: EntryId,
    pub router: EntryId,
    pub method: String,
    pub path: String,
    pub func: EntryId,
    pub timeout: Duration,
}

pub struct StaticPlan {
    pub id: EntryId,
    pub server: EntryId,
    pub path: String,
    pub fs: EntryId,
    pub directory: String,
    pub index: String,
    pub cache: String,
    pub spa: bool,
}

/// The host an `http.service`'s handlers run on.
pub fn handler_host(server: &EntryId) -> String {
    format!("{server}#handlers")
}

fn meta_ref(c: &mut Checker, key: &str, kinds: &[&str]) -> Option<EntryId> {
    let field = format!("meta.{key}");
    match c.entry.meta.get(key) {
        None | Some(Json::Null) => {
            c.error(&field, format!("missing metadata: {key}"));
            None
        }
        Some(Json::String(s)) => {
            let s = s.clone();
            c.resolve(&field, &s, kinds)
        }
        Some(other) => {
            c.error(&field, format!("must be an entry ID, got {other}"));
            None
        }
    }
}

/// A flat string map (`options`): strings, numbers and booleans as their text.
fn options(c: &mut Checker, field: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match c.get(field) {
        None => {}
        Some(Json::Object(m)) => {
            for (k, v) in m {
                match v {
                    Json::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    Json::Bool(_) | Json::Number(_) => {
                        out.insert(k.clone(), v.to_string());
                    }
                    other => c.error(&format!("{field}.{k}"), format!("must be a string, got {other}")),
                }
            }
        }
        Some(other) => c.error(field, format!("must be a mapping of strings, got {other}")),
    }
    out
}

/// A router's middleware lists and their settings, built; a problem is an error on the
/// list or options field it comes from.
fn middleware(c: &mut Checker) -> Arc<Middleware> {
    let (pre, post) = (c.strings("middleware"), c.strings("post_middleware"));
    let (pre_opts, post_opts) = (options(c, "options"), options(c, "post_options"));
    let parse: wippy_http::middleware::DurationParser = |s: &str| wippy_registry::parse_duration(s).map(|n| Duration::from_nanos(n.max(0) as u64));
    let (mut built, problems) = Middleware::build(&[(pre.as_slice(), &pre_opts), (post.as_slice(), &post_opts)], parse);
    for (i, e) in problems {
        let (list, opts) = [("middleware", "options"), ("post_middleware", "post_options")][i];
        c.error(if e.starts_with("options.") { opts } else { list }, e);
    }
    for (list, names) in [("middleware", &pre), ("post_middleware", &post)] {
        for (name, why) in wippy_http::middleware::INERT.iter().filter(|(n, _)| names.iter().any(|x| x == n)) {
            c.warn(list, format!("{name}: {why}"));
        }
    }
    // the options map a middleware's settings came from
    let field = |name: &str| if pre.iter().any(|n| n == name) { "options" } else { "post_options" };
    if let Some(fs) = built.sendfile.clone() {
        // (not found: reported here, and the router serves no files)
        built.sendfile = c.resolve(&format!("{}.sendfile.fs", field("sendfile")), &fs, &["fs.directory"]).map(|id| id.to_string());
    }
    if let Some(ta) = &mut built.token_auth {
        if let Some(id) = c.resolve(&format!("{}.token_auth.store", field("token_auth")), &ta.store.clone(), &["security.token_store"]) {
            ta.store = id.to_string();
        }
    }
    Arc::new(built)
}

/// Where a PEM text of `tls` comes from: written inline (or read from the environment
/// already), or a file to read relative to the project when the plan resolves paths.
#[derive(Clone)]
pub enum Pem {
    Text(String),
    File(String),
    /// From the environment registry (SPEC §12.11): `cert_env: NAME`, or `${env:NAME}` /
    /// `${env:NAME|default}` in place of the PEM, as Wippy resolves them at load.
    Env { name: String, default: Option<String> },
}

impl Pem {
    /// The field's value: `${env:NAME}` or `${env:NAME|default}` (the whole value), PEM text,
    /// or a path (`file://` optional).
    fn of(v: String) -> Pem {
        if let Some(inner) = v.trim().strip_prefix("${env:").and_then(|r| r.strip_suffix('}')) {
            let (name, default) = wippy_registry::split_reference(inner);
            return Pem::Env { name: name.to_string(), default: default.map(str::to_string) };
        }
        if v.contains("-----BEGIN") {
            Pem::Text(v)
        } else {
            Pem::File(v.strip_prefix("file://").unwrap_or(&v).to_string())
        }
    }
}

/// `tls` of an `http.service`, checked but not yet read.
#[derive(Clone)]
pub struct TlsPlan {
    cert: Pem,
    key: Pem,
    client_ca: Option<Pem>,
    client_auth: wippy_http::tls::ClientAuth,
}

/// `tls` of an `http.service` (SPEC §11.1.1): mode `manual` with `cert`+`key` (PEM text, a
/// path, or `file://` a path; relative to the project) or `cert_env`+`key_env` (variables
/// holding PEM text), never both; `client_ca`/`client_ca_env` and `client_auth`. Mode `auto`
/// (ACME) is not available.
fn tls(c: &mut Checker) -> Option<TlsPlan> {
    use wippy_http::tls::ClientAuth;
    c.only("tls", &["mode", "cert", "key", "cert_env", "key_env", "client_ca", "client_ca_env", "client_auth"]);
    let mode = c.string("tls.mode").unwrap_or_default();
    match mode.as_str() {
        "" => return None,
        "manual" => {}
        "auto" => {
            c.error("tls.mode", "auto (certificates from ACME) is not available in this runtime; use manual with cert and key");
            return None;
        }
        other => {
            c.error("tls.mode", format!("expected manual or auto, got {other:?}"));
            return None;
        }
    }
    let pem = |c: &mut Checker, field: &str, env: &str, required: bool| -> Option<Pem> {
        match (c.string(&format!("tls.{field}")), c.string(&format!("tls.{env}"))) {
            (Some(_), Some(_)) => {
                c.error(&format!("tls.{env}"), format!("give {field} or {env}, not both"));
                None
            }
            (Some(v), None) => Some(Pem::of(v)),
            (None, Some(var)) => Some(Pem::Env { name: var, default: None }),
            (None, None) => {
                if required {
                    c.error(&format!("tls.{field}"), format!("missing (required with mode manual): {field} or {env}"));
                }
                None
            }
        }
    };
    let cert = pem(c, "cert", "cert_env", true);
    let key = pem(c, "key", "key_env", true);
    let client_ca = pem(c, "client_ca", "client_ca_env", false);
    let client_auth = match c.string("tls.client_auth").unwrap_or_default().as_str() {
        "" => ClientAuth::None,
        "request" => ClientAuth::Request,
        "require_any" => ClientAuth::RequireAny,
        "verify_if_given" => ClientAuth::VerifyIfGiven,
        "require_and_verify" => ClientAuth::Require,
        other => {
            c.error("tls.client_auth", format!("expected request, require_any, verify_if_given or require_and_verify, got {other:?}"));
            ClientAuth::None
        }
    };
    if matches!(client_auth, ClientAuth::VerifyIfGiven | ClientAuth::Require) && client_ca.is_none() {
        c.error("tls.client_auth", "needs client_ca (or client_ca_env): the CA client certificates must chain to");
    }
    Some(TlsPlan { cert: cert?, key: key?, client_ca, client_auth })
}

/// Read each server's TLS files (relative to the project `root`) and environment variables
/// (through `env`, the project's environment registry: a variable's name or entry ID, not
/// the OS environment unless an `env.storage.os` variable has that name) and check that they
/// make a TLS configuration; the first problem per server as (entry, field, message).
pub fn load_tls(plan: &mut HttpPlan, root: &std::path::Path, env: &wippy_lua::EnvConfig) -> Vec<(EntryId, &'static str, String)> {
    let mut errors = Vec::new();
    for (sid, config) in &mut plan.services {
        let Some((_, t)) = plan.tls.iter().find(|(id, _)| id == sid) else { continue };
        let read = |p: &Pem, field: &'static str| -> Result<String, (&'static str, String)> {
            match p {
                Pem::Text(t) => Ok(t.clone()),
                Pem::File(f) => std::fs::read_to_string(root.join(f)).map_err(|e| (field, format!("cannot read {f}: {e}"))),
                Pem::Env { name, default } => {
                    let value = match env.find(name, sid.namespace()) {
                        Some(v) => v.value().map_err(|e| (field, format!("environment variable {name}: {e}")))?,
                        None => None,
                    };
                    value.filter(|v| !v.is_empty()).or_else(|| default.clone()).ok_or_else(|| (field, format!("environment variable {name} is not set (no env.variable of that name or ID has a value)")))
                }
            }
        };
        let settings = (|| -> Result<wippy_http::tls::TlsSettings, (&'static str, String)> {
            let s = wippy_http::tls::TlsSettings {
                cert_pem: read(&t.cert, "tls.cert")?,
                key_pem: read(&t.key, "tls.key")?,
                client_ca_pem: t.client_ca.as_ref().map(|p| read(p, "tls.client_ca")).transpose()?,
                client_auth: t.client_auth.clone(),
            };
            s.acceptor().map_err(|e| ("tls", e))?;
            Ok(s)
        })();
        match settings {
            Ok(s) => config.tls = Some(s),
            Err((field, msg)) => errors.push((sid.clone(), field, msg)),
        }
    }
    errors
}

pub fn service(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["addr", "timeouts", "host", "tls", "network", "lifecycle", "limits"]);
    c.only("timeouts", &["read", "write", "idle"]);
    c.only("host", &["buffer_size", "worker_count"]);
    c.only("limits", &["max_connections", "max_header_bytes", "max_body"]);
    let id = c.entry.id.clone();
    let addr = match c.get("addr") {
        None => {
            c.error("addr", "missing (required): the listen address, such as :8080 or 127.0.0.1:8080");
            String::new()
        }
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => format!(":{n}"),
        Some(other) => {
            c.error("addr", format!("must be a string such as \":8080\", got {other}"));
            String::new()
        }
    };
    if c.get("addr").is_some() {
        if let Err(e) = server::listen_addr(&addr) {
            c.error("addr", e);
        }
    }
    if let Some(t) = tls(c) {
        plan.http.tls.push((c.entry.id.clone(), t));
    }
    if c.get("network").is_some() {
        c.warn("network", "overlay networks do not apply in this runtime; ignored");
    }
    let read_timeout = c.duration("timeouts.read", Duration::ZERO);
    let write_timeout = c.duration("timeouts.write", Duration::ZERO);
    let idle_timeout = c.duration("timeouts.idle", Duration::ZERO);
    let _buffer = c.uint("host.buffer_size", 1024);
    let mut host = HostConfig::new(handler_host(&id));
    host.workers = c.positive("host.worker_count", host.workers as u64) as usize;
    let max_connections = c.positive("limits.max_connections", server::DEFAULT_MAX_CONNECTIONS as u64) as usize;
    let max_header_bytes = if c.get("limits.max_header_bytes").is_some() { c.bytes("limits.max_header_bytes") as usize } else { server::DEFAULT_MAX_HEADER_BYTES };
    let max_body = if c.get("limits.max_body").is_some() { c.bytes("limits.max_body") } else { server::DEFAULT_MAX_BODY };
    let lifecycle: Lifecycle = c.lifecycle();
    let config = ServiceConfig { id: id.to_string(), addr, read_timeout, idle_timeout, write_timeout, tls: None, max_connections, max_header_bytes, max_body, handler_host: handler_host(&id), identity: None };
    // `lifecycle.security`: every request's baseline actor and scope (resolved with the
    // policies, in the plan)
    if c.get("lifecycle.security").is_some() {
        let spec = crate::kinds::identity_spec(c, plan, "lifecycle.security");
        plan.http.identities.push((id.clone(), spec));
    }
    // the handlers' host runs as long as the server: started first, stopped after it
    if crate::kinds::service_on_own_host(c, plan, host, lifecycle, None) {
        plan.http.services.push((id, config));
    }
}

pub fn router(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["prefix", "middleware", "options", "post_middleware", "post_options"]);
    let server = meta_ref(c, "server", &["http.service"]);
    let prefix = c.string("prefix").unwrap_or_default();
    if !prefix.is_empty() && !prefix.starts_with('/') {
        c.error("prefix", format!("must start with /, got {prefix:?}"));
    }
    let mw = middleware(c);
    if let Some(server) = server {
        plan.http.routers.push(RouterPlan { id: c.entry.id.clone(), server, prefix: prefix.trim_end_matches('/').to_string(), mw });
    }
}

pub fn endpoint(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["method", "path", "func", "timeout"]);
    let router = meta_ref(c, "router", &["http.router"]);
    let method = match c.required_string("method") {
        Some(m) if route::METHODS.contains(&m.to_ascii_uppercase().as_str()) => Some(m.to_ascii_uppercase()),
        Some(m) => {
            c.error("method", format!("invalid HTTP method {m:?} (one of {})", route::METHODS.join(" ")));
            None
        }
        None => None,
    };
    let path = c.required_string("path");
    if let Some(p) = &path {
        if let Err(e) = Pattern::parse(p) {
            c.error("path", e);
        }
    }
    let func = match c.get("func") {
        None => {
            c.error("func", "missing (required): the function.lua entry that handles the request");
            None
        }
        Some(_) => c.reference("func", &["function.lua"]),
    };
    let timeout = c.duration("timeout", server::DEFAULT_ENDPOINT_TIMEOUT);
    if let (Some(router), Some(method), Some(path), Some(func)) = (router, method, path, func) {
        plan.http.endpoints.push(EndpointPlan { id: c.entry.id.clone(), router, method, path, func, timeout });
    }
}

pub fn statics(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["path", "fs", "directory", "static_options", "options", "middleware"]);
    c.only("static_options", &["index", "cache", "spa"]);
    let server = meta_ref(c, "server", &["http.service"]);
    let path = c.required_string("path");
    if let Some(p) = &path {
        if !p.starts_with('/') {
            c.error("path", format!("must start with /, got {p:?}"));
        }
    }
    let fs = match c.get("fs") {
        None => {
            c.error("fs", "missing (required): the fs.directory entry to serve");
            None
        }
        Some(_) => c.reference("fs", &["fs.directory"]),
    };
    let directory = c.string("directory").unwrap_or_default();
    if directory.split('/').any(|s| s == "..") {
        c.error("directory", "must stay inside the filesystem (no ..)");
    }
    // the legacy form: options.spa / index / cache
    let legacy = |c: &Checker, k: &str| c.get(&format!("options.{k}")).cloned();
    let flag = |v: Option<Json>| matches!(v, Some(Json::Bool(true))) || matches!(v, Some(Json::String(ref s)) if s == "true");
    let text = |v: Option<Json>| v.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let spa = flag(c.get("static_options.spa").cloned().or_else(|| legacy(c, "spa")));
    let index = text(c.get("static_options.index").cloned().or_else(|| legacy(c, "index")));
    let cache = text(c.get("static_options.cache").cloned().or_else(|| legacy(c, "cache")));
    if spa && index.is_empty() {
        c.error("static_options.index", "required with spa: true (the file served for unknown paths)");
    }
    if !c.strings("middleware").is_empty() {
        c.warn("middleware", "middleware on an http.static mount is not applied by this runtime (files are served as they are)");
    }
    if let (Some(server), Some(path), Some(fs)) = (server, path, fs) {
        plan.http.statics.push(StaticPlan { id: c.entry.id.clone(), server, path, fs, directory, index, cache, spa });
    }
}

pub fn fs_directory(c: &mut Checker, plan: &mut Plan) {
    c.only("", &["directory", "auto_init", "mode", "base", "lifecycle"]);
    // (Wippy resolves a relative path against the owning module's root for `base: module`;
    // a project's own entries have none, so both bases are the project directory here)
    if let Some(base) = c.string("base") {
        if !matches!(base.as_str(), "project" | "module") {
            c.error("base", format!("invalid directory base {base:?} (project or module)"));
        }
    }
    let Some(dir) = c.required_string("directory") else { return };
    let auto = c.bool("auto_init", false);
    plan.http.filesystems.push((c.entry.id.clone(), PathBuf::from(dir), auto));
}

/// Each server's routes, or the first problem (the entry and field it is about).
pub fn routes(plan: &HttpPlan) -> HashMap<EntryId, Result<Routes, (EntryId, &'static str, String)>> {
    let mut out = HashMap::new();
    for (sid, _) in &plan.services {
        out.insert(sid.clone(), server_routes(plan, sid));
    }
    out
}

fn server_routes(plan: &HttpPlan, sid: &EntryId) -> Result<Routes, (EntryId, &'static str, String)> {
    let routers: Vec<&RouterPlan> = plan.routers.iter().filter(|r| &r.server == sid).collect();
    for (i, r) in routers.iter().enumerate() {
        if let Some(first) = routers[..i].iter().find(|o| o.prefix == r.prefix) {
            return Err((r.id.clone(), "prefix", format!("router prefix exists: {:?} is already used by {} on {sid}", r.prefix, first.id)));
        }
    }
    // each router's `sendfile` directory, once
    let mut files = HashMap::new();
    for r in &routers {
        let Some(fs) = &r.mw.sendfile else { continue };
        let Some((_, root, _)) = plan.filesystems.iter().find(|(id, _, _)| id.as_str() == fs) else {
            return Err((r.id.clone(), "options", format!("sendfile.fs: filesystem not found: {fs}")));
        };
        let sf = wippy_http::statics::SendFile::new(root).map_err(|e| (r.id.clone(), "options", format!("sendfile.fs {fs}: {e}")))?;
        files.insert(r.id.clone(), Arc::new(sf));
    }
    let mut list = Vec::new();
    for ep in &plan.endpoints {
        let Some(r) = routers.iter().find(|r| r.id == ep.router) else { continue };
        let full = route::join(&r.prefix, &ep.path);
        let pattern = Pattern::parse(&full).map_err(|e| (ep.id.clone(), "path", e))?;
        let target = Arc::new(Target { endpoint: Arc::from(ep.id.as_str()), func: Arc::from(ep.func.as_str()), timeout: ep.timeout, mw: r.mw.clone(), files: files.get(&r.id).cloned() });
        list.push(Route { method: ep.method.clone(), pattern, owner: ep.id.to_string(), target });
    }
    let table = Table::build(list).map_err(|e| {
        // name the endpoint the message starts with
        let owner = plan.endpoints.iter().find(|ep| e.contains(&format!("({})", ep.id))).map(|ep| ep.id.clone());
        (owner.unwrap_or_else(|| sid.clone()), "path", e)
    })?;
    let mut statics = Vec::new();
    let mounts: Vec<&StaticPlan> = plan.statics.iter().filter(|s| &s.server == sid).collect();
    for (i, s) in mounts.iter().enumerate() {
        if let Some(first) = mounts[..i].iter().find(|o| o.path.trim_end_matches('/') == s.path.trim_end_matches('/')) {
            return Err((s.id.clone(), "path", format!("mount path {:?} is already used by {} on {sid}", s.path, first.id)));
        }
        let Some((_, root, _)) = plan.filesystems.iter().find(|(id, _, _)| id == &s.fs) else {
            return Err((s.id.clone(), "fs", format!("filesystem not found: {}", s.fs)));
        };
        let dir = root.join(&s.directory);
        let m = StaticMount::new(&s.path, &dir, &s.index, &s.cache, s.spa).map_err(|e| (s.id.clone(), "directory", e))?;
        statics.push(Arc::new(m));
    }
    Ok(Routes { table, statics })
}

/// Make every `fs.directory` absolute (the project's), creating `auto_init` ones.
pub fn resolve_paths(plan: &mut HttpPlan, root: &std::path::Path) {
    for (_, dir, auto) in &mut plan.filesystems {
        if dir.is_relative() {
            *dir = root.join(&*dir);
        }
        if *auto && !dir.exists() {
            let _ = std::fs::create_dir_all(&*dir);
        }
    }
}

/// The node's HTTP servers by entry ID: what a reload changes in place.
pub struct Servers {
    known: parking_lot::Mutex<HashMap<EntryId, Arc<ServerState>>>,
    /// How `token_auth` resolves a token: the node's token stores.
    tokens: wippy_http::middleware::TokenResolver,
}

impl Servers {
    pub fn new(tokens: wippy_http::middleware::TokenResolver) -> Servers {
        Servers { known: Default::default(), tokens }
    }
}

/// Register each server's listener with the node, with the routes the plan built. Called
/// again on every reload (SPEC §11.1.3: route tables are rebuilt atomically): a server
/// whose own settings did not change swaps in its new routes while it runs (a request sees
/// the old table or the new one); a new server, or one whose settings changed, gets a new
/// listener factory (its service restarts with it, as any changed service does).
pub fn install(plan: &HttpPlan, node: &wippy_runtime::NodeRef, servers: &Servers) {
    let mut known = servers.known.lock();
    for (sid, config) in &plan.services {
        let routes = plan.built.get(sid).cloned().unwrap_or_default();
        if let Some(state) = known.get(sid) {
            if state.config == *config {
                state.set_routes(routes);
                continue;
            }
        }
        let state = ServerState::new(config.clone(), Some(servers.tokens.clone()));
        state.set_routes(routes);
        known.insert(sid.clone(), state.clone());
        let factory = move |_: &str| -> Result<Box<dyn Process>, wippy_runtime::Error> { Ok(Box::new(wippy_http::ServerProcess::new(state.clone()))) };
        node.register_entry(sid.as_str(), Arc::new(factory));
    }
    known.retain(|sid, _| plan.services.iter().any(|(s, _)| s == sid));
}
