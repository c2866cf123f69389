//! `pv-unhalt`: PV unhalt: a spinlock waiter halts and the releasing holder wakes it with the KICK_CPU hypercall

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PvUnhalt;

impl Enlightenment for PvUnhalt {
    fn name(&self) -> &'static str {
        "pv-unhalt"
    }
    fn description(&self) -> &'static str {
        "PV unhalt: a spinlock waiter halts and the releasing holder wakes it with the KICK_CPU hypercall"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Hypercall]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_PV_UNHALT; KVM serves KVM_HC_KICK_CPU in the kernel"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "PV unhalt")?;
        probe::hypercalls_work(kvm)
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_PV_UNHALT)
    }
}
