//! The hot paths through the raw C API and the one value codec: runtime values pushed onto
//! a Lua stack ([`push`]) and read from one ([`read`]; [`to_lua`] and [`from_lua`] are the
//! two on a stack of their own, for mlua callers), and `process.send`/`process.spawn`.
//!
//! Must never: raise a Lua error from Rust (no longjmp over Rust frames) or touch a VM
//! outside a turn of its shard.

use std::ffi::c_void;
use std::os::raw::c_int;

use mlua::ffi;
use wippy_runtime::{Dest, Payload, Pid, Table, Value, MAX_DEPTH};

use crate::convert::Marks;
use crate::current::{self, LastDest};
use crate::vm::layout;

/// Whether `v` is plain data: no error objects anywhere in it ([`push`] then makes no
/// mlua call and cannot fail without a memory limit).
pub(crate) fn simple(v: &Value) -> bool {
    match v {
        Value::Error(_) => false,
        Value::Table(t) => t.array.iter().all(simple) && t.map.iter().all(|(k, v)| simple(k) && simple(v)),
        _ => true,
    }
}

/// Push a runtime value onto `l`: the one way a runtime value becomes a Lua value (the
/// mlua side's `convert::from_value` is this on a stack of its own). Plain data goes
/// straight through the C API; an error object is made as the `errors` module's userdata.
/// Fails only when an error object cannot be made (a memory limit).
///
/// # Safety
/// `l` is a thread of `lua`'s VM, not running, with [`push_room`]` + 1` free slots. With a
/// memory limit, inside a protected call (plain pushes allocate and may raise).
pub(crate) unsafe fn push(lua: &mlua::Lua, l: *mut ffi::lua_State, v: &Value) -> mlua::Result<()> {
    // SAFETY (whole body): the caller's contract.
    unsafe {
        match v {
            Value::Nil => ffi::lua_pushnil(l),
            Value::Bool(b) => ffi::lua_pushboolean(l, *b as c_int),
            Value::Int(i) => ffi::lua_pushinteger(l, *i),
            Value::Float(f) => ffi::lua_pushnumber(l, *f),
            Value::Str(s) => {
                ffi::lua_pushlstring(l, s.as_ptr() as *const _, s.len());
            }
            Value::Table(t) => {
                ffi::luaL_checkstack(l, 4, std::ptr::null());
                ffi::lua_createtable(l, t.array.len() as c_int, t.map.len() as c_int);
                for (i, item) in t.array.iter().enumerate() {
                    push(lua, l, item)?;
                    ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
                }
                for (k, item) in &t.map {
                    push(lua, l, k)?;
                    push(lua, l, item)?;
                    ffi::lua_rawset(l, -3);
                }
            }
            Value::Error(e) => push_error(lua, l, e)?,
        }
    }
    Ok(())
}

/// A runtime value as an mlua value: [`push`] on a stack of its own.
pub(crate) fn to_lua(lua: &mlua::Lua, v: &Value) -> mlua::Result<mlua::Value> {
    match v {
        // (no stack needed)
        Value::Nil => return Ok(mlua::Value::Nil),
        Value::Bool(b) => return Ok(mlua::Value::Boolean(*b)),
        Value::Int(i) => return Ok(mlua::Value::Integer(*i)),
        Value::Float(f) => return Ok(mlua::Value::Number(*f)),
        _ => {}
    }
    let room = 1 + push_room(v) as c_int;
    let mut pushed = Ok(());
    // SAFETY: exec_raw's protected call on a stack of this VM; what it leaves is the
    // result (after a failure, a nil in place of the value: the Err is returned instead).
    let got: mlua::Result<mlua::Value> = unsafe {
        lua.exec_raw((), |state| {
            ffi::luaL_checkstack(state, room, std::ptr::null());
            pushed = push(lua, state, v);
            if pushed.is_err() {
                ffi::lua_settop(state, 0);
                ffi::lua_pushnil(state);
            }
        })
    };
    pushed?;
    got
}

/// Push an error as the `errors` module's userdata (made through mlua, moved onto `l`).
///
/// # Safety
/// As [`push`].
pub(crate) unsafe fn push_error(lua: &mlua::Lua, l: *mut ffi::lua_State, e: &wippy_runtime::Error) -> mlua::Result<()> {
    let ud = lua.create_userdata(crate::modules::errors::LuaError::new(e.clone()))?;
    // SAFETY: the caller's contract (one free slot on `l`); exec_raw pushed `ud` onto a
    // stack of the same VM.
    unsafe { lua.exec_raw::<()>(ud, |state| ffi::lua_xmove(state, l, 1)) }
}

/// The first value of a resume that hands `receive`'s direct wait the value it waits for
/// (`receive_k`: a plain listen channel's receive; every other resume starts with a string
/// tag, `abi::EV_*`).
pub(crate) const EV_VALUE: ffi::lua_Integer = 0;

/// Stack slots [`push`] needs beyond the one it leaves: 4 per level of table nesting.
pub(crate) fn push_room(v: &Value) -> usize {
    match v {
        Value::Table(t) => 4 + t.array.iter().chain(t.map.iter().flat_map(|(k, v)| [k, v])).map(push_room).max().unwrap_or(0),
        _ => 0,
    }
}

/// Why a Lua value cannot become a runtime value: where in it (the field path, innermost
/// first while it is built on the way out) and why.
pub(crate) struct Refused {
    path: Vec<String>,
    why: String,
}

