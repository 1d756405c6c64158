//! HTTP end to end: the real `wippy` binary serves a project on a free loopback port
//! (`addr: 127.0.0.1:0`; the bound address is read from its log) and these tests talk to
//! it over real sockets: routing and parameters, methods, headers, JSON, streaming,
//! static files and traversal attempts, handler failures (500) and timeouts (504), limits
//! (413/431/400, a slow client), a graceful stop that drains an in-flight request, and
//! `http_client` against the node's own server. Waits are for events (a log line, a
//! response), bounded by deadlines.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Running;

const PROJECT: &str = r#"
namespace: app
entries:
  - name: gateway
    kind: http.service
    addr: 127.0.0.1:0
    timeouts:
      read: 1s
    limits:
      max_header_bytes: 16KB
      max_body: 1KB
    lifecycle:
      auto_start: true
      stop_timeout: 5s

  - name: api
    kind: http.router
    meta:
      server: gateway
    prefix: /api/
    middleware: [cors]
    options:
      cors.allow.origins: "https://app.example"

  - name: hello
    kind: function.lua
    modules: [http]
    method: handler
    source: |
      local http = require("http")
      return { handler = function()
        local req = http.request()
        local res = http.response()
        res:set_header("X-Pid", process.pid())
        res:set_content_type(http.CONTENT.TEXT)
        res:set_status(http.STATUS.OK)
        res:write("Hello, " .. (req:query("name") or "world") .. "!")
      end }
  - { name: hello.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /hello, func: hello }

  - name: user
    kind: function.lua
    modules: [http]
    method: call
    source: |
      local http = require("http")
      return { call = function()
        local req = http.request()
        return { id = req:param("id"), all = req:params(), agent = req:header("user-agent"), multi = req:header("X-Multi"),
          none = req:header("x-none"), ct = req:content_type(), missing = req:param("nope") }
      end }
  - { name: user.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: "/users/{id}", func: user }
  - { name: me.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /users/me, func: hello }

  - name: any
    kind: function.lua
    modules: [http]
    method: call
    source: |
      local http = require("http")
      return { call = function()
        local req = http.request()
        if req:query("mixed") then return { 1, a = 2.0 } end
        return { method = req:method(), rest = req:param("rest"), n = 10 / 2, f = 1.5, list = { 4 / 2, 3 } }
      end }
  - { name: any.ep, kind: http.endpoint, meta: { router: api }, method: "*", path: "/any/{rest...}", func: any }

  - name: echo
    kind: function.lua
    modules: [http]
    method: call
    source: |
      local http = require("http")
      return { call = function()
        local req = http.request()
        local res = http.response()
        local v, err = req:body_json()
        if err then
          res:set_status(400)
          res:write_json({ error = err:kind() })
          return
        end
        res:set_status(201)
        res:write_json({ got = v, ct = req:content_type(), has_body = req:has_body() })
      end }
  - { name: echo.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /echo, func: echo }

  - name: stream
    kind: function.lua
    modules: [http, time]
    method: call
    source: |
      local http = require("http")
      return { call = function()
        local res = http.response()
        res:set_content_type("text/plain")
        for i = 1, 3 do
          res:write("chunk " .. i .. "\n")
          res:flush()
          time.sleep("10ms")
        end
      end }
  - { name: stream.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /stream, func: stream }

  - name: fail
    kind: function.lua
    modules: [http]
    method: call
    source: |
      return { call = function() local t = nil; return t.field end }
  - { name: fail.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /fail, func: fail }

  - name: refuse
    kind: function.lua
    modules: [http]
    method: call
    source: |
      return { call = function() return nil, "no such order" end }
  - { name: refuse.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /refuse, func: refuse }

  - name: silent
    kind: function.lua
    modules: [http]
    method: call
    source: |
      return { call = function() end }
  - { name: silent.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /silent, func: silent }

  - name: slow
    kind: function.lua
    modules: [http, time, logger]
    method: call
    source: |
      local http = require("http")
      return { call = function()
        local req = http.request()
        local d = req:query("d") or "10s"
        logger:info("slow started", { d = d })
        time.sleep(d)
        http.response():write("finished after " .. d)
      end }
  - { name: slow.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /slow, func: slow, timeout: 300ms }
  - { name: drain.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /drain, func: slow, timeout: 10s }

  - name: fetch
    kind: function.lua
    modules: [http, http_client]
    method: call
    source: |
      local http = require("http")
      local http_client = require("http_client")
      return { call = function()
        local req = http.request()
        local url = req:query("url")
        local r, err = http_client.get(url, { query = { name = "client" }, timeout = 5 })
        if not r then return { error = tostring(err) } end
        local batch, errs = http_client.request_batch({ { "GET", url }, { "GET", "http://127.0.0.1:1/" } })
        -- a streamed body read n bytes at a time: up to n each, in order, nil at the end
        local s = http_client.get(url, { query = { name = "client" }, stream = true })
        local parts = {}
        while true do
          local piece = s.stream:read(4)
          if not piece then break end
          assert(#piece <= 4, #piece)
          parts[#parts + 1] = piece
        end
        s.stream:close()
        return { status = r.status_code, body = r.body, ct = r.headers["Content-Type"],
                 batch_ok = batch[1] and batch[1].status_code, batch_err = errs and errs[2] ~= nil,
                 streamed = table.concat(parts), pieces = #parts }
      end }
  - { name: fetch.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /fetch, func: fetch }

  - name: public
    kind: fs.directory
    directory: ./public

  - name: files
    kind: http.static
    meta:
      server: gateway
    path: /static
    fs: public
    static_options:
      cache: "max-age=60"
"#;

/// The node serving a project, and a client of its server.
struct Node {
    run: Running,
    http: Client,
}

/// Requests to a server, each on a new connection.
#[derive(Clone)]
struct Client {
    addr: String,
}

fn project(tag: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wippy-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("public/docs")).unwrap();
    std::fs::write(dir.join("src/_index.yaml"), yaml).unwrap();
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  level: info\n").unwrap();
    std::fs::write(dir.join("public/hello.txt"), "0123456789").unwrap();
    std::fs::write(dir.join("public/docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dir.join("public/app.js"), "let x = 1;").unwrap();
    std::fs::write(dir.join("secret.txt"), "top secret").unwrap();
    dir
}

impl Node {
    fn start(dir: &Path) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wippy"));
        cmd.arg("-d").arg(dir).arg("run");
        let mut run = Running::spawn(cmd);
        let line = run.wait_for(&["http server listening"]);
        let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        Node { run, http: Client { addr } }
    }

    fn wait_for(&mut self, parts: &[&str]) -> String {
        self.run.wait_for(parts)
    }

    fn raw(&self, request: &[u8]) -> Response {
        self.http.raw(request)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.http.get(path, headers)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.http.request(method, path, headers, body)
    }
}

impl Client {
    /// Send raw bytes on a new connection; the whole answer (the server closes it).
    fn raw(&self, request: &[u8]) -> Response {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Response::parse(&out)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let text = String::from_utf8_lossy(raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked { dechunk(body) } else { body.to_string() };
        Response { status, headers, body }
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

#[test]
fn routes_parameters_methods_headers_and_json() {
    let dir = project("routes", PROJECT);
    let node = Node::start(&dir);

    let r = node.get("/api/hello?name=Ann%20Lee", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "Hello, Ann Lee!"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // each request is a process of its own on the server's handler host
    let pid1 = r.header("x-pid").unwrap().to_string();
    let pid2 = node.get("/api/hello", &[]).header("x-pid").unwrap().to_string();
    assert!(pid1.starts_with("{app:gateway#handlers|") && pid1 != pid2, "{pid1} {pid2}");

    // a literal segment beats a wildcard; parameters are decoded; a returned table is JSON
    assert_eq!(node.get("/api/users/me", &[]).body, "Hello, world!");
    // (a header's values joined; an absent header, content type or parameter is nil)
    let u = node.get("/api/users/a%2Fb", &[("User-Agent", "t/1"), ("X-Multi", "1"), ("X-Multi", "2")]);
    assert_eq!(u.header("content-type"), Some("application/json"));
    assert_eq!(u.json(), serde_json::json!({"id": "a/b", "all": {"id": "a/b"}, "agent": "t/1", "multi": "1, 2"}));

    // 404, 405 with Allow, GET answers HEAD, the router's own OPTIONS with CORS
    let nf = node.get("/api/nope", &[]);
    assert_eq!((nf.status, nf.body.as_str()), (404, "404 page not found\n"));
    let na = node.request("DELETE", "/api/hello", &[], b"");
    assert_eq!(na.status, 405);
    assert_eq!(na.header("allow"), Some("GET, HEAD, OPTIONS"));
    let head = node.request("HEAD", "/api/hello", &[], b"");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let pre = node.request("OPTIONS", "/api/echo", &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")], b"");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(pre.header("access-control-allow-methods").unwrap().contains("POST"));
    let other = node.get("/api/hello", &[("Origin", "https://evil.example")]);
    assert_eq!(other.header("access-control-allow-origin"), None);

    // `method: "*"` takes every method; an OPTIONS preflight is the cors middleware's,
    // any other OPTIONS the handler's
    // (a returned table is written as json.encode writes it: whole floats as integers, keys
    // sorted; one json.encode refuses, a mixed table, is the runtime's object)
    let any = node.request("PATCH", "/api/any/a/b", &[], b"");
    assert_eq!(any.body, r#"{"f":1.5,"list":[2,3],"method":"PATCH","n":5,"rest":"a/b"}"#, "{any:?}");
    assert_eq!((any.status, any.header("content-type")), (200, Some("application/json")));
    let mixed = node.request("PATCH", "/api/any/a?mixed=1", &[], b"");
    assert_eq!((mixed.status, mixed.body.as_str()), (200, r#"{"1":1,"a":2.0}"#), "{mixed:?}");
    let pre = node.request("OPTIONS", "/api/any/x", &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT")], b"");
    assert_eq!((pre.status, pre.header("access-control-allow-origin")), (204, Some("https://app.example")), "{pre:?}");
    let opt = node.request("OPTIONS", "/api/any/x", &[], b"");
    assert_eq!(opt.json()["method"], "OPTIONS", "{opt:?}");

    // JSON in and out
    let e = node.request("POST", "/api/echo", &[("Content-Type", "application/json")], br#"{"a":[1,2],"b":"x"}"#);
    assert_eq!(e.status, 201, "{e:?}");
    assert_eq!(e.json(), serde_json::json!({"got": {"a": [1, 2], "b": "x"}, "ct": "application/json", "has_body": true}));
    let bad = node.request("POST", "/api/echo", &[], b"{nope");
    assert_eq!((bad.status, bad.json()), (400, serde_json::json!({"error": "Invalid"})));

    // a streamed response arrives in chunks, whole
    let s = node.get("/api/stream", &[]);
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    assert_eq!(s.body, "chunk 1\nchunk 2\nchunk 3\n");
}

#[test]
fn failures_get_500_and_504_without_internals_and_do_not_touch_other_requests() {
    let dir = project("fail", PROJECT);
    let mut node = Node::start(&dir);
    let f = node.get("/api/fail", &[]);
    assert_eq!((f.status, f.body.as_str()), (500, "internal error"), "{f:?}");
    // the log has what the client does not: the handler's PID, entry and error
    let logged = node.wait_for(&["http handler failed", "app:fail.ep"]);
    assert!(logged.contains("pid={app:gateway#handlers|") && logged.contains("attempt to index"), "{logged}");

    let r = node.get("/api/refuse", &[]);
    assert_eq!((r.status, r.body.as_str()), (500, "no such order"));
    let s = node.get("/api/silent", &[]);
    assert_eq!((s.status, s.body.as_str()), (500, "no response sent"));

    // a handler that never answers: 504 after the endpoint's timeout, while others answer
    let client = node.http.clone();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let r = client.get("/api/slow", &[]);
        (r.status, t.elapsed())
    });
    node.wait_for(&["slow started"]);
    assert_eq!(node.get("/api/hello", &[]).status, 200);
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 504);
    assert!(took < Duration::from_secs(5), "{took:?}");
    node.wait_for(&["did not answer within", "app:slow.ep"]);
}

#[test]
fn limits_and_bad_requests_never_reach_lua() {
    let dir = project("limits", PROJECT);
    let node = Node::start(&dir);
    let big = "x".repeat(20 * 1024);
    assert_eq!(node.get("/api/hello", &[("X-Big", &big)]).status, 431);
    assert_eq!(node.request("POST", "/api/echo", &[], &[b'{'; 2048]).status, 413);
    assert_eq!(node.raw(b"NOT HTTP AT ALL\r\n\r\n").status, 400);
    // a client that never finishes its head is cut off after the read timeout (1s)
    let mut s = TcpStream::connect(&node.http.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(10), "held for {:?}", t.elapsed());
    // and the server still serves
    assert_eq!(node.get("/api/hello", &[]).status, 200);
}

#[test]
fn static_files_with_validators_ranges_and_no_way_out() {
    let dir = project("static", PROJECT);
    let node = Node::start(&dir);
    let f = node.get("/static/hello.txt", &[]);
    assert_eq!((f.status, f.body.as_str()), (200, "0123456789"));
    assert_eq!(f.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(f.header("cache-control"), Some("max-age=60"));
    let etag = f.header("etag").unwrap().to_string();
    assert!(f.header("last-modified").is_some());
    assert_eq!(node.get("/static/hello.txt", &[("If-None-Match", &etag)]).status, 304);
    let part = node.get("/static/hello.txt", &[("Range", "bytes=2-4")]);
    assert_eq!((part.status, part.body.as_str()), (206, "234"));
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(node.get("/static/hello.txt", &[("Range", "bytes=50-")]).status, 416);
    assert!(node.get("/static/app.js", &[]).header("content-type").unwrap().contains("javascript"));
    assert_eq!(node.get("/static/docs/", &[]).body, "<h1>docs</h1>");
    assert!(node.get("/static/", &[]).body.contains("hello.txt"), "a directory listing");
    for attempt in ["/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/docs/%2E%2E/%2E%2E/secret.txt", "/static/..%2fsecret.txt"] {
        let r = node.get(attempt, &[]);
        assert!(r.status == 400 || r.status == 404, "{attempt}: {r:?}");
        assert!(!r.body.contains("top secret"), "{attempt}");
    }
    assert_eq!(node.get("/static/missing.txt", &[]).status, 404);
}

#[test]
fn http_client_talks_to_a_local_server() {
    let dir = project("client", PROJECT);
    let node = Node::start(&dir);
    let url = format!("http://{}/api/hello", node.http.addr);
    let r = node.get(&format!("/api/fetch?url={url}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"status": 200, "body": "Hello, client!", "ct": "text/plain", "batch_ok": 200, "batch_err": true,
                           "streamed": "Hello, client!", "pieces": 4})
    );
}

/// `lifecycle.security` of an `http.service`: every handler's baseline actor and scope
/// (Wippy's server security), unless `token_auth` gives one.
#[test]
fn a_server_lifecycle_security_is_every_handlers_baseline_identity() {
    let yaml = [
        raw("namespace: app\nentries:\n  - { name: gateway, kind: http.service, addr: \"127.0.0.1:0\", lifecycle: { auto_start: true, security: { actor: { id: http-gateway }, policies: [app:reads] } } }\n"),
        raw("  - { name: api, kind: http.router, meta: { server: gateway }, prefix: /api }\n"),
        raw("  - { name: reads, kind: security.policy, policy: { actions: read, resources: \"*\", effect: allow } }\n"),
        handler("who", "security", "        local a = security.actor()\n        return { actor = a and a:id(), read = security.can('read', 'x'), write = security.can('write', 'x') }"),
        raw("  - { name: who.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /who, func: who }\n"),
    ]
    .concat();
    let dir = project("baseline", &yaml);
    let node = Node::start(&dir);
    let r = node.get("/api/who", &[]);
    assert_eq!(r.json(), serde_json::json!({"actor": "http-gateway", "read": true, "write": false}), "{r:?}");
}

#[test]
fn a_graceful_stop_lets_the_request_in_flight_finish() {
    let dir = project("drain", PROJECT);
    let mut node = Node::start(&dir);
    let client = node.http.clone();
    let inflight = std::thread::spawn(move || client.get("/api/drain?d=700ms", &[]));
    node.wait_for(&["slow started"]);
    node.run.interrupt();
    let r = inflight.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "finished after 700ms"));
    assert_eq!(node.run.exit_code(), Some(0));
    node.run.saw_or_wait(&["http server stopped"]);
}

/// A test project's head: a server on a free loopback port (with `service` fields added)
/// and a router `api` on it at `/api`.
fn gateway_api(service: &str) -> String {
    let sep = if service.is_empty() { "" } else { ", " };
    format!("namespace: app\nentries:\n  - {{ name: gateway, kind: http.service, addr: \"127.0.0.1:0\", lifecycle: {{ auto_start: true }}{sep}{service} }}\n  - {{ name: api, kind: http.router, meta: {{ server: gateway }}, prefix: /api }}\n")
}

/// The same head without the router.
fn gateway(service: &str) -> String {
    gateway_api(service).lines().take(3).map(|l| format!("{l}\n")).collect()
}

/// A `function.lua` entry `name` whose `handler` runs `body` (Lua, indented as a handler's
/// body) with `http` and `modules` (also bound to locals of their names).
fn handler(name: &str, modules: &str, body: &str) -> String {
    let mut out = format!("  - name: {name}\n    kind: function.lua\n    modules: [http{}{modules}]\n    method: handler\n    source: |\n      local http = require(\"http\")\n", if modules.is_empty() { "" } else { ", " });
    for m in modules.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        out.push_str(&format!("      local {m} = require(\"{m}\")\n"));
    }
    format!("{out}      return {{ handler = function()\n{body}\n      end }}\n")
}

fn raw(yaml: &str) -> String {
    yaml.to_string()
}

fn reload() -> String {
    [
        gateway_api(""),
        raw(r#"  - name: hello
    kind: function.lua
    modules: [http]
    method: handler
    source: |
      local http = require("http")
      return { handler = function() http.response():write("hello from " .. http.request():path()) end }
"#),
        handler("change", "registry", r#"        local req = http.request()
        local cs = registry.snapshot():changes()
        if req:query("op") == "add" then
          cs:create({ id = "app:added.ep", kind = "http.endpoint", meta = { router = "app:api" },
            data = { method = "GET", path = "/added/{id}", func = "app:hello" } })
        elseif req:query("op") == "clash" then
          cs:create({ id = "app:clash.ep", kind = "http.endpoint", meta = { router = "app:api" },
            data = { method = "GET", path = "/added/{other}", func = "app:hello" } })
        else
          cs:delete("app:added.ep")
        end
        local v, err = cs:apply()
        http.response():write(v and "applied" or tostring(err))"#),
        raw(r#"  - { name: change.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /change, func: change }
"#),
    ]
    .concat()
}

#[test]
fn routes_follow_registry_changes_while_the_server_runs() {
    // SPEC 11.1.3: route tables are rebuilt atomically when endpoints are added or removed
    // (the same path an edit under --watch takes); a conflicting change is refused whole
    let dir = project("reload", &reload());
    let node = Node::start(&dir);
    assert_eq!(node.get("/api/added/7", &[]).status, 404);
    let r = node.request("POST", "/api/change?op=add", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, "applied"), "{r:?}");
    let r = node.get("/api/added/7", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello from /api/added/7"), "{r:?}");
    let r = node.request("POST", "/api/change?op=clash", &[], b"");
    assert!(r.body.contains("conflicts with"), "{r:?}");
    assert_eq!(node.get("/api/added/8", &[]).status, 200, "the table before the refused change stands");
    let r = node.request("POST", "/api/change?op=remove", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, "applied"), "{r:?}");
    assert_eq!(node.get("/api/added/7", &[]).status, 404);
}

fn bodies() -> String {
    [
        gateway_api("limits: { max_body: 64KB }"),
        handler("upload", "", r#"        local req, res = http.request(), http.response()
        local form, err = req:parse_multipart()
        if not form then
          res:set_status(400)
          return res:write(err:kind() .. ": " .. err:message())
        end
        local out = { values = form.values, files = {} }
        for field, list in pairs(form.files) do
          for _, f in ipairs(list) do
            local s, parts = f:stream(), {}
            while true do
              local c = s:read(4)
              if not c then break end
              parts[#parts + 1] = c
            end
            out.files[#out.files + 1] = { field = field, name = f:name(), size = f:size(),
              type = f:header("content-type"), content = table.concat(parts) }
          end
        end
        table.sort(out.files, function(a, b) return a.name < b.name end)
        res:write_json(out)"#),
        raw(r#"  - { name: upload.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /upload, func: upload }
"#),
        handler("pieces", "", r#"        local req = http.request()
        local s = assert(req:stream())
        local parts = {}
        while true do
          local c, err = s:read(3)
          if err then return http.response():write("error: " .. err:message()) end
          if not c then break end
          parts[#parts + 1] = c
        end
        assert(s:read(3) == nil and s:close())
        local again, aerr = req:body()
        http.response():write(#parts .. " pieces: " .. table.concat(parts, "|") .. " / then body(): " .. tostring(aerr))"#),
        raw(r#"  - { name: pieces.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /pieces, func: pieces }
"#),
        // Wippy's stream object: a scanner over the body, stat, and a read-only stream's refusals
        handler("scan", "", r#"        local s = http.request():stream()
        local sc, words = s:scanner("lines"), {}
        while sc:scan() do words[#words + 1] = "[" .. sc:text() .. "]" end
        local info = s:stat()
        local _, werr = s:write("x")
        local _, berr = s:scanner("paragraphs")
        http.response():write(table.concat(words) .. " " .. info.position .. " " .. werr:kind() .. " " .. berr:kind())"#),
        raw(r#"  - { name: scan.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /scan, func: scan }
"#),
        handler("send", "http_client", r#"        local req = http.request()
        local resp, err
        if req:query("sock") then
          resp, err = http_client.get("http://ignored.example/over-unix", { unix_socket = req:query("sock") })
        elseif req:query("reader") then
          -- a file given as a reader: anything with read(n), read to its end
          local pieces, rd = { "read ", "in ", "pieces" }, { i = 0 }
          function rd:read(n) self.i = self.i + 1; return pieces[self.i] end
          local file = { name = "doc", filename = "r.txt", reader = req:query("reader") == "bad" and 42 or rd }
          local files = { file }
          resp, err = http_client.post("http://" .. req:query("to") .. "/api/upload", { files = files })
          assert(files[1] == file and file.content == nil, "the caller's tables stay as they were")
        else
          resp, err = http_client.post("http://" .. req:query("to") .. "/api/upload", {
            form = { title = "sent" },
            files = { { name = "doc", filename = "c.txt", content = "uploaded body", content_type = "text/plain" } } })
        end
        if not resp then return http.response():write("error: " .. tostring(err)) end
        http.response():write(resp.status_code .. " " .. resp.body)"#),
        raw(r#"  - { name: send.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /send, func: send }
"#),
    ]
    .concat()
}

#[test]
fn request_bodies_stream_in_pieces_and_multipart_forms_parse() {
    let dir = project("bodies", &bodies());
    let node = Node::start(&dir);
    let r = node.request("POST", "/api/pieces", &[], b"abcdefgh");
    assert_eq!((r.status, r.body.as_str()), (200, "3 pieces: abc|def|gh / then body(): the request body was already read"), "{r:?}");
    let r = node.request("POST", "/api/scan", &[], b"alpha\r\nbeta gamma\n\nlast");
    assert_eq!((r.status, r.body.as_str()), (200, "[alpha][beta gamma][][last] 23 Internal Invalid"), "{r:?}");
    // a chunked body streams too
    let r = node.raw(b"POST /api/pieces HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n2\r\n12\r\n0\r\n\r\n");
    assert!(r.body.starts_with("2 pieces: wxy|z") || r.body.starts_with("3 pieces: wxy|z|12"), "{r:?}");
    let form = "--XB\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
--XB\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\na\r\n\
--XB\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\nb\r\n\
--XB\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile one body\r\n\
--XB\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"b.bin\"\r\n\r\n\x01\x02\r\n\
--XB--\r\n";
    let r = node.request("POST", "/api/upload", &[("Content-Type", "multipart/form-data; boundary=XB")], form.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({
            "values": {"title": "hello", "tag": ["a", "b"]},
            "files": [
                {"field": "doc", "name": "a.txt", "size": 13, "type": "text/plain", "content": "file one body"},
                {"field": "doc", "name": "b.bin", "size": 2, "content": "\u{1}\u{2}"}
            ]
        })
    );
    let r = node.request("POST", "/api/upload", &[("Content-Type", "application/json")], b"{}");
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid: request is not multipart/form-data (content type \"application/json\")"), "{r:?}");
    let r = node.request("POST", "/api/upload", &[("Content-Type", "multipart/form-data; boundary=XB")], b"--XB\r\nnonsense");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.starts_with("Invalid: malformed multipart body"), "{r:?}");
    // http_client: files make a multipart body (the form's fields ride along)
    let r = node.get(&format!("/api/send?to={}", node.http.addr), &[]);
    assert_eq!(
        r.body,
        r#"200 {"files":[{"content":"uploaded body","field":"doc","name":"c.txt","size":13,"type":"text/plain"}],"values":{"title":"sent"}}"#,
        "{r:?}"
    );
    let r = node.get(&format!("/api/send?to={}&reader=1", node.http.addr), &[]);
    assert_eq!(
        r.body,
        r#"200 {"files":[{"content":"read in pieces","field":"doc","name":"r.txt","size":14,"type":"application/octet-stream"}],"values":[]}"#,
        "{r:?}"
    );
    let r = node.get(&format!("/api/send?to={}&reader=bad", node.http.addr), &[]);
    assert_eq!(r.body, "error: files[1]: reader must have a read method, got number", "{r:?}");
    // http_client over a Unix socket: a one-request server on a socket of its own
    let sock = dir.join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia unix!").unwrap();
        String::from_utf8_lossy(&head).to_string()
    });
    let r = node.get(&format!("/api/send?sock={}", sock.display()), &[]);
    assert_eq!(r.body, "200 via unix!", "{r:?}");
    assert!(server.join().unwrap().starts_with("GET /over-unix HTTP/1.1"));
}

fn guarded() -> String {
    [
        gateway(""),
        raw(r#"  - { name: tokens, kind: security.token_store }
  - name: readers
    kind: security.policy
    groups: [readers]
    policy: { actions: access, resources: "app:secret.ep", effect: allow }
  - name: open
    kind: http.router
    meta: { server: gateway }
    prefix: /open
    middleware: [real_ip, ratelimit, compress]
    options:
      real_ip.trusted.subnets: "127.0.0.0/8, ::1"
      ratelimit.requests: "3"
      ratelimit.window: 1h
      ratelimit.burst: "3"
      ratelimit.key: "header:X-Client"
      compress.min.length: "100"
  - { name: auth, kind: http.router, meta: { server: gateway }, prefix: /auth }
  - name: guarded
    kind: http.router
    meta: { server: gateway }
    prefix: /guarded
    middleware: [token_auth]
    options: { token_auth.store: tokens }
    post_middleware: [endpoint_firewall]
"#),
        handler("login", "security", r#"        local who = http.request():query("who")
        local scope = who == "alice" and security.named_scope("app:readers") or security.new_scope()
        local store = assert(security.token_store("app:tokens"))
        local token = assert(store:create(security.new_actor(who), scope, {}))
        http.response():write(token)"#),
        handler("whoami", "security", r#"        local a = security.actor()
        local req = http.request()
        http.response():write((a and a:id() or "nobody") .. " from " .. req:remote_addr():match("^(.*):%d+$") .. " " .. string.rep("x", tonumber(req:query("pad") or "0")))"#),
        raw(r#"  - { name: login.ep, kind: http.endpoint, meta: { router: auth }, method: POST, path: /login, func: login }
  - { name: ip.ep, kind: http.endpoint, meta: { router: open }, method: GET, path: /ip, func: whoami }
  - { name: secret.ep, kind: http.endpoint, meta: { router: guarded }, method: GET, path: /secret, func: whoami }
  - { name: other.ep, kind: http.endpoint, meta: { router: guarded }, method: GET, path: /other, func: whoami }
"#),
    ]
    .concat()
}

#[test]
fn router_middleware_real_ip_ratelimit_compress_token_auth_and_firewall() {
    let dir = project("guarded", &guarded());
    let node = Node::start(&dir);
    // real_ip: the peer (loopback) is trusted, so the forwarded address is the client's
    let r = node.get("/open/ip", &[("X-Forwarded-For", "203.0.113.9, 10.0.0.1"), ("X-Client", "a")]);
    assert_eq!((r.status, r.body.trim_end()), (200, "nobody from 203.0.113.9"), "{r:?}");
    // compress: a body of at least 100 bytes to a client that takes gzip
    let r = node.get("/open/ip?pad=300", &[("Accept-Encoding", "gzip"), ("X-Client", "a")]);
    assert_eq!((r.status, r.header("content-encoding")), (200, Some("gzip")), "{r:?}");
    assert!(!r.body.contains("xxxxxxxx"), "{r:?}");
    let r = node.get("/open/ip?pad=10", &[("Accept-Encoding", "gzip"), ("X-Client", "a")]);
    assert_eq!((r.status, r.header("content-encoding")), (200, None), "short bodies go plain: {r:?}");
    // ratelimit: a burst of 3 per key, then 429 with the limit's headers; other keys go on
    let r = node.get("/open/ip", &[("X-Client", "a")]);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!((r.body.trim_end(), r.header("x-ratelimit-limit"), r.header("x-ratelimit-window")), ("Rate limit exceeded", Some("3"), Some("1h")));
    assert_eq!(node.get("/open/ip", &[("X-Client", "b")]).status, 200);
    // without the header the key names, the request is refused, as Wippy's middleware does
    let r = node.get("/open/ip", &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!((r.status, r.body.trim_end()), (400, "Rate limit key extraction failed"), "{r:?}");
    // token_auth + endpoint_firewall: the token's actor and scope run the handler
    let alice = node.request("POST", "/auth/login?who=alice", &[], b"").body;
    let mallory = node.request("POST", "/auth/login?who=mallory", &[], b"").body;
    assert_eq!(alice.len(), 64, "{alice}");
    let bearer = |t: &str| format!("Bearer {t}");
    let r = node.get("/guarded/secret", &[("Authorization", &bearer(&alice))]);
    assert_eq!((r.status, r.body.trim_end()), (200, "alice from 127.0.0.1"), "{r:?}");
    assert_eq!(node.get("/guarded/other", &[("Authorization", &bearer(&alice))]).status, 403, "no policy allows alice there");
    assert_eq!(node.get("/guarded/secret", &[("Authorization", &bearer(&mallory))]).status, 403);
    // no actor (an unknown token, or none): 401 with Wippy's JSON error, strict mode or not
    for auth in [&[("Authorization", "Bearer not-a-token")][..], &[]] {
        let r = node.get("/guarded/secret", auth);
        assert_eq!((r.status, r.header("content-type")), (401, Some("application/json")), "{r:?}");
        assert_eq!(r.json(), serde_json::json!({"success": false, "error": "Authentication required", "details": "You must be authenticated to access this endpoint"}));
    }
    let r = node.get("/guarded/other", &[("Authorization", &bearer(&alice))]);
    assert_eq!(r.json()["details"], "You don't have permission to access this endpoint", "{r:?}");
}

fn relay() -> String {
    [
        gateway(""),
        raw(r#"  - { name: processes, kind: process.host, lifecycle: { auto_start: true } }
  - name: ws
    kind: http.router
    meta: { server: gateway }
    prefix: /ws
    post_middleware: [websocket_relay]
    post_options: { wsrelay.allowed.origins: "https://game.example" }
  - name: room
    kind: process.lua
    method: main
    source: |
      return { main = function()
        process.registry.register("room")
        print("room ready")
        local inbox, beats = process.inbox(), {}
        while true do
          local m = inbox:receive()
          local t, v = m:topic(), m:payload() and m:payload():data()
          if t == "ws.join" then
            process.send(v.client_pid, "hello", "welcome " .. v.metadata.user)
          elseif t == "ws.heartbeat" and not beats[v.client_pid] then
            beats[v.client_pid] = true
            process.send(v.client_pid, "beat", { count = v.message_count, uptime = v.uptime, user = v.metadata.user })
          elseif t == "ws.message" then
            if v == "bye" then process.send(m:from(), "ws.close", "see you")
            elseif v == "json" then process.send(m:from(), "data", { n = 1 })
            elseif v == "bin" then process.send(m:from(), "blob", "\255\0")
            elseif v == "move" then
              local lobby = process.spawn("app:lobby", "app:processes")
              process.send(m:from(), "ws.control", { target_pid = tostring(lobby), metadata = { user = "moved" } })
            else process.send(m:from(), "echo", "echo: " .. v) end
          elseif t == "ws.leave" then
            print("room: left " .. v.client_pid .. " " .. v.metadata.user)
          end
        end
      end }
  - { name: room.svc, kind: process.service, process: room, host: processes, lifecycle: { auto_start: true } }
  - name: lobby
    kind: process.lua
    method: main
    source: |
      return { main = function()
        local inbox = process.inbox()
        while true do
          local m = inbox:receive()
          local t, v = m:topic(), m:payload() and m:payload():data()
          if t == "ws.join" then process.send(v.client_pid, "hello", "the lobby welcomes " .. v.metadata.user)
          elseif t == "ws.message" and v == "quit" then return end
        end
      end }
"#),
        handler("join", "json", r#"        local req = http.request()
        http.response():set_header("X-WS-Relay", json.encode({ target_pid = process.registry.lookup("room"),
          heartbeat_interval = "50ms", metadata = { user = req:query("user") } }))"#),
        raw(r#"  - { name: join.ep, kind: http.endpoint, meta: { router: ws }, method: GET, path: /join, func: join }
"#),
    ]
    .concat()
}

#[test]
fn websocket_relay_makes_the_client_a_process_the_target_talks_to() {
    use tungstenite::{client::IntoClientRequest, Message};
    type Ws = tungstenite::WebSocket<TcpStream>;
    let dir = project("relay", &relay());
    let mut node = Node::start(&dir);
    // (the room may have started before or after the server said it listens)
    node.run.saw_or_wait(&["room ready"]);
    let addr = node.http.addr.clone();
    let connect = |user: &str, origin: &str| {
        let mut req = format!("ws://{addr}/ws/join?user={user}").into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        let stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tungstenite::client(req, stream)
    };
    // every frame the relay writes is one TEXT frame {"topic": …, "data": …}, as Wippy's
    let frame = |ws: &mut Ws| loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                let j: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                return (j["topic"].as_str().unwrap().to_string(), j["data"].clone());
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    let closed = |ws: &mut Ws| loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| f.reason.to_string()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    let (mut ws, resp) = connect("ann", "https://game.example").unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(frame(&mut ws), ("hello".into(), "welcome ann".into()));
    let (topic, beat) = frame(&mut ws);
    assert_eq!((topic.as_str(), &beat["count"], &beat["user"]), ("beat", &serde_json::json!(0), &serde_json::json!("ann")), "ws.heartbeat every heartbeat_interval: {beat}");
    assert!(beat["uptime"].as_str().is_some_and(|u| u.ends_with('s')), "uptime as Go prints a duration: {beat}");
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(frame(&mut ws), ("echo".into(), "echo: hi".into()));
    ws.send(Message::text("json")).unwrap();
    assert_eq!(frame(&mut ws), ("data".into(), serde_json::json!({"n": 1})));
    ws.send(Message::text("bin")).unwrap();
    assert_eq!(frame(&mut ws), ("blob".into(), "/wA=".into()), "bytes that are not UTF-8 go as base64");
    ws.send(Message::text("bye")).unwrap();
    assert_eq!(closed(&mut ws).as_deref(), Some("see you"), "ws.close's payload is the close frame's reason");
    node.wait_for(&["room: left {app:gateway#handlers|", " ann"]);

    // ws.control moves the client to another target (leave to the old one, join to the
    // new); the target's exit closes the socket
    let (mut ws, _) = connect("bob", "https://game.example").unwrap();
    assert_eq!(frame(&mut ws), ("hello".into(), "welcome bob".into()));
    ws.send(Message::text("move")).unwrap();
    assert_eq!(frame(&mut ws), ("hello".into(), "the lobby welcomes moved".into()));
    // (the metadata the control message brings is already the client's when it leaves, as
    // in Wippy's relay)
    node.wait_for(&["room: left {app:gateway#handlers|", " moved"]);
    ws.send(Message::text("quit")).unwrap();
    assert_eq!(closed(&mut ws).as_deref(), Some("target process exited"));

    // another origin is refused; a plain request to the relayed route is 426, as Wippy's
    // websocket library answers
    assert!(connect("eve", "https://evil.example").is_err());
    let r = node.get("/ws/join?user=x", &[]);
    assert_eq!((r.status, r.header("upgrade")), (426, Some("websocket")), "{r:?}");
}

fn slow_reader() -> String {
    [
        gateway_api("timeouts: { write: 300ms }"),
        handler("flood", "", r#"        local res = http.response()
        local chunk, n = string.rep("x", 65536), 0
        res:flush()
        while n < 512 * 1024 * 1024 do
          local err = res:write(chunk)
          if err then
            print("flood stopped after " .. n .. " bytes: " .. tostring(err))
            return
          end
          n = n + #chunk
        end
        print("flood finished")"#),
        raw(r#"  - { name: flood.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /flood, func: flood }
"#),
    ]
    .concat()
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let dir = project("slowread", &slow_reader());
    let mut node = Node::start(&dir);
    let mut s = TcpStream::connect(&node.http.addr).unwrap();
    s.write_all(b"GET /api/flood HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // the client reads nothing: the server's write waits, times out and the handler's
    // next write fails
    let line = node.wait_for(&["flood stopped after", "the client went away"]);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 256 << 20, "the connection ended long before the body did ({got} bytes; {line})");
}

#[test]
fn http_client_tls_options_trust_a_ca_check_a_name_present_a_certificate_or_skip_verification() {
    // a server for localhost, signed by a CA of the test's own, that requires a client
    // certificate; the handler calls the server it runs in at 127.0.0.1 with `tls` options
    let Pki { ca, server_key, server, client_key, client } = pki();
    // (each line of the PEM indented into the YAML block; the Lua takes the indent off)
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n        ");
    let body = format!(
        r#"        local function pem(s) return (s:gsub("\n%s+", "\n")) end
        local CA, CERT, KEY = pem([==[{}]==]), pem([==[{}]==]), pem([==[{}]==])
        local url = "https://127.0.0.1:" .. http.request():query("port") .. "/api/hi"
        local out = {{}}
        local function try(name, tls)
          local r, err = http_client.get(url, {{ tls = tls }})
          out[name] = r and r.body or ("error: " .. tostring(err))
        end
        try("system_roots", nil)
        try("no_name", {{ ca = CA, cert = CERT, key = KEY }})
        try("no_cert", {{ ca = CA, server_name = "localhost" }})
        try("mtls", {{ ca = CA, server_name = "localhost", cert = CERT, key = KEY }})
        try("insecure", {{ insecure_skip_verify = true, cert = CERT, key = KEY }})
        local _, e = http_client.get(url, {{ tls = {{ cert = CERT }} }})
        out.half = e:kind()
        return out"#,
        indent(&ca.pem()),
        indent(&client.pem()),
        indent(&client_key.serialize_pem())
    );
    let yaml = [
        gateway_api("tls: { mode: manual, cert: certs/server.pem, key: certs/server.key, client_ca: certs/ca.pem, client_auth: require_and_verify }"),
        handler("fetch", "http_client", &body),
        raw("  - { name: fetch.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /fetch, func: fetch }\n"),
        raw("  - { name: hi, kind: function.lua, modules: [http], method: h, source: \"return { h = function() require('http').response():write('hello over tls') end }\" }\n"),
        raw("  - { name: hi.ep, kind: http.endpoint, meta: { router: api }, method: GET, path: /hi, func: hi }\n"),
    ]
    .concat();
    let dir = project("clienttls", &yaml);
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(dir.join("certs/server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("certs/server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("certs/ca.pem"), ca.pem()).unwrap();
    let node = Node::start(&dir);
    let port = node.http.addr.rsplit_once(':').unwrap().1.to_string();
    let r = tls_get(&node.http.addr, &format!("/api/fetch?port={port}"), ca.der(), Some((client.der().to_vec(), client_key.serialize_der()))).unwrap();
    let json: serde_json::Value = serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap_or_else(|e| panic!("{e}: {r}"));
    let got = |k: &str| json[k].as_str().unwrap_or_default().to_string();
    assert_eq!(got("mtls"), "hello over tls", "{json}");
    assert_eq!(got("insecure"), "hello over tls", "{json}");
    for refused in ["system_roots", "no_name", "no_cert"] {
        assert!(got(refused).starts_with("error: "), "{refused}: {json}");
    }
    assert_eq!(got("half"), "Invalid", "{json}");
    assert!(got("no_name").contains("not valid for name") && got("system_roots").contains("UnknownIssuer") && got("no_cert").contains("CertificateRequired"), "the cause is named: {json}");
}

/// A CA of the test's own, a server certificate for localhost and a client certificate,
/// both signed by it.
struct Pki {
    ca: rcgen::Certificate,
    server_key: rcgen::KeyPair,
    server: rcgen::Certificate,
    client_key: rcgen::KeyPair,
    client: rcgen::Certificate,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap().signed_by(&client_key, &ca, &ca_key).unwrap();
    Pki { ca, server_key, server, client_key, client }
}

/// A GET over TLS to `addr` trusting `ca_der`, as `localhost`, with a client certificate
/// when given; the response text, or the TLS error.
fn tls_get(addr: &str, path: &str, ca_der: &[u8], client: Option<(Vec<u8>, Vec<u8>)>) -> Result<String, String> {
    use std::sync::Arc;
    // (ring, as the server: see wippy_http::tls)
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec())).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
    let config = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(vec![rustls::pki_types::CertificateDer::from(cert)], rustls::pki_types::PrivateKeyDer::try_from(key).unwrap())
            .unwrap(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).to_string()),
        Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(String::from_utf8_lossy(&out).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn tls_termination_with_a_certificate_and_client_certificates() {
    // a CA, a server certificate for localhost and a client certificate, both signed by it
    let Pki { ca, server_key, server, client_key, client } = pki();
    let yaml = |auth: &str| {
        format!(
            "namespace: app\nentries:\n  - {{ name: gateway, kind: http.service, addr: \"127.0.0.1:0\", lifecycle: {{ auto_start: true }}, tls: {{ mode: manual, cert: certs/server.pem, key: \"file://certs/server.key\"{auth} }} }}\n  - {{ name: api, kind: http.router, meta: {{ server: gateway }}, prefix: /api }}\n  - {{ name: hi, kind: function.lua, modules: [http], method: h, source: \"return {{ h = function() require('http').response():write('hello over tls') end }}\" }}\n  - {{ name: hi.ep, kind: http.endpoint, meta: {{ router: api }}, method: GET, path: /hi, func: hi }}\n"
        )
    };
    let write_certs = |dir: &Path| {
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(dir.join("certs/server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("certs/server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("certs/ca.pem"), ca.pem()).unwrap();
    };
    let dir = project("tls", &yaml(""));
    write_certs(&dir);
    let node = Node::start(&dir);
    let r = tls_get(&node.http.addr, "/api/hi", ca.der(), None).unwrap();
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello over tls"), "{r}");
    // plain HTTP to a TLS port gets nowhere
    assert_eq!(node.get("/api/hi", &[]).status, 0);
    drop(node);
    // client certificates required and verified against the CA
    let dir = project("mtls", &yaml(", client_ca: certs/ca.pem, client_auth: require_and_verify"));
    write_certs(&dir);
    let node = Node::start(&dir);
    assert!(tls_get(&node.http.addr, "/api/hi", ca.der(), None).is_err(), "no client certificate: refused");
    let r = tls_get(&node.http.addr, "/api/hi", ca.der(), Some((client.der().to_vec(), client_key.serialize_der()))).unwrap();
    assert!(r.ends_with("hello over tls"), "{r}");
    drop(node);
    // require_any: some certificate, from any CA (here one of its own), no CA configured;
    // request: a certificate is asked for, none needed
    let stranger_key = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["stranger".to_string()]).unwrap().self_signed(&stranger_key).unwrap();
    let dir = project("anycert", &yaml(", client_auth: require_any"));
    write_certs(&dir);
    let node = Node::start(&dir);
    assert!(tls_get(&node.http.addr, "/api/hi", ca.der(), None).is_err(), "no client certificate: refused");
    let r = tls_get(&node.http.addr, "/api/hi", ca.der(), Some((stranger.der().to_vec(), stranger_key.serialize_der()))).unwrap();
    assert!(r.ends_with("hello over tls"), "{r}");
    drop(node);
    let dir = project("reqcert", &yaml(", client_auth: request"));
    write_certs(&dir);
    let node = Node::start(&dir);
    assert!(tls_get(&node.http.addr, "/api/hi", ca.der(), None).unwrap().ends_with("hello over tls"));
    assert!(tls_get(&node.http.addr, "/api/hi", ca.der(), Some((stranger.der().to_vec(), stranger_key.serialize_der()))).unwrap().ends_with("hello over tls"));
    drop(node);
    // the certificate and key from the environment registry: `${env:ID}` in place of the
    // PEM and the legacy `key_env` (a variable's name), as Wippy resolves them
    let env_yaml = |cert: &str| {
        format!(
            "namespace: app\nentries:\n  - {{ name: secrets, kind: env.storage.static, values: {{ CERT: {}, KEY: {} }} }}\n  - {{ name: tls_cert, kind: env.variable, storage: secrets, variable: CERT }}\n  - {{ name: tls_key, kind: env.variable, storage: secrets, variable: KEY }}\n  - {{ name: gateway, kind: http.service, addr: \"127.0.0.1:0\", lifecycle: {{ auto_start: true }}, tls: {{ mode: manual, cert: \"{cert}\", key_env: KEY }} }}\n  - {{ name: api, kind: http.router, meta: {{ server: gateway }}, prefix: /api }}\n  - {{ name: hi, kind: function.lua, modules: [http], method: h, source: \"return {{ h = function() require('http').response():write('hello over tls') end }}\" }}\n  - {{ name: hi.ep, kind: http.endpoint, meta: {{ router: api }}, method: GET, path: /hi, func: hi }}\n",
            serde_json::to_string(&server.pem()).unwrap(),
            serde_json::to_string(&server_key.serialize_pem()).unwrap()
        )
    };
    let dir = project("envtls", &env_yaml("${env:app:tls_cert}"));
    let node = Node::start(&dir);
    assert!(tls_get(&node.http.addr, "/api/hi", ca.der(), None).unwrap().ends_with("hello over tls"));
    drop(node);
    let dir = project("noenvtls", &env_yaml("${env:NO_SUCH_CERT}"));
    let o = Command::new(env!("CARGO_BIN_EXE_wippy")).arg("-d").arg(&dir).arg("run").output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("app:gateway") && e.contains("tls.cert") && e.contains("NO_SUCH_CERT is not set"), "{e}");

    // a key that is not one is a load error naming the field
    let dir = project("badtls", &yaml(""));
    write_certs(&dir);
    std::fs::write(dir.join("certs/server.key"), "not a key").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_wippy")).arg("-d").arg(&dir).arg("run").output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("app:gateway") && e.contains("tls.key"), "{e}");
}

fn load_error(tag: &str, yaml: &str) -> String {
    let dir = project(tag, yaml);
    let o = Command::new(env!("CARGO_BIN_EXE_wippy")).arg("-d").arg(&dir).arg("run").output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn bad_http_entries_are_load_errors_with_entry_and_field() {
    let base = "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \":0\" }\n  - { name: r, kind: http.router, meta: { server: s } }\n  - { name: f, kind: function.lua, source: \"return { call = function() end }\", method: call }\n";
    let e = load_error("conflict", &format!("{base}  - {{ name: a, kind: http.endpoint, meta: {{ router: r }}, method: GET, path: \"/x/{{id}}\", func: f }}\n  - {{ name: b, kind: http.endpoint, meta: {{ router: r }}, method: GET, path: \"/{{y}}/z\", func: f }}\n"));
    assert!(e.contains("conflicts with") && e.contains("_index.yaml:"), "{e}");
    let e = load_error("method", &format!("{base}  - {{ name: a, kind: http.endpoint, meta: {{ router: r }}, method: FETCH, path: /x, func: f }}\n"));
    assert!(e.contains("app:a") && e.contains("method") && e.contains("invalid HTTP method"), "{e}");
    let e = load_error("meta", "namespace: app\nentries:\n  - { name: r, kind: http.router, prefix: /x }\n");
    assert!(e.contains("app:r") && e.contains("missing metadata: server"), "{e}");
    let e = load_error("mw", "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \":0\" }\n  - { name: r, kind: http.router, meta: { server: s }, middleware: [gzip_all] }\n");
    assert!(e.contains("unknown middleware \"gzip_all\""), "{e}");
    let e = load_error("mw-opts", "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \":0\" }\n  - { name: r, kind: http.router, meta: { server: s }, middleware: [ratelimit], options: { ratelimit.requests: lots } }\n");
    assert!(e.contains("app:r") && e.contains("options") && e.contains("ratelimit.requests: expected a whole number, got \"lots\""), "{e}");
    let e = load_error("mw-store", "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \":0\" }\n  - { name: r, kind: http.router, meta: { server: s }, middleware: [token_auth], options: { token_auth.store: s } }\n");
    assert!(e.contains("app:r") && e.contains("token_auth.store") && e.contains("security.token_store"), "{e}");
    let e = load_error("mw-nostore", "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \":0\" }\n  - { name: r, kind: http.router, meta: { server: s }, middleware: [token_auth] }\n");
    assert!(e.contains("app:r") && e.contains("token_auth.store: required"), "{e}");
    let e = load_error("addr", "namespace: app\nentries:\n  - { name: s, kind: http.service, addr: \"\" }\n");
    assert!(e.contains("app:s") && e.contains("empty address"), "{e}");
    let e = load_error("prefix", &format!("{base}  - {{ name: r2, kind: http.router, meta: {{ server: s }} }}\n"));
    assert!(e.contains("router prefix exists"), "{e}");
}

/// An example project, copied with its server on a free port.
fn example(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name).join("src");
    let dir = std::env::temp_dir().join(format!("wippy-http-ex-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.replace("addr: 127.0.0.1:8080", "addr: 127.0.0.1:0").replace("addr: 127.0.0.1:8081", "addr: 127.0.0.1:0").replace("addr: 127.0.0.1:8082", "addr: 127.0.0.1:0").replace("addr: 127.0.0.1:8083", "addr: 127.0.0.1:0");
        std::fs::write(dir.join("src").join(f.file_name().unwrap()), text).unwrap();
    }
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  level: info\n").unwrap();
    dir
}

#[test]
fn the_http_hello_example_answers() {
    let node = Node::start(&example("http-hello"));
    assert_eq!(node.get("/hello?name=Ann", &[]).body, "Hello, Ann!\n");
    assert_eq!(node.get("/json?n=5", &[]).json(), serde_json::json!({"message": "hello", "n": 5}));
    assert_eq!(node.get("/users/7", &[]).json(), serde_json::json!({"id": "7", "name": "user 7"}));
    assert_eq!(node.get("/users/0", &[]).status, 404);
    let e = node.request("POST", "/echo", &[("Content-Type", "application/json")], br#"{"x":1}"#);
    assert_eq!(e.json(), serde_json::json!({"got": {"x": 1}, "method": "POST", "type": "application/json"}));
}

#[test]
fn the_http_workers_example_puts_processes_behind_http() {
    let mut node = Node::start(&example("http-workers"));
    let a = node.request("POST", "/api/count", &[], b"").json();
    let b = node.request("POST", "/api/count", &[], b"").json();
    assert_eq!((a["count"].as_i64(), b["count"].as_i64()), (Some(1), Some(2)), "the counter service keeps its state");
    assert_ne!(a["handler"], b["handler"], "each request is its own process");
    let p = node.get("/api/primes/1000", &[]).json();
    assert_eq!(p["primes"], 168);
    assert!(p["worker"].as_str().unwrap().starts_with("{app:processes|"), "{p}");
    assert_eq!(node.get("/api/primes/x", &[]).status, 400);
    // 202 at once; the task's steps are logged after the response
    let t = Instant::now();
    let r = node.request("POST", "/api/tasks", &[], br#"{"steps": 3}"#);
    assert_eq!(r.status, 202);
    assert!(t.elapsed() < Duration::from_millis(250), "the response waited for the task: {:?}", t.elapsed());
    let task = r.json()["task"].as_str().unwrap().to_string();
    node.wait_for(&["task done", &task]);
}

#[test]
fn the_task_queue_example_runs_a_process_per_job_and_retries_a_failed_one() {
    let mut node = Node::start(&example("task-queue"));
    let a = node.request("POST", "/api/jobs", &[], br#"{"n": 10000}"#);
    assert_eq!(a.status, 202);
    let b = node.request("POST", "/api/jobs", &[], br#"{"n": 1000, "fail_once": true}"#);
    assert_eq!(node.request("POST", "/api/jobs", &[], br#"{"n": "x"}"#).status, 400);
    let (a, b) = (a.json()["id"].as_str().unwrap().to_string(), b.json()["id"].as_str().unwrap().to_string());
    // each job logs when its result is stored (the second after its failed first attempt);
    // the two run at once, so either may finish first
    node.run.saw_or_wait(&["job done", &a]);
    node.run.saw_or_wait(&["job done", &b, "attempts=2"]);
    let ra = node.get(&format!("/api/jobs/{a}"), &[]).json();
    assert_eq!((ra["primes"].as_i64(), ra["attempts"].as_i64()), (Some(1229), Some(1)), "{ra}");
    assert!(ra["worker"].as_str().unwrap().starts_with("{app:job_worker#workers|"), "{ra}");
    let rb = node.get(&format!("/api/jobs/{b}"), &[]).json();
    assert_eq!((rb["primes"].as_i64(), rb["attempts"].as_i64()), (Some(168), Some(2)), "{rb}");
    assert_ne!(ra["worker"], rb["worker"], "each job is its own process");
    assert_eq!(node.get("/api/jobs/unknown", &[]).status, 404);
}

#[test]
fn the_ws_chat_example_relays_a_room_over_websockets() {
    use tungstenite::Message;
    let mut node = Node::start(&example("ws-chat"));
    // (the room opens as a service of its own: before or after the server listens)
    node.run.saw_or_wait(&["chat room open"]);
    let addr = node.http.addr.clone();
    let join = |user: &str| {
        let stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tungstenite::client(format!("ws://{addr}/ws/join?user={user}"), stream).unwrap().0
    };
    // (each line comes as the relay writes what a process sends: {"topic": …, "data": …})
    let line = |ws: &mut tungstenite::WebSocket<TcpStream>| loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                let j: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(j["topic"], "chat.line", "{j}");
                return j["data"].as_str().unwrap().to_string();
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    let mut ann = join("ann");
    assert_eq!(line(&mut ann), "* ann joined");
    let mut bob = join("bob");
    assert_eq!(line(&mut ann), "* bob joined");
    assert_eq!(line(&mut bob), "* bob joined");
    bob.send(Message::text("hi ann")).unwrap();
    assert_eq!(line(&mut ann), "bob: hi ann");
    assert_eq!(line(&mut bob), "bob: hi ann");
    bob.close(None).unwrap();
    assert_eq!(line(&mut ann), "* bob left");
}

#[test]
fn the_metrics_middleware_counts_times_and_gauges_requests_for_prometheus() {
    let yaml = [
        gateway(""),
        raw(r#"  - { name: metered, kind: http.router, meta: { server: gateway }, prefix: /m, middleware: [metrics, otel] }
  - { name: plain, kind: http.router, meta: { server: gateway }, prefix: /p }
"#),
        handler("user", "", r#"        local id = http.request():param("id")
        if id == "boom" then error("no such user") end
        http.response():write("user " .. id)"#),
        raw(r#"  - { name: user.ep, kind: http.endpoint, meta: { router: metered }, method: GET, path: "/users/{id}", func: user }
  - { name: plain.ep, kind: http.endpoint, meta: { router: plain }, method: GET, path: "/users/{id}", func: user }
"#),
    ]
    .concat();
    let dir = project("metered", &yaml);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.join(".wippy.yaml"), format!("logger:\n  level: info\nmetrics:\n  prometheus:\n    address: 127.0.0.1:{port}\n")).unwrap();
    let mut node = Node::start(&dir);
    node.run.saw_or_wait(&["field middleware: otel: this runtime exports no OpenTelemetry traces"]);
    for path in ["/m/users/1", "/m/users/2", "/m/users/boom", "/p/users/3"] {
        node.get(path, &[]);
    }
    let (scrape, series) = scrape(port);
    let get = |k: &str| series.get(k).copied();
    let ok = r#"method="GET",route="/m/users/{id}",status="200""#;
    let failed = r#"method="GET",route="/m/users/{id}",status="500""#;
    assert_eq!(get(&format!("wippy_http_requests_total{{{ok}}}")), Some(2.0), "{}", scrape.body);
    assert_eq!(get(&format!("wippy_http_requests_total{{{failed}}}")), Some(1.0), "{}", scrape.body);
    assert_eq!(get(&format!("wippy_http_request_duration_seconds_count{{{ok}}}")), Some(2.0), "{}", scrape.body);
    assert_eq!(get(&format!("wippy_http_request_duration_seconds_bucket{{{ok},le=\"+Inf\"}}")), Some(2.0), "a histogram: {}", scrape.body);
    assert_eq!(get(r#"wippy_http_requests_in_flight{method="GET",route="/m/users/{id}"}"#), Some(0.0), "{}", scrape.body);
    assert!(!scrape.body.contains("/p/users"), "a router without the middleware is not measured: {}", scrape.body);
}

/// Wippy's `metrics` module (its public example 16-metrics): what a handler records shows on
/// the node's Prometheus endpoint beside the node's own figures.
#[test]
fn lua_metrics_module_records_counters_gauges_and_histograms_for_prometheus() {
    let yaml = [
        gateway_api(""),
        handler("order", "json, metrics, time", r#"        local req, res = http.request(), http.response()
        local body = req:body_json()
        local ok, err = metrics.counter_inc("orders_total", { status = "ok" })
        assert(ok == true and err == nil)
        metrics.counter_add("revenue_total", tonumber(body.price) * 2, { item = body.item, ignored = 5 })
        metrics.gauge_inc("orders_pending", {})
        metrics.gauge_inc("orders_pending")
        metrics.gauge_dec("orders_pending", "not a table")
        metrics.gauge_set("queue_depth", 42)
        metrics.histogram("request_duration_seconds", 0.03, { endpoint = "create_order" })
        local _, kind_err = metrics.gauge_set("orders_total", 1)
        local raised = not pcall(metrics.counter_inc, 5)
        res:set_status(201)
        res:write_json({ kind_err = tostring(kind_err), raised = raised })"#),
        raw(r#"  - { name: order.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /orders, func: order }
"#),
    ]
    .concat();
    let dir = project("luametrics", &yaml);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Wippy's form of the setting (its example's .wippy.yaml)
    std::fs::write(dir.join(".wippy.yaml"), format!("version: \"1.0\"\nprometheus:\n  enabled: true\n  address: 127.0.0.1:{port}\n")).unwrap();
    let node = Node::start(&dir);
    for _ in 0..2 {
        let r = node.request("POST", "/api/orders", &[("Content-Type", "application/json")], br#"{"item":"tea","price":9.99}"#);
        assert_eq!(r.status, 201, "{r:?}");
        assert!(r.body.contains(r#""raised":true"#) && r.body.contains("is a counter, not a gauge"), "{}", r.body);
    }
    let (scrape, series) = scrape(port);
    let get = |k: &str| series.get(k).copied();
    assert_eq!(get(r#"orders_total{status="ok"}"#), Some(2.0), "{}", scrape.body);
    assert!(get(r#"revenue_total{item="tea"}"#).is_some_and(|v| (v - 39.96).abs() < 1e-9), "{}", scrape.body);
    assert_eq!(get("orders_pending"), Some(2.0), "{}", scrape.body);
    assert_eq!(get("queue_depth"), Some(42.0), "{}", scrape.body);
    assert_eq!(get(r#"request_duration_seconds_bucket{endpoint="create_order",le="0.05"}"#), Some(2.0), "{}", scrape.body);
    assert_eq!(get(r#"request_duration_seconds_count{endpoint="create_order"}"#), Some(2.0), "{}", scrape.body);
    assert!(scrape.body.contains("# TYPE revenue_total counter") && scrape.body.contains("# TYPE orders_pending gauge"), "{}", scrape.body);
    assert!(get("wippy_spawns_total").is_some(), "the node's own figures are still there: {}", scrape.body);
}

/// The node's Prometheus endpoint on `port`: the answer, and each series' value by its
/// name and labels as written.
fn scrape(port: u16) -> (Response, std::collections::HashMap<String, f64>) {
    let scrape = Client { addr: format!("127.0.0.1:{port}") }.get("/metrics", &[]);
    assert_eq!(scrape.status, 200, "{scrape:?}");
    let series = scrape
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect();
    (scrape, series)
}

fn sse() -> String {
    [
        gateway_api(""),
        raw(r#"  - { name: processes, kind: process.host, lifecycle: { auto_start: true } }
  - name: events
    kind: http.router
    meta: { server: gateway }
    prefix: /sse
    post_middleware: [sse_relay]
    post_options: { sserelay.allowed.origins: "https://*.example.com" }
  - name: feed
    kind: process.lua
    method: main
    source: |
      return { main = function()
        process.registry.register("feed")
        print("feed ready")
        local inbox, beats = process.inbox(), {}
        while true do
          local m = inbox:receive()
          local t, v = m:topic(), m:payload() and m:payload():data()
          if t == "sse.join" then
            process.send(v.client_pid, "other", "not this topic")
            process.send(v.client_pid, "sse.message", "welcome " .. v.metadata.user)
            process.send(v.client_pid, "sse.message", { n = 1, lines = "a\nb" })
          elseif t == "sse.heartbeat" and not beats[v.client_pid] then
            beats[v.client_pid] = true
            process.send(v.client_pid, "sse.message", "beat " .. v.message_count .. " " .. type(v.uptime))
            process.send(v.client_pid, "sse.close", "bye")
          elseif t == "sse.leave" then
            print("feed: left " .. v.client_pid)
          end
        end
      end }
  - { name: feed.svc, kind: process.service, process: feed, host: processes, lifecycle: { auto_start: true } }
"#),
        handler("subscribe", "json", r#"        local req = http.request()
        local cfg = { heartbeat_interval = "50ms", metadata = { user = req:query("user") } }
        if req:query("mode") == "detached" then
          cfg = { message_topic = "*", idle_timeout = "2s" }
        else
          cfg.target_pid = process.registry.lookup("feed")
        end
        local r = http.response()
        r:set_header("X-SSE-Relay", req:query("bad") and "{not json" or json.encode(cfg))
        if req:query("write") then r:write("plain answer") end"#),
        handler("push", "", r#"        local req = http.request()
        process.send(req:query("pid"), req:query("topic") or "news", req:query("text"))
        http.response():write("ok")"#),
        raw(r#"  - { name: subscribe.ep, kind: http.endpoint, meta: { router: events }, method: GET, path: /subscribe, func: subscribe }
  - { name: push.ep, kind: http.endpoint, meta: { router: api }, method: POST, path: /push, func: push }
"#),
    ]
    .concat()
}

/// Reads server-sent events off a chunked response, as they arrive.
struct Events {
    r: std::io::BufReader<TcpStream>,
    buf: String,
}

impl Events {
    fn open(addr: &str, path: &str, origin: &str) -> Events {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        write!(w, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\r\n").unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("x-sse-relay"), "{head}");
        Events { r, buf: String::new() }
    }

    /// The next event, `(name, data)` (comments skipped); None at the end of the stream.
    fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut name, mut data) = (String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d.to_string());
                    }
                }
                if !data.is_empty() {
                    return Some((name, data.join("\n")));
                }
                continue;
            }
            let mut size = String::new();
            if self.r.read_line(&mut size).unwrap_or(0) == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                return None;
            }
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk).unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

#[test]
fn sse_relay_streams_what_processes_send_to_the_stream_pid() {
    let dir = project("sse", &sse());
    let mut node = Node::start(&dir);
    node.run.saw_or_wait(&["feed ready"]);
    let addr = node.http.addr.clone();
    // managed: the target hears sse.join and its sse.message sends become events
    let mut ev = Events::open(&addr, "/sse/subscribe?user=ann", "https://app.example.com");
    assert_eq!(ev.next(), Some(("sse.message".into(), "welcome ann".into())), "the 'other' topic is not forwarded");
    let (name, data) = ev.next().unwrap();
    assert_eq!(name, "sse.message");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&data).unwrap(), serde_json::json!({ "n": 1, "lines": "a\nb" }));
    assert_eq!(ev.next(), Some(("sse.message".into(), "beat 2 string".into())), "sse.heartbeat carries the count and uptime");
    assert_eq!(ev.next(), Some(("done".into(), r#"{"reason":"bye"}"#.into())));
    assert_eq!(ev.next(), None, "sse.close ends the stream");
    node.wait_for(&["feed: left {app:gateway#handlers|"]);
    // detached: `ready` names the stream PID; any topic goes out; the idle timeout ends it
    let mut ev = Events::open(&addr, "/sse/subscribe?mode=detached", "https://app.example.com");
    let (name, ready) = ev.next().unwrap();
    assert_eq!(name, "ready");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["message_topic"], "*");
    let pid = ready["stream_pid"].as_str().unwrap().to_string();
    let enc: String = pid.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let push = |query: &str| assert_eq!(node.request("POST", &format!("/api/push?pid={enc}&{query}"), &[], b"").status, 200);
    push("text=hello");
    assert_eq!(ev.next(), Some(("news".into(), "hello".into())));
    assert_eq!(ev.next(), Some(("done".into(), r#"{"reason":"idle timeout"}"#.into())));
    assert_eq!(ev.next(), None);
    // sse.control narrows the topic (a JSON string works as a table does); sse.close ends it
    let mut ev = Events::open(&addr, "/sse/subscribe?mode=detached", "https://app.example.com");
    let (_, ready) = ev.next().unwrap();
    let pid = serde_json::from_str::<serde_json::Value>(&ready).unwrap()["stream_pid"].as_str().unwrap().to_string();
    let enc: String = pid.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    let push = |query: &str| assert_eq!(node.request("POST", &format!("/api/push?pid={enc}&{query}"), &[], b"").status, 200);
    push("topic=sse.control&text=%7B%22message_topic%22%3A%22only%22%7D");
    push("text=dropped");
    push("topic=only&text=kept");
    push("topic=sse.close&text=bye");
    assert_eq!(ev.next(), Some(("only".into(), "kept".into())), "the news topic is no longer forwarded");
    assert_eq!(ev.next(), Some(("done".into(), r#"{"reason":"bye"}"#.into())));
    assert_eq!(ev.next(), None);
    // refused: another origin (403), a header that is not JSON (400); a handler that wrote
    // its answer keeps it
    let get = |path: &str, origin: &str| node.get(path, &[("Origin", origin)]);
    assert_eq!(get("/sse/subscribe?user=x", "https://evil.com").status, 403);
    let r = get("/sse/subscribe?user=x&bad=1", "https://app.example.com");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.starts_with("invalid relay configuration"), "{r:?}");
    let r = get("/sse/subscribe?user=x&write=1", "https://app.example.com");
    assert_eq!((r.status, r.body.as_str(), r.header("x-sse-relay")), (200, "plain answer", None), "{r:?}");
}

#[test]
fn sendfile_serves_the_file_a_handler_names_and_resource_firewall_guards_a_resource() {
    let yaml = [
        gateway(""),
        raw(r#"  - { name: public, kind: fs.directory, directory: ./public }
  - { name: tokens, kind: security.token_store }
  - name: reports
    kind: security.policy
    groups: [reports]
    policy: { actions: read, resources: "app:reports", effect: allow }
  - name: files
    kind: http.router
    meta: { server: gateway }
    prefix: /files
    post_middleware: [sendfile]
    post_options: { sendfile.fs: public }
  - name: guarded
    kind: http.router
    meta: { server: gateway }
    prefix: /reports
    middleware: [token_auth, resource_firewall]
    options: { token_auth.store: tokens, resource_firewall.action: read, resource_firewall.target: "app:reports" }
"#),
        handler("send", "", r#"        local req = http.request()
        local r = http.response()
        r:set_header(req:query("legacy") and "X-File-Path" or "X-Sendfile", req:query("path"))
        if req:query("as") then r:set_header("X-File-Name", req:query("as")) end"#),
        handler("login", "security", r#"        local who = http.request():query("who")
        local scope = who == "ann" and security.named_scope("app:reports") or security.new_scope()
        http.response():write(assert(assert(security.token_store("app:tokens")):create(security.new_actor(who), scope, {})))"#),
        handler("report", "", r#"        http.response():write("the report")"#),
        raw(r#"  - { name: send.ep, kind: http.endpoint, meta: { router: files }, method: GET, path: /get, func: send }
  - { name: login.ep, kind: http.endpoint, meta: { router: files }, method: POST, path: /login, func: login }
  - { name: report.ep, kind: http.endpoint, meta: { router: guarded }, method: GET, path: /q1, func: report }
"#),
    ]
    .concat();
    let dir = project("sendfile", &yaml);
    let node = Node::start(&dir);
    let r = node.get("/files/get?path=hello.txt", &[]);
    assert_eq!((r.status, r.body.as_str(), r.header("x-sendfile")), (200, "0123456789", None), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(node.get("/files/get?path=hello.txt", &[("If-None-Match", &etag)]).status, 304);
    let part = node.get("/files/get?path=/docs/index.html&legacy=1", &[("Range", "bytes=4-5")]);
    assert_eq!((part.status, part.body.as_str(), part.header("x-file-path")), (206, "do", None), "{part:?}");
    let dl = node.get("/files/get?path=app.js&as=my%20app.js", &[]);
    assert_eq!(dl.header("content-disposition"), Some(r#"attachment; filename="my app.js""#), "{dl:?}");
    assert!(dl.header("x-file-name").is_none());
    for (path, status) in [("..", 400), ("../secret.txt", 404), ("docs/../../secret.txt", 404), ("missing.txt", 404), ("docs", 404)] {
        let r = node.get(&format!("/files/get?path={path}"), &[]);
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert!(!r.body.contains("top secret"), "{path}");
    }
    // resource_firewall: the token's actor must be allowed `read` on app:reports
    let ann = node.request("POST", "/files/login?who=ann", &[], b"").body;
    let bob = node.request("POST", "/files/login?who=bob", &[], b"").body;
    let with = |t: &str| node.get("/reports/q1", &[("Authorization", &format!("Bearer {t}"))]);
    assert_eq!((with(&ann).status, with(&ann).body.as_str()), (200, "the report"));
    assert_eq!(with(&bob).status, 403);
    let r = node.get("/reports/q1", &[]);
    assert_eq!((r.status, r.json()["details"].as_str()), (401, Some("You must be authenticated to access this resource")), "{r:?}");
}

#[test]
fn sendfile_and_resource_firewall_settings_are_checked_at_load() {
    let head = gateway("");
    let e = load_error("sendfile-nofs", &format!("{head}  - {{ name: r, kind: http.router, meta: {{ server: gateway }}, prefix: /r, post_middleware: [sendfile] }}\n"));
    assert!(e.contains("entry app:r") && e.contains("sendfile.fs: missing"), "{e}");
    let e = load_error("sendfile-unknown", &format!("{head}  - {{ name: r, kind: http.router, meta: {{ server: gateway }}, prefix: /r, post_middleware: [sendfile], post_options: {{ sendfile.fs: nowhere }} }}\n"));
    assert!(e.contains("entry app:r") && e.contains("nowhere"), "{e}");
    let e = load_error("firewall-notarget", &format!("{head}  - {{ name: r, kind: http.router, meta: {{ server: gateway }}, prefix: /r, middleware: [resource_firewall] }}\n"));
    assert!(e.contains("entry app:r") && e.contains("resource_firewall.target: missing"), "{e}");
}

/// The methods every handler calls answer the same through their C fast path and through
/// mlua (refusals as error values, misuse as raised errors, numbers where strings go).
#[test]
fn request_and_response_methods_answer_alike_on_every_path() {
    let body = r#"        local req, res = http.request(), http.response()
        local out = {}
        local function note(k, v) out[#out + 1] = k .. "=" .. tostring(v) end
        note("method", req:method())
        note("path", req:path())
        note("q", req:query("a b"))
        note("missing", req:query("nope"))
        note("num", req:query(7))
        local q = req.query
        note("extracted", q(req, "n"))
        note("badname", res:set_header("bad name", "x") ~= nil)
        note("numvalue", res:set_header("X-Num", 42))
        note("ok", res:set_header("X-Ok", "yes"))
        note("ctype", res:set_content_type("text/plain"))
        local ok, e = pcall(function() return res:set_status("201") end)
        note("strstatus", ok)
        ok, e = pcall(res.set_status, req, 201)
        note("wrongself", ok)
        ok, e = pcall(req.query, res, "n")
        note("wrongself2", ok)
        note("wrongmsg", tostring(e):find("Request expected, got Response", 1, true) ~= nil)
        note("type", type(req) .. "/" .. type(res))
        note("mt", tostring(getmetatable(req)) .. "/" .. tostring(getmetatable(res)))
        note("str", tostring(req) .. "/" .. tostring(res))
        note("set", (pcall(function() req.x = 1 end)))
        local r2 = http.request({ timeout = 50, max_body = 4 })
        local b, berr = r2:body()
        note("limited", b == nil and berr ~= nil)
        note("badstatus", res:set_status(99) ~= nil)
        note("status", res:set_status(201))
        note("again", res:set_status(202) ~= nil)
        note("late", res:set_header("X-Late", "1") ~= nil)
        res:write(table.concat(out, "\n"))
        res:write(7)"#;
    let yaml = format!(
        "{}{}  - {{ name: m.ep, kind: http.endpoint, meta: {{ router: api }}, method: POST, path: /m, func: m }}\n",
        gateway_api(""),
        handler("m", "", body)
    );
    let dir = project("alike", &yaml);
    let node = Node::start(&dir);
    let r = node.request("POST", "/api/m?a+b=x%20y&n=5&7=seven", &[], b"more than four bytes");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("x-num"), Some("42"));
    assert_eq!(r.header("x-ok"), Some("yes"));
    assert!(r.header("x-late").is_none(), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let want = [
        "method=POST",
        "path=/api/m",
        "q=x y",
        "missing=nil",
        "num=seven",
        "extracted=5",
        "badname=true",
        "numvalue=nil",
        "ok=nil",
        "ctype=nil",
        "strstatus=false",
        "wrongself=false",
        "wrongself2=false",
        "wrongmsg=true",
        "type=userdata/userdata",
        "mt=false/false",
        "str=request POST /api/m/response",
        "set=false",
        "limited=true",
        "badstatus=true",
        "status=nil",
        "again=true",
        "late=true",
    ];
    assert_eq!(r.body, format!("{}7", want.join("\n")), "{r:?}");
}
