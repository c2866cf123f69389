//! Paravirtual interfaces, used only when the hypervisor exposes them.
//!
//! Detection follows Linux (`kvm_cpuid_base`, `kvm_para_has_feature`): the CPUID hypervisor
//! bit, then a search of 0x40000000..0x40010000 in steps of 0x100 for KVM's signature, whose
//! leaf + 1 EAX holds the feature bits. hv's own leaves (its signature, no hypercalls: hv's
//! hypercall ABI is Hyper-V's, see [`hyperv`]) are found at `hvlab_protocol::HV_CPUID_BASE`.
//!
//! The BSP calls [`init_bsp`] once (which also runs [`hyperv::init`] when Hyper-V's leaves
//! are shown); every CPU then calls [`init_cpu`], which registers the
//! per-CPU areas of what is exposed (kvm-clock, steal time, PV EOI) and turns off host halt
//! polling when poll-control is exposed.

pub mod eoi;
pub mod hypercall;
pub mod hyperv;
pub mod kvmclock;
pub mod steal;
pub mod synic;
pub mod vmbus;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use hvlab_protocol::{HV_CPUID_BASE, HV_CPUID_SIGNATURE, kvm_pv};

use crate::cpu::{cpuid, cpuid_signature, wrmsr};

static KVM_FEATURES: AtomicU32 = AtomicU32::new(0);
static AMD: AtomicBool = AtomicBool::new(false);

/// KVM's CPUID base as Linux finds it, or `None`.
pub fn kvm_cpuid_base() -> Option<u32> {
    if cpuid(1, 0).ecx & (1 << 31) == 0 {
        return None;
    }
    (0x4000_0000u32..0x4001_0000)
        .step_by(0x100)
        .find(|&leaf| cpuid_signature(leaf).0 == kvm_pv::SIGNATURE)
}

/// hv's private CPUID base (found by signature: 0x40000100, or 0x40000200 when Hyper-V's
/// leaves take 0x40000000 and KVM's 0x40000100), or `None`.
pub fn hv_cpuid_base() -> Option<u32> {
    if cpuid(1, 0).ecx & (1 << 31) == 0 {
        return None;
    }
    [
        HV_CPUID_BASE,
        hvlab_protocol::hyperv::HV_CPUID_BASE_BEHIND_HYPERV,
    ]
    .into_iter()
    .find(|&leaf| cpuid_signature(leaf).0 == HV_CPUID_SIGNATURE)
}

/// Detects what is exposed (BSP, once, before the APs start).
pub fn init_bsp() {
    let v = cpuid_signature(0).0;
    AMD.store(
        &v == b"AuthenticAMD" || &v == b"HygonGenuine",
        Ordering::Relaxed,
    );
    if let Some(base) = kvm_cpuid_base() {
        KVM_FEATURES.store(cpuid(base + 1, 0).eax, Ordering::Relaxed);
    }
    hyperv::init();
}

/// Registers this CPU's paravirtual areas (CPU `index`, 0 = BSP).
pub fn init_cpu(index: u32) {
    if kvm_has(kvm_pv::FEATURE_CLOCKSOURCE2) || kvm_has(kvm_pv::FEATURE_CLOCKSOURCE) {
        kvmclock::enable(index);
    }
    if kvm_has(kvm_pv::FEATURE_STEAL_TIME) {
        steal::enable(index);
    }
    if kvm_has(kvm_pv::FEATURE_PV_EOI) {
        eoi::enable(index);
    }
    if kvm_has(kvm_pv::FEATURE_POLL_CONTROL) {
        // Linux's haltpoll driver does this: the guest polls, so the host should not.
        wrmsr(kvm_pv::MSR_KVM_POLL_CONTROL, 0);
    }
}

/// KVM feature bits (CPUID base + 1 EAX), 0 without KVM.
pub fn kvm_features() -> u32 {
    KVM_FEATURES.load(Ordering::Relaxed)
}

/// True when KVM exposes feature number `feature` (`kvm_pv::FEATURE_*`).
pub fn kvm_has(feature: u32) -> bool {
    kvm_features() & kvm_pv::bit(feature) != 0
}

/// True on AMD/Hygon, whose hypercall instruction is `vmmcall`.
pub fn is_amd() -> bool {
    AMD.load(Ordering::Relaxed)
}
