//! The anchor benchmarks with Lua processes (metric names prefixed `lua_`): each benchmark
//! is driven by a Lua process; the main thread starts it and waits for its result.

use std::time::{Duration, Instant};

use wippy_lua::{LuaEntry, LuaRuntime, ShardOptions};
use wippy_runtime::*;

use crate::report::*;

const HOST: &str = "bench";

fn node(options: ShardOptions) -> (Node, LuaRuntime) {
    let node = Node::new().expect("node");
    let lua = LuaRuntime::new();
    lua.set_host_options(HOST, options);
    lua.install(&node.handle());
    // the process limit raised as the anchors raise Erlang's (+P 4194304): skynet has a million leaves
    let mut cfg = HostConfig::new(HOST).max_processes(4_194_304);
    if let Some(w) = std::env::var("WIPPY_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()) {
        cfg = cfg.workers(w);
    }
    node.add_host(cfg).expect("host");
    (node, lua)
}

fn entry(lua: &LuaRuntime, id: &str, src: &str) {
    lua.add_entry(LuaEntry::process(id, src).modules(&["time"]));
}

fn run(node: &Node, id: &str, args: Vec<Value>) -> Value {
    match node.exec(HOST, Spawn::entry(id).args(args)) {
        Ok(v) => v,
        Err(e) => panic!("benchmark driver failed: {} ({})", e.message, e.kind),
    }
}

fn nth(v: &Value, i: usize) -> Duration {
    let t = v.as_table().expect("driver returns a table");
    Duration::from_nanos(t.array[i].as_int().unwrap_or(0) as u64)
}

const PARKED: &str = r#"return { main = function(parent)
    process.send(parent, "r")
    process.inbox():receive()
end }"#;

const MEMORY_DRIVER: &str = r#"return { main = function(n)
    local me = process.pid()
    for _ = 1, n do process.spawn("bench:parked", "bench", me) end
    local ready = process.listen("r")
    for _ = 1, n do ready:receive() end
    return n
end }"#;

pub fn memory(isolated: bool) {
    let (node, lua) = node(ShardOptions { isolated, ..Default::default() });
    entry(&lua, "bench:parked", PARKED);
    entry(&lua, "bench:memdriver", MEMORY_DRIVER);
    // Warm up: one shard, compiled code, allocator pools.
    run(&node, "bench:memdriver", vec![Value::Int(100)]);
    // A VM per process costs far more than a coroutine: 10,000 of them show the figure.
    let n = if isolated { MEM_N / 10 } else { MEM_N };
    let rss0 = rss_kib();
    run(&node, "bench:memdriver", vec![Value::Int(n as i64)]);
    let rss1 = rss_kib();
    let prefix = if isolated { "lua_isolated_" } else { "lua_" };
    report_memory(prefix, n, rss0, rss1);
}

const QUICK: &str = r#"return { main = function(parent) process.send(parent, "d") end }"#;

const SPAWN_DRIVER: &str = r#"return { main = function(n)
    local me = process.pid()
    local done = process.listen("d")
    local t0 = time.now()
    local spawn = process.spawn
    local left, waiting = n, n
    -- spawn in batches, collecting as we go, so the mailbox never holds a million
    while left > 0 do
        local batch = left < 1000 and left or 1000
        for _ = 1, batch do spawn("bench:quick", "bench", me) end
        left = left - batch
        while waiting > left + 2000 do done:receive() waiting = waiting - 1 end
    end
    local issued = time.now():sub(t0):nanoseconds()
    while waiting > 0 do done:receive() waiting = waiting - 1 end
    return { issued, time.now():sub(t0):nanoseconds() }
end }"#;

pub fn spawn() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:quick", QUICK);
    entry(&lua, "bench:spawndriver", SPAWN_DRIVER);
    run(&node, "bench:spawndriver", vec![Value::Int(1000)]);
    let r = run(&node, "bench:spawndriver", vec![Value::Int(SPAWN_N as i64)]);
    report_spawn("lua_", SPAWN_N, nth(&r, 0), nth(&r, 1));
}

const PONG: &str = r#"return { main = function(peer)
    local ch = process.listen("ping")
    local send = process.send
    while true do
        local v = ch:receive()
        send(peer, "pong", v)
        if v == 0 then return end
    end
