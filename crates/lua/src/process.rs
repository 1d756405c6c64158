//! A Lua process: the runtime `Process` whose state lives in its shard's VM (one coroutine
//! and a state table made by the prelude). A step hands the coroutine the events the
//! mailbox holds, one at a time, until it waits, is preempted, or finishes; the exit
//! result follows SPEC §4.1.
//!
//! Must never: touch the VM outside a turn of its own shard, or let a Lua error escape as
//! a panic.

use std::os::raw::c_int;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mlua::{ffi, Lua, MultiValue, Table, Value as LuaValue};
use wippy_runtime::{prefetch, Context, Error, Event, Events, ExitResult, Process, Status, Value};

use crate::catalog::LuaEntry;
use crate::convert::{from_value, to_value};
use crate::current::{self, ProcState};
use crate::vm::layout;
use crate::modules::errors::{error_from_lua, error_from_mlua, LuaError};
use crate::vm::abi;
use crate::vm::raw;
use crate::vm::sandbox::{EntryCode, Thread, Vm, POOL_MAX};
use crate::shard::Shard;
use crate::vm::current as current_vm;

pub(crate) struct LuaProcess {
    state: ProcState,
    co: Coroutine,
    /// The coroutine's last yield was the wait tag: it takes the next event.
    awaiting: bool,
    /// The last backlog reported to the runtime was not zero (see `report_backlog`).
    backlogged: bool,
}

/// A process's coroutine and what resuming it needs. The Lua thread is only ever touched
/// inside a turn of its shard (which moves between workers as a whole), so it may move
/// with the process.
struct Coroutine {
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
    hint: (*const u8, usize),
}

// SAFETY: see above; the shard's VM lock serialises every use.
unsafe impl Send for Coroutine {}

/// The arguments of a process's first resume, besides the state and the entry.
enum StartArgs {
    /// Spawn arguments (pushed raw when they can be).
    Values(Vec<Value>),
    /// Values already in Lua (after an upgrade).
    Lua(MultiValue),
}

/// What building a process's state needs (see [`Build::run`]).
struct Build<'a> {
    new_process: c_int,
    s_ref: c_int,
    /// A pooled coroutine to use (its slot in the pool table, the table, the registry
    /// reference of `main_body`), or none: new_process makes one.
    pooled: Option<(c_int, c_int, c_int)>,
    code: &'a EntryCode,
    /// `method` is the entry's own (its Lua string is in the code's keys).
    own_method: bool,
    method: &'a str,
    raw_args: &'a [Value],
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
    unsafe fn run(&self, state: *mut ffi::lua_State, base: c_int) -> (c_int, *mut ffi::lua_State, c_int) {
        let reg = |state, key: &mlua::RegistryKey| {
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, key.id() as ffi::lua_Integer);
        };
        let n = ffi::lua_gettop(state);
        ffi::luaL_checkstack(state, self.room, std::ptr::null());
        // new_process(env_mt, carry, ncarry, co) -> P, co, env
        ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, self.new_process as ffi::lua_Integer);
        reg(state, &self.code.env_mt);
        ffi::lua_pushvalue(state, base + 1);
        ffi::lua_pushvalue(state, base + 2);
        match self.pooled {
            Some((slot, pool, main_body)) => {
                // take it out of the pool table (its slot stays, set to nil), with main_body
                // as the function its first resume starts
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
        for v in self.raw_args {
            raw::push(state, v);
        }
        let nargs = ffi::lua_gettop(state) - top;
        ffi::luaL_checkstack(co, nargs + 8, std::ptr::null());
        ffi::lua_xmove(state, co, nargs);
        (p_ref, co, nargs)
    }
}

impl LuaProcess {
    pub(crate) fn new(entry: Arc<LuaEntry>, shard: Arc<Shard>) -> LuaProcess {
        LuaProcess {
            state: ProcState {
                entry,
                shard,
                upgradable: false,
                memfail: false,
                memory: 0,
                dirty: true,
                last_dest: None,
                attachment: None,
            },
            co: Coroutine {
                l: std::ptr::null_mut(),
                p_ref: 0,
                s_ref: 0,
                from_cache: None,
                direct: false,
                finished: false,
                hint: (std::ptr::null(), 0),
            },
            awaiting: false,
            backlogged: false,
        }
    }

