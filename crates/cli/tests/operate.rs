//! Operating a running node through the real binary: `wippy ps`/`inspect` over the control
//! socket (its file mode, garbage written to it), the `system` module, `system.exit`, and
//! the Prometheus endpoint scraped and parsed. Every wait is for an event (a log line, an
//! answer that shows the expected state), bounded by a deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Running;

const PROJECT: &str = r#"
namespace: app
entries:
  - name: work
    kind: process.host
    host:
      workers: 2
    lifecycle:
      auto_start: true

  - name: idle
    kind: process.lua
    modules: [time]
    source: |
      return { main = function() process.events():receive() end }

  # never reads its mailbox
  - name: sink
    kind: process.lua
    modules: [time]
    source: |
      return { main = function()
        process.registry.register("sink")
        process.events():receive() -- CANCEL at shutdown
      end }

  - name: boss
    kind: process.lua
    modules: [logger, time, system]
    source: |
      return { main = function()
        process.registry.register("boss")
        for i = 1, 3 do process.spawn("app:idle", "app:work") end
        local sink = process.spawn("app:sink", "app:work")
        time.sleep("20ms")
        for i = 1, 25 do process.send("sink", "note", i) end
        local states = system.supervisor.states()
        local hosts = system.hosts.list()
        local procs = system.hosts.processes("app:work")
        local stats = system.memory.stats()
        logger:info("boss ready", { services = #states, first = states[1].id, status = states[1].status,
          hosts = #hosts, procs = #procs, lua = stats.alloc > 0, goroutines = system.runtime.goroutines(),
          cwd = system.process.cwd(), source = procs[1].source, started = procs[1].started_at > 1e18,
          depth = hosts[1].queue_depth == hosts[1].queued })
        process.events():receive()
      end }

  - name: boss_service
    kind: process.service
    process: boss
    host: work
    lifecycle:
      auto_start: true

  # asks the node to end with 4, then waits to be stopped
  - name: quitter
    kind: process.lua
    modules: [system, time]
    source: |
      return { main = function()
        assert(system.exit(4))
        process.events():receive() -- the CANCEL that follows
      end }

  # may not read the node's state
  - name: nosy
    kind: process.lua
    modules: [logger, system]
    source: |
      return { main = function()
        local s, err = system.memory.stats()
        logger:info("nosy", { denied = s == nil and err:kind() == "PermissionDenied" })
      end }
"#;

fn project(tag: &str, extra_config: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wippy-op-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/_index.yaml"), PROJECT).unwrap();
    std::fs::write(dir.join(".wippy.yaml"), format!("logger:\n  level: info\n{extra_config}")).unwrap();
    dir
}

fn wippy(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wippy"));
    c.arg("-d").arg(dir).args(args);
    c
}

fn start(dir: &Path) -> Running {
    Running::spawn(wippy(dir, &["run"]))
}

