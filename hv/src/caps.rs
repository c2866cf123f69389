//! Host capability probe (`hv caps`): what this host's KVM offers and, where advertising is not
//! enough, what it actually does.
//!
//! Two kinds of answers:
//! - **advertised**: `KVM_CHECK_EXTENSION` and `KVM_GET_SUPPORTED_CPUID`. Cheap, but a nested or
//!   paravirtual KVM (kvm_pvm) advertises things that do not work (DESIGN.md §6).
//! - **behavioural**: a tiny real-mode guest ([`ProbeGuest`]) runs the thing and we look at what
//!   happened: CPL0 instruction emulation (vCPU stat `insn_emulation` over a run of NOPs) and
//!   hypercall instructions (`vmcall` / `vmmcall` must return KVM's answer in `rax`).
//!
//! Every probe guest runs under a watchdog, so the probe cannot hang; the whole probe takes a few
//! tens of milliseconds when nothing times out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::counters::kvm_stats::KvmStatsReader;
use crate::counters::tracepoints;
use crate::host;
use crate::record::HostInfo;

/// Errors that stop the probe as a whole. Individual probes that fail are reported in their
/// [`Probe::detail`] instead.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `/dev/kvm` is missing or may not be opened (the message names the fix).
    #[error(transparent)]
    Kvm(#[from] crate::error::HvError),
    /// A KVM ioctl that the probe cannot do without failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory for a probe guest could not be set up.
    #[error("probe guest memory: {0}")]
    Memory(String),
}

fn ioctl_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CapsError {
    move |source| CapsError::Ioctl { what, source }
}

/// One probed thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub name: String,
    pub supported: bool,
    pub detail: String,
}

impl Probe {
    fn new(name: impl Into<String>, supported: bool, detail: impl Into<String>) -> Self {
        Probe {
            name: name.into(),
            supported,
            detail: detail.into(),
        }
    }
}

/// Everything `hv caps` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HostCaps {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: u32,
    pub kvm_api_version: i32,
    /// `hardware-vmx`, `hardware-svm`, `nested-pvm` or `unknown`.
    pub flavour: String,
    /// What the flavour decision was based on.
    pub flavour_evidence: Vec<String>,
    /// Behavioural: is CPL0 guest code emulated instruction by instruction?
    pub cpl0_emulated: Probe,
    /// `KVM_CHECK_EXTENSION` results for the capabilities hvlab uses (VM fd).
    pub capabilities: Vec<Probe>,
    /// KVM paravirtual features advertised in supported CPUID leaf 0x40000001 EAX.
    pub kvm_pv_features: Vec<Probe>,
    /// Behavioural: do `vmcall` / `vmmcall` reach KVM's hypercall handler?
    pub hypercalls: Probe,
    /// Hyper-V enlightenment capabilities (advertised).
    pub hyperv: Probe,
    /// Guest PMU: supported CPUID leaf 0xA version id.
    pub guest_pmu: Probe,
    /// `perf_event_open` on kvm:* tracepoints.
    pub tracepoints: Probe,
    /// `KVM_GET_STATS_FD` on a VM and a vCPU.
    pub stats_fd: Probe,
    /// Every enlightenment in the registry, with this host's probe result.
    pub enlightenments: Vec<EnlightenmentProbe>,
    /// seccomp filters for vCPU and worker threads (`hv/src/isolation`).
    pub seccomp: Probe,
}

/// Probes the host. Fails only if KVM itself is unusable; each probe's failure is in its detail.
pub fn probe() -> Result<HostCaps, CapsError> {
    let kvm = crate::error::open_kvm()?;
    let vm = kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
    let cpuinfo = host::cpuinfo();

    let capabilities = probe_capabilities(&vm);
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES);
    let (kvm_pv_features, guest_pmu) = match &cpuid {
        Ok(c) => (pv_features(c.as_slice()), guest_pmu(c.as_slice())),
        Err(e) => (
            Vec::new(),
            Probe::new(
                "guest-pmu",
                false,
                format!("KVM_GET_SUPPORTED_CPUID failed: {e}"),
            ),
        ),
    };
    let cpl0_emulated = probe_cpl0_emulation(&kvm);
    let hypercalls = probe_hypercalls(&kvm);
    let hyperv = hyperv_summary(&capabilities);
    let tracepoints = match tracepoints::availability() {
        Ok(()) => {
            let present = tracepoints::present_tracepoints();
            Probe::new(
                "tracepoints",
                true,
                format!(
                    "{} of {} kvm:* tracepoints hvlab counts exist",
                    present.len(),
                    tracepoints::KVM_TRACEPOINTS.len()
                ),
            )
        }
        Err(reason) => Probe::new("tracepoints", false, reason),
    };
    let stats_fd = probe_stats_fd(&kvm, &vm);

    let (flavour, flavour_evidence) = classify_flavour(&cpuinfo, &cpl0_emulated);
    Ok(HostCaps {
        kernel: host::kernel_release(),
        cpu_model: host::cpu_model(&cpuinfo),
        cores: host::cores(),
        kvm_api_version: kvm.get_api_version(),
        flavour,
        flavour_evidence,
        cpl0_emulated,
        capabilities,
        kvm_pv_features,
        hypercalls,
        hyperv,
        guest_pmu,
        tracepoints,
        stats_fd,
        enlightenments: crate::enlightenments::probe_all(&kvm)
            .into_iter()
            .map(|r| EnlightenmentProbe {
                name: r.name.to_string(),
                supported: r.result.is_ok(),
                mechanism: r.mechanism,
                description: r.description.to_string(),
                host_side: r.host_side.to_string(),
                reason: r.result.err().unwrap_or_default(),
            })
            .collect(),
        seccomp: seccomp_probe(),
    })
}

