//! The few fields of Lua 5.4's internal structs that the hot paths read directly instead
//! of through the C API (each API call costs ~20-40 instructions, a direct read one or
//! two): `lua_State.ci` and `top`, `CallInfo.func` and `previous` (lstate.h), a value's tag
//! and payload, a string's bytes, and a table's array part and metatable (lobject.h). Only
//! these prefixes are mirrored, and only for reading (one exception: [`set_slot_table`]
//! puts a table into a stack slot); the test below holds every one of them to what the C
//! API says, so a Lua that lays them out otherwise fails it.
//!
//! Everything here reads a live thread, or an object on its stack, during the step that
//! called it; addresses it gives are not kept past that step, except as prefetch hints (the
//! collector may move a suspended thread's stack, and a table's array part moves when the
//! table grows).

use std::ffi::c_void;

use mlua::ffi;

/// `struct lua_State` up to `ci`.
#[repr(C)]
struct StateHead {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    status: u8,
    allowhook: u8,
    nci: u16,
    top: *const u8,
    l_g: *mut c_void,
    ci: *const CallInfoHead,
}

/// `struct CallInfo` up to `previous`.
#[repr(C)]
struct CallInfoHead {
    func: *const u8,
    top: *const u8,
    previous: *const CallInfoHead,
}

/// `struct Table` up to `metatable`.
#[repr(C)]
struct TableHead {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    flags: u8,
    lsizenode: u8,
    alimit: u32,
    array: *const TValue,
    node: *const c_void,
    lastfree: *const c_void,
    metatable: *const c_void,
}

/// A value (`TValue`; a stack slot, `StackValue`, is one too): the payload, then the tag.
#[repr(C)]
pub(crate) struct TValue {
    value: usize,
    tt: u8,
}

/// Tags (`makevariant`, with `BIT_ISCOLLECTABLE` for objects).
const T_NIL: u8 = 0;
const T_FALSE: u8 = 1;
const T_TRUE: u8 = 1 | 1 << 4;
const T_LIGHTUD: u8 = 2;
const T_INT: u8 = 3;
const T_FLOAT: u8 = 3 | 1 << 4;
const T_SHRSTR: u8 = 4 | 0x40;
const T_LNGSTR: u8 = 4 | 1 << 4 | 0x40;
const T_TABLE: u8 = 5 | 0x40;
const T_USERDATA: u8 = 7 | 0x40;
const T_LCF: u8 = 6 | 1 << 4;
const T_CCLOSURE: u8 = 6 | 2 << 4 | 0x40;

/// `struct TString` up to its contents (short strings keep their length in `shrlen`, long
/// ones have 0xFF there and the length in `lnglen`).
#[repr(C)]
struct StringHead {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    extra: u8,
    shrlen: u8,
    hash: u32,
    lnglen: usize,
    contents: [u8; 0],
}

/// A plain value, as the fast paths take it.
#[derive(Debug, PartialEq)]
pub(crate) enum Plain<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    LightUserdata(*const c_void),
}

/// What `v` holds, when it is a plain value (not a table, function, userdata or thread).
///
/// # Safety
/// `v` must be a live value; a string's bytes live as long as the string is reachable.
pub(crate) unsafe fn plain<'a>(v: *const TValue) -> Option<Plain<'a>> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let v = &*v;
        Some(match v.tt {
            T_NIL => Plain::Nil,
            T_FALSE => Plain::Bool(false),
            T_TRUE => Plain::Bool(true),
            T_INT => Plain::Int(v.value as i64),
            T_FLOAT => Plain::Float(f64::from_bits(v.value as u64)),
            T_SHRSTR | T_LNGSTR => Plain::Str(string_bytes(v.value as *const StringHead)),
            T_LIGHTUD => Plain::LightUserdata(v.value as *const c_void),
            _ => return None,
        })
    }
}

/// # Safety
/// `s` points at a live Lua string.
unsafe fn string_bytes<'a>(s: *const StringHead) -> &'a [u8] {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let len = if (*s).shrlen == 0xFF { (*s).lnglen } else { (*s).shrlen as usize };
        std::slice::from_raw_parts(std::ptr::addr_of!((*s).contents) as *const u8, len)
    }
}

