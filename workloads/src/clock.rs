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
//!
//! `span-ms=N` (with hv-time and the hv-page source) adds the phase `clock-hv-span`: for N ms
//! of reference time every vCPU reads the TSC page in a loop and checks it against the largest
//! value any vCPU has published (`backwards`: reads below a value published before the read
//! began, so time is monotonic across vCPUs), and the BSP reports the reference time right
//! after the phase's begin marker and right before its end marker (`ref_start`, `ref_end`,
//! 100 ns units), which the host compares with the phase's wall time on its CLOCK_MONOTONIC.
//! The phases `clock-hv-edge0`..`4` do the same with no span (two reads back to back): what the
//! host measures there is the marker exits' latency, which the host subtracts from the span.

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
        Param {
            key: "span-ms",
            default: "0",
            help: "with hv-page: ms of reference time in phase clock-hv-span (every vCPU reads the TSC page; cross-vCPU monotonic check; ref_start/ref_end for the host), 0 = off",
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
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use hvlab_guest_rt::cpu::{self, inb, inl, outb};
    use hvlab_guest_rt::pv::{self, hyperv, kvmclock};
    use hvlab_guest_rt::{Ctx, Fail, phase, smp};
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

    /// Largest reference time any vCPU has read in `clock-hv-span`.
    static SPAN_MAX: AtomicU64 = AtomicU64::new(0);
    /// Reads below a value published before they began (time going back across vCPUs).
    static SPAN_BACK: AtomicU64 = AtomicU64::new(0);
    static SPAN_READS: AtomicU64 = AtomicU64::new(0);
    static SPAN_STOP: AtomicBool = AtomicBool::new(false);

    /// One checked read: `prev` is loaded before the page is read, so a correct clock can
    /// never return less than it, whichever vCPU published it.
    fn span_read() -> u64 {
        let prev = SPAN_MAX.load(Ordering::Acquire);
        let t = hyperv::tsc_page_time().unwrap_or(0);
        if t < prev {
            SPAN_BACK.fetch_add(1, Ordering::Relaxed);
        }
        SPAN_MAX.fetch_max(t, Ordering::AcqRel);
        SPAN_READS.fetch_add(1, Ordering::Relaxed);
        t
    }

    fn span_ap(_cpu: u32, _: usize) {
        while !SPAN_STOP.load(Ordering::Acquire) {
            span_read();
        }
    }

    /// Phases without a span: the same reads back to back, so the host sees the markers' cost.
    const EDGES: [&str; 5] = [
        "clock-hv-edge0",
        "clock-hv-edge1",
        "clock-hv-edge2",
        "clock-hv-edge3",
        "clock-hv-edge4",
    ];

    /// Phase `name`: `ms` of reference time read by every vCPU (see the module docs).
    fn span(name: &'static str, ms: u64) {
        let span = ms.saturating_mul(10_000); // 100 ns units
        SPAN_STOP.store(false, Ordering::Release);
        SPAN_READS.store(0, Ordering::Relaxed);
        smp::post_aps(span_ap, 0);
        let p = phase::begin(name);
        let start = span_read();
        let mut end = span_read();
        let mut own = 2u64;
        while end.wrapping_sub(start) < span {
            end = span_read();
            own += 1;
        }
        let f = p.end(own);
        SPAN_STOP.store(true, Ordering::Release);
        smp::wait_aps();
        f.report(
            &[
                ("ref_start", start),
                ("ref_end", end),
                ("backwards", SPAN_BACK.load(Ordering::Relaxed)),
                ("reads", SPAN_READS.load(Ordering::Relaxed)),
                ("bsp_reads", own),
            ],
            None,
        );
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
        let span_ms = ctx.args.u64_or("span-ms", 0)?;
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
                    if span_ms > 0 {
                        for edge in EDGES {
                            span(edge, 0);
                        }
                        span("clock-hv-span", span_ms);
                    }
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