    /// Build the process's state for its entry and leave the first resume's arguments on
    /// its coroutine (returns how many); `carry` (after an upgrade) = messages the old
    /// state had not taken yet.
    fn start(&mut self, method: &str, args: StartArgs, carry: Option<(Table, i64)>) -> Result<c_int, Error> {
        // SAFETY: runs inside a turn of this process's shard (it is in the shard's group).
        let vm: &Vm = unsafe { current_vm() }.ok_or_else(|| Error::internal("a Lua process ran outside its shard"))?;
        let code = vm.code(&self.state.shard.catalog, &self.state.entry)?;
        let internal = |e: mlua::Error| Error::internal(format!("cannot start process: {e}"));
        let method = if method == "main" { self.state.entry.method.as_str() } else { method };
        // Spawn arguments that are plain data go onto the stack raw; the rest through mlua.
        let (raw_args, lua_args) = match args {
            StartArgs::Values(v) if v.iter().all(raw::simple) => (v, MultiValue::new()),
            StartArgs::Values(v) => {
                let mut out = MultiValue::with_capacity(v.len());
                for a in &v {
                    out.push_back(from_value(&vm.lua, a).map_err(internal)?);
                }
                (Vec::new(), out)
            }
            StartArgs::Lua(mv) => (Vec::new(), mv),
        };
        let room = 8
            + 5
            + lua_args.len() as c_int
            + raw_args.len() as c_int
            + raw_args.iter().map(raw::push_room).max().unwrap_or(0) as c_int;
        let mut build = Build {
            new_process: vm.new_process,
            s_ref: vm.s_ref,
            pooled: None,
            code: &code,
            own_method: method == self.state.entry.method,
            method,
            raw_args: &raw_args,
            room,
        };
        // Without a memory limit nothing here can fail but the whole program running out
        // of memory (no user code runs: the prelude's constructor, pushes, a reference), so
        // the state is built right on the main thread; with one, or with values only mlua
        // can push (an upgrade's), inside a protected call.
        let main = vm.main.0;
        let plain = self.state.shard.options.max_process_memory == 0
            && carry.is_none()
            && lua_args.is_empty()
            // (a bound far below Lua's stack limit: the pushes cannot overflow it)
            && raw_args.len() < 64
            // SAFETY: the main thread is not running (a start happens between resumes).
            && unsafe { ffi::lua_checkstack(main, room + 8) } != 0;
        let (p_ref, co, nargs) = if plain {
            let mut pool = vm.pool.borrow_mut();
            if !pool.is_empty() {
                build.pooled = Some((pool.len() as c_int, vm.pool_ref, vm.main_body));
                pool.pop();
            }
            drop(pool);
            // SAFETY: as above; `build` leaves the main thread's stack as it found it.
            unsafe {
                let base = ffi::lua_gettop(main);
                ffi::lua_pushnil(main);
                ffi::lua_pushnil(main);
                let r = build.run(main, base);
                ffi::lua_settop(main, base);
                r
            }
        } else {
            let (carry, ncarry) = match carry {
                Some((t, n)) => (LuaValue::Table(t), LuaValue::Integer(n)),
                None => (LuaValue::Nil, LuaValue::Nil),
            };
            let mut out = (0, std::ptr::null_mut(), 0);
            // SAFETY: in exec_raw's protected call: the stack holds carry, ncarry and the
            // mlua arguments; nothing with a destructor lives across the calls that may
            // raise; the closure leaves the stack empty.
            unsafe {
                vm.lua.exec_raw::<()>((carry, ncarry, lua_args), |state| {
                    out = build.run(state, 0);
                    ffi::lua_settop(state, 0);
                })
            }
            .map_err(internal)?;
            out
        };
        self.co.l = co;
        self.co.p_ref = p_ref;
        self.co.s_ref = vm.s_ref;
        if self.state.attachment.is_some() {
            // an HTTP handler: its response goes when main returns, and the tasks it
            // spawned run on (SPEC §11.2): the prelude's main_body sees P[X].linger
            // SAFETY: the main thread is not running; P is in the registry under p_ref.
            unsafe {
                let main = vm.main.0;
                ffi::lua_rawgeti(main, ffi::LUA_REGISTRYINDEX, p_ref as ffi::lua_Integer);
                ffi::lua_createtable(main, 0, 2);
                ffi::lua_pushboolean(main, 1);
                ffi::lua_setfield(main, -2, c"linger".as_ptr());
                ffi::lua_rawseti(main, -2, abi::P_X);
                ffi::lua_pop(main, 1);
            }
        }
        // (a new state: its pending count starts at what an upgrade carried over)
        self.state.dirty = true;
        Ok(nargs)
    }

