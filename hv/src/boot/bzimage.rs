//! Linux bzImage through the 32-bit boot protocol (Documentation/arch/x86/boot.rst): the
//! protected-mode kernel at 1 MiB, the zero page (`struct boot_params`) with the image's setup
//! header, an E820 map, the command line and the initrd, and the 32-bit entry state: flat
//! `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) from a loaded GDT, paging and interrupts off,
//! ESI = the zero page.
//!
//! Untested beyond the zero page and memory layout this file builds (its unit tests check
//! them): a Linux kernel cannot boot on hv's build hosts, where KVM's instruction emulator
//! runs all kernel-mode code and lacks instructions Linux needs.

use vm_memory::GuestMemoryMmap;

use super::{Format, KernelBoot, LoadedKernel, Rejected, StartState, align_up, le16, le32, put};

/// Where hv puts the GDT, the zero page and the command line (all below 640 KiB).
pub const GDT_ADDR: u64 = 0x500;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line hv writes, NUL included (the kernel's own limit may be lower).
pub const CMDLINE_MAX: usize = 0x1000;
/// Where the protected-mode kernel is loaded (`code32_start`'s default).
pub const KERNEL_ADDR: u64 = 0x10_0000;

/// Offsets in the zero page (and, for 0x1f1 onwards, in the image's first sector).
const E820_ENTRIES: usize = 0x1e8;
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const CMDLINE_SIZE: usize = 0x238;
const INIT_SIZE: usize = 0x260;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;

const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;

/// Loads a bzImage and writes its zero page.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    image: &[u8],
    boot: &KernelBoot,
) -> Result<LoadedKernel, Rejected> {
    if image.get(HEADER..HEADER + 4) != Some(b"HdrS") {
        return Err(Rejected::NotThisFormat(
            "no \"HdrS\" signature at offset 0x202".into(),
        ));
    }
    let bad = |why: String| Rejected::Invalid(why);
    let version = le16(image, VERSION).unwrap_or(0);
    if version < 0x0202 {
        return Err(bad(format!(
            "boot protocol {}.{:02}; hv needs 2.02 or later",
            version >> 8,
            version & 0xff
        )));
    }
    if le16(image, BOOT_FLAG) != Some(0xaa55) {
        return Err(bad("no 0xAA55 boot flag at offset 0x1fe".into()));
    }
    let loadflags = image.get(LOADFLAGS).copied().unwrap_or(0);
    if loadflags & LOADED_HIGH == 0 {
        return Err(bad("a zImage (loaded low); hv boots only bzImages".into()));
    }
    let setup_sects = match image.get(SETUP_SECTS).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_off = (setup_sects + 1) * 512;
    let kernel = image
        .get(kernel_off..)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "no protected-mode kernel after {setup_sects} setup sectors"
            ))
        })?;
    // The kernel needs init_size bytes from where it is loaded (protocol 2.10+).
    let init_size = if version >= 0x020a {
        u64::from(le32(image, INIT_SIZE).unwrap_or(0))
    } else {
        0
    };
    let kernel_end = KERNEL_ADDR + (kernel.len() as u64).max(init_size);
    if kernel_end > ram_bytes {
        return Err(bad(format!(
            "the kernel needs {:#x}-{kernel_end:#x}, past {} MiB of guest RAM",
            KERNEL_ADDR,
            ram_bytes >> 20
        )));
    }
    let cmdline_limit = if version >= 0x0206 {
        (le32(image, CMDLINE_SIZE).unwrap_or(255) as usize).min(CMDLINE_MAX - 1)
    } else {
        255
    };
    super::check_cmdline(&boot.cmdline, cmdline_limit)?;
    put(mem, ram_bytes, KERNEL_ADDR, kernel)?;

    // The zero page: the image's setup header (0x1f1 up to the end its jump instruction
    // gives) at the same offsets, then what the loader fills in.
    let mut zp = vec![0u8; 4096];
    let hdr_end = (HEADER + usize::from(image.get(JUMP + 1).copied().unwrap_or(0)))
        .clamp(HEADER + 4, E820_TABLE)
        .min(image.len());
    zp[SETUP_SECTS..hdr_end].copy_from_slice(&image[SETUP_SECTS..hdr_end]);
    zp[TYPE_OF_LOADER] = 0xff; // undefined loader
    zp[LOADFLAGS] = loadflags | CAN_USE_HEAP;
    zp[HEAP_END_PTR..HEAP_END_PTR + 2].copy_from_slice(&0xfe00u16.to_le_bytes());
    zp[CMD_LINE_PTR..CMD_LINE_PTR + 4].copy_from_slice(&(CMDLINE_ADDR as u32).to_le_bytes());

    let mut end = kernel_end;
    if let Some(rd) = &boot.initrd {
        // As high as the kernel allows, page-aligned, above the kernel.
        let max = if version >= 0x0203 {
            u64::from(le32(image, INITRD_ADDR_MAX).unwrap_or(0x37ff_ffff))
        } else {
            0x37ff_ffff
        };
        let top = (max + 1).min(ram_bytes);
        let at = top
            .checked_sub(rd.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= align_up(kernel_end, 4096))
            .ok_or_else(|| {
                bad(format!(
                    "the {}-byte initrd does not fit between the kernel and {top:#x}",
                    rd.len()
                ))
            })?;
        put(mem, ram_bytes, at, rd)?;
        zp[RAMDISK_IMAGE..RAMDISK_IMAGE + 4].copy_from_slice(&(at as u32).to_le_bytes());
        zp[RAMDISK_SIZE..RAMDISK_SIZE + 4].copy_from_slice(&(rd.len() as u32).to_le_bytes());
        end = end.max(at + rd.len() as u64);
    }

    let map = super::multiboot::memory_map(ram_bytes);
    zp[E820_ENTRIES] = map.len().min(E820_MAX) as u8;
    for (i, (base, len, kind)) in map.iter().take(E820_MAX).enumerate() {
        let o = E820_TABLE + i * 20;
        zp[o..o + 8].copy_from_slice(&base.to_le_bytes());
        zp[o + 8..o + 16].copy_from_slice(&len.to_le_bytes());
        zp[o + 16..o + 20].copy_from_slice(&kind.to_le_bytes());
    }
    put(mem, ram_bytes, ZERO_PAGE_ADDR, &zp)?;
    let mut line = boot.cmdline.as_bytes().to_vec();
    line.push(0);
    put(mem, ram_bytes, CMDLINE_ADDR, &line)?;

    // GDT: null, unused, __BOOT_CS (0x10), __BOOT_DS (0x18), flat 4 GiB.
    let gdt: [u64; 4] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    put(mem, ram_bytes, GDT_ADDR, &bytes)?;

    let mut start = StartState::protected(KERNEL_ADDR);
    start.rsi = ZERO_PAGE_ADDR;
    start.cs = 0x10;
    start.ds = 0x18;
    start.gdt = Some((GDT_ADDR, (bytes.len() - 1) as u16));
    Ok(LoadedKernel {
        format: Format::BzImage,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const RAM: u64 = 32 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    /// A synthetic bzImage: 2 setup sectors after the boot sector, protocol 2.15, a 0x3000-byte
    /// "kernel" of 0xk5 bytes, init_size 0x40_0000, initrd_addr_max 0x37ffffff, cmdline_size 2047.
    fn bzimage() -> Vec<u8> {
        let mut f = vec![0u8; 3 * 512];
        f[SETUP_SECTS] = 2;
        f[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[JUMP] = 0xeb;
        f[JUMP + 1] = 0x6a; // header up to 0x26c
        f[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        f[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        f[LOADFLAGS] = LOADED_HIGH;
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        f[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        f[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        f[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        f.extend(std::iter::repeat_n(0xa5u8, 0x3000));
        f
    }

    fn zp32(m: &GuestMemoryMmap, off: usize) -> u32 {
        m.read_obj(GuestAddress(ZERO_PAGE_ADDR + off as u64))
            .unwrap()
    }

    fn zp8(m: &GuestMemoryMmap, off: usize) -> u8 {
        m.read_obj(GuestAddress(ZERO_PAGE_ADDR + off as u64))
            .unwrap()
    }

    #[test]
    fn builds_the_zero_page_e820_cmdline_and_initrd() {
        let m = mem();
        let boot = KernelBoot {
            cmdline: "console=ttyS0 quiet".into(),
            initrd: Some(vec![0x42; 10_000]),
            initrd_name: "rd".into(),
            kernel_name: String::new(),
        };
        let k = super::super::load_kernel(&m, RAM, &bzimage(), &boot).unwrap();
        assert_eq!(k.format, Format::BzImage);
        assert_eq!(k.start.entry, KERNEL_ADDR);
        assert_eq!(k.start.rsi, ZERO_PAGE_ADDR);
        assert_eq!((k.start.cs, k.start.ds), (0x10, 0x18));
        assert_eq!(k.start.gdt, Some((GDT_ADDR, 31)));
        let cs: u64 = m.read_obj(GuestAddress(GDT_ADDR + 0x10)).unwrap();
        assert_eq!(cs, 0x00cf_9b00_0000_ffff);
        // Kernel bytes at 1 MiB (after the 3 sectors of boot + setup).
        let b: u8 = m.read_obj(GuestAddress(KERNEL_ADDR + 0x2fff)).unwrap();
        assert_eq!(b, 0xa5);
        // Setup header copied, loader fields filled.
        assert_eq!(zp32(&m, HEADER), u32::from_le_bytes(*b"HdrS"));
        assert_eq!(zp8(&m, SETUP_SECTS), 2);
        assert_eq!(zp8(&m, TYPE_OF_LOADER), 0xff);
        assert_eq!(zp8(&m, LOADFLAGS), LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(zp32(&m, INIT_SIZE), 0x40_0000);
        assert_eq!(zp32(&m, CMD_LINE_PTR), CMDLINE_ADDR as u32);
        let mut line = [0u8; 20];
        m.read_slice(&mut line, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&line, b"console=ttyS0 quiet\0");
        // initrd: at the top of RAM, page-aligned, above the kernel's init_size.
        let rd = u64::from(zp32(&m, RAMDISK_IMAGE));
        assert_eq!(zp32(&m, RAMDISK_SIZE), 10_000);
        assert_eq!(rd, (RAM - 10_000) & !0xfff);
        assert!(rd >= KERNEL_ADDR + 0x40_0000);
        let b: u8 = m.read_obj(GuestAddress(rd + 9_999)).unwrap();
        assert_eq!(b, 0x42);
        // E820: 4 entries, the last RAM from 1 MiB to the end.
        assert_eq!(zp8(&m, E820_ENTRIES), 4);
        let o = ZERO_PAGE_ADDR + E820_TABLE as u64 + 3 * 20;
        let base: u64 = m.read_obj(GuestAddress(o)).unwrap();
        let len: u64 = m.read_obj(GuestAddress(o + 8)).unwrap();
        let kind: u32 = m.read_obj(GuestAddress(o + 16)).unwrap();
        assert_eq!((base, len, kind), (1 << 20, RAM - (1 << 20), 1));
        // Nothing past the setup header was copied from the image (the e820 area is ours).
        assert_eq!(zp8(&m, 0x26c), 0);
    }

    #[test]
    fn bad_bzimages_get_a_reason() {
        let m = mem();
        let none = KernelBoot::default();
        let e = |img: &[u8], b: &KernelBoot| match load(&m, RAM, img, b) {
            Err(Rejected::Invalid(r)) => r,
            other => panic!("{other:?}"),
        };
        let mut old = bzimage();
        old[VERSION..VERSION + 2].copy_from_slice(&0x0201u16.to_le_bytes());
        assert!(e(&old, &none).contains("2.02 or later"));
        let mut z = bzimage();
        z[LOADFLAGS] = 0;
        assert!(e(&z, &none).contains("zImage"));
        let mut huge = bzimage();
        huge[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(e(&huge, &none).contains("past 32 MiB"));
        let long = KernelBoot {
            cmdline: "x".repeat(2048),
            ..KernelBoot::default()
        };
        assert!(e(&bzimage(), &long).contains("limit is 2047"));
        let big_rd = KernelBoot {
            initrd: Some(vec![0; 30 << 20]),
            ..KernelBoot::default()
        };
        assert!(e(&bzimage(), &big_rd).contains("does not fit"));
        assert!(matches!(
            load(&m, RAM, &[0u8; 1024], &none),
            Err(Rejected::NotThisFormat(_))
        ));
    }
}