/// Whether this kernel has seccomp filters, and hv's default.
fn seccomp_probe() -> Probe {
    match crate::isolation::seccomp::supported() {
        Ok(how) => Probe::new(
            "seccomp",
            true,
            format!(
                "{how}; vCPU and device worker threads filtered by default (`--no-seccomp` \
                 turns it off)"
            ),
        ),
        Err(why) => Probe::new("seccomp", false, format!("{why}; runs go unfiltered")),
    }
}

/// One enlightenment as `hv caps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EnlightenmentProbe {
    pub name: String,
    pub supported: bool,
    /// CPUID bit / MSR / KVM capability / hypercall / hv interface, joined with `+`.
    pub mechanism: String,
    pub description: String,
    /// What hv enables on the host side.
    pub host_side: String,
    /// Why it cannot run here (empty when supported).
    pub reason: String,
}

impl HostCaps {
    /// A human table grouped by section: `✓`/`✗`, name, detail.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Host");
        let _ = writeln!(s, "  kernel      {}", self.kernel);
        let _ = writeln!(
            s,
            "  cpu         {} ({} online)",
            self.cpu_model, self.cores
        );
        let _ = writeln!(s, "  KVM API     {}", self.kvm_api_version);
        let _ = writeln!(s, "  flavour     {}", self.flavour);
        for e in &self.flavour_evidence {
            let _ = writeln!(s, "              - {e}");
        }
        let section = |s: &mut String, title: &str, probes: &[&Probe]| {
            let _ = writeln!(s, "\n{title}");
            let w = probes.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in probes {
                let mark = if p.supported { '✓' } else { '✗' };
                let _ = writeln!(s, "  {mark} {:<w$}  {}", p.name, p.detail);
            }
        };
        section(
            &mut s,
            "Behaviour (measured with probe guests)",
            &[&self.cpl0_emulated, &self.hypercalls],
        );
        section(
            &mut s,
            "Counters",
            &[&self.stats_fd, &self.tracepoints, &self.guest_pmu],
        );
        let caps: Vec<&Probe> = self.capabilities.iter().collect();
        section(&mut s, "KVM capabilities (KVM_CHECK_EXTENSION)", &caps);
        section(&mut s, "Hyper-V", &[&self.hyperv]);
        section(&mut s, "Isolation", &[&self.seccomp]);
        let pv: Vec<&Probe> = self.kvm_pv_features.iter().collect();
        section(
            &mut s,
            "KVM paravirtual features (supported CPUID 0x40000001 EAX)",
            &pv,
        );
        let _ = writeln!(s, "\nEnlightenments (`--enlighten`; probed on this host)");
        let w = self
            .enlightenments
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(0);
        for e in &self.enlightenments {
            let mark = if e.supported { '✓' } else { '✗' };
            let _ = writeln!(
                s,
                "  {mark} {:<w$}  [{}] {}",
                e.name, e.mechanism, e.description
            );
            if !e.supported {
                let _ = writeln!(s, "    {:<w$}  unsupported: {}", "", e.reason);
            }
        }
        s
    }

    /// The summary that goes into every run record: probe results by name (`cap.*`, `pv.*`,
    /// `probe.*`).
    pub fn to_host_info(&self) -> HostInfo {
        let mut caps = BTreeMap::new();
        for p in &self.capabilities {
            caps.insert(format!("cap.{}", p.name), p.supported);
        }
        for p in &self.kvm_pv_features {
            caps.insert(format!("pv.{}", p.name), p.supported);
        }
        for p in [
            &self.cpl0_emulated,
            &self.hypercalls,
            &self.hyperv,
            &self.guest_pmu,
            &self.tracepoints,
            &self.stats_fd,
        ] {
            caps.insert(format!("probe.{}", p.name), p.supported);
        }
        for e in &self.enlightenments {
            caps.insert(format!("enlighten.{}", e.name), e.supported);
        }
        HostInfo {
            kernel: self.kernel.clone(),
            cpu_model: self.cpu_model.clone(),
            cores: self.cores,
            kvm_flavour: self.flavour.clone(),
            caps,
        }
    }
}

/// The host's flavour (modules and CPU flags, see `host::kvm_flavour`) with the behavioural
/// CPL0-emulation probe added to the evidence.
fn classify_flavour(cpuinfo: &str, cpl0: &Probe) -> (String, Vec<String>) {
    let (flavour, mut ev) = host::kvm_flavour(cpuinfo);
    ev.insert(
        2.min(ev.len()),
        format!(
            "CPL0 emulated: {} ({})",
            if cpl0.supported { "yes" } else { "no" },
            cpl0.detail
        ),
    );
    if flavour.starts_with("hardware") && cpl0.supported {
        ev.push("CPL0 code is emulated although the module is a hardware one".to_owned());
    }
    (flavour, ev)
}

