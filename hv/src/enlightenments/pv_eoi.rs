//! `pv-eoi`: PV EOI: KVM sets a flag in guest memory when an interrupt needs no EOI exit; the guest clears it instead of writing the APIC

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PvEoi;

impl Enlightenment for PvEoi {
    fn name(&self) -> &'static str {
        "pv-eoi"
    }
    fn description(&self) -> &'static str {
        "PV EOI: KVM sets a flag in guest memory when an interrupt needs no EOI exit; the guest clears it instead of writing the APIC"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_PV_EOI; KVM honours the flag word registered in MSR_KVM_PV_EOI_EN (on some hosts, nested PVM included, KVM never sets the flag: no effect)"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "PV EOI")
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_PV_EOI)
    }
}
