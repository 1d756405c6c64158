//! From a loaded project to what the node boots: every entry checked by its kind's row of
//! the kind table, and the start order (dependencies first; a cycle is a load error). The
//! entries themselves become the node's registry as they are (wippy_registry::Registry).

use std::collections::BTreeMap;

use wippy_lua::{LuaEntry, ShardOptions};
use wippy_registry::{start_order, Checker, EntryId, Index, Lifecycle, LoadError, LoadErrors, Project};
use std::sync::Arc;

use wippy_runtime::{Actor, HostConfig, Identity, Policy, Scope, Value};

use crate::kinds;

pub struct HostPlan {
    pub id: EntryId,
    pub config: HostConfig,
    pub shard: ShardOptions,
    pub lifecycle: Lifecycle,
    /// The host's forced actor and scope (its `security:` block).
    pub identity: Option<IdentitySpec>,
}

/// An actor and the policies/groups of a scope, as an entry names them (resolved at boot).
#[derive(Clone, Default)]
pub struct IdentitySpec {
    pub actor: Option<Arc<Actor>>,
    pub policies: Vec<EntryId>,
    pub groups: Vec<String>,
}

/// A `security.policy` entry, compiled.
pub struct PolicyPlan {
    pub policy: Arc<Policy>,
    pub groups: Vec<String>,
}

pub struct TerminalPlan {
    pub id: EntryId,
    pub hide_logs: bool,
    pub lifecycle: Lifecycle,
}

pub struct ServicePlan {
    pub id: EntryId,
    pub process: EntryId,
    pub host: EntryId,
    pub input: Vec<Value>,
    pub lifecycle: Lifecycle,
    pub identity: Option<IdentitySpec>,
}

pub struct Command {
    pub name: String,
    pub short: String,
    pub entry: EntryId,
    /// `meta.command.security`: the actor and scope a CLI launch runs under.
    pub identity: Option<IdentitySpec>,
}

pub struct TestPlan {
    pub id: EntryId,
    pub suite: String,
    pub order: i64,
}

/// An `env.storage.*` entry, as written.
#[derive(Clone)]
pub enum StorageSpec {
    Memory,
    Os,
    Static(std::collections::HashMap<String, String>),
    File { path: std::path::PathBuf, auto_create: bool, file_mode: u32, dir_mode: u32 },
    Router(Vec<EntryId>),
}

/// An `env.variable` entry.
#[derive(Clone)]
pub struct VarSpec {
    pub id: EntryId,
    pub variable: String,
    pub storage: Option<EntryId>,
    pub default: Option<String>,
    pub readonly: bool,
}

#[derive(Default)]
pub struct Plan {
    pub hosts: Vec<HostPlan>,
    pub terminals: Vec<TerminalPlan>,
    pub lua: Vec<LuaEntry>,
    pub services: Vec<ServicePlan>,
    pub env: Vec<(String, String)>,
    pub env_storages: Vec<(EntryId, StorageSpec)>,
    pub env_vars: Vec<VarSpec>,
    /// `security.token_store` entries and their `default_expiration`.
    pub token_stores: Vec<(String, Option<std::time::Duration>)>,
    /// `store.memory` entries: ID and `max_size` (0: the default).
    pub stores: Vec<(String, usize)>,
    /// `db.sql.sqlite` entries: ID and file (absolute once the plan is built) or `:memory:`.
    pub databases: Vec<(String, String)>,
    /// `exec.native` entries.
    pub executors: Vec<(String, wippy_lua::ExecConfig)>,
    /// `template.set` entries (their templates are in `templates`).
    pub template_sets: Vec<wippy_lua::TemplateSetSpec>,
    /// `template.jet` entries: set ID, template name, source.
    pub templates: Vec<(String, String, String)>,
    /// `queue.queue` entries: ID and `max_length` (0: the default).
    pub queues: Vec<(String, usize)>,
    /// `queue.consumer` entries (each also a service on its own host).
    pub consumers: Vec<wippy_lua::ConsumerConfig>,
    pub commands: Vec<Command>,
    pub tests: Vec<TestPlan>,
    pub policies: Vec<PolicyPlan>,
    /// Group names referenced by hosts and services: (entry, field, group), checked once
    /// every policy is known.
    pub group_refs: Vec<(EntryId, String, String)>,
    /// Entries with a lifecycle -> what they need running first.
    pub deps: BTreeMap<EntryId, Vec<EntryId>>,
    pub warnings: Vec<LoadError>,
    /// HTTP servers, routers, endpoints, static mounts (SPEC §11).
    pub http: crate::http::HttpPlan,
    /// Lua entries' own `security:` blocks, resolved onto their [`LuaEntry`]s once every
    /// policy is known.
    pub entry_security: Vec<(EntryId, IdentitySpec)>,
}

