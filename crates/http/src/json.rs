//! A message value as JSON, with Wippy's rules (SPEC §12.10): a table with no keys or keys
//! 1..n is an array, otherwise an object with string keys; errors are their message.

use wippy_runtime::Value;

pub fn to_json(v: &Value) -> serde_json::Value {
    convert(v, true)
}

/// A value as YAML-like data (a registry entry's `meta` and `data`): the same, except that
/// an empty table is an empty mapping.
pub fn to_data(v: &Value) -> serde_json::Value {
    convert(v, false)
}

fn convert(v: &Value, empty_is_array: bool) -> serde_json::Value {
    use serde_json::Value as J;
    let to_json = |x: &Value| convert(x, empty_is_array);
    match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Value::Str(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Value::Table(t) if t.map.is_empty() && (empty_is_array || !t.array.is_empty()) => J::Array(t.array.iter().map(to_json).collect()),
        Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for (i, x) in t.array.iter().enumerate() {
                m.insert((i + 1).to_string(), to_json(x));
            }
            for (k, x) in &t.map {
                let key = match k {
                    Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                m.insert(key, to_json(x));
            }
            J::Object(m)
        }
        Value::Error(e) => J::String(e.message.clone()),
    }
}

pub fn encode(v: &Value) -> String {
    to_json(v).to_string()
}

/// JSON as a message value (objects become tables with string keys).
pub fn from_json(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::str(s),
        J::Array(items) => {
            let mut t = wippy_runtime::Table::new();
            for i in items {
                t.push(from_json(i));
            }
            Value::table(t)
        }
        J::Object(m) => {
            let mut t = wippy_runtime::Table::new();
            for (k, v) in m {
                t.set(Value::str(k), from_json(v));
            }
            Value::table(t)
        }
    }
}
