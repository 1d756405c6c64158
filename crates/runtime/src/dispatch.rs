//! Runs the commands a step yields that wait outside the process (timers, tickers, any
//! future), on a tokio runtime owned by the node; completions come back to the process as
//! [`Event::Completion`]. The scheduler has no async runtime inside; this is the only one.
//!
//! Every pending command is recorded in its process's topology (with its abort handle) so
//! that an exiting process cancels its timers and tickers, and `cancel_command` works.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cell::ProcCell;
use crate::error::Error;
use crate::node::NodeInner;
use crate::pid::Pid;
use crate::process::{Command, CommandId, Event};
use crate::value::Value;

/// The most timers, tickers and other commands one process may have pending at once: each
/// is a task on the dispatch runtime, so this bounds what one process can make the node
/// hold (SECURITY.md). One more completes at once with LimitExceeded.
pub const MAX_PENDING_COMMANDS: usize = 100_000;

pub(crate) fn too_many(pid: Pid) -> Error {
    Error::limit_exceeded(format!("{pid} already waits for {MAX_PENDING_COMMANDS} timers and commands")).with_retryable(false)
}

pub(crate) struct Dispatch {
    rt: Mutex<Option<Runtime>>,
    handle: Handle,
}

/// Unix time in nanoseconds.
pub fn unix_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Unix time in whole seconds (the `at` of lifecycle events).
pub fn unix_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Dispatch {
    pub(crate) fn new() -> Result<Dispatch, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::env::var("WIPPY_IO_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4))))
            .thread_name("wippy-dispatch")
            .enable_all()
            .build()
            .map_err(|e| Error::unavailable(format!("cannot start the dispatch runtime: {e}")))?;
        let handle = rt.handle().clone();
        Ok(Dispatch { rt: Mutex::new(Some(rt)), handle })
    }

    /// The tokio handle, for embedders that want to run their own futures beside.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Start `cmd` for process `cell`; its completion is delivered as `id`.
    pub(crate) fn start(&self, node: &Arc<NodeInner>, cell: &ProcCell, id: CommandId, cmd: Command) {
        let weak = Arc::downgrade(node);
        let pid = cell.pid;
        // Hold the topology lock while spawning, so a command that completes at once
        // cannot look for its record before it is written.
        let mut topo = cell.topo.lock();
        if cell.exited.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if topo.more.as_ref().is_some_and(|m| m.timers.len() >= MAX_PENDING_COMMANDS) {
            drop(topo);
            let _ = node.deliver(pid, Event::Completion { id, result: Err(too_many(pid)) });
            return;
        }
        let handle = match cmd {
            Command::After(d) => self.handle.spawn(async move {
                tokio::time::sleep(d).await;
                complete(&weak, pid, id, Ok(Value::Int(unix_nanos())), true);
            }),
            Command::Ticker(period) => {
                let period = period.max(Duration::from_micros(1));
                self.handle.spawn(async move {
                    let mut iv = tokio::time::interval_at(Instant::now() + period, period);
                    iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    loop {
                        iv.tick().await;
                        if !complete(&weak, pid, id, Ok(Value::Int(unix_nanos())), false) {
                            break;
                        }
                    }
                })
            }
            Command::Task(fut) => self.handle.spawn(async move {
                let r = fut.await;
                complete(&weak, pid, id, r, true);
            }),
        };
        topo.more().timers.push((id, handle.abort_handle()));
    }

    pub(crate) fn shutdown(&self) {
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Deliver a completion. `false` when the process is gone (the command should stop).
fn complete(node: &Weak<NodeInner>, pid: Pid, id: CommandId, result: Result<Value, Error>, last: bool) -> bool {
    let Some(node) = node.upgrade() else { return false };
    if last {
        if let Some(cell) = node.table.get(pid) {
            let mut topo = cell.topo.lock();
            if let Some(m) = topo.more.as_mut() {
                m.timers.retain(|(t, _)| *t != id);
            }
        }
    }
    node.deliver(pid, Event::Completion { id, result }).is_ok()
}

/// Abort every pending command of an exiting process.
pub(crate) fn abort_all(timers: Vec<(CommandId, AbortHandle)>) {
    for (_, h) in timers {
        h.abort();
    }
}
