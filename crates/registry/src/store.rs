//! The versioned registry — the one model of "the entries this node runs" that the loader
//! fills, `wippy registry list` prints, the live registry changes (Lua transactions,
//! rollbacks, `--watch` reloads) and the Lua `registry` module reads. Every change makes a
//! new version; a reader holds one consistent snapshot for as long as it likes (later
//! changes never show through it), and the latest [`HISTORY`] versions can be read again.
//!
//! What a change must pass before it becomes a version (kinds, fields, references) is the
//! embedder's check, not this file's: [`Snapshot::with`] gives the candidate entries, the
//! embedder checks them and [`Registry::commit`]s them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::{Entry, EntryId};

/// How many versions [`Registry::snapshot_at`] can reach (the oldest are forgotten).
pub const HISTORY: usize = 256;

/// One version of the registry. Entries keep their definition order: the load's order,
/// then entries added later.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    entries: Vec<Arc<Entry>>,
    index: HashMap<EntryId, usize>,
}

/// Why a change cannot apply to a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("entry {0} already exists")]
    Exists(EntryId),
    #[error("entry not found: {0}")]
    Missing(EntryId),
}

impl Snapshot {
    fn build(version: u64, entries: Vec<Arc<Entry>>) -> Snapshot {
        let index = entries.iter().enumerate().map(|(i, e)| (e.id.clone(), i)).collect();
        Snapshot { version, entries, index }
    }
    pub fn get(&self, id: &EntryId) -> Option<&Arc<Entry>> {
        self.index.get(id).map(|&i| &self.entries[i])
    }
    pub fn get_str(&self, id: &str) -> Option<&Arc<Entry>> {
        id.parse().ok().and_then(|id: EntryId| self.get(&id))
    }
    /// All entries, in definition order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.iter()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries this version would have after `changes` (applied in order, all or
    /// nothing). Nothing is committed.
    pub fn with(&self, changes: impl IntoIterator<Item = Change>) -> Result<Vec<Entry>, ChangeError> {
        let mut entries: Vec<Entry> = self.entries.iter().map(|e| (**e).clone()).collect();
        let mut index: HashMap<EntryId, usize> = self.index.clone();
        for c in changes {
            match c {
                Change::Create(e) if index.contains_key(&e.id) => return Err(ChangeError::Exists(e.id)),
                Change::Update(e) if !index.contains_key(&e.id) => return Err(ChangeError::Missing(e.id)),
                Change::Create(e) | Change::Update(e) | Change::Put(e) => match index.get(&e.id) {
                    Some(&i) => entries[i] = e,
                    None => {
                        index.insert(e.id.clone(), entries.len());
                        entries.push(e);
                    }
                },
                Change::Delete(id) => {
                    let Some(i) = index.remove(&id) else { return Err(ChangeError::Missing(id)) };
                    entries.remove(i);
                    for slot in index.values_mut() {
                        if *slot > i {
                            *slot -= 1;
                        }
                    }
                }
            }
        }
        Ok(entries)
    }
}

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add an entry, or replace the one with the same ID.
    Put(Entry),
    /// Add an entry that must not exist yet.
    Create(Entry),
    /// Replace an entry that must exist.
    Update(Entry),
    /// Remove an entry that must exist.
    Delete(EntryId),
}

#[derive(Debug)]
pub struct Registry {
    /// The current version and the ones before it (at most [`HISTORY`]), by number.
    versions: RwLock<BTreeMap<u64, Arc<Snapshot>>>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::at(0, [])
    }
}

impl Registry {
    /// Version 1 holds `entries`.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Registry {
        Registry::at(1, entries)
    }

    /// Version `version` holds `entries` (a node numbers the project as loaded 0).
    pub fn at(version: u64, entries: impl IntoIterator<Item = Entry>) -> Registry {
        let snap = Snapshot::build(version, entries.into_iter().map(Arc::new).collect());
        Registry { versions: RwLock::new(BTreeMap::from([(version, Arc::new(snap))])) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Snapshot>>> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current version, unchanged by later changes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.read().last_key_value().map(|(_, s)| s.clone()).unwrap_or_default()
    }

    /// Version `version`, if it is one of the latest [`HISTORY`].
    pub fn snapshot_at(&self, version: u64) -> Option<Arc<Snapshot>> {
        self.read().get(&version).cloned()
    }

    /// The version numbers [`Registry::snapshot_at`] can reach, oldest first.
    pub fn versions(&self) -> Vec<u64> {
        self.read().keys().copied().collect()
    }

    /// Make `entries` the next version; returns its number.
    pub fn commit(&self, entries: Vec<Entry>) -> u64 {
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        push(&mut versions, entries)
    }

    /// Apply `changes` together as one new version (no check beyond the changes' own
    /// preconditions); returns its number.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> Result<u64, ChangeError> {
        // one writer at a time: the changes apply to the version they become the next of
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        let entries = match versions.last_key_value() {
            Some((_, cur)) => cur.with(changes)?,
            None => Snapshot::default().with(changes)?,
        };
        Ok(push(&mut versions, entries))
    }
}

/// `entries` as the version after the latest; the oldest beyond [`HISTORY`] are forgotten.
fn push(versions: &mut BTreeMap<u64, Arc<Snapshot>>, entries: Vec<Entry>) -> u64 {
    let version = versions.last_key_value().map_or(0, |(v, _)| v + 1);
    versions.insert(version, Arc::new(Snapshot::build(version, entries.into_iter().map(Arc::new).collect())));
    while versions.len() > HISTORY {
        versions.pop_first();
    }
    version
}
