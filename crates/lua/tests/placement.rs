//! Placement (ARCHITECTURE.md, "Placing Lua processes"): runnable Lua processes on a
//! W-worker host are spread over min(N, W) shards from the second process on, whoever
//! spawns them. Checked from the runtime's own introspection (`process_info().group`, the
//! shard a process runs in), never from wall time.
mod common;
use common::*;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;
use wippy_lua::{LuaEntry, ShardOptions};
use wippy_runtime::{Pid, Spawn, Value};

/// A process that reports its PID to "collector" and waits until told to stop.
const WAITER: &str = r#"return { main = function()
    process.send("collector", "here", process.pid())
    process.inbox():receive()
end }"#;

/// The distinct shards the processes named in `pids` (PID strings) run in.
fn shards_of(h: &Harness, pids: &[Value]) -> usize {
    let mut groups = HashSet::new();
    for p in pids {
        let pid = Pid::from_str(p.as_str().expect("a PID string")).expect("a PID");
        let info = h.node.process_info(pid).expect("the process is alive");
        groups.insert(info.group.expect("a Lua process runs in a shard"));
    }
    groups.len()
}

/// Spawn `n` waiters from one Lua process in a burst (the worker-pool pattern); their PIDs.
fn burst(h: &Harness, n: usize) -> Vec<Value> {
    let v = h.ok(&format!(
        r#"
        process.registry.register("collector")
        local here = process.listen("here")
        for _ = 1, {n} do process.spawn("test:waiter", "app:processes") end
        local pids = {{}}
        for i = 1, {n} do pids[i] = here:receive() end
        process.registry.unregister("collector")
        return pids
    "#
    ));
    v.as_table().expect("a list of PIDs").array.clone()
}

fn stop(h: &Harness, pids: &[Value]) {
    for p in pids {
        let pid = Pid::from_str(p.as_str().unwrap()).unwrap();
        let _ = h.node.send(pid, "stop", Default::default());
    }
}

#[test]
fn a_burst_of_spawns_lands_on_as_many_shards_as_there_are_workers() {
    for workers in [2, 4] {
        let h = Harness::new(workers);
        h.entry("test:waiter", WAITER);
        for n in [2, 3, workers, 8, 32] {
            let pids = burst(&h, n);
            assert_eq!(pids.len(), n);
            let shards = shards_of(&h, &pids);
            assert!(shards >= n.min(workers), "{n} processes on a {workers}-worker host are on {shards} shards");
            stop(&h, &pids);
        }
    }
}

#[test]
fn a_long_burst_still_fills_every_shard_evenly() {
    // Runs keep neighbours together, but never at the cost of a worker: 2,000 processes
    // from one spawner on two workers, and neither shard holds more than 60% of them.
    let h = Harness::new(2);
    h.entry("test:waiter", WAITER);
    let pids = burst(&h, 2000);
    let mut per: std::collections::HashMap<usize, usize> = Default::default();
    for p in &pids {
        let pid = Pid::from_str(p.as_str().unwrap()).unwrap();
        *per.entry(h.node.process_info(pid).unwrap().group.unwrap()).or_default() += 1;
    }
    assert_eq!(per.len(), 2, "{per:?}");
    assert!(per.values().all(|&c| c <= 1200), "{per:?}");
    stop(&h, &pids);
}

#[test]
fn processes_spawned_by_different_parents_and_from_rust_are_spread_too() {
    let h = Harness::new(2);
    h.entry("test:waiter", WAITER);
    // two parents, one child each (each spawns when told, so the two children are placed
    // one after the other: the guarantee is about consecutive placements on a host)
    h.entry(
        "test:parent",
        r#"return { main = function()
            process.listen("go"):receive()
            process.spawn("test:waiter", "app:processes")
        end }"#,
    );
    let v = h.ok(
        r#"
        process.registry.register("collector")
        local here = process.listen("here")
        local p1 = process.spawn("test:parent", "app:processes")
        local p2 = process.spawn("test:parent", "app:processes")
        process.send(p1, "go")
        local a = here:receive()
        process.send(p2, "go")
        local b = here:receive()
        return { a, b }
    "#,
    );
    let pids = v.as_table().unwrap().array.clone();
    assert_eq!(shards_of(&h, &pids), 2);
    stop(&h, &pids);
    // spawned by the node itself (as services are at boot)
    let pids: Vec<Value> = (0..2)
        .map(|_| Value::str(&h.node.spawn(HOST, Spawn::entry("test:waiter")).unwrap().to_string()))
        .collect();
    assert_eq!(shards_of(&h, &pids), 2);
    stop(&h, &pids);
}

#[test]
fn function_processes_of_funcs_async_are_spread() {
    let h = Harness::new(2);
    h.lua.add_entry(
        LuaEntry::function(
            "test:fn",
            r#"return { call = function()
                process.send("collector", "here", process.pid())
                process.listen("go"):receive()
                return 1
            end }"#,
        )
        .modules(ALL_MODULES),
    );
    let v = h.ok(
        r#"
        process.registry.register("collector")
        local here = process.listen("here")
        local futures = { funcs.async("test:fn"), funcs.async("test:fn") }
        local a = here:receive()
        local b = here:receive()
        return { a, b }
    "#,
    );
    let pids = v.as_table().unwrap().array.clone();
    assert_eq!(shards_of(&h, &pids), 2);
    for p in &pids {
        let pid = Pid::from_str(p.as_str().unwrap()).unwrap();
        let _ = h.node.send(pid, "go", Default::default());
    }
}

#[test]
fn two_busy_processes_spread_over_two_workers_both_progress_and_neither_stalls_a_pair() {
    // The preemption guarantees with the new placement: two spinning processes (on
    // different shards now) and a ping-pong pair beside them on a 2-worker host.
    let h = Harness::with(2, ShardOptions::default(), |c| c.time_slice(Duration::from_millis(1)));
    h.entry("test:busy", "return { main = function() while true do end end }");
    h.entry("test:echo", ECHO);
    let v = h.ok(
        r#"
        local a = process.spawn_monitored("test:busy", "app:processes")
        local b = process.spawn_monitored("test:busy", "app:processes")
        local echo = process.spawn("test:echo", "app:processes")
        local ch = process.listen("echo")
        for i = 1, 200 do
            process.send(echo, "ping", i)
            assert(ch:receive() == i)
        end
        process.send(echo, "stop")
        process.terminate(a)
        process.terminate(b)
        local events = process.events()
        local n = 0
        for _ = 1, 2 do
            local e = events:receive()
            if e.result.error:message() == "process terminated" then n = n + 1 end
        end
        return n
    "#,
    );
    assert_eq!(v, Value::Int(2));
}
