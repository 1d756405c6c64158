//! JSON straight between a Lua stack and text: `json.encode`, `res:write_json` and an HTTP
//! handler's returned value write plain data from the stack slots, the text `modules::json`'s
//! encoder gives, without building a `serde_json::Value` through mlua (a protected call and a
//! registry reference per table pair, then a tree); `json.decode` pushes a parsed document
//! with the C API. The encoder declines whatever `modules::json` words as an error, and the
//! cases whose text needs more than the stack (a userdata's `__tostring` runs Lua code; keys
//! that are not UTF-8 collapse into one another there); the decoder leaves errors to it too:
//! the caller then takes the mlua path, which answers them.
//!
//! Must never: raise while encoding (no allocation on the Lua side, no metamethod), hold an
//! owned Rust value in a frame a push may raise through, or give a text or a table the mlua
//! path would not.

use std::os::raw::c_int;

use mlua::ffi;

/// Deeper than this, encoding refuses (SPEC §12.10): a cycle ends here too.
pub(crate) const MAX_DEPTH: usize = 128;
/// 2^53: below it a float64 holds every integer exactly.
pub(crate) const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

thread_local! {
    /// The text of the last [`encode_kept`] on this thread, its capacity kept for the next.
    static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The JSON text of the value at `idx` in a buffer of this thread's, valid until the next
/// call on this thread (so a push of it that raises leaves nothing to drop), or `None` where
/// [`encode_at`] declines.
///
/// # Safety
/// As [`encode_at`]; the slice is not held across another call of this function on the
/// thread (it is that call's buffer).
pub(crate) unsafe fn encode_kept(l: *mut ffi::lua_State, idx: c_int) -> Option<&'static [u8]> {
    OUT.with_borrow_mut(|out| {
        if out.capacity() > 1 << 16 {
            *out = Vec::new();
        }
        out.clear();
        // SAFETY: the caller's contract.
        let ok = unsafe { encode_at(l, idx, out) };
        // SAFETY: the buffer is thread-local and changed only by the next call here.
        ok.then(|| unsafe { std::slice::from_raw_parts(out.as_ptr(), out.len()) })
    })
}

/// `json.encode` as a C function: the text from the stack, or the mlua encoder's answer
/// (`slow`, called with the same arguments) where the stack declines.
pub(crate) fn encoder(lua: &mlua::Lua, slow: mlua::Function) -> mlua::Result<mlua::Function> {
    // SAFETY: pushcclosure pops the one value exec_raw pushed and pushes the closure.
    unsafe { lua.exec_raw(slow, |l| ffi::lua_pushcclosure(l, encode, 1)) }
}

/// # Safety
/// A C closure made by [`encoder`].
unsafe extern "C-unwind" fn encode(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua's calling convention (LUA_MINSTACK free slots); nothing owned is alive
    // when the push or the call raises.
    unsafe {
        if ffi::lua_gettop(l) >= 1 {
            if let Some(text) = encode_kept(l, 1) {
                ffi::lua_pushlstring(l, text.as_ptr() as *const _, text.len());
                ffi::lua_pushnil(l);
                return 2;
            }
        }
        super::raw::call_upvalue(l)
    }
}

/// A C function `f(v)`: `v` as JSON text handed to `answer` (its answer pushed as a
/// boolean), or `false` where the stack encoder declines.
pub(crate) fn encode_into(lua: &mlua::Lua, answer: fn(&[u8]) -> bool) -> mlua::Result<mlua::Function> {
    // SAFETY: pushcclosure pops the one value exec_raw pushed and pushes the closure.
    unsafe { lua.exec_raw(mlua::LightUserData(answer as *mut std::ffi::c_void), |l| ffi::lua_pushcclosure(l, encode_to, 1)) }
}

