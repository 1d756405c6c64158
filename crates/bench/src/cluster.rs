//! Two wippy nodes on one machine, beside `../shared/anchors/erlang/dist.erl` (SPEC §13):
//! this process is node `a`; node `b` is a second OS process (this binary, `cluster-node`)
//! hosting the Lua `pong` and `sink` processes; both join a nats-server (JetStream, a
//! temporary directory, a free loopback port) started here. Metrics:
//!
//! - `cluster_pingpong_rate`: round trips/s of a Lua process on a with pong on b (20,000
//!   after 1,000 warm-up), the anchor's `dist_pingpong_rate`;
//! - `cluster_stream_rate`: one-way messages/s a -> b (200,000 `{n, i}` until b confirms the
//!   last), the anchor's `dist_stream_rate`;
//! - `consistent_register_us`, `consistent_register_rate`: CONSISTENT registrations (1,000
//!   names, one after another, each waits for JetStream); `consistent_lookup_rate`,
//!   `eventual_lookup_rate`: lookups served by the replica;
//! - `down_kill_ms`: a monitor on a process of b fires this long after b is `kill -9`ed
//!   (the anchor's `dist_down_ms`); `down_stop_ms`: the same after `SIGSTOP` of a third node.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use wippy_cluster::{Cluster, Config};
use wippy_lua::{LuaEntry, LuaRuntime};
use wippy_runtime::*;

use crate::report::*;

const HOST: &str = "bench";

const PONG: &str = r#"return { main = function(name)
    assert(process.registry.register(name, nil, process.registry.CONSISTENT))
    process.registry.register(name .. ".ev", nil, process.registry.EVENTUAL)
    local inbox, send = process.inbox(), process.send
    while true do
        local m = inbox:receive()
        send(m:from(), "pong", m:payload():data())
    end
end }"#;

const SINK: &str = r#"return { main = function()
    assert(process.registry.register("bench.sink", nil, process.registry.CONSISTENT))
    local inbox, count, want, who = process.inbox(), 0, nil, nil
    while true do
        local m = inbox:receive()
        if m:topic() == "n" then count = count + 1 else want, who = m:payload():data(), m:from() end
        if want and count >= want then process.send(who, "sunk", count) count, want = 0, nil end
    end
end }"#;

const DRIVER: &str = r#"return { main = function(pp, stream, names, lookups)
    local pong, sink = process.registry.lookup("bench.pong"), process.registry.lookup("bench.sink")
    assert(pong and sink, "node b's processes are not visible")
    local send, replies = process.send, process.listen("pong")
    for i = 1, 1000 do send(pong, "ping", i) replies:receive() end
    local t0 = time.now()
    for i = 1, pp do send(pong, "ping", i) replies:receive() end
    local t_pp = time.now():sub(t0):nanoseconds()
    local sunk = process.listen("sunk")
    t0 = time.now()
    for i = 1, stream do send(sink, "n", i) end
    send(sink, "done", stream)
    sunk:receive()
    local t_stream = time.now():sub(t0):nanoseconds()
    local reg = process.registry
    t0 = time.now()
    for i = 1, names do assert(reg.register("bench.name." .. i, nil, reg.CONSISTENT)) end
    local t_reg = time.now():sub(t0):nanoseconds()
    t0 = time.now()
    for _ = 1, lookups do reg.lookup("bench.pong") end
    local t_lookup = time.now():sub(t0):nanoseconds()
    assert(reg.lookup("bench.pong.ev"), "the EVENTUAL name is visible")
    t0 = time.now()
    for _ = 1, lookups do reg.lookup("bench.pong.ev") end
    local t_ev = time.now():sub(t0):nanoseconds()
    return { t_pp, t_stream, t_reg, t_lookup, t_ev }
end }"#;

fn lua_node(name: &str) -> (Node, LuaRuntime) {
    let node = Node::named(Some(name)).expect("node");
    let lua = LuaRuntime::new();
    lua.install(&node.handle());
    node.add_host(HostConfig::new(HOST)).expect("host");
    for (id, src) in [("bench:pong", PONG), ("bench:sink", SINK), ("bench:driver", DRIVER)] {
        lua.add_entry(LuaEntry::process(id, src).modules(&["time"]));
    }
    (node, lua)
}

