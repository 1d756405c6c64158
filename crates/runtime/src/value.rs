//! The message value: nil, bool, integer, float, byte string, table, error.
//!
//! Values are immutable once built, so "deep copy" across processes is sharing: a table or
//! string handed to another process can never be changed by the sender afterwards, and the
//! receiver sees exactly what was sent. Cycles cannot be built. What cannot cross a process
//! boundary (functions, channels, coroutines, userdata of a VM) has no `Value` form at all:
//! converters report it with [`ValueError`], naming the offending field.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// The deepest nesting a converter accepts before it reports an error instead of recursing.
pub const MAX_DEPTH: usize = 200;

#[derive(Clone, Default)]
pub enum Value {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A binary-safe byte string (Lua strings are bytes).
    Str(Arc<[u8]>),
    Table(Arc<Table>),
    Error(Arc<Error>),
}

/// A table: the array part (keys 1..=n) and the map part (every other key, in the order the
/// converter met them).
#[derive(Clone, Default, PartialEq)]
pub struct Table {
    pub array: Vec<Value>,
    pub map: Vec<(Value, Value)>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }
    /// Look a key up: integer keys 1..=array.len() in the array part, else the map part.
    pub fn get(&self, key: &Value) -> Option<&Value> {
        if let Value::Int(i) = key {
            if *i >= 1 && (*i as usize) <= self.array.len() {
                return Some(&self.array[*i as usize - 1]);
            }
        }
        self.map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_str(&self, key: &str) -> Option<&Value> {
        self.map.iter().find(|(k, _)| k.as_bytes() == Some(key.as_bytes())).map(|(_, v)| v)
    }
    pub fn push(&mut self, v: Value) {
        self.array.push(v);
    }
    /// Set a map entry, replacing an equal key.
    pub fn set(&mut self, k: impl Into<Value>, v: impl Into<Value>) {
        let k = k.into();
        let v = v.into();
        match self.map.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => self.map.push((k, v)),
        }
    }
}

impl Value {
    /// Roughly the heap this value holds (strings, tables, errors, with their headers):
    /// what a queued message costs beyond its node, for mailbox limits. Conservative: a
    /// string shared by several values is counted for each.
    #[inline]
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
            _ => self.heap_bytes_held(),
        }
    }

    #[inline(never)]
    fn heap_bytes_held(&self) -> usize {
        const HEADER: usize = 16; // an Arc's two counts
        match self {
            Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
            Value::Str(s) => HEADER + s.len(),
            Value::Table(t) => {
                let slot = std::mem::size_of::<Value>();
                let array: usize = t.array.iter().map(|v| slot + v.heap_bytes()).sum();
                let map: usize = t.map.iter().map(|(k, v)| 2 * slot + k.heap_bytes() + v.heap_bytes()).sum();
                HEADER + std::mem::size_of::<Table>() + array + map
            }
            Value::Error(e) => {
                HEADER + std::mem::size_of::<Error>() + e.message.len() + e.details.as_ref().map_or(0, Value::heap_bytes)
            }
        }
    }

    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s.as_bytes()))
    }
    pub fn bytes(b: &[u8]) -> Value {
        Value::Str(Arc::from(b))
    }
    pub fn table(t: Table) -> Value {
        Value::Table(Arc::new(t))
    }
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }
    /// The string, when it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
    pub fn as_error(&self) -> Option<&Error> {
        match self {
            Value::Error(e) => Some(e),
            _ => None,
        }
    }
    /// The Lua type name of this value (`nil`, `boolean`, `number`, `string`, `table`, `error`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Table(_) => "table",
            Value::Error(_) => "error",
        }
    }
    /// Whether `self` may be a table key (Lua forbids nil and NaN keys).
    pub fn is_valid_key(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Float(f) => !f.is_nan(),
            _ => true,
        }
    }
}