/// A YAML value as a runtime value (mappings become tables with string keys).
pub fn json_value(v: &serde_json::Value) -> Value {
    wippy_http::json::from_json(v)
}

impl Plan {
    /// The runtime identity an entry's `security` block describes.
    pub fn identity(&self, spec: &IdentitySpec) -> Identity {
        let mut policies: Vec<Arc<Policy>> = Vec::new();
        for id in &spec.policies {
            if let Some(p) = self.policies.iter().find(|p| p.policy.id == id.as_str()) {
                policies.push(p.policy.clone());
            }
        }
        for g in &spec.groups {
            for p in self.policies.iter().filter(|p| p.groups.contains(g)) {
                if !policies.iter().any(|q| Arc::ptr_eq(q, &p.policy)) {
                    policies.push(p.policy.clone());
                }
            }
        }
        let scope = (!spec.policies.is_empty() || !spec.groups.is_empty()).then(|| Arc::new(Scope::new(policies)));
        Identity::new(spec.actor.clone(), scope)
    }

    /// A module that process entry `process` binds, itself or through a library it imports
    /// (transitively), and that `host`'s `security.modules` forbids (SPEC §7.3): what is
    /// wrong, as a load error says it. The same rule the runtime applies at spawn.
    pub fn forbidden_module(&self, process: &EntryId, host: &EntryId) -> Option<String> {
        let allowed = self.hosts.iter().find(|h| &h.id == host)?.config.security.modules.as_ref()?;
        let entry = self.lua.iter().find(|e| e.id == process.as_str())?;
        let (m, lib) = wippy_lua::forbidden_module(entry, allowed, |id| self.lua.iter().find(|e| e.id == id))?;
        let via = lib.map(|l| format!(" through library {l}")).unwrap_or_default();
        Some(format!("{process} binds module {m}{via}, which host {host} does not allow (security.modules: [{}])", allowed.join(", ")))
    }

    pub fn depends(&mut self, id: &EntryId, on: &[EntryId]) {
        self.deps.entry(id.clone()).or_default().extend(on.iter().cloned());
    }

    /// Check every entry of `project` and order the ones with a lifecycle.
    pub fn build(project: &Project) -> Result<Plan, LoadErrors> {
        let index = Index::new(&project.entries, &project.files);
        let mut plan = Plan::default();
        plan.warnings.extend(project.warnings.iter().cloned());
        let mut errors = Vec::new();
        for entry in &project.entries {
            let Some(kind) = kinds::find(&entry.kind) else {
                let known: Vec<&str> = kinds::KINDS.iter().map(|k| k.name).collect();
                let mut c = Checker::new(entry, &index);
                c.error("kind", format!("unknown kind {:?} (known kinds: {})", entry.kind, known.join(", ")));
                errors.append(&mut c.errors);
                continue;
            };
            let mut c = Checker::new(entry, &index);
            (kind.check)(&mut c, &mut plan);
            errors.append(&mut c.errors);
            plan.warnings.append(&mut c.warnings);
        }
        for (id, spec) in std::mem::take(&mut plan.entry_security) {
            let identity = plan.identity(&spec);
            let own = wippy_runtime::EntrySecurity { actor: identity.actor, scope: identity.scope };
            if let Some(e) = plan.lua.iter_mut().find(|e| e.id == id.as_str()) {
                e.security = Some(Arc::new(own));
            }
        }
        for (id, spec) in std::mem::take(&mut plan.http.identities) {
            let baseline = wippy_http::server::Baseline(Arc::new(plan.identity(&spec)));
            if let Some((_, config)) = plan.http.services.iter_mut().find(|(s, _)| *s == id) {
                config.identity = Some(baseline);
            }
        }
        for (id, field, group) in std::mem::take(&mut plan.group_refs) {
            if !plan.policies.iter().any(|p| p.groups.contains(&group)) {
                if let Some(e) = project.entries.iter().find(|e| e.id == id) {
                    let mut c = Checker::new(e, &index);
                    c.error(&field, format!("group {group} has no policies (no security.policy entry lists it in groups)"));
                    errors.append(&mut c.errors);
                }
            }
        }
        // a relative .env path is the project's (not wherever wippy was started)
        for (_, spec) in &mut plan.env_storages {
            if let StorageSpec::File { path, .. } = spec {
                if path.is_relative() {
                    *path = project.root.join(&*path);
                }
            }
        }
        crate::http::resolve_paths(&mut plan.http, &project.root);
        for (_, file) in &mut plan.databases {
            if file.as_str() != ":memory:" && std::path::Path::new(file.as_str()).is_relative() {
                *file = project.root.join(&*file).to_string_lossy().into_owned();
            }
        }
        let env = plan.env_config(&Default::default());
        for (id, field, msg) in crate::http::load_tls(&mut plan.http, &project.root, &env) {
            if let Some(e) = project.entries.iter().find(|e| e.id == id) {
                let mut c = Checker::new(e, &index);
                c.error(field, msg);
                errors.append(&mut c.errors);
            }
        }
        // a server's routers, routes and mounts are checked together (conflicts)
        for (server, r) in crate::http::routes(&plan.http) {
            match r {
                Ok(routes) => {
                    plan.http.built.insert(server, routes);
                }
                Err((id, field, msg)) => {
                    if let Some(e) = project.entries.iter().find(|e| e.id == id) {
                        let mut c = Checker::new(e, &index);
                        c.error(field, msg);
                        errors.append(&mut c.errors);
                    }
                }
            }
        }
        // two variables with one name would shadow each other (SPEC §12.11)
        let mut seen: std::collections::HashMap<&str, &EntryId> = Default::default();
        for v in &plan.env_vars {
            if let Some(first) = seen.insert(v.variable.as_str(), &v.id) {
                if let Some(e) = project.entries.iter().find(|e| e.id == v.id) {
                    let mut c = Checker::new(e, &index);
                    c.error("variable", format!("variable {:?} is already declared by {first}", v.variable));
                    errors.append(&mut c.errors);
                }
            }
        }
        for svc in &plan.services {
            if let Some(msg) = plan.forbidden_module(&svc.process, &svc.host) {
                if let Some(e) = project.entries.iter().find(|e| e.id == svc.id) {
                    let mut c = Checker::new(e, &index);
                    c.error("process", msg);
                    errors.append(&mut c.errors);
                }
            }
        }
        match start_order(&plan.deps) {
            Ok(_) => {}
            Err(cycle) => {
                let first = &cycle[0];
                let path: Vec<String> = cycle.iter().map(|c| c.to_string()).collect();
                let msg = format!("dependency cycle: {}", path.join(" -> "));
                match project.entries.iter().find(|e| &e.id == first) {
                    Some(e) => {
                        let mut c = Checker::new(e, &index);
                        let field = if e.get("lifecycle.requires").is_some() { "lifecycle.requires" } else { "lifecycle.depends_on" };
                        c.error(field, msg);
                        errors.append(&mut c.errors);
                    }
                    None => errors.push(LoadError::new(msg)),
                }
            }
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(LoadErrors(errors))
        }
    }
}

