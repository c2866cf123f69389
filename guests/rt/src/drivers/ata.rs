//! ATA PIO driver for the master disk on the primary channel (0x1F0-0x1F7, 0x3F6). Polls
//! status (no interrupts: nIEN is set). Data moves one DRQ block at a time, in 16- or 32-bit
//! accesses, either as one `rep ins/outs` per block or as one `in/out` per word (the way that
//! makes every word its own exit).

use core::arch::asm;

use crate::cpu::{inb, inl, inw, outb, outl, outw};

const DATA: u16 = 0x1f0;
const ERROR: u16 = 0x1f1;
const NSECT: u16 = 0x1f2;
const LBA_LO: u16 = 0x1f3;
const LBA_MID: u16 = 0x1f4;
const LBA_HI: u16 = 0x1f5;
const DEVICE: u16 = 0x1f6;
const CMD: u16 = 0x1f7;
const CONTROL: u16 = 0x3f6;

pub const ST_BSY: u8 = 0x80;
pub const ST_DRQ: u8 = 0x08;
pub const ST_ERR: u8 = 0x01;
pub const ERR_ABRT: u8 = 0x04;
pub const ERR_IDNF: u8 = 0x10;
/// Uncorrectable data error (a read the device could not complete).
pub const ERR_UNC: u8 = 0x40;

pub const CMD_READ: u8 = 0x20;
pub const CMD_READ_EXT: u8 = 0x24;
pub const CMD_READ_MULTIPLE_EXT: u8 = 0x29;
pub const CMD_WRITE: u8 = 0x30;
pub const CMD_WRITE_EXT: u8 = 0x34;
pub const CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
pub const CMD_READ_MULTIPLE: u8 = 0xc4;
pub const CMD_WRITE_MULTIPLE: u8 = 0xc5;
pub const CMD_SET_MULTIPLE: u8 = 0xc6;
pub const CMD_FLUSH: u8 = 0xe7;
pub const CMD_FLUSH_EXT: u8 = 0xea;
pub const CMD_IDENTIFY: u8 = 0xec;

/// Status polls before a command is declared stuck.
const MAX_POLLS: u32 = 100_000;

/// Why an ATA command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaError {
    /// No device answers (status reads all ones or zero).
    NoDevice,
    /// ERR set: the status and error registers.
    Device { status: u8, error: u8 },
    /// BSY never cleared or DRQ never came.
    Timeout,
}

/// How data moves through the data register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PioMode {
    /// 32-bit accesses (else 16-bit).
    pub wide: bool,
    /// One string instruction per block (else one access per word).
    pub rep: bool,
}

/// The disk.
#[derive(Debug)]
pub struct Ata {
    pub sectors: u64,
    pub lba48: bool,
    pub mode: PioMode,
    /// Sectors per DRQ block for READ/WRITE MULTIPLE; 0 = use the single-sector commands.
    pub multiple: u16,
    /// Force the EXT (LBA48) commands even for low sectors.
    pub force_ext: bool,
}

/// Reads the status register.
pub fn status() -> u8 {
    inb(CMD)
}

/// Reads the error register.
pub fn error() -> u8 {
    inb(ERROR)
}

fn wait_ready() -> Result<u8, AtaError> {
    for _ in 0..MAX_POLLS {
        let s = status();
        if s == 0xff {
            return Err(AtaError::NoDevice);
        }
        if s & ST_BSY == 0 {
            if s & ST_ERR != 0 {
                return Err(AtaError::Device {
                    status: s,
                    error: error(),
                });
            }
            return Ok(s);
        }
    }
    Err(AtaError::Timeout)
}

fn wait_drq() -> Result<(), AtaError> {
    let s = wait_ready()?;
    if s & ST_DRQ == 0 {
        return Err(AtaError::Timeout);
    }
    Ok(())
}

