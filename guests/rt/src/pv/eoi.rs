//! PV EOI: KVM sets bit 0 of a per-vCPU word when the interrupt it injects needs no EOI write;
//! the guest's EOI then clears the bit instead of touching the APIC (Linux's `kvm_guest_apic_eoi_write`).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use hvlab_protocol::kvm_pv;

use crate::cpu::wrmsr;
use crate::entry::MAX_CPUS;

#[repr(C, align(4))]
struct Flag(AtomicU32);

static FLAGS: [Flag; MAX_CPUS] = [const { Flag(AtomicU32::new(0)) }; MAX_CPUS];
static ENABLED: AtomicBool = AtomicBool::new(false);
static SKIPPED: AtomicU32 = AtomicU32::new(0);

/// Registers CPU `index`'s flag word.
pub fn enable(index: u32) {
    if let Some(f) = FLAGS.get(index as usize) {
        wrmsr(
            kvm_pv::MSR_KVM_PV_EOI_EN,
            &f.0 as *const AtomicU32 as u64 | kvm_pv::MSR_ENABLED,
        );
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// End of interrupt on the calling CPU: the PV path when KVM allowed it, else the APIC.
pub fn eoi() {
    if ENABLED.load(Ordering::Relaxed) {
        let cpu = crate::entry::this_cpu() as usize;
        if FLAGS
            .get(cpu)
            .is_some_and(|f| f.0.swap(0, Ordering::AcqRel) & 1 != 0)
        {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    crate::apic::eoi();
}

/// EOIs that skipped the APIC write so far (all CPUs).
pub fn skipped() -> u32 {
    SKIPPED.load(Ordering::Relaxed)
}
