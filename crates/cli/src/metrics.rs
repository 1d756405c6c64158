//! Prometheus metrics (`metrics.prometheus.address` in `.wippy.yaml`): the `metrics` facade
//! with `metrics-exporter-prometheus`'s recorder and HTTP listener (text format at any
//! path, usually `/metrics`; `/livez` is a liveness answer, as in Wippy). The node's figures are read every `REFRESH` by one thread and
//! set as gauges and absolute counters, so the hot paths count only into the runtime's
//! per-thread counters (wippy_runtime::stats) and nothing walks the process table.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

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
    // recorded by the http `metrics` middleware on the routers that list it
    describe_counter!(wippy_http::middleware::REQUESTS_TOTAL, "HTTP requests answered, by method, route and status");
    describe_histogram!(wippy_http::middleware::REQUEST_DURATION, metrics::Unit::Seconds, "Time to an HTTP response's head, by method, route and status");
    describe_gauge!(wippy_http::middleware::REQUESTS_IN_FLIGHT, "HTTP requests being answered, by method and route");
}

/// Serve metrics at `addr` until the OS process ends, at any path: the node's figures (the
/// `metrics` facade with `metrics-exporter-prometheus`'s recorder) and then what Lua
/// processes recorded with the `metrics` module. A small tokio runtime of its own (one
/// thread, with I/O) serves them and refreshes the figures.
///
/// `key` is the setting `addr` came from, for the error when it cannot be bound.
pub fn start(key: &str, addr: SocketAddr, source: Source) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("metrics: {e}"))?;
    let listener = {
        let _enter = rt.enter();
        let std = std::net::TcpListener::bind(addr).map_err(|e| format!("{key} {addr}: {e}"))?;
        std.set_nonblocking(true).map_err(|e| format!("metrics: {e}"))?;
        tokio::net::TcpListener::from_std(std).map_err(|e| format!("metrics: {e}"))?
    };
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(wippy_http::middleware::REQUEST_DURATION.into()), wippy_http::middleware::DEFAULT_BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics: {e}"))?;
    describe();
    update(&source);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let refresh = {
                    let handle = handle.clone();
                    async move {
                        let mut tick = tokio::time::interval(REFRESH);
                        loop {
                            tick.tick().await;
                            update(&source);
                            handle.run_upkeep();
                        }
                    }
                };
                tokio::select! {
                    _ = serve(listener, handle) => {}
                    _ = refresh => {}
                }
            })
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}

/// Answer every request on `listener` with the text format.
async fn serve(listener: tokio::net::TcpListener, handle: metrics_exporter_prometheus::PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // `/livez`: Wippy's liveness answer on the same address (this thread answers,
                // so the node's runtime is up); any other path: the metrics
                let text = if req.uri().path() == "/livez" {
                    "ok\n".to_string()
                } else {
                    let mut text = handle.render();
                    wippy_lua::render_metrics(&mut text);
                    text
                };
                async move {
                    let mut res = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
                    res.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, answer).await;
        });
    }
}