    /// Resume the coroutine with `args`, then feed it events while it waits for them.
    fn drive(&mut self, cx: &mut Context<'_>, mut events: Option<&mut Events<'_>>, mut args: Option<c_int>) -> Status {
        // SAFETY: a step runs inside a turn of this process's shard.
        let Some(vm) = (unsafe { current_vm() }) else {
            return Status::Exit(Err(Error::internal("a Lua process ran outside its shard")));
        };
        let lua: &Lua = &vm.lua;
        if self.co.l.is_null() {
            return Status::Exit(Err(Error::internal("Lua process has no state")));
        }
        // SAFETY: the process's shard is never replaced (an upgrade changes the entry only),
        // and `self.state` outlives this call: a reference without the Arc's count traffic.
        let shard: &Shard = unsafe { &*Arc::as_ptr(&self.state.shard) };
        let limit = shard.options.max_process_memory;
        let shared_limit = limit > 0 && !shard.options.isolated;
        // Ends the step for the watchdog however this function is left (a panic in a Rust
        // function Lua called comes back here as an unwind): it must never arm a hook on
        // the thread of a process that is gone.
        let _step = shard.preempt.step();
        if self.co.direct {
            // SAFETY: the coroutine is suspended in receive's direct wait.
            unsafe { self.co.warm_direct() };
        }
        loop {
            // What to resume with: the start arguments, a runtime event (raw when it can
            // be), or nothing (going on after a preemption).
            let input = match args.take() {
                Some(n) => Input::Pushed(n),
                None if self.awaiting => {
                    if !cx.consume(1) {
                        break Status::Yield;
                    }
                    let next = events.as_mut().and_then(|e| e.next());
                    match next {
                        Some(ev) if raw_event(&ev) => Input::Raw(Some(ev)),
                        Some(ev) => match event_args(lua, ev) {
                            Ok(a) => Input::Slow(a),
                            Err(e) => break Status::Exit(Err(error_from_mlua(&e))),
                        },
                        None => {
                            // SAFETY: the coroutine is suspended (it yielded a wait).
                            cx.set_warm(unsafe { self.co.warm_hints() });
                            break Status::Wait;
                        }
                    }
                }
                None => Input::Raw(None),
            };
            if !matches!(input, Input::Raw(_)) {
                self.co.hint.1 = 0;
            }
            let before = if shared_limit {
                let used = lua.used_memory();
                // what the process's queued messages hold counts toward its limit too
                let own = self.state.memory + cx.mailbox_bytes();
                let _ = lua.set_memory_limit(used + limit.saturating_sub(own).max(1));
                used
            } else {
                0
            };
            shard.preempt.set_main(self.co.l);
            let result = {
                let _entered = current::enter(cx, &mut self.state);
                match input {
                    Input::Slow(mv) => self.co.push(lua, mv).and_then(|n| self.co.resume(lua, None, true, n)),
                    Input::Raw(ev) => self.co.resume(lua, ev.as_ref(), limit > 0, 0),
                    Input::Pushed(n) => self.co.resume(lua, None, limit > 0, n),
                }
            };
            if shared_limit {
                let after = lua.used_memory();
                self.state.memory = (self.state.memory + after).saturating_sub(before);
                let _ = lua.set_memory_limit(0);
            }
            match result {
                Err(e) => break Status::Exit(Err(error_from_mlua(&e))),
                Ok(Resumed::Failed(v)) => {
                    let e = self.failure(&v);
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        self.log_traceback(lua, cx.pid(), &e);
                    }
                    break Status::Exit(Err(e));
                }
                Ok(Resumed::Exit(vals)) if is_upgrade(&vals) => match self.upgrade(cx, vals) {
                    Ok(first) => {
                        // Go on with the new state's first resume, on this same step.
                        return self.drive(cx, events, Some(first));
                    }
                    Err(e) => break Status::Exit(Err(e)),
                },
                Ok(Resumed::Exit(vals)) => break Status::Exit(self.exit_result(vals)),
                Ok(Resumed::Finished(vals)) => {
                    self.co.finished = true;
                    break Status::Exit(self.returned(vals));
                }
                Ok(Resumed::Wait) => self.awaiting = true,
                Ok(Resumed::Preempted) => {
                    shard.preempt.fired.store(false, Ordering::Relaxed);
                    self.awaiting = false;
                    break Status::Yield;
                }
                Ok(Resumed::UserYield) => {
                    self.awaiting = false;
                    break Status::Yield;
                }
            }
        }
    }

    /// `process.upgrade(entry, ...)`: drop the old Lua state and build a new one from the
    /// entry (the current version of this process's own entry when none is named), with
    /// what the old state had not taken yet. PID, mailbox, links, monitors and names are
    /// the runtime's and stay; trap_links resets. A failure is "upgrade: <reason>".
    fn upgrade(&mut self, cx: &mut Context<'_>, vals: MultiValue) -> Result<c_int, Error> {
        let fail = |why: String| Error::internal(format!("upgrade: {why}"));
        let mut it = vals.into_iter().skip(2);
        let id = match it.next() {
            Some(LuaValue::String(s)) => s.to_string_lossy().to_string(),
            _ => self.state.entry.id.clone(),
        };
        let carry = match it.next() {
            Some(LuaValue::Table(t)) => t,
            _ => return Err(fail("lost the pending messages".into())),
        };
        let n = match it.next() {
            Some(LuaValue::Integer(n)) => n,
            _ => 0,
        };
        let args: MultiValue = match it.next() {
            Some(LuaValue::Table(t)) => {
                let count: i64 = t.raw_get("n").unwrap_or(0);
                (1..=count).map(|i| t.raw_get::<LuaValue>(i).unwrap_or(LuaValue::Nil)).collect()
            }
            _ => MultiValue::new(),
        };
        let entry = self.state.shard.catalog.entry(&id).map_err(|e| fail(e.message))?;
        crate::catalog::runnable_on(&self.state.shard.catalog, &entry, &cx.host())
            .map_err(|e| Error { message: format!("upgrade: {}", e.message), ..e })?;
        // Let go of the old state: from here on only the new one is reachable.
        self.release_state();
        self.co.hint.1 = 0;
        self.awaiting = false;
        if self.state.upgradable {
            self.state.shard.catalog.set_upgradable(cx.pid(), &self.state.entry, false);
        }
        self.state.upgradable = false;
        self.state.entry = entry;
        cx.set_trap_links(false);
        self.start("main", StartArgs::Lua(args), Some((carry, n))).map_err(|e| fail(e.message))
    }

    /// Drop the registry reference of the process state (and S[1] if it points at it).
    fn release_state(&mut self) {
        let co = self.co.l;
        if !co.is_null() {
            self.state.shard.preempt.forget(co);
        }
        self.co.l = std::ptr::null_mut();
        self.co.direct = false;
        // SAFETY: called inside a turn of this process's shard (close, upgrade).
        let vm = unsafe { current_vm() };
        if let (Some(vm), true) = (vm, self.co.p_ref != 0) {
            let (s_ref, p_ref) = (self.co.s_ref, self.co.p_ref);
            // (and the string send's cache keeps alive)
            let anchor = self.state.last_dest.take().map_or(0, |d| d.anchor);
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
            if unsafe { ffi::lua_checkstack(main, 4) } != 0 {
                release(main);
                // SAFETY: as above; `co` returned (status OK, nothing on its stack), no
                // hook can be armed on it any more (forgotten above), and adding it to the
                // pool table stores into a slot that exists.
                unsafe {
                    let mut pool = vm.pool.borrow_mut();
                    let keep = std::mem::take(&mut self.co.finished)
                        && !self.state.shard.options.isolated
                        && self.state.shard.options.max_process_memory == 0
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
            } else {
                // SAFETY: as above, on exec_raw's stack.
                let _ = unsafe { vm.lua.exec_raw::<()>((), release) };
            }
            self.co.p_ref = 0;
        }
    }

    /// The error a process ended with: a memory-limit failure (even one a task raised
    /// and the scheduler passed on) as LimitExceeded, anything else as Lua gave it.
    /// With debug logs on (`wippy -v`): where the process's code was when it raised, from
    /// the dead coroutine's stack, which Lua keeps until it is closed.
    #[cold]
    fn log_traceback(&self, lua: &Lua, pid: wippy_runtime::Pid, e: &Error) {
        let co = self.co.l;
        if co.is_null() {
            return;
        }
        // SAFETY: `co` is this process's coroutine, dead with its stack intact; the
        // traceback is built on the calling state inside a protected call.
        let tb: mlua::Result<String> = unsafe { lua.exec_raw((), |state| ffi::luaL_traceback(state, co, std::ptr::null(), 0)) };
        if let Ok(tb) = tb {
            tracing::debug!(pid = %pid, entry = %self.state.entry.id, "Lua error: {e}\n{}", tb.trim_end());
        }
    }

    fn failure(&self, v: &LuaValue) -> Error {
        let memory = matches!(v, LuaValue::String(s) if s.as_bytes().as_ref() == b"not enough memory");
        if memory || self.state.memfail {
            return Error::limit_exceeded(format!(
                "process memory limit exceeded ({} bytes)",
                self.state.shard.options.max_process_memory
            ))
            .with_retryable(false);
        }
        // error("text") says nothing about retrying: a supervisor restarts it ("let it
        // crash"); only `return x, "msg"` and structured errors can say retryable = false.
        error_from_lua(v)
    }

    /// Main returned `v, err`: an error when `err` is anything but nil or a boolean (SPEC
    /// §4.1: a string is the message, an error object that error, a table an error
    /// keeping its fields, a number its text), else `v`. A boolean is a status, not an
    /// error: `return ch:receive()` gives `v, true`.
    fn returned(&self, vals: MultiValue) -> ExitResult {
        returned_result(vals, &self.state.shard.marks)
    }

    /// The process ended through its scheduler with `"exit", ok, value|error`.
    fn exit_result(&self, vals: MultiValue) -> ExitResult {
        let mut it = vals.into_iter();
        let _tag = it.next();
        let ok = matches!(it.next(), Some(LuaValue::Boolean(true)));
        let v = it.next().unwrap_or(LuaValue::Nil);
        if ok {
            return to_value(&v, &self.state.shard.marks, "the process result")
                .map_err(|m| Error::invalid(m).with_retryable(false));
        }
        Err(self.failure(&v))
    }
}

