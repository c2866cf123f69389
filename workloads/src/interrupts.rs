//! interrupts: an interrupt storm on the BSP, with or without PV EOI, to count what each
//! interrupt's end costs.
//!
//! Sources (`source=`): `timer` (the local APIC timer in periodic mode, emulated in KVM; the
//! BSP halts between ticks) or `self-ipi` (the BSP raises an IPI to itself with interrupts off and
//! takes it in the `sti; hlt` that follows, `iters` times). Every handler ends with the runtime's EOI: the PV
//! EOI flag when KVM set it for this interrupt (`pv-eoi` exposed), else the APIC's EOI register
//! (an MMIO write with xAPIC, an MSR write with x2APIC).
//!
//! Per phase: `interrupts` (handler runs), `eoi_pv` (EOIs that took the PV path),
//! `eoi_apic` (EOI register writes), `halts`, `pv_eoi` (1 when exposed). The host's record has
//! the KVM side: tracepoints `kvm_eoi`, `kvm_pv_eoi`, `kvm_mmio` / `kvm_msr`.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "interrupts",
    summary: "interrupt storm (APIC timer or self-IPI) with and without pv-eoi: EOI writes per interrupt",
    params: &[
        Param {
            key: "iters",
            default: "200",
            help: "interrupts per phase",
        },
        Param {
            key: "source",
            default: "timer,self-ipi",
            help: "comma list of timer, self-ipi",
        },
        Param {
            key: "period_us",
            default: "500",
            help: "APIC timer period (KVM clamps periods below its minimum, 200 us by default)",
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
    use core::sync::atomic::{AtomicU64, Ordering};

    use hvlab_guest_rt::pv::{self, eoi};
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, phase};
    use hvlab_protocol::kvm_pv;

    use crate::common::WAIT_LIMIT;

    const TIMER_VECTOR: u8 = 0xe4;
    const IPI_VECTOR: u8 = 0xe5;

    static COUNT: AtomicU64 = AtomicU64::new(0);

    fn on_interrupt(_: u8) {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }

    struct Before {
        count: u64,
        skipped: u32,
    }

    fn snapshot() -> Before {
        Before {
            count: COUNT.load(Ordering::Relaxed),
            skipped: eoi::skipped(),
        }
    }

    fn report(f: phase::Finished, b: &Before, halts: u64, pv_eoi: bool) {
        let n = COUNT.load(Ordering::Relaxed).wrapping_sub(b.count);
        let pv = u64::from(eoi::skipped().wrapping_sub(b.skipped));
        f.report(
            &[
                ("interrupts", n),
                ("eoi_pv", pv),
                ("eoi_apic", n.saturating_sub(pv)),
                ("halts", halts),
                ("pv_eoi", u64::from(pv_eoi)),
            ],
            None,
        );
    }

    fn timer(iters: u64, period_us: u64, pv_eoi: bool) -> Result<(), Fail> {
        let count =
            u32::try_from(period_us.saturating_mul(1000)).map_err(|_| Fail::BadArg("period_us"))?;
        if count == 0 {
            return Err(Fail::BadArg("period_us"));
        }
        idt::register(TIMER_VECTOR, on_interrupt);
        let b = snapshot();
        let target = b.count + iters;
        let mut halts = 0u64;
        let start = cpu::rdtsc();
        cpu::cli();
        let p = phase::begin("interrupts-timer");
        apic::timer_periodic(TIMER_VECTOR, count);
        let mut result = Ok(());
        while COUNT.load(Ordering::Relaxed) < target {
            if cpu::rdtsc().wrapping_sub(start) > WAIT_LIMIT {
                result = Err(Fail::Check("the APIC timer stopped ticking"));
                break;
            }
            halts += 1;
            cpu::sti_hlt();
            cpu::cli();
        }
        apic::timer_stop();
        let f = p.end(iters);
        report(f, &b, halts, pv_eoi);
        result
    }

    fn self_ipi(iters: u64, pv_eoi: bool) -> Result<(), Fail> {
        idt::register(IPI_VECTOR, on_interrupt);
        let b = snapshot();
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
        report(f, &b, halts, pv_eoi);
        if n != iters {
            return Err(Fail::Check("a self-IPI was lost"));
        }
        Ok(())
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 200)?;
        let period_us = ctx.args.u64_or("period_us", 500)?;
        let sources = ctx.args.str_or("source", "timer,self-ipi");
        let pv_eoi = pv::kvm_has(kvm_pv::FEATURE_PV_EOI);
        for s in sources.split(',') {
            match s {
                "timer" => timer(iters, period_us, pv_eoi)?,
                "self-ipi" => self_ipi(iters, pv_eoi)?,
                _ => return Err(Fail::BadArg("source")),
            }
        }
        Ok(())
    }
}
