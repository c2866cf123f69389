//! Multiboot v1 entry support. The image's multiboot stub (guests/image) stores the loader's
//! EAX in [`hvlab_boot_magic`] and joins the PVH entry with EBX = the multiboot information, so
//! the runtime only has to tell the two apart and find the command line.

use crate::Fail;

/// EAX a multiboot v1 loader passes to the kernel.
pub const BOOT_MAGIC: u32 = 0x2BAD_B002;
/// `flags` bit: `cmdline` (offset 16) is valid.
const INFO_CMDLINE: u32 = 1 << 2;

/// Written by the image's 32-bit multiboot stub before anything else runs; stays 0 on the PVH
/// path (the loader zeroes the bss).
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static mut hvlab_boot_magic: u32 = 0;

/// Whether a multiboot loader entered the image.
pub fn entered() -> bool {
    // SAFETY: a plain aligned read of a static written once, by the boot stub, before Rust ran.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(hvlab_boot_magic)) == BOOT_MAGIC }
}

/// Address of the command line the multiboot information at `info` names (0 = none).
pub fn cmdline_addr(info: u32) -> Result<u64, Fail> {
    let base = u64::from(info);
    if base == 0 || base >= hvlab_protocol::MAX_GUEST_RAM - 32 {
        return Err(Fail::BadArg("multiboot info address"));
    }
    // SAFETY: `base` lies in RAM below the MMIO window, inside the identity map; the loader
    // wrote the structure there. Volatile: the compiler knows nothing about who wrote it.
    let (flags, cmdline) = unsafe {
        (
            core::ptr::read_volatile(base as *const u32),
            core::ptr::read_volatile((base + 16) as *const u32),
        )
    };
    Ok(if flags & INFO_CMDLINE != 0 {
        u64::from(cmdline)
    } else {
        0
    })
}

/// The kernel's own arguments from a multiboot command line. Loaders put the kernel's file name
/// first (QEMU: "FILE ARGS", GRUB likewise), while hvlab's line is `<workload> key=value ...`:
/// a leading word is a file name when it has a `/`, or when the next word is not `key=value`
/// either (a workload name is followed only by `key=value` words).
pub fn strip_kernel_name(line: &str) -> &str {
    let line = line.trim_start();
    let mut words = line.split_whitespace();
    let (Some(first), second) = (words.next(), words.next()) else {
        return line;
    };
    let is_file = first.contains('/') || second.is_some_and(|w| !w.contains('='));
    if is_file && !first.contains('=') {
        line[first.len()..].trim_start()
    } else {
        line
    }
}
