//! Behavioural host probes: what this host's KVM actually does, found out by running tiny
//! real-mode probe guests ([`crate::tiny_guest::real_mode_probe`]) through the same partition
//! and vCPU code as every other guest.
//!
//! - [`cpl0_emulation`]: is CPL0 guest code emulated instruction by instruction? (The vCPU stat
//!   `insn_emulation` over a phase of NOPs.)
//! - [`hypercall_outcome`]: does `vmcall` / `vmmcall` reach KVM's hypercall handler? (It must
//!   leave KVM's answer in `eax`.) Probed once per process: `hv caps` and the enlightenment
//!   probes both ask, and a hanging instruction costs a watchdog period.
//!
//! Each probe guest runs under the partition's run deadline ([`PROBE_DEADLINE`]): a vCPU that
//! never returns from KVM_RUN is kicked out by the run's end, like any other guest's, and its
//! registers as it left (`Partition::record_exit_regs`) say where it stood. `hv caps`
//! (`crate::caps`) reports these answers; it runs no guest itself.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::bus::{BusDevice, DeviceAction};
use crate::error::HvError;
use crate::partition::{MIN_MEM, Partition, PartitionConfig};
use crate::status::RunStatus;
use crate::tiny_guest::{self, EXCEPTION_PORT, EXCEPTION_STATUS, REPORT_PORT};

/// Wall-clock limit of each probe guest. Each runs a few hundred instructions: even emulated
/// at ~1 µs each that is under a millisecond, so this only ever ends a hang.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(150);
/// NOPs in the CPL0 emulation probe.
pub const NOP_COUNT: usize = 200;

/// Most values a probe guest may report; more are dropped (a probe body reports one or two).
const MAX_EVENTS: usize = 64;

/// The probe ports' device: records what the guest writes to [`REPORT_PORT`] and
/// [`EXCEPTION_PORT`], in order.
#[derive(Debug, Default)]
struct Recorder {
    events: Vec<ProbeEvent>,
}

impl BusDevice for Recorder {
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(b);
        let event = if offset == u64::from(EXCEPTION_PORT - REPORT_PORT) {
            ProbeEvent::Exception(value)
        } else {
            ProbeEvent::Report(value)
        };
        if self.events.len() < MAX_EVENTS {
            self.events.push(event);
        }
        DeviceAction::None
    }
}

/// Something a probe guest wrote to a probe port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEvent {
    /// A value the body reported ([`tiny_guest::report_eax`]).
    Report(u32),
    /// An exception with this vector reached the guest's IDT.
    Exception(u32),
}

/// What a probe guest did.
#[derive(Debug)]
pub struct ProbeRun {
    pub status: RunStatus,
    /// Probe-port writes, in order.
    pub events: Vec<ProbeEvent>,
    /// vCPU 0's registers as it left the guest (`None` if they could not be read).
    pub regs: Option<kvm_bindings::kvm_regs>,
    /// The guest's phases (KVM stats deltas included when asked for).
    pub phases: Vec<crate::counters::PhaseDelta>,
    pub notes: Vec<String>,
    pub wall: Duration,
}

impl ProbeRun {
    /// Values reported, in order.
    pub fn reports(&self) -> impl Iterator<Item = u32> + '_ {
        self.events.iter().filter_map(|e| match e {
            ProbeEvent::Report(v) => Some(*v),
            ProbeEvent::Exception(_) => None,
        })
    }

    /// The first exception vector that reached the guest.
    pub fn exception(&self) -> Option<u32> {
        self.events.iter().find_map(|e| match e {
            ProbeEvent::Exception(v) => Some(*v),
            ProbeEvent::Report(_) => None,
        })
    }

    /// One line: how the run ended, where vCPU 0 stood, and any exception.
    pub fn summary(&self) -> String {
        let mut s = self.status.to_string();
        if let Some(r) = &self.regs {
            s.push_str(&format!(", rip {:#x}", r.rip));
        }
        if let Some(v) = self.exception() {
            s.push_str(&format!(", exception vector {v}"));
        }
        s
    }
}