end }"#;

const PING_DRIVER: &str = r#"return { main = function(m)
    local me = process.pid()
    local pong = process.spawn("bench:pong", "bench", me)
    local ch = process.listen("pong")
    local send = process.send
    local t0 = time.now()
    for i = m, 0, -1 do
        send(pong, "ping", i)
        ch:receive()
    end
    return { time.now():sub(t0):nanoseconds() }
end }"#;

pub fn pingpong() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:pong", PONG);
    entry(&lua, "bench:pingdriver", PING_DRIVER);
    run(&node, "bench:pingdriver", vec![Value::Int(1000)]);
    let r = run(&node, "bench:pingdriver", vec![Value::Int(PINGPONG_M as i64 - 1)]);
    report_pingpong("lua_", PINGPONG_M, nth(&r, 0));
}

const RING_NODE: &str = r#"return { main = function(driver, n)
    local nextp = process.listen("next"):receive()
    local ch = process.listen("t")
    local send = process.send
    while true do
        local left = ch:receive()
        if left == 0 then send(driver, "done", true) return end
        send(nextp, "t", left - 1)
        if left < n then return end -- the token will not come round again
    end
end }"#;

const RING_DRIVER: &str = r#"return { main = function(n, m)
    local me = process.pid()
    local t0 = time.now()
    local pids = {}
    for i = 1, n do pids[i] = process.spawn("bench:ringnode", "bench", me, n) end
    for i = 1, n do process.send(pids[i], "next", pids[i % n + 1]) end
    local setup = time.now():sub(t0):nanoseconds()
    local done = process.listen("done")
    local t1 = time.now()
    process.send(pids[1], "t", n * m - 1)
    done:receive()
    return { setup, time.now():sub(t1):nanoseconds() }
end }"#;

pub fn ring() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:ringnode", RING_NODE);
    entry(&lua, "bench:ringdriver", RING_DRIVER);
    run(&node, "bench:ringdriver", vec![Value::Int(100), Value::Int(2)]);
    let t = Instant::now();
    let r = run(&node, "bench:ringdriver", vec![Value::Int(RING_N as i64), Value::Int(RING_M as i64)]);
    let _ = t;
    report_ring("lua_", RING_N, RING_N * RING_M, nth(&r, 0), nth(&r, 1));
}

/// The Erlang anchor's `cpu` job set (bench.erl): job k counts the primes below 1000*k by
/// trial division, the same loop.
const CPU_WORKER: &str = r#"return { main = function(parent)
    local jobs = process.listen("job")
    local send = process.send
    while true do
        local limit = jobs:receive()
        if limit == 0 then return end
        local n = 0
        for k = 2, limit - 1 do
            local d = 2
            while true do
                if d * d > k then n = n + 1 break end
                if k % d == 0 then break end
                d = d + 1
            end
        end
        send(parent, "primes", n)
    end
end }"#;

const CPU_DRIVER: &str = r#"return { main = function(workers, jobs)
    local me = process.pid()
    local ws = {}
    for i = 1, workers do ws[i] = process.spawn("bench:cpuworker", "bench", me) end
    local results = process.listen("primes")
    local t0 = time.now()
    for k = 1, jobs do process.send(ws[(k - 1) % workers + 1], "job", 1000 * k) end
    local total = 0
    for _ = 1, jobs do total = total + results:receive() end
    local wall = time.now():sub(t0):nanoseconds()
    for i = 1, workers do process.send(ws[i], "job", 0) end
    return { wall, total }
end }"#;

