//! Multiboot v1 (the GNU Multiboot Specification 0.6.96): the header in the image's first
//! 8 KiB, the image loaded from its ELF32/ELF64 program headers or from the header's a.out-kludge
//! address fields (flag bit 16, which takes precedence, as in QEMU), the multiboot information
//! structure with mem_lower/mem_upper, a memory map, the command line and modules (the initrd
//! is module 0, named by its file name, as QEMU passes `-initrd`), and the start state the
//! specification requires: 32-bit protected mode, flat segments, paging and interrupts off,
//! EAX = 0x2BADB002, EBX = the information structure's address.
//!
//! Where things go: the image where it asks; modules page-aligned after the image's last byte;
//! the boot information (the structure, then the memory map, module list, names and command
//! line in the two pages from it) at [`INFO_ADDR`] in low memory, where QEMU's multiboot option
//! ROM puts it, or, for an image that loads over that (kvm-unit-tests' realmode.flat loads at
//! 0x8000), page-aligned after the modules.

use vm_memory::GuestMemoryMmap;

use super::{
    Format, KernelBoot, LoadedKernel, Rejected, StartState, align_up, le16, le32, le64, put, zero,
};

/// Header magic (in the image) and the boot loader's magic (in EAX at entry).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie, 32-bit aligned, within the image's first this-many bytes.
pub const SEARCH_BYTES: usize = 8192;

/// Header flags: align modules on pages; memory information wanted; video mode wanted (hv
/// has no framebuffer: the field is left out, which the specification allows); address fields
/// valid.
const F_PAGE_ALIGN: u32 = 1 << 0;
const F_MEMINFO: u32 = 1 << 1;
const F_VIDEO: u32 = 1 << 2;
const F_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15 are requirements: a loader must refuse an image with one it does not know.
const F_KNOWN_REQUIRED: u32 = F_PAGE_ALIGN | F_MEMINFO | F_VIDEO;

/// Information structure flags.
const I_MEM: u32 = 1 << 0;
const I_CMDLINE: u32 = 1 << 2;
const I_MODS: u32 = 1 << 3;
const I_MMAP: u32 = 1 << 6;
const I_LOADER_NAME: u32 = 1 << 9;

/// Boot information layout (low memory, below any kernel that loads at 1 MiB or higher).
pub const INFO_ADDR: u64 = 0x9000;
/// Offsets from the information structure.
const MMAP_OFF: u64 = 0x100;
const MODS_OFF: u64 = 0x300;
const LOADER_NAME_OFF: u64 = 0x340;
const MOD_STRING_OFF: u64 = 0x400;
const MOD_STRING_MAX: usize = 0x400;
const CMDLINE_OFF: u64 = 0x1000;
/// Longest command line, NUL included.
pub const CMDLINE_MAX: usize = 0x1000;
/// Bytes the boot information takes.
const INFO_LEN: u64 = CMDLINE_OFF + CMDLINE_MAX as u64;

/// Conventional memory the map reports: 0-0x9fc00 RAM (639 KiB, as a PC BIOS leaves it), then
/// the EBDA and the BIOS area reserved, RAM again from 1 MiB.
const LOW_RAM_END: u64 = 0x9_fc00;
const BIOS_AREA: u64 = 0xf_0000;
const HIGH_RAM: u64 = 0x10_0000;

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr (flag bit 16).
    pub aout: Option<[u32; 5]>,
}

/// Finds the multiboot header (magic, flags, checksum summing to zero) in the first 8 KiB.
pub fn find_header(image: &[u8]) -> Option<Header> {
    let limit = image.len().min(SEARCH_BYTES);
    (0..limit.saturating_sub(11)).step_by(4).find_map(|off| {
        let magic = le32(image, off)?;
        let flags = le32(image, off + 4)?;
        let sum = le32(image, off + 8)?;
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            return None;
        }
        let aout = if flags & F_AOUT_KLUDGE != 0 {
            let mut a = [0u32; 5];
            for (i, v) in a.iter_mut().enumerate() {
                *v = le32(image, off + 12 + 4 * i)?;
            }
            Some(a)
        } else {
            None
        };
        Some(Header {
            offset: off,
            flags,
            aout,
        })
    })
}