/// `"exit", "upgrade", ...`: the process asked for `process.upgrade`.
fn is_upgrade(vals: &MultiValue) -> bool {
    matches!(vals.get(1), Some(LuaValue::String(s)) if s.as_bytes().as_ref() == b"upgrade")
}

/// How a resume of the process coroutine ended.
enum Resumed {
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

enum Input {
    /// Already on the coroutine's stack (the start): how many.
    Pushed(c_int),
    /// Through mlua values (events with error objects in them), moved onto the coroutine.
    Slow(MultiValue),
    /// Pushed straight onto the coroutine's stack (nothing, or a simple event).
    Raw(Option<Event>),
}

/// Events the raw path can push: messages and completions without error objects.
fn raw_event(ev: &Event) -> bool {
    match ev {
        Event::Message(m) => m.payload.iter().all(raw::simple),
        Event::Completion { result: Ok(v), .. } => raw::simple(v),
        _ => false,
    }
}

const R_WAIT: i64 = 1;
const R_PREEMPTED: i64 = 2;
const R_USER_YIELD: i64 = 3;
const R_EXIT: i64 = 4;
const R_FINISHED: i64 = 5;
const R_FAILED: i64 = 6;

impl Coroutine {
    /// Resume through the raw C API: publish the process as the shard's current one, push
    /// the event onto the coroutine's stack, resume, and classify the yield without making
    /// mlua values (except for an exit, which is rare).
    ///
    /// `protected`: push inside a protected call. Needed when the VM has a memory limit (a
    /// push may then fail with a Lua error); without one, an allocation fails only when the
    /// whole program is out of memory, and the pushes run straight on the coroutine (saving
    /// a protected call per message). `pushed`: values already on the coroutine's stack as
    /// the resume's arguments (then `ev` is None).
    fn resume(&mut self, lua: &Lua, ev: Option<&Event>, protected: bool, pushed: c_int) -> mlua::Result<Resumed> {
        let l = self.l;
        // Room for the event and the nesting of its values (raw::push checks again per
        // level; with this much reserved those checks cannot fail).
        let room = 8 + event_room(ev);
        let (code, nres) = if !protected && unsafe { ffi::lua_checkstack(l, room) } != 0 {
            // SAFETY: the coroutine is suspended (or never ran) and owned by this process;
            // every push is within the room checked above and cannot raise without a
            // memory limit; lua_resume consumes what was pushed.
            unsafe { self.resume_on(ev, pushed) }
        } else {
            // SAFETY: as above, inside exec_raw's protected call, which gets the two results.
            let (code, nres): (i64, i64) = unsafe {
                lua.exec_raw((), |state| {
                    ffi::luaL_checkstack(l, room, std::ptr::null());
                    let (code, nres) = self.resume_on(ev, pushed);
                    ffi::lua_pushinteger(state, code);
                    ffi::lua_pushinteger(state, nres as ffi::lua_Integer);
                })?
            };
            (code, nres as c_int)
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

    /// Move mlua values onto the coroutine's stack as the next resume's arguments; how
    /// many.
    fn push(&self, lua: &Lua, values: MultiValue) -> mlua::Result<c_int> {
        let l = self.l;
        // SAFETY: exec_raw pushed the values; they all move to the coroutine, leaving
        // nothing behind.
        unsafe {
            lua.exec_raw::<c_int>(values, |state| {
                let n = ffi::lua_gettop(state);
                ffi::luaL_checkstack(l, n + 8, std::ptr::null());
                ffi::lua_xmove(state, l, n);
                ffi::lua_pushinteger(state, n as ffi::lua_Integer);
            })
        }
    }
}

/// Stack slots an event's values take beyond the fixed few.
fn event_room(ev: Option<&Event>) -> c_int {
    let room = match ev {
        Some(Event::Message(m)) => m.payload.len() + m.payload.iter().map(raw::push_room).max().unwrap_or(0),
        Some(Event::Completion { result: Ok(v), .. }) => 1 + raw::push_room(v),
        _ => 0,
    };
    room as c_int
}

impl Coroutine {
    /// Where the next resume starts, for senders to prefetch (see `Context::set_warm`): the
    /// thread, the call it yielded from and that call's stack slots. While the process
    /// waits, these change only if the collector shrinks the stack (then a hint is stale,
    /// which costs nothing).
    ///
    /// # Safety
    /// The coroutine must be suspended.
    unsafe fn warm_hints(&self) -> [*const u8; wippy_runtime::WARM] {
        let (ci, func) = layout::frame(self.l);
        [(self.l as *const u8).wrapping_sub(layout::EXTRA), ci, func]
    }

    /// What the resume from receive's direct wait reads next, beyond the hints a sender
    /// prefetched (which it reads through here: the thread's last line, the call below, the
    /// channel and the process state), prefetched side by side before the resume needs them.
    ///
    /// # Safety
    /// The coroutine must be suspended in receive's direct wait (`self.direct`).
    unsafe fn warm_direct(&self) {
        // (the sender took the thread's first 192 bytes from its allocation's start; the
        // struct is ~200)
        prefetch((self.l as *const u8).wrapping_add(192));
        let (ci, func) = layout::frame(self.l);
        prefetch(layout::previous(ci));
        for at in [raw::AT_CH, raw::AT_P] {
            let t = layout::slot_object(func, at as usize);
            prefetch(t);
            prefetch(t.wrapping_add(48));
        }
    }

    /// The body of [`Coroutine::resume`], all on the coroutine: the result code, and how
    /// many values the resume left on it (only for an exit or a failure).
    ///
    /// # Safety
    /// The coroutine must be suspended with room for the event reserved, and `pushed` values
    /// already on it as the resume's arguments (then `ev` is None).
    unsafe fn resume_on(&mut self, ev: Option<&Event>, pushed: c_int) -> (i64, c_int) {
        let (l, from_cache, hint) = (self.l, &mut self.from_cache, &mut self.hint);
        if std::mem::take(&mut self.direct) {
            // (P from the frame `receive` yielded from: the stack is touched anyway, the
            // registry's slot for P would be one more cache miss on a cold process)
            publish_top(l, self.s_ref, raw::AT_P);
        } else {
            publish(l, self.s_ref, self.p_ref);
        }
        let mut nargs = pushed;
        match ev {
            Some(Event::Message(m))
                if m.payload.len() <= 1
                    && hint.1 > 0
                    && m.topic.as_bytes() == std::slice::from_raw_parts(hint.0, hint.1) =>
            {
                // a plain listen channel delivers a message's one payload, or nil for none
                ffi::lua_pushinteger(l, EV_VALUE);
                match m.payload.first() {
                    Some(v) => raw::push(l, v),
                    None => ffi::lua_pushnil(l),
                }
                nargs = 2;
            }
            Some(Event::Message(m)) => {
                ffi::lua_pushlstring(l, abi::EV_MESSAGE.as_ptr() as *const _, 1);
                let t = m.topic.as_str();
                ffi::lua_pushlstring(l, t.as_ptr() as *const _, t.len());
                raw::push_pid(l, m.from, from_cache);
                ffi::lua_pushinteger(l, m.payload.len() as ffi::lua_Integer);
                for v in &m.payload {
                    raw::push(l, v);
                }
                nargs = 4 + m.payload.len() as c_int;
            }
            Some(Event::Completion { id, result: Ok(v) }) => {
                ffi::lua_pushlstring(l, abi::EV_COMPLETION.as_ptr() as *const _, 1);
                ffi::lua_pushinteger(l, id.0 as ffi::lua_Integer);
                ffi::lua_pushboolean(l, 1);
                raw::push(l, v);
                nargs = 4;
            }
            _ => {}
        }
        hint.1 = 0;
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
                *hint = (topic.as_ptr(), topic.len());
            }
        }
        if code == R_WAIT || code == R_USER_YIELD {
            ffi::lua_pop(l, nres);
            nres = 0;
        }
        (code, nres)
    }
}

/// The first value of a resume that hands main the value it waits for (see `receive_k`
/// in raw.rs: a plain listen channel's receive).
const EV_VALUE: ffi::lua_Integer = 0;

/// Make the process the shard's current one (`S[1] = P`, and `S[2] = false`: main runs on
/// every resume), as every resume must first. The prelude resets `S[2]` after each task's
/// resume too, but an error raised between its set and its reset (caught by a user pcall,
/// or ending the process) must not leave another process's task there for the next one.
/// Allocates nothing (both slots always exist), so it may run outside a protected call.
unsafe fn publish(state: *mut ffi::lua_State, s_ref: c_int, p_ref: c_int) {
    ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, s_ref as ffi::lua_Integer);
    ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, p_ref as ffi::lua_Integer);
    publish_rest(state);
}

