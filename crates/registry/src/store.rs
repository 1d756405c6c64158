//! The versioned registry: every change makes a new version, and a reader holds one
//! consistent snapshot for as long as it likes (later changes never show through it).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::{Entry, EntryId};

/// One version of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    entries: BTreeMap<EntryId, Arc<Entry>>,
}

impl Snapshot {
    pub fn get(&self, id: &EntryId) -> Option<&Arc<Entry>> {
        self.entries.get(id)
    }
    pub fn get_str(&self, id: &str) -> Option<&Arc<Entry>> {
        id.parse().ok().and_then(|id: EntryId| self.entries.get(&id))
    }
    /// All entries, ordered by ID.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add an entry, or replace the one with the same ID.
    Put(Entry),
    Delete(EntryId),
}

#[derive(Debug, Default)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
}

impl Registry {
    /// Version 1 holds `entries`.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Registry {
        let entries = entries.into_iter().map(|e| (e.id.clone(), Arc::new(e))).collect();
        Registry { current: RwLock::new(Arc::new(Snapshot { version: 1, entries })) }
    }

    /// The current version, unchanged by later changes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply `changes` together as one new version; returns its number.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> u64 {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut entries = cur.entries.clone();
        for c in changes {
            match c {
                Change::Put(e) => {
                    entries.insert(e.id.clone(), Arc::new(e));
                }
                Change::Delete(id) => {
                    entries.remove(&id);
                }
            }
        }
        let version = cur.version + 1;
        *cur = Arc::new(Snapshot { version, entries });
        version
    }
}
