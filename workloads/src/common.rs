//! Guest helpers shared by the workloads (guest build only).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hvlab_guest_rt::{Fail, cpu};

/// Bound on waiting for other CPUs or interrupts (TSC cycles: tens of seconds at any plausible
/// rate), so a lost wake-up ends in a clear failure rather than a hang.
pub const WAIT_LIMIT: u64 = 1 << 36;

/// Spins until `counter` reaches `target`; fails with `what` after [`WAIT_LIMIT`].
pub fn wait_count(counter: &AtomicU32, target: u32, what: &'static str) -> Result<(), Fail> {
    let start = cpu::rdtsc();
    while counter.load(Ordering::Acquire) < target {
        if cpu::rdtsc().wrapping_sub(start) > WAIT_LIMIT {
            return Err(Fail::Check(what));
        }
        cpu::pause();
    }
    Ok(())
}

/// An AP's side of an IPI test: halts until an interrupt, again and again, until `quit` is set.
/// The check runs with interrupts off and `sti; hlt` re-enables them atomically, so no IPI is
/// lost in between; each halt is counted in `halts`.
pub fn halt_until(quit: &AtomicBool, halts: &AtomicU64) {
    loop {
        cpu::cli();
        if quit.load(Ordering::Acquire) {
            break;
        }
        halts.fetch_add(1, Ordering::Relaxed);
        cpu::sti_hlt();
    }
}

/// A mode the command line asked for needs an enlightenment that is not exposed: records
/// `$phase` as skipped (`<feature>_not_exposed`) and gives the failure to return
/// (`<feature> not exposed`).
macro_rules! not_exposed {
    ($phase:literal, $feature:literal) => {{
        hvlab_guest_rt::phase::skip($phase, concat!($feature, "_not_exposed"));
        hvlab_guest_rt::Fail::Unsupported(concat!($feature, " not exposed"))
    }};
}
pub(crate) use not_exposed;
