//! Warm-up hints: where a waiting process's next step starts in memory.
//!
//! A message handed along many processes (a ring, a pipeline) reaches each one after it has
//! been idle long enough to fall out of the CPU caches, and its step then begins with a
//! chain of cache misses, each waited for in turn: the cell, the process's state, what that
//! points to. A process that parks may leave up to [`WARM`] addresses in its cell
//! ([`Context::set_warm`](crate::Context::set_warm)); a process that queues a message for it
//! prefetches them, each with the two lines after it, and the cell's own lines, so they
//! load side by side while the sender finishes its step.
//!
//! Only hints: the runtime never reads through them, and a stale or null one costs nothing
//! (a prefetch never faults).

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many addresses a process may leave.
pub const WARM: usize = 3;

/// The addresses a parked process left (0: none).
#[derive(Default)]
pub(crate) struct Warm([AtomicUsize; WARM]);

impl Warm {
    pub(crate) fn set(&self, addrs: [*const u8; WARM]) {
        for (slot, a) in self.0.iter().zip(addrs) {
            slot.store(a as usize, Ordering::Relaxed);
        }
    }

    /// Prefetch every address left, with the two lines after it.
    #[inline]
    pub(crate) fn prefetch(&self) {
        for slot in &self.0 {
            let a = slot.load(Ordering::Relaxed);
            if a != 0 {
                prefetch(a as *const u8);
                prefetch(a.wrapping_add(64) as *const u8);
                prefetch(a.wrapping_add(128) as *const u8);
            }
        }
    }
}

/// Prefetch the cache lines of `len` bytes from `p`.
#[inline]
pub(crate) fn prefetch_range(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        prefetch(p.wrapping_add(off));
        off += 64;
    }
    prefetch(p.wrapping_add(len - 1));
}

/// Ask the CPU to start loading the cache line holding `p`. Never faults, whatever `p` is;
/// a no-op where there is no such instruction.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above (PRFM is a hint).
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_may_point_anywhere() {
        // Null is skipped; an unmapped or wild address is prefetched without a fault.
        let w = Warm::default();
        w.prefetch();
        w.set([1 as *const u8, (usize::MAX - 7) as *const u8, std::ptr::null()]);
        w.prefetch();
        prefetch_range(0x10 as *const u8, 300);
        let set: Vec<usize> = w.0.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        assert_eq!(set, vec![1, usize::MAX - 7, 0]);
    }
}
