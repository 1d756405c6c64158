//! Env storages and variables (SPEC §12.11): where `env.get`/`env.set` read and write.
//! A storage is memory, a `.env` file, the OS environment, static values, or a router over
//! other storages; a variable names a key in one storage, with a default and a read-only
//! flag. The `wippy` binary builds them from `env.storage.*` / `env.variable` entries.
//!
//! Must never: leave a `.env` file half-written (a write goes to a temporary file in the
//! same directory, synced, then renamed over the original).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use wippy_runtime::Error;

/// One storage. `get` answers `Ok(None)` for a key it does not have.
pub trait EnvStorage: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<String>, Error>;
    fn set(&self, key: &str, value: &str) -> Result<(), Error>;
}

/// `env.storage.memory`: lost at restart.
#[derive(Default)]
pub struct MemoryStorage(RwLock<HashMap<String, String>>);

impl EnvStorage for MemoryStorage {
    fn get(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.0.read().get(key).cloned())
    }
    fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        self.0.write().insert(key.to_string(), value.to_string());
        Ok(())
    }
}

/// `env.storage.os`: the process environment.
pub struct OsStorage;

impl EnvStorage for OsStorage {
    fn get(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(std::env::var(key).ok())
    }
    fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(Error::invalid(format!("cannot set environment variable {}", wippy_runtime::Echo(key))));
        }
        // SAFETY (edition 2024 marks this unsafe): the node reads its environment only
        // through this storage and at start-up; nothing else of ours reads it concurrently.
        unsafe { std::env::set_var(key, value) };
        Ok(())
    }
}

/// `env.storage.static`: fixed values, read-only.
pub struct StaticStorage(pub HashMap<String, String>);

impl EnvStorage for StaticStorage {
    fn get(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.0.get(key).cloned())
    }
    fn set(&self, _: &str, _: &str) -> Result<(), Error> {
        Err(Error::invalid("storage is read-only").with_retryable(false))
    }
}

/// `env.storage.file`: a `.env` file.
pub struct FileStorage {
    pub path: PathBuf,
    pub auto_create: bool,
    pub file_mode: u32,
    pub dir_mode: u32,
    lock: Mutex<()>,
}

impl FileStorage {
    pub fn new(path: PathBuf, auto_create: bool, file_mode: u32, dir_mode: u32) -> FileStorage {
        FileStorage { path, auto_create, file_mode, dir_mode, lock: Mutex::new(()) }
    }

    fn read(&self) -> Result<String, Error> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::internal(format!("env file {}: {e}", self.path.display()))),
        }
    }
}

/// The key and value of a `.env` line, if it holds one (`#` starts a comment).
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = match line.find('#') {
        Some(at) => &line[..at],
        None => line,
    };
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty()).then(|| (k, v.trim()))
}

impl EnvStorage for FileStorage {
    fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let text = self.read()?;
        Ok(text.lines().filter_map(parse_line).filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()).last())
    }

    fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        if key.is_empty() || key.contains(['=', '\n', '#']) || value.contains(['\n', '#']) {
            return Err(Error::invalid(format!("env file: cannot store {}", wippy_runtime::Echo(key))));
        }
        let _one_writer = self.lock.lock();
        let exists = self.path.exists();
        if !exists && !self.auto_create {
            return Err(Error::not_found(format!("env file {} does not exist (auto_create is off)", self.path.display())));
        }
        let dir = self.path.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.dir_mode)
                .create(&dir)
                .map_err(|e| Error::internal(format!("env file directory {}: {e}", dir.display())))?;
        }
        // an existing key's line is replaced, a new key appended
        let text = self.read()?;
        let mut out = String::with_capacity(text.len() + key.len() + value.len() + 2);
        let mut replaced = false;
        for line in text.lines() {
            if !replaced && parse_line(line).is_some_and(|(k, _)| k == key) {
                out.push_str(&format!("{key}={value}\n"));
                replaced = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !replaced {
            out.push_str(&format!("{key}={value}\n"));
        }
        let name = self.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "env".into());
        let tmp = dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(self.file_mode).open(&tmp)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::internal(format!("env file {}: {e} (the file is unchanged)", self.path.display()))
        })
    }
}

/// `env.storage.router`: the first storage that has the key wins (a hit is cached); a
/// write goes to the first storage.
pub struct RouterStorage {
    pub storages: Vec<Arc<dyn EnvStorage>>,
    cache: RwLock<HashMap<String, String>>,
}

impl RouterStorage {
    pub fn new(storages: Vec<Arc<dyn EnvStorage>>) -> RouterStorage {
        RouterStorage { storages, cache: RwLock::new(HashMap::new()) }
    }
}

