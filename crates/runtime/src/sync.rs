//! The few synchronisation primitives the wake-up protocol uses, swapped for `loom`'s
//! model-checked versions under `--cfg wippy_loom`. Nothing else may live here.

#[cfg(wippy_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(wippy_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, Ordering};

/// A mutex with an infallible `lock`.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(
    #[cfg(wippy_loom)] loom::sync::Mutex<T>,
    #[cfg(not(wippy_loom))] parking_lot::Mutex<T>,
);

impl<T> Mutex<T> {
    pub(crate) fn new(v: T) -> Self {
        #[cfg(wippy_loom)]
        return Mutex(loom::sync::Mutex::new(v));
        #[cfg(not(wippy_loom))]
        return Mutex(parking_lot::Mutex::new(v));
    }

    #[cfg(wippy_loom)]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }

    #[cfg(not(wippy_loom))]
    #[inline]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }
}