impl Plan {
    /// The env storages and variables, built (a router's storages first; a router that
    /// reaches itself gets no storage there). A memory storage that `previous` (the config
    /// before a reload) has under the same entry ID is kept, with what was stored in it.
    pub fn env_config(&self, previous: &wippy_lua::EnvConfig) -> wippy_lua::EnvConfig {
        use std::collections::HashMap;
        use wippy_lua::envstore::*;
        type Made = HashMap<EntryId, Arc<dyn EnvStorage>>;
        type Memories = Vec<(String, Arc<MemoryStorage>)>;
        fn build(id: &EntryId, specs: &[(EntryId, StorageSpec)], made: &mut Made, mem: &mut Memories, prev: &EnvConfig, depth: usize) -> Option<Arc<dyn EnvStorage>> {
            if let Some(s) = made.get(id) {
                return Some(s.clone());
            }
            if depth > 16 {
                return None;
            }
            let spec = &specs.iter().find(|(i, _)| i == id)?.1;
            let s: Arc<dyn EnvStorage> = match spec {
                StorageSpec::Memory => {
                    let m = prev.memory(id.as_str()).unwrap_or_default();
                    mem.push((id.to_string(), m.clone()));
                    m
                }
                StorageSpec::Os => Arc::new(OsStorage),
                StorageSpec::Static(v) => Arc::new(StaticStorage(v.clone())),
                StorageSpec::File { path, auto_create, file_mode, dir_mode } => Arc::new(FileStorage::new(path.clone(), *auto_create, *file_mode, *dir_mode)),
                StorageSpec::Router(ids) => Arc::new(RouterStorage::new(ids.iter().filter_map(|i| build(i, specs, made, mem, prev, depth + 1)).collect())),
            };
            made.insert(id.clone(), s.clone());
            Some(s)
        }
        let mut made = HashMap::new();
        let mut memories = Vec::new();
        let variables = self
            .env_vars
            .iter()
            .map(|v| EnvVariable {
                id: v.id.to_string(),
                variable: v.variable.clone(),
                storage: v.storage.as_ref().and_then(|s| build(s, &self.env_storages, &mut made, &mut memories, previous, 0)),
                default: v.default.clone(),
                readonly: v.readonly,
            })
            .collect();
        EnvConfig { variables, memories }
    }
}