/// [`publish`] with `P` at stack index `at` of `state`.
unsafe fn publish_top(state: *mut ffi::lua_State, s_ref: c_int, at: c_int) {
    ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, s_ref as ffi::lua_Integer);
    ffi::lua_pushvalue(state, at);
    publish_rest(state);
}

/// The rest of a publish: the stack ends with `S, P`. (S[2] is mostly false already: the
/// prelude resets it after every task's resume; it is read straight from S, layout.rs.)
unsafe fn publish_rest(state: *mut ffi::lua_State) {
    ffi::lua_rawseti(state, -2, 1);
    let s = layout::as_table(layout::below_top(state, 1));
    let running = s.and_then(|s| layout::array(s, 2)).and_then(|v| layout::plain(v));
    if running != Some(layout::Plain::Bool(false)) {
        ffi::lua_pushboolean(state, 0);
        ffi::lua_rawseti(state, -2, 2);
    }
    ffi::lua_pop(state, 1);
}

/// One runtime event as the runner's arguments (see `handle` in the prelude).
fn event_args(lua: &Lua, ev: Event) -> mlua::Result<MultiValue> {
    let mut mv = MultiValue::new();
    let s = |x: &str| -> mlua::Result<LuaValue> { Ok(LuaValue::String(lua.create_string(x)?)) };
    let pid = |p: wippy_runtime::Pid| -> mlua::Result<LuaValue> {
        if p.is_nobody() {
            s("")
        } else {
            s(&p.to_string())
        }
    };
    let err = |e: &Error| -> mlua::Result<LuaValue> {
        Ok(LuaValue::UserData(lua.create_userdata(LuaError::new(e.clone()))?))
    };
    // `ok, value` or `false, error`
    let push_result = |mv: &mut MultiValue, r: &Result<Value, Error>| -> mlua::Result<()> {
        match r {
            Ok(v) => {
                mv.push_back(LuaValue::Boolean(true));
                mv.push_back(from_value(lua, v)?);
            }
            Err(e) => {
                mv.push_back(LuaValue::Boolean(false));
                mv.push_back(err(e)?);
            }
        }
        Ok(())
    };
    match ev {
        Event::Message(m) => {
            mv.push_back(s(abi::EV_MESSAGE)?);
            mv.push_back(s(m.topic.as_str())?);
            mv.push_back(pid(m.from)?);
            mv.push_back(LuaValue::Integer(m.payload.len() as i64));
            for v in &m.payload {
                mv.push_back(from_value(lua, v)?);
            }
        }
        Event::Completion { id, result } => {
            mv.push_back(s(abi::EV_COMPLETION)?);
            mv.push_back(LuaValue::Integer(id.0 as i64));
            push_result(&mut mv, &result)?;
        }
        Event::Exit { from, at, result } => {
            mv.push_back(s(abi::EV_EXIT)?);
            mv.push_back(pid(from)?);
            mv.push_back(LuaValue::Integer(at));
            push_result(&mut mv, &result)?;
        }
        Event::LinkDown { from, at, error } => {
            mv.push_back(s(abi::EV_LINK_DOWN)?);
            mv.push_back(pid(from)?);
            mv.push_back(LuaValue::Integer(at));
            mv.push_back(err(&error)?);
        }
        Event::Cancel { from, at, reason } => {
            mv.push_back(s(abi::EV_CANCEL)?);
            mv.push_back(if from.is_nobody() { s("{|}")? } else { pid(from)? });
            mv.push_back(LuaValue::Integer(at));
            mv.push_back(s(&reason)?);
        }
    }
    Ok(mv)
}

