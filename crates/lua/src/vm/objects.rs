//! Native objects: Lua userdata that are plain blocks of two words under a shared metatable,
//! with no finalizer, whose methods are C closures. For objects a process makes by the
//! thousand (an HTTP handler's request and response: two per request), where an mlua
//! userdata costs an mlua callback to make, one per method call, and a finalizer run to
//! free. What such an object stands for is found through the running process (the module
//! that uses this keeps nothing else in it); the two words are the object's own options.
//!
//! Each method is a C closure (upvalues: the method in Rust through mlua, the type's
//! metatable, and for a hot method its fast path as a Rust function pointer) that checks
//! its first argument is one of the type's objects (else Lua's own "bad argument #1 ...
//! (NAME expected, got ...)") and calls the Rust method with the object's words. A hot
//! method first tries its fast path, a Rust function of plain arguments that answers
//! `None` for anything it does not do itself; that case, errors included, goes to the Rust
//! method, so that both answer alike.

use std::os::raw::{c_char, c_int, c_void};

use mlua::{ffi, Lua, LightUserData, Table};

/// An object's own words.
pub(crate) type Data = [u64; 2];

type CFn = unsafe extern "C-unwind" fn(*mut ffi::lua_State) -> c_int;

/// A hot method's fast path, by the shape of its arguments and answer.
#[derive(Clone, Copy)]
pub(crate) enum Fast {
    /// `obj:m()` -> a string or nil
    Text(fn() -> Option<Option<String>>),
    /// `obj:m(s)` -> a string or nil
    TextOf(fn(&str) -> Option<Option<String>>),
    /// `obj:m(n)` (an integer) -> nil
    SetInt(fn(i64) -> Option<()>),
    /// `obj:m(s)` -> nil
    SetText(fn(&str) -> Option<()>),
    /// `obj:m(s1, s2)` -> nil
    SetText2(fn(&str, &str) -> Option<()>),
    /// `obj:m(s)` (any bytes) -> true, nil
    Put(fn(&[u8]) -> Option<()>),
    /// `obj:m(v)` -> true, nil: `v` as JSON text ([`super::json`]; what it declines, the
    /// slow path answers)
    Json(fn(&[u8]) -> Option<()>),
}

impl Fast {
    fn parts(self) -> (CFn, *mut c_void) {
        match self {
            Fast::Text(f) => (fast_text, f as *mut c_void),
            Fast::TextOf(f) => (fast_text_of, f as *mut c_void),
            Fast::SetInt(f) => (fast_set_int, f as *mut c_void),
            Fast::SetText(f) => (fast_set_text, f as *mut c_void),
            Fast::SetText2(f) => (fast_set_text2, f as *mut c_void),
            Fast::Put(f) => (fast_put, f as *mut c_void),
            Fast::Json(f) => (fast_json, f as *mut c_void),
        }
    }
}

/// One object type: its metatable (`__name`, `__metatable = false`, `__index`) and the
/// table of its methods.
pub(crate) struct ObjectType {
    pub(crate) mt: Table,
    pub(crate) index: Table,
}

impl ObjectType {
    pub(crate) fn new(lua: &Lua, name: &str) -> mlua::Result<ObjectType> {
        let (mt, index) = (lua.create_table()?, lua.create_table()?);
        mt.raw_set("__name", name)?;
        mt.raw_set("__metatable", false)?;
        mt.raw_set("__index", index.clone())?;
        Ok(ObjectType { mt, index })
    }