// ---------------------------------------------------------------------------------------------
// Advertised capabilities

/// How to describe a capability's `KVM_CHECK_EXTENSION` value.
#[derive(Clone, Copy)]
enum CapValue {
    /// 0 = absent, anything else = present.
    Bool,
    /// A count (vCPUs).
    Number,
    /// A bitmask worth showing in hex.
    Mask,
    /// KVM_X86_DISABLE_EXITS_* bits.
    DisableExits,
}

const CAPS: &[(&str, u32, CapValue)] = {
    use CapValue::*;
    use kvm_bindings as b;
    &[
        ("IRQCHIP", b::KVM_CAP_IRQCHIP, Bool),
        ("SPLIT_IRQCHIP", b::KVM_CAP_SPLIT_IRQCHIP, Bool),
        ("IRQ_ROUTING", b::KVM_CAP_IRQ_ROUTING, Bool),
        ("IOEVENTFD", b::KVM_CAP_IOEVENTFD, Bool),
        ("IRQFD", b::KVM_CAP_IRQFD, Bool),
        ("COALESCED_MMIO", b::KVM_CAP_COALESCED_MMIO, Number),
        ("COALESCED_PIO", b::KVM_CAP_COALESCED_PIO, Bool),
        ("SIGNAL_MSI", b::KVM_CAP_SIGNAL_MSI, Bool),
        (
            "X86_DISABLE_EXITS",
            b::KVM_CAP_X86_DISABLE_EXITS,
            DisableExits,
        ),
        ("X86_USER_SPACE_MSR", b::KVM_CAP_X86_USER_SPACE_MSR, Mask),
        ("X86_MSR_FILTER", b::KVM_CAP_X86_MSR_FILTER, Bool),
        ("BINARY_STATS_FD", b::KVM_CAP_BINARY_STATS_FD, Bool),
        ("IMMEDIATE_EXIT", b::KVM_CAP_IMMEDIATE_EXIT, Bool),
        ("GET_TSC_KHZ", b::KVM_CAP_GET_TSC_KHZ, Bool),
        ("TSC_CONTROL", b::KVM_CAP_TSC_CONTROL, Bool),
        ("X2APIC_API", b::KVM_CAP_X2APIC_API, Mask),
        ("PIT2", b::KVM_CAP_PIT2, Bool),
        ("KVMCLOCK_CTRL", b::KVM_CAP_KVMCLOCK_CTRL, Bool),
        ("MP_STATE", b::KVM_CAP_MP_STATE, Bool),
        ("EXIT_HYPERCALL", b::KVM_CAP_EXIT_HYPERCALL, Mask),
        ("PMU_CAPABILITY", b::KVM_CAP_PMU_CAPABILITY, Mask),
        ("HYPERV", b::KVM_CAP_HYPERV, Bool),
        ("HYPERV_VP_INDEX", b::KVM_CAP_HYPERV_VP_INDEX, Bool),
        ("HYPERV_TIME", b::KVM_CAP_HYPERV_TIME, Bool),
        ("HYPERV_SYNIC", b::KVM_CAP_HYPERV_SYNIC, Bool),
        ("HYPERV_SYNIC2", b::KVM_CAP_HYPERV_SYNIC2, Bool),
        ("HYPERV_TLBFLUSH", b::KVM_CAP_HYPERV_TLBFLUSH, Bool),
        ("HYPERV_SEND_IPI", b::KVM_CAP_HYPERV_SEND_IPI, Bool),
        (
            "HYPERV_DIRECT_TLBFLUSH",
            b::KVM_CAP_HYPERV_DIRECT_TLBFLUSH,
            Bool,
        ),
        (
            "HYPERV_ENFORCE_CPUID",
            b::KVM_CAP_HYPERV_ENFORCE_CPUID,
            Bool,
        ),
        ("NR_VCPUS", b::KVM_CAP_NR_VCPUS, Number),
        ("MAX_VCPUS", b::KVM_CAP_MAX_VCPUS, Number),
    ]
};

fn describe_cap(v: i32, how: CapValue) -> String {
    match how {
        _ if v <= 0 => String::new(),
        CapValue::Bool => String::new(),
        CapValue::Number => v.to_string(),
        CapValue::Mask => format!("{v:#x}"),
        CapValue::DisableExits => {
            let bits = v as u32;
            let names: Vec<&str> = [
                (kvm_bindings::KVM_X86_DISABLE_EXITS_MWAIT, "MWAIT"),
                (kvm_bindings::KVM_X86_DISABLE_EXITS_HLT, "HLT"),
                (kvm_bindings::KVM_X86_DISABLE_EXITS_PAUSE, "PAUSE"),
                (kvm_bindings::KVM_X86_DISABLE_EXITS_CSTATE, "CSTATE"),
            ]
            .into_iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, n)| n)
            .collect();
            format!("{v:#x} = {}", names.join("|"))
        }
    }
}

fn probe_capabilities(vm: &VmFd) -> Vec<Probe> {
    CAPS.iter()
        .map(|&(name, cap, how)| {
            let v = vm.check_extension_raw(libc::c_ulong::from(cap));
            Probe::new(name, v > 0, describe_cap(v, how))
        })
        .collect()
}