/// What main's `return v, err` means as an exit result (a string or an error object as
/// `err` is a failure).
pub(crate) fn returned_result(vals: MultiValue, marks: &crate::convert::Marks) -> ExitResult {
    let mut it = vals.into_iter();
    let v = it.next().unwrap_or(LuaValue::Nil);
    match it.next() {
        None | Some(LuaValue::Nil) | Some(LuaValue::Boolean(_)) => to_value(&v, marks, "the process result").map_err(|m| Error::invalid(m).with_retryable(false)),
        Some(LuaValue::String(e)) => Err(Error::internal(e.to_string_lossy().to_string()).with_retryable(false)),
        Some(LuaValue::Table(t)) => {
            let mut e = error_from_lua(&LuaValue::Table(t));
            e.retryable = e.retryable.or(Some(false));
            Err(e)
        }
        Some(other) if matches!(&other, LuaValue::UserData(ud) if ud.is::<LuaError>()) => Err(error_from_lua(&other)),
        Some(other) => Err(error_from_lua(&other).with_retryable(false)),
    }
}

impl Process for LuaProcess {
    fn attach(&mut self, attachment: wippy_runtime::Attachment) {
        self.state.attachment = Some(attachment);
    }
    fn init(&mut self, cx: &mut Context<'_>, method: &str, args: Vec<Value>) -> Status {
        match self.start(method, StartArgs::Values(args), None) {
            Ok(first) => self.drive(cx, None, Some(first)),
            Err(e) => Status::Exit(Err(e)),
        }
    }

    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        let st = self.drive(cx, Some(events), None);
        if matches!(st, Status::Wait | Status::Block) && (self.state.dirty || self.backlogged) {
            self.report_backlog(cx);
        }
        st
    }

    fn close(&mut self, cx: &mut Context<'_>, _result: &ExitResult) {
        if self.state.upgradable {
            self.state.shard.catalog.set_upgradable(cx.pid(), &self.state.entry, false);
        }
        self.release_state();
    }
}

impl LuaProcess {
    /// Tell the runtime how many messages this process took but has not received (only
    /// when there may be some: `dirty` says the pending queue may have grown since
    /// `receive` found it empty), so `wippy ps` shows them in its mailbox length.
    #[cold]
    fn report_backlog(&mut self, cx: &mut Context<'_>) {
        // SAFETY: inside this process's step, so inside a turn of its shard.
        let Some(vm) = (unsafe { current_vm() }) else { return };
        if self.co.p_ref == 0 {
            return;
        }
        let state = vm.main.0;
        // SAFETY: the main thread is not running between resumes; the stack is left as found.
        let n = unsafe {
            if ffi::lua_checkstack(state, 1) == 0 {
                return;
            }
            ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, self.co.p_ref as ffi::lua_Integer);
            let p = ffi::lua_topointer(state, -1) as *const u8;
            let n = if p.is_null() { 0 } else { raw::unreceived(p) };
            ffi::lua_settop(state, -2);
            n
        };
        cx.set_backlog(n);
        self.backlogged = n > 0;
    }
}

impl Drop for LuaProcess {
    fn drop(&mut self) {
        self.state.shard.members.fetch_sub(1, Ordering::AcqRel);
    }
}