impl Refused {
    fn new(why: impl Into<String>) -> Box<Refused> {
        Box::new(Refused { path: Vec::new(), why: why.into() })
    }
    fn cannot_send(what: &str) -> Box<Refused> {
        Refused::new(format!("{what} cannot be sent to another process"))
    }
    /// The refusal in words; `what` names the value ("payload 2", "argument 1").
    pub(crate) fn describe(&self, what: &str) -> String {
        if self.path.is_empty() {
            format!("{what}: {}", self.why)
        } else {
            let field: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
            format!("{what}: field '{}': {}", field.join("."), self.why)
        }
    }
}

type Read = Result<Value, Box<Refused>>;

/// Read the value at stack index `idx` of the running C function (not a pseudo-index):
/// **the one reader of Lua values** (deep copies, cycles refused, binary-safe strings,
/// integers kept integers, error objects kept; what cannot cross a process boundary —
/// functions, coroutines, channels, message objects, other userdata — is refused, naming
/// the field). Plain data is read straight from the stack slots; only an error object
/// goes through mlua.
///
/// # Safety
/// `l` is a thread of `lua`'s VM, running a C function whose frame `idx` is a valid index
/// of.
pub(crate) unsafe fn read(lua: &mlua::Lua, l: *mut ffi::lua_State, idx: c_int, marks: &Marks) -> Read {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let mut seen = Vec::new();
        read_at(lua, l, ffi::lua_absindex(l, idx), marks, &mut seen)
    }
}

/// `idx` is an absolute index of the running C function's frame.
///
/// # Safety
/// As [`read`], with `idx` absolute.
unsafe fn read_at(lua: &mlua::Lua, l: *mut ffi::lua_State, idx: c_int, marks: &Marks, seen: &mut Vec<*const c_void>) -> Read {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        // Plain values straight from the stack slot (layout.rs; the frame is found again on
        // every call, since reading a table may grow the stack).
        match layout::plain(layout::slot(layout::frame(l).1, idx as usize)) {
            Some(layout::Plain::Nil) => return Ok(Value::Nil),
            Some(layout::Plain::Bool(b)) => return Ok(Value::Bool(b)),
            Some(layout::Plain::Int(x)) => return Ok(Value::Int(x)),
            Some(layout::Plain::Float(x)) => return Ok(Value::Float(x)),
            Some(layout::Plain::Str(b)) => return Ok(Value::bytes(b)),
            Some(layout::Plain::LightUserdata(_)) => return Err(Refused::cannot_send("a light userdata")),
            None => {}
        }
        match ffi::lua_type(l, idx) {
            ffi::LUA_TTABLE => {
                if ffi::lua_getmetatable(l, idx) != 0 {
                    let mt = ffi::lua_topointer(l, -1) as usize;
                    ffi::lua_pop(l, 1);
                    if mt == marks.channel {
                        return Err(Refused::cannot_send("a channel"));
                    }
                    if mt == marks.message {
                        return Err(Refused::cannot_send("a message object (send its payload instead)"));
                    }
                    if mt == marks.payload {
                        // a payload travels as its Lua value: slot 1, or slot 3 when slot 2
                        // names an encoding (the prelude's Payload.transcode keeps it there)
                        let slot = if ffi::lua_rawgeti(l, idx, 2) == ffi::LUA_TNIL { 1 } else { 3 };
                        ffi::lua_pop(l, 1);
                        ffi::lua_rawgeti(l, idx, slot);
                        let v = read_at(lua, l, ffi::lua_gettop(l), marks, seen);
                        ffi::lua_pop(l, 1);
                        return v;
                    }
                }
                let ptr = ffi::lua_topointer(l, idx);
                if seen.contains(&ptr) {
                    return Err(Refused::new("the table contains a cycle"));
                }
                if seen.len() >= MAX_DEPTH {
                    return Err(Refused::new(format!("tables nested deeper than {MAX_DEPTH}")));
                }
                if ffi::lua_checkstack(l, 4) == 0 {
                    return Err(Refused::new("not enough Lua stack to read it"));
                }
                seen.push(ptr);
                let r = read_table(lua, l, idx, marks, seen);
                seen.pop();
                r
            }
            ffi::LUA_TUSERDATA => userdata(lua, l, idx),
            ffi::LUA_TFUNCTION => Err(Refused::cannot_send("a function")),
            ffi::LUA_TTHREAD => Err(Refused::cannot_send("a coroutine")),
            _ => Err(Refused::cannot_send("this value")),
        }
    }
}

/// A userdata: an error object becomes the error it holds (mlua owns that type, so it is
/// read through mlua); anything else is refused.
///
/// # Safety
/// As [`read_at`].
#[cold]
unsafe fn userdata(lua: &mlua::Lua, l: *mut ffi::lua_State, idx: c_int) -> Read {
    let v = lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // SAFETY: `l` and `state` are threads of this VM (the caller's contract); the copy
        // goes onto `state`'s top (moved there when it is another thread) and is popped
        // again as an mlua value, so no frame changes under `idx`.
        unsafe {
            if ffi::lua_checkstack(l, 1) == 0 || ffi::lua_checkstack(state, 1) == 0 {
                return None;
            }
            ffi::lua_pushvalue(l, idx);
            if state != l {
                ffi::lua_xmove(l, state, 1);
            }
            Some(raw.pop_value())
        }
    });
    match v {
        Some(mlua::Value::UserData(ud)) => match ud.borrow::<crate::modules::errors::LuaError>() {
            Ok(e) => Ok(Value::Error(std::sync::Arc::new(e.error.clone()))),
            // a channel is held as a userdata handle whose metatable's __name is "channel"
            // (written "channel: 0x..." by tostring; mlua's type_name only reads its own types)
            Err(_) if mlua::Value::UserData(ud.clone()).to_string().is_ok_and(|t| t.starts_with("channel: ")) => Err(Refused::cannot_send("a channel")),
            Err(_) => Err(Refused::cannot_send("a userdata value")),
        },
        Some(mlua::Value::Error(e)) => Ok(Value::Error(std::sync::Arc::new(wippy_runtime::Error::internal(e.to_string())))),
        _ => Err(Refused::cannot_send("a userdata value")),
    }
}

