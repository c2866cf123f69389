//! hv's own hypercalls (`hvlab_protocol::hvcall`): a WRMSR of the call's parameter-block
//! address to hv's synthetic MSR, served by hv in userspace. No hypercall instruction.

use core::cell::UnsafeCell;

use hvlab_protocol::hvcall::{self, Block};

use crate::cpu::wrmsr;
use crate::entry::MAX_CPUS;

struct Blocks(UnsafeCell<[Block; MAX_CPUS]>);

// SAFETY: CPU i uses only block i (indexed by `entry::this_cpu`), and interrupt handlers never
// make hv calls, so no block is used by two contexts at once.
unsafe impl Sync for Blocks {}

static BLOCKS: Blocks = Blocks(UnsafeCell::new(
    [Block {
        args: [0; 6],
        status: 0,
        reserved: 0,
    }; MAX_CPUS],
));

/// Makes call `code` with `args`; returns hv's status. Call only when the feature is exposed
/// (otherwise the MSR write raises #GP, which ends the run).
pub fn call(code: u64, args: [u64; 6]) -> u64 {
    let cpu = crate::entry::this_cpu() as usize % MAX_CPUS;
    // SAFETY: see the Sync impl: this CPU owns block `cpu`.
    let b = unsafe { &mut (*BLOCKS.0.get())[cpu] };
    // SAFETY: `b` is a valid, aligned block; volatile so the writes precede the MSR write.
    unsafe {
        core::ptr::write_volatile(&mut b.args, args);
        core::ptr::write_volatile(&mut b.status, u64::MAX);
    }
    let msr = match super::HV_MSR.load(core::sync::atomic::Ordering::Relaxed) {
        0 => hvcall::MSR,
        m => m,
    };
    wrmsr(msr, hvcall::encode(code, b as *mut Block as u64));
    // SAFETY: as above; hv wrote the status before the WRMSR completed.
    unsafe { core::ptr::read_volatile(&b.status) }
}

/// Flushes the TLBs of the CPUs whose APIC IDs are set in `mask` (no interrupts to them).
pub fn flush_tlb(mask: u64) -> u64 {
    call(hvcall::CALL_FLUSH_TLB, [mask, 0, 0, 0, 0, 0])
}

/// Sends `vector` to the CPUs whose APIC IDs are set in `mask`, in one exit.
pub fn send_ipi(mask: u64, vector: u8) -> u64 {
    call(hvcall::CALL_SEND_IPI, [mask, u64::from(vector), 0, 0, 0, 0])
}

/// Long spin on `word` still holding `seen`: hv parks this vCPU up to `bound_us`.
pub fn spin_wait(word: *const u32, seen: u32, bound_us: u64) -> u64 {
    call(
        hvcall::CALL_LONG_SPIN_WAIT,
        [word as u64, u64::from(seen), bound_us, 0, 0, 0],
    )
}

/// The lock at `word` was released: wake parked spinners.
pub fn spin_release(word: *const u32) -> u64 {
    call(hvcall::CALL_SPIN_RELEASE, [word as u64, 0, 0, 0, 0, 0])
}
