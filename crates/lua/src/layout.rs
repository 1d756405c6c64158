//! The few fields of Lua 5.4's internal structs that warm-up hints read (see
//! wippy-runtime's warm.rs): `lua_State.ci`, `CallInfo.func` and `CallInfo.previous`
//! (lstate.h), and a stack slot's value (lobject.h). Only these prefixes are mirrored; the
//! test below holds them to what the C API says, so a Lua that lays them out otherwise
//! fails it.
//!
//! Everything here reads a live, suspended or running thread only; the addresses it gives
//! are hints (prefetched, never kept past the step that made them: the collector may move a
//! suspended thread's stack).

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

/// Bytes of a stack slot (`StackValue`: a value and its tag).
const SLOT: usize = 16;
/// Bytes Lua keeps in front of every thread (`LUA_EXTRASPACE`, where an allocation begins).
pub(crate) const EXTRA: usize = ffi::LUA_EXTRASPACE;

/// The running (or, for a suspended thread, the yielding) call of `l`, and the stack slot of
/// its function (argument `i` is `i` slots above it).
///
/// # Safety
/// `l` must be a live thread.
pub(crate) unsafe fn frame(l: *mut ffi::lua_State) -> (*const u8, *const u8) {
    let ci = (*(l as *const StateHead)).ci;
    (ci as *const u8, (*ci).func)
}

/// The call below `ci` (null for the base call).
///
/// # Safety
/// `ci` must be a call of a live thread, as [`frame`] gave it in this step.
pub(crate) unsafe fn previous(ci: *const u8) -> *const u8 {
    (*(ci as *const CallInfoHead)).previous as *const u8
}

/// The object a collectable value in stack slot `func + i` points at.
///
/// # Safety
/// `func` must be a frame's function slot as [`frame`] gave it in this step, and slot `i`
/// must be within that frame.
pub(crate) unsafe fn slot_object(func: *const u8, i: usize) -> *const u8 {
    *(func.add(i * SLOT) as *const *const u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::raw::c_int;

    /// Called from Lua as `probe(t1, t2)`: checks the mirror against the C API, raising an
    /// error naming the first field that disagrees.
    unsafe extern "C-unwind" fn probe(l: *mut ffi::lua_State) -> c_int {
        let fail = |what: &std::ffi::CStr| -> c_int {
            ffi::lua_pushstring(l, what.as_ptr());
            ffi::lua_error(l)
        };
        if ffi::lua_version(l) != 504.0 {
            return fail(c"not Lua 5.4");
        }
        let (ci, func) = frame(l);
        for i in 1..=2 {
            if slot_object(func, i) != ffi::lua_topointer(l, i as c_int) as *const u8 {
                return fail(c"CallInfo.func or the slot size");
            }
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

    #[test]
    fn the_mirrored_fields_are_where_the_c_api_finds_them() {
        let lua = mlua::Lua::new();
        // SAFETY: registers a C function as a global, on the main thread, outside any call.
        unsafe {
            lua.exec_raw::<()>((), |state| {
                ffi::lua_pushcfunction(state, probe);
                ffi::lua_setglobal(state, c"probe".as_ptr());
            })
            .unwrap();
        }
        let code = r#"
            local function call(a, b) local x = 1; return probe(a, b), x end
            assert(call({}, {}))
            local co = coroutine.create(function(a, b) return call(a, b) end)
            local ok, r = coroutine.resume(co, {}, setmetatable({}, {}))
            assert(ok and r, r)
        "#;
        lua.load(code).exec().unwrap();
    }
}
