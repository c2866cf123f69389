//! `steal-time`: steal time: KVM reports per vCPU how long it was runnable but not running, and whether it is preempted

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct StealTime;

impl Enlightenment for StealTime {
    fn name(&self) -> &'static str {
        "steal-time"
    }
    fn description(&self) -> &'static str {
        "steal time: KVM reports per vCPU how long it was runnable but not running, and whether it is preempted"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_STEAL_TIME; KVM updates the kvm_steal_time record the guest registers in MSR_KVM_STEAL_TIME on every entry"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "steal time")
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_STEAL_TIME)
    }
}
