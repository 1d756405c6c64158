//! The process table: PID -> live process, sharded so that spawns, exits and sends on
//! different processes rarely meet on one lock. A PID leaves the table before its exit is
//! announced, so a send after the exit always fails with "process not found".

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::cell::ProcCell;
use crate::pid::{HostName, Pid};

/// Sequence numbers are dense and mostly looked up near the newest ones, so the hash keeps
/// them in order: consecutive PIDs of a shard land in consecutive buckets (cache-friendly
/// inserts and lookups), and hashbrown's 7-bit tag (the top bits) comes from the low bits
/// so that neighbours still have distinct tags.
#[derive(Default)]
pub(crate) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        let k = n / SHARDS as u64; // the shard already used the low bits
        self.0 = (k & ((1 << 57) - 1)) | ((k & 0x7f) << 57);
    }
}

type Shard = HashMap<u64, Arc<ProcCell>, BuildHasherDefault<SeqHasher>>;

const SHARDS: usize = 64;

pub(crate) struct ProcessTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

impl ProcessTable {
    pub(crate) fn new() -> ProcessTable {
        ProcessTable { shards: (0..SHARDS).map(|_| CachePadded::new(Mutex::new(Shard::default()))).collect() }
    }

    #[inline]
    fn shard(&self, pid: Pid) -> &Mutex<Shard> {
        &self.shards[(pid.seq() as usize) % SHARDS]
    }

    pub(crate) fn insert(&self, cell: Arc<ProcCell>) {
        self.shard(cell.pid).lock().insert(cell.pid.seq(), cell);
    }

    pub(crate) fn remove(&self, pid: Pid) {
        let removed = self.shard(pid).lock().remove(&pid.seq());
        drop(removed);
    }

    pub(crate) fn get(&self, pid: Pid) -> Option<Arc<ProcCell>> {
        self.shard(pid).lock().get(&pid.seq()).filter(|c| c.pid == pid).cloned()
    }

    /// Run `f` on the live process `pid` while its shard is locked (no reference count
    /// traffic). `f` must not touch the table. `Err(arg)` when there is no such process.
    #[inline]
    pub(crate) fn with<A, R>(&self, pid: Pid, arg: A, f: impl FnOnce(&Arc<ProcCell>, A) -> R) -> Result<R, A> {
        let shard = self.shard(pid).lock();
        match shard.get(&pid.seq()) {
            Some(c) if c.pid == pid => Ok(f(c, arg)),
            _ => Err(arg),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Every live process, in PID order.
    pub(crate) fn all(&self) -> Vec<Arc<ProcCell>> {
        let mut v: Vec<Arc<ProcCell>> = Vec::new();
        for s in self.shards.iter() {
            v.extend(s.lock().values().cloned());
        }
        v.sort_by_key(|c| (c.pid.host(), c.pid.seq()));
        v
    }

    /// Every live process on `host` (for shutdown), in spawn order.
    pub(crate) fn on_host(&self, host: HostName) -> Vec<Arc<ProcCell>> {
        let mut v: Vec<Arc<ProcCell>> = Vec::new();
        for s in self.shards.iter() {
            v.extend(s.lock().values().filter(|c| c.pid.host() == host).cloned());
        }
        v.sort_by_key(|c| c.pid.seq());
        v
    }
}