/// Reads `bytes` (a multiple of 4) from the data register into `buf`.
fn pio_in(buf: *mut u8, bytes: usize, mode: PioMode) {
    match (mode.rep, mode.wide) {
        // SAFETY: `buf` points at `bytes` writable bytes (callers pass arena buffers); DF is
        // clear per the ABI; ES is the flat data segment.
        (true, false) => unsafe {
            asm!("rep insw", in("dx") DATA, inout("rdi") buf => _, inout("rcx") bytes / 2 => _,
                 options(nostack, preserves_flags))
        },
        // SAFETY: as above.
        (true, true) => unsafe {
            asm!("rep insd", in("dx") DATA, inout("rdi") buf => _, inout("rcx") bytes / 4 => _,
                 options(nostack, preserves_flags))
        },
        (false, false) => {
            for i in 0..bytes / 2 {
                let w = inw(DATA);
                // SAFETY: within the `bytes` the caller provides.
                unsafe { core::ptr::write_unaligned(buf.add(2 * i) as *mut u16, w) };
            }
        }
        (false, true) => {
            for i in 0..bytes / 4 {
                let w = inl(DATA);
                // SAFETY: within the `bytes` the caller provides.
                unsafe { core::ptr::write_unaligned(buf.add(4 * i) as *mut u32, w) };
            }
        }
    }
}

/// Writes `bytes` from `buf` to the data register.
fn pio_out(buf: *const u8, bytes: usize, mode: PioMode) {
    match (mode.rep, mode.wide) {
        // SAFETY: `buf` points at `bytes` readable bytes; DF is clear per the ABI.
        (true, false) => unsafe {
            asm!("rep outsw", in("dx") DATA, inout("rsi") buf => _, inout("rcx") bytes / 2 => _,
                 options(nostack, preserves_flags, readonly))
        },
        // SAFETY: as above.
        (true, true) => unsafe {
            asm!("rep outsd", in("dx") DATA, inout("rsi") buf => _, inout("rcx") bytes / 4 => _,
                 options(nostack, preserves_flags, readonly))
        },
        (false, false) => {
            for i in 0..bytes / 2 {
                // SAFETY: within the `bytes` the caller provides.
                outw(DATA, unsafe {
                    core::ptr::read_unaligned(buf.add(2 * i) as *const u16)
                });
            }
        }
        (false, true) => {
            for i in 0..bytes / 4 {
                // SAFETY: within the `bytes` the caller provides.
                outl(DATA, unsafe {
                    core::ptr::read_unaligned(buf.add(4 * i) as *const u32)
                });
            }
        }
    }
}

/// Writes the task file for an LBA28 or LBA48 command and issues `cmd`.
pub fn issue(cmd: u8, lba: u64, count: u32, ext: bool) {
    if ext {
        outb(DEVICE, 0x40);
        outb(NSECT, (count >> 8) as u8);
        outb(LBA_LO, (lba >> 24) as u8);
        outb(LBA_MID, (lba >> 32) as u8);
        outb(LBA_HI, (lba >> 40) as u8);
    } else {
        outb(DEVICE, 0xe0 | ((lba >> 24) as u8 & 0x0f));
    }
    outb(NSECT, count as u8);
    outb(LBA_LO, lba as u8);
    outb(LBA_MID, (lba >> 8) as u8);
    outb(LBA_HI, (lba >> 16) as u8);
    outb(CMD, cmd);
}

impl Ata {
    /// Finds the disk and reads its IDENTIFY data.
    pub fn probe(mode: PioMode) -> Result<Ata, AtaError> {
        outb(CONTROL, 0x02); // nIEN: no interrupts
        outb(DEVICE, 0xa0);
        let s = status();
        if s == 0xff || s == 0 {
            return Err(AtaError::NoDevice);
        }
        outb(CMD, CMD_IDENTIFY);
        wait_drq()?;
        let mut words = [0u16; 256];
        pio_in(words.as_mut_ptr() as *mut u8, 512, mode);
        wait_ready()?;
        let lba48 = words[83] & (1 << 10) != 0;
        let sectors = if lba48 {
            u64::from(words[100])
                | u64::from(words[101]) << 16
                | u64::from(words[102]) << 32
                | u64::from(words[103]) << 48
        } else {
            u64::from(words[60]) | u64::from(words[61]) << 16
        };
        Ok(Ata {
            sectors,
            lba48,
            mode,
            multiple: 0,
            force_ext: false,
        })
    }

