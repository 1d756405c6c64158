//! What travels between nodes, in MessagePack (SPEC §13.8): a frame is a header (format
//! version, sending node, its incarnation) followed by envelopes until its end, so a frame
//! batches whatever was queued for one node. Values are MessagePack's own types (a Lua
//! string that is not UTF-8 travels as `bin`), a table with a map part as a map whose
//! array part comes first under keys 1..n, an error value as extension type 1.
//!
//! Decoding never trusts the frame: every length is checked against what is left, nesting
//! is bounded, and anything malformed is an `Err` naming what was wrong (the frame is then
//! dropped and logged; nothing panics, SPEC §13.7 and the "garbage is rejected").

use std::io::Write;
use std::sync::Arc;

use rmp::Marker;
use wippy_runtime::{Along, Error, ExitResult, Payload, Pid, Relation, Table, Value, MAX_DEPTH};

pub const VERSION: u8 = 1;
const EXT_ERROR: i8 = 1;

/// One request or notice for a process of the receiving node.
#[derive(Debug)]
pub enum Envelope {
    Msg { from: Pid, host: String, actor: Option<String>, to: Pid, topic: String, payload: Payload },
    Relate { from: Pid, host: String, actor: Option<String>, to: Pid, relation: Relation },
    Exit { from: Pid, to: Pid, along: Along, result: ExitResult },
    Terminate { from: Pid, host: String, actor: Option<String>, to: Pid },
    Cancel { from: Pid, host: String, actor: Option<String>, to: Pid, reason: String },
}

const K_MSG: u8 = 0;
const K_LINK: u8 = 1;
const K_UNLINK: u8 = 2;
const K_MONITOR: u8 = 3;
const K_UNMONITOR: u8 = 4;
const K_EXIT_MONITOR: u8 = 5;
const K_EXIT_LINK: u8 = 6;
const K_TERMINATE: u8 = 7;
const K_CANCEL: u8 = 8;

/// A frame's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub node: String,
    pub incarnation: u64,
}

pub fn write_header(out: &mut Vec<u8>, node: &str, incarnation: u64) {
    let _ = rmp::encode::write_uint(out, VERSION as u64);
    let _ = rmp::encode::write_str(out, node);
    let _ = rmp::encode::write_uint(out, incarnation);
}

fn write_pid(out: &mut Vec<u8>, p: Pid) {
    p.with_text(|t| {
        let _ = rmp::encode::write_str(out, t);
    });
}

fn write_who(out: &mut Vec<u8>, from: Pid, host: &str, actor: Option<&str>) {
    write_pid(out, from);
    let _ = rmp::encode::write_str(out, host);
    match actor {
        Some(a) => {
            let _ = rmp::encode::write_str(out, a);
        }
        None => {
            let _ = rmp::encode::write_nil(out);
        }
    }
}

pub fn write_msg(out: &mut Vec<u8>, from: Pid, host: &str, actor: Option<&str>, to: Pid, topic: &str, payload: &Payload) {
    out.push(K_MSG);
    write_who(out, from, host, actor);
    write_pid(out, to);
    let _ = rmp::encode::write_str(out, topic);
    let _ = rmp::encode::write_array_len(out, payload.len() as u32);
    for v in payload.iter() {
        write_value(out, v);
    }
}

pub fn write_relate(out: &mut Vec<u8>, from: Pid, host: &str, actor: Option<&str>, to: Pid, relation: Relation) {
    out.push(match relation {
        Relation::Link => K_LINK,
        Relation::Unlink => K_UNLINK,
        Relation::Monitor => K_MONITOR,
        Relation::Unmonitor => K_UNMONITOR,
    });
    write_who(out, from, host, actor);
    write_pid(out, to);
}