/// How a table key is named in a field path.
///
/// # Safety
/// As [`read_at`]; `idx` holds the key.
unsafe fn key_name(l: *mut ffi::lua_State, idx: c_int) -> String {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TSTRING => String::from_utf8_lossy(bytes_at(l, idx)).into_owned(),
            ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => ffi::lua_tointeger(l, idx).to_string(),
            ffi::LUA_TNUMBER => ffi::lua_tonumber(l, idx).to_string(),
            ffi::LUA_TBOOLEAN => (ffi::lua_toboolean(l, idx) != 0).to_string(),
            _ => "<key>".to_string(),
        }
    }
}

/// # Safety
/// As [`read_at`]; the value at `idx` is a table, with 4 free slots.
unsafe fn read_table(lua: &mlua::Lua, l: *mut ffi::lua_State, idx: c_int, marks: &Marks, seen: &mut Vec<*const c_void>) -> Read {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let mut out = Table::new();
        let len = ffi::lua_rawlen(l, idx);
        let mut array = true;
        if len > 0 {
            out.array.reserve(len);
            for i in 1..=len {
                ffi::lua_rawgeti(l, idx, i as ffi::lua_Integer);
                if ffi::lua_type(l, -1) == ffi::LUA_TNIL {
                    ffi::lua_pop(l, 1);
                    array = false;
                    out.array.clear();
                    break;
                }
                let v = read_at(lua, l, ffi::lua_gettop(l), marks, seen);
                ffi::lua_pop(l, 1);
                match v {
                    Ok(v) => out.array.push(v),
                    Err(mut r) => {
                        r.path.push(i.to_string());
                        return Err(r);
                    }
                }
            }
        }
        let skip = if array { len as i64 } else { 0 };
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, idx) != 0 {
            let top = ffi::lua_gettop(l);
            if ffi::lua_isinteger(l, top - 1) != 0 {
                let k = ffi::lua_tointeger(l, top - 1);
                if k >= 1 && k <= skip {
                    ffi::lua_pop(l, 1);
                    continue;
                }
            }
            let kv = read_at(lua, l, top - 1, marks, seen).and_then(|k| read_at(lua, l, top, marks, seen).map(|v| (k, v)));
            match kv {
                Ok((k, v)) => {
                    ffi::lua_pop(l, 1);
                    out.map.push((k, v));
                }
                Err(mut r) => {
                    r.path.push(key_name(l, top - 1));
                    ffi::lua_pop(l, 2);
                    return Err(r);
                }
            }
        }
        Ok(Value::table(out))
    }
}

/// A Lua value as a runtime value ([`read`] on a stack of its own).
pub(crate) fn from_lua(v: &mlua::Value, marks: &Marks) -> Read {
    match v {
        // (no stack needed)
        mlua::Value::Nil => return Ok(Value::Nil),
        mlua::Value::Boolean(b) => return Ok(Value::Bool(*b)),
        mlua::Value::Integer(i) => return Ok(Value::Int(*i)),
        mlua::Value::Number(n) => return Ok(Value::Float(*n)),
        _ => {}
    }
    let Some(lua) = v.weak_lua().and_then(|w| w.try_upgrade()) else { return Err(Refused::new("its Lua state is gone")) };
    let lua = &lua;
    let mut out = Err(Refused::new("the value could not be read"));
    // SAFETY: exec_raw's protected call: a C function frame on a stack of this VM, with
    // `v` as its argument 1.
    let called: mlua::Result<()> = unsafe { lua.exec_raw(v, |state| out = read(lua, state, 1, marks)) };
    called.map_err(|e| Refused::new(e.to_string()))?;
    out
}

/// The call answered by the running C closure's upvalue 1 (a function: the mlua one a C
/// fast path stands in front of), with the same arguments and all its results.
///
/// # Safety
/// Inside a C closure whose upvalue 1 is a function, with one free slot.
pub(crate) unsafe fn call_upvalue(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        let n = ffi::lua_gettop(l);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_rotate(l, 1, 1);
        ffi::lua_call(l, n, ffi::LUA_MULTRET);
        ffi::lua_gettop(l)
    }
}

/// Push a PID's string form (`""` for nobody). `cache` keeps the last one made (a
/// receiver mostly hears from the same sender again; `process.pid()` asks for its own).
///
/// # Safety
/// `l` is a thread of the VM, not running or the one calling a C function, with one free
/// slot.
pub(crate) unsafe fn push_pid(l: *mut ffi::lua_State, pid: Pid, cache: &mut PidText) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        if pid.is_nobody() {
            ffi::lua_pushlstring(l, b"".as_ptr() as *const _, 0);
            return;
        }
        let text = match cache {
            Some(c) if c.0 == pid => &c.1,
            _ => &cache.insert(Box::new((pid, pid.to_string().into_boxed_str()))).1,
        };
        ffi::lua_pushlstring(l, text.as_ptr() as *const _, text.len());
    }
}

