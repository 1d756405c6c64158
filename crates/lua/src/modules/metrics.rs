//! `metrics` (Wippy's module): counters, gauges and histograms a Lua process records, served
//! with the node's own figures on its Prometheus endpoint (`metrics.prometheus.address`).
//!
//! Every function answers `true, nil`. Labels are optional: only entries whose key and value
//! are both strings are kept, others are skipped, and labels that are not a table count as
//! none. Names go through as given. A name or value of the wrong type raises a Lua argument
//! error; using one name as two kinds of metric (a counter, then a gauge) is `nil, err`.
//!
//! Kept here rather than in the `metrics` facade the node's figures use: the facade's
//! counters take whole increments, and Lua's are numbers (`counter_add("revenue_total",
//! 9.99)`), negative ones included, as Wippy forwards them unchanged.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::OnceLock;

use mlua::{Lua, Table, Value as LuaValue};
use parking_lot::Mutex;
use wippy_runtime::Error;

use super::{bad_arg, fail};

// Every histogram's buckets: Prometheus's defaults, as the HTTP request durations use.
use wippy_http::middleware::DEFAULT_BUCKETS as BUCKETS;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One label set's figures: the value (counters, gauges), or per-bucket counts, sum and
/// count (histograms).
#[derive(Default)]
struct Series {
    value: f64,
    buckets: Vec<u64>,
    count: u64,
}

struct Family {
    kind: Kind,
    series: BTreeMap<Vec<(String, String)>, Series>,
}

fn registry() -> &'static Mutex<BTreeMap<String, Family>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<String, Family>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

enum Op {
    Add(f64),
    Set(f64),
    Observe(f64),
}

fn record(name: &str, kind: Kind, labels: Vec<(String, String)>, op: Op) -> Result<(), Error> {
    let mut reg = registry().lock();
    let family = reg.entry(name.to_string()).or_insert_with(|| Family { kind, series: BTreeMap::new() });
    if family.kind != kind {
        return Err(Error::internal(format!("metric {name:?} is a {}, not a {}", family.kind.name(), kind.name())));
    }
    let s = family.series.entry(labels).or_default();
    match op {
        Op::Add(v) => s.value += v,
        Op::Set(v) => s.value = v,
        Op::Observe(v) => {
            if s.buckets.is_empty() {
                s.buckets = vec![0; BUCKETS.len()];
            }
            for (b, bound) in s.buckets.iter_mut().zip(BUCKETS) {
                if v <= *bound {
                    *b += 1;
                }
            }
            s.value += v;
            s.count += 1;
        }
    }
    Ok(())
}

/// Everything Lua processes recorded, in Prometheus's text format (appended to `out`).
pub fn render(out: &mut String) {
    let reg = registry().lock();
    for (name, family) in reg.iter() {
        let _ = writeln!(out, "# TYPE {name} {}", family.kind.name());
        for (labels, s) in &family.series {
            match family.kind {
                Kind::Counter | Kind::Gauge => {
                    let _ = writeln!(out, "{name}{} {}", label_text(labels, None), number(s.value));
                }
                Kind::Histogram => {
                    for (n, bound) in s.buckets.iter().zip(BUCKETS) {
                        let _ = writeln!(out, "{name}_bucket{} {n}", label_text(labels, Some(&number(*bound))));
                    }
                    let _ = writeln!(out, "{name}_bucket{} {}", label_text(labels, Some("+Inf")), s.count);
                    let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), number(s.value));
                    let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), s.count);
                }
            }
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// `{k="v",...}` (with `le` last for a bucket), or nothing without labels.
fn label_text(labels: &[(String, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut t = String::from("{");
    let le = le.map(|b| ("le", b));
    for (i, (k, v)) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(le).enumerate() {
        if i > 0 {
            t.push(',');
        }
        t.push_str(k);
        t.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => t.push_str("\\\\"),
                '"' => t.push_str("\\\""),
                '\n' => t.push_str("\\n"),
                c => t.push(c),
            }
        }
        t.push('"');
    }
    t.push('}');
    t
}

