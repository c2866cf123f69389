//! user-mode: the CPL3 round trip the runtime's `user` module offers, the way tlb-shootdown's
//! readers use it. Each AP enters CPL3, reads a user page, takes an ordinary IPI there (handled
//! at CPL0, back to CPL3) and is brought back by a kick from the BSP; then the BSP does the same
//! read at CPL3 and AP 1 kicks it back. A probe for hosts where ring 3 is fragile (kvm_pvm), and
//! the cost of one round trip.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "user-mode",
    summary: "enter CPL3, read a user page, take an interrupt there, come back: feasibility and cost",
    params: &[Param {
        key: "iters",
        default: "5",
        help: "round trips per CPU",
    }],
    min_vcpus: 2,
    devices: &[],
    host_features: &[],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use hvlab_guest_rt::entry::{MAX_CPUS, this_cpu, window_map, window_va};
    use hvlab_guest_rt::{Ctx, Fail, cpu, idt, phase, smp, user};

    use crate::common::wait_count;

    const PAGE: usize = 1;
    const MAGIC: u64 = 0x5553_4552_4d4f_4445;
    /// An ordinary interrupt the APs take while at CPL3.
    const PING_VECTOR: u8 = 0xe6;

    #[repr(C, align(4096))]
    struct Frame(AtomicU64);

    static FRAME: Frame = Frame(AtomicU64::new(0));
    /// Per CPU: the value its user code read, and the pings it took.
    static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static PINGS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
    /// User code → kernel side: reads done and pings seen (cumulative, all CPUs).
    static READ: AtomicU32 = AtomicU32::new(0);
    static PINGED: AtomicU32 = AtomicU32::new(0);
    static BAD: AtomicU32 = AtomicU32::new(0);

    fn on_ping(_: u8) {
        PINGS[this_cpu() as usize % MAX_CPUS].fetch_add(1, Ordering::Release);
    }

    /// Runs at CPL3 on CPU `cpu`: reads the window page, then (APs) waits for a ping, then parks.
    extern "C" fn user_side(cpu: u64) -> ! {
        let i = cpu as usize % MAX_CPUS;
        // SAFETY: window page PAGE is mapped (user, present) to FRAME before any CPU enters.
        let v = unsafe { core::ptr::read_volatile(window_va(PAGE) as *const u64) };
        SEEN[i].store(v, Ordering::Release);
        READ.fetch_add(1, Ordering::AcqRel);
        if i != 0 {
            let before = PINGS[i].load(Ordering::Acquire);
            while PINGS[i].load(Ordering::Acquire) == before {
                core::hint::spin_loop();
            }
            PINGED.fetch_add(1, Ordering::AcqRel);
        }
        user::park()
    }

    fn check(i: u32) {
        if SEEN[i as usize % MAX_CPUS].swap(0, Ordering::AcqRel) != MAGIC {
            BAD.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ap_round_trip(cpu: u32, _: usize) {
        user::init_this_cpu(cpu);
        user::enter(cpu, user_side, u64::from(cpu));
        check(cpu);
    }

    /// On AP 1: kicks the BSP once its user code has read (`arg` = READ count to wait for).
    fn kick_bsp(_: u32, reads: usize) {
        if wait_count(&READ, reads as u32, "the BSP did not read at CPL3").is_ok() {
            user::kick(smp::apic_id(0));
        }
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 5)? as u32;
        let n = ctx.cpus;
        if n < 2 {
            return Err(Fail::Unsupported("user-mode needs cpus>=2"));
        }
        FRAME.0.store(MAGIC, Ordering::SeqCst);
        window_map(PAGE, &FRAME as *const Frame as u64);
        cpu::flush_tlb();
        idt::register(PING_VECTOR, on_ping);
        user::init_this_cpu(0);
        let p = phase::begin("user-round-trip");
        for k in 0..iters {
            // APs: read, an ordinary interrupt at CPL3, then the kick.
            smp::post_aps(ap_round_trip, 0);
            wait_count(&READ, k * n + n - 1, "APs did not read at CPL3")?;
            for i in 1..n {
                apic_ping(i);
            }
            wait_count(
                &PINGED,
                (k + 1) * (n - 1),
                "APs did not take the ping at CPL3",
            )?;
            for i in 1..n {
                user::kick(smp::apic_id(i));
            }
            smp::wait_aps();
            // BSP: read at CPL3, kicked back by AP 1 (if it never is, hv times the run out).
            smp::post(1, kick_bsp, ((k + 1) * n) as usize);
            user::enter(0, user_side, 0);
            smp::wait(1);
            check(0);
        }
        let f = p.end(u64::from(iters));
        let bad = u64::from(BAD.load(Ordering::Relaxed));
        f.report(&[("cpus", u64::from(n)), ("bad_reads", bad)], None);
        if bad != 0 {
            return Err(Fail::Check("a CPL3 read returned the wrong value"));
        }
        Ok(())
    }

    fn apic_ping(i: u32) {
        hvlab_guest_rt::apic::send_ipi(smp::apic_id(i), PING_VECTOR);
    }
}
