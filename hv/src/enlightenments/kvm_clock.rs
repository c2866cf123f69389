//! `kvm-clock`: paravirtual clock: per-vCPU pvclock page (TSC scale + offset) the guest reads instead of timer ports

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct KvmClock;

impl Enlightenment for KvmClock {
    fn name(&self) -> &'static str {
        "kvm-clock"
    }
    fn description(&self) -> &'static str {
        "paravirtual clock: per-vCPU pvclock page (TSC scale + offset) the guest reads instead of timer ports"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::CpuidBit, Mechanism::Msr]
    }
    fn host_side(&self) -> &'static str {
        "exposes KVM_FEATURE_CLOCKSOURCE/CLOCKSOURCE2/CLOCKSOURCE_STABLE_BIT; KVM fills the page the guest registers in MSR_KVM_SYSTEM_TIME(_NEW)"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::kvm_pv_bits(kvm, self.kvm_pv_bits(), "kvm-clock")
    }
    fn kvm_pv_bits(&self) -> u32 {
        kvm_pv::bit(kvm_pv::FEATURE_CLOCKSOURCE)
            | kvm_pv::bit(kvm_pv::FEATURE_CLOCKSOURCE2)
            | kvm_pv::bit(kvm_pv::FEATURE_CLOCKSOURCE_STABLE_BIT)
    }
}