fn hyperv_summary(caps: &[Probe]) -> Probe {
    let present: Vec<&str> = caps
        .iter()
        .filter(|p| p.name.starts_with("HYPERV") && p.supported)
        .map(|p| p.name.as_str())
        .collect();
    let base = present.contains(&"HYPERV");
    let detail = if present.is_empty() {
        "no KVM_CAP_HYPERV*".to_owned()
    } else {
        format!(
            "advertised (not exercised; a nested/PVM host may not honour them): {}",
            present.join(" ")
        )
    };
    Probe::new("hyperv", base, detail)
}

/// `KVM_FEATURE_*` bits of CPUID 0x40000001 EAX.
const PV_FEATURES: &[(u32, &str)] = &[
    (0, "clocksource"),
    (1, "nop-io-delay"),
    (3, "clocksource2"),
    (4, "async-pf"),
    (5, "steal-time"),
    (6, "pv-eoi"),
    (7, "pv-unhalt"),
    (9, "pv-tlb-flush"),
    (10, "async-pf-vmexit"),
    (11, "pv-send-ipi"),
    (12, "poll-control"),
    (13, "pv-sched-yield"),
    (14, "async-pf-int"),
    (15, "msi-ext-dest-id"),
    (16, "hc-map-gpa-range"),
    (17, "migration-control"),
    (24, "clocksource-stable"),
];

const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