/// A PID and its text, remembered by a process for the next message from the same sender.
pub(crate) type PidText = Option<Box<(Pid, Box<str>)>>;

/// `R.make_send(send_slow, make_error)`: `process.send` as one C function. Plain data to a
/// destination given as a string goes through [`send_fast`]; a refusal becomes `nil, err`
/// (`make_error(kind, message)`); anything else is handed to `send_slow`, the full send.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots (argument 1 the full send, 2 `make_error`).
pub(crate) unsafe extern "C-unwind" fn make_send(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 2);
        ffi::lua_pushcclosure(l, send, 2);
        1
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made by [`make_send`] (its two upvalues).
unsafe extern "C-unwind" fn send(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        fast_or_slow(l, send_fast)
    }
}

/// `R.make_spawn(spawn_slow, make_error)`: `process.spawn` as one C function, the same way
/// as `make_send`: an entry and a host given as strings and plain-data arguments go
/// through [`spawn_fast`], anything else to `spawn_slow`.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots (argument 1 the full spawn, 2 `make_error`).
pub(crate) unsafe extern "C-unwind" fn make_spawn(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 2);
        ffi::lua_pushcclosure(l, spawn, 2);
        1
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made by [`make_spawn`] (its two upvalues).
unsafe extern "C-unwind" fn spawn(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        fast_or_slow(l, spawn_fast)
    }
}

/// Run `fast`: its one result; or its `false, kind, message` as `nil, make_error(kind,
/// message)`; or, when it answered nothing, the full function (upvalue 1) on the original
/// arguments.
///
/// # Safety
/// Inside a C closure made by `make_send` or `make_spawn` (upvalue 1 the full function,
/// 2 `make_error`); `fast` follows the same contract.
unsafe fn fast_or_slow(l: *mut ffi::lua_State, fast: unsafe fn(*mut ffi::lua_State) -> c_int) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let n = ffi::lua_gettop(l);
        match fast(l) {
            1 => 1,
            3 => {
                // false, kind, message -> nil, make_error(kind, message)
                ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
                ffi::lua_rotate(l, -3, 1);
                ffi::lua_call(l, 2, 1);
                ffi::lua_pushnil(l);
                ffi::lua_rotate(l, -2, 1);
                2
            }
            _ => {
                ffi::lua_settop(l, n);
                ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
                ffi::lua_rotate(l, 1, 1);
                ffi::lua_call(l, n, ffi::LUA_MULTRET);
                ffi::lua_gettop(l)
            }
        }
    }
}

/// The raw spawn (`process.spawn(entry, host, ...)`): the new PID; nothing when the call
/// needs the full (mlua) `process.spawn`, which also words every refusal (a refused spawn
/// changed nothing, so it is simply made again there).
///
/// # Safety
/// Inside the C function `spawn` (see [`fast_or_slow`]).
unsafe fn spawn_fast(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let n = ffi::lua_gettop(l);
        if n < 2 || ffi::lua_type(l, 1) != ffi::LUA_TSTRING || ffi::lua_type(l, 2) != ffi::LUA_TSTRING {
            return 0;
        }
        let (Some(entry), Some(host)) = (str_at(l, 1), str_at(l, 2)) else { return 0 };
        let r = current::with(|cx, st| {
            let marks = st.shard.marks;
            // (inside a step of this thread's turn: the caller's contract)
            let Some(vm) = super::current() else { return Ok(None) };
            let mut args = Vec::with_capacity((n - 2) as usize);
            for i in 3..=n {
                match read(&vm.lua, l, i, &marks) {
                    Ok(v) => args.push(v),
                    // (the full spawn words the refusal)
                    Err(_) => return Ok(None),
                }
            }
            Ok(Some(cx.spawn_on(host, wippy_runtime::Spawn::entry(entry).args(args))))
        });
        match r {
            Ok(Some(Ok(pid))) => {
                // the text is copied out first: a push may raise, and nothing with a destructor
                // may be alive when it does
                let mut buf = [0u8; 128];
                let len = pid.with_text(|t| {
                    let len = t.len().min(buf.len());
                    buf[..len].copy_from_slice(&t.as_bytes()[..len]);
                    t.len()
                });
                if len > buf.len() {
                    return 0;
                }
                ffi::lua_pushlstring(l, buf.as_ptr() as *const _, len);
                1
            }
            _ => 0,
        }
    }
}

/// The bytes of the string at `idx` (valid while it stays on the stack).
///
/// # Safety
/// `l` is the running thread and `idx` holds a string (or a number, which Lua converts
/// in place); the slice must not outlive the value's place on the stack.
pub(crate) unsafe fn bytes_at<'a>(l: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, idx, &mut len);
        std::slice::from_raw_parts(p as *const u8, len)
    }
}

/// `b` as UTF-8, with a short way for ASCII (topics and names mostly are).
pub(crate) fn utf8(b: &[u8]) -> Option<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b).ok()
    }
}

/// The string at `idx` as UTF-8 (valid while it stays on the stack).
///
/// # Safety
/// As [`bytes_at`].
pub(crate) unsafe fn str_at<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        utf8(bytes_at(l, idx))
    }
}

