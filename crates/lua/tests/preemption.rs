//! SPEC §9 fairness: Lua code that never waits is preempted after its host's time slice.
mod common;
use common::*;
use std::time::Duration;
use wippy_lua::ShardOptions;
use wippy_runtime::{Spawn, Value};

#[test]
fn echo_in_order_under_heavy_preemption() {
    let h = Harness::with(2, ShardOptions::default(), |c| c.time_slice(Duration::from_micros(100)));
    for _ in 0..5 {
        assert_eq!(h.echo_in_order(2000), s("ok"));
    }
}

#[test]
fn preempted_spawned_tasks_resume_where_they_were_and_the_others_still_run() {
    // A spawned task the hook suspends goes back on the front of its process's ready
    // queue; one that yields goes on the back. Both finish with their own results.
    let h = Harness::with(1, ShardOptions::default(), |c| c.time_slice(Duration::from_micros(100)));
    let v = h.ok(r#"
        local ch = channel.new(4)
        coroutine.spawn(function()
            local n = 0
            for i = 1, 3000000 do n = n + i end
            ch:send({ "busy", n })
        end)
        coroutine.spawn(function()
            local n = 0
            for _ = 1, 1000 do n = n + 1; coroutine.yield() end
            ch:send({ "yielding", n })
        end)
        local got = {}
        for _ = 1, 2 do local v = ch:receive(); got[v[1]] = v[2] end
        return got.busy == 4500001500000 and got.yielding == 1000
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn two_busy_processes_on_one_worker_both_progress() {
    let h = Harness::new(1);
    h.entry("test:spin", r#"return { main = function(name)
        process.registry.register(name)
        local n = 0
        while true do n = n + 1 if n % 1000000 == 0 then process.send("watcher", "tick", name) end end
    end }"#);
    let v = h.ok(r#"
        process.registry.register("watcher")
        local a = process.spawn("test:spin", "app:processes", "a")
        local b = process.spawn("test:spin", "app:processes", "b")
        local ticks = process.listen("tick")
        local seen = {}
        while not (seen.a and seen.b) do seen[ticks:receive()] = true end
        process.terminate(a)
        process.terminate(b)
        return "both"
    "#);
    assert_eq!(v, s("both"));
}

#[test]
fn a_busy_process_does_not_stall_a_ping_pong_pair_on_the_same_worker() {
    let h = Harness::new(1);
    h.entry("test:busy", "return { main = function() while true do end end }");
    h.entry("test:echo", ECHO);
    let v = h.ok(r#"
        local busy = process.spawn_monitored("test:busy", "app:processes")
        local echo = process.spawn("test:echo", "app:processes")
        local ch = process.listen("echo")
        for i = 1, 50 do
            process.send(echo, "ping", i)
            assert(ch:receive() == i)
        end
        process.send(echo, "stop")
        -- terminate reaches a process in a compute loop
        process.terminate(busy)
        local e = process.events():receive()
        return e.result.error:message()
    "#);
    assert_eq!(v, s("process terminated"));
}

#[test]
fn terminate_is_not_caught_by_pcall_and_loops_inside_c_functions_are_postponed() {
    let h = Harness::new(1);
    h.entry(
        "test:sorter",
        r#"return { main = function()
            while true do
                pcall(function()
                    local t = {}
                    for i = 1, 2000 do t[i] = (i * 7919) % 2003 end
                    -- the comparator runs inside a C function: no yield possible there
                    table.sort(t, function(x, y) for _ = 1, 20 do end return x < y end)
                end)
            end
        end }"#,
    );
    let v = h.ok(r#"
        local pid = process.spawn_monitored("test:sorter", "app:processes")
        time.sleep("20ms")
        process.terminate(pid)
        local e = process.events():receive()
        return e.result.error:message()
    "#);
    assert_eq!(v, s("process terminated"));
}

#[test]
fn node_side_terminate_ends_a_spinning_process() {
    let h = Harness::new(1);
    h.entry("test:busy", "return { main = function() local x = 0 while true do x = x + 1 end end }");
    let (pid, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:busy")).unwrap();
    // it keeps computing; other work still gets the worker
    h.entry("test:quick", "return { main = function() return 7 end }");
    assert_eq!(h.node.exec(HOST, Spawn::entry("test:quick")).unwrap(), Value::Int(7));
    h.node.terminate(pid).unwrap();
    let r = watch.wait_timeout(Duration::from_secs(10)).expect("terminated in time");
    assert_eq!(r.unwrap_err().message, "process terminated");
}

#[test]
fn a_busy_process_is_slowed_but_never_starved_by_a_shard_full_of_chatty_ones() {
    // One worker, one shard: a spinner (its steps are cut, so it runs after the ready
    // processes of each turn) and 40 ping-pong pairs that always have a step ready. The
    // spinner still reaches its ticks.
    let h = Harness::with(1, ShardOptions::default(), |c| c.time_slice(Duration::from_micros(500)));
    h.entry(
        "test:spin",
        r#"return { main = function()
            local n = 0
            while true do n = n + 1 if n % 200000 == 0 then process.send("watcher", "tick", n) end end
        end }"#,
    );
    h.entry(
        "test:bouncer",
        r#"return { main = function(peer)
            local inbox = process.inbox()
            if peer then process.send(peer, "ball", process.pid()) end
            while true do
                local m = inbox:receive()
                if m:topic() == "stop" then return end
                process.send(m:payload():data(), "ball", process.pid())
            end
        end }"#,
    );
    let v = h.ok(
        r#"
        process.registry.register("watcher")
        local pids = {}
        for i = 1, 40 do
            local a = process.spawn("test:bouncer", "app:processes")
            pids[#pids + 1] = a
            pids[#pids + 1] = process.spawn("test:bouncer", "app:processes", a)
        end
        local spin = process.spawn("test:spin", "app:processes")
        local ticks = process.listen("tick")
        for _ = 1, 3 do ticks:receive() end
        process.terminate(spin)
        for _, p in ipairs(pids) do process.terminate(p) end
        return "ticked"
    "#,
    );
    assert_eq!(v, s("ticked"));
}

#[test]
fn a_task_preempted_on_its_way_in_still_runs_as_itself() {
    // The hook may suspend main's coroutine while its scheduler switches to a task; the
    // task must still run as that task (it once ran as main: its blocked send queued main
    // as the sender, and main's select returned `true` instead of a table)
    let h = Harness::with(1, ShardOptions::default(), |c| c.time_slice(Duration::from_micros(20)));
    let v = h.ok(r#"
        local ch, other = channel.new(), channel.new()
        local N = 60000
        coroutine.spawn(function()
            for i = 1, N do ch:send(i) end
            ch:close()
        end)
        local expect = 1
        while true do
            local r = channel.select { ch:case_receive(), other:case_receive() }
            if type(r) ~= "table" then return "round " .. expect .. ": select gave " .. tostring(r) end
            if not r.ok then break end
            if r.value ~= expect then return "round " .. expect .. ": got " .. tostring(r.value) end
            expect = expect + 1
        end
        return expect - 1
    "#);
    assert_eq!(v, Value::Int(60000));
}