fn pv_features(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> Vec<Probe> {
    let eax = cpuid
        .iter()
        .find(|e| e.function == KVM_CPUID_FEATURES)
        .map(|e| e.eax);
    PV_FEATURES
        .iter()
        .map(|&(bit, name)| match eax {
            Some(eax) if eax & (1 << bit) != 0 => {
                Probe::new(name, true, format!("bit {bit} advertised (not exercised)"))
            }
            Some(_) => Probe::new(name, false, format!("bit {bit} not advertised")),
            None => Probe::new(name, false, "leaf 0x40000001 not in supported CPUID"),
        })
        .collect()
}

fn guest_pmu(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> Probe {
    match cpuid.iter().find(|e| e.function == 0xA) {
        Some(e) => {
            let version = e.eax & 0xff;
            let counters = (e.eax >> 8) & 0xff;
            let width = (e.eax >> 16) & 0xff;
            if version == 0 {
                Probe::new(
                    "guest-pmu",
                    false,
                    "CPUID 0xA version 0: no architectural PMU offered to guests",
                )
            } else {
                Probe::new(
                    "guest-pmu",
                    true,
                    format!(
                        "CPUID 0xA: version {version}, {counters} GP counters of {width} bits \
                         (advertised, not exercised)"
                    ),
                )
            }
        }
        None => Probe::new(
            "guest-pmu",
            false,
            "CPUID leaf 0xA not in supported CPUID (no architectural PMU offered)",
        ),
    }
}

fn probe_stats_fd(kvm: &Kvm, vm: &VmFd) -> Probe {
    let vm_stats = match KvmStatsReader::for_vm(vm) {
        Ok(r) => r,
        Err(e) => return Probe::new("stats-fd", false, e.to_string()),
    };
    let vcpu = match ProbeGuest::new(kvm, &[0xf4]) {
        Ok(g) => g,
        Err(e) => return Probe::new("stats-fd", false, format!("probe vCPU: {e}")),
    };
    match KvmStatsReader::for_vcpu(vcpu.vcpu()) {
        Ok(r) => Probe::new(
            "stats-fd",
            true,
            format!(
                "VM: {} scalar stats ({} cumulative); vCPU: {} ({} cumulative)",
                vm_stats.stats().len(),
                vm_stats.names().len(),
                r.stats().len(),
                r.names().len()
            ),
        ),
        Err(e) => Probe::new("stats-fd", false, format!("vCPU: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Behavioural probes

/// NOPs in the CPL0 emulation probe.
const NOP_COUNT: usize = 200;
/// Watchdog for each probe guest. Each guest runs a few hundred instructions: even emulated at
/// ~1 µs each that is under a millisecond, so this only ever fires on a hang.
const PROBE_DEADLINE: Duration = Duration::from_millis(150);

fn probe_cpl0_emulation(kvm: &Kvm) -> Probe {
    const NAME: &str = "cpl0-emulated";
    let mut code = vec![0x90; NOP_COUNT];
    code.extend_from_slice(&[0xe6, PORT_COUNT as u8, 0xf4]); // out PORT_COUNT, al; hlt
    let mut g = match ProbeGuest::new(kvm, &code) {
        Ok(g) => g,
        Err(e) => return Probe::new(NAME, false, format!("could not measure: {e}")),
    };
    let stats = match KvmStatsReader::for_vcpu(g.vcpu()) {
        Ok(s) => s,
        Err(e) => return Probe::new(NAME, false, format!("could not measure: {e}")),
    };
    let Some(idx) = stats.names().iter().position(|n| n == "insn_emulation") else {
        return Probe::new(
            NAME,
            false,
            "could not measure: no insn_emulation vCPU stat",
        );
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    if let Err(e) = stats.read(&mut before) {
        return Probe::new(NAME, false, format!("could not measure: {e}"));
    }
    let run = g.run(PROBE_DEADLINE, |_| {});
    if let Err(e) = stats.read(&mut after) {
        return Probe::new(NAME, false, format!("could not measure: {e}"));
    }
    if !(run.count_outs(PORT_COUNT) == 1 && run.end == GuestEnd::Hlt) {
        return Probe::new(
            NAME,
            false,
            format!(
                "could not measure: probe guest did not complete: {}",
                run.summary()
            ),
        );
    }
    let delta = after[idx].saturating_sub(before[idx]);
    let emulated = delta as usize >= NOP_COUNT * 9 / 10;
    Probe::new(
        NAME,
        emulated,
        format!(
            "insn_emulation +{delta} over {NOP_COUNT} real-mode NOPs in {:.0} µs",
            run.elapsed.as_secs_f64() * 1e6
        ),
    )
}

/// An unknown hypercall number: KVM answers `-KVM_ENOSYS`.
const UNKNOWN_HC_NR: u64 = 0x1234;
/// `-KVM_ENOSYS` as KVM writes it for a 16/32-bit caller (truncated to 32 bits).
const KVM_ENOSYS_RET32: u32 = -1000i32 as u32;

/// `vmcall` (Intel) and `vmmcall` (AMD/Hygon) encodings.
pub(crate) const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
pub(crate) const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];

/// What one hypercall instruction did in a probe guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HypercallOutcome {
    /// KVM handled it and answered -KVM_ENOSYS for the unknown number.
    Handled,
    /// It came out to userspace as KVM_EXIT_HYPERCALL.
    ExitToUserspace { nr: u64 },
    /// It did not complete as a hypercall; the text says what happened.
    Failed(String),
}

impl HypercallOutcome {
    /// True when the instruction reaches a hypercall handler (KVM's or userspace's).
    pub(crate) fn works(&self) -> bool {
        !matches!(self, HypercallOutcome::Failed(_))
    }

    /// What happened, for `hv caps` and probe reasons.
    pub(crate) fn detail(&self) -> String {
        match self {
            HypercallOutcome::Handled => "returned -KVM_ENOSYS in rax".to_owned(),
            HypercallOutcome::ExitToUserspace { nr } => {
                format!("KVM_EXIT_HYPERCALL (nr {nr:#x})")
            }
            HypercallOutcome::Failed(why) => why.clone(),
        }
    }
}

/// What `insn` does on this host, probed once per process: both `hv caps` and the
/// enlightenment probes ask, and each probe may wait out a watchdog.
pub(crate) fn hypercall_outcome(kvm: &Kvm, insn: [u8; 3]) -> HypercallOutcome {
    static VMCALL_OUTCOME: OnceLock<HypercallOutcome> = OnceLock::new();
    static VMMCALL_OUTCOME: OnceLock<HypercallOutcome> = OnceLock::new();
    let cache = if insn == VMMCALL {
        &VMMCALL_OUTCOME
    } else {
        &VMCALL_OUTCOME
    };
    cache
        .get_or_init(|| probe_hypercall_insn(kvm, insn))
        .clone()
}

/// Runs one hypercall instruction (`insn`: [`VMCALL`] or [`VMMCALL`]) with an unknown
/// hypercall number in a probe guest under the watchdog, and says what it did.
pub(crate) fn probe_hypercall_insn(kvm: &Kvm, insn: [u8; 3]) -> HypercallOutcome {
    use HypercallOutcome::{ExitToUserspace, Failed, Handled};
    // vmcall|vmmcall; out PORT_REPORT, al; hlt
    let code = [insn[0], insn[1], insn[2], 0xe6, PORT_REPORT as u8, 0xf4];
    let mut g = match ProbeGuest::new(kvm, &code) {
        Ok(g) => g,
        Err(e) => return Failed(format!("could not run: {e}")),
    };
    if let Err(e) = g.set_rax(UNKNOWN_HC_NR) {
        return Failed(format!("could not run: {e}"));
    }
    let run = g.run(PROBE_DEADLINE, |_| {});
    match run.end {
        GuestEnd::Hypercall { nr } => return ExitToUserspace { nr },
        GuestEnd::Timeout {
            rip: Some(rip @ CODE_AT_U64),
        } => {
            return Failed(format!(
                "hangs: rip stays at the instruction ({rip:#x}) until the watchdog ({} ms)",
                PROBE_DEADLINE.as_millis()
            ));
        }
        _ => {}
    }
    match run.outs.first() {
        Some(o) if o.port == PORT_REPORT => {
            let rax = o.rax.unwrap_or(UNKNOWN_HC_NR);
            if rax as u32 == KVM_ENOSYS_RET32 {
                Handled
            } else if rax == UNKNOWN_HC_NR {
                Failed("continued with rax unchanged (treated as a no-op)".to_owned())
            } else {
                Failed(format!("continued with rax={rax:#x}"))
            }
        }
        Some(o) if o.port == PORT_UD => Failed("#UD".to_owned()),
        Some(o) if o.port == PORT_GP => Failed("#GP".to_owned()),
        Some(o) if o.port == PORT_EXC => Failed("unexpected exception".to_owned()),
        _ => Failed(run.summary()),
    }
}

fn probe_hypercalls(kvm: &Kvm) -> Probe {
    let vmcall = hypercall_outcome(kvm, VMCALL);
    let vmmcall = hypercall_outcome(kvm, VMMCALL);
    Probe::new(
        "hypercalls",
        vmcall.works() || vmmcall.works(),
        format!("vmcall: {}; vmmcall: {}", vmcall.detail(), vmmcall.detail()),
    )
}

// ---------------------------------------------------------------------------------------------
// Probe guest: one real-mode vCPU with a watchdog.

/// Port the probe code writes to count events (no registers captured).
pub(crate) const PORT_COUNT: u16 = 0x10;
/// Port whose writes capture `rax` (for results the guest leaves in a register).
pub(crate) const PORT_REPORT: u16 = 0x11;
/// The #UD (vector 6) handler writes here.
pub(crate) const PORT_UD: u16 = 0x16;
/// The #GP (vector 13) handler writes here.
pub(crate) const PORT_GP: u16 = 0x1d;
/// Every other vector's handler writes here.
pub(crate) const PORT_EXC: u16 = 0x1f;

const MEM_SIZE: usize = 0x1_0000;
const STUB_AT: u16 = 0x0800;
const CODE_AT: u16 = 0x1000;
const CODE_AT_U64: u64 = CODE_AT as u64;
const STACK_TOP: u16 = 0xf000;

/// A `pio out` the guest made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutEvent {
    pub port: u16,
    /// First data byte.
    pub value: u8,
    /// `rax` at the exit, for [`PORT_REPORT`] only.
    pub rax: Option<u64>,
}

/// Why a probe guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuestEnd {
    Hlt,
    Shutdown,
    InternalError {
        suberror: u32,
    },
    FailEntry {
        reason: u64,
    },
    Hypercall {
        nr: u64,
    },
    /// The watchdog stopped it; `rip` where the vCPU was (if it could be read).
    Timeout {
        rip: Option<u64>,
    },
    RunError(String),
    Unexpected(String),
}

/// What a probe guest did.
#[derive(Debug, Clone)]
pub(crate) struct GuestRun {
    pub outs: Vec<OutEvent>,
    pub end: GuestEnd,
    pub elapsed: Duration,
}

impl GuestRun {
    pub(crate) fn count_outs(&self, port: u16) -> usize {
        self.outs.iter().filter(|o| o.port == port).count()
    }

    fn summary(&self) -> String {
        let end = match &self.end {
            GuestEnd::Hlt => "hlt".to_owned(),
            GuestEnd::Shutdown => "shutdown (triple fault)".to_owned(),
            GuestEnd::InternalError { suberror } => {
                format!("KVM internal error (suberror {suberror})")
            }
            GuestEnd::FailEntry { reason } => format!("entry failed (reason {reason:#x})"),
            GuestEnd::Hypercall { nr } => format!("KVM_EXIT_HYPERCALL nr {nr:#x}"),
            GuestEnd::Timeout { rip } => {
                let at = rip.map(|r| format!(", rip {r:#x}")).unwrap_or_default();
                format!(
                    "no progress: watchdog fired after {} ms{at}",
                    self.elapsed.as_millis()
                )
            }
            GuestEnd::RunError(e) => format!("KVM_RUN error: {e}"),
            GuestEnd::Unexpected(e) => format!("unexpected exit: {e}"),
        };
        let ports: Vec<String> = self.outs.iter().map(|o| format!("{:#x}", o.port)).collect();
        if ports.is_empty() {
            end
        } else {
            format!("outs to [{}], then {end}", ports.join(","))
        }
    }
}

/// A throwaway VM with 64 KiB of memory at GPA 0 and one vCPU in real mode at `0:0x1000`.
/// The IVT sends #UD to a stub that writes [`PORT_UD`], #GP to [`PORT_GP`], every other vector
/// to [`PORT_EXC`]; each stub then `hlt`s. The stack is at `0:0xf000`.
///
/// Crate-internal: the capability probe and the counter modules' tests use it. Real guests go
/// through the partition module.
#[derive(Debug)]
pub(crate) struct ProbeGuest {
    // Field order is drop order: the vCPU and VM go before the memory they map.
    vcpu: VcpuFd,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
}

impl ProbeGuest {
    /// Code that executes `n` `out PORT_COUNT, al` and then `hlt`.
    #[cfg(test)]
    pub(crate) fn outs_code(n: u16) -> Vec<u8> {
        let [lo, hi] = n.to_le_bytes();
        vec![
            0xb9,
            lo,
            hi, // mov cx, n
            0xe6,
            PORT_COUNT as u8, // out PORT_COUNT, al
            0xe2,
            0xfc, // loop -4
            0xf4, // hlt
        ]
    }

    pub(crate) fn new(kvm: &Kvm, code: &[u8]) -> Result<Self, CapsError> {
        if code.len() > usize::from(STACK_TOP - CODE_AT) - 0x100 {
            return Err(CapsError::Memory(format!(
                "probe code of {} bytes does not fit",
                code.len()
            )));
        }
        let vm = kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| CapsError::Memory(e.to_string()))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| CapsError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a MEM_SIZE-byte anonymous mapping owned by `mem`, which
        // lives in the returned struct and is dropped only after the VM (field order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))?;
        // Needed only by VMX without unrestricted guest for real mode; harmless elsewhere, and
        // some KVM flavours do not implement it, so a failure is not fatal.
        let _ = vm.set_tss_address(0xfffb_d000);

        // IVT: every vector -> the generic stub, then #UD and #GP to their own.
        let stub = |port: u16| [0xe6, port as u8, 0xf4]; // out port, al; hlt
        let stubs = [(0u16, PORT_EXC), (8, PORT_UD), (16, PORT_GP)];
        let mut ivt = [0u8; 256 * 4];
        for (v, e) in ivt.chunks_exact_mut(4).enumerate() {
            let off = match v {
                6 => STUB_AT + 8,
                13 => STUB_AT + 16,
                _ => STUB_AT,
            };
            e[..2].copy_from_slice(&off.to_le_bytes()); // offset; segment 0
        }
        let write = |at: u16, bytes: &[u8]| {
            mem.write_slice(bytes, GuestAddress(u64::from(at)))
                .map_err(|e| CapsError::Memory(e.to_string()))
        };
        write(0, &ivt)?;
        for (at, port) in stubs {
            write(STUB_AT + at, &stub(port))?;
        }
        write(CODE_AT, code)?;

        let vcpu = vm.create_vcpu(0).map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs).map_err(ioctl_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: u64::from(CODE_AT),
            rsp: u64::from(STACK_TOP),
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(ioctl_err("KVM_SET_REGS"))?;
        Ok(ProbeGuest {
            vcpu,
            _vm: vm,
            _mem: mem,
        })
    }

    #[cfg(test)]
    pub(crate) fn vm(&self) -> &VmFd {
        &self._vm
    }

    pub(crate) fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    fn set_rax(&self, rax: u64) -> Result<(), CapsError> {
        let mut regs = self.vcpu.get_regs().map_err(ioctl_err("KVM_GET_REGS"))?;
        regs.rax = rax;
        self.vcpu.set_regs(&regs).map_err(ioctl_err("KVM_SET_REGS"))
    }

    /// Runs the vCPU on its own thread until `hlt`, a fatal exit or `deadline`.
    /// `on_start` runs first on the vCPU thread with its thread id (to attach per-thread
    /// counters).
    ///
    /// Watchdog: after the deadline the caller sets a stop flag and sends SIGUSR2 (a no-op
    /// handler installed without `SA_RESTART`) to the vCPU thread every 500 µs until it
    /// acknowledges. A kick that lands between the thread's flag check and its entry into
    /// `KVM_RUN` is lost, but the next one interrupts `KVM_RUN` with EINTR, so the run always
    /// ends shortly after the deadline.
    pub(crate) fn run(
        &mut self,
        deadline: Duration,
        on_start: impl FnOnce(libc::pid_t) + Send,
    ) -> GuestRun {
        let start = Instant::now();
        let mut run = GuestRun {
            outs: Vec::new(),
            end: GuestEnd::Timeout { rip: None },
            elapsed: Duration::ZERO,
        };
        if let Err(e) = install_kick_handler() {
            run.end = GuestEnd::RunError(e.clone());
            return run;
        }
        let stop = AtomicBool::new(false);
        let vcpu = &mut self.vcpu;
        let outs = &mut run.outs;
        let end = std::thread::scope(|s| {
            let (started_tx, started_rx) = mpsc::channel::<libc::pthread_t>();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let stop = &stop;
            let handle = s.spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                let _ = started_tx.send(unsafe { libc::pthread_self() });
                // SAFETY: gettid has no preconditions and cannot fail.
                on_start(unsafe { libc::gettid() });
                let end = vcpu_loop(vcpu, stop, outs);
                let _ = done_tx.send(());
                end
            });
            let Ok(thread) = started_rx.recv() else {
                return handle
                    .join()
                    .unwrap_or_else(|_| GuestEnd::Unexpected("vCPU thread panicked".into()));
            };
            match done_rx.recv_timeout(deadline.saturating_sub(start.elapsed())) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    stop.store(true, Ordering::SeqCst);
                    loop {
                        // SAFETY: `thread` is the vCPU thread, which is not joined until the
                        // scope ends, so its pthread_t is still valid; the signal's handler is
                        // a no-op.
                        unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
                        match done_rx.recv_timeout(Duration::from_micros(500)) {
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            _ => break,
                        }
                    }
                }
            }
            handle
                .join()
                .unwrap_or_else(|_| GuestEnd::Unexpected("vCPU thread panicked".into()))
        });
        run.end = end;
        run.elapsed = start.elapsed();
        run
    }
}

