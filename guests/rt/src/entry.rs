//! Boot code: the PVH entry (32-bit protected mode, paging off, EBX = start info), the switch to
//! long mode with static page tables, the AP trampoline (real mode, copied below 1 MiB) and the
//! exception / interrupt stubs.
//!
//! Why static tables: every guest instruction at CPL0 may be emulated (about 1 us each on nested
//! hosts), so building 4 GiB of identity map in a loop would cost milliseconds per boot. The
//! assembler lays the tables out in .data instead; the boot path is about 20 instructions.

use core::arch::global_asm;

/// Bytes of stack per application processor.
pub const AP_STACK_SIZE: usize = 16 * 1024;
/// Most vCPUs the runtime supports.
pub const MAX_CPUS: usize = 64;
/// Guest-physical page where the AP trampoline is copied (SIPI vector = page number).
pub const TRAMPOLINE_ADDR: usize = 0x8000;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    mov %ebx, %esi          /* start info, kept for rt_bsp_main */
    xor %edi, %edi          /* 0 = bootstrap processor */
common32:
    lgdt (gdt_ptr)
    mov %cr4, %eax
    or $0x20, %eax          /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx   /* EFER */
    rdmsr
    or $0x100, %eax         /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax    /* PG | PE */
    and $0x9FFFFFFF, %eax   /* caches on (CD, NW clear) */
    mov %eax, %cr0
    ljmp $0x08, $long_entry

ap_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %edi            /* 1 = application processor */
    jmp common32

    .code64
long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    test %edi, %edi
    jnz 2f
    lea boot_stack_top(%rip), %rsp
    mov %esi, %edi
    call rt_bsp_main
1:  cli
    hlt
    jmp 1b
2:  mov $1, %eax
    lock xadd %eax, ap_next_index(%rip)
    mov %eax, %edi          /* this AP's index: 1, 2, ... in arrival order */
    mov %rdi, %rax
    shl $14, %rax           /* AP_STACK_SIZE */
    lea ap_stacks(%rip), %rsp
    add %rax, %rsp
    call rt_ap_main
    jmp 1b

    /* Real-mode AP trampoline, copied to TRAMPOLINE_ADDR before the SIPIs. */
    .code16
    .global ap_trampoline_start
    .global ap_trampoline_end
ap_trampoline_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl 0x8000 + (tramp_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $ap_start32
    .balign 4
tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:
    .code64
    .popsection

    /* Writable: `user::init_this_cpu` fills this CPU's TSS descriptor before LTR. */
    .pushsection .data.gdt, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00209A0000000000    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: flat data */
    .quad 0x00CF9A000000FFFF    /* 0x18: flat 32-bit code (AP trampoline); SYSRET base */
    .quad 0x00CFF2000000FFFF    /* 0x20: user data, DPL 3 (SYSRET base + 8) */
    .quad 0x0020FA0000000000    /* 0x28: user 64-bit code, DPL 3 (SYSRET base + 16) */
    .global gdt_tss
gdt_tss:
    .fill 2 * 64, 8, 0          /* 0x30 + 16 * cpu: each CPU's 64-bit TSS (MAX_CPUS) */
gdt_end:
    .balign 4
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    .popsection

    /* Identity map of the low 4 GiB with 2 MiB pages; 3-4 GiB (MMIO) uncached. RAM and the
       test window are user-accessible (U, 0x4) so that CPL3 code (`user`) can run from the
       image and share its statics; without SMEP/SMAP this changes nothing at CPL0. */
    .pushsection .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
    .global pdpt
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x3
    .quad pd_window + 0x7   /* 4 GiB: the test window (4 KiB pages, see `window_map`) */
    .fill 507, 8, 0
    .global pd
pd:
    .set addr, 0
    .rept 1536
    .quad addr + 0x87
    .set addr, addr + 0x200000
    .endr
    .rept 512
    .quad addr + 0x9B
    .set addr, addr + 0x200000
    .endr
pd_window:
    .quad pt_window + 0x7
    .fill 511, 8, 0
    .global pt_window
pt_window:
    .fill 512, 8, 0
    .balign 4
    .global ap_next_index
ap_next_index:
    .long 1
    .popsection

    .pushsection .bss.stacks, "aw", @nobits
    .balign 4096
boot_stack:
    .skip 65536
    .global boot_stack_top
    .global ap_stacks
boot_stack_top:
ap_stacks:
    .skip 16384 * 64
    .popsection

    /* Exception stubs, 32 bytes apart: push a zero error code where the CPU pushes none. */
    .pushsection .text.stubs, "ax"
    .balign 32
    .global exception_stubs
exception_stubs:
    .set vec, 0
    .rept 32
    .balign 32
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push $0
    .endif
    push $vec
    jmp exception_common
    .set vec, vec + 1
    .endr

exception_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    and $-16, %rsp
    cld
    call rt_exception
1:  cli
    hlt
    jmp 1b

    /* Interrupt stubs for vectors 32..255, 16 bytes apart. */
    .balign 16
    .global interrupt_stubs
interrupt_stubs:
    .set vec, 32
    .rept 224
    .balign 16
    push $vec
    jmp interrupt_common
    .set vec, vec + 1
    .endr

interrupt_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov 72(%rsp), %rdi
    sub $8, %rsp
    cld
    call rt_interrupt
    add $8, %rsp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $8, %rsp
    iretq
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static pt_window: core::sync::atomic::AtomicU64;
    static pdpt: core::sync::atomic::AtomicU64;
    static pd: core::sync::atomic::AtomicU64;
    static boot_stack_top: u8;
    static ap_stacks: u8;
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static exception_stubs: u8;
    static interrupt_stubs: u8;
}

