//! The live registry: every change — a registry transaction from Lua, a rollback to an
//! earlier version, or an edited file under `wippy run --watch` — is checked exactly like a
//! project load, then becomes one new version: Lua entries get new versions (new spawns use
//! them, running processes keep their code, upgradable ones get OUTDATED), the `registry`
//! module sees the new entries, and services whose own entry changed restart with the new
//! definition. A change that does not check changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use wippy_lua::{LuaEntry, LuaRuntime, RegistryChange, RegistryItem, RegistryWriter};
use wippy_registry::{Change, ChangeError, Entry, EntryId, LoadErrors, Project, Registry};
use wippy_runtime::{Error, NodeRef, ServiceKind, Supervisor};

use crate::boot::service_specs;
use crate::plan::Plan;

pub struct Live {
    root: PathBuf,
    /// The source directory (`wippy.lock`'s `directories.src`): `file://` sources of
    /// entries made from Lua are relative to it.
    src: PathBuf,
    /// The modules directory: the other place a `file://` source may be read from.
    modules: PathBuf,
    node: NodeRef,
    lua: LuaRuntime,
    services: Supervisor,
    /// The HTTP servers: their routes follow every change.
    http: Arc<crate::http::Servers>,
    /// The node's registry: its versions are what this file commits.
    registry: Arc<Registry>,
    /// The project's files as last loaded (what a `file://` source is checked against).
    /// Held for a whole change: one writer at a time.
    files: Mutex<HashMap<String, Arc<str>>>,
    /// The `-o` overrides the node was started with: a reload of the files keeps them.
    overrides: Vec<wippy_registry::Override>,
}

/// What makes two definitions of an entry the same (not where they were written).
fn same(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && a.meta == b.meta && a.fields == b.fields && a.source.as_ref().map(|s| &s.text) == b.source.as_ref().map(|s| &s.text)
}

fn lua_same(a: &LuaEntry, b: &LuaEntry) -> bool {
    a.kind == b.kind && a.source == b.source && a.method == b.method && a.modules == b.modules && a.imports == b.imports
}

impl Live {
    /// `registry` holds `project` as its current version.
    pub fn new(project: &Project, registry: Arc<Registry>, node: NodeRef, lua: LuaRuntime, services: Supervisor, http: Arc<crate::http::Servers>) -> Live {
        let files = Mutex::new(project.files.clone());
        let overrides = project.overrides.clone();
        Live { root: project.root.clone(), src: project.src.clone(), modules: project.modules.clone(), node, lua, services, http, registry, files, overrides }
    }

    /// The project these entries (and files) make, in this node's directories.
    fn project(&self, entries: Vec<Entry>, files: Option<HashMap<String, Arc<str>>>) -> Project {
        Project { root: self.root.clone(), src: self.src.clone(), modules: self.modules.clone(), entries, files: files.unwrap_or_default(), ..Project::default() }
    }

    /// Check `entries` as a project and make them the current version (`cur_files` is the
    /// held lock: the caller read the version it changed under it).
    fn commit(&self, cur_files: &mut HashMap<String, Arc<str>>, entries: Vec<Entry>, files: Option<HashMap<String, Arc<str>>>) -> Result<(u64, Vec<String>), LoadErrors> {
        let project = self.project(entries.clone(), Some(files.clone().unwrap_or_else(|| cur_files.clone())));
        let plan = Plan::build(&project)?;
        let before = self.registry.snapshot();
        let old: HashMap<&EntryId, &Entry> = before.entries().map(|e| (&e.id, &**e)).collect();
        let mut changed: Vec<String> = entries.iter().filter(|e| old.get(&e.id).is_none_or(|o| !same(o, e))).map(|e| e.id.to_string()).collect();
        let new_ids: std::collections::HashSet<&EntryId> = entries.iter().map(|e| &e.id).collect();
        let removed: Vec<String> = before.entries().filter(|e| !new_ids.contains(&e.id)).map(|e| e.id.to_string()).collect();
        changed.extend(removed.iter().cloned());
        // Lua entries: a new version for each one whose code or bindings changed.
        let mut updated = Vec::new();
        for e in &plan.lua {
            match self.lua.entry(&e.id) {
                Some(cur) if lua_same(&cur, e) => {}
                Some(cur) => updated.push(LuaEntry { version: cur.version + 1, ..e.clone() }),
                None => updated.push(e.clone()),
            }
        }
        // (code that does not compile was refused by Plan::build, like a file that does not load)
        let lua_removed: Vec<String> = removed.iter().filter(|id| self.lua.entry(id).is_some()).cloned().collect();
        self.lua.update_entries(updated, &lua_removed);
        let version = self.registry.commit(entries);
        self.lua.set_env_config(plan.env_config(&self.lua.env_config()));
        self.lua.set_volumes(plan.http.filesystems.iter().map(|(id, dir, _)| (id.to_string(), dir.clone())));
        self.lua.set_stores(plan.stores.iter().cloned());
        self.lua.set_databases(plan.databases.iter().cloned());
        crate::boot::install_resources(&plan, &self.lua, &self.node);
        for (id, ttl) in &plan.token_stores {
            self.lua.add_token_store(id, *ttl);
        }
        for (k, v) in &plan.env {
            self.lua.set_env(k, v);
        }
        crate::http::install(&plan.http, &self.node, &self.http);
        // Services (and hosts) whose own entry changed restart with the new definition;
        // that waits for the old instance, so it happens off this thread.
        let mut restart = Vec::new();
        for spec in service_specs(&plan) {
            if !changed.contains(&spec.id) {
                continue;
            }
            let existed = old.keys().any(|id| id.as_str() == spec.id);
            if existed {
                if let ServiceKind::Host(config) = &spec.kind {
                    // A running host rescales in place; its other settings apply to a new node.
                    match self.node.host(&spec.id) {
                        Some(h) if h.workers() != config.workers => match self.node.rescale_host(&spec.id, config.workers) {
                            Ok(n) => tracing::info!(host = %spec.id, workers = n, "host rescaled"),
                            Err(e) => tracing::error!(host = %spec.id, error = %e, "host not rescaled"),
                        },
                        Some(_) => tracing::warn!(host = %spec.id, "host settings other than workers apply when wippy restarts"),
                        None => restart.push(spec.clone()),
                    }
                    continue;
                }
            }
            restart.push(spec);
        }
        if !restart.is_empty() {
            let services = self.services.clone();
            std::thread::spawn(move || {
                for spec in restart {
                    tracing::info!(service = %spec.id, "definition changed: restarting with the new one");
                    services.replace(spec);
                }
            });
        }
        if let Some(f) = files {
            *cur_files = f;
        }
        changed.sort();
        // on the system event bus (SPEC §12.7): system "wippy.registry", one "entry.changed"
        // per entry, then "version"
        for id in &changed {
            let mut data = wippy_runtime::Table::new();
            data.set(wippy_runtime::Value::str("version"), wippy_runtime::Value::Int(version as i64));
            self.node.publish_event(wippy_runtime::Pid::NOBODY, "wippy.registry", "entry.changed", id, wippy_runtime::Value::table(data));
        }
        self.node.publish_event(wippy_runtime::Pid::NOBODY, "wippy.registry", "version", &version.to_string(), wippy_runtime::Value::Nil);
        Ok((version, changed))
    }

