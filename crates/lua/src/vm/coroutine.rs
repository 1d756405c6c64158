//! A Lua process's coroutine as the C API sees it: building its state with the prelude's
//! `new_process` (from a pooled coroutine when one is free), resuming it with a runtime
//! event pushed straight onto its stack, classifying how the resume ended without making
//! mlua values, and letting go of it (back into the pool when it returned cleanly).
//!
//! Every runtime event reaches Lua through one encoder, [`Coroutine::resume`]: the tag
//! (`abi::EV_*`) and the event's values, each pushed by `raw::push` (errors included, as
//! the `errors` module's userdata). What a process does with the outcome (exit results,
//! upgrades, memory limits) is `process.rs`'s.
//!
//! Must never: touch the coroutine outside a turn of its shard, or leave a stack it borrowed
//! (the main thread's, between resumes) other than it found it.

use std::os::raw::c_int;

use mlua::{ffi, Lua, MultiValue, Table, Value as LuaValue};
use wippy_runtime::{prefetch, Event, Value};

use super::preempt::Preempt;
use super::sandbox::{EntryCode, Thread, Vm, POOL_MAX};
use super::{abi, layout, raw};

/// A process's coroutine and what resuming it needs. The Lua thread is only ever touched
/// inside a turn of its shard (which moves between workers as a whole), so it may move
/// with the process.
pub(crate) struct Coroutine {
    /// The Lua thread (null before the start and after the end). Kept alive by the state
    /// table (`P.co`), which the registry reference `p_ref` keeps.
    l: *mut ffi::lua_State,
    /// Registry references of the process state table and of the shard table.
    p_ref: c_int,
    s_ref: c_int,
    /// The text of the last sender's PID (made on the first message).
    from_cache: raw::PidText,
    /// The last yield was `receive`'s direct wait (`raw::direct_tag`): `P` is on the
    /// suspended frame.
    direct: bool,
    /// Main returned: the coroutine may be reused (see `Vm::pool`).
    finished: bool,
    /// While main alone waits on a plain listen channel: its topic (a one-value message on
    /// it is handed over directly), as the bytes of the channel's topic string, which the
    /// waiting `receive` keeps alive until the next resume. Empty otherwise.
    hint: *const u8,
    hint_len: u32,
}

// SAFETY: see above; the shard's VM lock serialises every use.
unsafe impl Send for Coroutine {}

/// What a process's first resume gets besides its state: see [`Coroutine::start`].
pub(crate) struct Start<'a> {
    pub(crate) code: &'a EntryCode,
    /// The method main runs; `own_method`: it is the entry's own (its Lua string is in
    /// the code's keys).
    pub(crate) method: &'a str,
    pub(crate) own_method: bool,
    /// Spawn arguments, pushed by `raw::push`.
    pub(crate) values: &'a [Value],
    /// Arguments already in Lua (an upgrade's), pushed after `values`.
    pub(crate) lua_args: MultiValue,
    /// After an upgrade: the messages the old state had not taken, and how many.
    pub(crate) carry: Option<(Table, i64)>,
    /// The VM has a memory limit: every allocation may raise.
    pub(crate) limited: bool,
}

/// What a resume pushes onto the coroutine.
pub(crate) enum Input {
    /// Already on the coroutine's stack (the start): how many.
    Pushed(c_int),
    /// A runtime event, or nothing (going on after a preemption).
    Event(Option<Event>),
}

/// How a resume of the process coroutine ended.
pub(crate) enum Resumed {
    /// Yielded the wait tag (`raw::wait_tag`): it takes the next event.
    Wait,
    /// Suspended by the preemption hook (yielded nothing).
    Preempted,
    /// Yielded something else (a plain coroutine.yield at main's top level).
    UserYield,
    /// Yielded "exit" from the scheduler: `"exit", ok, value|error`.
    Exit(MultiValue),
    /// Main returned these values.
    Finished(MultiValue),
    /// Raised this error.
    Failed(LuaValue),
}

const R_WAIT: i64 = 1;
const R_PREEMPTED: i64 = 2;
const R_USER_YIELD: i64 = 3;
const R_EXIT: i64 = 4;
const R_FINISHED: i64 = 5;
const R_FAILED: i64 = 6;

impl Coroutine {
    pub(crate) fn new() -> Coroutine {
        Coroutine {
            l: std::ptr::null_mut(),
            p_ref: 0,
            s_ref: 0,
            from_cache: None,
            direct: false,
            finished: false,
            hint: std::ptr::null(),
            hint_len: 0,
        }
    }

