//! A harness that boots a node with a Lua host and runs Lua snippets as processes.
#![allow(dead_code)]

use std::time::Duration;

use wippy_lua::{LuaEntry, LuaRuntime, ShardOptions};
use wippy_runtime::{ExitResult, HostConfig, Node, Spawn, Value};

pub const HOST: &str = "app:processes";
pub const ALL_MODULES: &[&str] = &["time", "json", "logger", "env", "ctx", "funcs", "registry", "io"];

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

pub fn s(v: &str) -> Value {
    Value::str(v)
}
