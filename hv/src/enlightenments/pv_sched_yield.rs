//! `pv-sched-yield`: PV sched yield: a vCPU whose IPI target is preempted yields to it with the SCHED_YIELD hypercall

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct PvSchedYield;

impl Enlightenment for PvSchedYield {
    fn name(&self) -> &'static str {
        "pv-sched-yield"
    }
    fn description(&self) -> &'static str {
        "PV sched yield: a vCPU whose IPI target is preempted yields to it with the SCHED_YIELD hypercall"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Hypercall]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_PV_SCHED_YIELD; KVM serves KVM_HC_SCHED_YIELD (directed yield) in the kernel"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "PV sched yield")?;
        probe::hypercalls_work(kvm)
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_PV_SCHED_YIELD)
    }
}
