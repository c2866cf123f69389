//! Multiboot v1 entry support. The image's multiboot stub (guests/image) stores the loader's
//! EAX in [`hvlab_boot_magic`] and joins the PVH entry with EBX = the multiboot information, so
//! the runtime only has to tell the two apart and find the command line.

use crate::Fail;

use hvlab_protocol::multiboot::INFO_CMDLINE;
pub use hvlab_protocol::multiboot::{BOOT_MAGIC, kernel_args};

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
