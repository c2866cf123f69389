//! The kernel backend (`--hyperv-backend kernel`): KVM's in-kernel Hyper-V emulation serves the
//! same interface hv serves in userspace, so one guest and one set of calls can be compared
//! userspace vs in-kernel.
//!
//! What it takes, as QEMU's `target/i386/kvm` does it for its `hv-*` flags:
//! - the KVM capabilities each flag needs ([`caps_for`]), plus KVM_CAP_HYPERV and
//!   KVM_CAP_SYS_HYPERV_CPUID (the system form of KVM_GET_SUPPORTED_HV_CPUID, Linux 5.11);
//! - the Hyper-V CPUID leaves: hv builds the same leaves as for its own backend
//!   ([`super::cpuid::leaves`]) and checks each bit a flag sets against the list KVM reports
//!   ([`check_leaves`]), so KVM is never shown a feature it does not implement. KVM switches its
//!   Hyper-V emulation on when it sees "Hv#1" at 0x40000001 (`kvm_hv_set_cpuid`), and finds its
//!   own PV leaves at 0x40000100 by signature, as QEMU arranges too;
//! - no MSR filter and no hypercall transport: GUEST_OS_ID, HYPERCALL (KVM writes its own
//!   hypercall page: `vmcall`/`vmmcall`), REFERENCE_TSC and TIME_REF_COUNT are KVM's;
//! - per vCPU ([`setup_vcpu`]): KVM_CAP_HYPERV_ENFORCE_CPUID when offered (KVM then refuses
//!   MSRs and hypercalls the CPUID does not show, as hv does) and VP_INDEX = the vCPU index
//!   (KVM_SET_MSRS, as QEMU sets it).
//!
//! No flag hv offers needs the SynIC (KVM_CAP_HYPERV_SYNIC2 is for `hv-synic`/`hv-stimer`,
//! which hv does not offer), so it is not enabled.

use kvm_bindings as kb;
use kvm_bindings::{CpuId, kvm_cpuid_entry2};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_iowr_nr;

use super::Features;
use super::cpuid;
use hvlab_protocol::hyperv as tlfs;

// KVM_GET_SUPPORTED_HV_CPUID: _IOWR(KVMIO, 0xc1, struct kvm_cpuid2), system ioctl with
// KVM_CAP_SYS_HYPERV_CPUID (Documentation/virt/kvm/api.rst 4.118).
ioctl_iowr_nr!(KVM_GET_SUPPORTED_HV_CPUID, kb::KVMIO, 0xc1, kb::kvm_cpuid2);

/// Entries to make room for: KVM returns about a dozen Hyper-V leaves (0x40000000-0x4000000a,
/// 0x40000080-82); E2BIG past this.
const MAX_HV_ENTRIES: usize = 64;

/// Capabilities every kernel-backend partition needs.
const BASE_CAPS: &[(u32, &str)] = &[
    (kb::KVM_CAP_HYPERV, "KVM_CAP_HYPERV"),
    (kb::KVM_CAP_SYS_HYPERV_CPUID, "KVM_CAP_SYS_HYPERV_CPUID"),
];

/// The KVM capabilities the flag with [`Features`] bit `bit` needs from the kernel (beyond
/// [`BASE_CAPS`]), as QEMU's `kvm_hyperv_properties` ties its flags to them.
pub fn caps_for(bit: u32) -> &'static [(u32, &'static str)] {
    match bit {
        Features::VPINDEX => &[(kb::KVM_CAP_HYPERV_VP_INDEX, "KVM_CAP_HYPERV_VP_INDEX")],
        Features::TIME => &[(kb::KVM_CAP_HYPERV_TIME, "KVM_CAP_HYPERV_TIME")],
        Features::TLBFLUSH | Features::TLBFLUSH_EXT => {
            &[(kb::KVM_CAP_HYPERV_TLBFLUSH, "KVM_CAP_HYPERV_TLBFLUSH")]
        }
        Features::IPI => &[(kb::KVM_CAP_HYPERV_SEND_IPI, "KVM_CAP_HYPERV_SEND_IPI")],
        // Frequency MSRs, spinlock retries and relaxed timing are CPUID bits KVM has served
        // since KVM_CAP_HYPERV; KVM_GET_SUPPORTED_HV_CPUID says whether each is there.
        _ => &[],
    }
}

