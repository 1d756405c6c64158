//! wippy-lua: Lua processes for the Wippy runtime.
//!
//! Lua processes live many to a Lua 5.4 VM ("shard"); each is a coroutine with its own
//! `_ENV` and its own proxies of the shared, locked libraries. A host's shards are
//! runnables on its scheduler. [`LuaRuntime`] holds the Lua entries a node can spawn and
//! plugs into the node as its entry factory.

// Every unsafe operation sits in its own `unsafe` block with the reason beside it, also
// inside an `unsafe fn` (whose `# Safety` section says what its caller must hold).
#![deny(unsafe_op_in_unsafe_fn)]

mod catalog;
mod chunk;
pub mod compile;
mod convert;
mod current;
pub mod lint;
mod modules;
/// What Lua processes recorded with the `metrics` module, in Prometheus's text format.
pub use modules::metrics::render as render_metrics;
mod process;
mod shard;
mod vm;

use std::sync::Arc;

use wippy_runtime::{Error, HostRef, NewProcess, NodeRef, ProcessFactory};

pub mod envstore;
pub mod jet;
pub mod tokens;
pub use envstore::EnvConfig;
pub use catalog::{bindable, forbidden_module, syntax_error, EntryKind, ALWAYS_PRESENT, MODULES, LuaEntry, RegistryChange, RegistryItem, RegistryWriter};
pub use wippy_registry::{format_duration, parse_duration};
pub use shard::ShardOptions;
pub use modules::queue::ConsumerConfig;
pub use modules::exec::ExecConfig;
pub use modules::system::resident_bytes;
pub use modules::io::{reset_terminal, ARGS_KEY};

use catalog::Catalog;
use vm::sandbox::Vm;
use shard::{HostShards, Shard};

/// One `template.set` entry and its templates, for [`LuaRuntime::set_templates`].
#[derive(Clone, Debug, Default)]
pub struct TemplateSetSpec {
    pub id: String,
    pub left: String,
    pub right: String,
    pub globals: Vec<(String, wippy_runtime::Value)>,
    pub templates: Vec<(String, String)>,
}

/// Replace `map`'s contents by one value an item (ID, settings): the value it held for the
/// ID when `keep` takes it with the new settings (it may update itself), else a new one
/// `make` builds. A value whose ID is gone is dropped.
fn keep_or_make<T, S>(
    map: &mut std::collections::HashMap<String, Arc<T>>,
    items: impl IntoIterator<Item = (String, S)>,
    keep: impl Fn(&T, &S) -> bool,
    make: impl Fn(&str, S) -> T,
) {
    let mut next = std::collections::HashMap::new();
    for (id, settings) in items {
        let value = match map.remove(&id) {
            Some(old) if keep(&old, &settings) => old,
            _ => Arc::new(make(&id, settings)),
        };
        next.insert(id, value);
    }
    *map = next;
}

/// The Lua side of a node: its entries, their compiled code, and the hosts' shards.
#[derive(Clone)]
pub struct LuaRuntime {
    catalog: Arc<Catalog>,
}

impl Default for LuaRuntime {
    fn default() -> Self {
        LuaRuntime::new()
    }
}

impl LuaRuntime {
    pub fn new() -> LuaRuntime {
        LuaRuntime { catalog: Arc::new(Catalog::new()) }
    }

    /// Add or replace an entry (a replaced entry should carry a higher `version`). A
    /// replacement sends OUTDATED to the upgradable processes that run or import it.
    pub fn add_entry(&self, entry: LuaEntry) {
        let id = entry.id.clone();
        let replaced = self.catalog.entries.write().insert(id.clone(), Arc::new(entry)).is_some();
        if replaced {
            self.catalog.notify_changed(&[id]);
        }
    }

    /// Replace several entries at once; OUTDATED events name every changed ID a process
    /// depends on, in one event.
    pub fn update_entries(&self, entries: Vec<LuaEntry>, removed: &[String]) {
        let mut changed = Vec::new();
        {
            let mut map = self.catalog.entries.write();
            for e in entries {
                changed.push(e.id.clone());
                map.insert(e.id.clone(), Arc::new(e));
            }
            for id in removed {
                if map.remove(id).is_some() {
                    changed.push(id.clone());
                }
            }
        }
        self.catalog.notify_changed(&changed);
    }

    /// How processes on `host` are placed in shards (before the first spawn there).
    pub fn set_host_options(&self, host: &str, options: ShardOptions) {
        self.catalog.host_options.write().insert(host.to_string(), options);
    }