/// # Safety
/// A C closure made by [`encode_into`].
unsafe extern "C-unwind" fn encode_to(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua's calling convention; upvalue 1 is the `fn(&[u8]) -> bool` it was made with.
    unsafe {
        let answer: fn(&[u8]) -> bool = std::mem::transmute(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)));
        let done = ffi::lua_gettop(l) >= 1 && encode_kept(l, 1).is_some_and(answer);
        ffi::lua_pushboolean(l, done as c_int);
        1
    }
}

/// `json.decode` as a C function: a non-empty string that parses is pushed straight onto the
/// stack (tables made at their final size, keys in the parsed order, as the mlua decoder
/// makes them); anything else is `slow`'s (called with the same arguments), which words
/// the error.
pub(crate) fn decoder(lua: &mlua::Lua, slow: mlua::Function) -> mlua::Result<mlua::Function> {
    // SAFETY: pushcclosure pops the one value exec_raw pushed and pushes the closure.
    unsafe { lua.exec_raw(slow, |l| ffi::lua_pushcclosure(l, decode, 1)) }
}

thread_local! {
    /// The document [`decode`] is pushing: kept here, not in a frame of its own, so that a
    /// push that raises (a memory limit) jumps over frames that own nothing; the next
    /// decode on the thread drops it.
    static PARSED: std::cell::UnsafeCell<Option<serde_json::Value>> = const { std::cell::UnsafeCell::new(None) };
}

/// # Safety
/// A C closure made by [`decoder`].
unsafe extern "C-unwind" fn decode(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua's calling convention; the parsed document lives in PARSED (see there)
    // while it is pushed, so nothing owned is alive in these frames when a push raises.
    unsafe {
        if ffi::lua_gettop(l) >= 1 && ffi::lua_type(l, 1) == ffi::LUA_TSTRING {
            let text = super::raw::bytes_at(l, 1);
            if !text.is_empty() {
                if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(text) {
                    let doc: *const serde_json::Value = PARSED.with(|p| {
                        let slot = &mut *p.get();
                        &*slot.insert(doc) as *const serde_json::Value
                    });
                    let top = ffi::lua_gettop(l);
                    let pushed = push_json(l, &*doc);
                    PARSED.with(|p| *p.get() = None);
                    if pushed {
                        ffi::lua_pushnil(l);
                        return 2;
                    }
                    ffi::lua_settop(l, top);
                }
            }
        }
        super::raw::call_upvalue(l)
    }
}

/// Push `j` as the mlua decoder makes it (`false`: the stack cannot grow; nothing usable
/// was pushed).
///
/// # Safety
/// `l` is the running thread; `j` outlives the call and owns nothing a raise would skip
/// (see PARSED).
unsafe fn push_json(l: *mut ffi::lua_State, j: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    // SAFETY: the caller's contract; each push has its slot checked first.
    unsafe {
        if ffi::lua_checkstack(l, 3) == 0 {
            return false;
        }
        match j {
            J::Null => ffi::lua_pushnil(l),
            J::Bool(b) => ffi::lua_pushboolean(l, *b as c_int),
            J::Number(n) => match n.as_i64() {
                Some(i) => ffi::lua_pushinteger(l, i),
                None => ffi::lua_pushnumber(l, n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => {
                ffi::lua_pushlstring(l, s.as_ptr() as *const _, s.len());
            }
            J::Array(items) => {
                ffi::lua_createtable(l, items.len().min(c_int::MAX as usize) as c_int, 0);
                for (i, item) in items.iter().enumerate() {
                    if !push_json(l, item) {
                        return false;
                    }
                    ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
                }
            }
            J::Object(m) => {
                ffi::lua_createtable(l, 0, m.len().min(c_int::MAX as usize) as c_int);
                for (k, item) in m {
                    ffi::lua_pushlstring(l, k.as_ptr() as *const _, k.len());
                    if !push_json(l, item) {
                        return false;
                    }
                    ffi::lua_rawset(l, -3);
                }
            }
        }
    }
    true
}

/// Append the JSON text of the value at `idx` to `out`; `false` (with `out` partly written)
/// when the mlua path must answer instead.
///
/// # Safety
/// `l` is the running thread (inside a C function) or a thread not running; `idx` a valid
/// index. No Lua code runs and nothing is allocated on the Lua side.
pub(crate) unsafe fn encode_at(l: *mut ffi::lua_State, idx: c_int, out: &mut Vec<u8>) -> bool {
    // SAFETY: the caller's contract.
    unsafe { value(l, ffi::lua_absindex(l, idx), out, 0) }
}

/// # Safety
/// As [`encode_at`], `idx` absolute.
unsafe fn value(l: *mut ffi::lua_State, idx: c_int, out: &mut Vec<u8>, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    // SAFETY: the caller's contract.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL => out.extend_from_slice(b"null"),
            ffi::LUA_TBOOLEAN => out.extend_from_slice(if ffi::lua_toboolean(l, idx) != 0 { b"true" } else { b"false" }),
            ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => integer(out, ffi::lua_tointeger(l, idx)),
            ffi::LUA_TNUMBER => float(out, ffi::lua_tonumber(l, idx)),
            ffi::LUA_TSTRING => string(out, super::raw::bytes_at(l, idx)),
            ffi::LUA_TTABLE => return table(l, idx, out, depth),
            _ => return false,
        }
    }
    true
}

