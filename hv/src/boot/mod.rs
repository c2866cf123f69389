//! Loading a kernel into guest memory and putting the boot vCPU where its boot protocol says.
//!
//! One file per format: [`pvh`] (an ELF with a PVH note: hvlab's own guests, as QEMU's
//! `-kernel` boots them), [`multiboot`] (multiboot v1: ELF32, ELF64 or the a.out-kludge
//! address fields; kvm-unit-tests' `.flat` files are such ELF32 images) and [`bzimage`] (a
//! Linux bzImage through the 32-bit boot protocol). [`load_kernel`] tries them in that order,
//! as QEMU does, and a file that is none of them gets one line naming each format and why it
//! did not fit. [`session`] runs such a kernel (`hv boot`).
//!
//! Only the boot vCPU gets a start state here. Secondary vCPUs need none: with the local APICs
//! in KVM (hv always has them), KVM creates every vCPU but the first in
//! `KVM_MP_STATE_UNINITIALIZED`, and starts it in real mode at the SIPI vector's page when the
//! boot vCPU sends INIT and SIPI, as on hardware.

pub mod bzimage;
pub mod multiboot;
pub mod pvh;
pub mod session;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::HvError;

pub use pvh::{BootEntry, load_elf, load_guest, pvh_entry_state, write_start_info};

/// What the kernel gets besides its image (`hv boot --append/--initrd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelBoot {
    /// Kernel command line.
    pub cmdline: String,
    /// Initial RAM disk: a multiboot module (as QEMU passes `-initrd`), the bzImage initrd, or
    /// PVH module 0.
    pub initrd: Option<Vec<u8>>,
    /// The initrd's name, used as the multiboot module's string (QEMU passes the file name).
    pub initrd_name: String,
    /// The kernel's file name. Multiboot kernels get it as the first word of their command
    /// line, as QEMU passes it (kvm-unit-tests takes that word as `argv[0]`).
    pub kernel_name: String,
}

/// The boot formats, in the order [`load_kernel`] tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pvh,
    Multiboot,
    BzImage,
}

impl Format {
    /// The format's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Pvh => "PVH ELF",
            Format::Multiboot => "multiboot",
            Format::BzImage => "Linux bzImage",
        }
    }
}

/// The boot vCPU's initial registers, as the kernel's boot protocol defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartState {
    /// 32-bit entry point (protected mode, paging off).
    pub entry: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
    /// Code and data selectors, and the GDT (base, limit) that holds them when the protocol
    /// requires a loaded one (Linux: `__BOOT_CS` 0x10, `__BOOT_DS` 0x18).
    pub cs: u16,
    pub ds: u16,
    pub gdt: Option<(u64, u16)>,
}

impl StartState {
    /// Flat 32-bit protected mode at `entry`, everything else zero (selectors 0x08/0x10).
    pub fn protected(entry: u64) -> StartState {
        StartState {
            entry,
            rax: 0,
            rbx: 0,
            rsi: 0,
            cs: 0x08,
            ds: 0x10,
            gdt: None,
        }
    }

    /// Writes the state into `sregs` and returns the general registers: 32-bit protected mode,
    /// flat 4 GiB segments, paging off, interrupts off.
    pub fn apply(&self, sregs: &mut kvm_sregs) -> kvm_regs {
        sregs.cs = flat_segment(self.cs, 0xb); // execute/read, accessed
        let data = flat_segment(self.ds, 0x3); // read/write, accessed
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        if let Some((base, limit)) = self.gdt {
            sregs.gdt.base = base;
            sregs.gdt.limit = limit;
        }
        sregs.cr0 = 0x11; // PE | ET
        sregs.cr4 = 0;
        sregs.efer = 0;
        kvm_regs {
            rip: self.entry,
            rax: self.rax,
            rbx: self.rbx,
            rsi: self.rsi,
            rflags: 0x2,
            ..Default::default()
        }
    }
}

pub(crate) fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
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

/// A kernel in guest memory, ready to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    pub format: Format,
    pub start: StartState,
    /// First byte after everything loaded (image, boot data, modules).
    pub end: u64,
}

