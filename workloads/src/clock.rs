//! clock: the cost of one time read from each clock source, one phase per source.
//!
//! Sources (`sources=`, in this order): `tsc` (RDTSC), `kvm-clock` (the pvclock page: RDTSC and
//! arithmetic, no exit; needs the `kvm-clock` enlightenment), `pit` (i8254 channel 2: latch
//! command to 0x43, two reads of 0x42; KVM's in-kernel PIT answers them, so they exit to KVM
//! but not to userspace), `pm-timer` (ACPI PM timer: one 32-bit read of port 0x608, answered by
//! hv in userspace), `rtc` (CMOS: index write to 0x70, data read from 0x71, both answered by hv
//! in userspace), `hv-page` (the Hyper-V reference TSC page: RDTSC and arithmetic, no exit;
//! needs `hv-time`), `hv-msr` (Hyper-V TIME_REF_COUNT: one MSR exit to hv). A source that is
//! absent (not exposed, or its ports answer all-ones) is reported as skipped with the reason.
//!
//! Per phase: `changes` (reads whose value differed from the previous one: the clock's
//! resolution at this read rate) and `backwards` (reads that went back, wraps excluded: must
//! be 0 for the monotonic sources).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "clock",
    summary: "cost of one time read: tsc, kvm-clock, pit (in-kernel), pm-timer and rtc (hv), Hyper-V TSC page and TIME_REF_COUNT",
    params: &[
        Param {
            key: "iters",
            default: "200",
            help: "reads per source",
        },
        Param {
            key: "sources",
            default: "all",
            help: "comma list of tsc, kvm-clock, pit, pm-timer, rtc, hv-page, hv-msr",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &["pit", "pm-timer", "rtc"],
};

/// Sources in report order.
pub const SOURCES: &[&str] = &[
    "tsc",
    "kvm-clock",
    "pit",
    "pm-timer",
    "rtc",
    "hv-page",
    "hv-msr",
];

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use hvlab_guest_rt::cpu::{self, inb, inl, outb};
    use hvlab_guest_rt::pv::{self, hyperv, kvmclock};
    use hvlab_guest_rt::{Ctx, Fail, phase};
    use hvlab_protocol::kvm_pv;

    use super::SOURCES;

    const PIT_CH2: u16 = 0x42;
    const PIT_CMD: u16 = 0x43;
    const PORT_B: u16 = 0x61;
    const PM_TIMER: u16 = 0x608;
    const RTC_INDEX: u16 = 0x70;
    const RTC_DATA: u16 = 0x71;

    fn wanted(filter: &str, name: &str) -> bool {
        filter == "all" || filter.split(',').any(|t| t == name)
    }

    /// Channel 2 counts down from 65536 in mode 2 (rate generator), gate on, speaker off.
    fn pit_start() {
        outb(PORT_B, (inb(PORT_B) & !0x02) | 0x01);
        outb(PIT_CMD, 0xb4); // channel 2, lobyte/hibyte, mode 2, binary
        outb(PIT_CH2, 0);
        outb(PIT_CH2, 0);
    }

    fn pit_read() -> u64 {
        outb(PIT_CMD, 0x80); // latch channel 2
        let lo = inb(PIT_CH2);
        let hi = inb(PIT_CH2);
        u64::from(u16::from_le_bytes([lo, hi]))
    }

    fn pm_read() -> u64 {
        u64::from(inl(PM_TIMER) & 0x00ff_ffff)
    }

    fn rtc_read() -> u64 {
        outb(RTC_INDEX, 0x00);
        u64::from(inb(RTC_DATA))
    }

    /// Which way a source counts, and its width (for wraps).
    #[derive(Clone, Copy)]
    enum Dir {
        Up(u32),
        Down(u32),
        /// Wall-clock seconds: wraps at 60, no direction check.
        Seconds,
    }

    fn measure(name: &'static str, iters: u64, dir: Dir, read: impl Fn() -> u64) {
        let mut prev = read();
        let (mut changes, mut backwards) = (0u64, 0u64);
        let p = phase::begin(name);
        for _ in 0..iters {
            let v = read();
            if v != prev {
                changes += 1;
                let back = match dir {
                    Dir::Up(bits) => v < prev && prev - v < (1 << bits) / 2,
                    Dir::Down(bits) => v > prev && v - prev < (1 << bits) / 2,
                    Dir::Seconds => false,
                };
                backwards += u64::from(back);
            }
            prev = v;
        }
        p.end(iters)
            .report(&[("changes", changes), ("backwards", backwards)], None);
    }

    /// Two reads a little apart that differ, the second not all-ones: the device is there.
    fn present(read: impl Fn() -> u64, ones: u64) -> bool {
        let a = read();
        for _ in 0..50 {
            cpu::pause();
        }
        let b = read();
        // The first may legitimately be all-ones (a PIT count just loaded reads 0xffff).
        b != ones && a != b
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 200)?;
        let filter = ctx.args.str_or("sources", "all");
        for t in filter.split(',') {
            if t != "all" && !SOURCES.contains(&t) {
                return Err(Fail::BadArg("sources"));
            }
        }
        if wanted(filter, "tsc") {
            measure("clock-tsc", iters, Dir::Up(63), cpu::rdtsc);
        }
        if wanted(filter, "kvm-clock") {
            let exposed = pv::kvm_has(kvm_pv::FEATURE_CLOCKSOURCE2)
                || pv::kvm_has(kvm_pv::FEATURE_CLOCKSOURCE);
            if !exposed {
                phase::skip("clock-kvm-clock", "kvm-clock_not_exposed");
            } else if kvmclock::read_ns(0) == 0 {
                phase::skip("clock-kvm-clock", "kvm-clock_page_not_updated");
            } else {
                measure("clock-kvm-clock", iters, Dir::Up(63), || {
                    kvmclock::read_ns(0)
                });
            }
        }
        let hv_time = hyperv::detect()
            .is_some_and(|i| i.privileges & hvlab_protocol::hyperv::PRIV_REFERENCE_TSC != 0);
        if wanted(filter, "hv-page") {
            if !hv_time {
                phase::skip("clock-hv-page", "hv-time_not_exposed");
            } else {
                hyperv::enable_tsc_page();
                if hyperv::tsc_page_time().is_none() {
                    phase::skip("clock-hv-page", "tsc_page_invalid");
                } else {
                    measure("clock-hv-page", iters, Dir::Up(63), || {
                        hyperv::tsc_page_time().unwrap_or(0)
                    });
                }
            }
        }
        if wanted(filter, "hv-msr") {
            if hv_time {
                measure("clock-hv-msr", iters, Dir::Up(63), hyperv::time_ref_count);
            } else {
                phase::skip("clock-hv-msr", "hv-time_not_exposed");
            }
        }
        if wanted(filter, "pit") {
            pit_start();
            if present(pit_read, 0xffff) {
                measure("clock-pit", iters, Dir::Down(16), pit_read);
            } else {
                phase::skip("clock-pit", "pit_not_present");
            }
        }
        if wanted(filter, "pm-timer") {
            // All-ones from an unmapped port, masked to the counter's 24 bits.
            if present(pm_read, 0x00ff_ffff) {
                measure("clock-pm-timer", iters, Dir::Up(24), pm_read);
            } else {
                phase::skip("clock-pm-timer", "pm-timer_not_present");
            }
        }
        if wanted(filter, "rtc") {
            outb(RTC_INDEX, 0x0b);
            if inb(RTC_DATA) == 0xff {
                phase::skip("clock-rtc", "rtc_not_present");
            } else {
                measure("clock-rtc", iters, Dir::Seconds, rtc_read);
            }
        }
        Ok(())
    }
}