    /// The process has a state to resume.
    pub(crate) fn is_live(&self) -> bool {
        !self.l.is_null()
    }

    /// The last yield was `receive`'s direct wait.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Main returned: the coroutine may go back to the pool on release.
    pub(crate) fn set_finished(&mut self) {
        self.finished = true;
    }

    /// Forget the plain-channel hint (the next input is not an event it applies to).
    pub(crate) fn clear_hint(&mut self) {
        self.hint_len = 0;
    }

    /// The watchdog may arm the hook on this coroutine from now on (it runs next).
    pub(crate) fn runs_next(&self, preempt: &Preempt) {
        preempt.set_main(self.l);
    }

    /// Build the process's state with the prelude's `new_process` and leave main's first
    /// resume arguments on the coroutine; returns how many.
    ///
    /// Without a memory limit nothing here can fail but the whole program running out of
    /// memory (no user code runs: the prelude's constructor, pushes, a reference), so the
    /// state is built right on the main thread; with one, or with values only mlua can push
    /// (an upgrade's), inside a protected call.
    pub(crate) fn start(&mut self, vm: &Vm, start: Start<'_>) -> mlua::Result<c_int> {
        let Start { code, method, own_method, values, lua_args, carry, limited } = start;
        let room = 8
            + 5
            + lua_args.len() as c_int
            + values.len() as c_int
            + values.iter().map(raw::push_room).max().unwrap_or(0) as c_int;
        let mut build = Build {
            lua: &vm.lua,
            new_process: vm.new_process,
            s_ref: vm.s_ref,
            pooled: None,
            code,
            own_method,
            method,
            values,
            room,
        };
        let main = vm.main.0;
        let plain = !limited
            && carry.is_none()
            && lua_args.is_empty()
            // (a bound far below Lua's stack limit: the pushes cannot overflow it)
            && values.len() < 64
            // (an error object is made through mlua, which may raise)
            && values.iter().all(raw::simple)
            // SAFETY: the main thread is not running (a start happens between resumes).
            && unsafe { ffi::lua_checkstack(main, room + 8) } != 0;
        let (p_ref, co, nargs) = if plain {
            let mut pool = vm.pool.borrow_mut();
            if !pool.is_empty() {
                build.pooled = Some((pool.len() as c_int, vm.pool_ref, vm.main_body));
                pool.pop();
            }
            drop(pool);
            // SAFETY: as above; `build` leaves the main thread's stack as it found it, and
            // with simple values and no limit nothing in it raises.
            unsafe {
                let base = ffi::lua_gettop(main);
                ffi::lua_pushnil(main);
                ffi::lua_pushnil(main);
                let r = build.run(main, base);
                ffi::lua_settop(main, base);
                r?
            }
        } else {
            let (carry, ncarry) = match carry {
                Some((t, n)) => (LuaValue::Table(t), LuaValue::Integer(n)),
                None => (LuaValue::Nil, LuaValue::Nil),
            };
            let mut out = Ok((0, std::ptr::null_mut(), 0));
            // SAFETY: in exec_raw's protected call: the stack holds carry, ncarry and the
            // mlua arguments; nothing with a destructor lives across the calls that may
            // raise; the closure leaves the stack empty.
            unsafe {
                vm.lua.exec_raw::<()>((carry, ncarry, lua_args), |state| {
                    out = build.run(state, 0);
                    ffi::lua_settop(state, 0);
                })
            }?;
            out?
        };
        self.l = co;
        self.p_ref = p_ref;
        self.s_ref = vm.s_ref;
        Ok(nargs)
    }

    /// Mark the state as an HTTP handler's: its response goes when main returns, and the
    /// tasks it spawned run on (SPEC §11.2): the prelude's main_body sees `P[X].linger`.
    pub(crate) fn set_linger(&self, vm: &Vm) {
        let main = vm.main.0;
        // SAFETY: the main thread is not running between resumes; P is in the registry
        // under p_ref; the stack is left as found (LUA_MINSTACK slots are free on it).
        unsafe {
            ffi::lua_rawgeti(main, ffi::LUA_REGISTRYINDEX, self.p_ref as ffi::lua_Integer);
            ffi::lua_createtable(main, 0, 2);
            ffi::lua_pushboolean(main, 1);
            ffi::lua_setfield(main, -2, c"linger".as_ptr());
            ffi::lua_rawseti(main, -2, abi::P_X);
            ffi::lua_pop(main, 1);
        }
    }

