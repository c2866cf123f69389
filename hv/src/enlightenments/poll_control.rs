//! `poll-control`: poll control: the guest tells KVM not to poll before blocking a halted vCPU (it polls itself)

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PollControl;

impl Enlightenment for PollControl {
    fn name(&self) -> &'static str {
        "poll-control"
    }
    fn description(&self) -> &'static str {
        "poll control: the guest tells KVM not to poll before blocking a halted vCPU (it polls itself)"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_POLL_CONTROL; KVM honours MSR_KVM_POLL_CONTROL (bit 0 clear = no host halt polling)"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "poll control")
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_POLL_CONTROL)
    }
}
