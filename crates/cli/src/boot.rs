//! A node booted from a [`Plan`]: the Lua runtime with every Lua entry, the registry
//! items and env variables; hosts and services handed to the runtime's supervisor (hosts
//! are services too); the terminal host for `run -x` and `test`; and the graceful stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use wippy_lua::{LuaRuntime, ShardOptions};
use wippy_registry::{Lifecycle, Project};
use wippy_runtime::{HostConfig, Node, RestartPolicy, ServiceKind, ServiceSpec, StopSummary, Supervisor, SystemClock};

use crate::live::Live;
use crate::plan::Plan;

/// The terminal host used when the project defines none.
pub const BUILTIN_TERMINAL: &str = "wippy:terminal";

/// How long the built-in terminal host waits for its process at shutdown.
const TERMINAL_STOP: Duration = Duration::from_secs(10);

pub struct Boot {
    pub node: Node,
    pub lua: LuaRuntime,
    pub plan: Plan,
    pub services: Supervisor,
    pub live: Arc<Live>,
    /// The cluster this node joined (SPEC §13), if any.
    pub cluster: Option<wippy_cluster::Cluster>,
}

fn restart(l: &Lifecycle) -> RestartPolicy {
    RestartPolicy {
        initial_delay: l.restart.initial_delay,
        max_delay: l.restart.max_delay,
        backoff_factor: l.restart.backoff_factor,
        jitter: l.restart.jitter,
        max_attempts: l.restart.max_attempts.min(u32::MAX as u64) as u32,
        stable_threshold: l.stable_threshold,
    }
}

/// The template sets with their templates, the `queue.queue` queues, and each
/// `queue.consumer` as the native process its service runs.
pub(crate) fn install_resources(plan: &Plan, lua: &LuaRuntime, node: &wippy_runtime::NodeRef) {
    lua.set_templates(plan.template_sets.iter().map(|s| {
        let templates = plan.templates.iter().filter(|(set, _, _)| *set == s.id).map(|(_, n, t)| (n.clone(), t.clone())).collect();
        wippy_lua::TemplateSetSpec { templates, ..s.clone() }
    }));
    lua.set_executors(plan.executors.iter().cloned());
    lua.set_queues(plan.queues.iter().cloned());
    for c in &plan.consumers {
        node.register_entry(&c.id, lua.queue_consumer(c.clone()));
    }
}

/// Hosts and process services as the supervisor's specs. A `requires` that names an entry
/// that is not a service (a queue, a database, a store: there from boot) orders nothing.
pub(crate) fn service_specs(plan: &Plan) -> Vec<ServiceSpec> {
    let services: std::collections::HashSet<&str> = plan.hosts.iter().map(|h| h.id.as_str()).chain(plan.services.iter().map(|s| s.id.as_str())).collect();
    let runs = |r: &&wippy_registry::EntryId| services.contains(r.as_str());
    let mut specs = Vec::new();
    for h in &plan.hosts {
        let mut config = h.config.clone();
        if let Some(forced) = &h.identity {
            let mut sec = (*config.security).clone();
            sec.identity = Some(Arc::new(plan.identity(forced)));
            config.security = Arc::new(sec);
        }
        specs.push(ServiceSpec {
            id: h.id.to_string(),
            kind: ServiceKind::Host(config),
            requires: h.lifecycle.requires.iter().filter(runs).map(|r| r.to_string()).collect(),
            auto_start: h.lifecycle.auto_start,
            stop_timeout: h.lifecycle.stop_timeout,
            restart: restart(&h.lifecycle),
        });
    }
    for s in &plan.services {
        // The service's actor and scope (lifecycle.security) become its process's identity.
        let identity = s.identity.as_ref().map(|i| Arc::new(plan.identity(i)));
        let mut requires: Vec<String> = s.lifecycle.requires.iter().filter(runs).map(|r| r.to_string()).collect();
        requires.push(s.host.to_string());
        specs.push(ServiceSpec {
            id: s.id.to_string(),
            kind: ServiceKind::Process { host: s.host.to_string(), entry: s.process.to_string(), args: s.input.clone(), context: None, identity },
            requires,
            auto_start: s.lifecycle.auto_start,
            stop_timeout: s.lifecycle.stop_timeout,
            restart: restart(&s.lifecycle),
        });
    }
    specs
}

