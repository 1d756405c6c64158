//! Runtime configuration: `.wippy.yaml` in the project directory, then every `--config`
//! file in order (mappings merge deeply, later wins), then `--set path=value` overrides
//! (the value is read as a YAML scalar: `--set logger.level=debug`, `--set a.b=3`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::load::{display_path, yaml_error};
use crate::LoadError;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub root: Map<String, Value>,
    /// Every file read, in order: (name as messages give it, text), to say where a key is.
    pub files: Vec<(String, String)>,
}

fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// A value written on the command line (`--set path=value`, `-o ns:entry:field=value`):
/// `true`/`false` and numbers as YAML reads them, anything else as the string given.
pub fn scalar(raw: &str) -> Value {
    match serde_saphyr::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

impl Config {
    /// Read the project's `.wippy.yaml` (if any), `files`, then `sets`.
    pub fn load(project: &Path, files: &[impl AsRef<Path>], sets: &[String]) -> Result<Config, LoadError> {
        let mut c = Config::default();
        let default = project.join(".wippy.yaml");
        if default.is_file() {
            c.merge_file(project, &default)?;
        }
        for f in files {
            let f = f.as_ref();
            if !f.is_file() {
                return Err(LoadError::new(format!("config file {} not found", f.display())).field("--config"));
            }
            c.merge_file(project, f)?;
        }
        for s in sets {
            c.set(s)?;
        }
        Ok(c)
    }

    fn merge_file(&mut self, project: &Path, path: &Path) -> Result<(), LoadError> {
        let name = display_path(project, path);
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::new(format!("cannot read: {e}")).file(&name))?;
        match serde_saphyr::from_str::<Value>(&text).map_err(|e| yaml_error(&name, "YAML syntax error", &e))? {
            Value::Object(m) => merge(&mut self.root, m),
            Value::Null => {}
            _ => return Err(LoadError::new("a configuration file must be a mapping").file(&name)),
        }
        self.files.push((name, text));
        Ok(())
    }

    /// Every leaf key path (`logger.level`), in no particular order.
    pub fn paths(&self) -> Vec<String> {
        fn walk(prefix: &str, m: &Map<String, Value>, out: &mut Vec<String>) {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    Value::Object(inner) if !inner.is_empty() => walk(&p, inner, out),
                    _ => out.push(p),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &self.root, &mut out);
        out
    }

    /// Where key `path` is written: the last file that has a line for its last segment
    /// (`file:line`), or `--set` when no file has it.
    pub fn origin(&self, path: &str) -> String {
        let key = path.rsplit('.').next().unwrap_or(path);
        for (name, text) in self.files.iter().rev() {
            for (i, line) in text.lines().enumerate() {
                let t = line.trim_start();
                if t.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':')) {
                    return format!("{name}:{}", i + 1);
                }
            }
        }
        "--set".into()
    }

    /// Apply one `path=value` override.
    pub fn set(&mut self, assignment: &str) -> Result<(), LoadError> {
        let bad = |m: &str| LoadError::new(format!("{m} in {assignment:?} (expected path=value)")).field("--set");
        let (path, raw) = assignment.split_once('=').ok_or_else(|| bad("missing '='"))?;
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(bad("empty path segment"));
        }
        let value = scalar(raw);
        let mut cur = &mut self.root;
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        for p in parts {
            let slot = cur.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = slot.as_object_mut().ok_or_else(|| bad("not a mapping"))?;
        }
        cur.insert(last.to_string(), value);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.root.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    pub fn str(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(|v| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_and_creates_paths() {
        let mut c = Config::default();
        c.set("logger.level=debug").unwrap();
        c.set("host.workers=3").unwrap();
        c.set("flag=true").unwrap();
        assert_eq!(c.str("logger.level"), Some("debug"));
        assert_eq!(c.get("host.workers"), Some(&Value::from(3)));
        assert_eq!(c.get("flag"), Some(&Value::Bool(true)));
        assert!(c.set("novalue").is_err());
        assert!(c.set("a..b=1").is_err());
    }
}