    /// Let go of the process's state: the registry reference of `P` (and `S[1]` when it
    /// points at it), the string `anchor` a send's cache kept (0: none), and the coroutine,
    /// which goes back to the VM's pool when main returned cleanly and `poolable`; then
    /// too, a function call's (`brief`) state goes to its entry's pool (`recycle`). After
    /// this the coroutine is not live. `vm`: the current VM (none outside a turn: then
    /// only the Rust side is reset).
    pub(crate) fn release(&mut self, vm: Option<&Vm>, preempt: &Preempt, anchor: c_int, poolable: bool, brief: bool) {
        let co = self.l;
        if !co.is_null() {
            preempt.forget(co);
        }
        self.l = std::ptr::null_mut();
        self.direct = false;
        self.hint_len = 0;
        let finished = std::mem::take(&mut self.finished);
        let (Some(vm), true) = (vm, self.p_ref != 0) else { return };
        let (s_ref, p_ref) = (self.s_ref, self.p_ref);
        self.p_ref = 0;
        // The shard must not keep this state alive: clear S[1] if it is this process's,
        // then release the reference. Nothing here allocates (both slots exist), so it
        // runs right on the main thread, which is not running between resumes.
        // SAFETY: leaves the stack it is given as it found it.
        let release = |state: *mut ffi::lua_State| unsafe {
            let base = ffi::lua_gettop(state);
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, s_ref as ffi::lua_Integer);
            ffi::lua_rawgeti(state, -1, 1);
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, p_ref as ffi::lua_Integer);
            if ffi::lua_rawequal(state, -1, -2) != 0 {
                ffi::lua_pushnil(state);
                ffi::lua_rawseti(state, -4, 1);
            }
            ffi::lua_settop(state, base);
            ffi::luaL_unref(state, ffi::LUA_REGISTRYINDEX, p_ref);
            if anchor != 0 {
                ffi::luaL_unref(state, ffi::LUA_REGISTRYINDEX, anchor);
            }
        };
        let main = vm.main.0;
        // SAFETY: the main thread is not running between resumes.
        if unsafe { ffi::lua_checkstack(main, 4) } == 0 {
            // SAFETY: as above, on exec_raw's stack.
            let _ = unsafe { vm.lua.exec_raw::<()>((), release) };
            return;
        }
        if finished && poolable && brief {
            // SAFETY: the main thread is not running; a pooled VM has no memory limit.
            unsafe { recycle(main, p_ref) };
        }
        release(main);
        // SAFETY: as above; `co` returned (status OK, nothing on its stack), no hook can be
        // armed on it any more (forgotten above), and adding it to the pool table stores
        // into a slot that exists.
        unsafe {
            let mut pool = vm.pool.borrow_mut();
            let keep = finished
                && poolable
                && pool.len() < POOL_MAX
                && ffi::lua_status(co) == ffi::LUA_OK
                && ffi::lua_gettop(co) == 0;
            if keep {
                ffi::lua_sethook(co, None, 0, 0);
                ffi::lua_rawgeti(main, ffi::LUA_REGISTRYINDEX, vm.pool_ref as ffi::lua_Integer);
                ffi::lua_pushthread(co);
                ffi::lua_xmove(co, main, 1);
                ffi::lua_rawseti(main, -2, pool.len() as ffi::lua_Integer + 1);
                ffi::lua_pop(main, 1);
                pool.push(Thread(co));
            }
        }
    }

    /// How many messages the process took from its mailbox but has not received yet (read
    /// from its state `P`), or none when it has no state.
    pub(crate) fn unreceived(&self, vm: &Vm) -> Option<usize> {
        if self.p_ref == 0 {
            return None;
        }
        let state = vm.main.0;
        // SAFETY: the main thread is not running between resumes; the stack is left as found.
        unsafe {
            if ffi::lua_checkstack(state, 1) == 0 {
                return None;
            }
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, self.p_ref as ffi::lua_Integer);
            let p = ffi::lua_topointer(state, -1) as *const u8;
            let n = if p.is_null() { 0 } else { raw::unreceived(p) };
            ffi::lua_settop(state, -2);
            Some(n)
        }
    }

    /// Where the process's code was when it raised, from the dead coroutine's stack, which
    /// Lua keeps until it is closed.
    pub(crate) fn traceback(&self, lua: &Lua) -> Option<String> {
        let co = self.l;
        if co.is_null() {
            return None;
        }
        // SAFETY: `co` is this process's coroutine, dead with its stack intact; the
        // traceback is built on the calling state inside a protected call.
        let tb: mlua::Result<String> = unsafe { lua.exec_raw((), |state| ffi::luaL_traceback(state, co, std::ptr::null(), 0)) };
        tb.ok()
    }

    /// Resume with `input`: publish the process as the shard's current one, push the event
    /// onto the coroutine's stack (the one encoding of every runtime event), resume, and
    /// classify the yield without making mlua values (except for an exit, which is rare).
    ///
    /// `protected`: push inside a protected call. Needed when the VM has a memory limit (a
    /// push may then fail with a Lua error); without one, an allocation fails only when the
    /// whole program is out of memory, and the pushes run straight on the coroutine (saving
    /// a protected call per message).
    pub(crate) fn resume(&mut self, lua: &Lua, input: Input, protected: bool) -> mlua::Result<Resumed> {
        let (ev, pushed) = match &input {
            Input::Pushed(n) => (None, *n),
            Input::Event(ev) => (ev.as_ref(), 0),
        };
        let l = self.l;
        // Room for the event and the nesting of its values (raw::push checks again per
        // level; with this much reserved those checks cannot fail).
        let room = 8 + event_room(ev);
        let (code, nres) = if !protected && unsafe { ffi::lua_checkstack(l, room) } != 0 {
            // SAFETY: the coroutine is suspended (or never ran) and owned by this process;
            // every push is within the room checked above and cannot raise without a
            // memory limit; lua_resume consumes what was pushed.
            unsafe { self.resume_on(lua, ev, pushed)? }
        } else {
            let mut out = Ok((0, 0));
            // SAFETY: as above, inside exec_raw's protected call.
            unsafe {
                lua.exec_raw::<()>((), |_| {
                    ffi::luaL_checkstack(l, room, std::ptr::null());
                    out = self.resume_on(lua, ev, pushed);
                })?
            };
            out?
        };
        let fetch = |n: c_int| -> mlua::Result<MultiValue> {
            if n == 0 {
                return Ok(MultiValue::new());
            }
            // SAFETY: moves the `n` values the resume left on the coroutine's stack.
            unsafe { lua.exec_raw((), |state| ffi::lua_xmove(l, state, n)) }
        };
        Ok(match code {
            R_WAIT => Resumed::Wait,
            R_PREEMPTED => Resumed::Preempted,
            R_USER_YIELD => Resumed::UserYield,
            R_EXIT => Resumed::Exit(fetch(nres)?),
            R_FINISHED => Resumed::Finished(fetch(nres)?),
            _ => Resumed::Failed(fetch(nres)?.pop_front().unwrap_or(LuaValue::Nil)),
        })
    }

    /// Where the next resume starts, for senders to prefetch (see `Context::set_warm`): the
    /// thread, the call it yielded from and that call's stack slots. While the process
    /// waits, these change only if the collector shrinks the stack (then a hint is stale,
    /// which costs nothing).
    ///
    /// # Safety
    /// The coroutine must be suspended.
    pub(crate) unsafe fn warm_hints(&self) -> [*const u8; wippy_runtime::WARM] {
        // SAFETY: the caller's contract: a suspended thread has a frame to read.
        let (ci, func) = unsafe { layout::frame(self.l) };
        [(self.l as *const u8).wrapping_sub(layout::EXTRA), ci, func]
    }

    /// What the resume from receive's direct wait reads next, beyond the hints a sender
    /// prefetched (which it reads through here: the thread's last line, the call below, the
    /// channel and the process state), prefetched side by side before the resume needs them.
    ///
    /// # Safety
    /// The coroutine must be suspended in receive's direct wait ([`Coroutine::is_direct`]).
    pub(crate) unsafe fn warm_direct(&self) {
        // (the sender took the thread's first 192 bytes from its allocation's start; the
        // struct is ~200)
        prefetch((self.l as *const u8).wrapping_add(192));
        // SAFETY: the caller's contract: the frame is receive's, with its slots in place.
        unsafe {
            let (ci, func) = layout::frame(self.l);
            prefetch(layout::previous(ci));
            for at in [raw::AT_CH, raw::AT_P] {
                let t = layout::slot_object(func, at as usize);
                prefetch(t);
                prefetch(t.wrapping_add(48));
            }
        }
    }

    /// The body of [`Coroutine::resume`], all on the coroutine: the result code, and how
    /// many values the resume left on it (only for an exit or a failure).
    ///
    /// # Safety
    /// The coroutine must be suspended with room for the event reserved, and `pushed` values
    /// already on it as the resume's arguments (then `ev` is None). Without a protected call
    /// around it, the VM must have no memory limit.
    unsafe fn resume_on(&mut self, lua: &Lua, ev: Option<&Event>, pushed: c_int) -> mlua::Result<(i64, c_int)> {
        let l = self.l;
        // SAFETY (whole body): the caller's contract; every push is within the reserved room.
        unsafe {
            if std::mem::take(&mut self.direct) {
                // (P from the frame `receive` yielded from: the stack is touched anyway, the
                // registry's slot for P would be one more cache miss on a cold process)
                publish_top(l, self.s_ref, raw::AT_P);
            } else {
                publish(l, self.s_ref, self.p_ref);
            }
            let nargs = match ev {
                Some(ev) => self.push_event(lua, ev)?,
                None => pushed,
            };
            self.hint_len = 0;
            raw::set_main_co(l);
            let mut nres: c_int = 0;
            let status = ffi::lua_resume(l, std::ptr::null_mut(), nargs, &mut nres);
            let code = match status {
                ffi::LUA_YIELD if nres == 0 => R_PREEMPTED,
                // (the yielded values read straight from the stack: layout.rs)
                ffi::LUA_YIELD => match layout::plain(layout::below_top(l, nres as usize)) {
                    Some(layout::Plain::LightUserdata(p)) if p == raw::direct_tag() as *const _ => {
                        self.direct = true;
                        R_WAIT
                    }
                    Some(layout::Plain::LightUserdata(p)) if p == raw::wait_tag() as *const _ => R_WAIT,
                    Some(layout::Plain::Str(b"exit")) => R_EXIT,
                    _ => R_USER_YIELD,
                },
                ffi::LUA_OK => R_FINISHED,
                _ => {
                    nres = 1;
                    R_FAILED
                }
            };
            if code == R_WAIT && nres == 2 {
                if let Some((_, topic)) = layout::string(layout::below_top(l, 1)) {
                    // (a topic past 4 GiB gets no hint: the hint's length is 32 bits, which keeps
                    // a Lua process's Rust state in one 128-byte block)
                    (self.hint, self.hint_len) = (topic.as_ptr(), u32::try_from(topic.len()).unwrap_or(0));
                }
            }
            if code == R_WAIT || code == R_USER_YIELD {
                ffi::lua_pop(l, nres);
                nres = 0;
            }
            Ok((code, nres))
        }
    }

    /// Push one runtime event as the prelude's `handle` takes it (see `abi::EV_*`): its tag,
    /// then its values; how many. A one-value message on the channel main alone waits on
    /// goes as `raw::EV_VALUE, value` (receive's direct wait takes it as it is).
    ///
    /// # Safety
    /// As [`Coroutine::resume_on`], before the resume.
    unsafe fn push_event(&mut self, lua: &Lua, ev: &Event) -> mlua::Result<c_int> {
        let l = self.l;
        let tag = |t: &str| {
            // SAFETY: the caller's room (a short string, one slot).
            unsafe { ffi::lua_pushlstring(l, t.as_ptr() as *const _, t.len()) }
        };
        // SAFETY: the caller's contract.
        unsafe {
            let hint = (self.hint, self.hint_len);
            Ok(match ev {
                Event::Message(m)
                    if m.payload.len() <= 1
                        && hint.1 > 0
                        && m.topic.as_bytes() == std::slice::from_raw_parts(hint.0, hint.1 as usize) =>
                {
                    ffi::lua_pushinteger(l, raw::EV_VALUE);
                    match m.payload.first() {
                        Some(v) => raw::push(lua, l, v)?,
                        None => ffi::lua_pushnil(l),
                    }
                    2
                }
                Event::Message(m) => {
                    tag(abi::EV_MESSAGE);
                    let t = m.topic.as_str();
                    ffi::lua_pushlstring(l, t.as_ptr() as *const _, t.len());
                    raw::push_pid(l, m.from, &mut self.from_cache);
                    ffi::lua_pushinteger(l, m.payload.len() as ffi::lua_Integer);
                    for v in &m.payload {
                        raw::push(lua, l, v)?;
                    }
                    4 + m.payload.len() as c_int
                }
                Event::Completion { id, result } => {
                    tag(abi::EV_COMPLETION);
                    ffi::lua_pushinteger(l, id.0 as ffi::lua_Integer);
                    push_result(lua, l, result)?;
                    4
                }
                Event::Exit { from, at, result } => {
                    tag(abi::EV_EXIT);
                    raw::push_pid(l, *from, &mut None);
                    ffi::lua_pushinteger(l, *at);
                    push_result(lua, l, result)?;
                    5
                }
                Event::LinkDown { from, at, error } => {
                    tag(abi::EV_LINK_DOWN);
                    raw::push_pid(l, *from, &mut None);
                    ffi::lua_pushinteger(l, *at);
                    raw::push_error(lua, l, error)?;
                    4
                }
                Event::Cancel { from, at, reason } => {
                    tag(abi::EV_CANCEL);
                    if from.is_nobody() {
                        tag("{|}");
                    } else {
                        raw::push_pid(l, *from, &mut None);
                    }
                    ffi::lua_pushinteger(l, *at);
                    tag(reason);
                    4
                }
            })
        }
    }
}

