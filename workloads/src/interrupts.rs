//! interrupts: an interrupt storm on the BSP, with or without PV EOI, to count what each
//! interrupt's end costs.
//!
//! Sources (`source=`): `timer` (the local APIC timer in periodic mode, emulated in KVM; the
//! BSP halts between ticks) or `self-ipi` (the BSP raises an IPI to itself with interrupts off and
//! takes it in the `sti; hlt` that follows, `iters` times). Every handler ends with the runtime's EOI: the PV
//! EOI flag when KVM set it for this interrupt (`pv-eoi` exposed), else the APIC's EOI register
//! (an MMIO write with xAPIC, an MSR write with x2APIC).
//!
//! `stimer` and `stimer-direct` are the Hyper-V synthetic timer beside the APIC timer, with
//! the same `period_us` (hv raises periods below 100 us to 100 us): STIMER0 periodic in
//! message mode (hv posts HVMSG_TIMER_EXPIRED into SINT2 and raises its vector; the handler
//! consumes the message, writes EOM only when hv marked another pending, as the TLFS asks,
//! and the runtime EOIs the APIC: hv cannot honour auto-EOI), and STIMER1 periodic in direct
//! mode (hv raises the timer's own vector, no message). They need `hv-synic` + `hv-stimer`
//! (and `hv-stimer-direct`); a source that is not exposed is reported skipped with the reason
//! (`hv-stimer_not_exposed`, ...), so the default list runs anywhere.
//!
//! Per phase: `interrupts` (handler runs), `eoi_pv` (EOIs that took the PV path),
//! `eoi_apic` (EOI register writes), `halts`, `pv_eoi` (1 when exposed); `stimer` adds
//! `messages` (timer messages consumed) and `eom` (EOM writes). The host's record has the KVM
//! side: tracepoints `kvm_eoi`, `kvm_pv_eoi`, `kvm_mmio` / `kvm_msr`; and hv's for the
//! synthetic timers: `hv-enl:stimer_expiries`, `stimer_kicks` (vCPU kicks by hv's timer
//! thread, each an `intr` exit), `synic_irqs` (MSIs), and an `msr_write` exit per EOM.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "interrupts",
    summary: "interrupt storm (APIC timer, self-IPI, Hyper-V synthetic timer in message or direct mode) with and without pv-eoi: EOI writes per interrupt",
    params: &[
        Param {
            key: "iters",
            default: "200",
            help: "interrupts per phase",
        },
        Param {
            key: "source",
            default: "timer,self-ipi,stimer,stimer-direct",
            help: "comma list of timer, self-ipi, stimer (hv-stimer, message mode), stimer-direct (hv-stimer-direct); a source not exposed is skipped",
        },
        Param {
            key: "period_us",
            default: "500",
            help: "APIC and synthetic timer period (KVM clamps APIC periods below its minimum, 200 us by default; hv raises synthetic ones below 100 us)",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use hvlab_guest_rt::pv::synic::{self, SynicPages};
    use hvlab_guest_rt::pv::{self, eoi, hyperv};
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, phase};
    use hvlab_protocol::hyperv as tlfs;
    use hvlab_protocol::kvm_pv;

    use crate::common::WAIT_LIMIT;

    const TIMER_VECTOR: u8 = 0xe4;
    const IPI_VECTOR: u8 = 0xe5;
    /// SINT2's vector (message-mode synthetic timer) and the direct-mode timer's own vector.
    const STIMER_VECTOR: u8 = 0xe6;
    const DIRECT_VECTOR: u8 = 0xe7;
    const STIMER_SINT: u32 = 2;
    /// STIMER0 runs in message mode, STIMER1 in direct mode.
    const STIMER_MSG: u32 = 0;
    const STIMER_DIRECT: u32 = 1;

    static COUNT: AtomicU64 = AtomicU64::new(0);
    /// Handler runs per synthetic-timer source (kept apart from `COUNT` so a tick that
    /// arrives after its timer stopped never counts in another source's phase).
    static STIMER_HITS: AtomicU64 = AtomicU64::new(0);
    static DIRECT_HITS: AtomicU64 = AtomicU64::new(0);
    /// HVMSG_TIMER_EXPIRED messages consumed, and EOM writes.
    static MESSAGES: AtomicU64 = AtomicU64::new(0);
    static EOMS: AtomicU64 = AtomicU64::new(0);
    static SYNIC_ON: AtomicBool = AtomicBool::new(false);
    static PAGES: SynicPages = SynicPages::new();

    fn on_interrupt(_: u8) {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }

    fn on_stimer_message(_: u8) {
        STIMER_HITS.fetch_add(1, Ordering::Relaxed);
        let (kind, eom) = PAGES.consume(STIMER_SINT);
        if kind == tlfs::HVMSG_TIMER_EXPIRED {
            MESSAGES.fetch_add(1, Ordering::Relaxed);
        }
        if eom {
            EOMS.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_stimer_direct(_: u8) {
        DIRECT_HITS.fetch_add(1, Ordering::Relaxed);
    }

    struct Before {
        count: u64,
        skipped: u32,
    }

    fn snapshot(counter: &AtomicU64) -> Before {
        Before {
            count: counter.load(Ordering::Relaxed),
            skipped: eoi::skipped(),
        }
    }

    /// Reports the phase: `n` handler runs (counted when the phase ended), the EOIs since
    /// `b`, and `extra` metrics.
    fn report(
        f: phase::Finished,
        n: u64,
        b: &Before,
        halts: u64,
        pv_eoi: bool,
        extra: &[(&str, u64)],
    ) {
        let pv = u64::from(eoi::skipped().wrapping_sub(b.skipped));
        let mut m = [("", 0u64); 7];
        let base = [
            ("interrupts", n),
            ("eoi_pv", pv),
            ("eoi_apic", n.saturating_sub(pv)),
            ("halts", halts),
            ("pv_eoi", u64::from(pv_eoi)),
        ];
        let mut len = 0;
        for kv in base.iter().chain(extra.iter()).take(m.len()) {
            m[len] = *kv;
            len += 1;
        }
        f.report(&m[..len], None);
    }

    /// Halts (interrupts on only inside `sti; hlt`) until `counter` reaches `target`; bounded
    /// by [`WAIT_LIMIT`]. Returns the halts; leaves interrupts off.
    fn wait_for(counter: &AtomicU64, target: u64, what: &'static str) -> (u64, Result<(), Fail>) {
        let start = cpu::rdtsc();
        let mut halts = 0u64;
        while counter.load(Ordering::Relaxed) < target {
            if cpu::rdtsc().wrapping_sub(start) > WAIT_LIMIT {
                return (halts, Err(Fail::Check(what)));
            }
            halts += 1;
            cpu::sti_hlt();
            cpu::cli();
        }
        (halts, Ok(()))
    }

    fn timer(iters: u64, period_us: u64, pv_eoi: bool) -> Result<(), Fail> {
        let count =
            u32::try_from(period_us.saturating_mul(1000)).map_err(|_| Fail::BadArg("period_us"))?;
        if count == 0 {
            return Err(Fail::BadArg("period_us"));
        }
        idt::register(TIMER_VECTOR, on_interrupt);
        let b = snapshot(&COUNT);
        cpu::cli();
        let p = phase::begin("interrupts-timer");
        apic::timer_periodic(TIMER_VECTOR, count);
        let (halts, result) = wait_for(&COUNT, b.count + iters, "the APIC timer stopped ticking");
        apic::timer_stop();
        let f = p.end(iters);
        let n = COUNT.load(Ordering::Relaxed).wrapping_sub(b.count);
        report(f, n, &b, halts, pv_eoi, &[]);
        result
    }

    fn self_ipi(iters: u64, pv_eoi: bool) -> Result<(), Fail> {
        idt::register(IPI_VECTOR, on_interrupt);
        let b = snapshot(&COUNT);
        let mut halts = 0u64;
        cpu::cli();
        let p = phase::begin("interrupts-self-ipi");
        for _ in 0..iters {
            // Raised with interrupts off, so it is pending when `sti; hlt` runs: the halt ends
            // at once with this interrupt. (Raised with interrupts on, a self-IPI waits for the
            // next VM entry on nested hosts, ~1 ms of spinning, and a second one on a vector
            // still in the IRR merges with it.)
            apic::self_ipi(IPI_VECTOR);
            halts += 1;
            cpu::sti_hlt();
            cpu::cli();
        }
        let f = p.end(iters);
        let n = COUNT.load(Ordering::Relaxed).wrapping_sub(b.count);
        report(f, n, &b, halts, pv_eoi, &[]);
        if n != iters {
            return Err(Fail::Check("a self-IPI was lost"));
        }
        Ok(())
    }

    /// Why a synthetic-timer source cannot run here, from the Hyper-V CPUID leaves.
    fn stimer_missing(direct: bool) -> Option<&'static str> {
        let Some(info) = hyperv::detect() else {
            return Some("hv-synic_not_exposed");
        };
        if info.privileges & tlfs::PRIV_SYNIC_MSRS == 0 {
            Some("hv-synic_not_exposed")
        } else if info.privileges & tlfs::PRIV_SYNTIMER_MSRS == 0 {
            Some("hv-stimer_not_exposed")
        } else if direct && info.features_edx & tlfs::FEAT_STIMER_DIRECT == 0 {
            Some("hv-stimer-direct_not_exposed")
        } else {
            None
        }
    }

    /// Enables this CPU's SynIC once (SIMP, SIEFP, SCONTROL) with SINT2 on [`STIMER_VECTOR`].
    fn synic_on() {
        if SYNIC_ON.swap(true, Ordering::Relaxed) {
            return;
        }
        idt::register(STIMER_VECTOR, on_stimer_message);
        idt::register(DIRECT_VECTOR, on_stimer_direct);
        PAGES.enable();
        synic::set_sint(STIMER_SINT, STIMER_VECTOR);
    }

    /// A periodic synthetic timer until `iters` interrupts: message mode through SINT2, or
    /// direct mode on its own vector.
    fn stimer(iters: u64, period_us: u64, direct: bool, pv_eoi: bool) -> Result<(), Fail> {
        let name = if direct {
            "interrupts-stimer-direct"
        } else {
            "interrupts-stimer"
        };
        if let Some(reason) = stimer_missing(direct) {
            phase::skip(name, reason);
            return Ok(());
        }
        // Reference time runs in 100 ns units.
        let period = period_us.saturating_mul(10);
        if period == 0 {
            return Err(Fail::BadArg("period_us"));
        }
        synic_on();
        let (counter, timer, config) = if direct {
            let c = synic::stimer_config(true, Some(DIRECT_VECTOR), 0);
            (&DIRECT_HITS, STIMER_DIRECT, c)
        } else {
            let c = synic::stimer_config(true, None, STIMER_SINT);
            (&STIMER_HITS, STIMER_MSG, c)
        };
        let b = snapshot(counter);
        let (m0, e0) = (
            MESSAGES.load(Ordering::Relaxed),
            EOMS.load(Ordering::Relaxed),
        );
        cpu::cli();
        let p = phase::begin(name);
        synic::stimer_start(timer, config, period);
        let (halts, result) = wait_for(
            counter,
            b.count + iters,
            "the synthetic timer stopped expiring",
        );
        synic::stimer_stop(timer);
        let f = p.end(iters);
        let n = counter.load(Ordering::Relaxed).wrapping_sub(b.count);
        let messages = MESSAGES.load(Ordering::Relaxed).wrapping_sub(m0);
        let eoms = EOMS.load(Ordering::Relaxed).wrapping_sub(e0);
        if direct {
            report(f, n, &b, halts, pv_eoi, &[]);
        } else {
            report(
                f,
                n,
                &b,
                halts,
                pv_eoi,
                &[("messages", messages), ("eom", eoms)],
            );
        }
        result?;
        if !direct && messages != n {
            return Err(Fail::Check(
                "a synthetic timer interrupt came without its message",
            ));
        }
        Ok(())
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 200)?;
        let period_us = ctx.args.u64_or("period_us", 500)?;
        let sources = ctx
            .args
            .str_or("source", "timer,self-ipi,stimer,stimer-direct");
        let pv_eoi = pv::kvm_has(kvm_pv::FEATURE_PV_EOI);
        for s in sources.split(',') {
            if !matches!(s, "timer" | "self-ipi" | "stimer" | "stimer-direct") {
                return Err(Fail::BadArg("source"));
            }
        }
        for s in sources.split(',') {
            match s {
                "timer" => timer(iters, period_us, pv_eoi)?,
                "self-ipi" => self_ipi(iters, pv_eoi)?,
                "stimer" => stimer(iters, period_us, false, pv_eoi)?,
                _ => stimer(iters, period_us, true, pv_eoi)?,
            }
        }
        Ok(())
    }
}
