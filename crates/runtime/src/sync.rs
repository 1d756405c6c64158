//! The synchronisation primitives the mailbox protocol uses, swapped for `loom`'s
//! model-checked versions under `--cfg wippy_loom`. Nothing else may live here.

#[cfg(wippy_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
#[cfg(not(wippy_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
