//! `hash` (Wippy's `en/lua/security/hash.md`): MD5, SHA-1, SHA-256 and SHA-512 digests and
//! their HMACs (lowercase hex, or the raw bytes when the last argument is `true`), the
//! non-cryptographic FNV-1 hashes as integers, and PBKDF2 (HMAC-SHA256 or -SHA512) key
//! derivation, with the RustCrypto crates. Every function answers `value, nil`; bad input
//! is `nil, err` (Invalid), never a raise.

use digest::Digest;
use hmac::{Mac, SimpleHmac};
use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::Error;

use super::base64::bytes_arg;
use super::fail;

type Answer = mlua::Result<(LuaValue, LuaValue)>;

/// A digest as Wippy gives it: lowercase hex, or the bytes themselves when `raw` is true.
fn answer(lua: &Lua, bytes: &[u8], raw: &LuaValue) -> Answer {
    let s = if matches!(raw, LuaValue::Boolean(true)) { lua.create_string(bytes)? } else { lua.create_string(hex::encode(bytes))? };
    Ok((LuaValue::String(s), LuaValue::Nil))
}

fn digest<D: Digest>(lua: &Lua, data: &LuaValue, raw: &LuaValue) -> Answer {
    match bytes_arg(data, "data") {
        Ok(b) => answer(lua, &D::digest(&b), raw),
        Err(e) => fail(lua, e),
    }
}

pub(super) fn hmac<D: Digest + digest::core_api::BlockSizeUser>(lua: &Lua, data: &LuaValue, secret: &LuaValue, raw: &LuaValue) -> Answer {
    let (data, secret) = match (bytes_arg(data, "data"), bytes_arg(secret, "secret")) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) | (_, Err(e)) => return fail(lua, e),
    };
    // (an HMAC takes a key of any length: new_from_slice cannot fail)
    let Ok(mut mac) = SimpleHmac::<D>::new_from_slice(&secret) else { return fail(lua, Error::invalid("invalid secret")) };
    mac.update(&data);
    answer(lua, &mac.finalize().into_bytes(), raw)
}

/// FNV-1 (multiply, then xor), as Go's `hash/fnv` `New32`/`New64`.
fn fnv1_32(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &c| h.wrapping_mul(0x0100_0193) ^ u32::from(c))
}

fn fnv1_64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| h.wrapping_mul(0x0000_0100_0000_01b3) ^ u64::from(c))
}

pub(super) fn pbkdf2(lua: &Lua, (password, salt, iterations, length, algo): (LuaValue, LuaValue, LuaValue, LuaValue, LuaValue)) -> Answer {
    const MAX_ITERATIONS: i64 = 10_000_000;
    const MAX_LENGTH: i64 = 1 << 20;
    let (password, salt) = match (bytes_arg(&password, "password"), bytes_arg(&salt, "salt")) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => return fail(lua, e),
    };
    if password.is_empty() || salt.is_empty() {
        return fail(lua, Error::invalid("password and salt must not be empty"));
    }
    let int = |v: &LuaValue| match v {
        LuaValue::Integer(i) => Some(*i),
        LuaValue::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    };
    let Some(iterations) = int(&iterations).filter(|n| (1..=MAX_ITERATIONS).contains(n)) else {
        return fail(lua, Error::invalid(format!("iterations must be an integer from 1 to {MAX_ITERATIONS}")));
    };
    let Some(length) = int(&length).filter(|n| (1..=MAX_LENGTH).contains(n)) else {
        return fail(lua, Error::invalid(format!("key_length must be an integer from 1 to {MAX_LENGTH}")));
    };
    let algo = match &algo {
        LuaValue::Nil => "sha256".to_string(),
        LuaValue::String(s) => s.to_string_lossy().to_ascii_lowercase(),
        other => return fail(lua, Error::invalid(format!("hash must be a string, got {}", other.type_name()))),
    };
    let mut key = vec![0u8; length as usize];
    match algo.as_str() {
        "sha256" => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&password, &salt, iterations as u32, &mut key),
        "sha512" => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(&password, &salt, iterations as u32, &mut key),
        other => return fail(lua, Error::invalid(format!("unsupported hash {other:?} (sha256 or sha512)"))),
    }
    Ok((LuaValue::String(lua.create_string(key)?), LuaValue::Nil))
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    type DigestFn = fn(&Lua, &LuaValue, &LuaValue) -> Answer;
    let digests: [(&str, DigestFn); 4] =
        [("md5", digest::<md5::Md5>), ("sha1", digest::<sha1::Sha1>), ("sha256", digest::<sha2::Sha256>), ("sha512", digest::<sha2::Sha512>)];
    for (name, f) in digests {
        t.raw_set(name, lua.create_function(move |lua, (data, raw): (LuaValue, LuaValue)| f(lua, &data, &raw))?)?;
    }
    type HmacFn = fn(&Lua, &LuaValue, &LuaValue, &LuaValue) -> Answer;
    let hmacs: [(&str, HmacFn); 4] =
        [("hmac_md5", hmac::<md5::Md5>), ("hmac_sha1", hmac::<sha1::Sha1>), ("hmac_sha256", hmac::<sha2::Sha256>), ("hmac_sha512", hmac::<sha2::Sha512>)];
    for (name, f) in hmacs {
        t.raw_set(name, lua.create_function(move |lua, (data, secret, raw): (LuaValue, LuaValue, LuaValue)| f(lua, &data, &secret, &raw))?)?;
    }
    t.raw_set(
        "fnv32",
        lua.create_function(|lua, data: LuaValue| match bytes_arg(&data, "data") {
            Ok(b) => Ok((LuaValue::Integer(i64::from(fnv1_32(&b))), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        })?,
    )?;
    // (the 64-bit hash is a Lua integer: its bits, so string.format("%x") prints it whole)
    t.raw_set(
        "fnv64",
        lua.create_function(|lua, data: LuaValue| match bytes_arg(&data, "data") {
            Ok(b) => Ok((LuaValue::Integer(fnv1_64(&b) as i64), LuaValue::Nil)),
            Err(e) => fail(lua, e),
        })?,
    )?;
    t.raw_set("pbkdf2", lua.create_function(pbkdf2)?)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1_matches_the_reference_vectors() {
        // FNV-1 (not 1a) of "" and "a", from the FNV reference test suite
        assert_eq!((fnv1_32(b""), fnv1_32(b"a")), (0x811c9dc5, 0x050c5d7e));
        assert_eq!((fnv1_64(b""), fnv1_64(b"a")), (0xcbf29ce484222325, 0xaf63bd4c8601b7be));
    }
}