/// `lua-cpu`: the job set on a host with one worker, then on one with two (placement as
/// any project gets it); the ratio is the parallel speedup. One warm-up run each.
pub fn cpu() {
    let mut walls = Vec::new();
    for workers in [1, 2] {
        let node = Node::new().expect("node");
        let lua = LuaRuntime::new();
        lua.set_host_options(HOST, ShardOptions::default());
        lua.install(&node.handle());
        node.add_host(HostConfig::new(HOST).workers(workers)).expect("host");
        entry(&lua, "bench:cpuworker", CPU_WORKER);
        entry(&lua, "bench:cpudriver", CPU_DRIVER);
        run(&node, "bench:cpudriver", vec![Value::Int(CPU_WORKERS as i64), Value::Int(10)]);
        let r = run(&node, "bench:cpudriver", vec![Value::Int(CPU_WORKERS as i64), Value::Int(CPU_JOBS as i64)]);
        let total = r.as_table().and_then(|t| t.array.get(1)).and_then(Value::as_int).unwrap_or(0);
        assert_eq!(total, CPU_RESULT, "the job set counted {total} primes");
        let wall = nth(&r, 0);
        out(&format!("lua_cpu_workers_{workers}"), CPU_WORKERS, "processes");
        outf(&format!("lua_cpu_wall_{workers}"), ms(wall), "ms");
        walls.push(wall);
        node.shutdown();
    }
    out("lua_cpu_result", CPU_RESULT, "primes");
    outf("lua_cpu_wall", ms(walls[1]), "ms");
    outf("lua_cpu_speedup", walls[0].as_secs_f64() / walls[1].as_secs_f64(), "x");
}

const IDLE: &str = r#"return { main = function() process.inbox():receive() end }"#;
const SPIN: &str = r#"return { main = function() while true do end end }"#;
const ECHO: &str = r#"return { main = function()
    local inbox = process.inbox()
    local send = process.send
    while true do
        local m = inbox:receive()
        if m:topic() == "stop" then return end
        send(m:from(), "echo", m:payload():data())
    end
end }"#;
/// One chatty pair's pinger: `rounds` round trips to its echo, each timed.
const PINGER: &str = r#"return { main = function(driver, echo, rounds)
    local ch = process.listen("echo")
    local go = process.listen("go")
    local send, now = process.send, time.now
    go:receive()
    local rtt = {}
    for i = 1, rounds do
        local t0 = now()
        send(echo, "ping", i)
        ch:receive()
        rtt[i] = now():sub(t0):nanoseconds()
    end
    send(echo, "stop")
    send(driver, "rtt", rtt)
end }"#;
const MIXED_DRIVER: &str = r#"return { main = function(idle, pairs, rounds, busy)
    local me = process.pid()
    local idlers = {}
    for i = 1, idle do idlers[i] = process.spawn("bench:idle", "bench") end
    local spinners = {}
    for i = 1, busy do spinners[i] = process.spawn("bench:spin", "bench") end
    local pingers = {}
    for i = 1, pairs do
        local echo = process.spawn("bench:echo", "bench")
        pingers[i] = process.spawn("bench:pinger", "bench", me, echo, rounds)
    end
    for i = 1, pairs do process.send(pingers[i], "go") end
    local results = process.listen("rtt")
    local all = {}
    for _ = 1, pairs do
        for _, v in ipairs(results:receive()) do all[#all + 1] = v end
    end
    for i = 1, busy do process.terminate(spinners[i]) end
    for i = 1, idle do process.send(idlers[i], "stop") end
    return all
end }"#;

/// `lua-mixed`: a service-like host (2 workers) with 10,000 idle processes and 100 chatty
/// pairs, without and then with 2 CPU-bound processes beside them: the pairs' round-trip
/// latency, p50 and p99, and the host's time slice for scale.
pub fn mixed() {
    let idle_n: i64 = std::env::var("MIXED_IDLE").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    const PAIRS: i64 = 100;
    const ROUNDS: i64 = 200;
    let node = Node::new().expect("node");
    let lua = LuaRuntime::new();
    lua.set_host_options(HOST, ShardOptions::default());
    lua.install(&node.handle());
    let cfg = HostConfig::new(HOST).workers(2);
    let slice = cfg.time_slice;
    node.add_host(cfg).expect("host");
    entry(&lua, "bench:idle", IDLE);
    entry(&lua, "bench:spin", SPIN);
    entry(&lua, "bench:echo", ECHO);
    entry(&lua, "bench:pinger", PINGER);
    entry(&lua, "bench:mixeddriver", MIXED_DRIVER);
    // warm-up
    run(&node, "bench:mixeddriver", vec![Value::Int(100), Value::Int(10), Value::Int(10), Value::Int(0)]);
    out("lua_mixed_idle", idle_n, "processes");
    out("lua_mixed_pairs", PAIRS, "pairs");
    outf("lua_mixed_time_slice", ms(slice), "ms");
    for busy in [0i64, 2] {
        let r = run(&node, "bench:mixeddriver", vec![Value::Int(idle_n), Value::Int(PAIRS), Value::Int(ROUNDS), Value::Int(busy)]);
        let mut rtt: Vec<i64> = r.as_table().expect("a list").array.iter().filter_map(Value::as_int).collect();
        assert_eq!(rtt.len() as i64, PAIRS * ROUNDS);
        rtt.sort_unstable();
        let at = |q: f64| rtt[((rtt.len() as f64 * q) as usize).min(rtt.len() - 1)] as f64 / 1e3;
        outf(&format!("lua_mixed_busy{busy}_rtt_p50"), at(0.50), "us");
        outf(&format!("lua_mixed_busy{busy}_rtt_p90"), at(0.90), "us");
        outf(&format!("lua_mixed_busy{busy}_rtt_p99"), at(0.99), "us");
        outf(&format!("lua_mixed_busy{busy}_rtt_max"), at(1.0), "us");
    }
}

