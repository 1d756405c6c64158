//! The Lua entries a node knows (process.lua, function.lua, library.lua), their compiled
//! code cache keyed by (entry, source version), and the hosts' shard pools.
//!
//! Source is parsed once per (entry, version) node-wide: the first shard that needs it
//! compiles and keeps the bytecode here; other shards load the bytecode (no reparse), and
//! each shard keeps the loaded prototype for all its processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::{Function, Lua};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use wippy_registry::{Entry, EntryId, Origin, Registry};
use wippy_runtime::{Error, NodeRef, Pid, Value};

use crate::shard::{HostShards, ShardOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Process,
    Function,
    Library,
}

/// One Lua entry.
#[derive(Clone, Debug)]
pub struct LuaEntry {
    /// `namespace:name`.
    pub id: String,
    pub kind: EntryKind,
    /// The Lua source text.
    pub source: Arc<str>,
    /// What error messages call the source (usually its file path).
    pub chunk_name: String,
    /// The function of the chunk's returned table to call (`main`).
    pub method: String,
    /// Built-in modules this entry may bind.
    pub modules: Vec<String>,
    /// `alias -> library entry ID`.
    pub imports: Vec<(String, String)>,
    /// Bumped whenever the source changes.
    pub version: u64,
    /// A process entry with `meta.default_host` is also a function (SPEC §12.4.4):
    /// `funcs.call` starts it on this host and returns what its `main` returns.
    pub default_host: Option<String>,
    /// The entry ID as the runtime shows it on each process (`wippy ps`).
    pub label: &'static wippy_runtime::stats::EntryLabel,
    /// The entry's `security:` block: the actor and policies each of its processes (and
    /// function calls) starts with, over what it inherits.
    pub security: Option<Arc<wippy_runtime::EntrySecurity>>,
}

