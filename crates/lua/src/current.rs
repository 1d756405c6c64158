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
    /// The last destination `send` parsed, as written and as parsed (boxed: most of a
    /// parked process's life it is not used, and the process stays small).
    pub(crate) last_dest: Option<Box<LastDest>>,
}

/// A destination as written (up to `LastDest::TEXT` bytes, in the same allocation: a
/// repeated send reads one cache line, not two) and as parsed.
pub(crate) struct LastDest {
    pub(crate) dest: wippy_runtime::Dest,
    len: u8,
    text: [u8; LastDest::TEXT],
}

// One 64-byte allocation (what the two it replaced took together).
const _: () = assert!(std::mem::size_of::<LastDest>() <= 64);

impl LastDest {
    const TEXT: usize = 39;

    /// Remember `text` parsed as `dest`; `None` when the text is too long to keep.
    pub(crate) fn new(text: &[u8], dest: wippy_runtime::Dest) -> Option<Box<LastDest>> {
        if text.len() > Self::TEXT {
            return None;
        }
        let mut d = Box::new(LastDest { dest, len: text.len() as u8, text: [0; Self::TEXT] });
        d.text[..text.len()].copy_from_slice(text);
        Some(d)
    }

    pub(crate) fn is(&self, text: &[u8]) -> bool {
        self.len as usize == text.len() && self.text[..text.len()] == *text
    }
}

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
