//! Preemption of Lua code: which Lua thread of a shard runs now, the count hook that makes
//! it yield, and the primitives the prelude's scheduler reports its switches through
//! (`R.cur`, `R.preempted`, `R.preempt_pending`). The watchdog that decides *when* to arm
//! the hook lives with the shards (`shard.rs`); arming itself is here, where the C API is.
//!
//! Must never: arm the hook on a thread that may be gone (see [`Preempt`]).

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use mlua::ffi;
use parking_lot::Mutex;

thread_local! {
    /// The preemption state of the shard running on this thread.
    static CURRENT_PREEMPT: Cell<*const Preempt> = const { Cell::new(std::ptr::null()) };
}

/// Which Lua thread of a shard is running, for the watchdog to arm the hook on.
///
/// The watchdog arms the hook on `thread` while it holds `arm`, so the thread must stay
/// alive while `arm` is held. A process's main coroutine dies only after `forget` (its
/// process let go of it), which takes `arm`; a task's or a user coroutine's dies only after
/// the prelude switched away from it with `R.cur`, which also takes `arm`. So the
/// per-resume switch to a main coroutine is a plain store: a stale main coroutine the
/// watchdog may still read is alive (at worst it gets one spurious preemption).
pub(crate) struct Preempt {
    /// The running Lua thread (a process's main coroutine or one of its coroutines), or 0.
    thread: AtomicUsize,
    arm: Mutex<()>,
    /// Odd while a process step runs; bumped at each start and end of a step (only by the
    /// worker running the shard: a load and a store).
    pub(crate) generation: AtomicU64,
    /// Set by the hook when it suspended a coroutine; read by the runner.
    pub(crate) fired: AtomicBool,
    /// Set by the hook too; read (and cleared) by the shard's turn, which then ends.
    pub(crate) cut: AtomicBool,
    /// Set by the watchdog when one turn has run for a slice; cleared when a turn starts.
    pub(crate) expired: AtomicBool,
}

impl Preempt {
    pub(crate) fn new() -> Preempt {
        Preempt { thread: AtomicUsize::new(0), arm: Mutex::new(()), generation: AtomicU64::new(0), fired: AtomicBool::new(false), cut: AtomicBool::new(false), expired: AtomicBool::new(false) }
    }
    /// A process's main coroutine runs now (see the type's comment).
    pub(crate) fn set_main(&self, l: *mut ffi::lua_State) {
        self.thread.store(l as usize, Ordering::Release);
    }
    /// Any coroutine runs now; the one running before may die after this.
    pub(crate) fn set_thread(&self, l: *mut ffi::lua_State) {
        let _arm = self.arm.lock();
        self.thread.store(l as usize, Ordering::Release);
    }
    /// The main coroutine `l` is about to be let go of: never arm it again.
    pub(crate) fn forget(&self, l: *mut ffi::lua_State) {
        let _arm = self.arm.lock();
        let _ = self.thread.compare_exchange(l as usize, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
    /// The watchdog saw one step run for a whole slice: arm the hook on the thread it runs,
    /// which then yields at its next instruction count (see [`preempt_hook`]).
    pub(crate) fn arm(&self) {
        let _arm = self.arm.lock();
        let t = self.thread.load(Ordering::Acquire);
        if t != 0 {
            // SAFETY: the thread stays alive while `arm` is held (see the type's comment);
            // lua_sethook is documented safe to call asynchronously.
            unsafe { ffi::lua_sethook(t as *mut ffi::lua_State, Some(preempt_hook), ffi::LUA_MASKCOUNT, 1) };
        }
    }
    /// A process step starts; it ends when the guard drops.
    pub(crate) fn step(&self) -> StepGuard<'_> {
        self.bump();
        StepGuard(self)
    }
    fn bump(&self) {
        let g = self.generation.load(Ordering::Relaxed);
        self.generation.store(g.wrapping_add(1), Ordering::Release);
    }
}

pub(crate) struct StepGuard<'a>(&'a Preempt);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.bump();
    }
}

/// A shard's turn starts on this thread (until [`clear_current`]).
pub(crate) fn set_current(p: &Preempt) {
    CURRENT_PREEMPT.with(|c| c.set(p as *const Preempt));
}

/// The turn ended.
pub(crate) fn clear_current() {
    CURRENT_PREEMPT.with(|c| c.set(std::ptr::null()));
}

/// The preemption state of the shard running on this thread.
pub(crate) fn current_preempt<'a>() -> Option<&'a Preempt> {
    let p = CURRENT_PREEMPT.with(|c| c.get());
    // SAFETY: set for the duration of a shard turn, which outlives every use inside it.
    unsafe { p.as_ref() }
}

