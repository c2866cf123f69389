//! Running workload code at CPL3 (ring 3).
//!
//! Why: on nested hosts (kvm_pvm) every CPL0 instruction runs in KVM's instruction emulator,
//! which walks the guest page tables on each access, so CPL0 code never sees a stale TLB entry.
//! CPL3 code runs natively (through KVM's shadow MMU), so a test that must observe real
//! translation caching (tlb-shootdown's readers) reads from CPL3.
//!
//! Model: [`enter`] runs `entry(arg)` at CPL3 on this CPU's user stack. Interrupts taken there
//! run the ordinary handlers on the kernel stack (TSS.RSP0 = the stack pointer inside `enter`)
//! and `iretq` back to CPL3. The way back to CPL0 is an interrupt: [`KICK_VECTOR`], sent by
//! another CPU ([`kick`]) or this CPU's APIC timer, makes `enter` return when it interrupts user
//! code; user code that has finished [`park`]s until then. Measured on kvm_pvm: `syscall` at
//! CPL3 jumps to LSTAR but leaves the vCPU at CPL3 (the next `out` takes #GP with CS 0x2b),
//! and `int N` through a DPL 3 gate arrives as #UD; exceptions at CPL3 are delivered (they are
//! fatal only without a TSS), but a test should not depend on them. User code must not use
//! privileged instructions (CLI/STI/HLT/port I/O/MSRs) or runtime calls that do (`println!`),
//! nor `this_cpu` (it reads the kernel stack pointer).
//!
//! There is no protection boundary: the identity map is user-accessible (see `entry`), so user
//! code is ordinary Rust in the image and shares its statics with the kernel side.

use core::arch::global_asm;
use core::cell::UnsafeCell;

use crate::cpu::wrmsr;
use crate::entry::MAX_CPUS;

/// User data selector (GDT 0x20, RPL 3).
pub const USER_DS: u16 = 0x23;
/// User 64-bit code selector (GDT 0x28, RPL 3).
pub const USER_CS: u16 = 0x2b;
/// Selector of CPU 0's TSS; CPU `i`'s is 16 bytes further on per index.
const TSS_SELECTOR: u16 = 0x30;
/// Interrupt vector that ends [`enter`] when it arrives during user code.
pub const KICK_VECTOR: u8 = 0xf3;
/// Bytes of user stack per CPU.
pub const USER_STACK_SIZE: usize = 8192;

const MSR_GS_BASE: u32 = 0xc000_0101;
/// 64-bit task state segment: only RSP0 is used (the stack for interrupts taken at CPL3).
#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp0: u64,
    _rsp12: [u64; 2],
    _reserved1: u64,
    _ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    /// Past the limit: no I/O permission bitmap, so user port I/O faults (never done).
    iomap_base: u16,
}

const TSS_SIZE: u64 = core::mem::size_of::<Tss>() as u64;
/// Offset of RSP0 in the TSS; the asm below addresses it as `gs:[4]`.
const _: () = assert!(core::mem::offset_of!(Tss, rsp0) == 4);

#[repr(C, align(16))]
struct Tsses(UnsafeCell<[Tss; MAX_CPUS]>);

// SAFETY: CPU `i` touches only entry `i` (in `init_this_cpu` and, through GS, in the asm below);
// the CPU itself reads RSP0 of its own TSS.
unsafe impl Sync for Tsses {}

static TSS: Tsses = Tsses(UnsafeCell::new(
    [const {
        Tss {
            _reserved0: 0,
            rsp0: 0,
            _rsp12: [0; 2],
            _reserved1: 0,
            _ist: [0; 7],
            _reserved2: 0,
            _reserved3: 0,
            iomap_base: TSS_SIZE as u16,
        }
    }; MAX_CPUS],
));

#[repr(C, align(16))]
struct Stacks(UnsafeCell<[[u8; USER_STACK_SIZE]; MAX_CPUS]>);

// SAFETY: only user code entered on CPU `i` uses stack `i`; no Rust reference to it is made.
unsafe impl Sync for Stacks {}

static STACKS: Stacks = Stacks(UnsafeCell::new([[0; USER_STACK_SIZE]; MAX_CPUS]));

