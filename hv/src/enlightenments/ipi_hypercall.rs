//! `ipi-hypercall`: hv IPI hypercall (cf. HvCallSendSyntheticClusterIpi): one exit sends an interrupt to a set of vCPUs

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::{hvcall, kvm_pv};

/// See the module documentation.
#[derive(Debug)]
pub struct IpiHypercall;

impl Enlightenment for IpiHypercall {
    fn name(&self) -> &'static str {
        "ipi-hypercall"
    }
    fn description(&self) -> &'static str {
        "hv IPI hypercall (cf. HvCallSendSyntheticClusterIpi): one exit sends an interrupt to a set of vCPUs"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::HvInterface]
    }
    fn host_side(&self) -> &'static str {
        "filters hv's hypercall MSR to userspace; CALL_SEND_IPI delivers one KVM_SIGNAL_MSI per target"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::hv_interface(kvm)?;
        probe::cap(kvm, kvm_ioctls::Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI")
    }
    fn hv_bits(&self) -> u32 {
        hvcall::FEATURE_IPI
    }
}
