//! ipi: the BSP sends IPIs to halted APs, unicast (to CPU 1) and multicast (to the N-1 APs),
//! and waits for every handler to run before the next one. Each AP idles in `sti; hlt`, so an
//! IPI is a wake-up: send, deliver, leave HLT, handle, EOI, halt again.
//!
//! How an IPI is sent (`mode=`) follows what is exposed: `apic` (the ICR, through xAPIC MMIO
//! or x2APIC MSRs, whichever the runtime chose at boot: `--enlighten` without `x2apic` means
//! xAPIC), `pv-ipi` (KVM_HC_SEND_IPI: one hypercall for a set of APIC IDs), `hv-ipi`
//! (Hyper-V HvCallSendSyntheticClusterIpi, fast form, through the hypercall page: one exit to
//! hv, which sends one KVM_SIGNAL_MSI per target), `hv-ipi-ex` (HvCallSendSyntheticClusterIpiEx:
//! the targets as a sparse VP set in an input page, one exit all the same). `auto` picks
//! hv-ipi, then pv-ipi, then
//! apic. A multicast through the APIC is one ICR write with the all-but-self shorthand
//! (`multicast=shorthand`) or one ICR write per target (`loop`).
//!
//! Per phase it reports `ipis` (sends: ICR writes or calls), `targets` (interrupts meant),
//! `received` (handler runs), `halts` (AP halts entered) and `failed` (calls that returned an
//! error); exits, MMIO/MSR counts and time per operation are in the host's record.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "ipi",
    summary: "unicast and multicast IPIs to halted vCPUs: xAPIC MMIO, x2APIC MSR, pv-ipi, hv-ipi (mask and Ex)",
    params: &[
        Param {
            key: "iters",
            default: "50",
            help: "IPIs per phase (unicast, multicast)",
        },
        Param {
            key: "mode",
            default: "auto",
            help: "auto, apic, pv-ipi, hv-ipi, hv-ipi-ex",
        },
        Param {
            key: "multicast",
            default: "shorthand",
            help: "APIC multicast: shorthand (one ICR write) or loop (one per target)",
        },
        Param {
            key: "phases",
            default: "unicast,multicast",
            help: "which phases to run",
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
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use hvlab_guest_rt::entry::MAX_CPUS;
    use hvlab_guest_rt::phase::{self, Histogram};
    use hvlab_guest_rt::pv::{self, hypercall, hyperv};
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, smp};
    use hvlab_protocol::kvm_pv;

    use crate::common::{halt_until, not_exposed, wait_count};

    const IPI_VECTOR: u8 = 0xe3;

    static RECEIVED: AtomicU32 = AtomicU32::new(0);
    static HALTS: AtomicU64 = AtomicU64::new(0);
    static READY: AtomicU32 = AtomicU32::new(0);
    static QUIT: AtomicBool = AtomicBool::new(false);

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Xapic,
        X2apic,
        PvIpi,
        HvIpi,
        HvIpiEx,
    }

    #[repr(C, align(4096))]
    struct ExInput([u64; 4]);
    static mut EX_INPUT: ExInput = ExInput([0; 4]);

    /// Hyper-V cluster IPI (fast form) of `IPI_VECTOR` to the VPs in `mask`; true on success.
    fn hv_send(mask: u64) -> bool {
        use hvlab_protocol::hyperv as tlfs;
        let input = tlfs::input(tlfs::CALL_SEND_IPI, true, 0, 0, 0);
        tlfs::status(hyperv::hypercall_fast(input, u64::from(IPI_VECTOR), mask)) == 0
    }

    /// Hyper-V cluster IPI, Ex form (memory input: vector, sparse VP set with bank 0 = `mask`);
    /// true on success. Only the BSP sends.
    fn hv_send_ex(mask: u64) -> bool {
        use hvlab_protocol::hyperv as tlfs;
        let input = &raw mut EX_INPUT;
        // SAFETY: only the BSP touches the input page, between calls.
        unsafe {
            (*input).0 = [u64::from(IPI_VECTOR), tlfs::VPSET_SPARSE_4K, 1, mask];
        }
        let call = tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 1, 0, 0);
        tlfs::status(hyperv::hypercall(call, input as u64, 0)) == 0
    }

    fn on_ipi(_: u8) {
        RECEIVED.fetch_add(1, Ordering::AcqRel);
    }

    /// AP side: halt until an IPI arrives, forever until told to quit. The check runs with
    /// interrupts off and `sti; hlt` re-enables them atomically, so no IPI is lost in between.
    fn ap_job(_cpu: u32, _: usize) {
        READY.fetch_add(1, Ordering::AcqRel);
        halt_until(&QUIT, &HALTS);
    }

    fn wait_received(target: u32) -> Result<(), Fail> {
        wait_count(&RECEIVED, target, "an IPI was never handled")
    }

    struct Sender {
        mode: Mode,
        loop_multicast: bool,
        /// APIC IDs of the APs (CPU 1..n).
        ids: [u32; MAX_CPUS],
        n_ids: usize,
        mask: u64,
        sends: u64,
        failed: u64,
    }

    impl Sender {
        fn unicast(&mut self) {
            let id = self.ids[0];
            match self.mode {
                Mode::Xapic | Mode::X2apic => apic::send_ipi(id, IPI_VECTOR),
                Mode::PvIpi => {
                    if hypercall::send_ipi(&[id], IPI_VECTOR).is_err() {
                        self.failed += 1;
                    }
                }
                Mode::HvIpi => {
                    if !hv_send(1 << (id % 64)) {
                        self.failed += 1;
                    }
                }
                Mode::HvIpiEx => {
                    if !hv_send_ex(1 << (id % 64)) {
                        self.failed += 1;
                    }
                }
            }
            self.sends += 1;
        }

        fn multicast(&mut self) {
            match self.mode {
                Mode::Xapic | Mode::X2apic if self.loop_multicast => {
                    for &id in &self.ids[..self.n_ids] {
                        apic::send_ipi(id, IPI_VECTOR);
                        self.sends += 1;
                    }
                }
                Mode::Xapic | Mode::X2apic => {
                    apic::send_ipi_all_but_self(IPI_VECTOR);
                    self.sends += 1;
                }
                Mode::PvIpi => match hypercall::send_ipi(&self.ids[..self.n_ids], IPI_VECTOR) {
                    Ok(calls) => self.sends += u64::from(calls),
                    Err(_) => {
                        self.sends += 1;
                        self.failed += 1;
                    }
                },
                Mode::HvIpi | Mode::HvIpiEx => {
                    let ok = if self.mode == Mode::HvIpi {
                        hv_send(self.mask)
                    } else {
                        hv_send_ex(self.mask)
                    };
                    if !ok {
                        self.failed += 1;
                    }
                    self.sends += 1;
                }
            }
        }
    }

    /// One name per kind of send, whatever the mode: the variant (enlightenment set) tells
    /// the modes apart, and tables compare variants phase by phase.
    fn phase_name(multicast: bool) -> &'static str {
        if multicast {
            "ipi-multicast"
        } else {
            "ipi-unicast"
        }
    }

    fn measure(s: &mut Sender, multicast: bool, iters: u64) -> Result<(), Fail> {
        let targets_per_op = if multicast { s.n_ids as u32 } else { 1 };
        s.sends = 0;
        s.failed = 0;
        let mut hist = Histogram::default();
        let halts0 = HALTS.load(Ordering::Relaxed);
        let recv0 = RECEIVED.load(Ordering::Acquire);
        let mut expect = recv0;
        let p = phase::begin(phase_name(multicast));
        for _ in 0..iters {
            let t0 = cpu::rdtsc();
            expect += targets_per_op;
            if multicast {
                s.multicast();
            } else {
                s.unicast();
            }
            wait_received(expect)?;
            hist.record(cpu::rdtsc().wrapping_sub(t0));
        }
        let f = p.end(iters);
        let received = RECEIVED.load(Ordering::Acquire).wrapping_sub(recv0);
        f.report(
            &[
                ("cpus", s.n_ids as u64 + 1),
                ("targets", u64::from(targets_per_op) * iters),
                ("ipis", s.sends),
                ("received", u64::from(received)),
                ("halts", HALTS.load(Ordering::Relaxed).wrapping_sub(halts0)),
                ("failed", s.failed),
            ],
            Some(&hist),
        );
        if s.failed != 0 {
            return Err(Fail::Check("an IPI call returned an error"));
        }
        Ok(())
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 50)?;
        let n = ctx.cpus;
        if n < 2 {
            return Err(Fail::Unsupported("ipi needs cpus>=2"));
        }
        let rec = hyperv::detect().map_or(0, |i| i.recommendations);
        let has_hv = rec & hvlab_protocol::hyperv::REC_CLUSTER_IPI != 0;
        let has_hv_ex = has_hv && rec & hvlab_protocol::hyperv::REC_EX_PROCESSOR_MASKS != 0;
        let has_pv = pv::kvm_has(kvm_pv::FEATURE_PV_SEND_IPI);
        let apic_mode = match apic::mode() {
            apic::Mode::X2apic => Mode::X2apic,
            apic::Mode::Xapic => Mode::Xapic,
        };
        let mode = match ctx.args.str_or("mode", "auto") {
            "auto" | "hv-ipi" if has_hv => {
                hyperv::enable_hypercalls();
                Mode::HvIpi
            }
            "hv-ipi-ex" if has_hv_ex => {
                hyperv::enable_hypercalls();
                Mode::HvIpiEx
            }
            "auto" if has_pv => Mode::PvIpi,
            "auto" | "apic" => apic_mode,
            "pv-ipi" if has_pv => Mode::PvIpi,
            "hv-ipi" | "hv-ipi-ex" => return Err(not_exposed!("ipi-hv-ipi", "hv-ipi")),
            "pv-ipi" => return Err(not_exposed!("ipi-pv-ipi", "pv-ipi")),
            _ => return Err(Fail::BadArg("mode")),
        };
        let loop_multicast = match ctx.args.str_or("multicast", "shorthand") {
            "shorthand" => false,
            "loop" => true,
            _ => return Err(Fail::BadArg("multicast")),
        };
        let phases = ctx.args.str_or("phases", "unicast,multicast");
        let (mut uni, mut multi) = (false, false);
        for w in phases.split(',') {
            match w {
                "unicast" => uni = true,
                "multicast" => multi = true,
                _ => return Err(Fail::BadArg("phases")),
            }
        }
        let mut s = Sender {
            mode,
            loop_multicast,
            ids: [0; MAX_CPUS],
            n_ids: 0,
            mask: smp::ap_apic_mask(),
            sends: 0,
            failed: 0,
        };
        for i in 1..n {
            s.ids[s.n_ids] = smp::apic_id(i);
            s.n_ids += 1;
        }
        idt::register(IPI_VECTOR, on_ipi);
        smp::post_aps(ap_job, 0);
        wait_count(&READY, n - 1, "APs did not start")?;
        let mut result = Ok(());
        if uni {
            result = measure(&mut s, false, iters);
        }
        if multi && result.is_ok() {
            result = measure(&mut s, true, iters);
        }
        // Stop the APs: each wakes on one more IPI and sees QUIT.
        QUIT.store(true, Ordering::Release);
        for i in 1..n {
            apic::send_ipi(smp::apic_id(i), IPI_VECTOR);
        }
        smp::wait_aps();
        result
    }
}
