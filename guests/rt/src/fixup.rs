//! MSR accesses that may be refused: [`wrmsr_safe`] and [`rdmsr_safe`] return an error when the
//! instruction raises #GP instead of ending the run (Linux's `wrmsr_safe`/`rdmsr_safe` do the
//! same through its exception table). For guests that probe or abuse MSRs on purpose (`chaos`);
//! [`crate::cpu::wrmsr`] stays the accessor whose #GP is a reported failure.
//!
//! The two accessors are assembly functions with a labelled MSR instruction. When #GP hits
//! one of those two labels, the exception handler calls [`resume_if_fixup`], which returns from
//! the exception to a shared landing pad that makes the accessor return 1 (refused).

use core::arch::global_asm;

use crate::idt::ExceptionFrame;

global_asm!(
    ".pushsection .text.hvlab_msr_safe, \"ax\"",
    // u32 hvlab_wrmsr_safe(u32 msr /* edi */, u64 value /* rsi */): 0 done, 1 refused.
    ".global hvlab_wrmsr_safe",
    "hvlab_wrmsr_safe:",
    "    mov ecx, edi",
    "    mov eax, esi",
    "    mov rdx, rsi",
    "    shr rdx, 32",
    "hvlab_wrmsr_safe_insn:",
    "    wrmsr",
    "    xor eax, eax",
    "    ret",
    // u32 hvlab_rdmsr_safe(u32 msr /* edi */, u64 *out /* rsi */): 0 read, 1 refused.
    ".global hvlab_rdmsr_safe",
    "hvlab_rdmsr_safe:",
    "    mov ecx, edi",
    "hvlab_rdmsr_safe_insn:",
    "    rdmsr",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [rsi], rax",
    "    xor eax, eax",
    "    ret",
    // Where a refused access resumes: the stack is as it was at the MSR instruction (the
    // return address on top), so this returns to the accessor's caller.
    "hvlab_msr_refused:",
    "    mov eax, 1",
    "    ret",
    ".popsection",
);

unsafe extern "C" {
    fn hvlab_wrmsr_safe(msr: u32, value: u64) -> u32;
    fn hvlab_rdmsr_safe(msr: u32, out: *mut u64) -> u32;
}

/// The MSR access raised #GP (the MSR does not exist, or the value was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrRefused;

/// WRMSR that reports a #GP as [`MsrRefused`] instead of ending the run.
pub fn wrmsr_safe(msr: u32, value: u64) -> Result<(), MsrRefused> {
    // SAFETY: the assembly above writes only the MSR (and ECX, EAX, EDX, caller-saved); a #GP
    // on its WRMSR returns through `hvlab_msr_refused`. The caller chose the MSR write, as
    // with `cpu::wrmsr`.
    match unsafe { hvlab_wrmsr_safe(msr, value) } {
        0 => Ok(()),
        _ => Err(MsrRefused),
    }
}

/// RDMSR that reports a #GP as [`MsrRefused`] instead of ending the run.
pub fn rdmsr_safe(msr: u32) -> Result<u64, MsrRefused> {
    let mut v = 0u64;
    // SAFETY: the assembly reads the MSR and stores 8 bytes to `&mut v`; a #GP on its RDMSR
    // returns through `hvlab_msr_refused` without the store.
    match unsafe { hvlab_rdmsr_safe(msr, &mut v) } {
        0 => Ok(v),
        _ => Err(MsrRefused),
    }
}

/// Addresses of the two MSR instructions and the landing pad.
fn labels() -> (u64, u64, u64) {
    let (w, r, pad): (u64, u64, u64);
    // SAFETY: RIP-relative address computations only.
    unsafe {
        core::arch::asm!(
            "lea {w}, [rip + hvlab_wrmsr_safe_insn]",
            "lea {r}, [rip + hvlab_rdmsr_safe_insn]",
            "lea {p}, [rip + hvlab_msr_refused]",
            w = out(reg) w,
            r = out(reg) r,
            p = out(reg) pad,
            options(nomem, nostack, preserves_flags),
        );
    }
    (w, r, pad)
}

/// Called first by the exception handler: when `frame` is a #GP on one of the safe accessors'
/// MSR instructions, returns from the exception into the landing pad (never returns here).
/// Otherwise returns and the handler reports the fault as usual.
pub fn resume_if_fixup(frame: &ExceptionFrame) {
    let (w, r, pad) = labels();
    if frame.vector != 13 || (frame.rip != w && frame.rip != r) {
        return;
    }
    let at = frame as *const ExceptionFrame as u64;
    // SAFETY: `at` is the exception stub's frame on this CPU's stack (15 saved registers,
    // vector, error code, then the CPU's IRET frame at offset 136); nothing after this reads
    // it. The frame's RIP becomes the landing pad, the saved registers are restored in the
    // stub's push order reversed, the vector and error code are dropped, and IRETQ returns
    // (same CPL, same stack, the interrupted RFLAGS) to the pad.
    unsafe {
        core::arch::asm!(
            "mov [{f} + 136], {pad}",
            "mov rsp, {f}",
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rbp",
            "pop rdi",
            "pop rsi",
            "pop rdx",
            "pop rcx",
            "pop rbx",
            "pop rax",
            "add rsp, 16",
            "iretq",
            f = in(reg) at,
            pad = in(reg) pad,
            options(noreturn),
        );
    }
}
