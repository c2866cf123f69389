//! Thin wrappers over the x86 instructions the runtime uses. Each is one instruction, so the
//! emulated cost of a workload's loop is visible in its source.

use core::arch::asm;

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the VMM decides what it does.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit word to an I/O port.
#[inline(always)]
pub fn outw(port: u16, v: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit word to an I/O port.
#[inline(always)]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a 16-bit word from an I/O port.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads a 32-bit word from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Result of CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
#[inline(always)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID only writes the four registers; rbx is saved around it because LLVM reserves it.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags)
        )
    }
    CpuidResult { eax, ebx, ecx, edx }
}

/// Vendor signature of CPUID `leaf` (EBX, ECX, EDX as 12 bytes) and its EAX (for a hypervisor
/// leaf, the highest leaf of that interface).
pub fn cpuid_signature(leaf: u32) -> ([u8; 12], u32) {
    let r = cpuid(leaf, 0);
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&r.ebx.to_le_bytes());
    s[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    s[8..].copy_from_slice(&r.edx.to_le_bytes());
    (s, r.eax)
}

/// Reads a model-specific register. A missing MSR raises #GP, which the runtime reports.
#[inline(always)]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR reads a register; a bad index faults into the exception handler.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
#[inline(always)]
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: callers pass MSRs whose writes the runtime intends (APIC, test MSRs); a bad index
    // faults into the exception handler.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only writes eax/edx.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Halts until the next interrupt.
#[inline(always)]
pub fn hlt() {
    // SAFETY: HLT waits for an interrupt; no memory effects.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// Enables interrupts and halts atomically (the STI shadow covers the HLT), so a wake-up that
/// is already pending cannot be lost between the two.
#[inline(always)]
pub fn sti_hlt() {
    // SAFETY: as for `hlt`; interrupts are delivered to the runtime's handlers.
    unsafe { asm!("sti; hlt", options(nomem, nostack)) }
}

/// Enables interrupts.
#[inline(always)]
pub fn sti() {
    // SAFETY: the IDT is installed before any caller enables interrupts.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts.
#[inline(always)]
pub fn cli() {
    // SAFETY: masking interrupts has no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Spin-wait hint.
#[inline(always)]
pub fn pause() {
    // SAFETY: PAUSE is a hint with no architectural effects.
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) }
}

/// Reads CR2 (the faulting address of the last page fault).
#[inline(always)]
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
#[inline(always)]
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Invalidates the TLB entry for the page holding `addr`.
#[inline(always)]
pub fn invlpg(addr: u64) {
    // SAFETY: INVLPG only drops a translation; callers have already updated the page tables.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) }
}

/// Reloads CR3, flushing all non-global translations.
#[inline(always)]
pub fn flush_tlb() {
    // SAFETY: writing CR3 with its current value keeps the same address space.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) }
}

/// Volatile 32-bit MMIO read.
#[inline(always)]
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass device addresses inside the identity-mapped MMIO window.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Volatile 32-bit MMIO write.
#[inline(always)]
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: callers pass device addresses inside the identity-mapped MMIO window.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
