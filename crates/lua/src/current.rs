//! The process a shard is stepping right now, for the Rust functions Lua code calls.
//!
//! A Lua process's step publishes its runtime [`Context`] and its Rust-side state here for
//! the duration of each resume; module functions reach them with [`with`]. Nothing here
//! outlives a step.

use std::cell::Cell;
use std::sync::Arc;

use wippy_runtime::Context;

use crate::catalog::LuaEntry;
use crate::shard::Shard;

/// The Rust-side state of one Lua process.
pub(crate) struct ProcState {
    pub(crate) entry: Arc<LuaEntry>,
    /// The shard (also where the catalog and the VM's metatable marks are found).
    pub(crate) shard: Arc<Shard>,
    pub(crate) upgradable: bool,
    /// A task of the process hit the memory limit (even if the error was then caught).
    pub(crate) memfail: bool,
    /// Bytes this process allocated while it ran (net), for `max_process_memory`.
    pub(crate) memory: usize,
    /// P's ready queue or pending count may have become non-empty since `receive` last
    /// found both empty (set by every start and by the prelude through `R.dirty`): while
    /// false, the direct wait does not read them.
    pub(crate) dirty: bool,
    /// The last destination `send` parsed (inline: a repeated send reads nothing but
    /// this process's own state).
    pub(crate) last_dest: Option<LastDest>,
    /// What the spawner attached (`Spawn::attach`): the HTTP exchange of a request
    /// handler. Boxed: it is rare, and unboxed its 16 bytes take a Lua process's Rust
    /// state past one 128-byte block.
    pub(crate) attachment: Option<Box<wippy_runtime::Attachment>>,
}

/// A destination as parsed, and the Lua string it was written as: the string object's
/// address, kept alive by the registry reference `anchor` (released with the process
/// state), so the same address is the same text and a repeated send never reads the
/// string again. `anchor` 0: sent to once, not kept alive (the address is only a reason to
/// anchor the string at the next send to it, which parses it again).
pub(crate) struct LastDest {
    pub(crate) dest: wippy_runtime::Dest,
    pub(crate) key: *const std::ffi::c_void,
    pub(crate) anchor: std::os::raw::c_int,
}

// SAFETY: `key` is only compared, never read through.
unsafe impl Send for LastDest {}

thread_local! {
    static CURRENT: Cell<(*mut (), *mut ProcState)> = const { Cell::new((std::ptr::null_mut(), std::ptr::null_mut())) };
}

/// Publishes a process for the Rust functions Lua calls, until dropped.
pub(crate) struct Entered {
    prev: (*mut (), *mut ProcState),
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
    }
}

pub(crate) fn enter(cx: &mut Context<'_>, st: &mut ProcState) -> Entered {
    let p = (cx as *mut Context<'_> as *mut (), st as *mut ProcState);
    Entered { prev: CURRENT.with(|c| c.replace(p)) }
}

/// Run `f` with the current process's context and state.
pub(crate) fn with<R>(f: impl FnOnce(&mut Context<'_>, &mut ProcState) -> mlua::Result<R>) -> mlua::Result<R> {
    let (cx, st) = CURRENT.with(|c| c.get());
    if cx.is_null() {
        return Err(mlua::Error::runtime("this function can only be called from inside a process"));
    }
    // SAFETY: set by `enter` for the duration of a resume on this thread; the step that
    // owns both outlives every call made while they are published.
    unsafe { f(&mut *(cx as *mut Context<'static>), &mut *st) }
}

/// The current process's state only.
pub(crate) fn state<R>(f: impl FnOnce(&mut ProcState) -> R) -> mlua::Result<R> {
    with(|_, st| Ok(f(st)))
}

/// Which process is running on this thread (an identity, valid while it runs), or 0.
pub(crate) fn identity() -> usize {
    CURRENT.with(|c| c.get().1 as usize)
}
