//! A harness that boots a node with a Lua host and runs Lua snippets as processes.
#![allow(dead_code)]

use std::time::Duration;

use wippy_lua::{LuaEntry, LuaRuntime, ShardOptions};
use wippy_runtime::{ExitResult, HostConfig, Node, Spawn, Value};

pub const HOST: &str = "app:processes";
pub const ALL_MODULES: &[&str] = &["time", "json", "logger", "env", "ctx", "funcs", "registry", "io", "security", "uuid", "base64", "hash", "yaml", "fs", "store", "text", "sql", "queue", "crypto", "compress", "events"];

pub struct Harness {
    pub node: Node,
    pub lua: LuaRuntime,
    n: std::sync::atomic::AtomicUsize,
}

impl Harness {
    pub fn new(workers: usize) -> Harness {
        Harness::with(workers, ShardOptions::default(), |c| c)
    }

    pub fn with(workers: usize, options: ShardOptions, cfg: impl FnOnce(HostConfig) -> HostConfig) -> Harness {
        let node = Node::new().expect("node");
        let lua = LuaRuntime::new();
        lua.set_host_options(HOST, options);
        lua.install(&node.handle());
        node.add_host(cfg(HostConfig::new(HOST).workers(workers).stop_timeout(Duration::from_secs(2)))).expect("host");
        Harness { node, lua, n: Default::default() }
    }

    /// Register a process entry with all modules.
    pub fn entry(&self, id: &str, src: &str) {
        self.lua.add_entry(LuaEntry::process(id, src).modules(ALL_MODULES));
    }

    /// Run `src` (a chunk returning a table with `main`, or a bare body that becomes one)
    /// as a process and wait for its result.
    pub fn run(&self, src: &str) -> ExitResult {
        self.run_args(src, vec![])
    }

    pub fn run_args(&self, src: &str, args: Vec<Value>) -> ExitResult {
        let id = format!("test:snippet{}", self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let body = format!("local function main(...)\n{src}\nend\nreturn {{ main = main }}");
        self.entry(&id, &body);
        let (_pid, watch) = self.node.spawn_watched(HOST, Spawn::entry(&id).args(args)).expect("spawn");
        watch.wait_timeout(Duration::from_secs(20)).expect("the Lua process did not finish within 20 s")
    }

    /// Run a whole chunk (which returns its table of functions) as a process.
    pub fn run_chunk(&self, chunk: &str, args: Vec<Value>) -> ExitResult {
        let id = format!("test:chunk{}", self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.entry(&id, chunk);
        let (_pid, watch) = self.node.spawn_watched(HOST, Spawn::entry(&id).args(args)).expect("spawn");
        watch.wait_timeout(Duration::from_secs(20)).expect("the Lua process did not finish within 20 s")
    }

    /// Send `n` pings to an ECHO process and check the echoes come back in order; "ok".
    pub fn echo_in_order(&self, n: usize) -> Value {
        self.entry("test:echo", ECHO);
        self.ok(&format!(
            r#"
            local pid = process.spawn("test:echo", "app:processes")
            local ch = process.listen("echo")
            for i = 1, {n} do process.send(pid, "ping", i) end
            for i = 1, {n} do
                local v = ch:receive()
                if v ~= i then return "out of order at " .. i .. ": " .. tostring(v) end
            end
            process.send(pid, "stop")
            return "ok"
        "#
        ))
    }

    /// Run and expect a normal exit; return the value.
    pub fn ok(&self, src: &str) -> Value {
        match self.run(src) {
            Ok(v) => v,
            Err(e) => panic!("process failed: {} ({})", e.message, e.kind),
        }
    }

    pub fn err(&self, src: &str) -> wippy_runtime::Error {
        match self.run(src) {
            Ok(v) => panic!("process succeeded with {v:?}, expected an error"),
            Err(e) => e,
        }
    }
}

/// A process that answers every "ping" with an "echo" of its payload, until "stop".
pub const ECHO: &str = r#"return { main = function()
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        if msg:topic() == "stop" then return "stopped" end
        process.send(msg:from(), "echo", msg:payload():data())
    end
end }"#;

pub fn s(v: &str) -> Value {
    Value::str(v)
}
