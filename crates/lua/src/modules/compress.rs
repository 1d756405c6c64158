//! `compress` (Wippy's `en/lua/data/compress.md`): `gzip`, `deflate`, `zlib` (flate2),
//! `brotli` (the brotli crate) and `zstd` (the zstd crate, with `train_dict` and
//! `inspect_dict`), each with `encode(data, {level})` and `decode(data, {max_size})`.
//! A decode stops reading past `max_size` (default 128 MiB, at most 1 GiB): a small input
//! that expands without bound is an error, not a node out of memory.

use std::io::{Read, Write};

use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::Error;

use super::{fail, invalid};

type Answer = mlua::Result<(LuaValue, LuaValue)>;

const DEFAULT_MAX: u64 = 128 << 20;
const LIMIT_MAX: u64 = 1 << 30;


fn input(v: &LuaValue) -> Result<Vec<u8>, Error> {
    match v {
        LuaValue::String(s) if !s.as_bytes().is_empty() => Ok(s.as_bytes().to_vec()),
        LuaValue::String(_) => Err(invalid("input is empty")),
        other => Err(invalid(format!("data must be a string, got {}", other.type_name()))),
    }
}

fn opt_int(opts: &LuaValue, key: &str) -> Result<Option<i64>, Error> {
    let LuaValue::Table(t) = opts else { return Ok(None) };
    match t.raw_get::<LuaValue>(key).map_err(|e| invalid(e.to_string()))? {
        LuaValue::Nil => Ok(None),
        LuaValue::Integer(i) => Ok(Some(i)),
        LuaValue::Number(n) if n.fract() == 0.0 => Ok(Some(n as i64)),
        other => Err(invalid(format!("{key} must be an integer, got {}", other.type_name()))),
    }
}

fn opt_bytes(opts: &LuaValue, key: &str) -> Result<Option<Vec<u8>>, Error> {
    let LuaValue::Table(t) = opts else { return Ok(None) };
    match t.raw_get::<LuaValue>(key).map_err(|e| invalid(e.to_string()))? {
        LuaValue::Nil => Ok(None),
        LuaValue::String(s) => Ok(Some(s.as_bytes().to_vec())),
        other => Err(invalid(format!("{key} must be a string, got {}", other.type_name()))),
    }
}

fn level(opts: &LuaValue, lo: i64, hi: i64, default: i64) -> Result<i64, Error> {
    let l = opt_int(opts, "level")?.unwrap_or(default);
    if !(lo..=hi).contains(&l) {
        return Err(invalid(format!("level {l} out of range ({lo}-{hi})")));
    }
    Ok(l)
}

fn max_size(opts: &LuaValue) -> Result<u64, Error> {
    let m = opt_int(opts, "max_size")?.map_or(DEFAULT_MAX as i64, |m| m);
    if m <= 0 || m as u64 > LIMIT_MAX {
        return Err(invalid(format!("max_size must be from 1 to {LIMIT_MAX}")));
    }
    Ok(m as u64)
}

/// Read `r` to its end, failing past `max` bytes.
fn bounded(r: impl Read, max: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    r.take(max + 1).read_to_end(&mut out).map_err(|e| invalid(format!("invalid compressed data: {e}")))?;
    if out.len() as u64 > max {
        return Err(Error::internal(format!("decompressed size exceeds the limit of {max} bytes")).with_retryable(false));
    }
    Ok(out)
}

fn flate_level(l: i64) -> flate2::Compression {
    flate2::Compression::new(l as u32)
}

fn written(r: std::io::Result<Vec<u8>>) -> Result<Vec<u8>, Error> {
    r.map_err(|e| Error::internal(format!("compress: {e}")).with_retryable(false))
}

fn encode(algo: &str, data: &[u8], opts: &LuaValue) -> Result<Vec<u8>, Error> {
    match algo {
        "gzip" | "deflate" | "zlib" => {
            let l = flate_level(level(opts, 1, 9, 6)?);
            written(match algo {
                "gzip" => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), l);
                    e.write_all(data).and_then(|_| e.finish())
                }
                "deflate" => {
                    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), l);
                    e.write_all(data).and_then(|_| e.finish())
                }
                _ => {
                    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), l);
                    e.write_all(data).and_then(|_| e.finish())
                }
            })
        }
        "brotli" => {
            let l = level(opts, 0, 11, 6)?;
            let mut out = Vec::new();
            {
                // (the writer finishes the stream when it is dropped)
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, l as u32, 22);
                w.write_all(data).map_err(|e| Error::internal(format!("compress: {e}")).with_retryable(false))?;
            }
            Ok(out)
        }
        _ => {
            let l = level(opts, 1, 22, 3)?;
            match opt_bytes(opts, "dict")? {
                Some(dict) => {
                    let mut c = zstd::bulk::Compressor::with_dictionary(l as i32, &dict).map_err(|e| invalid(format!("invalid dictionary: {e}")))?;
                    written(c.compress(data))
                }
                None => written(zstd::bulk::compress(data, l as i32)),
            }
        }
    }
}