global_asm!(
    r#"
    .pushsection .text.user, "ax"
    /* rdi = entry, rsi = its argument, rdx = user stack top. Saves the callee-saved registers
       and RFLAGS, records the stack pointer as TSS.RSP0 (GS base = this CPU's TSS) and IRETs
       to entry at CPL3 with interrupts on. Returns when `user_kick` interrupts the user code. */
    .global user_enter
user_enter:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    pushfq
    mov %rsp, %gs:4
    push ${user_ds}
    lea -8(%rdx), %rax      /* as if entry had been called: rsp + 8 is 16-byte aligned */
    push %rax
    push $0x202             /* IF */
    push ${user_cs}
    push %rdi
    mov %rsi, %rdi
    iretq

    /* KICK_VECTOR's gate. From CPL0 it is an ordinary interrupt (EOI, resume); from CPL3 it
       drops the user context and returns from `user_enter`, on the stack that recorded. */
    .global user_kick
user_kick:
    testb $3, 8(%rsp)       /* the interrupted CS */
    jz interrupt_stubs + ({kick} - 32) * 16
    mov %gs:4, %rsp
    call rt_user_eoi        /* rsp is 16-byte aligned here (7 pushes after the call) */
    popfq
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
    .popsection
"#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    kick = const KICK_VECTOR,
    options(att_syntax)
);

unsafe extern "C" {
    static gdt_tss: u8;
    fn user_enter(entry: extern "C" fn(u64) -> !, arg: u64, stack_top: u64);
    fn user_kick();
}

#[unsafe(no_mangle)]
extern "C" fn rt_user_eoi() {
    crate::pv::eoi::eoi();
}

/// Prepares CPU `cpu` (its [`crate::entry::this_cpu`] index) for [`enter`]: loads its TSS
/// and points GS at it. Idempotent; about 15 emulated instructions.
pub fn init_this_cpu(cpu: u32) {
    let i = cpu as usize % MAX_CPUS;
    // SAFETY: entry `i` belongs to this CPU (see the Sync impl); only its address is taken.
    let tss = unsafe { (*TSS.0.get()).as_ptr().add(i) } as u64;
    let limit = TSS_SIZE - 1;
    let low = (limit & 0xffff)
        | (tss & 0xff_ffff) << 16
        | 0x89 << 40                          // present, DPL 0, available 64-bit TSS
        | ((limit >> 16) & 0xf) << 48
        | ((tss >> 24) & 0xff) << 56;
    let high = tss >> 32;
    let selector = TSS_SELECTOR + 16 * i as u16;
    // SAFETY: `gdt_tss` is 2 * MAX_CPUS u64 slots in .data; slots 2i and 2i+1 are this CPU's.
    // Rewriting the type as "available" each time keeps LTR from faulting on a second call
    // (LTR marks it busy; the CPU does not read the descriptor again afterwards).
    unsafe {
        let slot = core::ptr::addr_of!(gdt_tss)
            .cast::<u64>()
            .cast_mut()
            .add(2 * i);
        core::ptr::write_volatile(slot, low);
        core::ptr::write_volatile(slot.add(1), high);
        core::arch::asm!("ltr {0:x}", in(reg) selector, options(nostack, preserves_flags));
    }
    // `user_enter` and `user_kick` find RSP0 as gs:4 (the runtime uses GS for nothing else).
    wrmsr(MSR_GS_BASE, tss);
    crate::idt::set_raw_gate(KICK_VECTOR, user_kick as *const () as u64);
}

/// Runs `entry(arg)` at CPL3 on CPU `cpu`'s user stack (after [`init_this_cpu`] on this CPU)
/// until a [`KICK_VECTOR`] interrupt arrives while it runs. Interrupts are on at CPL3.
pub fn enter(cpu: u32, entry: extern "C" fn(u64) -> !, arg: u64) {
    let i = cpu as usize % MAX_CPUS;
    // SAFETY: stack `i` is this CPU's (see the Sync impl); only its end address is taken.
    let top = unsafe { (*STACKS.0.get()).as_ptr().add(i + 1) } as u64;
    // SAFETY: `init_this_cpu` loaded this CPU's TSS and the kick gate, so interrupts at CPL3
    // and the kick come back onto this stack; `user_enter` saves and restores every
    // callee-saved register and RFLAGS, and the caller-saved ones are clobbered by the call.
    unsafe { user_enter(entry, arg, top) }
}

/// Ends CPU `apic_id`'s [`enter`] (an IPI on [`KICK_VECTOR`]). Send it only once that CPU's
/// user code has started (it said so through memory): a kick that lands at CPL0 is ignored.
pub fn kick(apic_id: u32) {
    crate::apic::send_ipi(apic_id, KICK_VECTOR);
}

/// For user code that has finished: waits (at CPL3, interrupts on) for the kick.
pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
