//! Multiboot v1 header, so the same ELF boots through a multiboot loader too (QEMU's `-kernel`,
//! GRUB, `hv boot`), besides the PVH note the runtime's entry carries.
//!
//! The header uses the a.out-kludge address fields (flag bit 16): QEMU refuses ELF64 multiboot
//! images, and with the address fields it loads the file as a flat binary instead. That works
//! because the linker script puts everything loadable into one segment whose file bytes are
//! the memory image from `IMAGE_BASE` (1 MiB) to `__hvlab_load_end`; the bss up to
//! `__hvlab_bss_end` is zeroed by the loader. The header is the first thing in `.text`, so it
//! sits at file offset 0x1000, inside the first 8 KiB as the specification requires.
//!
//! A multiboot loader enters `multiboot_start` in 32-bit protected mode, paging off, with EAX =
//! 0x2BADB002 and EBX = the multiboot information. The stub records EAX for the runtime
//! (`hvlab_guest_rt::multiboot`), which then reads the command line from the information
//! structure instead of the PVH start info, and joins the PVH path (EBX is where both put
//! their boot structure).

use core::arch::global_asm;

global_asm!(
    r#"
    .set MB_MAGIC, 0x1BADB002
    /* bit 1: memory information wanted; bit 16: the address fields below are valid */
    .set MB_FLAGS, 0x00010002

    .pushsection .multiboot, "a"
    .balign 4
    .global hvlab_multiboot_header
hvlab_multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long hvlab_multiboot_header   /* header_addr */
    .long __hvlab_load_start       /* load_addr */
    .long __hvlab_load_end         /* load_end_addr */
    .long __hvlab_bss_end          /* bss_end_addr */
    .long multiboot_start          /* entry_addr */
    .popsection

    .pushsection .text.multiboot, "ax"
    .code32
    .global multiboot_start
multiboot_start:
    cli
    movl %eax, hvlab_boot_magic
    jmp pvh_start
    .code64
    .popsection
"#,
    options(att_syntax)
);