const STRINGS: &str = r#"return { main = function(n)
    local find, s = string.find, "the quick brown fox jumps over the lazy dog"
    local t0 = time.now()
    local hits = 0
    for _ = 1, n do
        if find(s, "lazy", 1, true) then hits = hits + 1 end
    end
    local wall = time.now():sub(t0):nanoseconds()
    return { wall, hits }
end }"#;

/// `lua-strings`: `string.find` on plain strings, the string library's fast path that the
/// error-value coercion (SPEC §12.1.1) sits in front of; ns per call.
pub fn strings() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:strings", STRINGS);
    const N: i64 = 5_000_000;
    run(&node, "bench:strings", vec![Value::Int(100_000)]);
    let r = run(&node, "bench:strings", vec![Value::Int(N)]);
    let wall = nth(&r, 0);
    out("lua_strings_calls", N, "calls");
    outf("lua_strings_find_ns", wall.as_nanos() as f64 / N as f64, "ns/call");
    outf("lua_strings_rate", N as f64 / wall.as_secs_f64(), "calls/s");
}

const FLOODER: &str = r#"return { main = function(to, n)
    for i = 1, n do process.send(to, "x", i) end
    process.send(to, "go", true)
end }"#;

const BACKLOG_DRIVER: &str = r#"return { main = function(n)
    local inbox, go, never = process.inbox(), process.listen("go"), channel.new()
    local t0 = time.now()
    process.spawn("bench:flooder", "bench", process.pid(), n)
    go:receive()
    local queued = time.now():sub(t0):nanoseconds()
    local t1 = time.now()
    for _ = 1, n do channel.select { inbox:case_receive(), never:case_receive() } end
    return { queued, time.now():sub(t1):nanoseconds() }
end }"#;

/// `lua-backlog`: a service that fell behind: N messages wait in its mailbox (they arrive
/// while it waits on another channel), then it takes them through `channel.select`; ns per
/// message to queue and to take, which should not grow with N.
pub fn backlog() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:flooder", FLOODER);
    entry(&lua, "bench:backlogdriver", BACKLOG_DRIVER);
    run(&node, "bench:backlogdriver", vec![Value::Int(1000)]);
    for n in [2_000i64, 8_000, 32_000] {
        let r = run(&node, "bench:backlogdriver", vec![Value::Int(n)]);
        outf(&format!("lua_backlog_{n}_queue_ns"), nth(&r, 0).as_nanos() as f64 / n as f64, "ns/message");
        outf(&format!("lua_backlog_{n}_take_ns"), nth(&r, 1).as_nanos() as f64 / n as f64, "ns/message");
    }
}

/// Where a parked Lua process's bytes go (Lua heap vs the rest), for tuning.
pub fn lua_heap() {
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:parked", PARKED);
    entry(&lua, "bench:memdriver", MEMORY_DRIVER);
    run(&node, "bench:memdriver", vec![Value::Int(100)]);
    let h0 = lua.shard_memory(HOST);
    let rss0 = rss_kib();
    run(&node, "bench:memdriver", vec![Value::Int(10_000)]);
    let h1 = lua.shard_memory(HOST);
    let rss1 = rss_kib();
    outf("lua_heap_per_process", (h1 as f64 - h0 as f64) / 10_000.0, "bytes");
    outf("lua_rss_per_process", (rss1 as f64 - rss0 as f64) * 1024.0 / 10_000.0, "bytes");
}

