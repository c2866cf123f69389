//! `tlb-flush-hypercall`: hv TLB-flush hypercall (cf. HvCallFlushVirtualAddressSpace): one exit flushes the TLBs of a set of vCPUs, with no interrupt to them

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism, probe};
#[allow(unused_imports)]
use hvlab_protocol::{hvcall, kvm_pv};

/// See the module documentation.
#[derive(Debug)]
pub struct TlbFlushHypercall;

impl Enlightenment for TlbFlushHypercall {
    fn name(&self) -> &'static str {
        "tlb-flush-hypercall"
    }
    fn description(&self) -> &'static str {
        "hv TLB-flush hypercall (cf. HvCallFlushVirtualAddressSpace): one exit flushes the TLBs of a set of vCPUs, with no interrupt to them"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::HvInterface]
    }
    fn host_side(&self) -> &'static str {
        "filters hv's hypercall MSR to userspace; CALL_FLUSH_TLB marks the targets, kicks running ones out of KVM_RUN and waits until each is out; each target drops its translations with a KVM_SET_SREGS that toggles CR4.PGE (KVM resets its MMU context and flushes) before it next enters the guest"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        probe::hv_interface(kvm)
    }
    fn hv_bits(&self) -> u32 {
        hvcall::FEATURE_TLB_FLUSH
    }
}
