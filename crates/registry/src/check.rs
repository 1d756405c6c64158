//! Checking an entry's fields against its kind: typed reads with defaults, Go durations,
//! references to other entries (full IDs or bare names in the entry's namespace) and the
//! `lifecycle` block. Every problem is recorded with file, line, entry and field; reading
//! goes on so one load reports all of them.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::load::field_line;
use crate::{parse_duration, Entry, EntryId, LoadError};

/// What a checker can look up: the kinds of all loaded entries and the YAML texts.
pub struct Index<'a> {
    pub kinds: HashMap<&'a EntryId, &'a str>,
    pub entries: HashMap<&'a EntryId, &'a Entry>,
    pub files: &'a HashMap<String, std::sync::Arc<str>>,
}

impl<'a> Index<'a> {
    pub fn new(entries: &'a [Entry], files: &'a HashMap<String, std::sync::Arc<str>>) -> Index<'a> {
        Index { kinds: entries.iter().map(|e| (&e.id, e.kind.as_str())).collect(), entries: entries.iter().map(|e| (&e.id, e)).collect(), files }
    }
}

/// Reads one entry's fields for its kind, collecting errors.
pub struct Checker<'a> {
    pub entry: &'a Entry,
    index: &'a Index<'a>,
    pub errors: Vec<LoadError>,
    /// Things that do not stop the load (unknown fields: Wippy projects may carry fields
    /// this runtime does not use).
    pub warnings: Vec<LoadError>,
}

/// The `lifecycle` block of hosts and services (SPEC §2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub auto_start: bool,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub stable_threshold: Duration,
    pub requires: Vec<EntryId>,
    pub restart: Restart,
    /// The `security` block, unchecked here (the security issue gives it meaning).
    pub security: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub backoff_factor: f64,
    pub jitter: f64,
    /// 0 = unlimited.
    pub max_attempts: u64,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            auto_start: false,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            stable_threshold: Duration::from_secs(5),
            requires: Vec::new(),
            restart: Restart {
                initial_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(90),
                backoff_factor: 2.0,
                jitter: 0.1,
                max_attempts: 0,
            },
            security: None,
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

