//! `pv-ipi`: PV IPI: one SEND_IPI hypercall sends an interrupt to up to 128 vCPUs

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PvIpi;

impl Enlightenment for PvIpi {
    fn name(&self) -> &'static str {
        "pv-ipi"
    }
    fn description(&self) -> &'static str {
        "PV IPI: one SEND_IPI hypercall sends an interrupt to up to 128 vCPUs"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Hypercall]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_PV_SEND_IPI; KVM serves KVM_HC_SEND_IPI in the kernel"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "PV send-IPI")?;
        probe::hypercalls_work(kvm)
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_PV_SEND_IPI)
    }
}
