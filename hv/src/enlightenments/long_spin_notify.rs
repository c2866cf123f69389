//! `long-spin-notify`: hv long-spin notify (cf. HvCallNotifyLongSpinWait): a spinner tells hv, which deschedules its vCPU thread until the lock word changes, a release is signalled, or a bound passes

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::{hvcall, kvm_pv};

/// See the module documentation.
#[derive(Debug)]
pub struct LongSpinNotify;

impl Enlightenment for LongSpinNotify {
    fn name(&self) -> &'static str {
        "long-spin-notify"
    }
    fn description(&self) -> &'static str {
        "hv long-spin notify (cf. HvCallNotifyLongSpinWait): a spinner tells hv, which deschedules its vCPU thread until the lock word changes, a release is signalled, or a bound passes"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::HvInterface]
    }
    fn host_side(&self) -> &'static str {
        "filters hv's hypercall MSR to userspace; CALL_LONG_SPIN_WAIT parks the vCPU thread on a condition variable, CALL_SPIN_RELEASE wakes it"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::hv_interface(kvm)
    }
    fn hv_bits(&self) -> u32 {
        hvcall::FEATURE_LONG_SPIN_NOTIFY
    }
}
