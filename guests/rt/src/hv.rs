//! Talking to the VMM: ending the run, phase markers, and hypervisor detection.

use hvlab_protocol::{EXIT_PORT, PHASE_END, PHASE_PORT};

use crate::cpu::{cli, cpuid, cpuid_signature, hlt, outl};

/// Ends the run with `status`. If the VMM ignores the exit port, the CPU halts with interrupts
/// off for good, which the VMM's watchdog ends.
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    loop {
        cli();
        hlt();
    }
}

/// Marks the start of phase `id`.
#[inline(always)]
pub fn phase_begin(id: u32) {
    outl(PHASE_PORT, id);
}

/// Marks the end of phase `id`.
#[inline(always)]
pub fn phase_end(id: u32) {
    outl(PHASE_PORT, id | PHASE_END);
}

/// What the guest learned about the hypervisor from CPUID.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hypervisor {
    /// CPUID.1:ECX[31].
    pub present: bool,
    /// Signature of leaf 0x40000000 ("KVMKVMKVM" under KVM, "Microsoft Hv" with Hyper-V leaves).
    pub signature: [u8; 12],
    /// Highest hypervisor leaf.
    pub max_leaf: u32,
    /// KVM feature bits (EAX of the leaf after KVM's signature leaf, found as Linux finds it).
    pub kvm_features: u32,
    /// hv's own enlightenment bits (leaf HV_CPUID_BASE + 1 EAX) when hv's signature is present.
    pub hv_features: Option<u32>,
}

impl Hypervisor {
    /// Detects the hypervisor the way Linux and Windows do: the CPUID "hypervisor present" bit,
    /// then the vendor leaves.
    pub fn detect() -> Hypervisor {
        let present = cpuid(1, 0).ecx & (1 << 31) != 0;
        if !present {
            return Hypervisor::default();
        }
        let (sig, max_leaf) = cpuid_signature(0x4000_0000);
        // KVM's leaves sit at 0x40000100 when Hyper-V's are shown; hv's move along too.
        let kvm_features = crate::pv::kvm_cpuid_base().map_or(0, |b| cpuid(b + 1, 0).eax);
        let hv_features = crate::pv::hv_cpuid_base().map(|b| cpuid(b + 1, 0).eax);
        Hypervisor {
            present,
            signature: sig,
            max_leaf,
            kvm_features,
            hv_features,
        }
    }

    /// The signature as text (non-printable bytes dropped).
    pub fn signature_str(&self) -> &str {
        let end = self.signature.iter().position(|&b| b == 0).unwrap_or(12);
        core::str::from_utf8(&self.signature[..end]).unwrap_or("?")
    }
}
