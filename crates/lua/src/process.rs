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

use mlua::{Lua, MultiValue, Table, Value as LuaValue};
use wippy_runtime::{Context, Error, Events, ExitResult, Process, Status, Value};

use crate::catalog::LuaEntry;
use crate::convert::to_value;
use crate::current::{self, ProcState};
use crate::modules::errors::{error_from_lua, error_from_mlua, LuaError};
use crate::shard::Shard;
use crate::vm::coroutine::{Coroutine, Input, Resumed, Start};
use crate::vm::current as current_vm;
use crate::vm::sandbox::Vm;

pub(crate) struct LuaProcess {
    state: ProcState,
    co: Coroutine,
    /// The coroutine's last yield was the wait tag: it takes the next event.
    awaiting: bool,
    /// The last backlog reported to the runtime was not zero (see `report_backlog`).
    backlogged: bool,
}

/// The arguments of a process's first resume, besides the state and the entry.
enum StartArgs {
    /// Spawn arguments (pushed raw when they can be).
    Values(Vec<Value>),
    /// Values already in Lua (after an upgrade).
    Lua(MultiValue),
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
            co: Coroutine::new(),
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
        let method = if method == "main" { self.state.entry.method.as_str() } else { method };
        let (values, lua_args) = match args {
            StartArgs::Values(v) => (v, MultiValue::new()),
            StartArgs::Lua(mv) => (Vec::new(), mv),
        };
        let start = Start {
            code: &code,
            method,
            own_method: method == self.state.entry.method,
            values: &values,
            lua_args,
            carry,
            limited: self.state.shard.options.max_process_memory > 0,
        };
        let nargs = self.co.start(vm, start).map_err(|e| Error::internal(format!("cannot start process: {e}")))?;
        if self.state.attachment.is_some() {
            // an HTTP handler: its response goes when main returns, and the tasks it
            // spawned run on (SPEC §11.2)
            self.co.set_linger(vm);
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
        if !self.co.is_live() {
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
        if self.co.is_direct() {
            // SAFETY: the coroutine is suspended in receive's direct wait.
            unsafe { self.co.warm_direct() };
        }
        loop {
            // What to resume with: the start arguments, a runtime event (raw when it can
            // be), or nothing (going on after a preemption).
            let input = match args.take() {
                Some(n) => {
                    self.co.clear_hint();
                    Input::Pushed(n)
                }
                None if self.awaiting => {
                    if !cx.consume(1) {
                        break Status::Yield;
                    }
                    match events.as_mut().and_then(|e| e.next()) {
                        Some(ev) => Input::Event(Some(ev)),
                        None => {
                            // SAFETY: the coroutine is suspended (it yielded a wait).
                            cx.set_warm(unsafe { self.co.warm_hints() });
                            break Status::Wait;
                        }
                    }
                }
                None => Input::Event(None),
            };
            let before = if shared_limit {
                let used = lua.used_memory();
                // what the process's queued messages hold counts toward its limit too
                let own = self.state.memory + cx.mailbox_bytes();
                let _ = lua.set_memory_limit(used + limit.saturating_sub(own).max(1));
                used
            } else {
                0
            };
            self.co.runs_next(&shard.preempt);
            let result = {
                let _entered = current::enter(cx, &mut self.state);
                self.co.resume(lua, input, limit > 0)
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
                    self.co.set_finished();
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
        self.awaiting = false;
        if self.state.upgradable {
            self.state.shard.catalog.set_upgradable(cx.pid(), &self.state.entry, false);
        }
        self.state.upgradable = false;
        self.state.entry = entry;
        cx.set_trap_links(false);
        self.start("main", StartArgs::Lua(args), Some((carry, n))).map_err(|e| fail(e.message))
    }

    /// Let go of the process's Lua state (see `Coroutine::release`).
    fn release_state(&mut self) {
        // SAFETY: called inside a turn of this process's shard (close, upgrade).
        let vm = unsafe { current_vm() };
        // (and the string send's cache keeps alive)
        let anchor = self.state.last_dest.take().map_or(0, |d| d.anchor);
        let options = &self.state.shard.options;
        let poolable = !options.isolated && options.max_process_memory == 0;
        let brief = self.state.entry.kind == crate::catalog::EntryKind::Function;
        self.co.release(vm, &self.state.shard.preempt, anchor, poolable, brief);
    }

    /// The error a process ended with: a memory-limit failure (even one a task raised
    /// and the scheduler passed on) as LimitExceeded, anything else as Lua gave it.
    /// With debug logs on (`wippy -v`): where the process's code was when it raised, from
    /// the dead coroutine's stack, which Lua keeps until it is closed.
    #[cold]
    fn log_traceback(&self, lua: &Lua, pid: wippy_runtime::Pid, e: &Error) {
        if let Some(tb) = self.co.traceback(lua) {
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
        self.state.attachment = Some(Box::new(attachment));
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
        // OS processes it made with `exec` and did not close
        crate::modules::exec::reap_owner(cx.pid());
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
        let Some(n) = self.co.unreceived(vm) else { return };
        cx.set_backlog(n);
        self.backlogged = n > 0;
    }
}

impl Drop for LuaProcess {
    fn drop(&mut self) {
        self.state.shard.members.fetch_sub(1, Ordering::AcqRel);
    }
}