fn decode(algo: &str, data: &[u8], opts: &LuaValue) -> Result<Vec<u8>, Error> {
    let max = max_size(opts)?;
    match algo {
        "gzip" => bounded(flate2::read::MultiGzDecoder::new(data), max),
        "deflate" => bounded(flate2::read::DeflateDecoder::new(data), max),
        "zlib" => bounded(flate2::read::ZlibDecoder::new(data), max),
        "brotli" => bounded(brotli::Decompressor::new(data, 4096), max),
        _ => match opt_bytes(opts, "dict")? {
            Some(dict) => {
                let d = zstd::stream::read::Decoder::with_dictionary(std::io::BufReader::new(data), &dict).map_err(|e| invalid(format!("invalid dictionary: {e}")))?;
                bounded(d, max)
            }
            None => bounded(zstd::stream::read::Decoder::new(data).map_err(|e| invalid(format!("invalid compressed data: {e}")))?, max),
        },
    }
}

fn answer(lua: &Lua, r: Result<Vec<u8>, Error>) -> Answer {
    match r {
        Ok(b) => Ok((LuaValue::String(lua.create_string(b)?), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

fn train_dict(lua: &Lua, (samples, opts): (LuaValue, LuaValue)) -> Answer {
    let r = (|| -> Result<Vec<u8>, Error> {
        let LuaValue::Table(t) = &samples else { return Err(invalid("samples must be a list of strings")) };
        let mut list = Vec::new();
        for v in t.clone().sequence_values::<LuaValue>() {
            match v.map_err(|e| invalid(e.to_string()))? {
                LuaValue::String(s) => list.push(s.as_bytes().to_vec()),
                _ => return Err(invalid("samples must be a list of strings")),
            }
        }
        if !list.iter().any(|s| s.len() >= 8) {
            return Err(invalid("at least one sample of 8 bytes or more is needed"));
        }
        let size = opt_int(&opts, "size")?.unwrap_or(114_688);
        if !(256..=1_048_576).contains(&size) {
            return Err(invalid(format!("size {size} out of range (256-1048576)")));
        }
        zstd::dict::from_samples(&list, size as usize).map_err(|e| invalid(format!("cannot train a dictionary: {e}")))
    })();
    answer(lua, r)
}

fn inspect_dict(lua: &Lua, dict: LuaValue) -> Answer {
    let LuaValue::String(d) = &dict else { return fail(lua, invalid("dict must be a string")) };
    let b = d.as_bytes();
    // a zstd dictionary: magic 0xEC30A437, then its 32-bit ID (little-endian)
    if b.len() < 8 || b[..4] != [0x37, 0xA4, 0x30, 0xEC] {
        return fail(lua, invalid("not a zstd dictionary"));
    }
    let t = lua.create_table()?;
    t.raw_set("id", u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as i64)?;
    t.raw_set("content_size", b.len() as i64)?;
    Ok((LuaValue::Table(t), LuaValue::Nil))
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for algo in ["gzip", "deflate", "zlib", "brotli", "zstd"] {
        let m = lua.create_table()?;
        m.raw_set(
            "encode",
            lua.create_function(move |lua, (data, opts): (LuaValue, LuaValue)| answer(lua, input(&data).and_then(|d| encode(algo, &d, &opts))))?,
        )?;
        m.raw_set(
            "decode",
            lua.create_function(move |lua, (data, opts): (LuaValue, LuaValue)| answer(lua, input(&data).and_then(|d| decode(algo, &d, &opts))))?,
        )?;
        if algo == "zstd" {
            m.raw_set("train_dict", lua.create_function(train_dict)?)?;
            m.raw_set("inspect_dict", lua.create_function(inspect_dict)?)?;
        }
        t.raw_set(algo, m)?;
    }
    Ok(t)
}