/// `true, value` or `false, error`.
///
/// # Safety
/// As `raw::push`, with two slots more.
unsafe fn push_result(lua: &Lua, l: *mut ffi::lua_State, r: &Result<Value, wippy_runtime::Error>) -> mlua::Result<()> {
    // SAFETY: the caller's contract.
    unsafe {
        match r {
            Ok(v) => {
                ffi::lua_pushboolean(l, 1);
                raw::push(lua, l, v)
            }
            Err(e) => {
                ffi::lua_pushboolean(l, 0);
                raw::push_error(lua, l, e)
            }
        }
    }
}

/// Stack slots an event's values take beyond the fixed few.
fn event_room(ev: Option<&Event>) -> c_int {
    let room = match ev {
        Some(Event::Message(m)) => m.payload.len() + m.payload.iter().map(raw::push_room).max().unwrap_or(0),
        Some(Event::Completion { result: Ok(v), .. }) | Some(Event::Exit { result: Ok(v), .. }) => 1 + raw::push_room(v),
        _ => 0,
    };
    room as c_int
}

/// What building a process's state needs (see [`Build::run`]).
struct Build<'a> {
    lua: &'a Lua,
    new_process: c_int,
    s_ref: c_int,
    /// A pooled coroutine to use (its slot in the pool table, the table, the registry
    /// reference of `main_body`), or none: new_process makes one.
    pooled: Option<(c_int, c_int, c_int)>,
    code: &'a EntryCode,
    own_method: bool,
    method: &'a str,
    values: &'a [Value],
    /// Stack slots the build needs beyond what is on the stack.
    room: c_int,
}

