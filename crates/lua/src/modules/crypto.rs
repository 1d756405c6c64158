//! `crypto` (Wippy's `en/lua/security/crypto.md`): `random.bytes|string|uuid`,
//! `hmac.sha256|sha512` (hex), `encrypt`/`decrypt` `.aes` (GCM, 16/24/32-byte keys) and
//! `.chacha20` (ChaCha20-Poly1305, 32-byte key), each with the 12-byte nonce prepended and
//! optional additional data; `jwt.encode(claims, key, alg?)` and `jwt.verify(token, key,
//! alg?, require_exp?)` (HS256/384/512, RS256 with PEM keys; `_header` in the claims adds
//! header fields; an unknown algorithm encodes as HS256, as Wippy's); `pbkdf2`; and
//! `constant_time_compare`. RustCrypto's AEADs and the jsonwebtoken crate do the work.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use mlua::{Lua, Table, Value as LuaValue};
use wippy_runtime::Error;

use super::{fail, invalid};

type Answer = mlua::Result<(LuaValue, LuaValue)>;

const MAX_RANDOM: i64 = 1 << 20;
const NONCE: usize = 12;
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";


fn internal(m: impl Into<String>) -> Error {
    Error::internal(m).with_retryable(false)
}

fn bytes(v: &LuaValue, what: &str) -> Result<Vec<u8>, Error> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(n) => Ok(n.to_string().into_bytes()),
        LuaValue::Number(n) => Ok(n.to_string().into_bytes()),
        other => Err(invalid(format!("{what} must be a string, got {}", other.type_name()))),
    }
}

fn random_fill(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|e| internal(format!("random source: {e}")))
}

fn length(v: &LuaValue) -> Result<usize, Error> {
    let n = match v {
        LuaValue::Integer(i) => *i,
        LuaValue::Number(n) if n.fract() == 0.0 => *n as i64,
        _ => return Err(invalid("length must be an integer")),
    };
    if !(1..=MAX_RANDOM).contains(&n) {
        return Err(invalid(format!("invalid length {n} (1 to {MAX_RANDOM})")));
    }
    Ok(n as usize)
}

fn string(lua: &Lua, b: &[u8]) -> Answer {
    Ok((LuaValue::String(lua.create_string(b)?), LuaValue::Nil))
}

fn answer(lua: &Lua, r: Result<Vec<u8>, Error>) -> Answer {
    match r {
        Ok(b) => string(lua, &b),
        Err(e) => fail(lua, e),
    }
}

/// `nonce || ciphertext` under `cipher`.
fn seal<C: Aead + AeadCore<NonceSize = U12>>(cipher: &C, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE];
    random_fill(&mut nonce)?;
    let ct = cipher.encrypt(GenericArray::from_slice(&nonce), Payload { msg: data, aad }).map_err(|_| internal("encryption failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open<C: Aead + AeadCore<NonceSize = U12>>(cipher: &C, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    if data.len() < NONCE {
        return Err(internal("decryption failed: ciphertext too short"));
    }
    let (nonce, ct) = data.split_at(NONCE);
    cipher.decrypt(GenericArray::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| internal("decryption failed"))
}

/// Seal or open `data` with cipher `C` under `key` (its size already checked).
fn crypt<C: Aead + AeadCore<NonceSize = U12> + KeyInit>(encrypt: bool, key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let c = C::new_from_slice(key).map_err(|_| invalid("invalid key size"))?;
    if encrypt {
        seal(&c, data, aad)
    } else {
        open(&c, data, aad)
    }
}

fn aes(encrypt: bool, data: &[u8], key: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    type Aes192Gcm = aes_gcm::AesGcm<aes_gcm::aes::Aes192, U12>;
    match key.len() {
        16 => crypt::<aes_gcm::Aes128Gcm>(encrypt, key, data, aad),
        24 => crypt::<Aes192Gcm>(encrypt, key, data, aad),
        32 => crypt::<aes_gcm::Aes256Gcm>(encrypt, key, data, aad),
        0 => Err(invalid("key is empty")),
        n => Err(invalid(format!("invalid key size {n} (AES takes 16, 24 or 32 bytes)"))),
    }
}