/// Loads a multiboot image and writes its boot information.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    image: &[u8],
    boot: &KernelBoot,
) -> Result<LoadedKernel, Rejected> {
    let h = find_header(image).ok_or_else(|| {
        Rejected::NotThisFormat(format!(
            "no multiboot header (magic {HEADER_MAGIC:#x} with a valid checksum) in the first {} KiB",
            SEARCH_BYTES / 1024
        ))
    })?;
    let unknown = h.flags & 0xffff & !F_KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(Rejected::Invalid(format!(
            "the header requires features hv does not know (flag bits {unknown:#x})"
        )));
    }
    // QEMU's multiboot command line: the kernel's file name, a space, then `-append`'s text.
    let cmdline = if boot.kernel_name.is_empty() {
        boot.cmdline.clone()
    } else {
        format!("{} {}", boot.kernel_name, boot.cmdline)
    };
    super::check_cmdline(&cmdline, CMDLINE_MAX - 1)?;
    let (entry, segments) = match h.aout {
        Some(a) => aout_segments(image, h.offset, a)?,
        None => elf_segments(image)?,
    };
    let mut end = 0u64;
    for s in &segments {
        let seg_end = s.addr.checked_add(s.mem_len).filter(|&e| e <= ram_bytes);
        let Some(seg_end) = seg_end else {
            return Err(Rejected::Invalid(format!(
                "a segment at {:#x} ({} bytes) does not fit in {} MiB of guest RAM",
                s.addr,
                s.mem_len,
                ram_bytes >> 20
            )));
        };
        end = end.max(seg_end);
    }
    for s in &segments {
        let bytes = image
            .get(s.file_off..s.file_off + s.file_len)
            .ok_or_else(|| Rejected::Invalid("a segment lies past the end of the file".into()))?;
        put(mem, ram_bytes, s.addr, bytes)?;
        zero(
            mem,
            ram_bytes,
            s.addr + s.file_len as u64,
            s.mem_len - s.file_len as u64,
        )?;
    }

    // The boot information's place: low memory unless the image loads over it.
    let low_taken = segments
        .iter()
        .any(|s| s.addr < INFO_ADDR + INFO_LEN && s.addr + s.mem_len > INFO_ADDR);
    // Modules: page-aligned after the image (always aligned, so bit 0 is honoured).
    let mut flags = I_MEM | I_MMAP | I_CMDLINE | I_LOADER_NAME;
    let mut mods_count = 0u32;
    let mut module = None;
    if let Some(rd) = &boot.initrd {
        let at = align_up(end, 4096);
        put(mem, ram_bytes, at, rd)?;
        end = at + rd.len() as u64;
        module = Some((at, end));
    }
    let base = if low_taken {
        let b = align_up(end, 4096);
        end = b + INFO_LEN;
        b
    } else {
        INFO_ADDR
    };
    if let Some((at, mod_end)) = module {
        let mut name = boot.initrd_name.as_bytes().to_vec();
        name.retain(|&b| b != 0);
        name.truncate(MOD_STRING_MAX - 1);
        name.push(0);
        put(mem, ram_bytes, base + MOD_STRING_OFF, &name)?;
        let mut m = Vec::with_capacity(16);
        m.extend_from_slice(&(at as u32).to_le_bytes());
        m.extend_from_slice(&(mod_end as u32).to_le_bytes());
        m.extend_from_slice(&((base + MOD_STRING_OFF) as u32).to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        put(mem, ram_bytes, base + MODS_OFF, &m)?;
        flags |= I_MODS;
        mods_count = 1;
    }
    if end > u64::from(u32::MAX) {
        return Err(Rejected::Invalid("modules must end below 4 GiB".into()));
    }

    let mut line = cmdline.into_bytes();
    line.push(0);
    put(mem, ram_bytes, base + CMDLINE_OFF, &line)?;
    put(mem, ram_bytes, base + LOADER_NAME_OFF, b"hvlab\0")?;
    let map = memory_map(ram_bytes);
    let mut mm = Vec::with_capacity(map.len() * 24);
    for (base, len, kind) in &map {
        mm.extend_from_slice(&20u32.to_le_bytes()); // size of the entry, less this field
        mm.extend_from_slice(&base.to_le_bytes());
        mm.extend_from_slice(&len.to_le_bytes());
        mm.extend_from_slice(&kind.to_le_bytes());
    }
    put(mem, ram_bytes, base + MMAP_OFF, &mm)?;

    let mut info = [0u8; 88];
    let mut set = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    set(0, flags);
    set(4, (LOW_RAM_END / 1024) as u32); // mem_lower, KiB
    set(
        8,
        ((ram_bytes.min(u64::from(u32::MAX)) - HIGH_RAM) / 1024) as u32,
    ); // mem_upper
    set(16, (base + CMDLINE_OFF) as u32);
    set(20, mods_count);
    let mods_addr = base + MODS_OFF;
    set(24, if mods_count > 0 { mods_addr as u32 } else { 0 });
    set(44, mm.len() as u32);
    set(48, (base + MMAP_OFF) as u32);
    set(64, (base + LOADER_NAME_OFF) as u32);
    put(mem, ram_bytes, base, &info)?;

    let mut start = StartState::protected(entry);
    start.rax = u64::from(BOOTLOADER_MAGIC);
    start.rbx = base;
    Ok(LoadedKernel {
        format: Format::Multiboot,
        start,
        end,
    })
}