    /// Add (or replace) an entry the `registry` module shows, as a new version.
    pub fn add_registry_item(&self, item: RegistryItem) -> Result<u64, Error> {
        let entry = item.to_entry()?;
        self.catalog.registry.read().apply([wippy_registry::Change::Put(entry)]).map_err(|e| Error::invalid(e.to_string()))
    }

    /// The registry the `registry` module reads (its writer, if any, changes the same one).
    pub fn set_registry(&self, registry: Arc<wippy_registry::Registry>) {
        *self.catalog.registry.write() = registry;
    }

    /// Let Lua write the registry (`registry.changes()`, `apply_version`) through `writer`.
    pub fn set_registry_writer(&self, writer: Arc<dyn RegistryWriter>) {
        *self.catalog.writer.write() = Some(writer);
    }

    /// Whether `entry`'s source compiles (typed syntax erased first); the error names the
    /// chunk and line. Nothing runs.
    pub fn check(&self, entry: &LuaEntry) -> Result<(), Error> {
        catalog::check_source(entry)
    }

    /// The current version of a Lua entry, if there is one.
    pub fn entry(&self, id: &str) -> Option<LuaEntry> {
        self.catalog.entries.read().get(id).map(|e| (**e).clone())
    }

    /// Declare a `security.token_store` entry: `security.token_store(id)` acquires it;
    /// `default_ttl` (its `default_expiration`) is how long a token lives when `create`
    /// names no expiration. Declaring it again (a reload) keeps its tokens.
    pub fn add_token_store(&self, id: &str, default_ttl: Option<std::time::Duration>) {
        self.catalog.token_stores.write().entry(id.to_string()).or_default().set_default_ttl(default_ttl);
    }

    /// The actor and scope a live token of token store `store` stands for (`token_auth`).
    pub fn resolve_token(&self, store: &str, token: &str) -> Option<std::sync::Arc<wippy_runtime::Identity>> {
        let s = self.catalog.token_stores.read().get(store).cloned()?;
        let (actor, scope) = s.validate(token)?;
        Some(std::sync::Arc::new(wippy_runtime::Identity::new(Some(actor), Some(scope))))
    }

    /// The env variables and storages in use.
    pub fn env_config(&self) -> std::sync::Arc<EnvConfig> {
        self.catalog.env_config.read().clone()
    }

    /// The env storages and variables the `env` module reads and writes (SPEC §12.11).
    pub fn set_env_config(&self, config: EnvConfig) {
        *self.catalog.env_config.write() = std::sync::Arc::new(config);
    }

    /// The `fs.directory` volumes the `fs` module opens (ID -> directory), replacing the
    /// previous set.
    pub fn set_volumes(&self, volumes: impl IntoIterator<Item = (String, std::path::PathBuf)>) {
        *self.catalog.volumes.write() = volumes.into_iter().collect();
    }

    /// The `store.memory` stores the `store` module opens (ID -> `max_size`, 0 for the
    /// default). A store that stays keeps its data; one that is gone is dropped.
    pub fn set_stores(&self, stores: impl IntoIterator<Item = (String, usize)>) {
        use crate::modules::store::{MemStore, DEFAULT_MAX_SIZE};
        let stores = stores.into_iter().map(|(id, max)| (id, if max == 0 { DEFAULT_MAX_SIZE } else { max }));
        keep_or_make(&mut self.catalog.stores.write(), stores, |s, &max| {
            s.set_max_size(max);
            true
        }, |_, max| MemStore::new(max));
    }

    /// The `db.sql.sqlite` databases the `sql` module opens (ID -> file or `:memory:`). A
    /// database that stays with the same file keeps its connection (and a `:memory:` one
    /// its data); one that is gone or moved is closed.
    pub fn set_databases(&self, databases: impl IntoIterator<Item = (String, String)>) {
        use crate::modules::sql::Database;
        keep_or_make(&mut self.catalog.databases.write(), databases, |d, file| d.file() == file, |id, file| Database::new(id, &file));
    }

    /// The `queue.queue` queues the `queue` module and consumers use (ID -> `max_length`, 0
    /// for the default). A queue that stays keeps its messages; one that is gone is dropped.
    pub fn set_queues(&self, queues: impl IntoIterator<Item = (String, usize)>) {
        use crate::modules::queue::{MemQueue, DEFAULT_MAX_LENGTH};
        let queues = queues.into_iter().map(|(id, max)| (id, if max == 0 { DEFAULT_MAX_LENGTH } else { max }));
        keep_or_make(&mut self.catalog.queues.write(), queues, |q, &max| {
            q.set_max_length(max);
            true
        }, |id, max| MemQueue::new(id, max));
    }

