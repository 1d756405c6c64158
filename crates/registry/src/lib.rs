//! wippy-registry: the entries a project defines. Entry IDs, loading every definition
//! YAML of a project (with `file://` sources), checking an entry's fields for its kind
//! (the [`Checker`]), Go durations, dependency order, the runtime configuration and the
//! versioned registry readers take snapshots of.
//!
//! This crate never depends on the runtime or on Lua; which kinds exist is the
//! embedder's table (the `wippy` binary has one).

mod check;
mod config;
mod duration;
mod entry;
mod error;
mod id;
mod load;
mod order;
mod store;

pub use check::{Checker, Index, Lifecycle, Restart};
pub use config::{scalar, split_reference, Config};
pub use duration::{format_duration, parse_duration, NANOS_PER_SEC};
pub use entry::{Data, Entry, Origin, Source};
pub use error::{truncate, LoadError, LoadErrors};
pub use id::{EntryId, EntryIdError};
pub use load::{Override, Project};
pub use order::start_order;
pub use store::{Change, ChangeError, Registry, Snapshot, HISTORY};