impl Build<'_> {
    /// Make the process's state with the prelude's `new_process` and leave main's first
    /// resume arguments on its coroutine: `(P's registry reference, the coroutine, how
    /// many arguments)`. The stack above `base` holds carry, ncarry, then the arguments
    /// pushed through mlua; they stay there.
    ///
    /// # Safety
    /// `state` is a thread of the process's VM that is not running, with `room` slots
    /// free. An error raised here unwinds to the caller's protected call; without one (the
    /// plain start) only running out of memory can raise, which mlua turns into a panic.
    unsafe fn run(&self, state: *mut ffi::lua_State, base: c_int) -> mlua::Result<(c_int, *mut ffi::lua_State, c_int)> {
        let reg = |state, key: &mlua::RegistryKey| {
            // SAFETY: a registry read onto a stack with room (the caller's contract).
            unsafe { ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, key.id() as ffi::lua_Integer) };
        };
        // SAFETY (whole body): the caller's contract.
        unsafe {
            let n = ffi::lua_gettop(state);
            ffi::luaL_checkstack(state, self.room, std::ptr::null());
            // new_process(env_mt, carry, ncarry, co) -> P, co, env
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, self.new_process as ffi::lua_Integer);
            reg(state, &self.code.env_mt);
            ffi::lua_pushvalue(state, base + 1);
            ffi::lua_pushvalue(state, base + 2);
            match self.pooled {
                Some((slot, pool, main_body)) => {
                    // take it out of the pool table (its slot stays, set to nil), with
                    // main_body as the function its first resume starts
                    ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, pool as ffi::lua_Integer);
                    ffi::lua_rawgeti(state, -1, slot as ffi::lua_Integer);
                    ffi::lua_pushnil(state);
                    ffi::lua_rawseti(state, -3, slot as ffi::lua_Integer);
                    ffi::lua_rotate(state, -2, 1);
                    ffi::lua_pop(state, 1);
                    let co = ffi::lua_tothread(state, -1);
                    ffi::lua_rawgeti(co, ffi::LUA_REGISTRYINDEX, main_body as ffi::lua_Integer);
                }
                None => ffi::lua_pushnil(state),
            }
            ffi::lua_call(state, 4, 3);
            let (pi, ci, ei) = (n + 1, n + 2, n + 3);
            ffi::lua_pushvalue(state, pi);
            let p_ref = ffi::luaL_ref(state, ffi::LUA_REGISTRYINDEX);
            let co = ffi::lua_tothread(state, ci);
            publish(state, self.s_ref, p_ref);
            // main_body(P, chunk, env, method, id, args...)
            let top = ffi::lua_gettop(state);
            ffi::lua_pushvalue(state, pi);
            reg(state, &self.code.chunk);
            ffi::lua_pushvalue(state, ei);
            if self.own_method {
                reg(state, &self.code.method);
            } else {
                ffi::lua_pushlstring(state, self.method.as_ptr() as *const _, self.method.len());
            }
            reg(state, &self.code.id);
            for i in base + 3..=n {
                ffi::lua_pushvalue(state, i);
            }
            let pushed = self.values.iter().try_for_each(|v| raw::push(self.lua, state, v));
            if let Err(e) = pushed {
                // (the state is made: let go of it, the stack is the caller's to reset)
                ffi::luaL_unref(state, ffi::LUA_REGISTRYINDEX, p_ref);
                return Err(e);
            }
            let nargs = ffi::lua_gettop(state) - top;
            ffi::luaL_checkstack(co, nargs + 8, std::ptr::null());
            ffi::lua_xmove(state, co, nargs);
            Ok((p_ref, co, nargs))
        }
    }
}