/// The hook armed on a coroutine that overstayed its slice: disarm, then yield where Lua
/// allows it, else check again a little later (inside a C function such as a `table.sort`
/// comparator a yield is impossible).
///
/// # Safety
/// Called by Lua as a hook on `l`, a live thread of a shard's VM.
unsafe extern "C-unwind" fn preempt_hook(l: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    // SAFETY: `l` is the thread the hook runs on (the caller's contract).
    unsafe {
        ffi::lua_sethook(l, None, 0, 0);
        if ffi::lua_isyieldable(l) != 0 {
            if let Some(p) = current_preempt() {
                p.fired.store(true, Ordering::Relaxed);
                p.cut.store(true, Ordering::Relaxed);
            }
            ffi::lua_yield(l, 0);
        } else {
            ffi::lua_sethook(l, Some(preempt_hook), ffi::LUA_MASKCOUNT, 1000);
        }
    }
}

/// `R.cur(co)`: the Lua thread that runs from now on (for the preemption watchdog).
///
/// # Safety
/// A C function Lua calls (argument 1 is a thread).
pub(crate) unsafe extern "C-unwind" fn rt_cur(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `l` is the calling thread; index 1 exists (nil when not given).
    let t = unsafe { ffi::lua_tothread(l, 1) };
    if let Some(p) = current_preempt() {
        p.set_thread(t);
    }
    0
}

/// `R.preempted()`: whether the hook suspended a coroutine (clears the flag).
///
/// # Safety
/// A C function Lua calls.
pub(crate) unsafe extern "C-unwind" fn rt_preempted(l: *mut ffi::lua_State) -> c_int {
    let fired = current_preempt().map(|p| p.fired.swap(false, Ordering::Relaxed)).unwrap_or(false);
    // SAFETY: a C function has LUA_MINSTACK free slots.
    unsafe { ffi::lua_pushboolean(l, fired as c_int) };
    1
}

/// `R.preempt_pending()`: the same, without clearing.
///
/// # Safety
/// A C function Lua calls.
pub(crate) unsafe extern "C-unwind" fn rt_preempt_pending(l: *mut ffi::lua_State) -> c_int {
    let fired = current_preempt().map(|p| p.fired.load(Ordering::Relaxed)).unwrap_or(false);
    // SAFETY: as above.
    unsafe { ffi::lua_pushboolean(l, fired as c_int) };
    1
}

/// `R.resume_task(S, t, co, ...)`: run task `t` on its coroutine `co` as the scheduler's
/// `coroutine.resume` would (`true, results...` or `false, error`), with `S[2] = t` and the
/// preemption thread set to `co` in the same C call. Set from Lua, one instruction before
/// the resume, the hook could suspend the process's main coroutine in between; the runtime
/// then resumes it with `S[2]` reset to false (main runs on every resume), and the task
/// would run as if it were main (its blocked send queued main as the sender: main's select
/// returned `true`).
///
/// # Safety
/// A C function Lua calls: arguments 1 to 3 are the shard table, a task and its thread.
pub(crate) unsafe extern "C-unwind" fn rt_resume_task(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `l` is the calling thread; the prelude passes S (a table whose slot 2 exists,
    // so the store allocates nothing), the task, and the task's thread.
    unsafe {
        let co = ffi::lua_tothread(l, 3);
        if co.is_null() {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_pushstring(l, c"resume_task: not a thread".as_ptr());
            return 2;
        }
        ffi::lua_pushvalue(l, 2);
        ffi::lua_rawseti(l, 1, 2);
        if let Some(p) = current_preempt() {
            p.set_thread(co);
        }
        // what lcorolib's auxresume does
        let narg = ffi::lua_gettop(l) - 3;
        if ffi::lua_checkstack(co, narg) == 0 {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_pushstring(l, c"too many arguments to resume".as_ptr());
            return 2;
        }
        ffi::lua_xmove(l, co, narg);
        let mut nres: c_int = 0;
        let status = ffi::lua_resume(co, l, narg, &mut nres);
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            if ffi::lua_checkstack(l, nres + 1) == 0 {
                ffi::lua_pop(co, nres);
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushstring(l, c"too many results to resume".as_ptr());
                return 2;
            }
            ffi::lua_pushboolean(l, 1);
            ffi::lua_xmove(co, l, nres);
            nres + 1
        } else {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_xmove(co, l, 1);
            2
        }
    }
}
