//! wippy-bench: the anchor benchmarks (see shared/anchors) for wippy's native processes.
//! One benchmark per invocation, in a fresh OS process; every line is `name: value unit`
//! with the anchors' metric names, and the last line is `peak_rss`.
//!
//! Usage: wippy-bench spawn|memory|pingpong|ring|fanin|skynet
//!        wippy-bench lua-memory|lua-memory-isolated|lua-spawn|lua-pingpong|lua-ring|lua-cpu|lua-mixed
//!        wippy-bench cluster (two nodes through a nats-server it starts: cluster.rs)

#[global_allocator]
static GLOBAL: wippy_runtime::alloc::Mi = wippy_runtime::alloc::Mi;

mod cluster;
mod lua;
mod native;
mod report;

use report::*;

const BENCHES: &[&str] = &[
    "spawn",
    "memory",
    "pingpong",
    "ring",
    "fanin",
    "skynet",
    "lua-memory",
    "lua-memory-isolated",
    "lua-spawn",
    "lua-pingpong",
    "lua-ring",
    "lua-cpu",
    "lua-mixed",
    "lua-strings",
    "lua-heap",
    "lua-backlog",
    "typed-erase",
    "security-check",
    "upgrade",
    "cluster",
    "nats-pingpong",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("cluster-node") && args.len() == 4 {
        cluster::node_main(&args[2], &args[3]);
        return;
    }
    let bench = match args.get(1) {
        Some(b) if BENCHES.contains(&b.as_str()) && args.len() == 2 => b.clone(),
        _ => {
            eprintln!("usage: wippy-bench {}", BENCHES.join("|"));
            std::process::exit(2);
        }
    };
    header();
    match bench.as_str() {
        "spawn" => native::spawn(),
        "memory" => native::memory(),
        "pingpong" => native::pingpong(),
        "ring" => native::ring(),
        "fanin" => native::fanin(),
        "skynet" => native::skynet(),
        "lua-memory" => lua::memory(false),
        "lua-memory-isolated" => lua::memory(true),
        "lua-spawn" => lua::spawn(),
        "lua-pingpong" => lua::pingpong(),
        "lua-ring" => lua::ring(),
        "lua-cpu" => lua::cpu(),
        "lua-mixed" => lua::mixed(),
        "lua-strings" => lua::strings(),
        "lua-heap" => lua::lua_heap(),
        "lua-backlog" => lua::backlog(),
        "typed-erase" => lua::typed_erase(),
        "security-check" => native::security_check(),
        "upgrade" => lua::upgrade(),
        "cluster" => cluster::run(),
        "nats-pingpong" => cluster::nats_pingpong(),
        _ => unreachable!(),
    }
    footer();
    // Like the anchors: no teardown of what is still alive.
    std::process::exit(0);
}