/// Address of the stub for `vector` (exceptions 0..32, interrupts 32..256).
pub fn stub_address(vector: u8) -> u64 {
    // Only the symbols' addresses are taken; nothing is read through them.
    if vector < 32 {
        core::ptr::addr_of!(exception_stubs) as u64 + u64::from(vector) * 32
    } else {
        core::ptr::addr_of!(interrupt_stubs) as u64 + u64::from(vector - 32) * 16
    }
}

/// The AP trampoline's bytes, to be copied to [`TRAMPOLINE_ADDR`].
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols bound one contiguous run of code bytes in .text.boot, start before
    // end; the slice is read-only and lives as long as the image.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let end = core::ptr::addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Virtual address of the test window: 2 MiB at 4 GiB, mapped with 4 KiB pages through one
/// page table (`pt_window`) so that workloads can remap single pages (TLB shootdown tests).
/// Nothing is mapped there until a workload calls [`window_map`].
pub const WINDOW_VA: u64 = 1 << 32;
/// Pages in the test window.
pub const WINDOW_PAGES: usize = 512;

fn window_pte(page: usize) -> &'static core::sync::atomic::AtomicU64 {
    // SAFETY: `pt_window` is 512 u64 entries in .data; `page` is reduced into range, and the
    // entries are only ever accessed atomically.
    unsafe { &*core::ptr::addr_of!(pt_window).add(page % WINDOW_PAGES) }
}

/// Maps window page `page` to the 4 KiB physical frame `phys` (present, writable, user, so CPL3
/// readers see it too). Does not invalidate any TLB: callers INVLPG / shoot down as their test
/// requires.
pub fn window_map(page: usize, phys: u64) {
    window_pte(page).store((phys & !0xfff) | 0x7, core::sync::atomic::Ordering::SeqCst);
}

/// The current page-table entry of window page `page`.
pub fn window_entry(page: usize) -> u64 {
    window_pte(page).load(core::sync::atomic::Ordering::SeqCst)
}

/// Virtual address of window page `page`.
pub fn window_va(page: usize) -> u64 {
    WINDOW_VA + ((page % WINDOW_PAGES) as u64) * 4096
}

/// Makes the 2 MiB page of the MMIO window (3-4 GiB) that holds `addr` reachable from CPL3
/// (sets the user bit in its directory entry and in the window's PDPT entry), so CPL3 code can
/// touch device registers there (the chaos workload). Without SMEP/SMAP this changes nothing at
/// CPL0. Addresses outside the window are ignored. Callers flush the TLB afterwards.
pub fn allow_user_mmio(addr: u64) {
    const WINDOW: core::ops::Range<u64> = hvlab_protocol::MMIO_WINDOW_BASE..1 << 32;
    if !WINDOW.contains(&addr) {
        return;
    }
    let index = (addr >> 21) as usize; // 2048 directory entries cover 0-4 GiB contiguously
    // SAFETY: `pdpt` has 512 and `pd` 2048 u64 entries in .data (see the asm above); entry 3
    // of `pdpt` and entry `index` < 2048 of `pd` are in range, and page-table entries are only
    // accessed atomically from Rust.
    unsafe {
        (*core::ptr::addr_of!(pdpt).add(3)).fetch_or(0x4, core::sync::atomic::Ordering::SeqCst);
        (*core::ptr::addr_of!(pd).add(index)).fetch_or(0x4, core::sync::atomic::Ordering::SeqCst);
    }
}

/// Index of the calling CPU (0 = BSP, APs 1.. in arrival order), from its stack pointer: no
/// exit, unlike reading the APIC ID. Valid on the runtime's own stacks only.
#[inline]
pub fn this_cpu() -> u32 {
    let rsp: u64;
    // SAFETY: reads the stack pointer only.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
    };
    let aps = core::ptr::addr_of!(ap_stacks) as u64;
    let bsp_top = core::ptr::addr_of!(boot_stack_top) as u64;
    if rsp <= bsp_top || rsp < aps {
        0
    } else {
        // AP i's stack is [aps + (i-1)*16K, aps + i*16K).
        ((rsp - aps) / AP_STACK_SIZE as u64 + 1) as u32
    }
}