/// The probe guest's run loop: returns at `hlt`, a fatal exit, an error, or `stop`.
fn vcpu_loop(vcpu: &mut VcpuFd, stop: &AtomicBool, outs: &mut Vec<OutEvent>) -> GuestEnd {
    // Bound on exits, in case a guest loops on I/O faster than the watchdog can stop it.
    const MAX_EXITS: usize = 100_000;
    for _ in 0..MAX_EXITS {
        if stop.load(Ordering::SeqCst) {
            let rip = vcpu.get_regs().ok().map(|r| r.rip);
            return GuestEnd::Timeout { rip };
        }
        let (port, value) = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => (port, data.first().copied().unwrap_or(0)),
            Ok(VcpuExit::IoIn(_, data)) => {
                data.fill(0xff);
                continue;
            }
            Ok(VcpuExit::Hlt) => return GuestEnd::Hlt,
            Ok(VcpuExit::Shutdown) => return GuestEnd::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _cpu)) => return GuestEnd::FailEntry { reason },
            Ok(VcpuExit::Hypercall(h)) => return GuestEnd::Hypercall { nr: h.nr },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so the kernel filled
                // the `internal` member of the exit union.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                return GuestEnd::InternalError { suberror };
            }
            Ok(other) => return GuestEnd::Unexpected(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return GuestEnd::RunError(e.to_string()),
        };
        let rax = (port == PORT_REPORT)
            .then(|| vcpu.get_regs().ok().map(|r| r.rax))
            .flatten();
        outs.push(OutEvent { port, value, rax });
    }
    GuestEnd::Unexpected(format!("more than {MAX_EXITS} exits"))
}

