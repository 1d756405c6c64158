//! Parameters and output lines, identical to the anchors' (shared/anchors/common).

use std::fmt::Display;
use std::time::Duration;

pub const SPAWN_N: u64 = 1_000_000;
pub const MEM_N: u64 = 100_000;
pub const PINGPONG_M: u64 = 1_000_000;
pub const RING_N: u64 = 10_000;
pub const RING_M: u64 = 100;
pub const FANIN_SENDERS: u64 = 1_000;
pub const FANIN_MSGS: u64 = 1_000;
pub const SKYNET_LEAVES: u64 = 1_000_000;
pub const SKYNET_DIV: u64 = 10;
pub const CPU_WORKERS: u64 = 2;
pub const CPU_JOBS: u64 = 120;
/// The primes below 1000*k summed over k = 1..=120 (bench.erl's `cpu_result`).
pub const CPU_RESULT: i64 = 719_415;
pub const SKYNET_EXPECTED: u64 = SKYNET_LEAVES * (SKYNET_LEAVES - 1) / 2;

pub fn out(name: &str, value: impl Display, unit: &str) {
    println!("{name}: {value} {unit}");
}

pub fn outf(name: &str, value: f64, unit: &str) {
    println!("{name}: {value:.3} {unit}");
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

pub fn header() {
    out("system", "wippy", "");
    out("crate_version", env!("CARGO_PKG_VERSION"), "");
    out("allocator", "mimalloc", "");
    out("available_parallelism", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "threads");
}

pub fn footer() {
    out("peak_rss", status_kib("VmHWM"), "KiB");
}

pub fn report_memory(prefix: &str, n: u64, rss0: u64, rss1: u64) {
    out(&format!("{prefix}mem_n"), n, "actors");
    out(&format!("{prefix}mem_rss_before"), rss0, "KiB");
    out(&format!("{prefix}mem_rss_after"), rss1, "KiB");
    outf(&format!("{prefix}mem_rss_per_process"), (rss1 as f64 - rss0 as f64) * 1024.0 / n as f64, "bytes");
}

pub fn report_spawn(prefix: &str, n: u64, issue: Duration, total: Duration) {
    out(&format!("{prefix}spawn_n"), n, "actors");
    outf(&format!("{prefix}spawn_issue_wall"), ms(issue), "ms");
    outf(&format!("{prefix}spawn_wall"), ms(total), "ms");
    outf(&format!("{prefix}spawn_rate"), n as f64 / total.as_secs_f64(), "spawns/s");
}

pub fn report_pingpong(prefix: &str, m: u64, d: Duration) {
    out(&format!("{prefix}pingpong_roundtrips"), m, "roundtrips");
    outf(&format!("{prefix}pingpong_wall"), ms(d), "ms");
    outf(&format!("{prefix}pingpong_rate"), m as f64 / d.as_secs_f64(), "roundtrips/s");
    outf(&format!("{prefix}pingpong_latency"), d.as_nanos() as f64 / m as f64, "ns");
}

pub fn report_ring(prefix: &str, n: u64, hops: u64, setup: Duration, d: Duration) {
    out(&format!("{prefix}ring_nodes"), n, "actors");
    out(&format!("{prefix}ring_hops"), hops, "hops");
    outf(&format!("{prefix}ring_setup"), ms(setup), "ms");
    outf(&format!("{prefix}ring_wall"), ms(d), "ms");
    outf(&format!("{prefix}ring_rate"), hops as f64 / d.as_secs_f64(), "hops/s");
}

pub fn report_fanin(senders: u64, total: u64, d: Duration) {
    out("fanin_senders", senders, "actors");
    out("fanin_messages", total, "messages");
    outf("fanin_wall", ms(d), "ms");
    outf("fanin_rate", total as f64 / d.as_secs_f64(), "msgs/s");
}

pub fn report_skynet(leaves: u64, sum: u64, d: Duration) {
    out("skynet_leaves", leaves, "actors");
    out("skynet_result", sum, "sum");
    outf("skynet_wall", ms(d), "ms");
    assert_eq!(sum, SKYNET_EXPECTED, "skynet sum is wrong");
}