/// `wippy-bench cluster-node NAME URL`: node b (or c): pong and sink, then "READY", then
/// nothing until it is killed.
pub fn node_main(name: &str, url: &str) {
    let (node, lua) = lua_node(name);
    let _cluster = Cluster::join(&node.handle(), Config::new(name, vec![url.to_string()])).expect("join");
    let pong_name = if name == "b" { "bench.pong".to_string() } else { format!("bench.pong.{name}") };
    node.spawn(HOST, Spawn::entry("bench:pong").arg(Value::str(&pong_name))).expect("pong");
    if name == "b" {
        node.spawn(HOST, Spawn::entry("bench:sink")).expect("sink");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = |n: &str| node.remote().and_then(|r| r.lookup(n)).is_some();
    while !(probe(&pong_name) && (name != "b" || probe("bench.sink"))) {
        assert!(Instant::now() < deadline, "names not registered");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("READY");
    let _keep = lua;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        if std::env::var("WIPPY_BENCH_DEBUG").is_ok() {
            eprintln!("{name} sees {:?}", _cluster.members().iter().map(|m| m.id.clone()).collect::<Vec<_>>());
        }
    }
}

/// The cluster tests' nats-server (JetStream, free loopback port, temporary store).
#[path = "../../cluster/tests/support/mod.rs"]
mod support;

fn start_node(name: &str, url: &str) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap()).args(["cluster-node", name, url]).stdout(Stdio::piped()).spawn().expect("node");
    let out = c.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY", "node {name} did not start");
    c
}

struct Watch {
    target: Pid,
    ready: std::sync::mpsc::Sender<Result<(), Error>>,
    fired: std::sync::mpsc::Sender<(Instant, ExitResult)>,
}

impl Handler for Watch {
    fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
        let _ = self.ready.send(cx.monitor(self.target));
        Flow::Continue
    }
    fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
        if let Event::Exit { result, .. } = ev {
            let _ = self.fired.send((Instant::now(), result));
            return Flow::stop(());
        }
        Flow::Continue
    }
}

/// How long after `signal` to `child` a monitor on `target` fires (node down).
fn down_after(node: &Node, child: &mut Child, target: Pid, signal: i32) -> Duration {
    let (ready, ready_rx) = channel();
    let (fired, fired_rx) = channel();
    node.spawn(HOST, Spawn::process(HandlerProcess(Watch { target, ready, fired }))).expect("watcher");
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("watcher started").expect("monitor");
    let t0 = Instant::now();
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let (at, result) = fired_rx.recv_timeout(Duration::from_secs(120)).expect("the monitor fired");
    assert_eq!(result.unwrap_err().message, NODE_DISCONNECTED);
    at.duration_since(t0)
}

pub fn run() {
    let nats = support::Nats::start();
    let url = nats.url();
    let mut b = start_node("b", &url);
    let (node, _lua) = lua_node("a");
    let cluster = Cluster::join(&node.handle(), Config::new("a", vec![url.clone()])).expect("join");
    assert!(cluster.wait_for(Duration::from_secs(10), |m| m.len() == 2), "b is not visible");
    let (pp, stream, names, lookups) = (20_000i64, 200_000i64, 1_000i64, 100_000i64);
    let (_, watch) = node.spawn_watched(HOST, Spawn::entry("bench:driver").args(vec![pp.into(), stream.into(), names.into(), lookups.into()])).expect("driver");
    let r = match watch.wait_timeout(Duration::from_secs(120)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => panic!("driver: {e}"),
        None => panic!("the driver did not finish in 120 s: {:?}", node.processes(None).iter().map(|p| (p.pid, p.state, p.queued)).collect::<Vec<_>>()),
    };
    let t = |i: usize| Duration::from_nanos(r.as_table().unwrap().array[i].as_int().unwrap() as u64);
    outf("cluster_pingpong_rate", pp as f64 / t(0).as_secs_f64(), "roundtrips/s");
    outf("cluster_pingpong_latency", t(0).as_nanos() as f64 / pp as f64 / 1000.0, "us");
    outf("cluster_stream_rate", stream as f64 / t(1).as_secs_f64(), "msgs/s");
    outf("consistent_register_us", t(2).as_nanos() as f64 / names as f64 / 1000.0, "us");
    outf("consistent_register_rate", names as f64 / t(2).as_secs_f64(), "registrations/s");
    outf("consistent_lookup_rate", lookups as f64 / t(3).as_secs_f64(), "lookups/s");
    outf("eventual_lookup_rate", lookups as f64 / t(4).as_secs_f64(), "lookups/s");

    let pong = node.remote().unwrap().lookup("bench.pong").unwrap();
    let d = down_after(&node, &mut b, pong, libc::SIGKILL);
    outf("down_kill_ms", d.as_secs_f64() * 1000.0, "ms");
    let mut c = start_node("c", &url);
    let pong_c = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = node.remote().unwrap().lookup("bench.pong.c") {
                break p;
            }
            assert!(Instant::now() < deadline, "c's pong is not visible");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let d = down_after(&node, &mut c, pong_c, libc::SIGSTOP);
    outf("down_stop_ms", d.as_secs_f64() * 1000.0, "ms");
    let _ = c.kill();
    let _ = b.kill();
    let _ = (b.wait(), c.wait());
    drop(nats);
}

