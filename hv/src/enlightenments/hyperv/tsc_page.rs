//! The reference TSC page (MSR_REFERENCE_TSC) and the partition reference counter
//! (MSR_TIME_REF_COUNT), both in 100 ns units since the partition's vCPUs got their TSC.
//!
//! The page holds `TscSequence` (u32, 0 = invalid: use the MSR), a reserved u32, `TscScale`
//! (u64) and `TscOffset` (i64); the guest computes `((tsc * scale) >> 64) + offset` with no
//! exit. The offset puts reference time 0 at partition creation. hv derives the MSR from the
//! same formula over the guest TSC it computes from the host's (one guest/host TSC pair read
//! together at vCPU 0's creation, [`read_origin`]), so page and MSR agree to that read's
//! latency (microseconds) and run at the same rate. hv assumes the guest TSC runs at the
//! host's rate (no TSC scaling: KVM_GET_TSC_KHZ equal to the host's).

/// Scale for a TSC of `tsc_khz`: 100 ns units per tick as a 64.64 fixed-point fraction,
/// `10^4 * 2^64 / tsc_khz` (10^7 units per second / (khz * 1000) ticks per second).
pub(crate) fn scale(tsc_khz: u32) -> Option<u64> {
    if tsc_khz == 0 {
        return None;
    }
    let s = (10_000u128 << 64) / u128::from(tsc_khz);
    u64::try_from(s).ok()
}

/// The page's first 24 bytes.
pub(crate) fn page_bytes(sequence: u32, scale: u64, offset: i64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&sequence.to_le_bytes());
    b[8..16].copy_from_slice(&scale.to_le_bytes());
    b[16..24].copy_from_slice(&offset.to_le_bytes());
    b
}

/// The next sequence number after `seq` (never 0, which means "invalid", nor 0xffffffff,
/// which older TLFS versions also reserve).
pub(crate) fn next_sequence(seq: u32) -> u32 {
    match seq.wrapping_add(1) {
        0 | 0xffff_ffff => 1,
        s => s,
    }
}

/// Reads vCPU `fd`'s TSC (IA32_TSC through KVM_GET_MSRS) and the host's around it: the
/// (guest, host) pair of [`super::Clock`]. `None` when KVM refuses the read.
pub(crate) fn read_origin(fd: &kvm_ioctls::VcpuFd) -> Option<(u64, u64)> {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: 0x10,
        ..Default::default()
    }])
    .ok()?;
    let before = host_tsc();
    let n = fd.get_msrs(&mut msrs).ok()?;
    let after = host_tsc();
    let guest = msrs.as_slice().first().map(|e| e.data)?;
    (n == 1).then_some((guest, before + after.wrapping_sub(before) / 2))
}

/// The host's TSC.
pub(crate) fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hvlab_protocol::hyperv::tsc_page_time;

    /// Exact 100 ns units of `tsc` ticks at `khz`.
    fn exact(tsc: u64, khz: u32) -> u128 {
        u128::from(tsc) * 10_000 / u128::from(khz)
    }

    #[test]
    fn scale_gives_100ns_units_within_one_unit() {
        for khz in [
            1_000_000u32,
            2_100_000,
            2_994_374,
            3_600_000,
            4_999_999,
            10_001,
        ] {
            let s = scale(khz).unwrap();
            for tsc in [
                0u64,
                1,
                999,
                1 << 32,
                123_456_789_012,
                1 << 50,
                u64::MAX / 3,
            ] {
                let t = u128::from(tsc_page_time(tsc, s, 0));
                let e = exact(tsc, khz);
                // The scale truncates, so the page never runs ahead; it lags by less than
                // tsc * 2^-64 * (rounding) + 1 unit.
                assert!(t <= e, "khz {khz} tsc {tsc}: {t} > {e}");
                let tol = 1 + (u128::from(tsc) >> 60);
                assert!(e - t <= tol, "khz {khz} tsc {tsc}: {t} vs {e}");
            }
        }
    }

    #[test]
    fn offset_shifts_and_ppm_error_is_far_below_100() {
        let khz = 2_994_374;
        let s = scale(khz).unwrap();
        let one_hour = u64::from(khz) * 1000 * 3600;
        let t = tsc_page_time(one_hour, s, -5);
        assert_eq!(
            t,
            36_000_000_000 - 5 - (36_000_000_000 - tsc_page_time(one_hour, s, 0))
        );
        let err = 36_000_000_000i64 - tsc_page_time(one_hour, s, 0) as i64;
        assert!((0..=1).contains(&err), "{err}");
    }

    #[test]
    fn degenerate_frequencies_and_the_page_layout() {
        assert_eq!(scale(0), None);
        // 1 kHz would need 10^4 units per tick: not a 64.64 fraction below 1.
        assert_eq!(scale(1), None);
        assert!(scale(10_001).is_some());
        let b = page_bytes(7, 0x1122_3344_5566_7788, -2);
        assert_eq!(&b[..4], &7u32.to_le_bytes());
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..], &(-2i64).to_le_bytes());
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(0xffff_fffe), 1);
        assert_eq!(next_sequence(0xffff_ffff), 1);
    }
}
