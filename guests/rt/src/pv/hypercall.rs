//! KVM hypercall shims: `vmcall` on Intel, `vmmcall` on AMD/Hygon (Linux patches the same
//! choice in with alternatives). Number in RAX, arguments in RBX, RCX, RDX, RSI; result in RAX.
//! Used only when the matching feature bit is exposed (hv hides the bits on hosts where
//! hypercall instructions do not complete).

use core::arch::asm;

use hvlab_protocol::kvm_pv;

/// Raw hypercall with up to four arguments.
pub fn kvm_hypercall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: u64;
    if super::is_amd() {
        // SAFETY: VMMCALL traps to the hypervisor, which reads and writes only the registers
        // named; rbx is swapped in and out because LLVM reserves it.
        unsafe {
            asm!("xchg {b}, rbx", "vmmcall", "xchg {b}, rbx",
                 b = inout(reg) a0 => _, inout("rax") nr => ret, in("rcx") a1, in("rdx") a2,
                 in("rsi") a3, options(nostack))
        }
    } else {
        // SAFETY: as above, for VMCALL.
        unsafe {
            asm!("xchg {b}, rbx", "vmcall", "xchg {b}, rbx",
                 b = inout(reg) a0 => _, inout("rax") nr => ret, in("rcx") a1, in("rdx") a2,
                 in("rsi") a3, options(nostack))
        }
    }
    ret as i64
}

/// KVM_HC_KICK_CPU: wake the vCPU with APIC ID `apic_id` from a PV-unhalt halt.
pub fn kick_cpu(apic_id: u32) -> i64 {
    kvm_hypercall(kvm_pv::HC_KICK_CPU, 0, u64::from(apic_id), 0, 0)
}

/// KVM_HC_SCHED_YIELD: yield to the vCPU with APIC ID `apic_id`.
pub fn sched_yield(apic_id: u32) -> i64 {
    kvm_hypercall(kvm_pv::HC_SCHED_YIELD, u64::from(apic_id), 0, 0, 0)
}

/// KVM_HC_SEND_IPI for every APIC ID in `ids` (fixed, physical): one hypercall per 128-ID
/// window. Returns the number of hypercalls made, or the first error.
pub fn send_ipi(ids: &[u32], vector: u8) -> Result<u32, i64> {
    let icr = u64::from(vector);
    let mut from = 0;
    let mut calls = 0;
    while let Some((lo, hi, min, next)) = kvm_pv::send_ipi_window(ids, from) {
        let r = kvm_hypercall(kvm_pv::HC_SEND_IPI, lo, hi, u64::from(min), icr);
        calls += 1;
        if r < 0 {
            return Err(r);
        }
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    Ok(calls)
}
