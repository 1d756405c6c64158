//! A node booted from a [`Plan`]: the Lua runtime with every Lua entry, the registry
//! items and env variables; hosts and services started in dependency order; the terminal
//! host for `run -x` and `test`; and the graceful stop (services in reverse order, then
//! every remaining process).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use parking_lot::{Condvar, Mutex};
use wippy_lua::{LuaRuntime, ShardOptions};
use wippy_registry::EntryId;
use wippy_runtime::{ExitResult, HostConfig, Node, Pid, Spawn};

use crate::kinds::TERMINAL_STOP;
use crate::plan::Plan;

/// The terminal host used when the project defines none.
pub const BUILTIN_TERMINAL: &str = "wippy:terminal";

/// One running service process and the place its exit lands.
struct Running {
    id: EntryId,
    pid: Pid,
    stop_timeout: Duration,
    exit: Arc<(Mutex<Option<ExitResult>>, Condvar)>,
}

pub struct Boot {
    pub node: Node,
    pub lua: LuaRuntime,
    pub plan: Plan,
    running: Mutex<Vec<Running>>,
}

impl Boot {
    pub fn new(plan: Plan) -> Result<Boot> {
        let node = Node::new().map_err(|e| anyhow!("cannot start the node: {e}"))?;
        let lua = LuaRuntime::new();
        for e in &plan.lua {
            lua.add_entry(e.clone());
        }
        for item in &plan.registry {
            lua.add_registry_item(item.clone());
        }
        for (k, v) in &plan.env {
            lua.set_env(k, v);
        }
        for h in &plan.hosts {
            lua.set_host_options(h.id.as_str(), h.shard.clone());
        }
        lua.install(&node.handle());
        Ok(Boot { node, lua, plan, running: Mutex::new(Vec::new()) })
    }

    /// Start every entry with `auto_start: true` and what it needs, in dependency order.
    pub fn start(&self) -> Result<()> {
        let mut wanted = BTreeSet::new();
        let mut stack: Vec<EntryId> = self.auto_started();
        while let Some(id) = stack.pop() {
            if wanted.insert(id.clone()) {
                stack.extend(self.plan.deps.get(&id).into_iter().flatten().cloned());
            }
        }
        for id in self.plan.order.clone() {
            if wanted.contains(&id) {
                self.start_entry(&id)?;
            }
        }
        Ok(())
    }

    fn auto_started(&self) -> Vec<EntryId> {
        let p = &self.plan;
        let hosts = p.hosts.iter().filter(|h| h.lifecycle.auto_start).map(|h| h.id.clone());
        let services = p.services.iter().filter(|s| s.lifecycle.auto_start).map(|s| s.id.clone());
        hosts.chain(services).collect()
    }

    fn start_entry(&self, id: &EntryId) -> Result<()> {
        if let Some(h) = self.plan.host(id) {
            self.node.add_host(h.config.clone()).map_err(|e| anyhow!("cannot start host {id}: {e}"))?;
            tracing::info!(host = %id, workers = h.config.workers, "host started");
            return Ok(());
        }
        if let Some(s) = self.plan.services.iter().find(|s| &s.id == id) {
            tracing::info!(service = %id, state = "Starting", attempt = 1, "service state");
            let spawn = Spawn::entry(s.process.as_str()).args(s.input.clone());
            let (pid, watch) = self
                .node
                .spawn_watched(s.host.as_str(), spawn)
                .map_err(|e| anyhow!("service {id}: cannot start {} on {}: {e}", s.process, s.host))?;
            tracing::info!(service = %id, state = "Running", attempt = 1, pid = %pid, "service state");
            let exit = Arc::new((Mutex::new(None), Condvar::new()));
            let (slot, sid) = (exit.clone(), id.clone());
            std::thread::Builder::new().name(format!("watch {id}")).spawn(move || {
                let result = watch.wait();
                match &result {
                    Ok(_) => tracing::info!(service = %sid, state = "Exited", attempt = 1, pid = %pid, "service state"),
                    Err(e) => tracing::error!(service = %sid, state = "Exited", attempt = 1, pid = %pid, error = %e, "service state"),
                }
                *slot.0.lock() = Some(result);
                slot.1.notify_all();
            })?;
            self.running.lock().push(Running { id: id.clone(), pid, stop_timeout: s.lifecycle.stop_timeout, exit });
        }
        Ok(())
    }

    /// Start the terminal host `-x` and `test` run on: `choice` (`--host`), else the
    /// project's only `terminal.host`, else a built-in one.
    pub fn start_terminal(&self, choice: Option<&str>) -> Result<String> {
        let (id, stop) = select_terminal(&self.plan, choice)?;
        let config = HostConfig::new(id.clone()).workers(1).stop_timeout(stop);
        self.lua.set_host_options(&id, ShardOptions { grants_io: true, ..ShardOptions::default() });
        self.node.add_host(config).map_err(|e| anyhow!("cannot start terminal host {id}: {e}"))?;
        Ok(id)
    }

    /// Stop services in reverse start order (CANCEL "service stopping", then terminate
    /// after their `stop_timeout`), then every other process. True when all ended in time.
    pub fn shutdown(&self) -> bool {
        let mut in_time = true;
        let running: Vec<Running> = std::mem::take(&mut *self.running.lock());
        for r in running.iter().rev() {
            if r.exit.0.lock().is_some() {
                continue;
            }
            tracing::info!(service = %r.id, state = "Stopping", pid = %r.pid, "service state");
            let _ = self.node.cancel(r.pid, "service stopping");
            let mut done = r.exit.0.lock();
            if done.is_none() {
                let _ = r.exit.1.wait_while_for(&mut done, |d| d.is_none(), r.stop_timeout);
            }
            if done.is_none() {
                tracing::warn!(service = %r.id, pid = %r.pid, timeout = ?r.stop_timeout, "service did not stop in time, terminating");
                in_time = false;
                let _ = self.node.terminate(r.pid);
                let _ = r.exit.1.wait_while_for(&mut done, |d| d.is_none(), Duration::from_secs(5));
            }
            tracing::info!(service = %r.id, state = "Stopped", "service state");
        }
        let report = self.node.shutdown();
        if report.terminated > 0 || report.stuck > 0 {
            tracing::warn!(terminated = report.terminated, stuck = report.stuck, "processes did not stop in time");
            in_time = false;
        }
        in_time
    }
}

/// Which terminal host `-x`/`test` uses, and its stop timeout.
pub fn select_terminal(plan: &Plan, choice: Option<&str>) -> Result<(String, Duration)> {
    match choice {
        Some(c) => match plan.terminals.iter().find(|t| t.id.as_str() == c) {
            Some(t) => Ok((t.id.to_string(), t.lifecycle.stop_timeout)),
            None => bail!("--host {c}: no terminal.host entry with that ID"),
        },
        None => match plan.terminals.as_slice() {
            [] => Ok((BUILTIN_TERMINAL.to_string(), TERMINAL_STOP)),
            [t] => Ok((t.id.to_string(), t.lifecycle.stop_timeout)),
            many => {
                let ids: Vec<String> = many.iter().map(|t| t.id.to_string()).collect();
                bail!("no terminal host can be chosen: the project defines {} ({}); pick one with --host", ids.len(), ids.join(", "))
            }
        },
    }
}

/// Whether the chosen terminal host hides logs while it runs.
pub fn terminal_hides_logs(plan: &Plan, choice: Option<&str>) -> bool {
    match select_terminal(plan, choice) {
        Ok((id, _)) => plan.terminals.iter().any(|t| t.id.as_str() == id && t.hide_logs),
        Err(_) => false,
    }
}
