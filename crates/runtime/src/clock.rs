//! A coarse monotonic clock for bookkeeping that must not cost a spawn anything noticeable
//! (a process's age): the kernel's `CLOCK_MONOTONIC_COARSE` (a few ns, no syscall,
//! resolution of a scheduler tick), in 10 ms units since the first use in this OS process.
//! Never used for timers or time slices, which need the precise clock.

use std::sync::OnceLock;

/// Milliseconds per tick.
pub const TICK_MS: u64 = 10;

fn coarse_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given; the clock ID is valid on Linux.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

fn epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(coarse_ms)
}

/// Ticks since the epoch (wraps after about 497 days; ages are taken modulo that).
#[inline]
pub(crate) fn coarse_ticks() -> u32 {
    (coarse_ms().saturating_sub(epoch()) / TICK_MS) as u32
}

/// Milliseconds between a tick stamp and now.
pub(crate) fn age_ms(born: u32) -> u64 {
    coarse_ticks().wrapping_sub(born) as u64 * TICK_MS
}