    /// A method done by `f` (given the object's words).
    pub(crate) fn method<A, R>(&self, lua: &Lua, name: &str, f: impl Fn(&Lua, Data, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.index.raw_set(name, self.function(lua, None, f)?)
    }

    /// A method whose common case `fast` does, and anything else `f`.
    pub(crate) fn hot<A, R>(&self, lua: &Lua, name: &str, fast: Fast, f: impl Fn(&Lua, Data, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.index.raw_set(name, self.function(lua, Some(fast), f)?)
    }

    /// A metamethod (`__tostring`, ...) done by `f`.
    pub(crate) fn meta<A, R>(&self, lua: &Lua, name: &str, f: impl Fn(&Lua, Data, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<()>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        self.mt.raw_set(name, self.function(lua, None, f)?)
    }

    fn function<A, R>(&self, lua: &Lua, fast: Option<Fast>, f: impl Fn(&Lua, Data, A) -> mlua::Result<R> + Send + 'static) -> mlua::Result<mlua::Function>
    where
        A: mlua::FromLuaMulti,
        R: mlua::IntoLuaMulti,
    {
        // (the words come as a light userdata pointing at the block, checked by `slow`)
        let slow = lua.create_function(move |lua, (block, a): (LightUserData, A)| {
            // SAFETY: `slow` replaced the object by its block's address, a block of Data.
            let data = unsafe { std::ptr::read_unaligned(block.0 as *const Data) };
            f(lua, data, a)
        })?;
        let (c, p) = fast.map_or((checked as CFn, std::ptr::null_mut()), Fast::parts);
        // SAFETY: pushcclosure pops the three values exec_raw pushed and pushes the closure.
        unsafe { lua.exec_raw((slow, self.mt.clone(), LightUserData(p)), |l| ffi::lua_pushcclosure(l, c, 3)) }
    }

    /// A constructor: an object with the words `fast` gives (told whether arguments were
    /// given), else with the two integers `slow` answers for the arguments; any other
    /// answer of `slow` (`nil, err`) is the constructor's.
    pub(crate) fn constructor(&self, lua: &Lua, fast: fn(bool) -> Option<Data>, slow: mlua::Function) -> mlua::Result<mlua::Function> {
        // SAFETY: as above.
        unsafe { lua.exec_raw((slow, self.mt.clone(), LightUserData(fast as *mut c_void)), |l| ffi::lua_pushcclosure(l, construct, 3)) }
    }
}

/// # Safety
/// A C closure made by [`ObjectType::constructor`].
unsafe extern "C-unwind" fn construct(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract; nothing owned is alive when a push raises.
    unsafe {
        // SAFETY: upvalue 3 is the `fn(bool) -> Option<Data>` the constructor was made with.
        let fast: fn(bool) -> Option<Data> = std::mem::transmute(ffi::lua_touserdata(l, ffi::lua_upvalueindex(3)));
        let data = match fast(ffi::lua_gettop(l) > 0 && ffi::lua_isnil(l, 1) == 0) {
            Some(d) => d,
            None => {
                let n = ffi::lua_gettop(l);
                ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
                ffi::lua_rotate(l, 1, 1);
                ffi::lua_call(l, n, 2);
                if ffi::lua_isinteger(l, 1) == 0 {
                    return 2;
                }
                [ffi::lua_tointeger(l, 1) as u64, ffi::lua_tointeger(l, 2) as u64]
            }
        };
        let block = ffi::lua_newuserdatauv(l, std::mem::size_of::<Data>(), 0);
        std::ptr::write_unaligned(block as *mut Data, data);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
        ffi::lua_setmetatable(l, -2);
        ffi::lua_pushnil(l);
        2
    }
}

/// Whether argument 1 is one of the type's objects (its metatable is upvalue 2).
///
/// # Safety
/// Inside a C closure made by [`ObjectType`].
unsafe fn is_ours(l: *mut ffi::lua_State) -> bool {
    // SAFETY: the caller's contract (one free slot for the metatable, popped).
    unsafe {
        if ffi::lua_getmetatable(l, 1) == 0 {
            return false;
        }
        let same = ffi::lua_rawequal(l, -1, ffi::lua_upvalueindex(2)) != 0;
        ffi::lua_pop(l, 1);
        same
    }
}

/// A method that is not hot: its object checked, then the Rust method.
///
/// # Safety
/// A C closure made by [`ObjectType`].
unsafe extern "C-unwind" fn checked(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { slow(l) }
}

/// The call as the Rust method (upvalue 1) answers it, with argument 1 checked to be one
/// of the type's objects and given as its block's address.
///
/// # Safety
/// Inside a C closure made by [`ObjectType`].
unsafe fn slow(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        if !is_ours(l) {
            return wrong_self(l);
        }
        let block = ffi::lua_touserdata(l, 1);
        ffi::lua_pushlightuserdata(l, block);
        ffi::lua_replace(l, 1);
        let n = ffi::lua_gettop(l);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_rotate(l, 1, 1);
        ffi::lua_call(l, n, ffi::LUA_MULTRET);
        ffi::lua_gettop(l)
    }
}

unsafe extern "C-unwind" {
    /// Lua 5.4's `luaL_typeerror` (not among mlua-sys's declarations).
    fn luaL_typeerror(l: *mut ffi::lua_State, arg: c_int, tname: *const c_char) -> c_int;
}

/// Raise Lua's own "bad argument #1 to 'NAME' (TYPE expected, got ...)" (or "calling
/// 'NAME' on bad self"): a method called on something else than its object.
///
/// # Safety
/// Inside a C closure made by [`ObjectType`]; raises (nothing with a destructor is alive).
unsafe fn wrong_self(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract: upvalue 2 is the type's metatable, its __name a
    // string (kept on the stack while the message is made).
    unsafe {
        ffi::lua_getfield(l, ffi::lua_upvalueindex(2), c"__name".as_ptr());
        let tname = ffi::lua_tolstring(l, -1, std::ptr::null_mut());
        luaL_typeerror(l, 1, tname)
    }
}

/// The fast path (upvalue 3) as a function pointer of type `F`, when argument 1 is ours.
///
/// # Safety
/// Inside a C closure made by [`ObjectType::hot`] with a fast path of type `F`.
unsafe fn fast_fn<F: Copy>(l: *mut ffi::lua_State) -> Option<F> {
    // SAFETY: the caller's contract; fn pointers and data pointers have one size here.
    unsafe { is_ours(l).then(|| std::mem::transmute_copy(&ffi::lua_touserdata(l, ffi::lua_upvalueindex(3)))) }
}

/// A string argument at `idx` (not a number: those take the slow path, which converts).
///
/// # Safety
/// Inside a C function, `idx` a valid index; the string stays on the stack for the call.
unsafe fn str_arg<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    // SAFETY: the caller's contract.
    unsafe { (ffi::lua_type(l, idx) == ffi::LUA_TSTRING).then(|| super::raw::str_at(l, idx)).flatten() }
}

/// Push `text`: kept in a thread-local buffer across the push (a push may raise a memory
/// error, and nothing with a destructor may be alive then).
///
/// # Safety
/// `l` has a free slot.
unsafe fn push_owned(l: *mut ffi::lua_State, text: String) {
    let (p, n) = SCRATCH.with(|c| {
        let b = text.into_bytes();
        let at = (b.as_ptr(), b.len());
        c.set(b);
        at
    });
    // SAFETY: the caller's contract; `p` points at `n` bytes nobody changes until the next
    // push through here (the buffer moved into the cell, its heap block did not).
    unsafe { ffi::lua_pushlstring(l, p as *const c_char, n) };
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::Json`].
unsafe extern "C-unwind" fn fast_json(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        let Some(f) = fast_fn::<fn(&[u8]) -> Option<()>>(l) else { return slow(l) };
        let done = ffi::lua_gettop(l) >= 2 && super::json::encode_kept(l, 2).and_then(f).is_some();
        if !done {
            return slow(l);
        }
        ffi::lua_pushboolean(l, 1);
        ffi::lua_pushnil(l);
        2
    }
}

thread_local! {
    /// The last string result, kept across its push.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::Text`].
unsafe extern "C-unwind" fn fast_text(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        match fast_fn::<fn() -> Option<Option<String>>>(l).and_then(|f| f()) {
            Some(Some(s)) => push_owned(l, s),
            Some(None) => ffi::lua_pushnil(l),
            None => return slow(l),
        }
        1
    }
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::TextOf`].
unsafe extern "C-unwind" fn fast_text_of(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        let Some(arg) = str_arg(l, 2) else { return slow(l) };
        match fast_fn::<fn(&str) -> Option<Option<String>>>(l).and_then(|f| f(arg)) {
            Some(Some(s)) => push_owned(l, s),
            Some(None) => ffi::lua_pushnil(l),
            None => return slow(l),
        }
        1
    }
}

/// A setter's answer: nil when done, else the slow path's (a fast path changes nothing
/// when it answers `None`, so the slow path meets the same case and words it).
///
/// # Safety
/// A C closure made by [`ObjectType::hot`].
unsafe fn done_or_slow(l: *mut ffi::lua_State, done: Option<()>) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        match done {
            Some(()) => {
                ffi::lua_pushnil(l);
                1
            }
            None => slow(l),
        }
    }
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::SetInt`].
unsafe extern "C-unwind" fn fast_set_int(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        if ffi::lua_isinteger(l, 2) == 0 {
            return slow(l);
        }
        let n = ffi::lua_tointeger(l, 2);
        done_or_slow(l, fast_fn::<fn(i64) -> Option<()>>(l).and_then(|f| f(n)))
    }
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::SetText`].
unsafe extern "C-unwind" fn fast_set_text(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        let Some(s) = str_arg(l, 2) else { return slow(l) };
        done_or_slow(l, fast_fn::<fn(&str) -> Option<()>>(l).and_then(|f| f(s)))
    }
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::SetText2`].
unsafe extern "C-unwind" fn fast_set_text2(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        let (Some(a), Some(b)) = (str_arg(l, 2), str_arg(l, 3)) else { return slow(l) };
        done_or_slow(l, fast_fn::<fn(&str, &str) -> Option<()>>(l).and_then(|f| f(a, b)))
    }
}

/// # Safety
/// A C closure made by [`ObjectType::hot`] with [`Fast::Put`].
unsafe extern "C-unwind" fn fast_put(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        if ffi::lua_type(l, 2) != ffi::LUA_TSTRING {
            return slow(l);
        }
        let data = super::raw::bytes_at(l, 2);
        match fast_fn::<fn(&[u8]) -> Option<()>>(l).and_then(|f| f(data)) {
            Some(()) => {
                ffi::lua_pushboolean(l, 1);
                ffi::lua_pushnil(l);
                2
            }
            None => slow(l),
        }
    }
}