/// The string-to-string entries of a labels argument, sorted (one series per label set
/// however the table was built).
fn labels_of(v: &LuaValue) -> mlua::Result<Vec<(String, String)>> {
    let LuaValue::Table(t) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair?;
        if let (LuaValue::String(k), LuaValue::String(v)) = (k, v) {
            out.push((k.to_str()?.to_string(), v.to_str()?.to_string()));
        }
    }
    out.sort();
    Ok(out)
}

fn name_of(v: &LuaValue, f: &str) -> mlua::Result<String> {
    match v {
        LuaValue::String(s) => Ok(s.to_str()?.to_string()),
        other => Err(bad_arg(1, f, "string", other)),
    }
}

fn value_of(v: &LuaValue, f: &str) -> mlua::Result<f64> {
    match v {
        LuaValue::Integer(i) => Ok(*i as f64),
        LuaValue::Number(n) => Ok(*n),
        other => Err(bad_arg(2, f, "number", other)),
    }
}

fn answer(lua: &Lua, r: Result<(), Error>) -> mlua::Result<(LuaValue, LuaValue)> {
    match r {
        Ok(()) => Ok((LuaValue::Boolean(true), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // (name, labels) functions: counter_inc, gauge_inc, gauge_dec
    for (f, kind, delta) in [("counter_inc", Kind::Counter, 1.0), ("gauge_inc", Kind::Gauge, 1.0), ("gauge_dec", Kind::Gauge, -1.0)] {
        t.raw_set(
            f,
            lua.create_function(move |lua, (name, labels): (LuaValue, LuaValue)| {
                let name = name_of(&name, f)?;
                answer(lua, record(&name, kind, labels_of(&labels)?, Op::Add(delta)))
            })?,
        )?;
    }
    // (name, value, labels) functions: counter_add, gauge_set, histogram
    for (f, kind) in [("counter_add", Kind::Counter), ("gauge_set", Kind::Gauge), ("histogram", Kind::Histogram)] {
        t.raw_set(
            f,
            lua.create_function(move |lua, (name, value, labels): (LuaValue, LuaValue, LuaValue)| {
                let name = name_of(&name, f)?;
                let v = value_of(&value, f)?;
                let op = match kind {
                    Kind::Counter => Op::Add(v),
                    Kind::Gauge => Op::Set(v),
                    Kind::Histogram => Op::Observe(v),
                };
                answer(lua, record(&name, kind, labels_of(&labels)?, op))
            })?,
        )?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_prometheus_text_format() {
        let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        record("t_orders_total", Kind::Counter, l("status", "ok"), Op::Add(1.0)).unwrap();
        record("t_orders_total", Kind::Counter, l("status", "ok"), Op::Add(2.5)).unwrap();
        record("t_pending", Kind::Gauge, vec![], Op::Set(4.0)).unwrap();
        record("t_pending", Kind::Gauge, vec![], Op::Add(-1.0)).unwrap();
        record("t_seconds", Kind::Histogram, l("q", "a\"b"), Op::Observe(0.03)).unwrap();
        record("t_seconds", Kind::Histogram, l("q", "a\"b"), Op::Observe(20.0)).unwrap();
        assert!(record("t_pending", Kind::Counter, vec![], Op::Add(1.0)).unwrap_err().message.contains("is a gauge, not a counter"));
        let mut out = String::new();
        render(&mut out);
        for line in [
            "# TYPE t_orders_total counter",
            "t_orders_total{status=\"ok\"} 3.5",
            "# TYPE t_pending gauge",
            "t_pending 3",
            "# TYPE t_seconds histogram",
            "t_seconds_bucket{q=\"a\\\"b\",le=\"0.025\"} 0",
            "t_seconds_bucket{q=\"a\\\"b\",le=\"0.05\"} 1",
            "t_seconds_bucket{q=\"a\\\"b\",le=\"10\"} 1",
            "t_seconds_bucket{q=\"a\\\"b\",le=\"+Inf\"} 2",
            "t_seconds_sum{q=\"a\\\"b\"} 20.03",
            "t_seconds_count{q=\"a\\\"b\"} 2",
        ] {
            assert!(out.lines().any(|x| x == line), "{line:?} not in\n{out}");
        }
    }
}