/// A typed Lua source of about `lines` lines using every kind of type syntax.
pub fn typed_source(lines: usize) -> String {
    const BLOCK: &str = r#"type Shape = {
    kind: "circle" | "square",
    size: number,
    tags?: {string},
    meta: {[string]: any[]},
}
export type Id = string | number

local function area<T: Shape>(s: T, scale: number?): (number, string?)
    local k: number = (s.size :: number) * (scale or 1)
    if s.kind == "circle" then
        return 3.14159 * k * k, nil
    end
    return k * k, "square" -- a: comment :: with ! type-like text
end

local function ids(...: Id): {Id}
    local out: {Id} = {}
    for i: integer, v: Id in ipairs({...}) do
        out[i] = v
    end
    return out!
end
"#;
    let per = BLOCK.lines().count();
    let mut s = String::with_capacity(lines * 40);
    for i in 0..lines.div_ceil(per) {
        s.push_str(&BLOCK.replace("Shape", &format!("Shape{i}")).replace("area", &format!("area{i}")).replace("ids", &format!("ids{i}")));
    }
    s
}

/// Erasing type syntax from a 2,000-line typed file (once per source version).
pub fn typed_erase() {
    let src = typed_source(2000);
    let lines = src.lines().count();
    let mut times = Vec::new();
    let mut out_len = 0;
    for _ in 0..51 {
        let t = Instant::now();
        out_len = wippy_lua::compile::erase(std::hint::black_box(&src)).len();
        times.push(t.elapsed());
    }
    times.sort();
    out("lines", lines, "lines");
    out("bytes", src.len(), "B");
    out("output_bytes", out_len, "B");
    outf("erase_median", ms(times[times.len() / 2]), "ms");
    outf("erase_min", ms(times[0]), "ms");
    outf("erase_mb_per_s", src.len() as f64 / times[times.len() / 2].as_secs_f64() / 1e6, "MB/s");
}

const UPGRADE_V1: &str = r#"return { main = function(parent)
    process.set_options({ upgradable = true })
    local events = process.events()
    process.send(parent, "r")
    while true do
        local ev = events:receive()
        if ev.kind == process.event.OUTDATED then process.upgrade(nil, parent) end
    end
end }"#;

const UPGRADE_V2: &str = r#"return { main = function(parent)
    process.send(parent, "u")
    process.inbox():receive()
end }"#;

/// `upgrade`: 10,000 parked processes that opted in to OUTDATED get a new version of their
/// entry and upgrade themselves; the time from publishing it to the last one running v2.
pub fn upgrade() {
    let n = 10_000i64;
    let (node, lua) = node(ShardOptions::default());
    entry(&lua, "bench:upgradee", UPGRADE_V1);
    // A native collector counts the "u"s the upgraded processes send.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut left = n;
    let collector = node
        .spawn(HOST, Spawn::process(handler_fn(move |_, ev| {
            if let Event::Message(m) = ev {
                if m.topic.as_str() == "u" {
                    left -= 1;
                    if left == 0 {
                        let _ = tx.send(());
                    }
                } else if m.topic.as_str() == "r" {
                    let _ = tx.send(());
                }
            }
            Flow::Continue
        })))
        .expect("collector");
    for _ in 0..n {
        node.spawn(HOST, Spawn::entry("bench:upgradee").arg(Value::str(&collector.to_string()))).expect("spawn");
    }
    for _ in 0..n {
        rx.recv().expect("ready");
    }
    let compiles = lua.compile_count();
    let t = Instant::now();
    let mut v2 = LuaEntry::process("bench:upgradee", UPGRADE_V2).modules(&["time"]);
    v2.version = 2;
    lua.add_entry(v2);
    rx.recv().expect("all upgraded");
    let d = t.elapsed();
    out("upgrade_processes", n, "processes");
    outf("upgrade_wall", ms(d), "ms");
    outf("upgrade_rate", n as f64 / d.as_secs_f64(), "processes/s");
    out("upgrade_compilations", lua.compile_count() - compiles, "compilations");
}