/// The string `v` holds: the string object (what `lua_topointer` gives) and its bytes.
///
/// # Safety
/// As [`plain`].
pub(crate) unsafe fn string<'a>(v: *const TValue) -> Option<(*const c_void, &'a [u8])> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let v = &*v;
        matches!(v.tt, T_SHRSTR | T_LNGSTR).then(|| (v.value as *const c_void, string_bytes(v.value as *const StringHead)))
    }
}

/// Bytes of a stack slot.
const SLOT: usize = 16;
/// Bytes Lua keeps in front of every thread (`LUA_EXTRASPACE`, where an allocation begins).
pub(crate) const EXTRA: usize = ffi::LUA_EXTRASPACE;

/// The running (or, for a suspended thread, the yielding) call of `l`, and the stack slot of
/// its function (argument `i` is `i` slots above it).
///
/// # Safety
/// `l` must be a live thread.
pub(crate) unsafe fn frame(l: *mut ffi::lua_State) -> (*const u8, *const u8) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let ci = (*(l as *const StateHead)).ci;
        (ci as *const u8, (*ci).func)
    }
}

/// The value `n` slots below the top of `l`'s stack (`n` = 1: the topmost).
///
/// # Safety
/// `l` must be a live thread with at least `n` values in its current frame.
pub(crate) unsafe fn below_top(l: *mut ffi::lua_State, n: usize) -> *const TValue {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ((*(l as *const StateHead)).top as *const TValue).sub(n)
    }
}

/// How many values the running frame of `l` has (what `lua_gettop` says), and its function
/// slot (see [`frame`]).
///
/// # Safety
/// `l` must be a live thread, inside a call.
pub(crate) unsafe fn frame_args(l: *mut ffi::lua_State) -> (usize, *const u8) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let (_, func) = frame(l);
        let top = (*(l as *const StateHead)).top;
        ((top as usize - func as usize) / SLOT - 1, func)
    }
}

/// `struct CClosure` (lobject.h) up to its first upvalue.
#[repr(C)]
struct CClosureHead {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    nupvalues: u8,
    gclist: *const c_void,
    f: *const c_void,
    upvalue: TValue,
}

/// The light C function a running C closure holds as its first upvalue (what
/// `lua_tocfunction(l, lua_upvalueindex(1))` gives), if it holds one.
///
/// # Safety
/// `func` must be the function slot of a running C closure's frame (see [`frame`]).
pub(crate) unsafe fn upvalue_cfunction(func: *const u8) -> Option<ffi::lua_CFunction> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let f = slot(func, 0);
        if (*f).tt != T_CCLOSURE {
            return None;
        }
        let c = (*f).value as *const CClosureHead;
        if (*c).nupvalues == 0 || (*c).upvalue.tt != T_LCF {
            return None;
        }
        Some(std::mem::transmute::<usize, ffi::lua_CFunction>((*c).upvalue.value))
    }
}

/// The call below `ci` (null for the base call).
///
/// # Safety
/// `ci` must be a call of a live thread, as [`frame`] gave it in this step.
pub(crate) unsafe fn previous(ci: *const u8) -> *const u8 {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        (*(ci as *const CallInfoHead)).previous as *const u8
    }
}

/// Stack slot `func + i`.
///
/// # Safety
/// `func` must be a frame's function slot as [`frame`] gave it in this step, and slot `i`
/// must be within that frame.
pub(crate) unsafe fn slot(func: *const u8, i: usize) -> *const TValue {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        func.add(i * SLOT) as *const TValue
    }
}

/// The object a collectable value in stack slot `func + i` points at (see [`slot`]).
///
/// # Safety
/// As [`slot`]; the slot holds a collectable value.
pub(crate) unsafe fn slot_object(func: *const u8, i: usize) -> *const u8 {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        (*slot(func, i)).value as *const u8
    }
}

/// The table `v` holds, if it holds one.
///
/// # Safety
/// `v` must be a live value.
pub(crate) unsafe fn as_table(v: *const TValue) -> Option<*const u8> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ((*v).tt == T_TABLE).then(|| (*v).value as *const u8)
    }
}