fn chacha(encrypt: bool, data: &[u8], key: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    if key.is_empty() {
        return Err(invalid("key is empty"));
    }
    if key.len() != 32 {
        return Err(invalid(format!("invalid key size {} (ChaCha20-Poly1305 takes 32 bytes)", key.len())));
    }
    crypt::<chacha20poly1305::ChaCha20Poly1305>(encrypt, key, data, aad)
}

type Cipher = fn(bool, &[u8], &[u8], &[u8]) -> Result<Vec<u8>, Error>;

fn aead_table(lua: &Lua, encrypt: bool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, f) in [("aes", aes as Cipher), ("chacha20", chacha as Cipher)] {
        t.raw_set(
            name,
            lua.create_function(move |lua, (data, key, aad): (LuaValue, LuaValue, LuaValue)| {
                let r = (|| {
                    let data = bytes(&data, "data")?;
                    let key = bytes(&key, "key")?;
                    let aad = if aad.is_nil() { Vec::new() } else { bytes(&aad, "aad")? };
                    f(encrypt, &data, &key, &aad)
                })();
                answer(lua, r)
            })?,
        )?;
    }
    Ok(t)
}

fn algorithm(v: &LuaValue, fallback: bool) -> Result<jsonwebtoken::Algorithm, Error> {
    use jsonwebtoken::Algorithm::*;
    let name = match v {
        LuaValue::Nil => return Ok(HS256),
        LuaValue::String(s) => s.to_string_lossy().to_ascii_uppercase(),
        other => return Err(invalid(format!("alg must be a string, got {}", other.type_name()))),
    };
    Ok(match name.as_str() {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        _ if fallback => HS256,
        other => return Err(invalid(format!("unsupported algorithm {other} (HS256, HS384, HS512, RS256)"))),
    })
}

fn jwt_encode(lua: &Lua, (claims, key, alg): (LuaValue, LuaValue, LuaValue)) -> Answer {
    let r = (|| -> Result<String, Error> {
        let key = bytes(&key, "key")?;
        if key.is_empty() {
            return Err(invalid("key is empty"));
        }
        let alg = algorithm(&alg, true)?;
        let LuaValue::Table(_) = &claims else { return Err(invalid("payload must be a table")) };
        let v = crate::current::with(|_, st| Ok(crate::convert::to_value(&claims, &st.shard.marks, "payload")))
            .map_err(|e| internal(e.to_string()))?
            .map_err(invalid)?;
        let mut json = wippy_http::json::to_json(&v);
        let mut header = jsonwebtoken::Header::new(alg);
        if let Some(serde_json::Value::Object(extra)) = json.as_object_mut().and_then(|m| m.remove("_header")) {
            if let Some(kid) = extra.get("kid").and_then(|k| k.as_str()) {
                header.kid = Some(kid.to_string());
            }
            if let Some(typ) = extra.get("typ").and_then(|k| k.as_str()) {
                header.typ = Some(typ.to_string());
            }
            if let Some(cty) = extra.get("cty").and_then(|k| k.as_str()) {
                header.cty = Some(cty.to_string());
            }
        }
        if !json.is_object() {
            // (an empty Lua table is an empty list to the JSON encoder)
            json = serde_json::Value::Object(Default::default());
        }
        let enc = match alg {
            jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&key).map_err(|e| invalid(format!("invalid RSA private key: {e}")))?,
            _ => jsonwebtoken::EncodingKey::from_secret(&key),
        };
        jsonwebtoken::encode(&header, &json, &enc).map_err(|e| internal(format!("jwt: {e}")))
    })();
    match r {
        Ok(t) => string(lua, t.as_bytes()),
        Err(e) => fail(lua, e),
    }
}