pub fn write_exit(out: &mut Vec<u8>, from: Pid, to: Pid, along: Along, result: &ExitResult) {
    out.push(if along == Along::Monitor { K_EXIT_MONITOR } else { K_EXIT_LINK });
    write_pid(out, from);
    write_pid(out, to);
    match result {
        Ok(v) => {
            out.push(0);
            write_value(out, v);
        }
        Err(e) => {
            out.push(1);
            write_error(out, e);
        }
    }
}

pub fn write_terminate(out: &mut Vec<u8>, from: Pid, host: &str, actor: Option<&str>, to: Pid) {
    out.push(K_TERMINATE);
    write_who(out, from, host, actor);
    write_pid(out, to);
}

pub fn write_cancel(out: &mut Vec<u8>, from: Pid, host: &str, actor: Option<&str>, to: Pid, reason: &str) {
    out.push(K_CANCEL);
    write_who(out, from, host, actor);
    write_pid(out, to);
    let _ = rmp::encode::write_str(out, reason);
}

pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Nil => {
            let _ = rmp::encode::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = rmp::encode::write_bool(out, *b);
        }
        Value::Int(i) => {
            let _ = rmp::encode::write_sint(out, *i);
        }
        Value::Float(f) => {
            let _ = rmp::encode::write_f64(out, *f);
        }
        Value::Str(s) => match std::str::from_utf8(s) {
            Ok(t) => {
                let _ = rmp::encode::write_str(out, t);
            }
            Err(_) => {
                let _ = rmp::encode::write_bin(out, s);
            }
        },
        Value::Table(t) => {
            if t.map.is_empty() {
                let _ = rmp::encode::write_array_len(out, t.array.len() as u32);
                for v in &t.array {
                    write_value(out, v);
                }
            } else {
                let _ = rmp::encode::write_map_len(out, (t.array.len() + t.map.len()) as u32);
                for (i, v) in t.array.iter().enumerate() {
                    let _ = rmp::encode::write_sint(out, i as i64 + 1);
                    write_value(out, v);
                }
                for (k, v) in &t.map {
                    write_value(out, k);
                    write_value(out, v);
                }
            }
        }
        Value::Error(e) => write_error(out, e),
    }
}