/// `wippy-bench nats-pingpong`: the transport alone, no wippy code on the path: two
/// async-nats clients in this process, one echoing subject `p` to `q`, the other publishing
/// on `p` and waiting for `q` (20,000 round trips after 1,000), through the same
/// nats-server. The ceiling `cluster_pingpong_rate` lives under. Then the same round trips
/// with no client library and no async runtime at all (`nats_raw_pingpong_rate`): NATS's wire
/// protocol written and read on two blocking sockets, one thread per side, so what is left is
/// the server and the loopback.
pub fn nats_pingpong() {
    use futures_util::StreamExt;
    let nats = support::Nats::start();
    let url = nats.url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let rate = rt.block_on(async {
        let a = async_nats::connect(&url).await.expect("connect");
        let b = async_nats::connect(&url).await.expect("connect");
        let mut bs = b.subscribe("p").await.unwrap();
        let mut aq = a.subscribe("q").await.unwrap();
        let b2 = b.clone();
        tokio::spawn(async move {
            while let Some(m) = bs.next().await {
                let _ = b2.publish("q", m.payload).await;
            }
        });
        b.flush().await.unwrap();
        a.flush().await.unwrap();
        let n = 20_000;
        for _ in 0..1000 {
            a.publish("p", "x".into()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), aq.next()).await.expect("a round trip stalled for 5 s");
        }
        let t = Instant::now();
        for _ in 0..n {
            a.publish("p", "x".into()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), aq.next()).await.expect("a round trip stalled for 5 s");
        }
        n as f64 / t.elapsed().as_secs_f64()
    });
    drop(rt);
    outf("nats_pingpong_rate", rate, "roundtrips/s");
    outf("nats_raw_pingpong_rate", raw_pingpong(nats.port), "roundtrips/s");
}

/// One side of [`raw_pingpong`]: a connection subscribed to `sub`.
struct RawSide {
    w: std::net::TcpStream,
    r: std::io::BufReader<std::net::TcpStream>,
    line: String,
}

impl RawSide {
    fn connect(port: u16, sub: &str) -> RawSide {
        use std::io::{BufRead, Write};
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut side = RawSide { r: std::io::BufReader::new(s.try_clone().unwrap()), w: s, line: String::new() };
        side.r.read_line(&mut side.line).expect("INFO");
        write!(side.w, "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {sub} 1\r\nPING\r\n").unwrap();
        while !side.line.starts_with("PONG") {
            side.line.clear();
            side.r.read_line(&mut side.line).expect("PONG");
        }
        side
    }

    /// Wait for the next message, then publish `to`.
    fn echo(&mut self, to: &str) {
        self.recv();
        self.publish(to);
    }

    /// Wait for the next message (answering the server's PINGs).
    fn recv(&mut self) {
        use std::io::{BufRead, Read, Write};
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).expect("a round trip stalled for 5 s");
            if let Some(rest) = self.line.strip_prefix("MSG ") {
                let n: usize = rest.trim_end().rsplit(' ').next().and_then(|n| n.parse().ok()).expect("MSG size");
                let mut body = vec![0; n + 2];
                self.r.read_exact(&mut body).unwrap();
                break;
            }
            if self.line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n").unwrap();
            }
        }
    }

    fn publish(&mut self, to: &str) {
        use std::io::Write;
        self.w.write_all(format!("PUB {to} 1\r\nx\r\n").as_bytes()).unwrap();
    }
}

/// Round trips/s between two plain sockets through the server (see [`nats_pingpong`]).
fn raw_pingpong(port: u16) -> f64 {
    let (warm, n) = (1000, 20_000);
    // subjects of their own: the async clients' echo may still be subscribed to `p`
    let mut b = RawSide::connect(port, "raw.p");
    let mut a = RawSide::connect(port, "raw.q");
    let echo = std::thread::spawn(move || {
        for _ in 0..warm + n {
            b.echo("raw.q");
        }
    });
    a.publish("raw.p");
    for _ in 0..warm - 1 {
        a.echo("raw.p");
    }
    let t = Instant::now();
    for _ in 0..n {
        a.echo("raw.p");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    a.recv();
    echo.join().unwrap();
    rate
}