/// The memory map: (base, length, type) with type 1 = RAM, 2 = reserved.
pub fn memory_map(ram_bytes: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, LOW_RAM_END, 1),
        (LOW_RAM_END, 0xa_0000 - LOW_RAM_END, 2),
        (BIOS_AREA, HIGH_RAM - BIOS_AREA, 2),
        (HIGH_RAM, ram_bytes - HIGH_RAM, 1),
    ]
}

/// One piece of the image to copy into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    addr: u64,
    file_off: usize,
    file_len: usize,
    /// file_len plus the zero-filled rest (BSS).
    mem_len: u64,
}

/// The a.out kludge: the file from `header_offset - (header_addr - load_addr)` is loaded at
/// load_addr up to load_end_addr (0: the end of the file), zeroed up to bss_end_addr (0: no
/// BSS), and entered at entry_addr.
fn aout_segments(
    image: &[u8],
    header_offset: usize,
    [
        header_addr,
        load_addr,
        load_end_addr,
        bss_end_addr,
        entry_addr,
    ]: [u32; 5],
) -> Result<(u64, Vec<Segment>), Rejected> {
    let bad = |why: &str| Rejected::Invalid(format!("a.out-kludge address fields: {why}"));
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_off = (header_offset as u64)
        .checked_sub(u64::from(header_addr - load_addr))
        .ok_or_else(|| bad("the header is nearer the file's start than header_addr - load_addr"))?
        as usize;
    let file_len = if load_end_addr == 0 {
        image.len() - file_off
    } else {
        if load_end_addr < load_addr {
            return Err(bad("load_end_addr is below load_addr"));
        }
        (load_end_addr - load_addr) as usize
    };
    if file_off + file_len > image.len() {
        return Err(bad("load_end_addr lies past the end of the file"));
    }
    let load_end = u64::from(load_addr) + file_len as u64;
    let mem_end = if bss_end_addr == 0 {
        load_end
    } else if u64::from(bss_end_addr) < load_end {
        return Err(bad("bss_end_addr is below the loaded image's end"));
    } else {
        u64::from(bss_end_addr)
    };
    if u64::from(entry_addr) < u64::from(load_addr) || u64::from(entry_addr) >= mem_end {
        return Err(bad("entry_addr lies outside the loaded image"));
    }
    Ok((
        u64::from(entry_addr),
        vec![Segment {
            addr: u64::from(load_addr),
            file_off,
            file_len,
            mem_len: mem_end - u64::from(load_addr),
        }],
    ))
}

const PT_LOAD: u32 = 1;
/// Program headers accepted (a bound on what a file can make hv allocate).
const MAX_PHDRS: usize = 64;