fn ps_json(dir: &Path) -> Vec<serde_json::Value> {
    let o = wippy(dir, &["ps", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn ps_and_inspect_show_what_the_node_runs() {
    let dir = project("ps", "");
    let mut node = start(&dir);
    let ready = node.wait_for(&["boss ready"]);
    // the system module saw the supervisor, the host and its processes
    assert!(ready.contains("services=2") && ready.contains("first=app:work") && ready.contains("status=running"), "{ready}");
    assert!(ready.contains("hosts=1") && ready.contains("procs=5") && ready.contains("lua=true") && ready.contains("goroutines=5"), "{ready}");
    assert!(ready.contains("source=app:") && ready.contains("started=true") && ready.contains("depth=true"), "Wippy's names for the fields: {ready}");
    let cwd = std::env::current_dir().unwrap();
    assert!(ready.contains(&format!("cwd={}", cwd.display())), "the node's working directory, {}: {ready}", cwd.display());

    // the socket is the node user's only
    let sock = dir.join(".wippy/control.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let procs = ps_json(&dir);
    let of = |entry: &str| procs.iter().filter(|p| p["entry"] == entry).cloned().collect::<Vec<_>>();
    assert_eq!(procs.len(), 5, "{procs:?}");
    assert_eq!(of("app:idle").len(), 3);
    let boss = &of("app:boss")[0];
    assert_eq!(boss["names"], serde_json::json!(["boss"]));
    assert_eq!(boss["host"], "app:work");
    let sink = &of("app:sink")[0];
    assert_eq!(sink["names"], serde_json::json!(["sink"]));
    assert_eq!(sink["mailbox"], 25, "the 25 unread notes: {sink}");
    assert!(sink["memory"].as_u64().unwrap() > 0);

    // sorted by mailbox, the sink comes first; the table shows it too
    let o = wippy(&dir, &["ps", "--sort", "mailbox"]).output().unwrap();
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let first = table.lines().nth(1).unwrap();
    assert!(first.contains("app:sink") && first.contains(" 25 ") && first.contains("sink"), "{table}");

    // inspect: the service behind the boss, its names
    let pid = boss["pid"].as_str().unwrap();
    let o = wippy(&dir, &["inspect", pid, "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["service"], "app:boss_service");
    assert_eq!(d["entry_version"], 1);
    assert_eq!(d["pid"], pid);
    let o = wippy(&dir, &["inspect", "{app:work|0xfffff}"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such process"), "{}", String::from_utf8_lossy(&o.stderr));

    // garbage on the socket gets an error answer and harms nothing
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\xff\xfe garbage\n{\"cmd\":\"ps\",\"host\":7}\n{\"cmd\":\"rm -rf\"}\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false") && line.contains("bad request"), "{line}");
    }
    // an endless line closes that connection only
    let mut s2 = UnixStream::connect(&sock).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s2.write_all(&vec![b'x'; 200_000]);
    let mut rest = String::new();
    let _ = s2.read_to_string(&mut rest);
    assert!(rest.contains("too long"), "{rest}");
    assert_eq!(ps_json(&dir).len(), 5, "the node still answers");

    node.interrupt();
    assert_eq!(node.exit_code(), Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
    // no node: a clear error
    let o = wippy(&dir, &["ps"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no node is running"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_system_module_needs_permission_under_strict_mode() {
    let dir = project("strict", "security:\n  strict_mode: true\n");
    let o = wippy(&dir, &["run", "-x", "app:nosy", "--set", "logger.level=info"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("nosy") && err.contains("denied=true"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    get(port, "/metrics")
}

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `name{labels} value` lines of the exposition, by series.
fn series(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_are_served_for_prometheus() {
    let port = free_port();
    let dir = project("metrics", &format!("metrics:\n  prometheus:\n    address: 127.0.0.1:{port}\n"));
    let mut node = start(&dir);
    node.wait_for(&["boss ready"]);
    // the figures are read every 250ms: wait until the five processes and the 25 notes show
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let text = scrape(port);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        let m = series(&body);
        if m.get("wippy_processes{host=\"app:work\"}") == Some(&5.0) && m.get("wippy_messages_total").is_some_and(|n| *n >= 25.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "never 5 processes and 25 messages:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(m["wippy_messages_total"] >= 25.0, "{m:?}");
    assert!(m["wippy_spawns_total"] >= 5.0, "{m:?}");
    assert!(m.contains_key("wippy_exits_total{kind=\"error\"}"), "{m:?}");
    assert!(m["wippy_memory_bytes{kind=\"rss\"}"] > 0.0 && m["wippy_memory_bytes{kind=\"lua\"}"] > 0.0, "{m:?}");
    assert_eq!(m["wippy_service_restarts_total{service=\"app:boss_service\"}"], 0.0);
    assert_eq!(m["wippy_service_running{service=\"app:boss_service\"}"], 1.0);
    assert!(m.contains_key("wippy_scheduler_queue_length{host=\"app:work\"}"));
    // Wippy's liveness path on the same address
    let live = get(port, "/livez");
    assert!(live.starts_with("HTTP/1.1 200") && live.ends_with("\r\n\r\nok\n"), "{live}");

    // the whole picture at once, as `top` reads it
    let mut sock = UnixStream::connect(dir.join(".wippy/control.sock")).unwrap();
    sock.write_all(b"{\"cmd\":\"top\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).unwrap();
    let top: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(top["snapshot"]["totals"]["processes"], 5, "{line}");
    assert_eq!(top["snapshot"]["services"][1]["id"], "app:boss_service", "{line}");
    node.interrupt();
    assert_eq!(node.exit_code(), Some(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn system_exit_ends_the_node_with_its_code() {
    let dir = project("exit", "");
    let o = wippy(&dir, &["run", "-x", "app:quitter"]).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