/// The capabilities `features` needs that `has` says are missing, in a stable order without
/// duplicates (empty: all there).
pub fn missing_caps(features: Features, has: impl Fn(u32) -> bool) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let per_flag = (0..32)
        .map(|i| 1u32 << i)
        .filter(|b| features.has(*b))
        .flat_map(caps_for);
    for &(cap, name) in BASE_CAPS.iter().chain(per_flag) {
        if !has(cap) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Checks the leaves hv would show for `features` against KVM's supported Hyper-V leaves: every
/// bit hv sets in 0x40000003 EAX/EDX and 0x40000004 EAX must be in KVM's. Returns the leaves,
/// or the reason naming the first register with bits KVM lacks.
pub fn check_leaves(
    features: Features,
    vcpus: u32,
    supported: &[kvm_cpuid_entry2],
) -> Result<[kvm_cpuid_entry2; 6], String> {
    let leaves = cpuid::leaves(features, vcpus);
    let find = |f: u32| supported.iter().find(|e| e.function == f && e.index == 0);
    let interface = find(tlfs::CPUID_INTERFACE).map_or(0, |e| e.eax);
    if interface != tlfs::INTERFACE_HV1 {
        return Err("KVM_GET_SUPPORTED_HV_CPUID lists no \"Hv#1\" interface leaf".into());
    }
    let checks = [
        (tlfs::CPUID_FEATURES, "0x40000003 EAX (privileges)", 0usize),
        (tlfs::CPUID_FEATURES, "0x40000003 EDX (features)", 3),
        (
            tlfs::CPUID_RECOMMENDATIONS,
            "0x40000004 EAX (recommendations)",
            0,
        ),
    ];
    for (function, what, reg) in checks {
        let ours = leaves
            .iter()
            .find(|e| e.function == function)
            .map_or(0, |e| register(e, reg));
        let kvm = find(function).map_or(0, |e| register(e, reg));
        let lacking = ours & !kvm;
        if lacking != 0 {
            return Err(format!(
                "KVM's Hyper-V CPUID lacks bits {lacking:#x} of {what} that the set needs"
            ));
        }
    }
    let max_vps = find(tlfs::CPUID_LIMITS).map_or(0, |e| e.eax);
    if max_vps != 0 && vcpus > max_vps {
        return Err(format!(
            "KVM's Hyper-V emulation allows {max_vps} virtual processors, the partition has {vcpus}"
        ));
    }
    Ok(leaves)
}

fn register(e: &kvm_cpuid_entry2, reg: usize) -> u32 {
    match reg {
        0 => e.eax,
        1 => e.ebx,
        2 => e.ecx,
        _ => e.edx,
    }
}

/// KVM's supported Hyper-V CPUID leaves (KVM_GET_SUPPORTED_HV_CPUID, system form).
pub fn supported_hv_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, String> {
    let mut cpuid = CpuId::new(MAX_HV_ENTRIES)
        .map_err(|e| format!("cannot allocate the Hyper-V CPUID buffer: {e:?}"))?;
    // SAFETY: the kernel writes at most `nent` (MAX_HV_ENTRIES) entries into the buffer the
    // FamStructWrapper owns and updates `nent`; the fd is /dev/kvm, for which this is a system
    // ioctl (KVM_CAP_SYS_HYPERV_CPUID, checked by the caller).
    let ret = unsafe {
        ioctl_with_mut_ptr(
            kvm,
            KVM_GET_SUPPORTED_HV_CPUID(),
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    if ret < 0 {
        return Err(format!(
            "KVM_GET_SUPPORTED_HV_CPUID: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(cpuid.as_slice().to_vec())
}

/// `Ok` when this host's KVM can serve `features` for `vcpus` vCPUs in the kernel, else why not.
pub fn probe(kvm: &Kvm, features: Features, vcpus: u32) -> Result<(), String> {
    // KVM's SynIC needs KVM_CAP_HYPERV_SYNIC2 enabled per vCPU and KVM_EXIT_HYPERV handling,
    // which this backend does not do: refuse rather than expose a SynIC nobody serves.
    let synic = Features::SYNIC | Features::STIMER | Features::STIMER_DIRECT;
    if features.0 & synic != 0 {
        return Err(
            "the kernel Hyper-V backend does not serve hv-synic/hv-stimer (hv's user backend does)"
                .into(),
        );
    }
    let missing = missing_caps(features, |c| {
        kvm.check_extension_raw(libc::c_ulong::from(c)) > 0
    });
    if !missing.is_empty() {
        return Err(format!(
            "the kernel Hyper-V backend needs {}, which this host's KVM lacks",
            missing.join(", ")
        ));
    }
    let supported = supported_hv_cpuid(kvm)?;
    check_leaves(features, vcpus.max(1), &supported).map(|_| ())
}

/// Per vCPU, after KVM_SET_CPUID2: KVM_CAP_HYPERV_ENFORCE_CPUID when KVM offers it, and
/// VP_INDEX = `index`.
pub fn setup_vcpu(kvm: &Kvm, fd: &VcpuFd, index: u32) -> Result<(), String> {
    if kvm.check_extension_raw(libc::c_ulong::from(kb::KVM_CAP_HYPERV_ENFORCE_CPUID)) > 0 {
        let cap = kb::kvm_enable_cap {
            cap: kb::KVM_CAP_HYPERV_ENFORCE_CPUID,
            args: [1, 0, 0, 0],
            ..Default::default()
        };
        fd.enable_cap(&cap)
            .map_err(|e| format!("enabling KVM_CAP_HYPERV_ENFORCE_CPUID on vCPU {index}: {e}"))?;
    }
    let msrs = kb::Msrs::from_entries(&[kb::kvm_msr_entry {
        index: tlfs::MSR_VP_INDEX,
        data: u64::from(index),
        ..Default::default()
    }])
    .map_err(|e| format!("cannot build the VP_INDEX MSR list: {e:?}"))?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => Err(format!(
            "KVM refused VP_INDEX {index} (is KVM_CAP_HYPERV_VP_INDEX there?)"
        )),
        Err(e) => Err(format!("KVM_SET_MSRS (VP_INDEX {index}): {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            edx,
            ..Default::default()
        }
    }

    /// What a KVM with every Hyper-V feature hv offers would report (bits from the TLFS).
    fn full_kvm() -> Vec<kvm_cpuid_entry2> {
        let all = Features(Features::BASE);
        let (privs, edx, rec) = cpuid::bits(all);
        vec![
            entry(tlfs::CPUID_VENDOR, 0x4000_000a, 0),
            entry(tlfs::CPUID_INTERFACE, tlfs::INTERFACE_HV1, 0),
            // KVM reports more than hv uses (SynIC, stimer bits): extra bits are fine.
            entry(tlfs::CPUID_FEATURES, privs | 1 << 2 | 1 << 3, edx | 1 << 8),
            entry(tlfs::CPUID_RECOMMENDATIONS, rec | 1 << 9, 0),
            entry(tlfs::CPUID_LIMITS, 4096, 0),
        ]
    }

    #[test]
    fn each_flag_names_its_capability() {
        let none = |_| false;
        assert_eq!(
            missing_caps(Features(Features::VPINDEX | Features::IPI), none),
            vec![
                "KVM_CAP_HYPERV",
                "KVM_CAP_SYS_HYPERV_CPUID",
                "KVM_CAP_HYPERV_VP_INDEX",
                "KVM_CAP_HYPERV_SEND_IPI"
            ]
        );
        // Both flush flags need the one flush capability, listed once.
        let f = Features(Features::TLBFLUSH | Features::TLBFLUSH_EXT);
        let only_base = |c| c == kb::KVM_CAP_HYPERV || c == kb::KVM_CAP_SYS_HYPERV_CPUID;
        assert_eq!(missing_caps(f, only_base), vec!["KVM_CAP_HYPERV_TLBFLUSH"]);
        assert_eq!(
            missing_caps(Features(Features::TIME), only_base),
            vec!["KVM_CAP_HYPERV_TIME"]
        );
        // CPUID-only flags need the base capabilities and nothing else.
        let f = Features(Features::SPINLOCKS | Features::RELAXED | Features::FREQUENCIES);
        assert!(missing_caps(f, only_base).is_empty());
        assert!(missing_caps(f, |_| true).is_empty());
    }

    #[test]
    fn leaves_are_hvs_own_when_kvm_supports_every_bit() {
        let f = Features(Features::VPINDEX | Features::TLBFLUSH | Features::IPI);
        let l = check_leaves(f, 4, &full_kvm()).unwrap();
        assert_eq!(l, cpuid::leaves(f, 4));
        // Only the bits of the set, not KVM's extras.
        assert_eq!(
            l[3].eax,
            tlfs::PRIV_HYPERCALL_MSRS | tlfs::PRIV_VP_INDEX,
            "{:#x}",
            l[3].eax
        );
    }

    #[test]
    fn a_bit_kvm_lacks_is_refused_with_the_register_named() {
        let mut kvm = full_kvm();
        // A KVM without the cluster-IPI recommendation.
        kvm[3].eax &= !tlfs::REC_CLUSTER_IPI;
        let f = Features(Features::VPINDEX | Features::IPI);
        let why = check_leaves(f, 2, &kvm).unwrap_err();
        assert!(why.contains("0x40000004 EAX"), "{why}");
        assert!(
            why.contains(&format!("{:#x}", tlfs::REC_CLUSTER_IPI)),
            "{why}"
        );
        // Flags that do not need that bit still pass.
        assert!(check_leaves(Features(Features::VPINDEX), 2, &kvm).is_ok());
        // Without the reference TSC privilege hv-time is refused.
        let mut kvm = full_kvm();
        kvm[2].eax &= !tlfs::PRIV_REFERENCE_TSC;
        let why = check_leaves(Features(Features::TIME), 1, &kvm).unwrap_err();
        assert!(why.contains("0x40000003 EAX"), "{why}");
        // Frequencies need the EDX feature bit too.
        let mut kvm = full_kvm();
        kvm[2].edx = 0;
        let why = check_leaves(Features(Features::FREQUENCIES), 1, &kvm).unwrap_err();
        assert!(why.contains("0x40000003 EDX"), "{why}");
    }

    #[test]
    fn an_empty_or_foreign_list_and_too_many_vcpus_are_refused() {
        let f = Features(Features::VPINDEX);
        assert!(check_leaves(f, 1, &[]).unwrap_err().contains("Hv#1"));
        let mut kvm = full_kvm();
        kvm[1].eax = 0x1234;
        assert!(check_leaves(f, 1, &kvm).unwrap_err().contains("Hv#1"));
        let mut kvm = full_kvm();
        kvm[4].eax = 2;
        let why = check_leaves(f, 3, &kvm).unwrap_err();
        assert!(why.contains("allows 2 virtual processors"), "{why}");
    }

    #[test]
    fn probe_here_names_what_is_missing_or_passes() {
        // Needs /dev/kvm. This host's answer is whatever its KVM offers: either every cap is
        // there and the leaves check, or the reason names each missing capability.
        let kvm = crate::error::kvm_for_tests();
        let f = Features(Features::VPINDEX | Features::TLBFLUSH);
        match probe(&kvm, f, 2) {
            Ok(()) => assert!(
                missing_caps(f, |c| kvm.check_extension_raw(libc::c_ulong::from(c)) > 0).is_empty()
            ),
            Err(why) => {
                assert!(why.contains("KVM"), "{why}");
                eprintln!("kernel backend here: {why}");
            }
        }
    }
}