impl Boot {
    pub fn new(project: &Project, plan: Plan, strict: bool, cluster: Option<wippy_cluster::Config>) -> Result<Boot> {
        let node = Node::named(cluster.as_ref().map(|c| c.node.as_str())).map_err(|e| anyhow!("cannot start the node: {e}"))?;
        node.security().set_strict(strict);
        for p in &plan.policies {
            node.security().add_policy(p.policy.clone(), &p.groups);
        }
        let lua = LuaRuntime::new();
        for e in &plan.lua {
            lua.add_entry(e.clone());
        }
        // version 0 is the project as loaded; the live registry makes the next ones
        let registry = Arc::new(wippy_registry::Registry::at(0, project.entries.clone()));
        lua.set_registry(registry.clone());
        lua.set_env_config(plan.env_config(&Default::default()));
        lua.set_volumes(plan.http.filesystems.iter().map(|(id, dir, _)| (id.to_string(), dir.clone())));
        lua.set_stores(plan.stores.iter().cloned());
        lua.set_databases(plan.databases.iter().cloned());
        install_resources(&plan, &lua, &node.handle());
        for (id, ttl) in &plan.token_stores {
            lua.add_token_store(id, *ttl);
        }
        for (k, v) in &plan.env {
            lua.set_env(k, v);
        }
        for h in &plan.hosts {
            lua.set_host_options(h.id.as_str(), h.shard.clone());
        }
        // a spawn onto a host the project defines but that is not running is Unavailable
        for id in plan.hosts.iter().map(|h| &h.id).chain(plan.terminals.iter().map(|t| &t.id)) {
            node.declare_host(id.as_str());
        }
        lua.install(&node.handle());
        let tokens: wippy_http::middleware::TokenResolver = {
            let lua = lua.clone();
            Arc::new(move |store: &str, token: &str| lua.resolve_token(store, token))
        };
        let http = Arc::new(crate::http::Servers::new(tokens));
        crate::http::install(&plan.http, &node, &http);
        let clock = Arc::new(SystemClock::new(&node.handle()));
        let services = Supervisor::new(node.handle(), service_specs(&plan), clock).map_err(|e| anyhow!("{e}"))?;
        let live = Arc::new(Live::new(project, registry, node.handle(), lua.clone(), services.clone(), http));
        lua.set_registry_writer(live.clone());
        // joined before any service starts: what runs can reach the other nodes from its first step
        let cluster = match cluster {
            Some(c) => Some(wippy_cluster::Cluster::join(&node.handle(), c).map_err(|e| anyhow!("{e}"))?),
            None => None,
        };
        Ok(Boot { node, lua, plan, services, live, cluster })
    }

    /// Start every `auto_start` host and service (and what they require) in dependency
    /// order, and wait until they have settled (or their longest start_timeout passed).
    pub fn start(&self) -> bool {
        self.services.start_auto();
        let longest = self.plan.hosts.iter().map(|h| h.lifecycle.start_timeout).chain(self.plan.services.iter().map(|s| s.lifecycle.start_timeout)).max();
        self.services.wait_settled(longest.unwrap_or(Duration::from_secs(10)))
    }

    /// A compact table of the services and their states.
    pub fn status_table(&self) -> String {
        let rows = self.services.status();
        let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(7).max(7);
        let mut out = format!("{:width$}  {:8}  {:7}  PID\n", "SERVICE", "STATE", "ATTEMPT");
        for r in rows {
            let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            out.push_str(&format!("{:width$}  {:8}  {:7}  {pid}", r.id, r.state.to_string(), r.attempt));
            if let Some(e) = r.error {
                out.push_str(&format!("  ({e})"));
            }
            out.push('\n');
        }
        out
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

    /// Stop services in reverse dependency order (CANCEL "service stopping", terminate
    /// after their `stop_timeout`; hosts after everything that needs them), then every
    /// remaining process. Logs a one-line summary; true when everything ended in time.
    pub fn shutdown(&self) -> bool {
        let StopSummary { services_stopped, terminated } = self.services.stop_all();
        // the services' exits have reached the other nodes; now they hear of the leave
        if let Some(c) = &self.cluster {
            c.leave();
        }
        let report = self.node.shutdown();
        let terminated = terminated + report.terminated;
        tracing::info!(services_stopped, processes_terminated = terminated, "shutdown: {services_stopped} services stopped, {terminated} processes terminated");
        terminated == 0 && report.stuck == 0
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
