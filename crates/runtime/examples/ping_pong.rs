//! A tour of the runtime with native processes: a named "pong" server, a client that
//! finds it by name and times round trips, a supervisor that watches a crashing worker
//! through a monitor and restarts it, and a graceful shutdown.
//!
//!     cargo run --release -p wippy-runtime --example ping_pong

use std::time::{Duration, Instant};

use wippy_runtime::*;

const HOST: &str = "app:processes";

/// Answers every "ping" with a "pong" to the sender.
struct Pong;
impl Handler for Pong {
    fn handle(&mut self, cx: &mut Context<'_>, ev: Event) -> Flow {
        match ev {
            Event::Message(m) if m.topic == "ping" => {
                let _ = cx.send1(m.from, "pong", m.first().clone());
                Flow::Continue
            }
            Event::Cancel { .. } => Flow::stop(()),
            _ => Flow::Continue,
        }
    }
}

/// Sends `n` pings to the process registered as "pong", one at a time.
struct Ping {
    left: i64,
    started: Option<Instant>,
}
impl Handler for Ping {
    fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
        self.started = Some(Instant::now());
        match cx.send1("pong", "ping", self.left) {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::fail(e),
        }
    }
    fn handle(&mut self, cx: &mut Context<'_>, ev: Event) -> Flow {
        let Event::Message(m) = ev else { return Flow::Continue };
        self.left = m.first().as_int().unwrap_or(0) - 1;
        if self.left == 0 {
            let us = self.started.unwrap().elapsed().as_micros() as i64;
            return Flow::stop(us);
        }
        let _ = cx.send1("pong", "ping", self.left);
        Flow::Continue
    }
}

/// Crashes on its third job.
struct Worker {
    jobs: u32,
}
impl Handler for Worker {
    fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
        if let Event::Message(_) = ev {
            self.jobs += 1;
            if self.jobs == 3 {
                return Flow::fail(Error::internal("worker hit a bad job"));
            }
        }
        Flow::Continue
    }
}

/// Keeps one worker alive: spawn_monitored, restart on an abnormal EXIT, up to 3 times.
struct Supervisor {
    restarts: u32,
    worker: Option<Pid>,
}
impl Supervisor {
    fn start_worker(&mut self, cx: &mut Context<'_>) {
        let pid = cx.spawn(Spawn::process(HandlerProcess(Worker { jobs: 0 })).monitored()).expect("spawn");
        println!("supervisor {}: worker started as {pid}", cx.pid());
        for i in 0..3 {
            let _ = cx.send1(pid, "job", i);
        }
        self.worker = Some(pid);
    }
}
impl Handler for Supervisor {
    fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
        self.start_worker(cx);
        Flow::Continue
    }
    fn handle(&mut self, cx: &mut Context<'_>, ev: Event) -> Flow {
        match ev {
            Event::Exit { from, result: Err(e), .. } if Some(from) == self.worker => {
                println!("supervisor {}: worker {from} failed: {e}", cx.pid());
                self.restarts += 1;
                if self.restarts == 3 {
                    return Flow::stop(self.restarts);
                }
                self.start_worker(cx);
                Flow::Continue
            }
            Event::Cancel { .. } => Flow::stop(self.restarts),
            _ => Flow::Continue,
        }
    }
}

fn main() -> Result<(), Error> {
    let node = Node::new()?;
    node.add_host(HostConfig::new(HOST).stop_timeout(Duration::from_secs(1)))?;

    let pong = node.spawn(HOST, Spawn::process(HandlerProcess(Pong)))?;
    node.register("pong", pong)?;
    println!("pong server running as {pong}, registered as \"pong\"");

    let n = 100_000;
    let us = node.exec(HOST, Spawn::process(HandlerProcess(Ping { left: n, started: None })))?;
    let us = us.as_int().unwrap_or(1).max(1);
    println!("{n} round trips by name in {:.1} ms ({:.0} round trips/s)", us as f64 / 1e3, n as f64 * 1e6 / us as f64);

    let restarts = node.exec(HOST, Spawn::process(HandlerProcess(Supervisor { restarts: 0, worker: None })))?;
    println!("supervisor gave up after {restarts:?} restarts");

    let report = node.shutdown();
    println!("shutdown: {} processes cancelled, {} terminated", report.canceled, report.terminated);
    Ok(())
}
