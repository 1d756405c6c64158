//! Everything that touches Lua's C API and internals: the shard's VM and its sandbox
//! (`sandbox`), the hot paths written against the C API (`raw`), the few Lua 5.4 struct
//! fields read directly (`layout`, held to the C API by a version test), the contract with
//! the prelude (`abi`), and which VM the running turn has (`current`).
//!
//! Must never: hand out the current VM as `&mut` (a step holds it across a resume while the
//! Lua code it runs reaches it again).

pub(crate) mod abi;
pub(crate) mod coroutine;
pub(crate) mod layout;
pub(crate) mod preempt;
mod prims;
pub(crate) mod json;
pub(crate) mod objects;
pub(crate) mod raw;
pub(crate) mod sandbox;

pub(crate) use prims::{fast_pid, install as install_primitives};

use std::cell::Cell;

use sandbox::Vm;

thread_local! {
    /// The VM of the shard running on this thread (null outside a turn).
    static CURRENT: Cell<*const Vm> = const { Cell::new(std::ptr::null()) };
}

/// The VM of the shard whose turn is running on this thread, shared: a step holds it across
/// a resume while Lua code it runs (`require`, a module) takes it again, so it is never
/// handed out as `&mut`. What changes in a VM during a turn sits behind a `RefCell` (see
/// `Vm`), borrowed only between two calls into Lua, never across one.
///
/// # Safety
/// Only call from a process step that a shard turn started; the reference must not outlive
/// the step.
pub(crate) unsafe fn current<'a>() -> Option<&'a Vm> {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: non-null only during a turn, which holds the VM's lock (the caller's contract
    // keeps the reference inside it); only shared references are made from it.
    unsafe { p.as_ref() }
}

/// A shard turn starts on this thread with `vm` (locked by the turn until `clear_current`).
pub(crate) fn set_current(vm: &Vm) {
    CURRENT.with(|c| c.set(vm as *const Vm));
}

/// The turn ended: no VM is current on this thread.
pub(crate) fn clear_current() {
    CURRENT.with(|c| c.set(std::ptr::null()));
}