/// Loads `image` as the first format that accepts it (PVH ELF, multiboot, bzImage) and writes
/// its boot data. A file none accepts gets one error naming every format and its reason.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    image: &[u8],
    boot: &KernelBoot,
) -> Result<LoadedKernel, HvError> {
    let mut why = Vec::new();
    match pvh::load_kernel(mem, ram_bytes, image, boot) {
        Ok(k) => return Ok(k),
        Err(Rejected::NotThisFormat(r)) => why.push(format!("{}: {r}", Format::Pvh.name())),
        Err(Rejected::Invalid(r)) => return Err(invalid(Format::Pvh, r)),
    }
    match multiboot::load(mem, ram_bytes, image, boot) {
        Ok(k) => return Ok(k),
        Err(Rejected::NotThisFormat(r)) => why.push(format!("{}: {r}", Format::Multiboot.name())),
        Err(Rejected::Invalid(r)) => return Err(invalid(Format::Multiboot, r)),
    }
    match bzimage::load(mem, ram_bytes, image, boot) {
        Ok(k) => return Ok(k),
        Err(Rejected::NotThisFormat(r)) => why.push(format!("{}: {r}", Format::BzImage.name())),
        Err(Rejected::Invalid(r)) => return Err(invalid(Format::BzImage, r)),
    }
    Err(HvError::Image(format!(
        "not a bootable kernel; tried {}",
        why.join("; ")
    )))
}

fn invalid(f: Format, reason: String) -> HvError {
    HvError::Image(format!("{} kernel: {reason}", f.name()))
}

/// Why a loader refused an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The image is not in this format (the next one is tried).
    NotThisFormat(String),
    /// The image is in this format but cannot be booted (bad header, does not fit in RAM);
    /// no other format is tried.
    Invalid(String),
}

/// Writes `bytes` at `addr`, which must lie inside the first `ram_bytes` of guest memory.
pub(crate) fn put(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    addr: u64,
    bytes: &[u8],
) -> Result<(), Rejected> {
    let end = addr.checked_add(bytes.len() as u64);
    if end.is_none_or(|e| e > ram_bytes) {
        return Err(Rejected::Invalid(format!(
            "{} bytes at {addr:#x} do not fit in {} MiB of guest RAM",
            bytes.len(),
            ram_bytes >> 20
        )));
    }
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| Rejected::Invalid(format!("writing {addr:#x}: {e}")))
}

/// Zero-fills `len` bytes at `addr` (inside RAM), e.g. a BSS.
pub(crate) fn zero(
    mem: &GuestMemoryMmap,
    ram_bytes: u64,
    addr: u64,
    len: u64,
) -> Result<(), Rejected> {
    let mut done = 0u64;
    let page = [0u8; 4096];
    while done < len {
        let n = (len - done).min(4096);
        put(mem, ram_bytes, addr + done, &page[..n as usize])?;
        done += n;
    }
    Ok(())
}

pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

pub(crate) fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

pub(crate) fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub(crate) fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Checks a command line for the boot data: no NUL, at most `max` bytes.
pub(crate) fn check_cmdline(cmdline: &str, max: usize) -> Result<(), Rejected> {
    if cmdline.bytes().any(|b| b == 0) {
        return Err(Rejected::Invalid(
            "the command line contains a NUL byte".into(),
        ));
    }
    if cmdline.len() > max {
        return Err(Rejected::Invalid(format!(
            "the command line is {} bytes; the limit is {max}",
            cmdline.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
    }

    #[test]
    fn a_file_in_no_format_names_every_format_and_why() {
        let err = load_kernel(&mem(), 8 << 20, &[0x55u8; 9000], &KernelBoot::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("PVH ELF: not an ELF file"), "{err}");
        assert!(err.contains("multiboot: no multiboot header"), "{err}");
        assert!(err.contains("Linux bzImage: no \"HdrS\""), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn start_state_is_flat_protected_mode_with_paging_off() {
        let mut s = kvm_sregs::default();
        let mut st = StartState::protected(0x10_0000);
        st.rax = 0x2bad_b002;
        st.rbx = 0x9000;
        let r = st.apply(&mut s);
        assert_eq!(
            (r.rip, r.rax, r.rbx, r.rflags),
            (0x10_0000, 0x2bad_b002, 0x9000, 2)
        );
        assert_eq!(s.cr0 & 0x8000_0001, 1, "PE on, PG off");
        assert_eq!((s.cs.base, s.cs.limit, s.cs.db), (0, 0xffff_ffff, 1));
        assert_eq!(s.ss.type_, 3);
    }

    #[test]
    fn put_refuses_writes_past_ram() {
        let m = mem();
        assert!(put(&m, 8 << 20, (8 << 20) - 2, &[1, 2]).is_ok());
        assert!(matches!(
            put(&m, 8 << 20, (8 << 20) - 1, &[1, 2]),
            Err(Rejected::Invalid(_))
        ));
        assert!(matches!(
            put(&m, 8 << 20, u64::MAX, &[1]),
            Err(Rejected::Invalid(_))
        ));
    }
}
