//! hyperv-probe: checks hv's Hyper-V (TLFS) interface from a guest: the CPUID leaves, the
//! synthetic MSRs, hypercalls through the page (bad inputs get their TLFS status; one exit per
//! call), and reference time from the TSC page (no exits) against TIME_REF_COUNT (one exit).
//! With cpus >= 2 and the enlightenments on: synthetic cluster IPIs (mask form to every AP,
//! Ex form naming only the last AP: only it receives) and flushes of other vCPUs (mask and Ex
//! forms). `fault=hypercall-reserved` instead writes a reserved bit of MSR_HYPERCALL, which
//! must #GP (the runtime reports the fault and ends the run with status 3).
//! `fault=cpl3-hypercall` calls the hypercall page from ring 3: the page's `wrmsr` is
//! privileged, so the CPU raises #GP at CPL3 before any exit (the host never sees the call; the
//! runtime reports the fault with its RIP, status 3). Were a CPL3 call ever to reach hv, hv
//! would answer HV_STATUS_ACCESS_DENIED, which the guest would print (`cpl3_status=`).
//!
//! First it checks that the runtime's boot-time setup (`pv::hyperv::init`) enabled the
//! hypercall page (and the TSC page with hv-time), then resets GUEST_OS_ID and the page to
//! check the MSR rules from the start.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "hyperv-probe",
    summary: "Hyper-V (TLFS) interface checks: CPUID, MSRs, hypercall status codes, TSC page",
    params: &[
        Param {
            key: "iters",
            default: "50",
            help: "operations per phase",
        },
        Param {
            key: "fault",
            default: "none",
            help: "none, hypercall-reserved (write a reserved MSR bit: expect #GP), cpl3-hypercall (call the page from ring 3: expect #GP at its wrmsr)",
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
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use hvlab_guest_rt::cpu::{rdmsr, wrmsr};
    use hvlab_guest_rt::pv::hyperv::{self as hyp, HYPERCALL_PAGE};
    use hvlab_guest_rt::{Ctx, Fail, apic, idt, phase, println, smp, user};
    use hvlab_protocol::hyperv as tlfs;

    use crate::common::{halt_until, wait_count};

    const IPI_VECTOR: u8 = 0xe4;
    const MAX: usize = 8;
    static RECEIVED: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
    static TOTAL: AtomicU32 = AtomicU32::new(0);
    static READY: AtomicU32 = AtomicU32::new(0);
    static QUIT: AtomicBool = AtomicBool::new(false);
    static HALTS: AtomicU64 = AtomicU64::new(0);

    fn on_ipi(_: u8) {
        if let Some(c) = RECEIVED.get(apic::id() as usize) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        TOTAL.fetch_add(1, Ordering::AcqRel);
    }

    /// AP side: halt until an IPI, until told to quit (checked with interrupts off).
    fn ap_job(_cpu: u32, _: usize) {
        READY.fetch_add(1, Ordering::AcqRel);
        halt_until(&QUIT, &HALTS);
    }

    #[repr(C, align(4096))]
    struct ExInput([u64; 8]);
    static mut EX_INPUT: ExInput = ExInput([0; 8]);

    /// IPIs and flushes naming other vCPUs (cpus >= 2).
    fn smp_phases(n: u32, iters: u64, info: &hyp::Info) -> Result<(), Fail> {
        let aps: u64 = ((1u64 << n) - 1) & !1;
        let last = n - 1;
        let ex = &raw mut EX_INPUT;
        let ex_gpa = ex as u64;
        idt::register(IPI_VECTOR, on_ipi);
        smp::post_aps(ap_job, 0);
        wait_count(&READY, n - 1, "APs did not start")?;
        let mut failed = 0u64;
        if info.recommendations & tlfs::REC_CLUSTER_IPI != 0 {
            let send = tlfs::input(tlfs::CALL_SEND_IPI, true, 0, 0, 0);
            let p = phase::begin("hv-ipi-multicast");
            for k in 0..iters {
                failed += u64::from(
                    tlfs::status(hyp::hypercall_fast(send, u64::from(IPI_VECTOR), aps)) != 0,
                );
                wait_count(
                    &TOTAL,
                    ((k + 1) * u64::from(n - 1)) as u32,
                    "an IPI was never handled",
                )?;
            }
            p.end(iters).report(&[("failed", failed)], None);
            // Ex form, memory input: only the last AP is named.
            let before: [u32; MAX] = core::array::from_fn(|i| RECEIVED[i].load(Ordering::Acquire));
            // SAFETY: only this CPU touches the input page.
            unsafe {
                (*ex).0 = [
                    u64::from(IPI_VECTOR),
                    tlfs::VPSET_SPARSE_4K,
                    1,
                    1 << last,
                    0,
                    0,
                    0,
                    0,
                ];
            }
            let send_ex = tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 1, 0, 0);
            let total0 = TOTAL.load(Ordering::Acquire);
            let p = phase::begin("hv-ipi-ex-one");
            for k in 0..iters {
                failed += u64::from(tlfs::status(hyp::hypercall(send_ex, ex_gpa, 0)) != 0);
                wait_count(
                    &TOTAL,
                    total0 + (k + 1) as u32,
                    "an Ex IPI was never handled",
                )?;
            }
            p.end(iters).report(&[("failed", failed)], None);
            for (i, b) in before.iter().enumerate().take(n as usize) {
                let got = RECEIVED[i].load(Ordering::Acquire) - b;
                let want = if i as u32 == last { iters as u32 } else { 0 };
                if got != want {
                    println!("HVLAB rec=info ex_ipi_cpu={i} received={got} want={want}");
                    return Err(Fail::Check("an Ex IPI reached a vCPU it did not name"));
                }
            }
        }
        if info.recommendations & tlfs::REC_REMOTE_TLB_FLUSH != 0 {
            let input = &raw mut FLUSH_INPUT;
            // SAFETY: only this CPU touches the input page.
            unsafe {
                (*input).0 = [0, 0, aps, 0, 0, 0, 0, 0];
            }
            let space = tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0);
            let p = phase::begin("hv-flush-others");
            for _ in 0..iters {
                failed += u64::from(tlfs::status(hyp::hypercall(space, input as u64, 0)) != 0);
            }
            p.end(iters).report(&[("failed", failed)], None);
            if info.recommendations & tlfs::REC_EX_PROCESSOR_MASKS != 0 {
                // SAFETY: as above.
                unsafe {
                    (*ex).0 = [0, 0, tlfs::VPSET_SPARSE_4K, 1, 1 << last, 0, 0, 0];
                }
                let space_ex = tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 1, 0, 0);
                let p = phase::begin("hv-flush-ex-one");
                for _ in 0..iters {
                    let st = tlfs::status(hyp::hypercall(space_ex, ex_gpa, 0));
                    failed += u64::from(st != 0);
                }
                p.end(iters).report(&[("failed", failed)], None);
            }
        }
        QUIT.store(true, Ordering::Release);
        for i in 1..n {
            apic::send_ipi(smp::apic_id(i), IPI_VECTOR);
        }
        smp::wait_aps();
        if failed != 0 {
            return Err(Fail::Check("an IPI or flush hypercall failed"));
        }
        Ok(())
    }

    #[repr(C, align(4096))]
    struct Input([u64; 8]);
    static mut FLUSH_INPUT: Input = Input([0; 8]);

    /// RAX of the CPL3 call, and whether it returned at all.
    static CPL3_RAX: AtomicU64 = AtomicU64::new(0);
    static CPL3_DONE: AtomicBool = AtomicBool::new(false);

    /// At CPL3: a flush of the caller through the page, then park until the timer's kick.
    extern "C" fn cpl3_call(gpa: u64) -> ! {
        let space = tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0);
        CPL3_RAX.store(hyp::hypercall(space, gpa, 0), Ordering::Release);
        CPL3_DONE.store(true, Ordering::Release);
        user::park()
    }

    /// Calls the hypercall page from ring 3 (see the module notes).
    fn cpl3_hypercall(gpa: u64) -> Result<(), Fail> {
        user::init_this_cpu(0);
        println!(
            "HVLAB rec=info expect_fault=cpl3 hypercall_page={:#x}",
            HYPERCALL_PAGE.gpa()
        );
        // The APIC timer brings the BSP back to CPL0 if the call ever returns.
        for _ in 0..100 {
            apic::timer_periodic(user::KICK_VECTOR, 50_000);
            user::enter(0, cpl3_call, gpa);
            apic::timer_stop();
            if CPL3_DONE.load(Ordering::Acquire) {
                let st = tlfs::status(CPL3_RAX.load(Ordering::Acquire));
                println!("HVLAB rec=info cpl3_status={st:#x}");
                return check(
                    st == tlfs::STATUS_ACCESS_DENIED,
                    "a CPL3 hypercall was not denied",
                );
            }
        }
        Err(Fail::Check("the CPL3 call neither faulted nor returned"))
    }

    fn check(ok: bool, what: &'static str) -> Result<(), Fail> {
        if ok { Ok(()) } else { Err(Fail::Check(what)) }
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 50)?;
        let fault = ctx.args.str_or("fault", "none");
        let Some(info) = hyp::detect() else {
            return Err(Fail::Unsupported(
                "no Hyper-V leaves (enable an hv-* enlightenment)",
            ));
        };
        println!(
            "HVLAB rec=info hyperv=1 max_leaf={:#x} privileges={:#x} features_edx={:#x} recommendations={:#x} spin_retries={:#x} max_vps={}",
            info.max_leaf,
            info.privileges,
            info.features_edx,
            info.recommendations,
            info.spin_retries,
            info.max_vps
        );
        check(
            info.privileges & tlfs::PRIV_HYPERCALL_MSRS != 0,
            "hypercall MSRs not offered",
        )?;

        // The runtime's boot-time setup enabled the page (and the TSC page with hv-time).
        let booted = hyp::hypercalls_enabled();
        let boot_id = rdmsr(tlfs::MSR_GUEST_OS_ID);
        let tsc_page_on = info.privileges & tlfs::PRIV_REFERENCE_TSC != 0
            && rdmsr(tlfs::MSR_REFERENCE_TSC) & tlfs::MSR_ENABLE != 0;
        println!(
            "HVLAB rec=info boot_hypercall_page={} boot_guest_os_id={boot_id:#x} boot_tsc_page={}",
            u8::from(booted),
            u8::from(tsc_page_on)
        );
        check(
            booted && boot_id == hyp::GUEST_OS_ID,
            "the runtime did not enable the hypercall page at boot",
        )?;
        if fault == "cpl3-hypercall" {
            // SAFETY: only this CPU touches the input page.
            unsafe {
                (*(&raw mut FLUSH_INPUT)).0 = [0, 0, 1, 0, 0, 0, 0, 0];
            }
            return cpl3_hypercall((&raw const FLUSH_INPUT) as u64);
        }
        // Start over: clearing GUEST_OS_ID disables the page.
        wrmsr(tlfs::MSR_GUEST_OS_ID, 0);
        check(
            !hyp::hypercalls_enabled(),
            "GUEST_OS_ID 0 disables the page",
        )?;
        // MSRs before GUEST_OS_ID: the page cannot be enabled.
        check(rdmsr(tlfs::MSR_GUEST_OS_ID) == 0, "GUEST_OS_ID reads 0")?;
        wrmsr(tlfs::MSR_HYPERCALL, HYPERCALL_PAGE.gpa() | tlfs::MSR_ENABLE);
        check(
            !hyp::hypercalls_enabled(),
            "hypercall page enabled before GUEST_OS_ID",
        )?;
        if fault == "hypercall-reserved" {
            wrmsr(tlfs::MSR_GUEST_OS_ID, hyp::GUEST_OS_ID);
            println!("HVLAB rec=info expect_fault=gp");
            wrmsr(
                tlfs::MSR_HYPERCALL,
                HYPERCALL_PAGE.gpa() | tlfs::MSR_ENABLE | 1 << 2,
            );
            return Err(Fail::Check("reserved HYPERCALL bit did not #GP"));
        } else if fault != "none" {
            return Err(Fail::BadArg("fault"));
        }
        hyp::enable_hypercalls();
        check(
            rdmsr(tlfs::MSR_GUEST_OS_ID) == hyp::GUEST_OS_ID,
            "GUEST_OS_ID reads back",
        )?;
        check(hyp::hypercalls_enabled(), "hypercall page enabled")?;
        if info.privileges & tlfs::PRIV_VP_INDEX != 0 {
            check(rdmsr(tlfs::MSR_VP_INDEX) == 0, "VP_INDEX of the BSP is 0")?;
        }

        // Bad inputs, one call each, and their statuses.
        let input = &raw mut FLUSH_INPUT;
        // SAFETY: only this CPU touches the input page; no reference outlives the writes.
        unsafe {
            (*input).0 = [0, 0, 1, 0, 0, 0, 0, 0];
        }
        let gpa = input as u64;
        let space = tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0);
        let cases: [(&str, u64, u64, u16); 6] = [
            (
                "unknown_code",
                tlfs::input(0x0001, false, 0, 0, 0),
                gpa,
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
            (
                "reserved_bit",
                space | 1 << 27,
                gpa,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "reps_on_simple",
                tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 1, 0),
                gpa,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            ("misaligned", space, gpa + 4, tlfs::STATUS_INVALID_ALIGNMENT),
            (
                "outside_memory",
                space,
                1 << 40,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "fast_flush",
                space | tlfs::INPUT_FAST,
                gpa,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
        ];
        let flush = info.recommendations & tlfs::REC_REMOTE_TLB_FLUSH != 0;
        if flush {
            let p = phase::begin("hypercall-bad");
            let mut wrong = 0u64;
            for &(name, inp, g, want) in &cases {
                let got = tlfs::status(hyp::hypercall(inp, g, 0));
                if got != want {
                    println!("HVLAB rec=info case={name} status={got:#x} want={want:#x}");
                    wrong += 1;
                }
            }
            p.end(cases.len() as u64).report(&[("wrong", wrong)], None);
            check(wrong == 0, "a bad hypercall got the wrong status")?;

            let p = phase::begin("flush-self");
            let mut bad = 0u64;
            for _ in 0..iters {
                bad +=
                    u64::from(tlfs::status(hyp::hypercall(space, gpa, 0)) != tlfs::STATUS_SUCCESS);
            }
            p.end(iters).report(&[("failed", bad)], None);
            check(bad == 0, "flush hypercall failed")?;
        } else {
            phase::skip("hypercall-bad", "hv-tlbflush_off");
        }

        if info.privileges & tlfs::PRIV_REFERENCE_TSC != 0 {
            hyp::enable_tsc_page();
            let first = hyp::tsc_page_time().ok_or(Fail::Check("TSC page invalid"))?;
            let p = phase::begin("tsc-page");
            let mut last = first;
            let mut backwards = 0u64;
            for _ in 0..iters {
                let t = hyp::tsc_page_time().unwrap_or(0);
                backwards += u64::from(t < last);
                last = t;
            }
            p.end(iters).report(&[("backwards", backwards)], None);
            let p = phase::begin("time-ref-count");
            let mut msr = 0;
            for _ in 0..iters {
                msr = hyp::time_ref_count();
            }
            p.end(iters).report(&[], None);
            let after = hyp::tsc_page_time().unwrap_or(0);
            println!(
                "HVLAB rec=info tsc_page_first={first} tsc_page_last={last} time_ref_count={msr} tsc_page_after={after}"
            );
            check(backwards == 0, "TSC page time went backwards")?;
            // The runtime's one clock API reads the page too (no exit needed to agree).
            let api = hyp::reference_time().ok_or(Fail::Check("reference_time absent"))?;
            check(api >= after, "reference_time went back")?;
            // The MSR read lies between two page reads (up to the host's estimate of the
            // guest TSC origin: 1 ms of slack).
            check(
                msr + 10_000 >= last && msr <= after + 10_000,
                "TIME_REF_COUNT disagrees with the TSC page",
            )?;
        } else {
            phase::skip("tsc-page", "hv-time_off");
        }
        if ctx.cpus >= 2 && (ctx.cpus as usize) <= MAX {
            smp_phases(ctx.cpus, iters, &info)?;
        }
        Ok(())
    }
}
