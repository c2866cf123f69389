//! `pv-tlb-flush`: PV TLB flush: instead of an IPI to a preempted vCPU, set a flag in its steal-time record; KVM flushes its TLB before it runs again

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PvTlbFlush;

impl Enlightenment for PvTlbFlush {
    fn name(&self) -> &'static str {
        "pv-tlb-flush"
    }
    fn description(&self) -> &'static str {
        "PV TLB flush: instead of an IPI to a preempted vCPU, set a flag in its steal-time record; KVM flushes its TLB before it runs again"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_PV_TLB_FLUSH together with KVM_FEATURE_STEAL_TIME (the flag lives in the steal-time record); KVM flushes on the next steal-time update"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "PV TLB flush with steal time")
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_PV_TLB_FLUSH) | kvm_pv::bit(kvm_pv::FEATURE_STEAL_TIME)
    }
}
