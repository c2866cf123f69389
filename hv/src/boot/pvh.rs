//! PVH: an ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note, hvlab's own guest format.
//!
//! hv boots guests exactly as QEMU's `-kernel` does for a PVH ELF: 32-bit protected mode,
//! paging off, flat segments, EBX = guest-physical address of the `hvm_start_info`. One boot
//! path for both VMMs keeps their numbers comparable.

use std::io::Cursor;

use hvlab_protocol::{CMDLINE_ADDR, CMDLINE_MAX, IMAGE_BASE, START_INFO_ADDR};
use kvm_bindings::{kvm_regs, kvm_sregs};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Format, KernelBoot, LoadedKernel, Rejected, StartState};
use crate::error::HvError;

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// Where the E820-style memory map follows the start info.
const MEMMAP_ADDR: u64 = START_INFO_ADDR + 0x100;
/// Where the module list (the initrd, when there is one) follows the memory map.
const MODLIST_ADDR: u64 = START_INFO_ADDR + 0x200;
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
    write_start_info_with(mem, ram_bytes, cmdline, None)
}

/// [`write_start_info`] with an optional module 0 (guest-physical address, size).
fn write_start_info_with(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    cmdline: &str,
    module: Option<(u64, u64)>,
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
    if let Some((addr, size)) = module {
        // struct hvm_modlist_entry { u64 paddr; u64 size; u64 cmdline_paddr; u64 reserved; }
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&addr.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&[0u8; 16]);
        w(MODLIST_ADDR, &m)?;
    }

    // struct hvm_start_info (version 1).
    let mut si = Vec::with_capacity(56);
    si.extend_from_slice(&PVH_MAGIC.to_le_bytes());
    si.extend_from_slice(&1u32.to_le_bytes()); // version
    si.extend_from_slice(&0u32.to_le_bytes()); // flags
    si.extend_from_slice(&u32::from(module.is_some()).to_le_bytes()); // nr_modules
    let modlist = if module.is_some() { MODLIST_ADDR } else { 0 };
    si.extend_from_slice(&modlist.to_le_bytes()); // modlist_paddr
    si.extend_from_slice(&CMDLINE_ADDR.to_le_bytes());
    si.extend_from_slice(&0u64.to_le_bytes()); // rsdp_paddr
    si.extend_from_slice(&MEMMAP_ADDR.to_le_bytes());
    si.extend_from_slice(&1u32.to_le_bytes()); // memmap_entries
    si.extend_from_slice(&0u32.to_le_bytes());
    w(START_INFO_ADDR, &si)
}

/// Puts `sregs`/`regs` into the PVH entry state for `entry`.
pub fn pvh_entry_state(sregs: &mut kvm_sregs, entry: u64) -> kvm_regs {
    pvh_start(entry).apply(sregs)
}

/// Loads an hvlab guest image (PVH) with its start info and command line.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    image: &[u8],
    cmdline: &str,
) -> Result<StartState, HvError> {
    let entry = load_elf(mem, image)?;
    write_start_info(mem, ram_bytes, cmdline)?;
    Ok(pvh_start(entry.pvh_entry))
}

fn pvh_start(entry: u64) -> StartState {
    StartState {
        rbx: START_INFO_ADDR,
        ..StartState::protected(entry)
    }
}

/// `hv boot` of a PVH ELF: the image, then the initrd (page-aligned after it) as module 0,
/// and the start info with `boot`'s command line. An ELF without a PVH note, or one
/// linux-loader cannot load (an ELF32), is not this format: multiboot is tried next.
pub(crate) fn load_kernel(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    image: &[u8],
    boot: &KernelBoot,
) -> Result<LoadedKernel, Rejected> {
    if image.get(..4) == Some(b"\x7fELF") && image.get(4) == Some(&1) {
        return Err(Rejected::NotThisFormat(
            "a 32-bit ELF (hv loads PVH kernels from ELF64 files)".into(),
        ));
    }
    let entry = load_elf(mem, image).map_err(|e| match e {
        HvError::Image(r) => Rejected::NotThisFormat(r),
        other => Rejected::NotThisFormat(other.to_string()),
    })?;
    if entry.image_end > ram_bytes {
        return Err(Rejected::Invalid(format!(
            "the image ends at {:#x}, past {} MiB of guest RAM",
            entry.image_end,
            ram_bytes >> 20
        )));
    }
    let mut end = entry.image_end;
    let module = match &boot.initrd {
        Some(rd) => {
            let at = super::align_up(end, 4096);
            super::put(mem, ram_bytes, at, rd)?;
            end = at + rd.len() as u64;
            Some((at, rd.len() as u64))
        }
        None => None,
    };
    write_start_info_with(mem, ram_bytes, &boot.cmdline, module)
        .map_err(|e| Rejected::Invalid(e.to_string()))?;
    Ok(LoadedKernel {
        format: Format::Pvh,
        start: pvh_start(entry.pvh_entry),
        end,
    })
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
    fn pvh_kernel_gets_its_initrd_as_module_zero() {
        let m = mem();
        let guest = std::fs::read(env!("HVLAB_GUEST_ELF")).unwrap();
        let boot = KernelBoot {
            cmdline: "exit-floor".into(),
            initrd: Some(vec![7u8; 5000]),
            initrd_name: "rd".into(),
            kernel_name: String::new(),
        };
        let k = load_kernel(&m, 4 << 20, &guest, &boot).unwrap();
        assert_eq!(k.format, Format::Pvh);
        assert_eq!(k.start.rbx, START_INFO_ADDR);
        let nr: u32 = m.read_obj(GuestAddress(START_INFO_ADDR + 12)).unwrap();
        let list: u64 = m.read_obj(GuestAddress(START_INFO_ADDR + 16)).unwrap();
        assert_eq!((nr, list), (1, MODLIST_ADDR));
        let paddr: u64 = m.read_obj(GuestAddress(list)).unwrap();
        let size: u64 = m.read_obj(GuestAddress(list + 8)).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(paddr % 4096, 0);
        assert_eq!(k.end, paddr + 5000);
        let b: u8 = m.read_obj(GuestAddress(paddr + 4999)).unwrap();
        assert_eq!(b, 7);
        // Too big for RAM: refused as this format's error, not passed on.
        let huge = KernelBoot {
            initrd: Some(vec![0u8; 4 << 20]),
            ..boot
        };
        assert!(matches!(
            load_kernel(&m, 4 << 20, &guest, &huge),
            Err(Rejected::Invalid(_))
        ));
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