/// Whether the value at `idx` has the metatable at `mt` (its own, past `__metatable`).
/// Pushes that metatable when there is one.
///
/// # Safety
/// `l` is the running thread with one free slot; `idx` and `mt` are valid indices.
pub(crate) unsafe fn metatable_is(l: *mut ffi::lua_State, idx: c_int, mt: c_int) -> bool {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_getmetatable(l, idx) != 0 && ffi::lua_rawequal(l, -1, mt) != 0
    }
}

/// The raw send: `true`; `false, kind, message` when the runtime refuses; nothing at all
/// when the call needs the full (mlua) `process.send`.
///
/// # Safety
/// Inside the C function `send` (see [`fast_or_slow`]).
unsafe fn send_fast(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let n = ffi::lua_gettop(l);
        if n < 2 {
            return 0;
        }
        // (the arguments read straight from the stack, layout.rs; the strings' bytes stay put)
        let (_, func) = layout::frame(l);
        let (Some((key, dest_text)), Some((_, topic))) =
            (layout::string(layout::slot(func, 1)), layout::string(layout::slot(func, 2)))
        else {
            return 0;
        };
        // The destination string object: the one sent to last is known without reading it
        // once it is anchored. It is anchored on the second send in a row to it (a process
        // that sends once, as most replies do, keeps no registry reference for it); the
        // first only notes its address, which proves nothing until the string is kept alive.
        let Ok((cached, again)) = current::state(|st| match &st.last_dest {
            Some(d) if d.key == key => (d.anchor != 0, d.anchor == 0),
            _ => (false, false),
        }) else {
            return 0;
        };
        // An anchor is made before anything here owns memory (the reference may raise a
        // memory error).
        let mut anchor = if again {
            ffi::lua_pushvalue(l, 1);
            ffi::luaL_ref(l, ffi::LUA_REGISTRYINDEX)
        } else {
            0
        };
        let Some(topic) = utf8(topic) else {
            if anchor != 0 {
                ffi::luaL_unref(l, ffi::LUA_REGISTRYINDEX, anchor);
            }
            return 0;
        };
        let r = current::with(|cx, st| {
            let marks = st.shard.marks;
            // (inside a step of this thread's turn: the caller's contract)
            let Some(vm) = super::current() else { return Ok(None) };
            let mut payload = Payload::new();
            for i in 3..=n {
                match read(&vm.lua, l, i, &marks) {
                    Ok(v) => payload.push(v),
                    Err(r) => return Ok(Some(Err(wippy_runtime::Error::invalid(r.describe(&format!("payload {}", i - 2)))))),
                }
            }
            let dest = match &st.last_dest {
                Some(last) if cached => last.dest.clone(),
                _ => {
                    let Some(text) = utf8(dest_text) else { return Ok(None) };
                    // (a malformed PID: the full send words the error)
                    let Ok(d) = Dest::parse(text) else { return Ok(None) };
                    // the text just parsed is what the address holds while anchored; the old
                    // anchor (if any) goes, the new one (if any) stays
                    let old = st.last_dest.replace(LastDest { dest: d.clone(), key, anchor });
                    anchor = old.map_or(0, |o| o.anchor);
                    d
                }
            };
            Ok(Some(cx.send(dest, topic, payload)))
        });
        // (a replaced or unused anchor; luaL_unref allocates nothing, so it cannot raise)
        if anchor != 0 {
            ffi::luaL_unref(l, ffi::LUA_REGISTRYINDEX, anchor);
        }
        match r {
            Ok(Some(Ok(()))) => {
                ffi::lua_pushboolean(l, 1);
                1
            }
            Ok(Some(Err(e))) => {
                ffi::lua_pushboolean(l, 0);
                let k = e.kind_str();
                ffi::lua_pushlstring(l, k.as_ptr() as *const _, k.len());
                ffi::lua_pushlstring(l, e.message.as_ptr() as *const _, e.message.len());
                3
            }
            _ => 0,
        }
    }
}

use super::abi::{C_FLAGS, C_N, C_RQ, C_SQ, C_TOPIC, F_CLOSED, F_EXT, F_PLAIN, P_INBOX, P_NPEND, P_RH, Q_H, Q_T};

/// Messages a process state table `p` holds but its code has not received: its pending
/// queue and what waits in its inbox channel (for `wippy ps`).
///
/// # Safety
/// `p` is a live process state table of a VM whose turn runs on this thread.
pub(crate) unsafe fn unreceived(p: *const u8) -> usize {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let pending = layout::array(p, P_NPEND).and_then(|v| layout::as_int(v)).unwrap_or(0);
        let inbox = layout::array(p, P_INBOX)
            .and_then(|v| layout::as_table(v))
            .and_then(|ch| layout::array(ch, C_N))
            .and_then(|v| layout::as_int(v))
            .unwrap_or(0);
        (pending.max(0) + inbox.max(0)) as usize
    }
}

