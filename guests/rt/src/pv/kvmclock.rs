//! kvm-clock: KVM keeps a `pvclock_vcpu_time_info` per vCPU up to date; reading the time is a
//! TSC read and a little arithmetic, no exit.

use core::cell::UnsafeCell;

use hvlab_protocol::kvm_pv;

use crate::cpu::{rdtsc, wrmsr};
use crate::entry::MAX_CPUS;

#[repr(C, align(64))]
struct TimeInfo(UnsafeCell<[u32; 16]>);

// SAFETY: each CPU registers and reads only its own slot; KVM writes it (seqlock protocol).
unsafe impl Sync for TimeInfo {}

static AREAS: [TimeInfo; MAX_CPUS] = [const { TimeInfo(UnsafeCell::new([0; 16])) }; MAX_CPUS];

/// Registers CPU `index`'s time page.
pub fn enable(index: u32) {
    let Some(a) = AREAS.get(index as usize) else {
        return;
    };
    let msr = if super::kvm_has(kvm_pv::FEATURE_CLOCKSOURCE2) {
        kvm_pv::MSR_KVM_SYSTEM_TIME_NEW
    } else {
        kvm_pv::MSR_KVM_SYSTEM_TIME
    };
    wrmsr(msr, a.0.get() as u64 | kvm_pv::MSR_ENABLED);
}

/// Nanoseconds of kvm-clock as seen by CPU `index` (0 if not registered yet).
pub fn read_ns(index: u32) -> u64 {
    let Some(a) = AREAS.get(index as usize) else {
        return 0;
    };
    let p = a.0.get() as *const u32;
    loop {
        // SAFETY: the page is static and KVM writes it between version increments; volatile
        // reads with the version check before and after are the pvclock read protocol.
        unsafe {
            let v = core::ptr::read_volatile(p);
            core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
            let tsc_ts = core::ptr::read_volatile(p.add(2) as *const u64);
            let sys = core::ptr::read_volatile(p.add(4) as *const u64);
            let mul = core::ptr::read_volatile(p.add(6));
            let shift_flags = core::ptr::read_volatile(p.add(7));
            let now = rdtsc();
            core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
            if v & 1 == 0 && core::ptr::read_volatile(p) == v {
                let shift = (shift_flags & 0xff) as u8 as i8;
                return sys.wrapping_add(kvm_pv::pvclock_scale(
                    now.wrapping_sub(tsc_ts),
                    mul,
                    shift,
                ));
            }
        }
    }
}
