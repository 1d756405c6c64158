//! The local name registry: name -> PID, with the SPEC §4.7 rules. A process's names are
//! recorded in its own topology too, so they are released when it exits.
//!
//! Lock order: a process's topology lock, then the registry's. Never the other way round.

use std::collections::HashMap;

use parking_lot::Mutex;
use smol_str::SmolStr;

use crate::cell::ProcCell;
use crate::error::Error;
use crate::pid::Pid;

/// The longest name a process may register (bytes).
pub const MAX_NAME_BYTES: usize = 1024;
/// The most names one process may hold: with the length bound, what one process can add
/// to the node-wide registry is bounded (SECURITY.md).
pub const MAX_NAMES_PER_PROCESS: usize = 1024;

/// A name any scope may register: not empty, at most [`MAX_NAME_BYTES`].
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("name must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!("name '{}' is longer than {MAX_NAME_BYTES} bytes", crate::error::Echo(name))));
    }
    Ok(())
}

#[derive(Default)]
pub(crate) struct Names {
    map: Mutex<HashMap<SmolStr, Pid>>,
}

impl Names {
    /// Register `name` for the live process `cell`. Registering the same name for the same
    /// process again is fine; for another process it is AlreadyExists.
    pub(crate) fn register(&self, cell: &ProcCell, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let mut topo = cell.topo.lock();
        if cell.exited.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::process_not_found(cell.pid));
        }
        if topo.more.as_ref().is_some_and(|m| m.names.len() >= MAX_NAMES_PER_PROCESS) {
            if topo.more.as_ref().is_some_and(|m| m.names.iter().any(|n| n == name)) {
                return Ok(());
            }
            return Err(Error::limit_exceeded(format!("{} already holds {MAX_NAMES_PER_PROCESS} names", cell.pid)));
        }
        let mut map = self.map.lock();
        match map.get(name) {
            Some(p) if *p == cell.pid => Ok(()),
            Some(p) => Err(Error::already_exists(format!("name '{}' is already registered to {p}", crate::error::Echo(name)))),
            None => {
                let name = SmolStr::new(name);
                map.insert(name.clone(), cell.pid);
                drop(map);
                topo.more().names.push(name);
                Ok(())
            }
        }
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Pid> {
        self.map.lock().get(name).copied()
    }

    /// Remove `name`; the PID it was registered to, if it was.
    pub(crate) fn unregister(&self, name: &str) -> Option<Pid> {
        self.map.lock().remove(name)
    }

    /// Release the names of an exited process (only those still pointing at it).
    pub(crate) fn release(&self, names: &[SmolStr], pid: Pid) {
        if names.is_empty() {
            return;
        }
        let mut map = self.map.lock();
        for n in names {
            if map.get(n) == Some(&pid) {
                map.remove(n);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}