/// (itoa, which serde_json writes integers with, without a serializer around it)
fn integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// As Wippy's encoder writes numbers (every Lua number is a float64 there): Inf and NaN as
/// null, a whole float as an integer ("5", not "5.0"), any other float as is.
fn float(out: &mut Vec<u8>, n: f64) {
    if !n.is_finite() {
        out.extend_from_slice(b"null");
    } else if n.fract() == 0.0 && n.abs() < MAX_EXACT {
        integer(out, n as i64);
    } else {
        // (writing into a Vec does not fail)
        let _ = serde_json::to_writer(&mut *out, &n);
    }
}

/// A string (bytes that are not UTF-8 replaced, as `to_string_lossy` does).
fn string(out: &mut Vec<u8>, b: &[u8]) {
    // Printable ASCII without a quote or a backslash (most keys and values) needs no
    // escape: copied as it is.
    if b.iter().all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\') {
        out.reserve(b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let _ = match super::raw::utf8(b) {
        Some(s) => serde_json::to_writer(&mut *out, s),
        None => serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(b)),
    };
}

/// An empty table and keys 1..n without gaps: an array; string keys only: an object, its
/// keys in byte order (a `serde_json::Map` is ordered so); anything else declined.
///
/// # Safety
/// As [`encode_at`], `t` absolute.
unsafe fn table(l: *mut ffi::lua_State, t: c_int, out: &mut Vec<u8>, depth: usize) -> bool {
    // SAFETY: the caller's contract; every push below has its slot checked first, and the
    // keys kept on the stack keep their bytes alive (nothing runs that could collect them).
    unsafe {
        let base = ffi::lua_gettop(l);
        let ok = 'walk: {
            if ffi::lua_checkstack(l, 3) == 0 {
                break 'walk false;
            }
            // One walk: integer keys counted, each string key left on the stack below the
            // walk's key (the walk goes on from the copy on top).
            let (mut ints, mut max) = (0usize, 0i64);
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, t) != 0 {
                ffi::lua_pop(l, 1);
                match ffi::lua_type(l, -1) {
                    ffi::LUA_TNUMBER if ffi::lua_isinteger(l, -1) != 0 && ffi::lua_tointeger(l, -1) >= 1 => {
                        ints += 1;
                        max = max.max(ffi::lua_tointeger(l, -1));
                    }
                    ffi::LUA_TSTRING if ffi::lua_checkstack(l, 3) != 0 => ffi::lua_pushvalue(l, -1),
                    _ => break 'walk false,
                }
            }
            let top = ffi::lua_gettop(l);
            if top == base {
                if max as usize != ints {
                    break 'walk false;
                }
                out.push(b'[');
                for i in 1..=ints {
                    if i > 1 {
                        out.push(b',');
                    }
                    ffi::lua_rawgeti(l, t, i as ffi::lua_Integer);
                    if !value(l, top + 1, out, depth + 1) {
                        break 'walk false;
                    }
                    ffi::lua_settop(l, top);
                }
                out.push(b']');
                break 'walk true;
            }
            if ints != 0 {
                break 'walk false;
            }
            let mut keys = Vec::with_capacity((top - base) as usize);
            for k in base + 1..=top {
                let b = super::raw::bytes_at(l, k);
                if super::raw::utf8(b).is_none() {
                    break 'walk false;
                }
                keys.push((b, k));
            }
            keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, &(name, k)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, name);
                out.push(b':');
                ffi::lua_pushvalue(l, k);
                ffi::lua_rawget(l, t);
                if !value(l, top + 1, out, depth + 1) {
                    break 'walk false;
                }
                ffi::lua_settop(l, top);
            }
            out.push(b'}');
            true
        };
        ffi::lua_settop(l, base);
        ok
    }
}