    /// SET MULTIPLE MODE: `n` sectors per DRQ block for READ/WRITE MULTIPLE.
    pub fn set_multiple(&mut self, n: u16) -> Result<(), AtaError> {
        outb(NSECT, n as u8);
        outb(CMD, CMD_SET_MULTIPLE);
        wait_ready()?;
        self.multiple = n;
        Ok(())
    }

    fn ext(&self, lba: u64, count: u32) -> bool {
        self.force_ext || lba + u64::from(count) > 0x0fff_ffff || count > 256
    }

    fn command(&self, write: bool, lba: u64, count: u32) -> (u8, bool, u32) {
        let ext = self.ext(lba, count);
        let multiple = self.multiple != 0;
        let cmd = match (write, ext, multiple) {
            (false, false, false) => CMD_READ,
            (false, true, false) => CMD_READ_EXT,
            (false, false, true) => CMD_READ_MULTIPLE,
            (false, true, true) => CMD_READ_MULTIPLE_EXT,
            (true, false, false) => CMD_WRITE,
            (true, true, false) => CMD_WRITE_EXT,
            (true, false, true) => CMD_WRITE_MULTIPLE,
            (true, true, true) => CMD_WRITE_MULTIPLE_EXT,
        };
        let block = if multiple {
            u32::from(self.multiple)
        } else {
            1
        };
        (cmd, ext, block)
    }

    /// Issues a READ or WRITE of `count` sectors at `lba` and moves each DRQ block through
    /// `pio(offset, bytes)`, where `offset` is the block's byte offset in the caller's buffer.
    fn transfer(
        &self,
        write: bool,
        lba: u64,
        count: u32,
        mut pio: impl FnMut(usize, usize),
    ) -> Result<(), AtaError> {
        let (cmd, ext, block) = self.command(write, lba, count);
        issue(cmd, lba, count, ext);
        let mut done = 0u32;
        while done < count {
            wait_drq()?;
            let n = block.min(count - done);
            pio(done as usize * 512, n as usize * 512);
            done += n;
        }
        wait_ready().map(|_| ())
    }

    /// Reads `count` sectors (at most 256, or 65536 with LBA48) at `lba` into `buf`.
    ///
    /// # Safety
    /// `buf` must be valid for writes of `count` × 512 bytes.
    pub unsafe fn read(&self, lba: u64, count: u32, buf: *mut u8) -> Result<(), AtaError> {
        self.transfer(false, lba, count, |offset, bytes| {
            // SAFETY: the caller's buffer holds `count` sectors; `transfer` passes offsets
            // within them.
            pio_in(unsafe { buf.add(offset) }, bytes, self.mode)
        })
    }

    /// Writes `count` sectors from `buf` at `lba`.
    ///
    /// # Safety
    /// `buf` must be valid for reads of `count` × 512 bytes.
    pub unsafe fn write(&self, lba: u64, count: u32, buf: *const u8) -> Result<(), AtaError> {
        self.transfer(true, lba, count, |offset, bytes| {
            // SAFETY: the caller's buffer holds `count` sectors; `transfer` passes offsets
            // within them.
            pio_out(unsafe { buf.add(offset) }, bytes, self.mode)
        })
    }

    /// FLUSH CACHE (EXT on LBA48 disks).
    pub fn flush(&self) -> Result<(), AtaError> {
        outb(DEVICE, 0xe0);
        outb(CMD, if self.lba48 { CMD_FLUSH_EXT } else { CMD_FLUSH });
        wait_ready().map(|_| ())
    }
}
