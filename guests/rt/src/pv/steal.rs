//! Steal time: KVM's per-vCPU `kvm_steal_time` record (steal ns, preempted flag). With
//! pv-tlb-flush, a flusher sets `VCPU_FLUSH_TLB` in a preempted target's record instead of
//! sending it an IPI; KVM flushes that vCPU before it runs again.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use hvlab_protocol::kvm_pv;

use crate::cpu::wrmsr;
use crate::entry::MAX_CPUS;

/// `struct kvm_steal_time` (64 bytes).
#[repr(C, align(64))]
pub struct StealTime {
    pub steal: AtomicU64,
    pub version: AtomicU32,
    pub flags: AtomicU32,
    pub preempted: AtomicU8,
    _pad: [u8; 47],
}

static AREAS: [StealTime; MAX_CPUS] = [const {
    StealTime {
        steal: AtomicU64::new(0),
        version: AtomicU32::new(0),
        flags: AtomicU32::new(0),
        preempted: AtomicU8::new(0),
        _pad: [0; 47],
    }
}; MAX_CPUS];

/// Registers CPU `index`'s record.
pub fn enable(index: u32) {
    if let Some(a) = AREAS.get(index as usize) {
        wrmsr(
            kvm_pv::MSR_KVM_STEAL_TIME,
            a as *const StealTime as u64 | kvm_pv::MSR_ENABLED,
        );
    }
}

/// Steal time of CPU `index` so far, ns.
pub fn steal_ns(index: u32) -> u64 {
    AREAS
        .get(index as usize)
        .map_or(0, |a| a.steal.load(Ordering::Acquire))
}

/// If CPU `index` is preempted, asks KVM to flush its TLB before it runs again and returns
/// true (Linux's `kvm_flush_tlb_multi`); false = it is running: send an IPI.
pub fn flag_flush_if_preempted(index: u32) -> bool {
    let Some(a) = AREAS.get(index as usize) else {
        return false;
    };
    let state = a.preempted.load(Ordering::Acquire);
    state & kvm_pv::VCPU_PREEMPTED != 0
        && a.preempted
            .compare_exchange(
                state,
                state | kvm_pv::VCPU_FLUSH_TLB,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
}
