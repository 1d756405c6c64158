//! Lua processes on a wippy node, from Rust: a named key-value server, clients talking
//! to it by name with request/response over topics and `time.after` timeouts, and a
//! supervisor (written in Lua) restarting a crashing worker through `spawn_monitored`.
//!
//! cargo run --release -p wippy-lua --example lua_processes

use std::time::Duration;

use wippy_lua::{LuaEntry, LuaRuntime};
use wippy_runtime::{HostConfig, Node, Spawn, Value};

const KV: &str = r#"
local function main()
    process.registry.register("kv")
    local store = {}
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        if msg:topic() == "stop" then return "kv stopped" end
        local req = msg:payload():data()
        if msg:topic() == "put" then
            store[req.key] = req.value
            process.send(msg:from(), "reply", { ok = true })
        elseif msg:topic() == "get" then
            process.send(msg:from(), "reply", { ok = true, value = store[req.key] })
        end
    end
end
return { main = main }
"#;

const CLIENT: &str = r#"
local function call(topic, req)
    local replies = process.listen("reply")
    local ok, err = process.send("kv", topic, req)
    if not ok then return nil, err end
    local r = channel.select { replies:case_receive(), time.after("1s"):case_receive() }
    if r.channel ~= replies then return nil, errors.new { message = "kv timed out", kind = errors.TIMEOUT } end
    return r.value
end

local function main(name)
    assert(call("put", { key = name, value = name:upper() }))
    local got = assert(call("get", { key = name }))
    return process.pid() .. " " .. name .. " -> " .. tostring(got.value)
end
return { main = main }
"#;

const WORKER: &str = r#"
return { main = function(n)
    time.sleep("5ms")
    if n < 3 then error("worker " .. n .. " hit a bad job", 0) end
    return "worker " .. n .. " finished"
end }
"#;

const SUPERVISOR: &str = r#"
return { main = function()
    local events = process.events()
    local attempt, delay = 1, 10
    while true do
        local pid = process.spawn_monitored("app:worker", "app:processes", attempt)
        local ev = events:receive()
        if ev.result.error == nil then
            return ev.result.value .. " after " .. attempt .. " attempts"
        end
        logger:warn("worker failed, restarting", { pid = pid, error = tostring(ev.result.error), backoff_ms = delay })
        time.sleep(delay * time.MILLISECOND)
        attempt, delay = attempt + 1, delay * 2
    end
end }
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::new()?;
    let lua = LuaRuntime::new();
    lua.install(&node.handle());
    node.add_host(HostConfig::new("app:processes"))?;
    let modules = &["time", "logger"];
    lua.add_entry(LuaEntry::process("app:kv", KV).modules(modules).chunk_name("examples/kv.lua"));
    lua.add_entry(LuaEntry::process("app:client", CLIENT).modules(modules).chunk_name("examples/client.lua"));
    lua.add_entry(LuaEntry::process("app:worker", WORKER).modules(modules).chunk_name("examples/worker.lua"));
    lua.add_entry(LuaEntry::process("app:supervisor", SUPERVISOR).modules(modules).chunk_name("examples/supervisor.lua"));

    let (kv, kv_exit) = node.spawn_watched("app:processes", Spawn::entry("app:kv"))?;
    while node.lookup("kv").is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("kv server {kv}");
    for name in ["alice", "bob", "carol"] {
        let r = node.exec("app:processes", Spawn::entry("app:client").arg(Value::str(name)));
        match r {
            Ok(v) => println!("client {}", v.as_str().unwrap_or("?")),
            Err(e) => println!("client failed: {e}"),
        }
    }
    node.send("kv", "stop", Default::default())?;
    println!("{:?}", kv_exit.wait());
    match node.exec("app:processes", Spawn::entry("app:supervisor")) {
        Ok(v) => println!("supervisor: {}", v.as_str().unwrap_or("?")),
        Err(e) => println!("supervisor failed: {e}"),
    }
    let report = node.shutdown();
    println!("shutdown: {} processes cancelled, {} terminated", report.canceled, report.terminated);
    Ok(())
}
