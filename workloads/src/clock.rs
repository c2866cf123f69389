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
//!
//! Timer accuracy (`timers=`, after the reads): one-shot timers, each armed `iters` times
//! `delay-us` ahead, the BSP halting until it fires: `lapic` (the APIC timer in TSC-deadline
//! mode, one IA32_TSC_DEADLINE write per arm, served by KVM), `stimer` (STIMER0 one-shot in
//! message mode through SINT2, the handler consumes HVMSG_TIMER_EXPIRED) and `stimer-direct`
//! (STIMER1 in direct mode, its own vector). A synthetic timer is set up once with auto-enable
//! and re-armed by one COUNT write (an MSR exit to hv), as Linux's Hyper-V clockevent does.
//! Lateness is the TSC read first thing in the handler minus the TSC at the requested expiry
//! (for a synthetic timer, the TSC at which the reference time reaches it, from the reference
//! TSC page's scale and offset): phases `clock-timer-lapic`, `clock-timer-stimer`,
//! `clock-timer-stimer-direct`, each with a lateness histogram (p50/p99 in the host's record),
//! `expiries` (handler runs), `early` (handlers that ran before the requested expiry; not in
//! the histogram), `late_max` and `delay` (TSC cycles), and for `stimer` `messages`. The TSC
//! rate comes from the TSC page, so every timer phase needs `hv-time`; the synthetic ones need
//! `hv-synic` + `hv-stimer` (+ `hv-stimer-direct`), the APIC one TSC-deadline in CPUID. What
//! is missing is reported skipped with the reason (`hv-time_not_exposed`, ...).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "clock",
    summary: "cost of one time read: tsc, kvm-clock, pit (in-kernel), pm-timer and rtc (hv), Hyper-V TSC page and TIME_REF_COUNT; one-shot timer lateness: APIC TSC-deadline vs Hyper-V synthetic timer",
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
            key: "timers",
            default: "all",
            help: "one-shot timer accuracy (lateness histogram), comma list of lapic (TSC-deadline), stimer (message mode), stimer-direct; none = off; armed iters times each",
        },
        Param {
            key: "delay-us",
            default: "200",
            help: "how far ahead each one-shot timer is armed",
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

/// One-shot timers (`timers=`) in report order.
pub const TIMERS: &[&str] = &["lapic", "stimer", "stimer-direct"];

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use hvlab_guest_rt::cpu::{self, inb, inl, outb};
    use hvlab_guest_rt::pv::synic::{self, SynicPages};
    use hvlab_guest_rt::pv::{self, hyperv, kvmclock};
    use hvlab_guest_rt::{Ctx, Fail, apic, idt, phase, smp};
    use hvlab_protocol::hyperv as tlfs;
    use hvlab_protocol::kvm_pv;

    use super::{SOURCES, TIMERS};
    use crate::common::WAIT_LIMIT;

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

    const LAPIC_VECTOR: u8 = 0xe8;
    const STIMER_VECTOR: u8 = 0xe9;
    const DIRECT_VECTOR: u8 = 0xea;
    const STIMER_SINT: u32 = 2;

    static PAGES: SynicPages = SynicPages::new();
    static SYNIC_ON: AtomicBool = AtomicBool::new(false);
    /// Handler runs of the one-shot timers, and the TSC each handler read first.
    static FIRED: AtomicU64 = AtomicU64::new(0);
    static FIRED_TSC: AtomicU64 = AtomicU64::new(0);
    static MESSAGES: AtomicU64 = AtomicU64::new(0);

    fn on_timer(_: u8) {
        FIRED_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
        FIRED.fetch_add(1, Ordering::Release);
    }

    fn on_stimer_message(_: u8) {
        FIRED_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
        if PAGES.consume(STIMER_SINT).0 == tlfs::HVMSG_TIMER_EXPIRED {
            MESSAGES.fetch_add(1, Ordering::Relaxed);
        }
        FIRED.fetch_add(1, Ordering::Release);
    }

    /// The reference TSC page's conversion: reference time = ((tsc * scale) >> 64) + offset
    /// (100 ns units).
    #[derive(Clone, Copy)]
    struct RefClock {
        scale: u64,
        offset: i64,
    }

    impl RefClock {
        /// Reads scale and offset with the TLFS's sequence check; `None` while the page is
        /// invalid (sequence 0).
        fn read() -> Option<RefClock> {
            let base = hyperv::TSC_PAGE.gpa() as *const u8;
            loop {
                // SAFETY: the runtime's static, page-aligned TSC page (identity-mapped); the
                // fields are naturally aligned; hv rewrites it between sequence changes.
                let (seq, scale, offset, again) = unsafe {
                    (
                        core::ptr::read_volatile(base as *const u32),
                        core::ptr::read_volatile(base.add(8) as *const u64),
                        core::ptr::read_volatile(base.add(16) as *const i64),
                        core::ptr::read_volatile(base as *const u32),
                    )
                };
                if seq == 0 || scale == 0 {
                    return None;
                }
                if seq == again {
                    return Some(RefClock { scale, offset });
                }
            }
        }

        /// Reference time at `tsc`.
        fn at(self, tsc: u64) -> u64 {
            tlfs::tsc_page_time(tsc, self.scale, self.offset)
        }

        /// The first TSC value at which the reference time reads `t`.
        fn tsc_of(self, t: u64) -> u64 {
            let rel = (i128::from(t) - i128::from(self.offset)).max(0) as u128;
            (rel << 64).div_ceil(u128::from(self.scale)) as u64
        }

        /// TSC cycles in `t` reference-time units.
        fn cycles(self, t: u64) -> u64 {
            ((u128::from(t) << 64) / u128::from(self.scale)) as u64
        }
    }

    /// Why timer `name` cannot run here, or `None`.
    fn timer_missing(name: &str, clock: Option<RefClock>) -> Option<&'static str> {
        let info = hyperv::detect().unwrap_or_default();
        if info.privileges & tlfs::PRIV_REFERENCE_TSC == 0 {
            return Some("hv-time_not_exposed");
        }
        if clock.is_none() {
            return Some("tsc_page_invalid");
        }
        match name {
            "lapic" if !apic::tsc_deadline_available() => Some("tsc-deadline_not_exposed"),
            "lapic" => None,
            _ if info.privileges & tlfs::PRIV_SYNIC_MSRS == 0 => Some("hv-synic_not_exposed"),
            _ if info.privileges & tlfs::PRIV_SYNTIMER_MSRS == 0 => Some("hv-stimer_not_exposed"),
            "stimer-direct" if info.features_edx & tlfs::FEAT_STIMER_DIRECT == 0 => {
                Some("hv-stimer-direct_not_exposed")
            }
            _ => None,
        }
    }

    /// Phase `clock-timer-<name>`: `iters` one-shot expiries `delay` (100 ns units) ahead.
    fn timer_accuracy(name: &str, iters: u64, delay: u64, clock: RefClock) -> Result<(), Fail> {
        // STIMER0 in message mode, STIMER1 in direct mode.
        let stimer = match name {
            "lapic" => None,
            "stimer" => Some((0, None)),
            _ => Some((1, Some(DIRECT_VECTOR))),
        };
        match stimer {
            None => {
                idt::register(LAPIC_VECTOR, on_timer);
                apic::timer_deadline_mode(LAPIC_VECTOR);
            }
            Some((n, direct)) => {
                if !SYNIC_ON.swap(true, Ordering::Relaxed) {
                    idt::register(STIMER_VECTOR, on_stimer_message);
                    idt::register(DIRECT_VECTOR, on_timer);
                    PAGES.enable();
                    synic::set_sint(STIMER_SINT, STIMER_VECTOR);
                }
                synic::stimer_start(n, synic::stimer_config_auto(direct, STIMER_SINT), 0);
            }
        }
        let delay_tsc = clock.cycles(delay);
        let mut hist = phase::Histogram::default();
        let (mut early, mut late_max) = (0u64, 0u64);
        let f0 = FIRED.load(Ordering::Acquire);
        let m0 = MESSAGES.load(Ordering::Relaxed);
        let mut result = Ok(());
        cpu::cli();
        let p = phase::begin(timer_phase_name(name));
        for i in 1..=iters {
            let now = cpu::rdtsc();
            let expiry = match stimer {
                None => {
                    let d = now.wrapping_add(delay_tsc);
                    apic::timer_set_deadline(d);
                    d
                }
                Some((n, _)) => {
                    let t = clock.at(now).wrapping_add(delay);
                    synic::stimer_set_count(n, t);
                    clock.tsc_of(t)
                }
            };
            let start = cpu::rdtsc();
            while FIRED.load(Ordering::Acquire) < f0 + i {
                if cpu::rdtsc().wrapping_sub(start) > WAIT_LIMIT {
                    result = Err(Fail::Check("a one-shot timer never fired"));
                    break;
                }
                cpu::sti_hlt();
                cpu::cli();
            }
            if result.is_err() {
                break;
            }
            let late = FIRED_TSC.load(Ordering::Relaxed).wrapping_sub(expiry) as i64;
            if late < 0 {
                early += 1;
            } else {
                hist.record(late as u64);
                late_max = late_max.max(late as u64);
            }
        }
        let fired = FIRED.load(Ordering::Acquire).wrapping_sub(f0);
        let f = p.end(iters);
        match stimer {
            None => {
                apic::timer_set_deadline(0);
                apic::timer_stop();
            }
            Some((n, _)) => synic::stimer_stop(n),
        }
        cpu::sti();
        let messages = MESSAGES.load(Ordering::Relaxed).wrapping_sub(m0);
        let base = [
            ("expiries", fired),
            ("early", early),
            ("late_max", late_max),
            ("delay", delay_tsc),
        ];
        if matches!(stimer, Some((_, None))) {
            let m = [base[0], base[1], base[2], base[3], ("messages", messages)];
            f.report(&m, Some(&hist));
        } else {
            f.report(&base, Some(&hist));
        }
        result
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
        let timers = ctx.args.str_or("timers", "all");
        for t in timers.split(',') {
            if t != "all" && t != "none" && !TIMERS.contains(&t) {
                return Err(Fail::BadArg("timers"));
            }
        }
        // 100 ns units, at most about a second.
        let delay = ctx.args.u64_or("delay-us", 200)?;
        if delay == 0 || delay > 1_000_000 {
            return Err(Fail::BadArg("delay-us"));
        }
        let delay = delay * 10;
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
        if timers != "none" {
            let clock = RefClock::read();
            for &t in TIMERS {
                if !wanted(timers, t) {
                    continue;
                }
                match (timer_missing(t, clock), clock) {
                    (None, Some(c)) => timer_accuracy(t, iters, delay, c)?,
                    (reason, _) => {
                        phase::skip(timer_phase_name(t), reason.unwrap_or("tsc_page_invalid"))
                    }
                }
            }
        }
        Ok(())
    }

    fn timer_phase_name(t: &str) -> &'static str {
        match t {
            "lapic" => "clock-timer-lapic",
            "stimer" => "clock-timer-stimer",
            _ => "clock-timer-stimer-direct",
        }
    }
}
