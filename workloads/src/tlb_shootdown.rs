//! tlb-shootdown: the BSP remaps a page the APs have just read, shoots down their stale
//! translations, and every AP must then read the new frame. Per shootdown it reports IPIs sent,
//! INVLPGs executed (local + in handlers), targets flagged through steal time, hv calls, and
//! stale reads.
//!
//! Methods (`mode=`): `ipi` (IPI + INVLPG in the handler, Linux's native path), `pv-tlb-flush`
//! (preempted targets get KVM_VCPU_FLUSH_TLB in their steal-time record, running ones an
//! IPI), `none` (no shootdown at all: a control that shows whether stale translations are
//! observable on this host; it never fails), and the Hyper-V (TLFS) flushes through the
//! hypercall page, one exit and no interrupt to the targets: `hv-space`
//! (HvCallFlushVirtualAddressSpace, processor mask), `hv-list` (HvCallFlushVirtualAddressList,
//! one GVA), `hv-ex` (HvCallFlushVirtualAddressSpaceEx, sparse VP set), `hv-list-ex`
//! (HvCallFlushVirtualAddressListEx: sparse VP set, one GVA). `auto` picks the best
//! exposed one: hv-ex (hv-tlbflush-ext), hv-space (hv-tlbflush), pv-tlb-flush, then ipi.
//!
//! Readers (`reader=`): `cpl0` (the APs' kernel code) or `cpl3`. On nested hosts (kvm_pvm) CPL0
//! code is emulated and walks the guest page tables on every access, so it never sees a stale
//! translation and `mode=none` passes. With `cpl3` the APs read from ring 3 (runtime `user`
//! module), which runs natively through KVM's shadow MMU, and the BSP's PTE store runs at CPL3
//! too: KVM propagates an emulated store to a page table to every vCPU at once, while a native
//! one lets the leaf table go out of sync until a vCPU invalidates. The BSP's own INVLPG then
//! waits until the checks are done, because under shadow paging one vCPU's INVLPG resyncs the
//! table shared by all (the BSP does not touch the page in between, so this is still a correct
//! protocol). Then `mode=none` reads stale data and shows that the check can fail.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "tlb-shootdown",
    summary: "remap a page other vCPUs use, then shoot down their TLBs: ipi, pv-tlb-flush, hv-tlbflush (space, list, ex, list-ex), none",
    params: &[
        Param {
            key: "iters",
            default: "20",
            help: "shootdowns",
        },
        Param {
            key: "mode",
            default: "auto",
            help: "auto, ipi, pv-tlb-flush, hv-space, hv-list, hv-ex, hv-list-ex, none",
        },
        Param {
            key: "reader",
            default: "cpl0",
            help: "cpl0, cpl3 (the APs read from ring 3)",
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

    use hvlab_guest_rt::entry::{window_entry, window_map, window_va};
    use hvlab_guest_rt::pv::{self, hyperv, steal};
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, phase, smp, user};
    use hvlab_protocol::kvm_pv;

    use crate::common::{not_exposed, wait_count};

    const FLUSH_VECTOR: u8 = 0xe1;
    const PAGE: usize = 0;
    /// APIC timer period (bus clocks, ~50 us) that brings the BSP back from its CPL3 remap.
    const REMAP_TIMER: u32 = 50_000;
    /// Tries at the CPL3 remap (a tick may land before the store and end it early).
    const REMAP_TRIES: u32 = 100;

    #[repr(C, align(4096))]
    struct Frame([AtomicU64; 512]);

    static FRAMES: [Frame; 2] = [
        Frame([const { AtomicU64::new(0) }; 512]),
        Frame([const { AtomicU64::new(0) }; 512]),
    ];

    /// BSP → APs: 2k+1 = "read the page now", 2k+2 = "shootdown done, check it"; u32::MAX = quit.
    static STEP: AtomicU32 = AtomicU32::new(0);
    /// APs → BSP: completed reads and checks (cumulative).
    static READS: AtomicU32 = AtomicU32::new(0);
    static CHECKS: AtomicU32 = AtomicU32::new(0);
    /// Value every AP must see after shootdown k.
    static EXPECT: AtomicU64 = AtomicU64::new(0);
    static STALE: AtomicU32 = AtomicU32::new(0);
    static FLUSH_ACKS: AtomicU32 = AtomicU32::new(0);
    /// CPL3 readers that have started (a kick may only be sent after that).
    static IN_USER: AtomicU32 = AtomicU32::new(0);
    static REMOTE_INVLPG: AtomicU32 = AtomicU32::new(0);

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Ipi,
        PvTlbFlush,
        /// A Hyper-V flush hypercall: its input value and input page contents.
        Hyperv(u64),
        None,
    }

    #[repr(C, align(4096))]
    struct HvInput([u64; 8]);
    static mut HV_INPUT: HvInput = HvInput([0; 8]);

    /// Sets up a Hyper-V flush of the VPs in `mask` (`kind`: hv-space, hv-list, hv-ex,
    /// hv-list-ex): enables the hypercall page and fills the input page. `None` when the guest
    /// lacks what it needs.
    fn hyperv_flush(kind: &str, mask: u64) -> Option<Mode> {
        use hvlab_protocol::hyperv as tlfs;
        let info = hyperv::detect()?;
        if info.recommendations & tlfs::REC_REMOTE_TLB_FLUSH == 0 {
            return None;
        }
        let (input, words) = match kind {
            "hv-space" => (
                tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0),
                [0, 0, mask, 0, 0, 0],
            ),
            "hv-list" => (
                tlfs::input(tlfs::CALL_FLUSH_LIST, false, 0, 1, 0),
                [0, 0, mask, window_va(PAGE), 0, 0],
            ),
            _ if info.recommendations & tlfs::REC_EX_PROCESSOR_MASKS == 0 => return None,
            // [space, flags, VP set format, valid banks, bank 0] (+ one GVA for the list form).
            "hv-list-ex" => (
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 1, 0),
                [0, 0, tlfs::VPSET_SPARSE_4K, 1, mask, window_va(PAGE)],
            ),
            _ => (
                tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 1, 0, 0),
                [0, 0, tlfs::VPSET_SPARSE_4K, 1, mask, 0],
            ),
        };
        hyperv::enable_hypercalls();
        // SAFETY: only the BSP touches the input page, before and between the calls.
        unsafe {
            let page = &mut (*(&raw mut HV_INPUT)).0;
            page[..6].copy_from_slice(&words);
        }
        Some(Mode::Hyperv(input))
    }

    fn on_flush(_: u8) {
        cpu::invlpg(window_va(PAGE));
        REMOTE_INVLPG.fetch_add(1, Ordering::Relaxed);
        FLUSH_ACKS.fetch_add(1, Ordering::Release);
    }

    fn read_page() -> u64 {
        // SAFETY: window page PAGE is mapped (by the BSP, before the APs start) to one of the
        // two static frames; an aligned u64 read.
        unsafe { core::ptr::read_volatile(window_va(PAGE) as *const u64) }
    }

    /// Reader loop: read when told, check when told, until told to quit. Runs at CPL0 or at
    /// CPL3, so it uses no privileged instruction.
    fn reader_loop() {
        let mut seen = 0;
        loop {
            let s = STEP.load(Ordering::Acquire);
            if s == u32::MAX {
                break;
            }
            if s != seen {
                seen = s;
                let v = read_page();
                if s % 2 == 1 {
                    READS.fetch_add(1, Ordering::Release);
                } else {
                    if v != EXPECT.load(Ordering::Acquire) {
                        STALE.fetch_add(1, Ordering::Relaxed);
                    }
                    CHECKS.fetch_add(1, Ordering::Release);
                }
            }
            core::hint::spin_loop();
        }
    }

    /// The reader at CPL3: parks when done until the BSP kicks it back to CPL0.
    extern "C" fn user_reader(_: u64) -> ! {
        IN_USER.fetch_add(1, Ordering::Release);
        reader_loop();
        user::park()
    }

    /// AP side, at CPL0. Interrupts are on so that the IPI method's flush interrupt arrives.
    fn ap_job(_cpu: u32, _: usize) {
        cpu::sti();
        reader_loop();
        cpu::cli();
    }

    /// AP side, at CPL3 (interrupts are on there).
    fn ap_job_user(cpu: u32, _: usize) {
        user::init_this_cpu(cpu);
        user::enter(cpu, user_reader, 0);
    }

    /// At CPL3 on the BSP: the remap's PTE store, then wait for the timer's kick.
    extern "C" fn user_remap(phys: u64) -> ! {
        window_map(PAGE, phys);
        user::park()
    }

    /// Remaps the window page to `phys` with a native (CPL3) store; see the module notes.
    fn remap_at_cpl3(phys: u64) -> Result<(), Fail> {
        for _ in 0..REMAP_TRIES {
            apic::timer_periodic(user::KICK_VECTOR, REMAP_TIMER);
            user::enter(0, user_remap, phys);
            apic::timer_stop();
            if window_entry(PAGE) & !0xfff == phys {
                return Ok(());
            }
        }
        Err(Fail::Check("the CPL3 remap did not take"))
    }

    fn wait_for(counter: &AtomicU32, target: u32) -> Result<(), Fail> {
        wait_count(counter, target, "APs stopped answering")
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 20)?;
        let n = ctx.cpus;
        if n < 2 {
            return Err(Fail::Unsupported("tlb-shootdown needs cpus>=2"));
        }
        let has_pv =
            pv::kvm_has(kvm_pv::FEATURE_PV_TLB_FLUSH) && pv::kvm_has(kvm_pv::FEATURE_STEAL_TIME);
        let auto_hv = || {
            hyperv_flush("hv-ex", smp::ap_apic_mask())
                .or_else(|| hyperv_flush("hv-space", smp::ap_apic_mask()))
        };
        let mode = match ctx.args.str_or("mode", "auto") {
            "auto" => match auto_hv() {
                Some(m) => m,
                None if has_pv => Mode::PvTlbFlush,
                None => Mode::Ipi,
            },
            "ipi" => Mode::Ipi,
            "pv-tlb-flush" if has_pv => Mode::PvTlbFlush,
            "pv-tlb-flush" => {
                return Err(not_exposed!("shootdown", "pv-tlb-flush"));
            }
            "none" => Mode::None,
            kind @ ("hv-space" | "hv-list" | "hv-ex" | "hv-list-ex") => {
                match hyperv_flush(kind, smp::ap_apic_mask()) {
                    Some(m) => m,
                    None => return Err(not_exposed!("shootdown", "hv-tlbflush")),
                }
            }
            _ => return Err(Fail::BadArg("mode")),
        };
        let cpl3 = match ctx.args.str_or("reader", "cpl0") {
            "cpl0" => false,
            "cpl3" => true,
            _ => return Err(Fail::BadArg("reader")),
        };
        if cpl3 {
            user::init_this_cpu(0);
        }
        idt::register(FLUSH_VECTOR, on_flush);
        FRAMES[0].0[0].store(1, Ordering::SeqCst);
        window_map(PAGE, FRAMES[0].0.as_ptr() as u64);
        cpu::flush_tlb();
        EXPECT.store(1, Ordering::SeqCst);
        let targets = n - 1;
        smp::post_aps(if cpl3 { ap_job_user } else { ap_job }, 0);
        let (mut ipis, mut local_invlpg, mut pv_flagged, mut hvcalls, mut timeouts) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        // One phase name for every mode: the variant (enlightenment set) tells them apart, and
        // tables compare variants phase by phase.
        let p = phase::begin("shootdown");
        for k in 0..iters as u32 {
            // 1. Every AP reads the page through its current translation.
            STEP.store(2 * k + 1, Ordering::Release);
            wait_for(&READS, targets * (k + 1))?;
            // 2. Remap it to the other frame, which holds the new value.
            let next = (k as usize + 1) % 2;
            let value = u64::from(k) + 2;
            FRAMES[next].0[0].store(value, Ordering::SeqCst);
            EXPECT.store(value, Ordering::SeqCst);
            let frame = FRAMES[next].0.as_ptr() as u64;
            if cpl3 {
                remap_at_cpl3(frame)?;
            } else {
                window_map(PAGE, frame);
                cpu::invlpg(window_va(PAGE));
                local_invlpg += 1;
            }
            // 3. Shoot down the APs' translations.
            match mode {
                Mode::Ipi | Mode::PvTlbFlush => {
                    let before = FLUSH_ACKS.load(Ordering::Acquire);
                    let mut sent = 0;
                    for i in 1..n {
                        if mode == Mode::PvTlbFlush && steal::flag_flush_if_preempted(i) {
                            pv_flagged += 1;
                            continue;
                        }
                        apic::send_ipi(smp::apic_id(i), FLUSH_VECTOR);
                        sent += 1;
                    }
                    ipis += u64::from(sent);
                    wait_for(&FLUSH_ACKS, before + sent)?;
                }
                Mode::Hyperv(input) => {
                    hvcalls += 1;
                    let gpa = (&raw const HV_INPUT) as u64;
                    if hvlab_protocol::hyperv::status(hyperv::hypercall(input, gpa, 0)) != 0 {
                        timeouts += 1;
                    }
                }
                Mode::None => {}
            }
            // 4. Every AP reads again and must see the new frame.
            STEP.store(2 * k + 2, Ordering::Release);
            wait_for(&CHECKS, targets * (k + 1))?;
            if cpl3 {
                cpu::invlpg(window_va(PAGE));
                local_invlpg += 1;
            }
        }
        let f = p.end(iters);
        STEP.store(u32::MAX, Ordering::Release);
        if cpl3 {
            wait_for(&IN_USER, targets)?;
            for i in 1..n {
                user::kick(smp::apic_id(i));
            }
        }
        smp::wait_aps();
        let stale = u64::from(STALE.load(Ordering::Relaxed));
        f.report(
            &[
                ("targets", u64::from(targets)),
                ("ipis", ipis),
                ("invlpg_local", local_invlpg),
                (
                    "invlpg_remote",
                    u64::from(REMOTE_INVLPG.load(Ordering::Relaxed)),
                ),
                ("pv_flagged", pv_flagged),
                ("hvcalls", hvcalls),
                ("hvcall_timeouts", timeouts),
                ("stale_reads", stale),
            ],
            None,
        );
        if stale != 0 && mode != Mode::None {
            return Err(Fail::Check("an AP read the old frame after a shootdown"));
        }
        Ok(())
    }
}