/// A hash part of at most this many nodes (log2) in a finished call's state and in its
/// environment lets the state be recycled: one that grew past it (a call that set and
/// cleared many globals) would keep its size in the pool.
const RECYCLE_HASH_LOG2: u8 = 3;
/// The most states an entry's pool keeps (the prelude's env_mt makes its 16 slots).
const RECYCLE_MAX: usize = 16;

/// Put a finished function call's state in its entry's pool (slot 1 of its environment's
/// metatable), where the prelude's `new_process` takes it for the entry's next call, with
/// every task slot back to what `new_process` makes. Each call is a process of its own
/// (SPEC §4.9): nothing one call made may reach the next, so a state is taken only when
/// it holds nothing but what `new_process` and binding modules put there, once its
/// listen channels and inbox (its own, like everything they hold) are let go: no task
/// and no pending message; in P's hash part only library proxies (the only
/// string keys the prelude writes there), each never written to (a call that wrote into
/// a module leaves it not taken); in the environment `_G` (itself) and globals bound to
/// P's proxy of the same name, nothing else (a call that set a global leaves it not
/// taken). A state not taken is collected as before. Raises nothing, so it runs
/// unprotected like the release around it: the stack's room is asked for with
/// `lua_checkstack`, which reports a failure instead of raising; the pool's slots exist;
/// each table is read with `lua_next` and never written during it; P's slots are reset
/// in place, with values that are not objects.
///
/// # Safety
/// `state` is a thread of the VM, not running; `p_ref` is the registry reference of the
/// state of a function call whose main returned, in a VM with no memory limit.
unsafe fn recycle(state: *mut ffi::lua_State, p_ref: c_int) {
    use layout::Plain;
    // SAFETY (whole body): the caller's contract; every index read is on the stack built
    // here, every slot read exists (P's 16 are its array part), `lua_next` walks tables
    // nothing writes to while it walks them, and the stores go to slots that exist.
    unsafe {
        let base = ffi::lua_gettop(state);
        if ffi::lua_checkstack(state, 8) == 0 {
            return;
        }
        let take = || -> bool {
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, p_ref as ffi::lua_Integer);
            let (p, env, pool) = (base + 1, base + 2, base + 4);
            let Some(pt) = layout::as_table(layout::below_top(state, 1)) else { return false };
            let slot = |i| layout::array(pt, i).and_then(|v| layout::plain(v));
            // (slot X inside the array part: the walk below from X is then P's hash part)
            let idle = slot(abi::P_RH) == Some(Plain::Bool(false))
                && slot(abi::P_NEXT) == Some(Plain::Int(0))
                && slot(abi::P_NPEND) == Some(Plain::Int(0))
                && layout::array(pt, abi::P_X).is_some();
            if !idle || layout::hash_log2(pt) > RECYCLE_HASH_LOG2 {
                return false;
            }
            ffi::lua_rawgeti(state, p, abi::P_ENV);
            let small = layout::as_table(layout::below_top(state, 1)).is_some_and(|t| layout::hash_log2(t) <= RECYCLE_HASH_LOG2);
            if !small || ffi::lua_getmetatable(state, env) == 0 {
                return false;
            }
            if ffi::lua_rawgeti(state, -1, 1) != ffi::LUA_TTABLE {
                return false;
            }
            let n = ffi::lua_rawlen(state, pool);
            if n >= RECYCLE_MAX {
                return false;
            }
            // P's hash part: proxies under library names, each empty
            ffi::lua_pushinteger(state, abi::P_X);
            while ffi::lua_next(state, p) != 0 {
                let bare = layout::as_table(layout::below_top(state, 1)).is_some_and(|t| layout::is_bare(t));
                if ffi::lua_type(state, -2) != ffi::LUA_TSTRING || !bare {
                    return false;
                }
                ffi::lua_pop(state, 1);
            }
            // the environment: `_G` itself, and globals bound to P's proxies
            let mut has_g = false;
            ffi::lua_pushnil(state);
            while ffi::lua_next(state, env) != 0 {
                if ffi::lua_type(state, -2) != ffi::LUA_TSTRING {
                    return false;
                }
                if layout::string(layout::below_top(state, 2)).is_some_and(|(_, k)| k == b"_G") {
                    if ffi::lua_rawequal(state, -1, env) == 0 {
                        return false;
                    }
                    has_g = true;
                } else {
                    ffi::lua_pushvalue(state, -2);
                    if ffi::lua_rawget(state, p) == ffi::LUA_TNIL || ffi::lua_rawequal(state, -1, -2) == 0 {
                        return false;
                    }
                    ffi::lua_pop(state, 1);
                }
                ffi::lua_pop(state, 1);
            }
            if !has_g {
                return false;
            }
            // main's task slots back to new_process's: CO .. QN (A, B and SV nil, the rest
            // false), then RT, the listen channels, the inbox and X (all in the array part:
            // checked above through X); the channels are the call's alone, with what they
            // hold, and go with it
            for i in (abi::T_CO..=abi::T_QN).chain([abi::P_RT, abi::P_LISTEN, abi::P_INBOX, abi::P_X]) {
                layout::set_array_falsy(pt, i, (abi::T_A..=abi::T_SV).contains(&i));
            }
            ffi::lua_pushvalue(state, p);
            ffi::lua_rawseti(state, pool, n as ffi::lua_Integer + 1);
            true
        };
        take();
        ffi::lua_settop(state, base);
    }
}