/// The entry point and PT_LOAD segments (physical addresses) of an ELF32 or ELF64 image.
fn elf_segments(image: &[u8]) -> Result<(u64, Vec<Segment>), Rejected> {
    let bad = |why: String| Rejected::Invalid(format!("ELF: {why}"));
    if image.get(..4) != Some(b"\x7fELF") {
        return Err(Rejected::Invalid(
            "the header has no address fields (flag bit 16) and the file is not ELF".into(),
        ));
    }
    let class = image.get(4).copied().unwrap_or(0);
    if image.get(5) != Some(&1) {
        return Err(bad("not little-endian".into()));
    }
    let short = || bad("truncated header".into());
    let (entry, phoff, phentsize, phnum, wide) = match class {
        1 => (
            u64::from(le32(image, 24).ok_or_else(short)?),
            u64::from(le32(image, 28).ok_or_else(short)?),
            le16(image, 42).ok_or_else(short)?,
            le16(image, 44).ok_or_else(short)?,
            false,
        ),
        2 => (
            le64(image, 24).ok_or_else(short)?,
            le64(image, 32).ok_or_else(short)?,
            le16(image, 54).ok_or_else(short)?,
            le16(image, 56).ok_or_else(short)?,
            true,
        ),
        c => return Err(bad(format!("unknown class {c}"))),
    };
    let want = if wide { 56 } else { 32 };
    if usize::from(phentsize) != want {
        return Err(bad(format!(
            "program header size {phentsize}, expected {want}"
        )));
    }
    if usize::from(phnum) > MAX_PHDRS {
        return Err(bad(format!(
            "{phnum} program headers (at most {MAX_PHDRS})"
        )));
    }
    if entry > u64::from(u32::MAX) {
        return Err(bad(format!(
            "entry point {entry:#x} is above 4 GiB (multiboot enters in 32-bit mode)"
        )));
    }
    let mut segs = Vec::new();
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * want as u64)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(|| bad("program headers lie past the end of the file".into()))?;
        let ph = image
            .get(at..at + want)
            .ok_or_else(|| bad("program headers lie past the end of the file".into()))?;
        let field = |o32: usize, o64: usize| -> u64 {
            if wide {
                le64(ph, o64).unwrap_or(0)
            } else {
                u64::from(le32(ph, o32).unwrap_or(0))
            }
        };
        if le32(ph, 0) != Some(PT_LOAD) {
            continue;
        }
        let (offset, paddr, filesz, memsz) = if wide {
            (field(0, 8), field(0, 24), field(0, 32), field(0, 40))
        } else {
            (field(4, 0), field(12, 0), field(16, 0), field(20, 0))
        };
        if filesz > memsz {
            return Err(bad(format!("segment {i}: file size above memory size")));
        }
        let file_end = offset
            .checked_add(filesz)
            .filter(|&e| e <= image.len() as u64);
        if file_end.is_none() {
            return Err(bad(format!("segment {i} lies past the end of the file")));
        }
        if memsz == 0 {
            continue;
        }
        segs.push(Segment {
            addr: paddr,
            file_off: offset as usize,
            file_len: filesz as usize,
            mem_len: memsz,
        });
    }
    if segs.is_empty() {
        return Err(bad("no loadable segment".into()));
    }
    Ok((entry, segs))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const RAM: u64 = 16 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&(0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)).to_le_bytes());
        for v in aout.unwrap_or_default() {
            if aout.is_some() {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h
    }

    /// A minimal ELF32 or ELF64 with one PT_LOAD (`code` at paddr 0x200000, `bss` more bytes)
    /// and the multiboot header at file offset 0x100.
    fn elf(wide: bool, code: &[u8], bss: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if wide { 2 } else { 1 };
        f[5] = 1;
        f[6] = 1;
        let (phoff, phsz) = if wide { (64u64, 56u16) } else { (52, 32) };
        let paddr = 0x20_0000u64;
        let off = 0x100u64; // the segment covers the header and the code after it
        let hdr = header(F_MEMINFO | F_PAGE_ALIGN, None);
        let filesz = (hdr.len() + code.len()) as u64;
        let entry = paddr + hdr.len() as u64;
        if wide {
            f[24..32].copy_from_slice(&entry.to_le_bytes());
            f[32..40].copy_from_slice(&phoff.to_le_bytes());
            f[54..56].copy_from_slice(&phsz.to_le_bytes());
            f[56..58].copy_from_slice(&1u16.to_le_bytes());
            let p = phoff as usize;
            f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&0xffff_8000_0000_0000u64.to_le_bytes()); // vaddr
            f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&(filesz + bss).to_le_bytes());
        } else {
            f[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            f[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
            f[42..44].copy_from_slice(&phsz.to_le_bytes());
            f[44..46].copy_from_slice(&1u16.to_le_bytes());
            let p = phoff as usize;
            f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&(off as u32).to_le_bytes());
            f[p + 12..p + 16].copy_from_slice(&(paddr as u32).to_le_bytes());
            f[p + 16..p + 20].copy_from_slice(&(filesz as u32).to_le_bytes());
            f[p + 20..p + 24].copy_from_slice(&((filesz + bss) as u32).to_le_bytes());
        }
        f.extend_from_slice(&hdr);
        f.extend_from_slice(code);
        f
    }

    fn boot(cmdline: &str, initrd: Option<Vec<u8>>) -> KernelBoot {
        KernelBoot {
            cmdline: cmdline.into(),
            initrd,
            initrd_name: "env.txt".into(),
            kernel_name: "x86/test.flat".into(),
        }
    }

    fn info(m: &GuestMemoryMmap, off: u64) -> u32 {
        m.read_obj(GuestAddress(INFO_ADDR + off)).unwrap()
    }

    fn cstr(m: &GuestMemoryMmap, addr: u32) -> String {
        let mut s = Vec::new();
        for i in 0..4096u64 {
            let b: u8 = m.read_obj(GuestAddress(u64::from(addr) + i)).unwrap();
            if b == 0 {
                break;
            }
            s.push(b);
        }
        String::from_utf8(s).unwrap()
    }

    fn check_loaded(wide: bool) {
        let m = mem();
        // Dirty the BSS first: the loader must zero it.
        m.write_slice(&[0xaa; 64], GuestAddress(0x20_0000 + 12 + 4))
            .unwrap();
        let image = elf(wide, &[0xf4, 0x90, 0x90, 0x90], 0x1000);
        let k =
            super::super::load_kernel(&m, RAM, &image, &boot("a b=c", Some(vec![9; 100]))).unwrap();
        assert_eq!(k.format, Format::Multiboot);
        assert_eq!(k.start.rax, 0x2bad_b002);
        assert_eq!(k.start.rbx, INFO_ADDR);
        assert_eq!(k.start.entry, 0x20_000c);
        let code: u8 = m.read_obj(GuestAddress(0x20_000c)).unwrap();
        assert_eq!(code, 0xf4);
        let bss: u8 = m.read_obj(GuestAddress(0x20_0000 + 16 + 8)).unwrap();
        assert_eq!(bss, 0, "BSS zeroed");
        let flags = info(&m, 0);
        assert_eq!(flags, I_MEM | I_CMDLINE | I_MODS | I_MMAP | I_LOADER_NAME);
        assert_eq!(info(&m, 4), 639);
        assert_eq!(info(&m, 8), ((RAM - (1 << 20)) / 1024) as u32);
        assert_eq!(cstr(&m, info(&m, 16)), "x86/test.flat a b=c", "QEMU's form");
        assert_eq!(info(&m, 20), 1);
        let mods = info(&m, 24);
        let start: u32 = m.read_obj(GuestAddress(u64::from(mods))).unwrap();
        let end: u32 = m.read_obj(GuestAddress(u64::from(mods) + 4)).unwrap();
        let name: u32 = m.read_obj(GuestAddress(u64::from(mods) + 8)).unwrap();
        assert_eq!(end - start, 100);
        assert_eq!(start % 4096, 0);
        assert!(
            u64::from(start) >= 0x20_0000 + 16 + 0x1000,
            "module after the BSS"
        );
        assert_eq!(cstr(&m, name), "env.txt");
        let b: u8 = m.read_obj(GuestAddress(u64::from(start))).unwrap();
        assert_eq!(b, 9);
        // Memory map: 4 entries of 24 bytes; the last is RAM from 1 MiB to the end.
        assert_eq!(info(&m, 44), 96);
        let mmap = u64::from(info(&m, 48));
        let size: u32 = m.read_obj(GuestAddress(mmap + 72)).unwrap();
        let base: u64 = m.read_obj(GuestAddress(mmap + 76)).unwrap();
        let len: u64 = m.read_obj(GuestAddress(mmap + 84)).unwrap();
        let kind: u32 = m.read_obj(GuestAddress(mmap + 92)).unwrap();
        assert_eq!((size, base, len, kind), (20, 1 << 20, RAM - (1 << 20), 1));
        assert_eq!(cstr(&m, info(&m, 64)), "hvlab");
    }

    #[test]
    fn loads_an_elf32_image_with_info_modules_and_memory_map() {
        check_loaded(false);
    }

    #[test]
    fn loads_an_elf64_image_by_physical_address() {
        check_loaded(true);
    }

    #[test]
    fn loads_an_aout_kludge_image_from_its_address_fields() {
        let m = mem();
        // File: 0x40 bytes of padding, header at 0x40, code after it. Loaded at 0x300000 from
        // file offset 0, BSS to 0x302000, entry just past the header.
        let base = 0x30_0000u32;
        let hdr_len = 32u32;
        let mut f = vec![0u8; 0x40];
        let fields = [
            base + 0x40,               // header_addr
            base,                      // load_addr
            base + 0x40 + hdr_len + 4, // load_end_addr
            base + 0x2000,             // bss_end_addr
            base + 0x40 + hdr_len,     // entry_addr
        ];
        f.extend_from_slice(&header(F_AOUT_KLUDGE, Some(fields)));
        f.extend_from_slice(&[0xf4, 1, 2, 3, 0xee, 0xee]); // last two bytes past load_end
        m.write_slice(
            &[0x55; 16],
            GuestAddress(u64::from(base) + 0x40 + u64::from(hdr_len) + 4),
        )
        .unwrap();
        let k = load(&m, RAM, &f, &boot("", None)).unwrap();
        assert_eq!(k.start.entry, u64::from(base + 0x40 + hdr_len));
        let b: u8 = m.read_obj(GuestAddress(k.start.entry)).unwrap();
        assert_eq!(b, 0xf4);
        let past: u8 = m.read_obj(GuestAddress(k.start.entry + 4)).unwrap();
        assert_eq!(past, 0, "bytes past load_end_addr are BSS, zeroed");
        assert_eq!(k.end, u64::from(base) + 0x2000);
        assert_eq!(info(&m, 20), 0, "no modules");
        assert_eq!(info(&m, 0) & I_MODS, 0);
    }

    #[test]
    fn an_image_loaded_over_the_low_boot_information_gets_it_after_itself() {
        // As kvm-unit-tests' realmode.flat: loaded at 0x8000, over INFO_ADDR.
        let m = mem();
        let mut low = elf(false, &[0xf4], 0x2000);
        low[52 + 12..52 + 16].copy_from_slice(&0x8000u32.to_le_bytes());
        let k = load(&m, RAM, &low, &boot("x", Some(vec![1; 10]))).unwrap();
        let seg_end = 0x8000 + 12 + 1 + 0x2000;
        assert!(
            k.start.rbx >= seg_end + 10 && k.start.rbx % 4096 == 0,
            "{:#x}",
            k.start.rbx
        );
        let b: u8 = m.read_obj(GuestAddress(0x8000 + 12)).unwrap();
        assert_eq!(b, 0xf4, "the image is intact");
        let at = |off: u64| -> u32 { m.read_obj(GuestAddress(k.start.rbx + off)).unwrap() };
        assert_eq!(cstr(&m, at(16)), "x86/test.flat x");
        assert_eq!(at(20), 1);
        assert_eq!(k.end, k.start.rbx + INFO_LEN);
    }

    #[test]
    fn finds_the_header_only_aligned_within_8k_and_with_a_good_checksum() {
        let mut f = vec![0u8; 8192 + 64];
        let h = header(0, None);
        f[8180..8192].copy_from_slice(&h);
        assert_eq!(find_header(&f).map(|h| h.offset), Some(8180));
        let mut g = vec![0u8; 8192 + 64];
        g[8192..8204].copy_from_slice(&h);
        assert_eq!(find_header(&g), None, "past 8 KiB");
        let mut u = vec![0u8; 256];
        u[18..30].copy_from_slice(&h);
        assert_eq!(find_header(&u), None, "unaligned");
        let mut c = vec![0u8; 256];
        c[16..28].copy_from_slice(&h);
        c[24] ^= 1;
        assert_eq!(find_header(&c), None, "bad checksum");
    }

    #[test]
    fn bad_multiboot_images_get_a_reason() {
        let m = mem();
        let e = |img: &[u8]| match load(&m, RAM, img, &boot("", None)) {
            Err(Rejected::Invalid(r)) => r,
            other => panic!("{other:?}"),
        };
        // Unknown required flag bit.
        let mut f = header(1 << 5, None);
        f.resize(64, 0);
        assert!(e(&f).contains("flag bits 0x20"));
        // Neither address fields nor ELF.
        let mut f = header(0, None);
        f.resize(64, 0);
        assert!(e(&f).contains("not ELF"));
        // ELF whose segment does not fit in RAM.
        let mut big = elf(false, &[0xf4], 0);
        let p = 52;
        big[p + 20..p + 24].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        assert!(e(&big).contains("does not fit"));
        // Truncated program headers.
        let mut t = elf(true, &[0xf4], 0);
        t[56..58].copy_from_slice(&40u16.to_le_bytes());
        assert!(e(&t).contains("program headers"));
        // a.out entry outside the image.
        let mut a = vec![0u8; 0];
        a.extend_from_slice(&header(
            F_AOUT_KLUDGE,
            Some([0x30_0000, 0x30_0000, 0, 0, 0x40_0000]),
        ));
        assert!(e(&a).contains("entry_addr"));
        // A command line too long.
        let ok = elf(false, &[0xf4], 0);
        assert!(matches!(
            load(&m, RAM, &ok, &boot(&"x".repeat(CMDLINE_MAX), None)),
            Err(Rejected::Invalid(_))
        ));
    }
}