impl PartialEq for Value {
    /// Lua equality for scalars (1 == 1.0), structural equality for tables and errors.
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Nil, Value::Nil) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => (*a as f64) == *b && b.fract() == 0.0,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Table(a), Value::Table(b)) => Arc::ptr_eq(a, b) || a == b,
            (Value::Error(a), Value::Error(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Value::Table(Arc::new(self.clone())), f)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{:?}", String::from_utf8_lossy(s)),
            Value::Table(t) => {
                let mut m = f.debug_map();
                for (i, v) in t.array.iter().enumerate() {
                    m.entry(&(i + 1), v);
                }
                for (k, v) in &t.map {
                    m.entry(k, v);
                }
                m.finish()
            }
            Value::Error(e) => write!(f, "error({}: {})", e.kind, e.message),
        }
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Nil
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i as i64)
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Value {
        Value::Int(i as i64)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::str(s)
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Arc::from(s.into_bytes().into_boxed_slice()))
    }
}
impl From<Table> for Value {
    fn from(t: Table) -> Value {
        Value::table(t)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::table(Table { array: v.into_iter().map(Into::into).collect(), map: Vec::new() })
    }
}

/// One step of the path to a value inside a payload, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub enum PathStep {
    /// The n-th payload of a message (1-based, as Lua counts).
    Arg(usize),
    Index(i64),
    Field(String),
    /// A key that is itself not a string or integer.
    Key,
}

/// Why a value from a VM (or any foreign representation) cannot become a [`Value`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} at {}", display_path(.path))]
pub struct ValueError {
    /// What was found (`function`, `channel`, `cycle`, `nesting deeper than 200`, ...).
    pub what: String,
    pub path: Vec<PathStep>,
}

impl ValueError {
    pub fn new(what: impl Into<String>) -> ValueError {
        ValueError { what: what.into(), path: Vec::new() }
    }
    /// Prefix the path with the step that led into the failing value (converters call this
    /// while unwinding).
    pub fn within(mut self, step: PathStep) -> ValueError {
        self.path.insert(0, step);
        self
    }
    pub fn into_error(self) -> Error {
        Error::invalid(format!("cannot send {self}"))
    }
}

fn display_path(path: &[PathStep]) -> String {
    let mut s = String::new();
    for (i, step) in path.iter().enumerate() {
        match step {
            PathStep::Arg(n) => s.push_str(&format!("payload #{n}")),
            PathStep::Index(n) => s.push_str(&format!("[{n}]")),
            PathStep::Field(f) if i == 0 => s.push_str(f),
            PathStep::Field(f) => s.push_str(&format!(".{f}")),
            PathStep::Key => s.push_str("[<key>]"),
        }
    }
    if s.is_empty() {
        s.push_str("the value itself");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_is_a_copy_because_values_are_immutable() {
        let mut t = Table::new();
        t.push(Value::from(1));
        t.set("name", "x");
        let v = Value::table(t);
        let sent = v.clone();
        assert_eq!(v, sent);
        // The only way to "change" a table is to build a new one; the sent one is untouched.
        let mut t2 = v.as_table().unwrap().clone();
        t2.set("name", "y");
        assert_eq!(sent.as_table().unwrap().get_str("name"), Some(&Value::str("x")));
    }

    #[test]
    fn binary_safe_strings() {
        let v = Value::bytes(&[0, 255, 10, 0]);
        assert_eq!(v.as_bytes().unwrap(), &[0, 255, 10, 0]);
        assert_eq!(v.as_str(), None);
    }

    #[test]
    fn integers_stay_integers() {
        assert!(matches!(Value::from(3i64), Value::Int(3)));
        assert_eq!(Value::Int(3), Value::Float(3.0));
        assert_ne!(Value::Int(3), Value::Float(3.5));
    }

    #[test]
    fn value_error_names_the_field() {
        let e = ValueError::new("function")
            .within(PathStep::Field("handler".into()))
            .within(PathStep::Index(2))
            .within(PathStep::Arg(1));
        assert_eq!(e.to_string(), "function at payload #1[2].handler");
        assert_eq!(e.into_error().kind, crate::ErrorKind::Invalid);
    }
}