/// Runs `body` as a [`tiny_guest::real_mode_probe`] guest in a one-vCPU partition until it
/// exits or `deadline` passes. `kvm_stats`: read KVM's vCPU statistics at its phase markers.
pub fn run(
    kvm: &Kvm,
    body: &[u8],
    deadline: Duration,
    kvm_stats: bool,
) -> Result<ProbeRun, HvError> {
    let cfg = PartitionConfig {
        mem_bytes: MIN_MEM,
        tracepoints: false,
        kvm_stats,
        ..PartitionConfig::default()
    };
    // The partition boots an image like any guest's; this one never runs, because vCPU 0 is
    // moved to the probe's real-mode start below.
    let unused = tiny_guest::elf(&tiny_guest::exit_now(tiny_guest::FELL_THROUGH_STATUS));
    let mut p = Partition::new(kvm, cfg, &unused)?;
    for (at, bytes) in tiny_guest::real_mode_probe(body) {
        p.memory()
            .write_slice(&bytes, GuestAddress(at))
            .map_err(|e| HvError::Memory(format!("probe guest at {at:#x}: {e}")))?;
    }
    let vcpu = p
        .vcpu_fd(0)
        .ok_or_else(|| HvError::Setup("probe partition has no vCPU 0".into()))?;
    real_mode_start(vcpu)?;
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    p.add_pio_device(
        "probe",
        REPORT_PORT,
        EXCEPTION_PORT - REPORT_PORT + 1,
        recorder.clone(),
    )?;
    let regs = p.record_exit_regs();
    let start = Instant::now();
    let outcome = p.start()?.wait(start + deadline, deadline);
    let events = std::mem::take(&mut recorder.lock().unwrap_or_else(|p| p.into_inner()).events);
    Ok(ProbeRun {
        status: outcome.status,
        events,
        regs: regs.get(0),
        phases: outcome.phases,
        notes: outcome.notes,
        wall: outcome.wall,
    })
}

/// Puts `vcpu` in real mode at `0:REAL_MODE_CODE_AT`, all segment bases 0, stack at
/// `0:REAL_MODE_STACK_TOP`, interrupts off, IVT at 0.
fn real_mode_start(vcpu: &VcpuFd) -> Result<(), HvError> {
    let mut sregs = vcpu.get_sregs().map_err(HvError::kvm("KVM_GET_SREGS"))?;
    let seg = |type_: u8| kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(0xb); // execute/read, accessed
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = seg(0x3); // read/write, accessed
    }
    sregs.cr0 &= !1; // PE off
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs.idt.base = 0;
    sregs.idt.limit = 0x3ff;
    vcpu.set_sregs(&sregs)
        .map_err(HvError::kvm("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: u64::from(tiny_guest::REAL_MODE_CODE_AT),
        rsp: u64::from(tiny_guest::REAL_MODE_STACK_TOP),
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(HvError::kvm("KVM_SET_REGS"))
}

/// Is CPL0 guest code emulated instruction by instruction here?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpl0Emulation {
    /// `Some(true)`: emulated; `Some(false)`: runs natively; `None`: could not measure.
    pub emulated: Option<bool>,
    /// The measurement, or why there is none.
    pub detail: String,
}

/// Runs [`NOP_COUNT`] real-mode (CPL0) NOPs inside a phase and reads how far the vCPU stat
/// `insn_emulation` moved over it: by about one per NOP where KVM emulates guest kernel code.
pub fn cpl0_emulation(kvm: &Kvm) -> Cpl0Emulation {
    let unknown = |why: String| Cpl0Emulation {
        emulated: None,
        detail: format!("could not measure: {why}"),
    };
    let mut body = Vec::new();
    tiny_guest::phase_marker(&mut body, 1, false);
    body.extend(std::iter::repeat_n(0x90, NOP_COUNT));
    tiny_guest::phase_marker(&mut body, 1, true);
    tiny_guest::exit_with(&mut body, 0);
    let run = match run(kvm, &body, PROBE_DEADLINE, true) {
        Ok(r) => r,
        Err(e) => return unknown(e.to_string()),
    };
    let phase = match (&run.status, run.phases.as_slice()) {
        (RunStatus::GuestExit(0), [phase]) => phase,
        _ => {
            return unknown(format!("probe guest did not complete: {}", run.summary()));
        }
    };
    let Some(&delta) = phase.kvm_stats.get("insn_emulation") else {
        let why = run
            .notes
            .iter()
            .find(|n| n.contains("stats unavailable"))
            .cloned()
            .unwrap_or_else(|| "no insn_emulation vCPU stat".to_owned());
        return unknown(why);
    };
    let delta = delta.max(0) as u64;
    Cpl0Emulation {
        emulated: Some(delta as usize >= NOP_COUNT * 9 / 10),
        detail: format!(
            "insn_emulation +{delta} over {NOP_COUNT} real-mode NOPs in {:.0} µs",
            phase.wall_ns as f64 / 1e3
        ),
    }
}