thread_local! {
    /// The main coroutine of the process being resumed on this thread (set by every
    /// resume): `receive` tells main from the process's other coroutines without reading
    /// `P[CO]` (the first cache line of P's slots, which the wait touches nothing else in).
    static MAIN_CO: std::cell::Cell<*mut ffi::lua_State> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Record `l` as the main coroutine of the process about to be resumed.
pub(crate) fn set_main_co(l: *mut ffi::lua_State) {
    MAIN_CO.with(|c| c.set(l));
}

/// What a process's coroutine yields to Rust to take the next runtime event (`R.WAIT` in
/// the prelude): a light userdata, which no Lua code can make.
pub(crate) fn wait_tag() -> *mut std::ffi::c_void {
    static WAIT: u8 = 0;
    &WAIT as *const u8 as *mut std::ffi::c_void
}

/// What `receive`'s direct wait yields instead of the wait tag: the same wait, with the
/// process state `P` left at `AT_P` of the suspended frame (where the next resume reads
/// it instead of the registry).
pub(crate) fn direct_tag() -> *mut std::ffi::c_void {
    static DIRECT: u8 = 0;
    &DIRECT as *const u8 as *mut std::ffi::c_void
}

/// `R.make_receive(channel_mt, receive, direct_other, S)`: a channel's `receive` as one C
/// function. It takes the channel's handle (or its state table, from the prelude), and the
/// common wait -- main alone, nothing buffered or queued, on a channel the mailbox feeds --
/// yields the direct tag (with the topic of a plain listen channel) to Rust right here; a
/// plain listen channel's value comes back as `(0, value)` and is returned as `value, true`,
/// any other answer goes to `direct_other(P, ch, ...)`. Every other case runs the Lua
/// `receive`. `S` is the prelude's shard table (`S[1]`: the running process's state).
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots.
pub(crate) unsafe extern "C-unwind" fn make_receive(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 4);
        ffi::lua_pushlightuserdata(l, direct_tag());
        // upvalues: 1 channel_mt, 2 receive, 3 direct_other, 4 S, 5 the direct tag
        ffi::lua_pushcclosure(l, receive, 5);
        1
    }
}

// A channel as process code holds it: a full userdata with no bytes of its own whose one
// user value is the channel's state table (which only the prelude and this file read), so
// nothing of the runtime's state is reachable from Lua (SECURITY.md).

/// `R.make_handle(handle_mt)`: `new_handle(state)`, the handle of a new channel.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots.
pub(crate) unsafe extern "C-unwind" fn make_handle(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 1);
        ffi::lua_pushcclosure(l, new_handle, 1);
        1
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made by [`make_handle`].
unsafe extern "C-unwind" fn new_handle(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe { push_handle(l, 1, ffi::lua_upvalueindex(1)) };
    1
}

/// Push a new handle of the channel state at `chan` (an absolute index), with metatable
/// the value at `mt`.
///
/// # Safety
/// `l` is a thread of the VM with a free slot; `chan` and `mt` are valid absolute or
/// pseudo-indices.
unsafe fn push_handle(l: *mut ffi::lua_State, chan: c_int, mt: c_int) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_newuserdatauv(l, 0, 1);
        ffi::lua_pushvalue(l, chan);
        ffi::lua_setiuservalue(l, -2, 1);
        ffi::lua_pushvalue(l, mt);
        ffi::lua_setmetatable(l, -2);
    }
}

/// `R.make_inbox(S, channel_mt, handle_mt, drain)`: `process.inbox()` as one C function.
/// The inbox is made here, at the caller's call depth: a Lua `inbox` calling
/// `setmetatable` and `new_handle` put a third call frame on main's coroutine, and a
/// coroutine keeps every call frame it ever had (Lua frees spare ones only in pairs), so
/// each parked process carried one more 64-byte `CallInfo`.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots.
pub(crate) unsafe extern "C-unwind" fn make_inbox(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 4);
        ffi::lua_pushcclosure(l, inbox, 4);
        1
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made
/// by [`make_inbox`] while a process runs (`S[1]` is its state).
unsafe extern "C-unwind" fn inbox(l: *mut ffi::lua_State) -> c_int {
    use super::abi::{C_H, C_SIZE};
    // SAFETY: what this function's `# Safety` asks of its caller; every value read is the
    // prelude's (P, its inbox) and has the shape vm/abi.rs names.
    unsafe {
        ffi::lua_settop(l, 0);
        ffi::lua_rawgeti(l, ffi::lua_upvalueindex(1), 1); // 1: P
        if ffi::lua_rawgeti(l, 1, P_INBOX) == ffi::LUA_TTABLE {
            ffi::lua_rawgeti(l, 2, C_H);
            return 1;
        }
        ffi::lua_settop(l, 1);
        // { N = 0, SIZE = 0, HANDLE, FLAGS = F_EXT } (the other slots read nil)
        ffi::lua_createtable(l, 4, 0); // 2: the channel
        ffi::lua_pushinteger(l, 0);
        ffi::lua_rawseti(l, 2, C_N);
        ffi::lua_pushinteger(l, 0);
        ffi::lua_rawseti(l, 2, C_SIZE);
        ffi::lua_pushinteger(l, F_EXT);
        ffi::lua_rawseti(l, 2, C_FLAGS);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
        ffi::lua_setmetatable(l, 2);
        push_handle(l, 2, ffi::lua_upvalueindex(3)); // 3: its handle
        ffi::lua_pushvalue(l, 3);
        ffi::lua_rawseti(l, 2, C_H);
        ffi::lua_pushvalue(l, 2);
        ffi::lua_rawseti(l, 1, P_INBOX);
        ffi::lua_rawgeti(l, 1, P_NPEND);
        let pending = ffi::lua_tointeger(l, -1);
        ffi::lua_settop(l, 3);
        if pending > 0 {
            // messages that waited for the inbox go into it now
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(4));
            ffi::lua_pushvalue(l, 1);
            ffi::lua_call(l, 1, 0);
        }
        1
    }
}