fn jwt_verify(lua: &Lua, (token, key, alg, require_exp): (LuaValue, LuaValue, LuaValue, LuaValue)) -> Answer {
    let r = (|| -> Result<serde_json::Value, Error> {
        let token = bytes(&token, "token")?;
        let token = std::str::from_utf8(&token).map_err(|_| invalid("token is not text"))?;
        let key = bytes(&key, "key")?;
        if key.is_empty() {
            return Err(invalid("key is empty"));
        }
        let alg = algorithm(&alg, false)?;
        let require_exp = !matches!(require_exp, LuaValue::Boolean(false));
        let mut v = jsonwebtoken::Validation::new(alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.required_spec_claims = if require_exp { ["exp".to_string()].into_iter().collect() } else { Default::default() };
        let dec = match alg {
            jsonwebtoken::Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(&key).map_err(|e| invalid(format!("invalid RSA public key: {e}")))?,
            _ => jsonwebtoken::DecodingKey::from_secret(&key),
        };
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &dec, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            internal(match e.kind() {
                K::ExpiredSignature => "token has invalid claims: token is expired".to_string(),
                K::ImmatureSignature => "token has invalid claims: token is not valid yet".to_string(),
                K::MissingRequiredClaim(c) => format!("token has invalid claims: token is missing required claim: {c} claim is required"),
                K::InvalidSignature => "token signature is invalid".to_string(),
                K::InvalidAlgorithm => "token is unverifiable: signing method is invalid".to_string(),
                _ => format!("token is malformed: {e}"),
            })
        })?;
        Ok(data.claims)
    })();
    match r {
        Ok(claims) => Ok((crate::convert::from_value(lua, &wippy_http::json::from_json(&claims))?, LuaValue::Nil)),
        Err(e) => fail(lua, e),
    }
}

pub(crate) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let random = lua.create_table()?;
    random.raw_set(
        "bytes",
        lua.create_function(|lua, n: LuaValue| {
            answer(lua, length(&n).and_then(|n| {
                let mut b = vec![0u8; n];
                random_fill(&mut b).map(|_| b)
            }))
        })?,
    )?;
    random.raw_set(
        "string",
        lua.create_function(|lua, (n, charset): (LuaValue, LuaValue)| {
            let r = (|| {
                let n = length(&n)?;
                let set = match &charset {
                    LuaValue::Nil => ALNUM.to_vec(),
                    other => bytes(other, "charset")?,
                };
                if set.is_empty() {
                    return Err(invalid("charset is empty"));
                }
                let mut b = vec![0u8; n];
                random_fill(&mut b)?;
                Ok(b.into_iter().map(|x| set[x as usize % set.len()]).collect())
            })();
            answer(lua, r)
        })?,
    )?;
    random.raw_set("uuid", lua.create_function(|lua, ()| string(lua, ::uuid::Uuid::new_v4().to_string().as_bytes()))?)?;
    t.raw_set("random", random)?;
    let hmac = lua.create_table()?;
    hmac.raw_set("sha256", lua.create_function(|lua, (key, data): (LuaValue, LuaValue)| super::hash::hmac::<sha2::Sha256>(lua, &data, &key, &LuaValue::Nil))?)?;
    hmac.raw_set("sha512", lua.create_function(|lua, (key, data): (LuaValue, LuaValue)| super::hash::hmac::<sha2::Sha512>(lua, &data, &key, &LuaValue::Nil))?)?;
    t.raw_set("hmac", hmac)?;
    t.raw_set("encrypt", aead_table(lua, true)?)?;
    t.raw_set("decrypt", aead_table(lua, false)?)?;
    let jwt = lua.create_table()?;
    jwt.raw_set("encode", lua.create_function(jwt_encode)?)?;
    jwt.raw_set("verify", lua.create_function(jwt_verify)?)?;
    t.raw_set("jwt", jwt)?;
    t.raw_set("pbkdf2", lua.create_function(super::hash::pbkdf2)?)?;
    t.raw_set(
        "constant_time_compare",
        lua.create_function(|_, (a, b): (mlua::LuaString, mlua::LuaString)| {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            Ok(a.len() == b.len() && a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0)
        })?,
    )?;
    Ok(t)
}