    /// The `template.set` sets the `templates` module renders: each with its action
    /// delimiters, globals and templates (name, source). A template that does not parse
    /// is left out (the load checks reported it).
    pub fn set_templates(&self, sets: impl IntoIterator<Item = TemplateSetSpec>) {
        let mut map = std::collections::HashMap::new();
        for spec in sets {
            let mut set = crate::jet::Set { globals: spec.globals, ..Default::default() };
            for (name, text) in spec.templates {
                if let Ok(p) = crate::jet::parse(&text, &spec.left, &spec.right) {
                    set.templates.insert(name, Arc::new(p));
                }
            }
            map.insert(spec.id, Arc::new(set));
        }
        *self.catalog.template_sets.write() = map;
    }

    /// The `exec.native` executors the `exec` module opens (ID -> settings).
    pub fn set_executors(&self, executors: impl IntoIterator<Item = (String, crate::modules::exec::ExecConfig)>) {
        *self.catalog.executors.write() = executors.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    }

    /// What runs a `queue.consumer` entry: a native process that takes the queue's
    /// messages and runs `config.func` once per message (the `queue` module's documentation).
    pub fn queue_consumer(&self, config: crate::modules::queue::ConsumerConfig) -> Arc<dyn wippy_runtime::ProcessFactory> {
        let catalog = Arc::downgrade(&self.catalog);
        Arc::new(move |_: &str| -> Result<Box<dyn wippy_runtime::Process>, wippy_runtime::Error> { Ok(crate::modules::queue::consumer(config.clone(), catalog.clone())) })
    }

    /// A fixed value the `env` module returns for `name` when no `env.variable` has it.
    pub fn set_env(&self, name: &str, value: &str) {
        self.catalog.env.write().insert(name.to_string(), value.to_string());
    }

    /// Make `node` spawn Lua entries through this runtime (for every ID it has no other
    /// factory for).
    pub fn install(&self, node: &NodeRef) {
        *self.catalog.node.write() = Some(node.clone());
        node.set_entry_fallback(Arc::new(Factory { catalog: self.catalog.clone() }));
    }

    /// How many times source was compiled (the cache makes it once per entry version).
    pub fn compile_count(&self) -> u64 {
        self.catalog.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the Lua heaps of `host`'s shards use now.
    /// The current version of entry `id` (bumped by every change of its source).
    pub fn entry_version(&self, id: &str) -> Option<u64> {
        self.catalog.entries.read().get(id).map(|e| e.version)
    }

    pub fn shard_memory(&self, host: &str) -> usize {
        self.catalog.hosts.read().get(host).map(|h| h.memory()).unwrap_or(0)
    }

    /// How many shards `host` has now.
    pub fn shard_count(&self, host: &str) -> usize {
        self.catalog.hosts.read().get(host).map(|h| h.shard_count()).unwrap_or(0)
    }
}

struct Factory {
    catalog: Arc<Catalog>,
}

impl ProcessFactory for Factory {
    fn create(&self, id: &str, host: &HostRef) -> Result<NewProcess, Error> {
        let entry = self.catalog.entry(id)?;
        catalog::runnable_on(&self.catalog, &entry, host)?;
        let name = host.name().as_str();
        let shards = {
            let existing = self.catalog.hosts.read().get(name).cloned();
            match existing {
                Some(s) => s,
                None => {
                    let name = name.to_string();
                    let options = self.catalog.host_options.read().get(&name).cloned().unwrap_or_default();
                    self.catalog
                        .hosts
                        .write()
                        .entry(name.clone())
                        .or_insert_with(|| Arc::new(HostShards::new(host.clone(), options)))
                        .clone()
                }
            }
        };
        let weak = Arc::downgrade(&self.catalog);
        let shard = shards
            .place(|| {
                let vm = Vm::new(weak, shards.options.grants_io)?;
                if shards.options.isolated && shards.options.max_process_memory > 0 {
                    vm.lua.set_memory_limit(vm.baseline + shards.options.max_process_memory)?;
                }
                Ok(Shard::new(vm, shards.host.clone(), shards.options.clone(), self.catalog.clone()))
            })
            .map_err(|e| Error::internal(format!("cannot create a Lua shard on host '{name}': {e}")))?;
        let label = entry.label;
        let security = entry.security.clone();
        let process = process::LuaProcess::new(entry, shard.clone());
        Ok(NewProcess { process: Box::new(process), group: Some(shard), label: Some(label), security })
    }
}
