//! The C functions the prelude's `R` table holds: the raw hot paths (`raw.rs`), the
//! preemption reports (`preempt.rs`), and the small ones below; `install` puts them all in
//! `R` at VM creation (the Rust-built functions in `R` are the modules', `modules/mod.rs`).
//!
//! Must never: keep anything of a call past it (these run between two instructions of Lua
//! code that may be preempted and resumed on another worker).

use std::os::raw::c_int;

use mlua::{ffi, Lua, Table};

use super::{preempt, raw};

/// Install the C primitives into `r`, the prelude's table of Rust parts.
pub(crate) fn install(lua: &Lua, r: &Table) -> mlua::Result<()> {
    let c_functions: [(&str, ffi::lua_CFunction); 13] = [
        ("cur", preempt::rt_cur),
        ("resume_task", preempt::rt_resume_task),
        ("dirty", rt_dirty),
        ("preempted", preempt::rt_preempted),
        ("preempt_pending", preempt::rt_preempt_pending),
        ("make_send", raw::make_send),
        ("make_receive", raw::make_receive),
        ("make_handle", raw::make_handle),
        ("make_inbox", raw::make_inbox),
        ("make_chan_of", raw::make_chan_of),
        ("make_spawn", raw::make_spawn),
        ("is_of", rt_is_of),
        ("raw_meta", rt_raw_meta),
    ];
    for (name, f) in c_functions {
        // SAFETY: each is a C function written for Lua's calling convention that touches
        // only its own stack and this thread's turn state (each says so in its # Safety).
        r.raw_set(name, unsafe { lua.create_c_function(f) }?)?;
    }
    r.raw_set("WAIT", mlua::LightUserData(raw::wait_tag()))
}

/// The base library's `type`, as Lua's but with the nine type names held as upvalues: Lua's
/// pushes its name from C text, which looks the string up in the VM's string cache (and
/// compares it) on every call, ~130 instructions where this takes ~40 (a handler process
/// calls it twice before its own code, and Lua code checks types often).
pub(crate) fn fast_type(lua: &Lua) -> mlua::Result<mlua::Function> {
    // SAFETY: in exec_raw's protected call, with room for the nine names (LUA_MINSTACK);
    // the closure takes them from the stack as its upvalues.
    unsafe {
        lua.exec_raw((), |l| {
            for t in ffi::LUA_TNIL..=ffi::LUA_TTHREAD {
                ffi::lua_pushstring(l, ffi::lua_typename(l, t));
            }
            ffi::lua_pushcclosure(l, type_of, ffi::LUA_TTHREAD + 1);
        })
    }
}

/// `process.pid()` as a C function: the running process's PID text, made once and kept by
/// the thread for the next call from the same process (a handler asks twice, a `reply_to`
/// on every request); outside a process, `slow` (the mlua function) raises its error.
pub(crate) fn fast_pid(lua: &Lua, slow: mlua::Function) -> mlua::Result<mlua::Function> {
    // SAFETY: pushcclosure pops the one value exec_raw pushed and pushes the closure.
    unsafe { lua.exec_raw(slow, |l| ffi::lua_pushcclosure(l, own_pid, 1)) }
}

thread_local! {
    /// The last PID [`own_pid`] pushed, with its text ([`raw::push_pid`]'s cache): no
    /// borrow flag, as the push may raise.
    static OWN_PID: std::cell::UnsafeCell<raw::PidText> = const { std::cell::UnsafeCell::new(None) };
}

/// # Safety
/// A C closure made by [`fast_pid`].
unsafe extern "C-unwind" fn own_pid(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua's calling convention (a free slot); the cache is this thread's and is
    // reached only here, one call at a time (the push runs no Lua code).
    unsafe {
        let Ok(pid) = crate::current::with(|cx, _| Ok(cx.pid())) else { return raw::call_upvalue(l) };
        OWN_PID.with(|c| raw::push_pid(l, pid, &mut *c.get()));
        1
    }
}

/// `type(v)`: the name of v's type, from upvalue `type + 1`.
///
/// # Safety
/// A C function Lua calls, made by [`fast_type`] (nine upvalues).
unsafe extern "C-unwind" fn type_of(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as above; a missing argument raises as Lua's `type` does (luaL_checkany).
    unsafe {
        let t = ffi::lua_type(l, 1);
        if t == ffi::LUA_TNONE {
            return ffi::luaL_argerror(l, 1, c"value expected".as_ptr());
        }
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(t + 1));
    }
    1
}

/// `R.dirty()`: the current process's ready queue or pending count may have become
/// non-empty (see `ProcState::dirty`).
///
/// # Safety
/// A C function Lua calls.
unsafe extern "C-unwind" fn rt_dirty(_l: *mut ffi::lua_State) -> c_int {
    let _ = crate::current::state(|st| st.dirty = true);
    0
}

/// `R.raw_meta(t)`: the metatable of `t` even when `__metatable` hides it (nil if none).
///
/// # Safety
/// A C function Lua calls (argument 1 exists, nil when not given).
unsafe extern "C-unwind" fn rt_raw_meta(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `l` is the calling thread with LUA_MINSTACK free slots.
    unsafe {
        if ffi::lua_getmetatable(l, 1) == 0 {
            ffi::lua_pushnil(l);
        }
    }
    1
}

/// `R.is_of(mt)`: a function telling whether its argument's metatable is `mt` (one C call,
/// where `getmetatable(x) == name` also looks up `__metatable`).
///
/// # Safety
/// A C function Lua calls.
unsafe extern "C-unwind" fn rt_is_of(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as above; the closure takes its one upvalue from the stack.
    unsafe {
        ffi::lua_settop(l, 1);
        ffi::lua_pushcclosure(l, has_metatable, 1);
    }
    1
}

/// The function `R.is_of` makes: whether argument 1's metatable is its upvalue.
///
/// # Safety
/// A C function Lua calls, made by `rt_is_of` (one upvalue).
unsafe extern "C-unwind" fn has_metatable(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as above.
    unsafe {
        let yes = raw::metatable_is(l, 1, ffi::lua_upvalueindex(1));
        ffi::lua_pushboolean(l, yes as c_int);
    }
    1
}
