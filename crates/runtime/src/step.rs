//! One step of a process: what a worker does with a process cell it popped. The cell is a
//! [`Runnable`] like any other; its run finds the node (borrowed from the worker when it
//! is this node's, see `scheduler::worker_owner`), starts or steps the process with its
//! events, catches a panic in its code as the process's exit, flushes what it sent, and
//! then parks, re-queues or ends it. A process group (a Lua shard) steps its members
//! through the same function (`ProcessRef::run`).
//!
//! Must never: let a panic in process code reach the worker, or park a process before its
//! sends are queued.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};

use crate::cell::{ProcCell, KILL_NONE};
use crate::context::Context;
use crate::error::{panic_message, Error};
use crate::mailbox::Park;
use crate::node::NodeInner;
use crate::process::{Events, Status};
use crate::scheduler::{Hint, Runnable};

impl Runnable for ProcCell {
    fn run(self: Arc<Self>) {
        step(&self);
    }
}

/// Run one step of `cell` on this thread (the caller took it from a run queue, or is the
/// group it was handed to).
#[inline]
pub(crate) fn step(cell: &Arc<ProcCell>) {
    let of = &cell.host.node;
    if crate::scheduler::worker_owner() == of.as_ptr() as *const () {
        // SAFETY: this worker runs for this node and holds an Arc of it until it stops
        // (`worker_main`), so the allocation `of` points to is alive for this call; the
        // borrowed Arc is never dropped (no count taken, none given back).
        let node = ManuallyDrop::new(unsafe { Arc::from_raw(Weak::as_ptr(of)) });
        run(&node, cell);
    } else if let Some(node) = cell.host.node() {
        run(&node, cell);
    }
}

/// Queue a process (not in a group) on its host's scheduler. On one of that host's workers
/// this touches no reference count.
#[inline]
pub(crate) fn queue(cell: Arc<ProcCell>, hint: Hint) {
    match cell.host.sched.here() {
        Some(here) => here.push(cell, hint),
        None => {
            let host = cell.host.clone();
            host.sched.schedule(cell, hint);
        }
    }
}

/// The step itself (see the module's comment).
fn run(node: &Arc<NodeInner>, cell: &Arc<ProcCell>) {
    cell.mailbox.start();
    // SAFETY: the state word is RUNNING and only this thread moved it there.
    let slot = unsafe { &mut *cell.slot.get() };
    let crate::cell::Slot { process, init, next_command, last_target, context } = slot;
    let Some(p) = process.as_mut() else { return };
    // Only this worker writes the count: a plain add, readable by introspection.
    let w = cell.work.load(std::sync::atomic::Ordering::Relaxed);
    cell.work.store((w & !crate::cell::STEP_MASK) | (w.wrapping_add(1) & crate::cell::STEP_MASK), std::sync::atomic::Ordering::Relaxed);
    let first = crate::cell::take_init(init, next_command);
    let mut cx = Context::new(node, cell, next_command, last_target, context);
    let mut events = Events { mailbox: &cell.mailbox, topo: &cell.topo, popped: 0 };
    let status = match cell.kill_error() {
        Some(e) => Status::Exit(Err(e)),
        None => catch_unwind(AssertUnwindSafe(|| {
            if let Some((method, args)) = first {
                let st = p.init(&mut cx, &method, args);
                if !matches!(st, Status::Wait | Status::Block) || !cell.mailbox.has_next() {
                    return st;
                }
            }
            p.step(&mut cx, &mut events)
        }))
        .unwrap_or_else(|panic| Status::Exit(Err(Error::internal(format!("panic: {}", panic_message(&*panic)))))),
    };
    // Queue what the step sent before the process is parked or re-queued: once it is,
    // another worker may run it while this one still holds its slot.
    cx.flush();
    cell.mailbox.consumed(events.popped);
    let status = match status {
        Status::Exit(r) => Status::Exit(r),
        _ if cell.kill.load(std::sync::atomic::Ordering::Acquire) != KILL_NONE => {
            Status::Exit(Err(cell.kill_error().unwrap_or_else(Error::terminated)))
        }
        other => other,
    };
    match status {
        Status::Yield | Status::Wait | Status::Block if cell.mailbox.has_next() => {
            cell.mailbox.yield_now();
            node.schedule_ref(cell, Hint::Queued);
        }
        Status::Yield => {
            cell.mailbox.yield_now();
            node.schedule_ref(cell, Hint::Queued);
        }
        Status::Wait | Status::Block => {
            let how = if matches!(status, Status::Wait) { Park::Idle } else { Park::Blocked };
            if cell.mailbox.park(how) {
                node.schedule_ref(cell, Hint::Queued);
            }
        }
        Status::Exit(result) => {
            if let Err(e) = &result {
                tracing::debug!(pid = %cell.pid, kind = %e.kind, error = %e, "process exited with an error");
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| p.close(&mut cx, &result))) {
                tracing::error!(pid = %cell.pid, panic = %panic_message(&*panic), "process close panicked");
            }
            drop(cx);
            *process = None;
            *last_target = None;
            node.exit(cell, result);
        }
    }
}