extern "C" fn kick_handler(_: libc::c_int) {}

/// Installs the no-op SIGUSR2 handler (without `SA_RESTART`, so `KVM_RUN` returns EINTR) once
/// per process.
fn install_kick_handler() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: an all-zero sigaction is a valid value (no handler, empty mask, no flags);
            // the fields that matter are set below.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = kick_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = 0;
            // SAFETY: `sa.sa_mask` is a valid sigset_t owned by this frame.
            unsafe { libc::sigemptyset(&mut sa.sa_mask) };
            // SAFETY: `sa` is fully initialised and its handler is async-signal-safe (it does
            // nothing); the old action is not needed.
            let rc = unsafe { libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(format!(
                    "installing the SIGUSR2 watchdog handler failed: {}",
                    io::Error::last_os_error()
                ))
            }
        })
        .clone()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    fn kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("skipped: /dev/kvm not usable: {e}");
                None
            }
        }
    }

    #[test]
    fn describe_disable_exits_decodes_bits() {
        assert_eq!(
            describe_cap(0xe, CapValue::DisableExits),
            "0xe = HLT|PAUSE|CSTATE"
        );
        assert_eq!(describe_cap(0, CapValue::DisableExits), "");
    }

    #[test]
    fn classify_pvm_from_module() {
        let cpl0 = Probe::new("cpl0-emulated", true, "x");
        let (f, ev) = classify_flavour("flags\t: fpu hypervisor\n", &cpl0);
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(f, "nested-pvm");
        }
        assert!(ev[0].contains("hypervisor=yes"));
    }

    #[test]
    fn probe_guest_runs_outs_and_halts() {
        let Some(kvm) = kvm() else { return };
        let mut g = ProbeGuest::new(&kvm, &ProbeGuest::outs_code(5)).unwrap();
        let run = g.run(Duration::from_secs(2), |_| {});
        assert_eq!(run.count_outs(PORT_COUNT), 5, "{run:?}");
        assert_eq!(run.end, GuestEnd::Hlt, "{run:?}");
    }

    #[test]
    fn probe_guest_ud_goes_to_stub() {
        let Some(kvm) = kvm() else { return };
        let mut g = ProbeGuest::new(&kvm, &[0x0f, 0x0b]).unwrap(); // ud2
        let run = g.run(Duration::from_secs(2), |_| {});
        assert_eq!(run.count_outs(PORT_UD), 1, "{run:?}");
        assert_eq!(run.end, GuestEnd::Hlt, "{run:?}");
    }

    #[test]
    fn watchdog_stops_a_spinning_guest() {
        let Some(kvm) = kvm() else { return };
        let mut g = ProbeGuest::new(&kvm, &[0xeb, 0xfe]).unwrap(); // jmp $
        let run = g.run(Duration::from_millis(50), |_| {});
        assert!(matches!(run.end, GuestEnd::Timeout { .. }), "{run:?}");
        assert!(run.elapsed < Duration::from_millis(500), "{run:?}");
    }

    #[test]
    fn probe_reports_this_host() {
        if kvm().is_none() {
            return;
        }
        let t = Instant::now();
        let caps = probe().unwrap();
        let took = t.elapsed();
        eprintln!("{}", caps.render_table());
        eprintln!("probe took {took:?}");
        assert!(caps.kvm_api_version == 12);
        assert!(caps.capabilities.iter().any(|p| p.name == "IRQCHIP"));
        let info = caps.to_host_info();
        assert_eq!(info.kvm_flavour, caps.flavour);
        assert!(info.caps.contains_key("probe.hypercalls"));
        assert!(!caps.enlightenments.is_empty());
        // On a nested PVM host the probes must find what is known of it (DESIGN.md §6):
        // emulated CPL0 and no working hypercalls, and hypercall enlightenments unsupported.
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(caps.flavour, "nested-pvm");
            assert!(caps.cpl0_emulated.supported, "{:?}", caps.cpl0_emulated);
            assert!(!caps.hypercalls.supported, "{:?}", caps.hypercalls);
            let pv_ipi = caps
                .enlightenments
                .iter()
                .find(|e| e.name == "pv-ipi")
                .unwrap();
            assert!(!pv_ipi.supported && !pv_ipi.reason.is_empty(), "{pv_ipi:?}");
        }
    }
}
