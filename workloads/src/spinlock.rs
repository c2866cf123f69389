//! spinlock: every CPU takes one contended test-and-set lock `iters` times. With more vCPUs
//! than host CPUs, lock holders get preempted and waiters burn their time slices spinning.
//!
//! Waiting (`mode=`): `spin` (bare loop), `pause` (PAUSE in the loop), `pv-unhalt` (after
//! `spins` tries the waiter halts; the releaser wakes waiters with KVM_HC_KICK_CPU),
//! `hv-spinlocks` (after `spins` tries the waiter makes a Hyper-V HvCallNotifyLongSpinWait
//! through the hypercall page; hv yields its host thread, as the TLFS describes, and does not
//! park it until a release), `pv-sched-yield` (after `spins` tries the waiter makes
//! KVM_HC_SCHED_YIELD naming the lock holder's vCPU, as Linux's `kvm_smp_send_call_func_ipi`
//! does for preempted targets; needs the pv-sched-yield enlightenment, so it is skipped where
//! KVM hypercalls do not run). `auto`: hv-spinlocks, then pv-unhalt, then pv-sched-yield,
//! then pause.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "spinlock",
    summary: "contended lock on every CPU: spin, pause, pv-unhalt, pv-sched-yield, hv-spinlocks",
    params: &[
        Param {
            key: "iters",
            default: "100",
            help: "acquisitions per CPU",
        },
        Param {
            key: "mode",
            default: "auto",
            help: "auto, spin, pause, pv-unhalt, pv-sched-yield, hv-spinlocks",
        },
        Param {
            key: "spins",
            default: "64",
            help: "tries before a waiter halts or notifies",
        },
        Param {
            key: "hold",
            default: "20",
            help: "loop iterations inside the critical section",
        },
    ],
    min_vcpus: 2,
    devices: &[],
    host_features: &[],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use hvlab_guest_rt::pv::{self, hypercall, hyperv};
    use hvlab_guest_rt::{Ctx, Fail, cpu, idt, phase, smp};
    use hvlab_protocol::kvm_pv;

    use crate::common::not_exposed;

    const KICK_VECTOR: u8 = 0xe2;

    #[derive(Clone, Copy, PartialEq, Eq)]
    #[repr(usize)]
    enum Mode {
        Spin,
        Pause,
        PvUnhalt,
        HvSpin,
        PvYield,
    }

    static LOCK: AtomicU32 = AtomicU32::new(0);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SLOW_WAITS: AtomicU64 = AtomicU64::new(0);
    static WAKE_CALLS: AtomicU64 = AtomicU64::new(0);
    static ITERS: AtomicU64 = AtomicU64::new(0);
    static SPINS: AtomicU64 = AtomicU64::new(0);
    static HOLD: AtomicU64 = AtomicU64::new(0);
    /// Halted waiters (pv-unhalt), by CPU index bit.
    static HALTED: AtomicU64 = AtomicU64::new(0);
    /// CPU index of the lock holder (pv-sched-yield names it).
    static OWNER: AtomicU32 = AtomicU32::new(0);

    fn on_kick(_: u8) {}

    fn acquire(mode: Mode, me: u32) {
        let spins = SPINS.load(Ordering::Relaxed);
        let mut tries = 0u64;
        loop {
            if LOCK.load(Ordering::Relaxed) == 0 && LOCK.swap(1, Ordering::Acquire) == 0 {
                OWNER.store(me, Ordering::Relaxed);
                return;
            }
            tries += 1;
            match mode {
                Mode::Spin => {}
                Mode::Pause => cpu::pause(),
                Mode::PvUnhalt | Mode::HvSpin | Mode::PvYield if tries < spins => cpu::pause(),
                Mode::PvYield => {
                    SLOW_WAITS.fetch_add(1, Ordering::Relaxed);
                    let owner = OWNER.load(Ordering::Relaxed);
                    if owner != me {
                        WAKE_CALLS.fetch_add(1, Ordering::Relaxed);
                        hypercall::sched_yield(smp::apic_id(owner));
                    }
                    tries = 0;
                }
                Mode::HvSpin => {
                    use hvlab_protocol::hyperv as tlfs;
                    SLOW_WAITS.fetch_add(1, Ordering::Relaxed);
                    let input = tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, true, 0, 0, 0);
                    hyperv::hypercall_fast(input, tries, 0);
                    tries = 0;
                }
                Mode::PvUnhalt => {
                    tries = 0;
                    SLOW_WAITS.fetch_add(1, Ordering::Relaxed);
                    cpu::cli();
                    HALTED.fetch_or(1 << me, Ordering::SeqCst);
                    if LOCK.load(Ordering::SeqCst) == 1 {
                        cpu::sti_hlt();
                    }
                    HALTED.fetch_and(!(1 << me), Ordering::SeqCst);
                    cpu::sti();
                }
            }
        }
    }

    fn release(mode: Mode) {
        LOCK.store(0, Ordering::SeqCst);
        match mode {
            Mode::PvUnhalt => {
                let h = HALTED.load(Ordering::SeqCst);
                if h != 0 {
                    let cpu = h.trailing_zeros();
                    WAKE_CALLS.fetch_add(1, Ordering::Relaxed);
                    hypercall::kick_cpu(smp::apic_id(cpu));
                }
            }
            _ => {}
        }
    }

    fn worker(me: u32, mode: usize) {
        let mode = match mode {
            0 => Mode::Spin,
            1 => Mode::Pause,
            2 => Mode::PvUnhalt,
            3 => Mode::HvSpin,
            _ => Mode::PvYield,
        };
        cpu::sti();
        let hold = HOLD.load(Ordering::Relaxed);
        for _ in 0..ITERS.load(Ordering::Relaxed) {
            acquire(mode, me);
            let v = COUNTER.load(Ordering::Relaxed);
            for _ in 0..hold {
                core::hint::black_box(v);
            }
            COUNTER.store(v + 1, Ordering::Relaxed);
            release(mode);
        }
        cpu::cli();
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 100)?;
        ITERS.store(iters, Ordering::Relaxed);
        SPINS.store(ctx.args.u64_or("spins", 64)?, Ordering::Relaxed);
        HOLD.store(ctx.args.u64_or("hold", 20)?, Ordering::Relaxed);
        let hv_spin =
            hyperv::detect().is_some_and(|i| i.spin_retries != hvlab_protocol::hyperv::SPIN_NEVER);
        let unhalt = pv::kvm_has(kvm_pv::FEATURE_PV_UNHALT);
        let yield_ = pv::kvm_has(kvm_pv::FEATURE_PV_SCHED_YIELD);
        let mode = match ctx.args.str_or("mode", "auto") {
            "auto" | "hv-spinlocks" if hv_spin => {
                hyperv::enable_hypercalls();
                Mode::HvSpin
            }
            "auto" if unhalt => Mode::PvUnhalt,
            "auto" if yield_ => Mode::PvYield,
            "auto" | "pause" => Mode::Pause,
            "spin" => Mode::Spin,
            "pv-unhalt" if unhalt => Mode::PvUnhalt,
            "pv-unhalt" => return Err(not_exposed!("acquire", "pv-unhalt")),
            "pv-sched-yield" if yield_ => Mode::PvYield,
            "pv-sched-yield" => return Err(not_exposed!("acquire", "pv-sched-yield")),
            "hv-spinlocks" => return Err(not_exposed!("acquire", "hv-spinlocks")),
            _ => return Err(Fail::BadArg("mode")),
        };
        idt::register(KICK_VECTOR, on_kick);
        let n = ctx.cpus;
        // One phase name for every mode: the variant (enlightenment set or `mode=` argument)
        // tells them apart, and tables compare variants phase by phase.
        let p = phase::begin("acquire");
        smp::post_aps(worker, mode as usize);
        worker(0, mode as usize);
        smp::wait_aps();
        let total = iters * u64::from(n);
        let f = p.end(total);
        let count = COUNTER.load(Ordering::Relaxed);
        f.report(
            &[
                ("cpus", u64::from(n)),
                ("slow_waits", SLOW_WAITS.load(Ordering::Relaxed)),
                ("wake_calls", WAKE_CALLS.load(Ordering::Relaxed)),
                ("count", count),
            ],
            None,
        );
        if count != total {
            return Err(Fail::Check("lost updates under the lock"));
        }
        Ok(())
    }
}