impl LuaEntry {
    pub fn process(id: &str, source: &str) -> LuaEntry {
        LuaEntry {
            id: id.to_string(),
            kind: EntryKind::Process,
            source: Arc::from(source),
            chunk_name: id.to_string(),
            method: "main".into(),
            modules: Vec::new(),
            imports: Vec::new(),
            version: 1,
            default_host: None,
            security: None,
            label: wippy_runtime::stats::EntryLabel::intern(id),
        }
    }
    pub fn function(id: &str, source: &str) -> LuaEntry {
        LuaEntry { kind: EntryKind::Function, method: "call".into(), ..LuaEntry::process(id, source) }
    }
    pub fn library(id: &str, source: &str) -> LuaEntry {
        LuaEntry { kind: EntryKind::Library, ..LuaEntry::process(id, source) }
    }
    pub fn modules(mut self, m: &[&str]) -> LuaEntry {
        self.modules = bindable(m.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn import(mut self, alias: &str, id: &str) -> LuaEntry {
        self.imports.push((alias.to_string(), id.to_string()));
        self
    }
    /// Make a process entry callable as a function on `host` (SPEC §12.4.4).
    pub fn default_host(mut self, host: &str) -> LuaEntry {
        self.default_host = Some(host.to_string());
        self
    }
    pub fn method(mut self, m: &str) -> LuaEntry {
        self.method = m.to_string();
        self
    }
    pub fn chunk_name(mut self, n: &str) -> LuaEntry {
        self.chunk_name = n.to_string();
        self
    }
}

/// An entry as the `registry` module shows it (`{id, kind, meta, data}`).
#[derive(Clone, Debug)]
pub struct RegistryItem {
    pub id: String,
    pub kind: String,
    pub meta: Value,
    pub data: Value,
}

/// One change of a registry transaction made from Lua.
#[derive(Clone, Debug)]
pub enum RegistryChange {
    Create(RegistryItem),
    Update(RegistryItem),
    Delete(String),
}

/// Who applies registry transactions (the `wippy` binary validates them like files and
/// makes them take effect). Called from inside a Lua process's step: it must not block
/// on other processes.
pub trait RegistryWriter: Send + Sync {
    /// Apply all the changes as one new version, or none of them.
    fn apply(&self, changes: Vec<RegistryChange>) -> Result<u64, Error>;
    /// Make an earlier version's entries current again (as a new version).
    fn apply_version(&self, version: u64) -> Result<u64, Error>;
}

impl RegistryItem {
    /// The entry this item describes. A `source` in `data` stays a field: reading it is
    /// the embedder's (it knows the project's directories).
    pub fn to_entry(&self) -> Result<Entry, Error> {
        let id: EntryId = self.id.parse().map_err(|e: wippy_registry::EntryIdError| Error::invalid(e.to_string()))?;
        let data = |v: &Value, what: &str| match wippy_http::json::to_data(v) {
            serde_json::Value::Object(m) => Ok(m),
            serde_json::Value::Null => Ok(serde_json::Map::new()),
            _ => Err(Error::invalid(format!("entry {id}: {what} must be a table"))),
        };
        let fields = data(&self.data, "data")?;
        let meta = data(&self.meta, "meta").unwrap_or_default();
        let origin = Origin { file: "<registry>".into(), line: 0, column: 0, end_line: 0 };
        Ok(Entry { id, kind: self.kind.clone(), meta, fields, origin, source: None })
    }
}

pub(crate) struct Catalog {
    pub(crate) entries: RwLock<FxHashMap<String, Arc<LuaEntry>>>,
    /// Upgradable processes by the entries they run and import (for OUTDATED events).
    pub(crate) watchers: Mutex<HashMap<String, Vec<Pid>>>,
    pub(crate) node: RwLock<Option<NodeRef>>,
    bytecode: Mutex<HashMap<(String, u64), Arc<[u8]>>>,
    /// The bytecode every entry's chunk is spliced into (crate::chunk).
    loader: std::sync::OnceLock<Vec<u8>>,
    pub(crate) compiles: AtomicU64,
    pub(crate) hosts: RwLock<FxHashMap<String, Arc<HostShards>>>,
    pub(crate) host_options: RwLock<HashMap<String, ShardOptions>>,
    /// The node's registry (shared with whoever changes it: the embedder's writer).
    pub(crate) registry: RwLock<Arc<Registry>>,
    pub(crate) writer: RwLock<Option<Arc<dyn RegistryWriter>>>,
    pub(crate) env: RwLock<HashMap<String, String>>,
    pub(crate) env_config: RwLock<Arc<crate::envstore::EnvConfig>>,
    pub(crate) token_stores: RwLock<HashMap<String, Arc<crate::tokens::TokenStore>>>,
    /// The `fs` module's volumes: `fs.directory` ID -> its directory.
    pub(crate) volumes: RwLock<HashMap<String, std::path::PathBuf>>,
    /// The `store` module's `store.memory` stores by entry ID.
    pub(crate) stores: RwLock<HashMap<String, Arc<crate::modules::store::MemStore>>>,
    /// The `sql` module's `db.sql.sqlite` databases by entry ID.
    pub(crate) databases: RwLock<HashMap<String, Arc<crate::modules::sql::Database>>>,
    /// The `queue` module's `queue.queue` queues by entry ID.
    pub(crate) queues: RwLock<HashMap<String, Arc<crate::modules::queue::MemQueue>>>,
    /// The `templates` module's `template.set` sets by entry ID.
    pub(crate) template_sets: RwLock<HashMap<String, Arc<crate::jet::Set>>>,
    /// The `exec` module's `exec.native` executors by entry ID.
    pub(crate) executors: RwLock<HashMap<String, Arc<crate::modules::exec::ExecConfig>>>,
}

impl Catalog {
    pub(crate) fn new() -> Catalog {
        Catalog {
            entries: RwLock::new(FxHashMap::default()),
            watchers: Mutex::new(HashMap::new()),
            node: RwLock::new(None),
            bytecode: Mutex::new(HashMap::new()),
            loader: std::sync::OnceLock::new(),
            compiles: AtomicU64::new(0),
            hosts: RwLock::new(FxHashMap::default()),
            host_options: RwLock::new(HashMap::new()),
            registry: RwLock::new(Arc::new(Registry::default())),
            writer: RwLock::new(None),
            env: RwLock::new(HashMap::new()),
            env_config: RwLock::new(Arc::default()),
            token_stores: RwLock::new(HashMap::new()),
            volumes: RwLock::new(HashMap::new()),
            stores: RwLock::new(HashMap::new()),
            databases: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            template_sets: RwLock::new(HashMap::new()),
            executors: RwLock::new(HashMap::new()),
        }
    }

    /// Watch (or stop watching) `entry` and its imports for process `pid`.
    pub(crate) fn set_upgradable(&self, pid: Pid, entry: &LuaEntry, on: bool) {
        let mut w = self.watchers.lock();
        for id in std::iter::once(&entry.id).chain(entry.imports.iter().map(|(_, lib)| lib)) {
            let list = w.entry(id.clone()).or_default();
            list.retain(|p| *p != pid);
            if on {
                list.push(pid);
            }
            if list.is_empty() {
                w.remove(id);
            }
        }
    }

    /// Entries `changed`: every upgradable process running or importing one of them gets
    /// an `@outdated` notice naming the changed IDs it depends on (the prelude turns it
    /// into one OUTDATED event, merged with one still pending).
    pub(crate) fn notify_changed(&self, changed: &[String]) {
        let Some(node) = self.node.read().clone() else { return };
        let mut per_pid: HashMap<Pid, Vec<String>> = HashMap::new();
        {
            let w = self.watchers.lock();
            for id in changed {
                for pid in w.get(id).into_iter().flatten() {
                    per_pid.entry(*pid).or_default().push(id.clone());
                }
            }
        }
        for (pid, ids) in per_pid {
            let mut t = wippy_runtime::Table::new();
            for id in ids {
                t.push(Value::str(&id));
            }
            node.notify(pid, "@outdated", wippy_runtime::payload![Value::table(t)]);
        }
    }

    pub(crate) fn entry(&self, id: &str) -> Result<Arc<LuaEntry>, Error> {
        self.entries.read().get(id).cloned().ok_or_else(|| Error::not_found(format!("entry not found: {}", wippy_runtime::Echo(id))))
    }

    /// The entry's chunk as a function of `(_ENV, ...)` (crate::chunk), loaded into `lua`: from this
    /// node's bytecode cache, compiling the source only the first time.
    pub(crate) fn load(&self, lua: &Lua, entry: &LuaEntry) -> Result<Function, Error> {
        let key = (entry.id.clone(), entry.version);
        let name = format!("@{}", entry.chunk_name);
        // The cache stays locked while a miss compiles, so shards that need the same new
        // version at once (a mass upgrade) wait for one compilation instead of each making one.
        let code = {
            let mut cache = self.bytecode.lock();
            match cache.get(&key) {
                Some(code) => code.clone(),
                None => {
                    let chunk = crate::chunk::compile(lua, &crate::compile::erase(&entry.source), &name)
                        .map_err(|e| compile_error(entry, &e))?;
                    if self.loader.get().is_none() {
                        let made = crate::chunk::loader(lua).map_err(|e| loader_error(entry, e))?;
                        let _ = self.loader.set(made);
                    }
                    let loader = self.loader.get().expect("set above");
                    let code: Arc<[u8]> = Arc::from(crate::chunk::bind(loader, &chunk).map_err(|e| loader_error(entry, e))?);
                    self.compiles.fetch_add(1, Ordering::Relaxed);
                    cache.insert(key, code.clone());
                    code
                }
            }
        };
        // The loader's own chunk sees an empty environment: nothing of the VM's globals.
        let empty = lua.create_table().map_err(|e| compile_error(entry, &e))?;
        let outer = lua
            .load(&code[..])
            .set_name(name.as_str())
            .set_mode(ChunkMode::Binary)
            .set_environment(empty)
            .into_function()
            .map_err(|e| compile_error(entry, &e))?;
        outer.call::<Function>(()).map_err(|e| compile_error(entry, &e))
    }
}

/// Whether `entry` may run as a process on `host`: not a library, and binding no module
/// outside the host's allow-list (SPEC §7.3), neither itself nor through any library it
/// imports (directly or through other libraries).
pub(crate) fn runnable_on(catalog: &Catalog, entry: &LuaEntry, host: &wippy_runtime::HostRef) -> Result<(), Error> {
    let id = &entry.id;
    if entry.kind == EntryKind::Library {
        return Err(Error::invalid(format!("entry '{id}' is a library.lua entry: it can be imported, not spawned")));
    }
    modules_allowed(catalog, entry, host)
}

/// Whether `entry` and every library it imports, transitively, bind only modules `host`
/// allows. A library missing from the catalog is left to `require` to report.
pub(crate) fn modules_allowed(catalog: &Catalog, entry: &LuaEntry, host: &wippy_runtime::HostRef) -> Result<(), Error> {
    let Some(allowed) = &host.config().security.modules else { return Ok(()) };
    let Some((m, lib)) = forbidden_module(entry, allowed, |id| catalog.entry(id).ok()) else { return Ok(()) };
    let whose = match lib {
        None => format!("entry {}", entry.id),
        Some(lib) => format!("library {lib} imported by entry {}", entry.id),
    };
    let (name, only) = (host.name(), allowed.join(", "));
    Err(wippy_runtime::denied("module", &format!("{m} ({whose} on host {name}, which allows only: {only})")))
}

/// The first module outside `allowed` that `entry` binds, itself (`None`) or through a
/// library it imports, directly or through other libraries (`Some(library ID)`). `lookup`
/// finds an entry by ID; a library it does not know is skipped. The one rule behind the
/// spawn-time check and the `wippy` command's load-time check (SPEC §7.3).
pub fn forbidden_module<E: std::borrow::Borrow<LuaEntry>>(
    entry: &LuaEntry,
    allowed: &[String],
    lookup: impl Fn(&str) -> Option<E>,
) -> Option<(String, Option<String>)> {
    if let Some(m) = entry.modules.iter().find(|m| !allowed.contains(m)) {
        return Some((m.clone(), None));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut todo: Vec<String> = entry.imports.iter().map(|(_, lib)| lib.clone()).collect();
    while let Some(lib) = todo.pop() {
        if seen.contains(&lib) {
            continue;
        }
        let Some(e) = lookup(&lib) else { continue };
        let e = e.borrow();
        if let Some(m) = e.modules.iter().find(|m| !allowed.contains(m)) {
            return Some((m.clone(), Some(lib)));
        }
        todo.extend(e.imports.iter().map(|(_, l)| l.clone()));
        seen.push(lib);
    }
    None
}

/// Compile `entry`'s source in a scratch VM (one per thread, kept: compiling runs nothing
/// and leaves nothing behind), to tell whether it would load.
pub(crate) fn check_source(entry: &LuaEntry) -> Result<(), Error> {
    syntax_error(entry).map_or(Ok(()), |msg| Err(Error::invalid(format!("entry '{}': {msg}", entry.id))))
}

/// Why `entry`'s source (typed syntax erased) does not compile, as Lua says it
/// (`file:line: message`); `None` when it compiles.
pub fn syntax_error(entry: &LuaEntry) -> Option<String> {
    thread_local! {
        static SCRATCH: Lua = Lua::new();
    }
    SCRATCH.with(|lua| {
        let r = crate::chunk::compile(lua, &crate::compile::erase(&entry.source), &format!("@{}", entry.chunk_name));
        lua.expire_registry_values();
        r.err().map(|e| match e {
            mlua::Error::SyntaxError { message, .. } => message,
            other => other.to_string(),
        })
    })
}

/// The modules an entry may list in `modules:`: what this runtime can bind.
pub const MODULES: &[&str] = &["time", "json", "logger", "env", "ctx", "funcs", "registry", "io", "security", "uuid", "base64", "hash", "yaml", "fs", "store", "text", "sql", "queue", "contract", "templates", "exec", "crypto", "compress", "events", "system", "http", "http_client", "metrics"];

/// What every Lua process has without listing it (SPEC §2.3; the prelude's `ALWAYS`, which
/// a test holds this to). Wippy's own projects list some of them (`modules: [process,
/// channel, time]`): such a name is accepted and binds nothing more ([`bindable`]).
pub const ALWAYS_PRESENT: &[&str] = &["process", "channel", "errors", "payload", "coroutine", "string", "table", "math", "utf8", "os", "number", "integer", "boolean"];

/// The names of `modules:` that bind something: all but the always-present ones.
pub fn bindable(modules: Vec<String>) -> Vec<String> {
    modules.into_iter().filter(|m| !ALWAYS_PRESENT.contains(&m.as_str())).collect()
}

fn loader_error(entry: &LuaEntry, e: String) -> Error {
    Error::internal(format!("entry '{}': binding its chunk: {e}", entry.id))
}

fn compile_error(entry: &LuaEntry, e: &mlua::Error) -> Error {
    let msg = match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Error::invalid(format!("entry '{}': {}", entry.id, msg))
}
