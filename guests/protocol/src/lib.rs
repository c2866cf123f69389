//! The contract between hvlab guests and the VMM that runs them (hv, or a peer such as QEMU).
//!
//! Everything here is plain data so that the no_std guest and the host agree on one definition.
//! The README's "Guest protocol" section is the prose version of this file.
#![no_std]

/// COM1: a 16550 UART. Line-oriented console text; result lines are printed here too.
pub const CONSOLE_PORT: u16 = 0x3f8;

/// A 32-bit write ends the run with that status (QEMU's `isa-debug-exit` convention; QEMU then
/// exits with `(status << 1) | 1`).
pub const EXIT_PORT: u16 = 0xf4;

/// A 32-bit write marks a phase boundary: `phase_id | PHASE_END` for the end, `phase_id` for the
/// begin. hv snapshots every counter at that exit; the marker exits themselves fall outside the
/// phase. Under a VMM that ignores the port (QEMU) the write is harmless.
pub const PHASE_PORT: u16 = 0x700;
/// Bit set in a phase marker value for the end of a phase.
pub const PHASE_END: u32 = 1 << 31;

/// hv test port: every access is a userspace exit answered by hv (reads return
/// [`TEST_PORT_READ_VALUE`]). Used by exit-floor's `pio-out` / `pio-in`.
pub const TEST_PORT: u16 = 0x702;
/// What a read of [`TEST_PORT`] or [`TEST_MMIO_BASE`] returns, so the guest can tell a VMM that
/// answers from one that ignores the access (which reads all ones).
pub const TEST_PORT_READ_VALUE: u32 = 0x4856_4c42; // "HVLB"

/// A port whose writes KVM completes in the kernel (hv registers an ioeventfd on it), so a
/// write costs an exit to KVM but none to userspace. exit-floor's `pio-kernel`.
pub const KERNEL_PORT: u16 = 0x704;

/// Guest-physical MMIO window for devices; guest RAM must stay below it.
pub const MMIO_WINDOW_BASE: u64 = 0xc000_0000;
/// hv test MMIO region (one page): every access is a userspace exit answered by hv.
pub const TEST_MMIO_BASE: u64 = 0xd000_0000;
/// Size of the test MMIO region.
pub const TEST_MMIO_SIZE: u64 = 0x1000;

/// Highest guest RAM size the guest's identity map and the MMIO window allow.
pub const MAX_GUEST_RAM: u64 = MMIO_WINDOW_BASE;

/// Where the PVH start info lives when hv boots a guest (QEMU picks its own).
pub const START_INFO_ADDR: u64 = 0x6000;
/// Where hv puts the command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x7000;
/// Longest command line hv accepts, NUL included.
pub const CMDLINE_MAX: usize = 0x1000;
/// Physical address where the guest image is linked.
pub const IMAGE_BASE: u64 = 0x10_0000;

/// Exit statuses a guest writes to [`EXIT_PORT`].
pub mod status {
    /// The workload ran and verified its results.
    pub const OK: u32 = 0;
    /// The workload ran but a check failed (data mismatch, unexpected value).
    pub const WORKLOAD_FAILED: u32 = 1;
    /// The command line named no workload, an unknown one, or bad arguments.
    pub const BAD_ARGS: u32 = 2;
    /// The guest took an unexpected exception (details on the console).
    pub const EXCEPTION: u32 = 3;
    /// The guest runtime panicked (message on the console).
    pub const PANIC: u32 = 4;
    /// The workload needs something this VMM or host does not offer (reason on the console).
    pub const UNSUPPORTED: u32 = 5;
}

/// Every result line starts with this token, then space-separated `key=value` pairs. Values
/// never contain spaces. Lines without the prefix are free text.
pub const LINE_PREFIX: &str = "HVLAB";

/// Record kinds (the `rec=` key, always first after the prefix):
///
/// - `rec=phase id=N name=NAME ops=N tsc=CYCLES [metric=value ...]` — one measured phase.
/// - `rec=hist id=N unit=tsc b=IDX:COUNT,IDX:COUNT,...` — the phase's latency histogram in
///   [`hist_bucket`] buckets (only non-empty buckets).
/// - `rec=info key=value ...` — facts the guest found (CPU count, hypervisor signature, ...).
/// - `rec=skip name=NAME reason=WORD_WORD` — a micro-test the guest could not run here.
pub mod rec {
    pub const PHASE: &str = "phase";
    pub const HIST: &str = "hist";
    pub const INFO: &str = "info";
    pub const SKIP: &str = "skip";
}

/// Sub-buckets per power of two in the guest's latency histogram.
pub const HIST_SUB_BITS: u32 = 2;
/// Number of buckets: enough for any u64 value.
pub const HIST_BUCKETS: usize = (64 << HIST_SUB_BITS) as usize;

/// Log-linear bucket of a value: 4 buckets per power of two (relative error <= 25%), computed
/// with shifts only (no floating point, no popcnt/lzcnt needed beyond `leading_zeros`).
pub const fn hist_bucket(v: u64) -> usize {
    if v < (1 << HIST_SUB_BITS) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1);
    (((msb - HIST_SUB_BITS + 1) << HIST_SUB_BITS) as u64 + sub) as usize
}

/// Lowest value that falls into `bucket` (inverse of [`hist_bucket`]).
pub const fn hist_bucket_low(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < (1 << HIST_SUB_BITS) {
        return b;
    }
    let octave = (b >> HIST_SUB_BITS) - 1;
    let sub = b & ((1 << HIST_SUB_BITS) - 1);
    ((1 << HIST_SUB_BITS) | sub) << octave
}

/// hv's own CPUID leaves (hv's enlightenments are advertised here; KVM's stay at 0x40000000).
pub const HV_CPUID_BASE: u32 = 0x4000_0100;
/// Signature returned in EBX, ECX, EDX of [`HV_CPUID_BASE`]: "hvlabhvlabhv".
pub const HV_CPUID_SIGNATURE: [u8; 12] = *b"hvlabhvlabhv";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_invertible() {
        let mut last = 0;
        for v in 0..5000u64 {
            let b = hist_bucket(v);
            assert!(b >= last, "bucket went down at {v}");
            assert!(hist_bucket_low(b) <= v, "low bound above value at {v}");
            assert_eq!(hist_bucket(hist_bucket_low(b)), b);
            last = b;
        }
        assert!(hist_bucket(u64::MAX) < HIST_BUCKETS);
    }
}
