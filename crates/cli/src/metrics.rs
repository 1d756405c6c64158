//! Prometheus metrics (`metrics.prometheus.address` in `.wippy.yaml`): the `metrics` facade
//! with `metrics-exporter-prometheus`'s recorder and HTTP listener (text format at any
//! path, usually `/metrics`). The node's figures are read every `REFRESH` by one thread and
//! set as gauges and absolute counters, so the hot paths count only into the runtime's
//! per-thread counters (wippy_runtime::stats) and nothing walks the process table.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::control::Source;

const REFRESH: Duration = Duration::from_millis(250);

fn update(source: &Source) {
    let t = source.totals();
    counter!("wippy_messages_total").absolute(t.messages);
    counter!("wippy_spawns_total").absolute(t.spawns);
    counter!("wippy_exits_total", "kind" => "normal").absolute(t.exits_normal);
    counter!("wippy_exits_total", "kind" => "error").absolute(t.exits_error);
    counter!("wippy_exits_total", "kind" => "killed").absolute(t.exits_killed);
    gauge!("wippy_memory_bytes", "kind" => "rss").set(t.memory_rss as f64);
    gauge!("wippy_memory_bytes", "kind" => "lua").set(t.memory_lua as f64);
    gauge!("wippy_uptime_seconds").set(t.uptime_ms as f64 / 1000.0);
    for h in source.hosts() {
        gauge!("wippy_processes", "host" => h.name.clone()).set(h.processes as f64);
        gauge!("wippy_scheduler_queue_length", "host" => h.name.clone()).set(h.queued as f64);
        gauge!("wippy_workers", "host" => h.name.clone()).set(h.workers as f64);
        gauge!("wippy_workers_busy", "host" => h.name.clone()).set(h.busy as f64);
    }
    for s in source.services() {
        counter!("wippy_service_restarts_total", "service" => s.id.clone()).absolute(s.restarts);
        gauge!("wippy_service_running", "service" => s.id.clone()).set(if s.state == "Running" { 1.0 } else { 0.0 });
    }
}

fn describe() {
    describe_counter!("wippy_messages_total", "Messages queued into mailboxes");
    describe_counter!("wippy_spawns_total", "Processes spawned");
    describe_counter!("wippy_exits_total", "Process exits by kind (normal, error, killed)");
    describe_gauge!("wippy_memory_bytes", "Resident memory of the node (rss) and the Lua VMs' heaps (lua)");
    describe_gauge!("wippy_uptime_seconds", "Time since the node started");
    describe_gauge!("wippy_processes", "Live processes per host");
    describe_gauge!("wippy_scheduler_queue_length", "Runnables waiting in a host's run queues");
    describe_gauge!("wippy_workers", "Worker threads per host");
    describe_gauge!("wippy_workers_busy", "Worker threads not parked, per host");
    describe_counter!("wippy_service_restarts_total", "Restarts per service");
    describe_gauge!("wippy_service_running", "1 while a service is Running");
}

/// Serve metrics at `addr` until the OS process ends: the exporter's listener runs on a
/// small tokio runtime of its own (one thread, with I/O), which also refreshes the figures.
pub fn start(addr: SocketAddr, source: Source) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("metrics: {e}"))?;
    let (recorder, exporter) = {
        let _enter = rt.enter();
        PrometheusBuilder::new().with_http_listener(addr).build().map_err(|e| format!("metrics.prometheus.address {addr}: {e}"))?
    };
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics: {e}"))?;
    describe();
    update(&source);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let refresh = async {
                    let mut tick = tokio::time::interval(REFRESH);
                    loop {
                        tick.tick().await;
                        update(&source);
                    }
                };
                tokio::select! {
                    r = exporter => if let Err(e) = r { tracing::error!(error = ?e, "the metrics endpoint stopped") },
                    _ = refresh => {}
                }
            })
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}