/// Whether `v` holds a full userdata.
///
/// # Safety
/// `v` must be a live value.
pub(crate) unsafe fn is_userdata(v: *const TValue) -> bool {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        (*v).tt == T_USERDATA
    }
}

/// `struct Udata` (lobject.h) up to its first user value.
#[repr(C)]
struct UdataHead {
    next: *mut c_void,
    tt: u8,
    marked: u8,
    nuvalue: u16,
    len: usize,
    metatable: *const c_void,
    gclist: *const c_void,
    uv: TValue,
}

/// The table a full userdata in `v` holds as its first user value, if it holds one.
///
/// # Safety
/// `v` must be a live value.
pub(crate) unsafe fn uservalue_table(v: *const TValue) -> Option<*const u8> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        if !is_userdata(v) {
            return None;
        }
        let u = (*v).value as *const UdataHead;
        if (*u).nuvalue == 0 {
            return None;
        }
        as_table(std::ptr::addr_of!((*u).uv))
    }
}

/// Make stack slot `v` hold table `t`: the one write this module makes, and only to a stack
/// slot, which is what `lua_replace` does there (a stack needs no GC barrier: the collector
/// scans stacks whole, in its atomic phase).
///
/// # Safety
/// `v` must be a slot of the running frame (see [`slot`]) and `t` a live table that stays
/// reachable without the slot (here: the user value of the handle the slot held).
pub(crate) unsafe fn set_slot_table(v: *const TValue, t: *const u8) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let v = v as *mut TValue;
        (*v).value = t as usize;
        (*v).tt = T_TABLE;
    }
}

/// Make slot `i` (from 1) of table `t`'s array part hold `false`, or nil when `nil`: what
/// `lua_rawseti` does there for a value that is not an object (which needs no GC barrier).
/// False when the slot is not in the array part's known size (nothing is written).
///
/// # Safety
/// `t` must be a live table no one else is writing to.
pub(crate) unsafe fn set_array_falsy(t: *const u8, i: i64, nil: bool) -> bool {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let h = &*(t as *const TableHead);
        if i < 1 || (i as u64) > h.alimit as u64 {
            return false;
        }
        let v = h.array.add(i as usize - 1) as *mut TValue;
        (*v).value = 0;
        (*v).tt = if nil { T_NIL } else { T_FALSE };
        true
    }
}

/// Whether table `t` never held a key: no array part and no hash part (the shared dummy
/// node). A table that held keys and lost them has parts still, so is not bare.
///
/// # Safety
/// `t` must be a live table.
pub(crate) unsafe fn is_bare(t: *const u8) -> bool {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let h = &*(t as *const TableHead);
        h.alimit == 0 && h.flags & BITRAS == 0 && h.lastfree.is_null()
    }
}

/// The integer `v` holds, if it holds one (not a float, even an integral one).
///
/// # Safety
/// `v` must be a live value.
pub(crate) unsafe fn as_int(v: *const TValue) -> Option<i64> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ((*v).tt == T_INT).then(|| (*v).value as i64)
    }
}

/// A table's metatable (null for none): the address `lua_topointer` gives for it.
///
/// # Safety
/// `t` must be a live table.
pub(crate) unsafe fn metatable(t: *const u8) -> *const c_void {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        (*(t as *const TableHead)).metatable
    }
}

/// The log2 of how many nodes a table's hash part has (0 for one node or none).
///
/// # Safety
/// `t` must be a live table.
pub(crate) unsafe fn hash_log2(t: *const u8) -> u8 {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        (*(t as *const TableHead)).lsizenode
    }
}

/// A nil value, for keys a table certainly does not hold.
static NIL: TValue = TValue { value: 0, tt: T_NIL };

/// `BITRAS` in `Table.flags`: set when `alimit` is not the array part's real size.
const BITRAS: u8 = 1 << 7;