impl<'a> Checker<'a> {
    pub fn new(entry: &'a Entry, index: &'a Index<'a>) -> Checker<'a> {
        Checker { entry, index, errors: Vec::new(), warnings: Vec::new() }
    }

    fn located(&self, field: &str, message: impl Into<String>) -> LoadError {
        let text = self.index.files.get(&self.entry.origin.file).map(|t| &**t);
        let (line, column) = field_line(text, &self.entry.origin, field);
        let e = LoadError::new(message).file(&self.entry.origin.file).at(line, column).entry(self.entry.id.as_str());
        if field.is_empty() {
            e
        } else {
            e.field(field)
        }
    }

    /// Record an error about `field`.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let e = self.located(field, message);
        self.errors.push(e);
    }

    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        let e = self.located(field, message);
        self.warnings.push(e);
    }

    /// Another entry of the project (a kind that checks what it refers to).
    pub fn index_entry(&self, id: &EntryId) -> Option<&'a Entry> {
        self.index.entries.get(id).copied()
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.entry.get(field).filter(|v| !v.is_null())
    }

    /// The paths of fields under `prefix` that are not in `known`.
    fn unknown(&self, prefix: &str, known: &[&str]) -> Vec<String> {
        let map = if prefix.is_empty() { Some(&self.entry.fields) } else { self.get(prefix).and_then(|v| v.as_object()) };
        let keys = map.into_iter().flat_map(|m| m.keys()).filter(|k| !known.contains(&k.as_str()));
        keys.map(|k| if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }).collect()
    }

    /// Fields this kind does not know get a warning (a typo must not pass unnoticed).
    pub fn only(&mut self, prefix: &str, known: &[&str]) {
        for path in self.unknown(prefix, known) {
            self.warn(&path, format!("unknown field for kind {}, ignored (known: {})", self.entry.kind, known.join(", ")));
        }
    }

    /// Fields this kind does not know are errors (where a typo would weaken something,
    /// such as a security policy).
    pub fn only_known(&mut self, prefix: &str, known: &[&str]) {
        for path in self.unknown(prefix, known) {
            self.error(&path, format!("unknown field (known: {})", known.join(", ")));
        }
    }

    pub fn string(&mut self, field: &str) -> Option<String> {
        match self.get(field)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(field, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    pub fn required_string(&mut self, field: &str) -> Option<String> {
        if self.get(field).is_none() {
            self.error(field, "missing (required)");
            return None;
        }
        self.string(field)
    }

    /// A scalar field: `read` gives the value when the field has the right form; otherwise
    /// the error says the field `must be <expected>` and names what it got.
    fn scalar<T>(&mut self, field: &str, default: T, expected: &str, read: impl Fn(&Value) -> Option<T>) -> T {
        let Some(v) = self.get(field) else { return default };
        match read(v) {
            Some(x) => x,
            None => {
                let got = if matches!(v, Value::Number(_) | Value::Bool(_)) { v.to_string() } else { type_name(v).to_string() };
                self.error(field, format!("must be {expected}, got {got}"));
                default
            }
        }
    }

    pub fn bool(&mut self, field: &str, default: bool) -> bool {
        self.scalar(field, default, "true or false", Value::as_bool)
    }

    /// A non-negative integer.
    pub fn uint(&mut self, field: &str, default: u64) -> u64 {
        self.scalar(field, default, "a non-negative integer", Value::as_u64)
    }

    /// An integer of at least 1.
    pub fn positive(&mut self, field: &str, default: u64) -> u64 {
        self.scalar(field, default, "a positive integer", |v| v.as_u64().filter(|n| *n > 0))
    }

    pub fn float(&mut self, field: &str, default: f64) -> f64 {
        self.scalar(field, default, "a number", Value::as_f64)
    }

    /// A Go-style duration string (`1.5s`, `1h30m`); `0` is allowed.
    pub fn duration(&mut self, field: &str, default: Duration) -> Duration {
        match self.get(field) {
            None => default,
            Some(Value::String(s)) => match parse_duration(s) {
                Ok(n) if n >= 0 => Duration::from_nanos(n as u64),
                Ok(_) => {
                    self.error(field, format!("duration {s:?} must not be negative"));
                    default
                }
                Err(_) => {
                    self.error(field, format!("invalid duration {s:?} (expected Go syntax such as 500ms, 1.5s, 1h30m)"));
                    default
                }
            },
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Duration::ZERO,
            Some(other) => {
                self.error(field, format!("invalid duration {other} (expected a string such as 500ms, 1.5s, 1h30m)"));
                default
            }
        }
    }

    /// A byte size: an integer, or a string with a unit (`64KB`, `16MB`, `1GB`; powers of 1024).
    pub fn bytes(&mut self, field: &str) -> u64 {
        let parse = |s: &str| -> Option<u64> {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let n: u64 = s[..split].parse().ok()?;
            let mult = match s[split..].trim().to_ascii_uppercase().as_str() {
                "" | "B" => 1,
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                _ => return None,
            };
            n.checked_mul(mult)
        };
        match self.get(field) {
            None => 0,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) if parse(s).is_some() => parse(s).unwrap_or(0),
            Some(other) => {
                self.error(field, format!("must be a size in bytes (an integer or a string such as 64MB), got {other}"));
                0
            }
        }
    }

    /// One of `choices`.
    pub fn choice(&mut self, field: &str, choices: &[&str], default: &str) -> String {
        match self.string(field) {
            None => default.to_string(),
            Some(s) if choices.contains(&s.as_str()) => s,
            Some(s) => {
                self.error(field, format!("must be one of {}, got {s:?}", choices.join(", ")));
                default.to_string()
            }
        }
    }

    pub fn strings(&mut self, field: &str) -> Vec<String> {
        match self.get(field) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        other => self.error(field, format!("item {} must be a string, got {}", i + 1, type_name(other))),
                    }
                }
                out
            }
            Some(other) => {
                self.error(field, format!("must be a list of strings, got {}", type_name(other)));
                Vec::new()
            }
        }
    }

    /// Resolve a reference (full ID or bare name) and check that the entry exists and,
    /// when `kinds` is not empty, has one of those kinds.
    pub fn resolve(&mut self, field: &str, reference: &str, kinds: &[&str]) -> Option<EntryId> {
        let id = match EntryId::resolve(reference, self.entry.id.namespace()) {
            Ok(id) => id,
            Err(e) => {
                self.error(field, e.to_string());
                return None;
            }
        };
        match self.index.kinds.get(&id) {
            None => {
                self.error(field, format!("refers to {id}, which is not defined"));
                None
            }
            Some(k) if !kinds.is_empty() && !kinds.contains(k) => {
                self.error(field, format!("refers to {id}, which is a {k} entry (expected {})", kinds.join(" or ")));
                None
            }
            Some(_) => Some(id),
        }
    }

    pub fn reference(&mut self, field: &str, kinds: &[&str]) -> Option<EntryId> {
        let r = self.string(field)?;
        self.resolve(field, &r, kinds)
    }

    pub fn references(&mut self, field: &str, kinds: &[&str]) -> Vec<EntryId> {
        self.strings(field).into_iter().filter_map(|r| self.resolve(field, &r, kinds)).collect()
    }

    /// A mapping of string to string (`imports: {alias: entry}`), in file order.
    pub fn string_map(&mut self, field: &str) -> Vec<(String, String)> {
        match self.get(field) {
            None => Vec::new(),
            Some(Value::Object(m)) => {
                let mut out = Vec::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => out.push((k.clone(), s.clone())),
                        other => self.error(&format!("{field}.{k}"), format!("must be a string, got {}", type_name(other))),
                    }
                }
                out
            }
            Some(other) => {
                self.error(field, format!("must be a mapping, got {}", type_name(other)));
                Vec::new()
            }
        }
    }

    /// The `lifecycle` block with its defaults.
    pub fn lifecycle(&mut self) -> Lifecycle {
        let d = Lifecycle::default();
        if let Some(v) = self.get("lifecycle") {
            if !v.is_object() {
                self.error("lifecycle", format!("must be a mapping, got {}", type_name(v)));
                return d;
            }
        }
        self.only(
            "lifecycle",
            &["auto_start", "start_timeout", "stop_timeout", "stable_threshold", "requires", "depends_on", "restart", "security"],
        );
        self.only("lifecycle.restart", &["initial_delay", "delay", "max_delay", "backoff_factor", "jitter", "max_attempts"]);
        let mut requires = self.references("lifecycle.requires", &[]);
        requires.extend(self.references("lifecycle.depends_on", &[]));
        let initial = if self.get("lifecycle.restart.initial_delay").is_some() {
            self.duration("lifecycle.restart.initial_delay", d.restart.initial_delay)
        } else {
            self.duration("lifecycle.restart.delay", d.restart.initial_delay)
        };
        let backoff_factor = self.float("lifecycle.restart.backoff_factor", d.restart.backoff_factor);
        if backoff_factor < 1.0 {
            self.error("lifecycle.restart.backoff_factor", format!("must be at least 1.0, got {backoff_factor}"));
        }
        let jitter = self.float("lifecycle.restart.jitter", d.restart.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            self.error("lifecycle.restart.jitter", format!("must be between 0 and 1, got {jitter}"));
        }
        Lifecycle {
            auto_start: self.bool("lifecycle.auto_start", d.auto_start),
            start_timeout: self.duration("lifecycle.start_timeout", d.start_timeout),
            stop_timeout: self.duration("lifecycle.stop_timeout", d.stop_timeout),
            stable_threshold: self.duration("lifecycle.stable_threshold", d.stable_threshold),
            requires,
            restart: Restart {
                initial_delay: initial,
                max_delay: self.duration("lifecycle.restart.max_delay", d.restart.max_delay),
                backoff_factor,
                jitter,
                max_attempts: self.uint("lifecycle.restart.max_attempts", d.restart.max_attempts),
            },
            security: self.get("lifecycle.security").cloned(),
        }
    }
}
