//! `x2apic`: x2APIC: APIC registers as MSRs (one ICR write per IPI) instead of xAPIC MMIO

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct X2apic;

impl Enlightenment for X2apic {
    fn name(&self) -> &'static str {
        "x2apic"
    }
    fn description(&self) -> &'static str {
        "x2APIC: APIC registers as MSRs (one ICR write per IPI) instead of xAPIC MMIO"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "KVM offers x2APIC in CPUID.1:ECX[21]; hv cannot hide it on hosts that ignore KVM_SET_CPUID2 for leaf 1, so when x2apic is off hv tells the guest apic=xapic on its command line"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        match probe::supported_leaf(kvm, 1) {
            Some(e) if e.ecx & (1 << 21) != 0 => Ok(()),
            _ => Err("KVM does not offer x2APIC (CPUID.1:ECX[21])".into()),
        }
    }
    fn cmdline_when_off(&self) -> &'static [&'static str] {
        &["apic=xapic"]
    }
}