/// Make the process the shard's current one (`S[1] = P`, and `S[2] = false`: main runs on
/// every resume), as every resume must first. The prelude resets `S[2]` after each task's
/// resume too, but an error raised between its set and its reset (caught by a user pcall,
/// or ending the process) must not leave another process's task there for the next one.
/// Allocates nothing (both slots always exist), so it may run outside a protected call.
///
/// # Safety
/// `state` is a thread of the VM, not running, with 3 free slots; `s_ref` and `p_ref` are
/// registry references of the shard table and a process state.
unsafe fn publish(state: *mut ffi::lua_State, s_ref: c_int, p_ref: c_int) {
    // SAFETY: the caller's contract.
    unsafe {
        ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, s_ref as ffi::lua_Integer);
        ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, p_ref as ffi::lua_Integer);
        publish_rest(state);
    }
}

/// [`publish`] with `P` at stack index `at` of `state`.
///
/// # Safety
/// As [`publish`]; index `at` holds a process state.
unsafe fn publish_top(state: *mut ffi::lua_State, s_ref: c_int, at: c_int) {
    // SAFETY: the caller's contract.
    unsafe {
        ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, s_ref as ffi::lua_Integer);
        ffi::lua_pushvalue(state, at);
        publish_rest(state);
    }
}

/// The rest of a publish: the stack ends with `S, P`. (S[2] is mostly false already: the
/// prelude resets it after every task's resume; it is read straight from S, layout.rs.)
///
/// # Safety
/// The stack of `state` ends with the shard table and a process state.
unsafe fn publish_rest(state: *mut ffi::lua_State) {
    // SAFETY: the caller's contract; S's slots 1 and 2 exist, so the stores allocate nothing.
    unsafe {
        ffi::lua_rawseti(state, -2, 1);
        let s = layout::as_table(layout::below_top(state, 1));
        let running = s.and_then(|s| layout::array(s, 2)).and_then(|v| layout::plain(v));
        if running != Some(layout::Plain::Bool(false)) {
            ffi::lua_pushboolean(state, 0);
            ffi::lua_rawseti(state, -2, 2);
        }
        ffi::lua_pop(state, 1);
    }
}