/// A hypercall instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallInsn {
    /// Intel's.
    Vmcall,
    /// AMD's and Hygon's.
    Vmmcall,
}

impl HypercallInsn {
    /// Its encoding.
    pub fn bytes(self) -> [u8; 3] {
        match self {
            HypercallInsn::Vmcall => [0x0f, 0x01, 0xc1],
            HypercallInsn::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }

    /// Its mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            HypercallInsn::Vmcall => "vmcall",
            HypercallInsn::Vmmcall => "vmmcall",
        }
    }
}

/// What one hypercall instruction did in a probe guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypercallOutcome {
    /// KVM handled it and answered -KVM_ENOSYS for the unknown number.
    Handled,
    /// It came out to userspace as KVM_EXIT_HYPERCALL.
    ExitToUserspace { nr: u64 },
    /// It did not complete as a hypercall; the text says what happened.
    Failed(String),
}

impl HypercallOutcome {
    /// True when the instruction reaches a hypercall handler (KVM's or userspace's).
    pub fn works(&self) -> bool {
        !matches!(self, HypercallOutcome::Failed(_))
    }

    /// What happened, for `hv caps` and probe reasons.
    pub fn detail(&self) -> String {
        match self {
            HypercallOutcome::Handled => "returned -KVM_ENOSYS in rax".to_owned(),
            HypercallOutcome::ExitToUserspace { nr } => {
                format!("KVM_EXIT_HYPERCALL (nr {nr:#x})")
            }
            HypercallOutcome::Failed(why) => why.clone(),
        }
    }
}

/// An unknown hypercall number: KVM answers `-KVM_ENOSYS`.
const UNKNOWN_HC_NR: u32 = 0x1234;
/// `-KVM_ENOSYS` as KVM writes it for a 32-bit caller (truncated to 32 bits).
const KVM_ENOSYS_RET32: u32 = -1000i32 as u32;

/// What `insn` does on this host, probed once per process (the answer cannot change while hv
/// runs, and a hang costs [`PROBE_DEADLINE`]).
pub fn hypercall_outcome(kvm: &Kvm, insn: HypercallInsn) -> HypercallOutcome {
    static VMCALL: OnceLock<HypercallOutcome> = OnceLock::new();
    static VMMCALL: OnceLock<HypercallOutcome> = OnceLock::new();
    let cache = match insn {
        HypercallInsn::Vmcall => &VMCALL,
        HypercallInsn::Vmmcall => &VMMCALL,
    };
    cache
        .get_or_init(|| probe_hypercall_insn(kvm, insn))
        .clone()
}

