//! SPEC §9 limits: `max_process_memory` in both isolation modes.
mod common;
use common::*;
use wippy_lua::ShardOptions;
use wippy_runtime::{ErrorKind, Value};

const HOG: &str = r#"return { main = function()
    local t = {}
    for i = 1, 1e8 do t[i] = ("x"):rep(64) .. i end
    return #t
end }"#;

const PCALL_HOG: &str = r#"return { main = function()
    local ok = pcall(function()
        local t = {}
        for i = 1, 1e8 do t[i] = ("y"):rep(64) .. i end
    end)
    return "swallowed"
end }"#;

fn check(options: ShardOptions) {
    let h = Harness::with(2, options, |c| c);
    h.entry("test:hog", HOG);
    h.entry("test:pcallhog", PCALL_HOG);
    h.entry("test:neighbour", "return { main = function() local m = process.inbox():receive() return m:payload():data() .. '!' end }");
    let v = h.ok(r#"
        local n = process.spawn_monitored("test:neighbour", "app:processes")
        local ev = process.events()
        local hog = process.spawn_monitored("test:hog", "app:processes")
        local e = ev:receive()
        assert(e.from == hog, "the hog ends first")
        local err = e.result.error
        assert(err and err:kind() == errors.LIMIT_EXCEEDED, "hog: " .. tostring(err and err:kind()) .. " " .. tostring(err))
        local p2 = process.spawn_monitored("test:pcallhog", "app:processes")
        local e2 = ev:receive()
        local err2 = e2.result.error
        assert(err2 and err2:kind() == errors.LIMIT_EXCEEDED, "pcall must not swallow the limit: " .. tostring(e2.result.value))
        process.send(n, "hi", "still here")
        local e3 = ev:receive()
        return e3.result.value
    "#);
    assert_eq!(v, s("still here!"));
    // the host goes on spawning
    let e = h.run_chunk(HOG, vec![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
    assert_eq!(h.ok("return 1"), Value::Int(1));
}

#[test]
fn limit_with_isolated_processes() {
    check(ShardOptions { isolated: true, max_process_memory: 4 << 20, ..Default::default() });
}

#[test]
fn limit_with_shared_shards() {
    check(ShardOptions { max_process_memory: 4 << 20, ..Default::default() });
}

#[test]
fn isolated_processes_each_get_a_shard() {
    let h = Harness::with(1, ShardOptions { isolated: true, ..Default::default() }, |c| c);
    h.entry("test:wait", "return { main = function() process.inbox():receive() end }");
    let v = h.ok(r#"
        process.spawn("test:wait", "app:processes")
        process.spawn("test:wait", "app:processes")
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // the two parked processes live on; each has a VM of its own
    assert!(h.lua.shard_count(HOST) >= 2, "one shard per process, got {}", h.lua.shard_count(HOST));
}

#[test]
fn shards_spread_over_the_workers_once_there_is_enough_to_share() {
    let h = Harness::new(2);
    h.entry("test:wait", "return { main = function() process.inbox():receive() end }");
    let v = h.ok(r#"
        local pids = {}
        for i = 1, 200 do pids[i] = process.spawn("test:wait", "app:processes") end
        for i = 1, 200 do process.terminate(pids[i]) end
        return #pids
    "#);
    assert_eq!(v, Value::Int(200));
    assert_eq!(h.lua.shard_count(HOST), 2, "one shard per worker");
}

/// `json.decode` pushes a document onto the stack from Rust: a document too big for the
/// process's limit ends the process with the limit's error (not the node, and not swallowed
/// by pcall), and the next decode on the host works.
fn json_check(options: ShardOptions) {
    let h = Harness::with(2, options, |c| c);
    let hog = r#"return { main = function(protected)
        local json = require("json")
        local text = "[" .. string.rep("1,", 400000) .. "1]"
        if protected then
            pcall(json.decode, text)
            return "swallowed"
        end
        return #json.decode(text)
    end }"#;
    for protected in [false, true] {
        let e = h.run_chunk(hog, vec![Value::Bool(protected)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LimitExceeded, "{e:?}");
    }
    let v = h.ok(r#"local json = require("json") return json.encode(json.decode('{"b":[1,2],"a":"x"}'))"#);
    assert_eq!(v, s(r#"{"a":"x","b":[1,2]}"#));
}

#[test]
fn json_within_the_limit_with_isolated_processes() {
    json_check(ShardOptions { isolated: true, max_process_memory: 4 << 20, ..Default::default() });
}

#[test]
fn json_within_the_limit_with_shared_shards() {
    json_check(ShardOptions { max_process_memory: 4 << 20, ..Default::default() });
}
