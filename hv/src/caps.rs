//! Host capability report (`hv caps`): what this host's KVM offers and, where advertising is not
//! enough, what it actually does.
//!
//! Two kinds of answers:
//! - **advertised**: `KVM_CHECK_EXTENSION` and `KVM_GET_SUPPORTED_CPUID`. Cheap, but a nested or
//!   paravirtual KVM (kvm_pvm) advertises things that do not work.
//! - **behavioural**: CPL0 instruction emulation and hypercall instructions, measured by the
//!   probe guests of [`crate::host_probe`] (which run through the partition code like any guest,
//!   each under a watchdog, so the probe cannot hang).
//!
//! This module only gathers those facts and formats them (table, JSON, run-record summary); it
//! runs no guest itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use serde::Serialize;

use crate::counters::kvm_stats::KvmStatsReader;
use crate::counters::tracepoints;
use crate::host;
use crate::host_probe::{self, HypercallInsn};
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
    let cpl0 = host_probe::cpl0_emulation(&kvm);
    let cpl0_emulated = Probe::new("cpl0-emulated", cpl0.emulated == Some(true), cpl0.detail);
    let hypercalls = hypercalls(&kvm);
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
    let stats_fd = stats_fd(&vm);

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

fn stats_fd(vm: &VmFd) -> Probe {
    let vm_stats = match KvmStatsReader::for_vm(vm) {
        Ok(r) => r,
        Err(e) => return Probe::new("stats-fd", false, e.to_string()),
    };
    // A vCPU on this probe-only VM: it never runs.
    let vcpu = match vm.create_vcpu(0) {
        Ok(v) => v,
        Err(e) => return Probe::new("stats-fd", false, format!("KVM_CREATE_VCPU failed: {e}")),
    };
    match KvmStatsReader::for_vcpu(&vcpu) {
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

/// Whether `vmcall` / `vmmcall` reach a hypercall handler (`host_probe`'s cached answers).
fn hypercalls(kvm: &Kvm) -> Probe {
    let vmcall = host_probe::hypercall_outcome(kvm, HypercallInsn::Vmcall);
    let vmmcall = host_probe::hypercall_outcome(kvm, HypercallInsn::Vmmcall);
    Probe::new(
        "hypercalls",
        vmcall.works() || vmmcall.works(),
        format!("vmcall: {}; vmmcall: {}", vmcall.detail(), vmmcall.detail()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

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
    fn probe_reports_this_host() {
        // Fails (naming the fix) rather than passing without /dev/kvm.
        let _ = crate::error::kvm_for_tests();
        let t = std::time::Instant::now();
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
        // On a nested PVM host the probes must find what is known of it:
        // emulated CPL0 and no working hypercalls, and hypercall enlightenments unsupported.
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(caps.flavour, "nested-pvm");
            assert!(caps.cpl0_emulated.supported, "{:?}", caps.cpl0_emulated);
            assert!(!caps.hypercalls.supported, "{:?}", caps.hypercalls);
            // The probe guests' evidence: ~1 insn_emulation per CPL0 NOP, vmcall never
            // returning within the watchdog, vmmcall raising #UD.
            assert!(
                caps.cpl0_emulated.detail.starts_with("insn_emulation +"),
                "{:?}",
                caps.cpl0_emulated
            );
            assert!(
                caps.flavour_evidence
                    .iter()
                    .any(|e| e.starts_with("CPL0 emulated: yes (insn_emulation +")),
                "{:?}",
                caps.flavour_evidence
            );
            let d = &caps.hypercalls.detail;
            assert!(
                d.starts_with("vmcall: hangs: rip stays at the instruction")
                    && d.contains("until the watchdog (150 ms)")
                    && d.ends_with("vmmcall: #UD"),
                "{d}"
            );
            let pv_ipi = caps
                .enlightenments
                .iter()
                .find(|e| e.name == "pv-ipi")
                .unwrap();
            assert!(!pv_ipi.supported && !pv_ipi.reason.is_empty(), "{pv_ipi:?}");
        }
    }
}
