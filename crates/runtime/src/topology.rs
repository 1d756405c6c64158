//! Links and monitors, and what a process's exit sends along them (SPEC §4.1, §4.5):
//! the PID leaves the table, its names are released, monitors get EXIT (any exit), links
//! get LINK_DOWN (abnormal exit only). A process that does not trap links dies at once with
//! "linked process failed" when a LINK_DOWN reaches it, and so the failure cascades.
//!
//! Every change to a process's topology happens under its topology lock, and an exiting
//! process marks itself `exited` under that lock before it reads its lists, so a link or
//! monitor is either refused ("not alive") or sees the exit: never lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cell::{ProcCell, TopoMore, KILL_LINKED};
use crate::error::Error;
use crate::node::{Dest, NodeInner};
use crate::pid::Pid;
use crate::process::{Event, ExitResult};
use crate::remote::{Along, Relation};

/// One of a process's relation lists (links, monitors, monitoring).
type Side = fn(&mut TopoMore) -> &mut Vec<Pid>;

impl NodeInner {
    /// Announce the exit of `cell` (its step loop is over and its process object dropped).
    pub(crate) fn exit(&self, cell: &Arc<ProcCell>, result: ExitResult) {
        let pid = cell.pid;
        crate::stats::add(
            match &result {
                Ok(_) => crate::stats::Counter::ExitsNormal,
                Err(e) if e.kind == crate::ErrorKind::Canceled || cell.kill.load(std::sync::atomic::Ordering::Relaxed) != crate::cell::KILL_NONE => {
                    crate::stats::Counter::ExitsKilled
                }
                Err(_) => crate::stats::Counter::ExitsError,
            },
            1,
        );
        self.table.remove(pid);
        cell.mailbox.complete();
        // The host's count drops before anyone hears of the exit, so a supervisor that
        // restarts on EXIT never meets a stale max_processes.
        cell.host.release(pid.is_system());
        let more = {
            let mut t = cell.topo.lock();
            cell.exited.store(true, std::sync::atomic::Ordering::Relaxed);
            t.more.take()
        };
        if let Some(m) = more {
            let m = *m;
            self.names.release(&m.names, pid);
            let remote = self.remote.get();
            if let Some(r) = remote {
                if !m.names.is_empty() {
                    r.released(pid, &m.names);
                }
            }
            crate::dispatch::abort_all(m.timers);
            let at = crate::dispatch::unix_secs();
            // a caller that ends cancels the calls it made that are still running (their
            // exit, when it comes, is nobody's event)
            // (a callee that already ended is not there to deliver to)
            for callee in m.calls {
                let _ = self.deliver(callee, Event::Cancel { from: pid, at, reason: smol_str::SmolStr::new_static("caller context canceled") });
            }
            for target in m.monitoring {
                if target.node() != self.local {
                    if let Some(r) = remote {
                        let _ = r.relate(&cell.origin(), target, Relation::Unmonitor);
                    }
                    continue;
                }
                if let Some(c) = self.table.get(target) {
                    if let Some(tm) = c.topo.lock().more.as_mut() {
                        tm.monitors.retain(|p| *p != pid);
                    }
                }
            }
            for watcher in m.monitors {
                if watcher.node() != self.local {
                    if let Some(r) = remote {
                        r.exited(pid, watcher, Along::Monitor, &result);
                    }
                    continue;
                }
                let _ = self.deliver(watcher, Event::Exit { from: pid, at, result: result.clone() });
            }
            for peer in m.links {
                if peer.node() != self.local {
                    if let Some(r) = remote {
                        r.exited(pid, peer, Along::Link, &result);
                    }
                    continue;
                }
                self.link_gone(peer, pid, at, result.as_ref().err());
            }
            for w in m.watchers {
                w.tell(pid, &result);
            }
        }
    }

    /// `from` (linked with `peer`) exited: drop the link, and on an abnormal exit deliver
    /// LINK_DOWN or kill a non-trapping peer.
    pub(crate) fn link_gone(&self, peer: Pid, from: Pid, at: i64, error: Option<&Error>) {
        let Some(cell) = self.table.get(peer) else { return };
        {
            let mut t = cell.topo.lock();
            if cell.exited.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            // A peer that unlinked meanwhile hears nothing.
            let Some(m) = t.more.as_mut() else { return };
            let before = m.links.len();
            m.links.retain(|p| *p != from);
            if m.links.len() == before {
                return;
            }
        }
        let Some(error) = error else { return };
        if cell.trap_links.load(Ordering::Acquire) {
            let _ = self.deliver(peer, Event::LinkDown { from, at, error: error.clone() });
        } else {
            self.kill(&cell, KILL_LINKED);
        }
    }

    /// Link `me` (alive: it is the caller) with `dest`, both ways.
    pub(crate) fn link(&self, me: &ProcCell, dest: &Dest) -> Result<(), Error> {
        self.relate(me, dest, Relation::Link, |m| &mut m.links, |m| &mut m.links)
    }

    pub(crate) fn unlink(&self, me: &ProcCell, dest: &Dest) -> Result<(), Error> {
        self.unrelate(me, dest, Relation::Unlink, |m| &mut m.links, |m| &mut m.links)
    }

    /// `me` monitors `dest`: it gets one EXIT when `dest` exits.
    pub(crate) fn monitor(&self, me: &ProcCell, dest: &Dest) -> Result<(), Error> {
        self.relate(me, dest, Relation::Monitor, |m| &mut m.monitors, |m| &mut m.monitoring)
    }

    pub(crate) fn unmonitor(&self, me: &ProcCell, dest: &Dest) -> Result<(), Error> {
        self.unrelate(me, dest, Relation::Unmonitor, |m| &mut m.monitors, |m| &mut m.monitoring)
    }

    /// Record a link or monitor between `me` and `dest`: `me` in the target's list `theirs`
    /// (refused when the target has exited: it would never fire), the target in `me`'s
    /// list `mine`.
    fn relate(&self, me: &ProcCell, dest: &Dest, relation: Relation, theirs: Side, mine: Side) -> Result<(), Error> {
        let verb = if relation == Relation::Link { "link to" } else { "monitor" };
        let target = self.resolve(dest)?;
        if target == me.pid {
            return Err(Error::invalid(format!("a process cannot {verb} itself")));
        }
        if target.node() != self.local {
            // another node's process: asked of its node (SPEC §13.4), recorded here below
            self.remote_for(target)?.relate(&me.origin(), target, relation)?;
        } else {
            let cell = self.table.get(target).ok_or_else(|| Error::process_not_found(dest))?;
            let mut t = cell.topo.lock();
            if cell.exited.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::process_not_found(dest));
            }
            let list = theirs(t.more());
            if !list.contains(&me.pid) {
                list.push(me.pid);
            }
        }
        let mut t = me.topo.lock();
        let list = mine(t.more());
        if !list.contains(&target) {
            list.push(target);
        }
        Ok(())
    }

    /// Undo `relate` (nothing to undo is not an error).
    fn unrelate(&self, me: &ProcCell, dest: &Dest, relation: Relation, theirs: Side, mine: Side) -> Result<(), Error> {
        let target = self.resolve(dest)?;
        if let Some(m) = me.topo.lock().more.as_mut() {
            mine(m).retain(|p| *p != target);
        }
        if target.node() != self.local {
            return self.remote_for(target)?.relate(&me.origin(), target, relation);
        }
        if let Some(cell) = self.table.get(target) {
            if let Some(m) = cell.topo.lock().more.as_mut() {
                theirs(m).retain(|p| *p != me.pid);
            }
        }
        Ok(())
    }
}
