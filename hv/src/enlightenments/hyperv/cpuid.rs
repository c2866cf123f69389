//! The Hyper-V CPUID leaves 0x40000000-0x40000005, carrying only the bits of the Hyper-V
//! enlightenments switched on, and the move of KVM's own leaves to 0x40000100 (as QEMU does
//! when it shows Hyper-V leaves), so KVM PV features and Hyper-V ones combine.

use hvlab_protocol::hyperv as tlfs;
use kvm_bindings::kvm_cpuid_entry2;

use super::Features;

/// Version reported in leaf 0x40000002 (EAX build, EBX major.minor): hv reports itself as an
/// implementation of TLFS 6.0 (the version QEMU reports too), build 0.
const VERSION_MAJOR_MINOR: u32 = 6 << 16;

/// Leaf 0x40000004 EBX when hv-spinlocks is on: the guest notifies after this many retries.
pub const SPIN_RETRIES: u32 = 0x1000;

fn sig(b: &[u8; 12], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// (privileges EAX, features EDX, recommendations EAX) for `f`.
pub(crate) fn bits(f: Features) -> (u32, u32, u32) {
    let mut privs = tlfs::PRIV_HYPERCALL_MSRS;
    let mut edx = 0;
    let mut rec = 0;
    if f.has(Features::VPINDEX) {
        privs |= tlfs::PRIV_VP_INDEX;
    }
    if f.has(Features::TIME) {
        privs |= tlfs::PRIV_TIME_REF_COUNT | tlfs::PRIV_REFERENCE_TSC;
    }
    if f.has(Features::FREQUENCIES) {
        privs |= tlfs::PRIV_FREQUENCY_MSRS;
        edx |= tlfs::FEAT_FREQUENCY_MSRS;
    }
    if f.has(Features::TLBFLUSH) {
        rec |= tlfs::REC_REMOTE_TLB_FLUSH;
    }
    if f.has(Features::TLBFLUSH_EXT) || f.has(Features::IPI) {
        rec |= tlfs::REC_EX_PROCESSOR_MASKS;
    }
    if f.has(Features::IPI) {
        rec |= tlfs::REC_CLUSTER_IPI;
    }
    if f.has(Features::RELAXED) {
        rec |= tlfs::REC_RELAXED_TIMING;
    }
    if f.has(Features::SYNIC) {
        // hv cannot honour auto-EOI (see `synic`): recommend not relying on it.
        privs |= tlfs::PRIV_SYNIC_MSRS;
        rec |= tlfs::REC_DEPRECATING_AEOI;
    }
    if f.has(Features::STIMER) {
        privs |= tlfs::PRIV_SYNTIMER_MSRS;
    }
    if f.has(Features::STIMER_DIRECT) {
        edx |= tlfs::FEAT_STIMER_DIRECT;
    }
    (privs, edx, rec)
}

/// Leaf 0x40000003 EBX (partition privileges): the SynIC's two hypercalls.
fn privs_ebx(f: Features) -> u32 {
    if f.has(Features::SYNIC) {
        tlfs::PRIV_POST_MESSAGES | tlfs::PRIV_SIGNAL_EVENTS
    } else {
        0
    }
}

/// The six Hyper-V leaves for a partition of `vcpus` vCPUs.
pub(crate) fn leaves(f: Features, vcpus: u32) -> [kvm_cpuid_entry2; 6] {
    let (privs, edx, rec) = bits(f);
    let leaf = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    let v = &tlfs::VENDOR;
    [
        leaf(
            tlfs::CPUID_VENDOR,
            tlfs::CPUID_LIMITS,
            sig(v, 0),
            sig(v, 4),
            sig(v, 8),
        ),
        leaf(tlfs::CPUID_INTERFACE, tlfs::INTERFACE_HV1, 0, 0, 0),
        leaf(tlfs::CPUID_VERSION, 0, VERSION_MAJOR_MINOR, 0, 0),
        leaf(tlfs::CPUID_FEATURES, privs, privs_ebx(f), 0, edx),
        leaf(
            tlfs::CPUID_RECOMMENDATIONS,
            rec,
            if f.has(Features::SPINLOCKS) {
                SPIN_RETRIES
            } else {
                tlfs::SPIN_NEVER
            },
            0,
            0,
        ),
        leaf(tlfs::CPUID_LIMITS, vcpus, vcpus, 0, 0),
    ]
}

/// Moves KVM's leaves (0x40000000 and 0x40000001, KVM's signature and feature bits) to
/// `tlfs::KVM_CPUID_BASE_BEHIND_HYPERV`, fixing the max-leaf value, so that the Hyper-V leaves
/// can take 0x40000000. Errors when something already sits there.
pub(crate) fn move_kvm_leaves(entries: &mut [kvm_cpuid_entry2]) -> Result<(), String> {
    let to = tlfs::KVM_CPUID_BASE_BEHIND_HYPERV;
    if entries
        .iter()
        .any(|e| e.function == to || e.function == to + 1)
    {
        return Err(format!("CPUID already has entries at {to:#x}"));
    }
    for e in entries.iter_mut() {
        match e.function {
            0x4000_0000 => {
                e.function = to;
                e.eax = to + 1;
            }
            0x4000_0001 => e.function = to + 1,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn leaves_say_microsoft_hv1_and_only_the_bits_switched_on() {
        let l = leaves(Features(Features::VPINDEX | Features::TLBFLUSH), 4);
        let mut v = Vec::new();
        for r in [l[0].ebx, l[0].ecx, l[0].edx] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&v, b"Microsoft Hv");
        assert!(l[0].eax >= 0x4000_0005);
        assert_eq!(&l[1].eax.to_le_bytes(), b"Hv#1");
        assert_eq!(l[3].eax, tlfs::PRIV_HYPERCALL_MSRS | tlfs::PRIV_VP_INDEX);
        assert_eq!(l[3].edx, 0);
        assert_eq!(l[4].eax, tlfs::REC_REMOTE_TLB_FLUSH);
        assert_eq!(l[4].ebx, tlfs::SPIN_NEVER);
        assert_eq!((l[5].eax, l[5].ebx), (4, 4));
        for (i, e) in l.iter().enumerate() {
            assert_eq!(e.function, 0x4000_0000 + i as u32);
        }
        let all = Features(Features::BASE);
        let l = leaves(all, 2);
        assert_eq!(
            l[3].eax,
            tlfs::PRIV_HYPERCALL_MSRS
                | tlfs::PRIV_VP_INDEX
                | tlfs::PRIV_TIME_REF_COUNT
                | tlfs::PRIV_REFERENCE_TSC
                | tlfs::PRIV_FREQUENCY_MSRS
        );
        assert_eq!(l[3].edx, tlfs::FEAT_FREQUENCY_MSRS);
        assert_eq!(
            l[4].eax,
            tlfs::REC_REMOTE_TLB_FLUSH
                | tlfs::REC_EX_PROCESSOR_MASKS
                | tlfs::REC_CLUSTER_IPI
                | tlfs::REC_RELAXED_TIMING
        );
        assert_eq!(l[4].ebx, SPIN_RETRIES);
    }

    #[test]
    fn synic_and_stimer_bits() {
        let f = Features(Features::SYNIC | Features::STIMER | Features::STIMER_DIRECT);
        let l = leaves(f, 1);
        assert_eq!(
            l[3].eax,
            tlfs::PRIV_HYPERCALL_MSRS | tlfs::PRIV_SYNIC_MSRS | tlfs::PRIV_SYNTIMER_MSRS
        );
        assert_eq!(
            l[3].ebx,
            tlfs::PRIV_POST_MESSAGES | tlfs::PRIV_SIGNAL_EVENTS
        );
        assert_eq!(l[3].edx, tlfs::FEAT_STIMER_DIRECT);
        assert_eq!(l[4].eax, tlfs::REC_DEPRECATING_AEOI);
        assert_eq!(leaves(Features(Features::VPINDEX), 1)[3].ebx, 0);
    }

    #[test]
    fn kvm_leaves_move_to_0x40000100() {
        let mut e = vec![
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ebx: 0x4b4d_564b,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0x1234,
                ..Default::default()
            },
        ];
        move_kvm_leaves(&mut e).unwrap();
        assert_eq!(
            (e[0].function, e[0].eax, e[0].ebx),
            (0x4000_0100, 0x4000_0101, 0x4b4d_564b)
        );
        assert_eq!((e[1].function, e[1].eax), (0x4000_0101, 0x1234));
        assert!(move_kvm_leaves(&mut e).is_err());
    }
}
