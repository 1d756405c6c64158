//! Alone in its own test binary: it counts the OS threads of the test process.
//!
//! Supervision is built on processes (SPEC §8.1): 10,000 services that start, crash once
//! and are restarted by the runtime's timers cost the node no thread per service.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use wippy_runtime::*;

const SERVICES: usize = 10_000;

static CRASHED: [AtomicBool; SERVICES] = [const { AtomicBool::new(false) }; SERVICES];

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// Fails on its first run (per service), then runs until CANCEL.
struct CrashOnce;

impl Handler for CrashOnce {
    fn started(&mut self, _: &mut Context<'_>, args: Vec<Value>) -> Flow {
        let k = args.first().and_then(Value::as_int).unwrap_or(0) as usize;
        if !CRASHED[k].swap(true, Ordering::SeqCst) {
            return Flow::fail(Error::internal("first run crashes"));
        }
        Flow::Continue
    }
    fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
        match ev {
            Event::Cancel { .. } => Flow::stop(()),
            _ => Flow::Continue,
        }
    }
}

#[test]
fn ten_thousand_services_crash_once_and_restart_without_a_thread_each() {
    let node = node(2);
    node.register_entry("t:once", Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> { Ok(Box::new(HandlerProcess(CrashOnce))) }));
    let restart = RestartPolicy { initial_delay: Duration::from_millis(10), jitter: 0.0, ..RestartPolicy::default() };
    let specs: Vec<ServiceSpec> = (0..SERVICES)
        .map(|k| ServiceSpec {
            id: format!("s:{k}"),
            kind: ServiceKind::Process { host: HOST.into(), entry: "t:once".into(), args: vec![Value::Int(k as i64)], context: None, identity: None },
            requires: vec![],
            auto_start: true,
            stop_timeout: Duration::from_secs(5),
            restart: restart.clone(),
        })
        .collect();
    let (threads_before, rss_before) = (threads(), rss_kib());
    let sup = Supervisor::new(node.handle(), specs, Arc::new(SystemClock::new(&node.handle()))).unwrap();
    sup.start_auto();
    // every service: Starting, Running, Failed, Starting, Running (its second run)
    let all_restarted = sup.wait_for(Duration::from_secs(60), |h| {
        h.iter().filter(|t| t.state == ServiceState::Running && t.attempt == 2).count() == SERVICES
    });
    let (threads_after, rss_after) = (threads(), rss_kib());
    let status = sup.status();
    assert!(all_restarted, "{} of {SERVICES} restarted", status.iter().filter(|s| s.restarts == 1).count());
    assert!(status.iter().all(|s| s.state == ServiceState::Running && s.restarts == 1 && s.pid.is_some()));
    assert_eq!(node.process_count(), SERVICES, "one process per service (the host's agent is the runtime's own)");
    eprintln!(
        "{SERVICES} services: threads {threads_before} -> {threads_after}, RSS {rss_before} KiB -> {rss_after} KiB ({} B per service, history included)",
        (rss_after.saturating_sub(rss_before)) * 1024 / SERVICES
    );
    // The dispatch runtime's timer and I/O threads exist before; nothing per service.
    assert!(threads_after <= threads_before + 2, "threads grew from {threads_before} to {threads_after} with {SERVICES} services");

    let summary = sup.stop_all();
    assert_eq!(summary.services_stopped, SERVICES);
    assert_eq!(summary.terminated, 0);
    assert_eq!(node.process_count(), 0);
    assert!(threads() <= threads_before + 2, "stopping {SERVICES} services started threads");
}
