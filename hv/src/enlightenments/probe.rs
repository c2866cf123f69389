//! Host probes shared by the enlightenments: what KVM offers in CPUID, which capabilities it
//! has, and whether a hypercall instruction completes at all (`crate::host_probe`'s probe
//! guest, once per process).

use std::sync::OnceLock;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

use crate::host_probe::{self, HypercallInsn, HypercallOutcome};

/// CPUID `leaf` as KVM supports it, or `None`.
pub(crate) fn supported_leaf(kvm: &Kvm, leaf: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    static CACHE: OnceLock<Option<Vec<kvm_bindings::kvm_cpuid_entry2>>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .ok()
            .map(|c| c.as_slice().to_vec())
    });
    all.as_ref()?
        .iter()
        .find(|e| e.function == leaf && e.index == 0)
        .copied()
}

/// `Ok` when KVM offers every feature bit in `bits` (CPUID 0x40000001 EAX).
pub(crate) fn kvm_pv_bits(kvm: &Kvm, bits: u32, what: &str) -> Result<(), String> {
    let have = supported_leaf(kvm, 0x4000_0001).map_or(0, |e| e.eax);
    let missing = bits & !have;
    if missing == 0 {
        Ok(())
    } else {
        Err(format!(
            "KVM does not offer {what} (CPUID 0x40000001 EAX bits {missing:#x} missing; offered {have:#x})"
        ))
    }
}

/// `Ok` when KVM has capability `cap`.
pub(crate) fn cap(kvm: &Kvm, cap: Cap, what: &str) -> Result<(), String> {
    if kvm.check_extension(cap) {
        Ok(())
    } else {
        Err(format!("KVM lacks {what}"))
    }
}

/// hv's own MSR interface needs MSR exits to userspace for a filtered MSR.
pub(crate) fn hv_interface(kvm: &Kvm) -> Result<(), String> {
    cap(kvm, Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR")?;
    cap(kvm, Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER")
}

/// True on AMD/Hygon hosts, whose hypercall instruction is `vmmcall`.
pub(crate) fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

/// The host vendor's hypercall instruction: `vmmcall` on AMD/Hygon, `vmcall` elsewhere.
fn host_hypercall_insn() -> HypercallInsn {
    if host_is_amd() {
        HypercallInsn::Vmmcall
    } else {
        HypercallInsn::Vmcall
    }
}

/// `Ok` when the host vendor's hypercall instruction (vmcall, or vmmcall on AMD/Hygon) reaches
/// KVM's hypercall handler in a guest, as KVM's PV hypercalls need. The answer is the host
/// probe `hv caps` also reports (`host_probe::hypercall_outcome`: a probe guest under its
/// watchdog, run once per process).
pub fn hypercalls_work(kvm: &Kvm) -> Result<(), String> {
    let insn = host_hypercall_insn();
    let name = insn.name();
    match host_probe::hypercall_outcome(kvm, insn) {
        HypercallOutcome::Handled => Ok(()),
        HypercallOutcome::ExitToUserspace { nr } => Err(format!(
            "{name} exits to userspace (KVM_EXIT_HYPERCALL nr {nr:#x}) instead of KVM handling it"
        )),
        HypercallOutcome::Failed(why) => Err(format!(
            "a hypercall instruction does not complete on this host ({name}: {why})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_probe_is_caps_probe_for_this_vendor_and_cached() {
        // Needs /dev/kvm; without it there is nothing to check here.
        let kvm = crate::error::kvm_for_tests();
        let first = hypercalls_work(&kvm);
        let caps = host_probe::probe_hypercall_insn(&kvm, host_hypercall_insn());
        assert_eq!(
            first.is_ok(),
            caps == HypercallOutcome::Handled,
            "{first:?} vs {caps:?}"
        );
        if let Err(why) = &first {
            assert!(why.contains(&caps.detail()), "{why} / {}", caps.detail());
        }
        let t = std::time::Instant::now();
        assert_eq!(hypercalls_work(&kvm), first);
        assert!(t.elapsed() < std::time::Duration::from_millis(50), "cached");
    }
}