fn write_error(out: &mut Vec<u8>, e: &Error) {
    let mut body = Vec::with_capacity(32 + e.message.len());
    let _ = rmp::encode::write_array_len(&mut body, 4);
    let _ = rmp::encode::write_str(&mut body, e.kind_str());
    let _ = rmp::encode::write_str(&mut body, &e.message);
    match e.retryable {
        Some(b) => {
            let _ = rmp::encode::write_bool(&mut body, b);
        }
        None => {
            let _ = rmp::encode::write_nil(&mut body);
        }
    }
    write_value(&mut body, e.details.as_ref().unwrap_or(&Value::Nil));
    let _ = rmp::encode::write_ext_meta(out, body.len() as u32, EXT_ERROR);
    let _ = out.write_all(&body);
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type R<T> = Result<T, Malformed>;

fn bad<T>(what: impl Into<String>) -> R<T> {
    Err(Malformed(what.into()))
}

/// A reader over one frame.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.buf.len() {
            return bad(format!("truncated: {n} bytes wanted, {} left", self.buf.len()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn marker(&mut self) -> R<Marker> {
        Ok(Marker::from_u8(self.byte()?))
    }

    fn be(&mut self, n: usize) -> R<u64> {
        Ok(self.take(n)?.iter().fold(0u64, |a, b| a << 8 | *b as u64))
    }

    fn str_len(&mut self, m: Marker) -> R<Option<usize>> {
        Ok(Some(match m {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 => self.be(1)? as usize,
            Marker::Str16 => self.be(2)? as usize,
            Marker::Str32 => self.be(4)? as usize,
            _ => return Ok(None),
        }))
    }

    pub fn str(&mut self) -> R<&'a str> {
        let m = self.marker()?;
        let Some(n) = self.str_len(m)? else { return bad(format!("expected a string, found {m:?}")) };
        std::str::from_utf8(self.take(n)?).or_else(|_| bad("string is not UTF-8"))
    }

    fn opt_str(&mut self) -> R<Option<&'a str>> {
        if self.buf.first() == Some(&0xc0) {
            self.buf = &self.buf[1..];
            return Ok(None);
        }
        self.str().map(Some)
    }

    pub fn uint(&mut self) -> R<u64> {
        let m = self.marker()?;
        if m == Marker::U64 {
            return self.be(8);
        }
        match self.int_of(m)? {
            Some(i) if i >= 0 => Ok(i as u64),
            _ => bad("expected an unsigned integer"),
        }
    }

    fn int_of(&mut self, m: Marker) -> R<Option<i64>> {
        Ok(Some(match m {
            Marker::FixPos(n) => n as i64,
            Marker::FixNeg(n) => n as i64,
            Marker::U8 => self.be(1)? as i64,
            Marker::U16 => self.be(2)? as i64,
            Marker::U32 => self.be(4)? as i64,
            Marker::U64 => self.be(8)? as i64,
            Marker::I8 => self.be(1)? as u8 as i8 as i64,
            Marker::I16 => self.be(2)? as u16 as i16 as i64,
            Marker::I32 => self.be(4)? as u32 as i32 as i64,
            Marker::I64 => self.be(8)? as i64,
            _ => return Ok(None),
        }))
    }

    fn pid(&mut self) -> R<Pid> {
        let s = self.str()?;
        s.parse::<Pid>().or_else(|e| bad(e.to_string()))
    }

    pub fn header(&mut self) -> R<Header> {
        let v = self.uint()?;
        if v != VERSION as u64 {
            return bad(format!("frame format {v}, this node reads {VERSION}"));
        }
        let node = self.str()?.to_string();
        let incarnation = self.uint()?;
        Ok(Header { node, incarnation })
    }

    fn who(&mut self) -> R<(Pid, String, Option<String>)> {
        let from = self.pid()?;
        let host = self.str()?.to_string();
        let actor = self.opt_str()?.map(str::to_string);
        Ok((from, host, actor))
    }

    /// The next envelope of the frame.
    pub fn envelope(&mut self) -> R<Envelope> {
        let kind = self.byte()?;
        Ok(match kind {
            K_MSG => {
                let (from, host, actor) = self.who()?;
                let to = self.pid()?;
                let topic = self.str()?.to_string();
                let n = match self.marker()? {
                    Marker::FixArray(n) => n as usize,
                    Marker::Array16 => self.be(2)? as usize,
                    Marker::Array32 => self.be(4)? as usize,
                    m => return bad(format!("expected the payload array, found {m:?}")),
                };
                if n > self.buf.len() {
                    return bad("payload longer than its frame");
                }
                let mut payload = Payload::new();
                for _ in 0..n {
                    payload.push(self.value(0)?);
                }
                Envelope::Msg { from, host, actor, to, topic, payload }
            }
            K_LINK | K_UNLINK | K_MONITOR | K_UNMONITOR => {
                let (from, host, actor) = self.who()?;
                let to = self.pid()?;
                let relation = match kind {
                    K_LINK => Relation::Link,
                    K_UNLINK => Relation::Unlink,
                    K_MONITOR => Relation::Monitor,
                    _ => Relation::Unmonitor,
                };
                Envelope::Relate { from, host, actor, to, relation }
            }
            K_EXIT_MONITOR | K_EXIT_LINK => {
                let from = self.pid()?;
                let to = self.pid()?;
                let result = match self.byte()? {
                    0 => Ok(self.value(0)?),
                    1 => match self.value(0)? {
                        Value::Error(e) => Err((*e).clone()),
                        _ => return bad("an exit error that is not an error value"),
                    },
                    b => return bad(format!("exit result tag {b}")),
                };
                let along = if kind == K_EXIT_MONITOR { Along::Monitor } else { Along::Link };
                Envelope::Exit { from, to, along, result }
            }
            K_TERMINATE => {
                let (from, host, actor) = self.who()?;
                Envelope::Terminate { from, host, actor, to: self.pid()? }
            }
            K_CANCEL => {
                let (from, host, actor) = self.who()?;
                let to = self.pid()?;
                let reason = self.str()?.to_string();
                Envelope::Cancel { from, host, actor, to, reason }
            }
            k => return bad(format!("unknown envelope kind {k}")),
        })
    }

    pub fn value(&mut self, depth: usize) -> R<Value> {
        if depth > MAX_DEPTH {
            return bad(format!("values nested deeper than {MAX_DEPTH}"));
        }
        let m = self.marker()?;
        if let Some(i) = self.int_of(m)? {
            if m == Marker::U64 && i < 0 {
                return bad("integer out of range");
            }
            return Ok(Value::Int(i));
        }
        if let Some(n) = self.str_len(m)? {
            return Ok(Value::Str(Arc::from(self.take(n)?)));
        }
        Ok(match m {
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::F32 => Value::Float(f32::from_bits(self.be(4)? as u32) as f64),
            Marker::F64 => Value::Float(f64::from_bits(self.be(8)?)),
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let n = self.be(match m {
                    Marker::Bin8 => 1,
                    Marker::Bin16 => 2,
                    _ => 4,
                })? as usize;
                Value::Str(Arc::from(self.take(n)?))
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                let n = match m {
                    Marker::FixArray(n) => n as usize,
                    Marker::Array16 => self.be(2)? as usize,
                    _ => self.be(4)? as usize,
                };
                if n > self.buf.len() {
                    return bad("array longer than its frame");
                }
                let mut t = Table::new();
                for _ in 0..n {
                    t.array.push(self.value(depth + 1)?);
                }
                Value::table(t)
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let n = match m {
                    Marker::FixMap(n) => n as usize,
                    Marker::Map16 => self.be(2)? as usize,
                    _ => self.be(4)? as usize,
                };
                if n > self.buf.len() / 2 {
                    return bad("map longer than its frame");
                }
                let mut t = Table::new();
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    if !k.is_valid_key() {
                        return bad(format!("a table key of type {}", k.type_name()));
                    }
                    if matches!(k, Value::Int(i) if i == t.array.len() as i64 + 1) && t.map.is_empty() {
                        t.array.push(v);
                    } else {
                        t.map.push((k, v));
                    }
                }
                Value::table(t)
            }
            Marker::FixExt1 | Marker::FixExt2 | Marker::FixExt4 | Marker::FixExt8 | Marker::FixExt16 | Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                let n = match m {
                    Marker::FixExt1 => 1,
                    Marker::FixExt2 => 2,
                    Marker::FixExt4 => 4,
                    Marker::FixExt8 => 8,
                    Marker::FixExt16 => 16,
                    Marker::Ext8 => self.be(1)? as usize,
                    Marker::Ext16 => self.be(2)? as usize,
                    _ => self.be(4)? as usize,
                };
                let ty = self.byte()? as i8;
                let body = self.take(n)?;
                if ty != EXT_ERROR {
                    return bad(format!("unknown extension type {ty}"));
                }
                let mut r = Reader::new(body);
                if r.marker()? != Marker::FixArray(4) {
                    return bad("an error value is [kind, message, retryable, details]");
                }
                let kind = r.str()?.to_string();
                let message = r.str()?.to_string();
                let retryable = match r.value(depth + 1)? {
                    Value::Bool(b) => Some(b),
                    _ => None,
                };
                let details = match r.value(depth + 1)? {
                    Value::Nil => None,
                    v => Some(v),
                };
                let mut e = Error::with_kind_name(&kind, message);
                e.retryable = retryable;
                e.details = details;
                Value::Error(Arc::new(e))
            }
            m => return bad(format!("unexpected {m:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wippy_runtime::{ErrorKind, HostName};

    fn pid(n: &str, s: u64) -> Pid {
        Pid::from_parts(HostName::new("app:procs"), s).on_node(HostName::new(n))
    }

    #[test]
    fn every_envelope_reads_back() {
        let mut t = Table::new();
        t.push(Value::Int(1));
        t.push(Value::str("two"));
        t.set("k", Value::Float(1.5));
        t.set(Value::Int(10), Value::Bool(false));
        let mut e = Error::new(ErrorKind::NotFound, "gone");
        e.retryable = Some(false);
        e.details = Some(Value::str("d"));
        let payload = wippy_runtime::payload![Value::Nil, i64::MIN, Value::bytes(&[0xff, 0]), Value::table(t), Value::Error(Arc::new(e.clone())), Value::Error(Arc::new(Error::with_kind_name("QuotaExceeded", "q")))];
        let mut out = Vec::new();
        write_header(&mut out, "a", 7);
        write_msg(&mut out, pid("a", 1), "app:procs", Some("alice"), pid("b", 2), "t", &payload);
        write_relate(&mut out, pid("a", 1), "h", None, pid("b", 2), Relation::Unmonitor);
        write_exit(&mut out, pid("b", 2), pid("a", 1), Along::Link, &Err(e.clone()));
        write_cancel(&mut out, pid("a", 1), "h", None, pid("b", 2), "why");
        let mut r = Reader::new(&out);
        assert_eq!(r.header().unwrap(), Header { node: "a".into(), incarnation: 7 });
        match r.envelope().unwrap() {
            Envelope::Msg { from, actor, to, topic, payload: p, .. } => {
                assert_eq!((from, actor.as_deref(), to, topic.as_str()), (pid("a", 1), Some("alice"), pid("b", 2), "t"));
                assert_eq!(p.len(), 6);
                assert_eq!(format!("{:?}", p.iter().collect::<Vec<_>>()), format!("{:?}", payload.iter().collect::<Vec<_>>()));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(r.envelope().unwrap(), Envelope::Relate { relation: Relation::Unmonitor, .. }));
        match r.envelope().unwrap() {
            Envelope::Exit { along: Along::Link, result: Err(x), .. } => assert_eq!((x.kind, x.message.as_str(), x.retryable), (e.kind, "gone", Some(false))),
            e => panic!("{e:?}"),
        }
        assert!(matches!(r.envelope().unwrap(), Envelope::Cancel { reason, .. } if reason == "why"));
        assert!(r.is_empty());
    }

    #[test]
    fn unsigned_integers_read_back_whole() {
        for n in [0u64, 1, 127, 128, 65_535, u32::MAX as u64 + 1, i64::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            let _ = rmp::encode::write_uint(&mut b, n);
            assert_eq!(Reader::new(&b).uint().unwrap(), n);
        }
        let mut b = Vec::new();
        let _ = rmp::encode::write_sint(&mut b, -1);
        assert!(Reader::new(&b).uint().is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut good = Vec::new();
        write_header(&mut good, "a", 1);
        write_msg(&mut good, pid("a", 1), "h", None, pid("b", 2), "t", &wippy_runtime::payload!["x", 1]);
        // every truncation and every single-byte corruption of a good frame
        for cut in 0..good.len() {
            let mut r = Reader::new(&good[..cut]);
            let _ = r.header().and_then(|_| r.envelope());
        }
        for i in 0..good.len() {
            for b in [0x00, 0x7f, 0xc1, 0xdd, 0xdf, 0xff] {
                let mut g = good.clone();
                g[i] = b;
                let mut r = Reader::new(&g);
                let _ = r.header().and_then(|_| r.envelope());
            }
        }
        // a huge declared length is refused before anything is allocated
        let mut r = Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.value(0).is_err());
        // nesting past the bound
        let deep = vec![0x91u8; MAX_DEPTH + 10];
        assert!(Reader::new(&deep).value(0).unwrap_err().0.contains("nested"));
    }
}