#[cfg(test)]
mod tests {
    use mlua::{Lua, Value as LuaValue};

    /// The stack's text, or `None` where it declines.
    fn fast(lua: &Lua, v: &LuaValue) -> Option<String> {
        let mut out = Vec::new();
        let mut ok = false;
        // SAFETY: exec_raw pushed `v` at index 1; encode_at raises nothing.
        unsafe { lua.exec_raw::<()>(v.clone(), |l| ok = super::encode_at(l, 1, &mut out)) }.unwrap();
        ok.then(|| String::from_utf8(out).unwrap())
    }

    /// Every value the chunk returns: the stack's text is the mlua encoder's, and where
    /// the stack declines, the mlua encoder errs (or the case is one it words: a userdata,
    /// keys that are not UTF-8).
    fn check(lua: &Lua, chunk: &str, declines: bool) {
        let vs: mlua::MultiValue = lua.load(chunk).eval().unwrap();
        for v in vs {
            let slow = crate::modules::json::to_json(&v, 0).map(|j| j.to_string());
            match fast(lua, &v) {
                Some(text) => assert_eq!(Ok(&text), slow.as_ref(), "{chunk}"),
                None => assert!(declines, "declined {chunk}: {slow:?}"),
            }
        }
    }

    #[test]
    fn the_stack_writes_what_the_mlua_encoder_writes() {
        let lua = Lua::new();
        check(&lua, r#"return nil, true, false, 0, -7, math.maxinteger, math.mininteger, 5.0, -0.0, 0.1, 1e300, -2.5e-8,
            2^53, 2^53 - 1, 2^60, 1/0, -1/0, 0/0, "", "a\"b\\c\n\t\1\127", "é ✓ 𝄞", "\xff\xfeA", {}, {1, 2, 3},
            {"x", {y = {true, false}}, {}}, {b = 1, a = 2, aa = 3, B = 4, ["é"] = 5, [""] = 6, ["\xc3"] = nil},
            {message = "hello", n = 5, nested = {list = {1.5, "two", {three = 3}}}},
            setmetatable({a = 1}, {__index = function() return 9 end, __pairs = function() error("no") end}),
            {[1] = "a", [2] = "b", [3.0] = "c"}"#, false);
        // the mlua path's cases: errors, a userdata, keys that are not UTF-8
        check(&lua, r#"return {1, nil, 3}, {1, a = 2}, {[true] = 1}, {[0] = 1}, {[-1] = 1}, {[1.5] = 1}, {f = print},
            {print}, coroutine.create(print), {["\xff"] = 1, ["\xfe"] = 2}, {x = io and io.stdout}"#, true);
        // depth: 128 levels below the top are fine, one more is refused (and a cycle)
        check(&lua, "local t = {} for _ = 1, 128 do t = {t} end return t", false);
        check(&lua, "local t = {} for _ = 1, 129 do t = {t} end local c = {} c.c = c return t, c", true);
    }

    #[test]
    fn generated_values_encode_alike() {
        // a few thousand nested values from a fixed seed: the two encoders agree on each
        let lua = Lua::new();
        check(&lua, r#"
            math.randomseed(7)
            local keys = {"a", "b", "id", "name", "Name", "z9", "é", "\0", "k\"q", "10", "2"}
            local function gen(d)
              local r = math.random(10)
              if d > 4 or r <= 3 then
                local s = math.random(7)
                if s == 1 then return math.random(-1000, 1000)
                elseif s == 2 then return math.random() * 10 ^ math.random(-5, 20)
                elseif s == 3 then return math.random(2) == 1
                elseif s == 4 then return math.random(100) + 0.0
                else return keys[math.random(#keys)] .. string.rep("x", math.random(0, 3)) end
              elseif r <= 6 then
                local t = {} for i = 1, math.random(0, 5) do t[i] = gen(d + 1) end return t
              else
                local t = {} for _ = 1, math.random(1, 6) do t[keys[math.random(#keys)]] = gen(d + 1) end return t
              end
            end
            local out = {} for i = 1, 3000 do out[i] = gen(0) end
            return table.unpack(out)"#, false);
    }

    #[test]
    fn the_stack_decodes_what_the_mlua_decoder_decodes() {
        // both decoders on the same texts: equal values, equal table sizes (`#`, and the
        // order `next` walks them in: the tables are made alike), equal errors
        let lua = Lua::new();
        let slow = lua.create_function(crate::modules::json::decode).unwrap();
        lua.globals().set("fast", super::decoder(&lua, slow.clone()).unwrap()).unwrap();
        lua.globals().set("slow", slow).unwrap();
        lua.load(r#"
            local function same(a, b, path)
              if type(a) ~= type(b) then error(path .. ": " .. type(a) .. " vs " .. type(b)) end
              if type(a) ~= "table" then
                if a ~= b and not (a ~= a and b ~= b) then error(path .. ": " .. tostring(a) .. " vs " .. tostring(b)) end
                if math.type(a) ~= math.type(b) then error(path .. ": number kinds differ") end
                return
              end
              if #a ~= #b then error(path .. ": lengths differ") end
              local ka, kb = next(a), next(b)
              while ka ~= nil or kb ~= nil do
                if ka ~= kb then error(path .. ": walk order differs at " .. tostring(ka) .. " / " .. tostring(kb)) end
                same(a[ka], b[kb], path .. "." .. tostring(ka))
                ka, kb = next(a, ka), next(b, kb)
              end
            end
            local texts = {
              'null', 'true', 'false', '0', '-7', '9223372036854775807', '9223372036854775808', '-9223372036854775808',
              '1.5', '1e400', '-0.0', '2.0', '"x"', [["\u00e9\n\"\\"]], '""', '[]', '{}', '[1,null,3]', '[null]',
              '{"a":null,"b":1}', '{"b":1,"a":[1,{"c":[true,false]}],"\\u0000":2}', '  {"k" : "v"}  ',
              '{"a":1,"a":2}', '[[[[[[[[[[1]]]]]]]]]]', string.rep("[", 100) .. string.rep("]", 100),
              string.rep("[", 200) .. string.rep("]", 200), '', '{', '[1,]', 'nul', '{"a" 1}', '1 2', [["\ud800"]],
            }
            for i = 1, 300 do texts[#texts + 1] = '{"id":' .. i .. ',"name":"n' .. i .. '","tags":["a","b"],"p":' .. (i / 7) .. '}' end
            for _, t in ipairs(texts) do
              local fa, fe = fast(t)
              local sa, se = slow(t)
              same(fa, sa, t)
              assert((fe == nil) == (se == nil), t)
              if fe then assert(tostring(fe) == tostring(se), tostring(fe) .. " vs " .. tostring(se)) end
            end
            for _, v in ipairs({ 1, true, {}, nil }) do
              local _, fe = fast(v)
              local _, se = slow(v)
              assert(tostring(fe) == tostring(se), tostring(fe))
            end
        "#).exec().unwrap();
    }
}
