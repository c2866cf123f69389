//! Loading a guest and putting its boot vCPU at the PVH entry point.
//!
//! hv boots guests exactly as QEMU's `-kernel` does for a PVH ELF: 32-bit protected mode,
//! paging off, flat segments, EBX = guest-physical address of the `hvm_start_info`. One boot
//! path for both VMMs keeps their numbers comparable.

use std::io::Cursor;

use hvlab_protocol::{CMDLINE_ADDR, CMDLINE_MAX, IMAGE_BASE, START_INFO_ADDR};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::HvError;

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// Where the E820-style memory map follows the start info.
const MEMMAP_ADDR: u64 = START_INFO_ADDR + 0x100;
const E820_RAM: u32 = 1;

/// Where a loaded image starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// PVH 32-bit entry point.
    pub pvh_entry: u64,
    /// First byte after the loaded image.
    pub image_end: u64,
}

/// Loads an ELF with a PVH note into guest memory.
pub fn load_elf(mem: &GuestMemoryMmap, image: &[u8]) -> Result<BootEntry, HvError> {
    if image.len() < 4 || &image[..4] != b"\x7fELF" {
        return Err(HvError::Image("not an ELF file (bad magic)".into()));
    }
    let mut cursor = Cursor::new(image);
    let loaded = Elf::load(mem, None, &mut cursor, Some(GuestAddress(IMAGE_BASE)))
        .map_err(|e| HvError::Image(format!("cannot load ELF: {e}")))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(BootEntry {
            pvh_entry: entry.0,
            image_end: loaded.kernel_end,
        }),
        _ => Err(HvError::Image(
            "the ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); hvlab guests need one"
                .into(),
        )),
    }
}

/// Writes the command line and the PVH start info (with a one-entry memory map).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    cmdline: &str,
) -> Result<(), HvError> {
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(HvError::Config(format!(
            "guest command line is {} bytes; the limit is {}",
            cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    if cmdline.bytes().any(|b| b == 0) {
        return Err(HvError::Config(
            "guest command line contains a NUL byte".into(),
        ));
    }
    let w = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| HvError::Memory(format!("writing boot data at {addr:#x}: {e}")))
    };
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    w(CMDLINE_ADDR, &line)?;

    // struct hvm_memmap_table_entry { u64 addr; u64 size; u32 type; u32 reserved; }
    let mut map = Vec::with_capacity(24);
    map.extend_from_slice(&0u64.to_le_bytes());
    map.extend_from_slice(&ram_bytes.to_le_bytes());
    map.extend_from_slice(&E820_RAM.to_le_bytes());
    map.extend_from_slice(&0u32.to_le_bytes());
    w(MEMMAP_ADDR, &map)?;

    // struct hvm_start_info (version 1).
    let mut si = Vec::with_capacity(56);
    si.extend_from_slice(&PVH_MAGIC.to_le_bytes());
    si.extend_from_slice(&1u32.to_le_bytes()); // version
    si.extend_from_slice(&0u32.to_le_bytes()); // flags
    si.extend_from_slice(&0u32.to_le_bytes()); // nr_modules
    si.extend_from_slice(&0u64.to_le_bytes()); // modlist_paddr
    si.extend_from_slice(&CMDLINE_ADDR.to_le_bytes());
    si.extend_from_slice(&0u64.to_le_bytes()); // rsdp_paddr
    si.extend_from_slice(&MEMMAP_ADDR.to_le_bytes());
    si.extend_from_slice(&1u32.to_le_bytes()); // memmap_entries
    si.extend_from_slice(&0u32.to_le_bytes());
    w(START_INFO_ADDR, &si)
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `sregs`/`regs` into the PVH entry state for `entry`.
pub fn pvh_entry_state(sregs: &mut kvm_sregs, entry: u64) -> kvm_regs {
    sregs.cs = flat_segment(0x08, 0xb); // execute/read, accessed
    let data = flat_segment(0x10, 0x3); // read/write, accessed
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    kvm_regs {
        rip: entry,
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn load_rejects_non_elf_and_truncated_images() {
        let m = mem();
        assert!(matches!(
            load_elf(&m, b"MZ\x90\x00"),
            Err(HvError::Image(_))
        ));
        assert!(matches!(load_elf(&m, b""), Err(HvError::Image(_))));
        let guest = std::fs::read(env!("HVLAB_GUEST_ELF")).unwrap();
        let err = load_elf(&m, &guest[..200]).unwrap_err();
        assert!(err.to_string().contains("cannot load ELF"), "{err}");
    }

    #[test]
    fn load_finds_pvh_entry_of_the_guest_image() {
        let m = mem();
        let guest = std::fs::read(env!("HVLAB_GUEST_ELF")).unwrap();
        let e = load_elf(&m, &guest).unwrap();
        assert!(e.pvh_entry >= IMAGE_BASE && e.pvh_entry < e.image_end);
    }

    #[test]
    fn start_info_carries_cmdline_and_memmap() {
        let m = mem();
        write_start_info(&m, 4 << 20, "exit-floor iters=5").unwrap();
        let magic: u32 = m.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(magic, PVH_MAGIC);
        let cmd: u64 = m.read_obj(GuestAddress(START_INFO_ADDR + 24)).unwrap();
        let mut buf = [0u8; 19];
        m.read_slice(&mut buf, GuestAddress(cmd)).unwrap();
        assert_eq!(&buf, b"exit-floor iters=5\0");
        assert!(write_start_info(&m, 4 << 20, &"x".repeat(CMDLINE_MAX)).is_err());
        assert!(write_start_info(&m, 4 << 20, "a\0b").is_err());
    }
}