/// `R.make_chan_of(channel_mt)`: `chan_of(x)`, the state of channel handle `x`, or nil
/// when `x` is not one.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots.
pub(crate) unsafe extern "C-unwind" fn make_chan_of(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_settop(l, 1);
        ffi::lua_pushcclosure(l, chan_of, 1);
        1
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made by [`make_chan_of`].
unsafe extern "C-unwind" fn chan_of(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        if ffi::lua_type(l, 1) == ffi::LUA_TUSERDATA
            && ffi::lua_getiuservalue(l, 1, 1) == ffi::LUA_TTABLE
            && metatable_is(l, -1, ffi::lua_upvalueindex(1))
        {
            ffi::lua_pop(l, 1); // the metatable
            return 1;
        }
        ffi::lua_pushnil(l);
        1
    }
}

/// Whether a channel's send or receive queue slot holds a queue with someone in it; `None`
/// when that cannot be read directly.
///
/// # Safety
/// `ch` is a live channel table of the VM whose turn runs on this thread.
unsafe fn queued(ch: *const u8, slot: ffi::lua_Integer) -> Option<bool> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        let v = layout::array(ch, slot)?;
        let Some(q) = layout::as_table(v) else { return Some(false) };
        let head = layout::as_int(layout::array(q, Q_H)?)?;
        let tail = layout::as_int(layout::array(q, Q_T)?)?;
        Some(head <= tail)
    }
}

// Where the direct wait leaves what it read on the stack: the channel, then P (read from
// there by the next resume); the answer goes above.
pub(crate) const AT_CH: c_int = 1;
pub(crate) const AT_P: c_int = 2;
const AT_ANSWER: c_int = 3;

/// Whether `receive(ch)` may wait right here for the mailbox: main alone runs (P's ready
/// queue and pending mailbox items empty), and the channel is a mailbox-fed one with
/// nothing buffered, queued or closed. `Some(plain)` then (a plain listen channel), `None`
/// whenever anything is otherwise, or cannot be read straight from the tables (layout.rs;
/// the Lua `receive` then decides).
///
/// # Safety
/// Inside the C function `receive`, on its own frame.
unsafe fn direct_wait(l: *mut ffi::lua_State) -> Option<bool> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        if ffi::lua_gettop(l) != 1 || MAIN_CO.with(|c| c.get()) != l {
            return None;
        }
        let (_, func) = layout::frame(l);
        let at = layout::slot(func, AT_CH as usize);
        // process code passes the channel's handle (the prelude may pass the state itself)
        let ch = layout::uservalue_table(at).or_else(|| layout::as_table(at))?;
        let plain = direct_wait_on(l, ch)?;
        // the rest of the wait reads the state at AT_CH (the handle stays reachable: the
        // process holds it, and the state's C_H slot too)
        layout::set_slot_table(at, ch);
        Some(plain)
    }
}

/// # Safety
/// As [`direct_wait`]; `ch` is the live channel table at `AT_CH`.
unsafe fn direct_wait_on(l: *mut ffi::lua_State, ch: *const u8) -> Option<bool> {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        // (a process's first resume runs before its Rust state is entered, and must wait here
        // all the same: a parked process's stack is smallest this way; then the channel
        // metatable is upvalue 1)
        let (channel_mt, dirty) = match current::state(|st| (st.shard.marks.channel, st.dirty)) {
            Ok((mt, dirty)) => (mt as *const c_void, dirty),
            Err(_) => (ffi::lua_topointer(l, ffi::lua_upvalueindex(1)), true),
        };
        if layout::metatable(ch) != channel_mt {
            return None;
        }
        let n = layout::as_int(layout::array(ch, C_N)?)?;
        let flags = layout::as_int(layout::array(ch, C_FLAGS)?)?;
        if n != 0 || flags & (F_EXT | F_CLOSED) != F_EXT || queued(ch, C_SQ)? || queued(ch, C_RQ)? {
            return None;
        }
        // P's ready queue and pending count (another cache line of a cold process) are read
        // only when one may have become non-empty since they were last found empty
        if dirty {
            let s = ffi::lua_topointer(l, ffi::lua_upvalueindex(4)) as *const u8;
            let p = layout::as_table(layout::array(s, 1)?)?;
            let ready = layout::as_table(layout::array(p, P_RH)?).is_some();
            let pending = layout::as_int(layout::array(p, P_NPEND)?)? != 0;
            if ready || pending {
                return None;
            }
            let _ = current::state(|st| st.dirty = false);
        }
        Some(flags & F_PLAIN != 0)
    }
}