/// What `lua_rawgeti(t, i)` would give, when that can be read directly: slot `i` (from 1)
/// of the array part when `i` is within its known size (`alimit`), or nil when `i` is past
/// the array part's exact size and the table has no hash part (`lastfree` null: the shared
/// dummy node). `None` otherwise (the caller asks the C API).
///
/// # Safety
/// `t` must be a live table; the value is valid until the table is next written to.
pub(crate) unsafe fn array(t: *const u8, i: i64) -> Option<*const TValue> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let h = &*(t as *const TableHead);
        if i >= 1 && (i as u64) <= h.alimit as u64 {
            Some(h.array.add(i as usize - 1))
        } else if i >= 1 && h.flags & BITRAS == 0 && h.lastfree.is_null() {
            Some(&NIL)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::raw::c_int;

    /// Called from Lua as `probe(t1, t2)` (see the chunk below): checks the mirror against the C API, raising an
    /// error naming the first field that disagrees.
    ///
    /// # Safety
    /// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots.
    unsafe extern "C-unwind" fn probe(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: what this function's `# Safety` asks of its caller.
        unsafe {
            let fail = |what: &std::ffi::CStr| -> c_int {
                ffi::lua_pushstring(l, what.as_ptr());
                ffi::lua_error(l)
            };
            if ffi::lua_version(l) != 504.0 {
                return fail(c"not Lua 5.4");
            }
            let (ci, func) = frame(l);
            for i in 1..=ffi::lua_gettop(l) {
                if is_userdata(slot(func, i as usize)) != (ffi::lua_type(l, i) == ffi::LUA_TUSERDATA) {
                    return fail(c"the full userdata tag");
                }
                if ffi::lua_type(l, i) == ffi::LUA_TUSERDATA {
                    let want = match ffi::lua_getiuservalue(l, i, 1) {
                        ffi::LUA_TTABLE => Some(ffi::lua_topointer(l, -1) as *const u8),
                        _ => None,
                    };
                    ffi::lua_pop(l, 1);
                    if uservalue_table(slot(func, i as usize)) != want {
                        return fail(c"Udata.nuvalue or Udata.uv");
                    }
                }
            }
            for i in 1..=2 {
                if slot_object(func, i) != ffi::lua_topointer(l, i as c_int) as *const u8 {
                    return fail(c"CallInfo.func or the slot size");
                }
            }
            // probe(t1, t2, ...): t1 = { x = 1 }, t2 = setmetatable({ 7, {}, "s", 2.0 }, mt)
            let t2 = as_table(slot(func, 2)).unwrap_or(std::ptr::null());
            ffi::lua_getmetatable(l, 2);
            let mt = ffi::lua_topointer(l, -1);
            ffi::lua_pop(l, 1);
            if t2.is_null() || metatable(t2) != mt {
                return fail(c"Table.metatable or the table tag");
            }
            let at = |i| array(t2, i).map(|v| (as_int(v), as_table(v).is_some()));
            if at(1) != Some((Some(7), false)) || at(2) != Some((None, true)) || at(4) != Some((None, false)) {
                return fail(c"Table.array/alimit or the integer tag");
            }
            if array(t2, 0).is_some() || array(t2, 99).and_then(|v| plain(v)) != Some(Plain::Nil) {
                return fail(c"Table.alimit, flags or lastfree");
            }
            // t1 = { x = 1 }: a hash part, so a key past the array is not known to be absent
            let t1 = as_table(slot(func, 1)).unwrap_or(std::ptr::null());
            if t1.is_null() || array(t1, 1).is_some() {
                return fail(c"Table.lastfree");
            }
            // values 3.. : nil, true, false, 42, 1.5, "short", a long string, and a light userdata
            let n = ffi::lua_gettop(l);
            for i in 3..=n {
                let want = match ffi::lua_type(l, i) {
                    ffi::LUA_TNIL => Some(Plain::Nil),
                    ffi::LUA_TBOOLEAN => Some(Plain::Bool(ffi::lua_toboolean(l, i) != 0)),
                    ffi::LUA_TNUMBER if ffi::lua_isinteger(l, i) != 0 => Some(Plain::Int(ffi::lua_tointeger(l, i))),
                    ffi::LUA_TNUMBER => Some(Plain::Float(ffi::lua_tonumber(l, i))),
                    ffi::LUA_TSTRING => {
                        let mut len = 0;
                        let p = ffi::lua_tolstring(l, i, &mut len);
                        let b = std::slice::from_raw_parts(p as *const u8, len);
                        if string(slot(func, i as usize)) != Some((ffi::lua_topointer(l, i), b)) {
                            return fail(c"TString");
                        }
                        Some(Plain::Str(b))
                    }
                    ffi::LUA_TLIGHTUSERDATA => Some(Plain::LightUserdata(ffi::lua_touserdata(l, i))),
                    _ => None,
                };
                if plain(slot(func, i as usize)) != want {
                    return fail(c"a value's tag or payload");
                }
            }
            if below_top(l, 1) != slot(func, n as usize) {
                return fail(c"lua_State.top");
            }
            let top = (*(l as *const StateHead)).top;
            if top != func.add(SLOT * (ffi::lua_gettop(l) as usize + 1)) {
                return fail(c"lua_State.top");
            }
            // The caller's function, as lua_getinfo finds it and as the previous call's slot holds it.
            let mut ar: ffi::lua_Debug = std::mem::zeroed();
            if ffi::lua_getstack(l, 1, &mut ar) == 0 || ffi::lua_getinfo(l, c"f".as_ptr(), &mut ar) == 0 {
                return fail(c"no caller");
            }
            let caller = ffi::lua_topointer(l, -1) as *const u8;
            ffi::lua_pop(l, 1);
            let prev = previous(ci);
            if prev.is_null() || slot_object((*(prev as *const CallInfoHead)).func, 0) != caller {
                return fail(c"CallInfo.previous");
            }
            ffi::lua_pushboolean(l, 1);
            1
        }
    }

    /// # Safety
    /// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, a C closure with one upvalue.
    unsafe extern "C-unwind" fn closure_probe(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: what this function's `# Safety` asks of its caller.
        unsafe {
            let (n, func) = frame_args(l);
            let want = ffi::lua_tocfunction(l, ffi::lua_upvalueindex(1)).map(|f| f as usize);
            let ok = n == ffi::lua_gettop(l) as usize && upvalue_cfunction(func).map(|f| f as usize) == want && want.is_some();
            ffi::lua_pushboolean(l, ok as c_int);
            1
        }
    }

    #[test]
    fn a_c_closures_first_upvalue_and_the_argument_count_are_where_the_c_api_finds_them() {
        let lua = mlua::Lua::new();
        // SAFETY: registers a C closure as a global, on the main thread, outside any call.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                ffi::lua_pushcfunction(state, probe);
                ffi::lua_pushcclosure(state, closure_probe, 1);
                ffi::lua_setglobal(state, c"cprobe".as_ptr());
            })
            .unwrap();
        }
        lua.load("assert(cprobe()) assert(cprobe(1, 'x', {}, nil)) assert(select(2, pcall(cprobe, 1, 2, 3)))").exec().unwrap();
    }

    #[test]
    fn the_mirrored_fields_are_where_the_c_api_finds_them() {
        let lua = mlua::Lua::new();
        // SAFETY: registers a C function as a global, on the main thread, outside any call.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                ffi::lua_pushcfunction(state, probe);
                ffi::lua_setglobal(state, c"probe".as_ptr());
                ffi::lua_pushlightuserdata(state, 0x1234 as *mut c_void);
                ffi::lua_setglobal(state, c"lightud".as_ptr());
                ffi::lua_newuserdatauv(state, 0, 1);
                ffi::lua_newtable(state);
                ffi::lua_setiuservalue(state, -2, 1);
                ffi::lua_setglobal(state, c"fullud".as_ptr());
                ffi::lua_newuserdatauv(state, 24, 0);
                ffi::lua_setglobal(state, c"bareud".as_ptr());
            })
            .unwrap();
        }
        let code = r#"
            local function call(a, b) local x = 1; return probe(a, b, nil, true, false, 42, 1.5, "short",
                string.rep("long", 30), lightud, -7, 0.0, "", fullud, bareud), x end
            local function t2() return setmetatable({ 7, {}, "s", 2.0 }, {}) end
            assert(call({ x = 1 }, t2()))
            local co = coroutine.create(function(a, b) return call(a, b) end)
            local ok, r = coroutine.resume(co, { x = 1 }, t2())
            assert(ok and r, r)
        "#;
        lua.load(code).exec().unwrap();
    }
}
