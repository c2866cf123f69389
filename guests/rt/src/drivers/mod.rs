//! Guest drivers for hv's devices: the ATA PIO disk, virtio-mmio with virtio-blk and
//! virtio-console, and the IOAPIC routing their interrupts. Each is a few hundred instructions
//! per operation at most: on nested hosts every guest kernel instruction may be emulated.

pub mod ata;
pub mod fw_cfg;
pub mod ioapic;
pub mod ne2000;
pub mod virtio;
pub mod virtio_net;

/// A full memory barrier that needs no SSE (`mfence` may not be emulated everywhere).
#[inline(always)]
pub fn mb() {
    // SAFETY: a locked no-op add on the stack slot below RSP's top; no effect but ordering.
    unsafe {
        core::arch::asm!(
            "lock or qword ptr [rsp], 0",
            options(nostack, preserves_flags)
        )
    }
}

/// Keeps the compiler from moving memory accesses across this point.
#[inline(always)]
pub fn compiler_fence() {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}