/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, made by [`make_receive`] (its upvalues).
unsafe extern "C-unwind" fn receive(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        // Nothing below owns anything: the yields and errors leave this frame by longjmp.
        if let Some(plain) = direct_wait(l) {
            // P: the running process's state, S[1] (a channel is only ever used by its owner)
            ffi::lua_rawgeti(l, ffi::lua_upvalueindex(4), 1);
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(5));
            if plain {
                ffi::lua_rawgeti(l, AT_CH, C_TOPIC);
                return ffi::lua_yieldk(l, 2, 1, Some(receive_k));
            }
            return ffi::lua_yieldk(l, 1, 0, Some(receive_k));
        }
        // The slow way: a handle is replaced by its state (a userdata without one stays, and
        // fails the channel check).
        if ffi::lua_type(l, AT_CH) == ffi::LUA_TUSERDATA {
            if ffi::lua_getiuservalue(l, AT_CH, 1) == ffi::LUA_TTABLE {
                ffi::lua_replace(l, AT_CH);
            } else {
                ffi::lua_pop(l, 1);
            }
        }
        if !metatable_is(l, AT_CH, ffi::lua_upvalueindex(1)) {
            let tp = ffi::lua_type(l, AT_CH);
            ffi::luaL_where(l, 1);
            ffi::lua_pushstring(l, c"bad argument #1 to 'receive' (channel expected, got ".as_ptr());
            ffi::lua_pushstring(l, ffi::lua_typename(l, if tp == ffi::LUA_TNONE { ffi::LUA_TNIL } else { tp }));
            ffi::lua_pushstring(l, c")".as_ptr());
            ffi::lua_concat(l, 4);
            ffi::lua_error(l);
        }
        ffi::lua_settop(l, AT_CH);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
        ffi::lua_rotate(l, AT_CH, 1);
        ffi::lua_callk(l, 1, ffi::LUA_MULTRET, 0, Some(results_above));
        ffi::lua_gettop(l)
    }
}

/// After the direct wait: the stack as `receive` left it, the answer from AT_ANSWER on;
/// `ctx` 1 on a plain listen channel.
///
/// # Safety
/// The continuation of `receive`'s yield, on its frame (Lua calls it on resume).
unsafe extern "C-unwind" fn receive_k(l: *mut ffi::lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        if ctx == 1 {
            let mut isint = 0;
            if ffi::lua_tointegerx(l, AT_ANSWER, &mut isint) == 0 && isint != 0 {
                // (0, value) -> value, true
                ffi::lua_pushboolean(l, 1);
                return 2;
            }
        }
        // direct_other(P, ch, answer...)
        let n = ffi::lua_gettop(l) - AT_ANSWER + 1;
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(3));
        ffi::lua_pushvalue(l, AT_P);
        ffi::lua_pushvalue(l, AT_CH);
        ffi::lua_rotate(l, AT_ANSWER, 3);
        let base = (AT_ANSWER - 1) as ffi::lua_KContext;
        ffi::lua_callk(l, n + 2, ffi::LUA_MULTRET, base, Some(results_above));
        ffi::lua_gettop(l) - AT_ANSWER + 1
    }
}

/// Continuation of a call whose results are everything above stack slot `ctx`.
///
/// # Safety
/// The continuation of a `lua_callk` whose results sit above slot `ctx`.
unsafe extern "C-unwind" fn results_above(l: *mut ffi::lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        ffi::lua_gettop(l) - ctx as c_int
    }
}

/// A string library function that also takes error objects where it takes strings (SPEC
/// §12.1.1): upvalue 1 is the library's own C function, upvalue 2 the error objects'
/// metatable, upvalue 3 whether it is `format`. An error argument is replaced by its message
/// (its `__tostring`; for `format` its text with context, `__fulltext`); then the
/// function runs on the same frame. A call without userdata arguments only pays a tag check
/// per argument.
///
/// # Safety
/// A C function Lua calls: `l` is the calling thread, with `LUA_MINSTACK` free slots, a C closure made as the doc above says (three upvalues).
pub(crate) unsafe extern "C-unwind" fn string_coerced(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        // (the argument count, the tags and the wrapped function read straight from the frame:
        // this sits in front of every string function, layout.rs; a call without userdata
        // arguments is one tag compare per argument and a jump)
        let (n, func) = layout::frame_args(l);
        let mut v = layout::slot(func, 1);
        let end = v.add(n);
        while v < end {
            if layout::is_userdata(v) {
                coerce_errors(l, n);
                break;
            }
            v = v.add(1);
        }
        match layout::upvalue_cfunction(func) {
            Some(f) => f(l),
            None => match ffi::lua_tocfunction(l, ffi::lua_upvalueindex(1)) {
                Some(f) => f(l),
                None => 0,
            },
        }
    }
}

/// The slow half of [`string_coerced`]: replace each error argument by its text.
///
/// # Safety
/// Inside [`string_coerced`], whose first `n` arguments are on the frame.
#[cold]
#[inline(never)]
unsafe fn coerce_errors(l: *mut ffi::lua_State, n: usize) {
    // SAFETY: what this function's `# Safety` asks of its caller.
    unsafe {
        for i in 1..=n as c_int {
            if ffi::lua_type(l, i) != ffi::LUA_TUSERDATA || ffi::lua_getmetatable(l, i) == 0 {
                continue;
            }
            let is_error = ffi::lua_rawequal(l, -1, ffi::lua_upvalueindex(2)) != 0;
            ffi::lua_pop(l, 1);
            if !is_error {
                continue;
            }
            // `format` wants the contextual text (upvalue 3), the others the message
            let meta = if ffi::lua_toboolean(l, ffi::lua_upvalueindex(3)) != 0 { c"__fulltext" } else { c"__tostring" };
            if ffi::luaL_callmeta(l, i, meta.as_ptr()) != 0 {
                if ffi::lua_type(l, -1) == ffi::LUA_TSTRING {
                    ffi::lua_replace(l, i);
                } else {
                    ffi::lua_pop(l, 1);
                }
            }
        }
    }
}
