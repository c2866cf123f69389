//! Cheap host facts for run records (the full probe with test guests is `caps`).

use std::path::Path;

use crate::record::HostInfo;

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// First `model name` in /proc/cpuinfo.
pub fn cpu_model() -> String {
    cpuinfo_field("model name").unwrap_or_default()
}

fn cpuinfo_field(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Online host CPUs.
pub fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// How KVM runs guests here, from what the host shows: the KVM vendor module loaded and the
/// CPU's virtualization flags. (`hv caps` adds a behavioural probe on top.)
pub fn kvm_flavour() -> (String, Vec<String>) {
    let mut evidence = Vec::new();
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let flags = cpuinfo_field("flags").unwrap_or_default();
    let has_flag = |f: &str| flags.split_ascii_whitespace().any(|x| x == f);
    for m in ["kvm_pvm", "kvm_intel", "kvm_amd"] {
        if module(m) {
            evidence.push(format!("module {m} loaded"));
        }
    }
    for f in ["vmx", "svm", "hypervisor"] {
        if has_flag(f) {
            evidence.push(format!("cpu flag {f}"));
        }
    }
    let flavour = if module("kvm_pvm") {
        "nested-pvm"
    } else if module("kvm_intel") && has_flag("vmx") {
        "hardware-vmx"
    } else if module("kvm_amd") && has_flag("svm") {
        "hardware-svm"
    } else {
        "unknown"
    };
    (flavour.to_string(), evidence)
}

/// Host facts without capability probes.
pub fn host_info() -> HostInfo {
    HostInfo {
        kernel: kernel_release(),
        cpu_model: cpu_model(),
        cores: cores(),
        kvm_flavour: kvm_flavour().0,
        caps: Default::default(),
    }
}