impl EnvStorage for RouterStorage {
    fn get(&self, key: &str) -> Result<Option<String>, Error> {
        if let Some(v) = self.cache.read().get(key) {
            return Ok(Some(v.clone()));
        }
        for s in &self.storages {
            match s.get(key) {
                Ok(Some(v)) => {
                    self.cache.write().insert(key.to_string(), v.clone());
                    return Ok(Some(v));
                }
                Ok(None) => continue,
                Err(e) if e.kind == wippy_runtime::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        let first = self.storages.first().ok_or_else(|| Error::invalid("router has no storages"))?;
        first.set(key, value)?;
        self.cache.write().remove(key);
        Ok(())
    }
}

/// An `env.variable`.
#[derive(Clone)]
pub struct EnvVariable {
    /// The entry ID (`ns:name`).
    pub id: String,
    /// The key in its storage.
    pub variable: String,
    pub storage: Option<Arc<dyn EnvStorage>>,
    pub default: Option<String>,
    pub readonly: bool,
}

/// What the `env` module reads: the declared variables.
#[derive(Default, Clone)]
pub struct EnvConfig {
    pub variables: Vec<EnvVariable>,
    /// The `env.storage.memory` storages by entry ID: a reload of the project hands them to
    /// the next config, so what `env.set` stored there lives until the node stops ("lost at
    /// restart", SPEC §12.11; a reload is not a restart).
    pub memories: Vec<(String, Arc<MemoryStorage>)>,
}

impl EnvConfig {
    /// The memory storage that entry `id` was in this config.
    pub fn memory(&self, id: &str) -> Option<Arc<MemoryStorage>> {
        self.memories.iter().find(|(i, _)| i == id).map(|(_, m)| m.clone())
    }

    /// `name` as a variable name, then an entry name in `namespace`, then an entry ID.
    pub fn find(&self, name: &str, namespace: &str) -> Option<&EnvVariable> {
        self.variables
            .iter()
            .find(|v| v.variable == name)
            .or_else(|| self.variables.iter().find(|v| v.id.split_once(':') == Some((namespace, name))))
            .or_else(|| self.variables.iter().find(|v| v.id == name))
    }
}

impl EnvVariable {
    /// Its value: the storage's, unless missing or empty, then the default.
    pub fn value(&self) -> Result<Option<String>, Error> {
        let stored = match &self.storage {
            Some(s) => s.get(&self.variable)?,
            None => None,
        };
        Ok(stored.filter(|v| !v.is_empty()).or_else(|| self.default.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_file_and_every_variable_as_they_were() {
        let dir = std::env::temp_dir().join(format!("wippy-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.env");
        std::fs::write(&path, "# settings\nA=1\nB=two # inline comment\n\nC = 3\n").unwrap();
        let s = FileStorage::new(path.clone(), false, 0o644, 0o755);
        assert_eq!(s.get("A").unwrap().as_deref(), Some("1"));
        assert_eq!(s.get("B").unwrap().as_deref(), Some("two"));
        assert_eq!(s.get("C").unwrap().as_deref(), Some("3"));
        assert_eq!(s.get("D").unwrap(), None);
        s.set("B", "2").unwrap();
        s.set("D", "4").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "# settings\nA=1\nB=2\n\nC = 3\nD=4\n");
        // a write that cannot complete (its temporary file cannot be made): the original
        // stays whole, every variable still reads
        std::fs::create_dir(dir.join(".app.env.tmp")).unwrap();
        assert!(s.set("A", "changed").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(s.get("A").unwrap().as_deref(), Some("1"));
        std::fs::remove_dir(dir.join(".app.env.tmp")).unwrap();
        // auto_create off: a missing file reads as empty and refuses writes
        let missing = FileStorage::new(dir.join("none.env"), false, 0o644, 0o755);
        assert_eq!(missing.get("A").unwrap(), None);
        assert!(missing.set("A", "1").is_err());
        let made = FileStorage::new(dir.join("sub/made.env"), true, 0o600, 0o700);
        made.set("K", "v").unwrap();
        assert_eq!(made.get("K").unwrap().as_deref(), Some("v"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_router_takes_the_first_that_has_the_key_and_writes_to_the_first() {
        let a: Arc<dyn EnvStorage> = Arc::new(MemoryStorage::default());
        let mut vals = HashMap::new();
        vals.insert("K".to_string(), "static".to_string());
        let b: Arc<dyn EnvStorage> = Arc::new(StaticStorage(vals));
        let r = RouterStorage::new(vec![a.clone(), b.clone()]);
        assert_eq!(r.get("K").unwrap().as_deref(), Some("static"));
        r.set("N", "1").unwrap();
        assert_eq!(a.get("N").unwrap().as_deref(), Some("1"));
        assert!(b.set("N", "1").is_err());
    }
}