/// Runs `insn` with an unknown hypercall number in `eax` in a probe guest, then reports `eax`,
/// and says what happened (uncached: [`hypercall_outcome`] is what callers want).
pub fn probe_hypercall_insn(kvm: &Kvm, insn: HypercallInsn) -> HypercallOutcome {
    use HypercallOutcome::{ExitToUserspace, Failed, Handled};
    let mut body = Vec::new();
    tiny_guest::set_eax(&mut body, UNKNOWN_HC_NR);
    let insn_at = u64::from(tiny_guest::REAL_MODE_CODE_AT) + body.len() as u64;
    body.extend_from_slice(&insn.bytes());
    tiny_guest::report_eax(&mut body);
    tiny_guest::exit_with(&mut body, 0);
    let run = match run(kvm, &body, PROBE_DEADLINE, false) {
        Ok(r) => r,
        Err(e) => return Failed(format!("could not run: {e}")),
    };
    match &run.status {
        RunStatus::UnhandledExit { what, .. } if what == "hypercall" => {
            // KVM_EXIT_HYPERCALL's nr is the guest's rax at the instruction.
            return ExitToUserspace {
                nr: run.regs.map_or(u64::from(UNKNOWN_HC_NR), |r| r.rax),
            };
        }
        RunStatus::Timeout(_) if run.regs.is_some_and(|r| r.rip == insn_at) => {
            return Failed(format!(
                "hangs: rip stays at the instruction ({insn_at:#x}) until the watchdog ({} ms)",
                PROBE_DEADLINE.as_millis()
            ));
        }
        RunStatus::GuestExit(s) if *s == EXCEPTION_STATUS => {
            return Failed(match run.exception() {
                Some(6) => "#UD".to_owned(),
                Some(13) => "#GP".to_owned(),
                Some(v) => format!("unexpected exception (vector {v})"),
                None => run.summary(),
            });
        }
        _ => {}
    }
    match (run.status.is_ok(), run.reports().next()) {
        (true, Some(eax)) if eax == KVM_ENOSYS_RET32 => Handled,
        (true, Some(UNKNOWN_HC_NR)) => {
            Failed("continued with rax unchanged (treated as a no-op)".to_owned())
        }
        (true, Some(eax)) => Failed(format!("continued with rax={eax:#x}")),
        _ => Failed(run.summary()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    fn run_body(kvm: &Kvm, body: &[u8], deadline: Duration) -> ProbeRun {
        run(kvm, body, deadline, false).unwrap()
    }

    #[test]
    fn probe_guest_reports_in_order_and_exits() {
        let kvm = crate::error::kvm_for_tests();
        let mut body = Vec::new();
        for v in [7, 0xdead_beef, 0] {
            tiny_guest::set_eax(&mut body, v);
            tiny_guest::report_eax(&mut body);
        }
        tiny_guest::exit_with(&mut body, 0);
        let run = run_body(&kvm, &body, Duration::from_secs(2));
        assert!(run.status.is_ok(), "{run:?}");
        assert_eq!(run.reports().collect::<Vec<_>>(), [7, 0xdead_beef, 0]);
        assert_eq!(run.exception(), None);
    }

    #[test]
    fn probe_guest_ud_reaches_its_ivt() {
        let kvm = crate::error::kvm_for_tests();
        let run = run_body(&kvm, &[0x0f, 0x0b], Duration::from_secs(2)); // ud2
        assert_eq!(
            run.status,
            RunStatus::GuestExit(EXCEPTION_STATUS),
            "{run:?}"
        );
        assert_eq!(run.exception(), Some(6), "{run:?}");
    }

    #[test]
    fn probe_guest_gp_reaches_its_ivt() {
        let kvm = crate::error::kvm_for_tests();
        // mov ax, [0xffff]: a word access across the segment limit -> #GP.
        let run = run_body(&kvm, &[0xa1, 0xff, 0xff], Duration::from_secs(2));
        assert_eq!(
            run.status,
            RunStatus::GuestExit(EXCEPTION_STATUS),
            "{run:?}"
        );
        assert_eq!(run.exception(), Some(13), "{run:?}");
    }

    #[test]
    fn body_that_runs_past_its_end_exits() {
        let kvm = crate::error::kvm_for_tests();
        let run = run_body(&kvm, &[0x90], Duration::from_secs(2));
        assert_eq!(
            run.status,
            RunStatus::GuestExit(tiny_guest::FELL_THROUGH_STATUS),
            "{run:?}"
        );
    }

    #[test]
    fn watchdog_stops_a_spinning_guest_and_says_where() {
        let kvm = crate::error::kvm_for_tests();
        let t = Instant::now();
        let run = run(&kvm, &[0xeb, 0xfe], Duration::from_millis(50), false).unwrap(); // jmp $
        assert!(matches!(run.status, RunStatus::Timeout(_)), "{run:?}");
        assert!(t.elapsed() < Duration::from_millis(500), "{run:?}");
        assert_eq!(
            run.regs.map(|r| r.rip),
            Some(u64::from(tiny_guest::REAL_MODE_CODE_AT)),
            "{run:?}"
        );
    }

    #[test]
    fn cpl0_probe_measures() {
        let kvm = crate::error::kvm_for_tests();
        let c = cpl0_emulation(&kvm);
        eprintln!("{c:?}");
        assert!(c.emulated.is_some(), "{c:?}");
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(c.emulated, Some(true), "{c:?}");
        }
    }

    #[test]
    fn hypercall_probes_on_this_host() {
        let kvm = crate::error::kvm_for_tests();
        let vmcall = probe_hypercall_insn(&kvm, HypercallInsn::Vmcall);
        let vmmcall = probe_hypercall_insn(&kvm, HypercallInsn::Vmmcall);
        eprintln!("vmcall: {vmcall:?}; vmmcall: {vmmcall:?}");
        // On a nested PVM host (ours are AMD): vmcall never returns, vmmcall
        // raises #UD.
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert!(
                vmcall
                    .detail()
                    .starts_with("hangs: rip stays at the instruction"),
                "{vmcall:?}"
            );
            assert_eq!(vmmcall, HypercallOutcome::Failed("#UD".into()));
        }
        let first = hypercall_outcome(&kvm, HypercallInsn::Vmmcall);
        assert_eq!(first, vmmcall);
        let t = Instant::now();
        assert_eq!(hypercall_outcome(&kvm, HypercallInsn::Vmmcall), first);
        assert!(t.elapsed() < Duration::from_millis(50), "cached");
    }
}