    /// Reload the project from disk (an edit under `--watch`).
    pub fn reload(&self) -> Result<(u64, Vec<String>), LoadErrors> {
        let mut files = self.files.lock();
        let mut project = Project::load(&self.root)?;
        for o in &self.overrides {
            // (an entry the override named may be gone from the files now: said, not fatal)
            if let Err(e) = project.set_override(o.clone()) {
                tracing::warn!(target: "wippy::live", "override {}={} no longer applies: {e}", o.target, o.value);
            }
        }
        self.commit(&mut files, project.entries, Some(project.files))
    }

    fn entry_of(&self, item: RegistryItem) -> Result<Entry, Error> {
        let mut e = item.to_entry()?;
        e.source = match e.fields.get("source").and_then(|v| v.as_str()) {
            None => None,
            // read as a file's source is, with the same limits (relative to the source directory)
            Some(s) => Some(self.project(Vec::new(), None).read_source(s, &e.id, &self.src).map_err(|err| Error::invalid(format!("entry {}, field source: {err}", e.id)))?),
        };
        if e.source.is_none() {
            e.fields.remove("source");
        }
        Ok(e)
    }
}

impl RegistryWriter for Live {
    fn apply(&self, changes: Vec<RegistryChange>) -> Result<u64, Error> {
        let mut files = self.files.lock();
        let mut staged = Vec::with_capacity(changes.len());
        for c in changes {
            staged.push(match c {
                RegistryChange::Create(item) => Change::Create(self.entry_of(item)?),
                RegistryChange::Update(item) => Change::Update(self.entry_of(item)?),
                RegistryChange::Delete(id) => Change::Delete(id.parse().map_err(|_| Error::not_found(format!("entry not found: {id}")))?),
            });
        }
        let entries = self.registry.snapshot().with(staged).map_err(|e| match e {
            ChangeError::Exists(_) => Error::already_exists(e.to_string()),
            ChangeError::Missing(_) => Error::not_found(e.to_string()),
        })?;
        let (version, changed) = self.commit(&mut files, entries, None).map_err(|e| Error::invalid(e.to_string()))?;
        tracing::info!(version, changed = %changed.join(", "), "registry changed");
        Ok(version)
    }

    fn apply_version(&self, version: u64) -> Result<u64, Error> {
        let mut files = self.files.lock();
        let snap = self.registry.snapshot_at(version).ok_or_else(|| Error::not_found(format!("no registry version {version}")))?;
        let entries = snap.entries().map(|e| (**e).clone()).collect();
        let (v, changed) = self.commit(&mut files, entries, None).map_err(|e| Error::invalid(e.to_string()))?;
        tracing::info!(version = v, from = version, changed = %changed.join(", "), "registry rolled back");
        Ok(v)
    }
}

/// Every file under `dir` with its modification time and size.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// `wippy run --watch`: look at the source directory every 250 ms; once a change has
/// settled (nothing moved for another 250 ms), reload. A file that does not load is
/// reported with file and line, and nothing changes.
pub fn watch(live: Arc<Live>, src: PathBuf) {
    let _ = std::thread::Builder::new().name("watch".into()).spawn(move || {
        let tick = Duration::from_millis(250);
        let mut seen = fingerprint(&src);
        loop {
            std::thread::sleep(tick);
            let now = fingerprint(&src);
            if now == seen {
                continue;
            }
            // debounce: wait until the files stop changing
            let mut settled = now;
            loop {
                std::thread::sleep(tick);
                let again = fingerprint(&src);
                if again == settled {
                    break;
                }
                settled = again;
            }
            seen = settled;
            match live.reload() {
                Ok((version, changed)) if changed.is_empty() => tracing::debug!(version, "watch: nothing changed"),
                Ok((version, changed)) => tracing::info!(version, changed = %changed.join(", "), "watch: registry changed"),
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!("watch: {e} (nothing changed)");
                    }
                }
            }
        }
    });
}
