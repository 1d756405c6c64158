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

/// The inside of a `${…}` reference: the name, and the default after `|` if there is one
/// (`env:NAME|fallback`).
pub fn split_reference(inner: &str) -> (&str, Option<&str>) {
    match inner.split_once('|') {
        Some((n, d)) => (n.trim(), Some(d)),
        None => (inner.trim(), None),
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
        c.substitute()?;
        for s in sets {
            c.set(s)?;
        }
        Ok(c)
    }

    /// Wippy's references in the files' values: `${env:NAME}` is the OS environment
    /// variable NAME, `${name}` the value `name` of the `vars:` section (dotted into its
    /// mappings); `|default` after the name is used when it is not set. A reference with no
    /// value and no default is an error naming the key. A value that is one reference alone
    /// takes the referenced value's type (`workers: ${n}` with `vars: {n: 4}` is a number).
    fn substitute(&mut self) -> Result<(), LoadError> {
        let vars = self.root.get("vars").cloned().unwrap_or(Value::Null);
        let lookup = |name: &str| -> Option<Value> {
            if let Some(var) = name.strip_prefix("env:") {
                return std::env::var(var).ok().map(Value::String);
            }
            let mut v = &vars;
            for p in name.split('.') {
                v = v.as_object()?.get(p)?;
            }
            Some(v.clone())
        };
        let resolve = |path: &str, text: &str| -> Result<Option<Value>, String> {
            if !text.contains("${") {
                return Ok(None);
            }
            let mut out = String::new();
            let mut rest = text;
            let mut whole: Option<Value> = None;
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}').ok_or_else(|| format!("{path}: unclosed ${{ in {text:?}"))? + start;
                let (name, default) = split_reference(&rest[start + 2..end]);
                let value = match (lookup(name), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => Value::String(d.to_string()),
                    (None, None) if name.starts_with("env:") => return Err(format!("{path}: environment variable {} is not set", &name[4..])),
                    (None, None) => return Err(format!("{path}: ${{{name}}} has no value in the vars: section")),
                };
                if start == 0 && end + 1 == text.len() && out.is_empty() {
                    whole = Some(value.clone());
                }
                out.push_str(&rest[..start]);
                match value {
                    Value::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                }
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            Ok(Some(whole.unwrap_or(Value::String(out))))
        };
        fn walk(v: &mut Value, path: &str, f: &dyn Fn(&str, &str) -> Result<Option<Value>, String>) -> Result<(), String> {
            match v {
                Value::String(s) => {
                    if let Some(new) = f(path, s)? {
                        *v = new;
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        walk(item, &format!("{path}[{i}]"), f)?;
                    }
                }
                Value::Object(m) => {
                    for (k, item) in m.iter_mut() {
                        walk(item, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, f)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
        let mut root = Value::Object(std::mem::take(&mut self.root));
        let result = walk(&mut root, "", &resolve);
        if let Value::Object(m) = root {
            self.root = m;
        }
        result.map_err(|e| {
            let key = e.split(':').next().unwrap_or_default().to_string();
            LoadError::new(e).file(&self.origin(&key))
        })
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

    #[test]
    fn env_and_vars_references_are_resolved_with_their_type_when_whole() {
        let mut c = Config::default();
        std::env::set_var("WIPPY_CONFIG_TEST_ADDR", "127.0.0.1:9100");
        c.root = serde_json::from_str(
            r#"{"vars": {"n": 4, "host": {"name": "db"}}, "a": "${n}", "b": "w${n}x", "c": "${env:WIPPY_CONFIG_TEST_ADDR}",
                "d": ["${host.name}:5432"], "e": "${env:WIPPY_CONFIG_TEST_NOPE|fallback}"}"#,
        )
        .unwrap();
        c.substitute().unwrap();
        assert_eq!(c.get("a"), Some(&Value::from(4)));
        assert_eq!(c.str("b"), Some("w4x"));
        assert_eq!(c.str("c"), Some("127.0.0.1:9100"));
        assert_eq!(c.get("d"), Some(&serde_json::json!(["db:5432"])));
        assert_eq!(c.str("e"), Some("fallback"));
        for bad in [r#"{"x": "${env:WIPPY_CONFIG_TEST_NOPE}"}"#, r#"{"x": "${nope}"}"#, r#"{"x": "${n"}"#] {
            let mut c = Config::default();
            c.root = serde_json::from_str(bad).unwrap();
            let e = c.substitute().expect_err(bad).to_string();
            assert!(e.contains("x:"), "{bad}: {e}");
        }
    }
}
