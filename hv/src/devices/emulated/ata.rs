//! An ATA PIO disk, the master on the legacy primary IDE channel: the command block at
//! 0x1F0-0x1F7 and the control block (alternate status / device control) at 0x3F6.
//!
//! Commands: IDENTIFY DEVICE, READ/WRITE SECTORS (and EXT), READ/WRITE MULTIPLE (and EXT),
//! SET MULTIPLE MODE, FLUSH CACHE (and EXT), SET FEATURES (accepted, no effect), CHECK POWER
//! MODE. LBA addressing only (CHS commands are aborted). Every command completes synchronously
//! inside the register write that issues it, so BSY is never seen set; data moves through the
//! data register one DRQ block at a time (one sector, or the multiple count for the MULTIPLE
//! commands), in 16- or 32-bit accesses, singly or as `rep ins/outs` (a string access arrives
//! as one longer buffer and may span DRQ blocks, as the bytes are the same).
//!
//! Errors follow the ATA status/error semantics: ERR in status with ABRT (unknown command, a
//! command issued while a transfer is in progress, bad SET MULTIPLE count, MULTIPLE without a
//! multiple count, CHS addressing, a write to a read-only disk, a failed host write or flush),
//! IDNF (a transfer reaching past the end of the disk), or UNC (a failed host read: an
//! uncorrectable data error, as a drive reports a bad sector). A failed transfer stops at the
//! failing DRQ block: the blocks before it were moved, the rest of the command is not. Each
//! kind of error is reported once in the run's notes; counts go to the stats note at the end
//! of the run ([`StatsNote`]). The device raises no interrupt (nIEN is assumed; hvlab's driver
//! polls status).
//!
//! FLUSH CACHE and FLUSH CACHE EXT complete only after the disk's flush (fdatasync) returned.

use std::sync::{Arc, Mutex};

use crate::bus::{BusDevice, DeviceAction};
use crate::devices::NoteSink;
use crate::devices::disk::{SECTOR_SIZE, SharedDisk};

/// Command block base port.
pub const ATA_BASE: u16 = 0x1f0;
/// Control block port (alternate status / device control).
pub const ATA_CONTROL: u16 = 0x3f6;
/// Largest READ/WRITE MULTIPLE block (sectors) the device accepts.
pub const MAX_MULTIPLE: u16 = 16;

/// Status register bits.
pub mod status {
    pub const BSY: u8 = 0x80;
    pub const DRDY: u8 = 0x40;
    pub const DF: u8 = 0x20;
    pub const DSC: u8 = 0x10;
    pub const DRQ: u8 = 0x08;
    pub const ERR: u8 = 0x01;
}

/// Error register bits.
pub mod error {
    pub const UNC: u8 = 0x40;
    pub const IDNF: u8 = 0x10;
    pub const ABRT: u8 = 0x04;
}

/// Command opcodes.
pub mod cmd {
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub const READ_MULTIPLE: u8 = 0xc4;
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    pub const SET_MULTIPLE_MODE: u8 = 0xc6;
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    pub const FLUSH_CACHE: u8 = 0xe7;
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    pub const SET_FEATURES: u8 = 0xef;
}

const DEV_LBA: u8 = 0x40;
const DEV_SLAVE: u8 = 0x10;
const CTL_SRST: u8 = 0x04;
const CTL_HOB: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Device to host (IDENTIFY, reads).
    In,
    /// Host to device (writes).
    Out,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    dir: Dir,
    /// Next sector to read or write (for IDENTIFY: unused).
    lba: u64,
    /// Sectors left, the current block included.
    remaining: u64,
    /// Sectors per DRQ block.
    block: u64,
    /// Sectors in the current block.
    current: u64,
    /// False for IDENTIFY (the buffer is not disk data).
    disk: bool,
}

/// Counters a test or a record can read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtaStats {
    pub commands: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub aborted: u64,
    pub idnf: u64,
    /// Reads that failed on the host (reported as UNC).
    pub unc: u64,
    /// Writes and flushes that failed on the host (reported as ABRT).
    pub write_errors: u64,
    pub flushes: u64,
    pub stray_data: u64,
}

/// The device state, shared by the command-block and control-block bus devices.
#[derive(Debug)]
pub struct AtaCore {
    disk: SharedDisk,
    notes: NoteSink,
    features: u8,
    /// Sector count and LBA registers: [current, previous] (the LBA48 "HOB" byte).
    nsect: [u8; 2],
    lba_lo: [u8; 2],
    lba_mid: [u8; 2],
    lba_hi: [u8; 2],
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    multiple: u16,
    xfer: Option<Transfer>,
    buf: Vec<u8>,
    pos: usize,
    pub stats: AtaStats,
}

/// The command block (0x1F0-0x1F7) on the PIO bus.
#[derive(Debug, Clone)]
pub struct AtaCommandBlock(pub Arc<Mutex<AtaCore>>);
/// The control block (0x3F6) on the PIO bus.
#[derive(Debug, Clone)]
pub struct AtaControlBlock(pub Arc<Mutex<AtaCore>>);

fn lock(core: &Mutex<AtaCore>) -> std::sync::MutexGuard<'_, AtaCore> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl BusDevice for AtaCommandBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        lock(&self.0).write(offset, data);
        DeviceAction::None
    }
}

impl BusDevice for AtaControlBlock {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = lock(&self.0).status_value();
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        if let Some(&v) = data.first() {
            lock(&self.0).device_control(v);
        }
        DeviceAction::None
    }
}

/// Held with the partition's devices: when the run ends it puts the device's counters (and its
/// disk's: operations, syncs, injected faults) into the run's notes.
#[derive(Debug)]
pub struct StatsNote(pub Arc<Mutex<AtaCore>>);

impl Drop for StatsNote {
    fn drop(&mut self) {
        let c = lock(&self.0);
        c.notes.note(c.summary());
    }
}

/// Puts an ATA string (two characters per word, first character in the high byte).
fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    for w in words.iter_mut() {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = (u16::from(hi) << 8) | u16::from(lo);
    }
}

impl AtaCore {
    /// A device over `disk`, reporting protocol errors to `notes`.
    pub fn new(disk: SharedDisk, notes: NoteSink) -> AtaCore {
        let mut c = AtaCore {
            disk,
            notes,
            features: 0,
            nsect: [0; 2],
            lba_lo: [0; 2],
            lba_mid: [0; 2],
            lba_hi: [0; 2],
            device: 0,
            status: 0,
            error: 0,
            control: 0,
            multiple: 0,
            xfer: None,
            buf: Vec::new(),
            pos: 0,
            stats: AtaStats::default(),
        };
        c.reset();
        c
    }

    fn sectors(&self) -> u64 {
        self.disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sectors()
    }

    /// The device's and its disk's counters, for the run's notes.
    pub fn summary(&self) -> String {
        let s = self.stats;
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner()).stats();
        format!(
            "ata: commands={} sectors_read={} sectors_written={} flushes={} aborted={} idnf={} \
             unc={} write_errors={} stray_data={} {}",
            s.commands,
            s.sectors_read,
            s.sectors_written,
            s.flushes,
            s.aborted,
            s.idnf,
            s.unc,
            s.write_errors,
            s.stray_data,
            disk.words()
        )
    }

    /// Power-on / software reset: the signature of a PATA disk in the task file.
    fn reset(&mut self) {
        self.xfer = None;
        self.buf.clear();
        self.pos = 0;
        self.status = status::DRDY | status::DSC;
        self.error = 0x01; // diagnostic: device 0 passed
        self.nsect = [1, 0];
        self.lba_lo = [1, 0];
        self.lba_mid = [0, 0];
        self.lba_hi = [0, 0];
        self.device = 0;
    }

    fn slave_selected(&self) -> bool {
        self.device & DEV_SLAVE != 0
    }

    fn status_value(&self) -> u8 {
        if self.slave_selected() {
            0 // no device 1
        } else {
            self.status
        }
    }

    fn device_control(&mut self, v: u8) {
        if v & CTL_SRST != 0 && self.control & CTL_SRST == 0 {
            self.reset();
        }
        self.control = v;
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            self.data_in(data);
            return;
        }
        data.fill(0);
        let hob = usize::from(self.control & CTL_HOB != 0);
        let v = match offset {
            1 => self.error,
            2 => self.nsect[hob],
            3 => self.lba_lo[hob],
            4 => self.lba_mid[hob],
            5 => self.lba_hi[hob],
            6 => self.device | 0xa0,
            7 => self.status_value(),
            _ => 0xff,
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.data_out(data);
            return;
        }
        let Some(&v) = data.first() else { return };
        // Writing any command-block register clears HOB.
        self.control &= !CTL_HOB;
        let push = |r: &mut [u8; 2]| {
            r[1] = r[0];
            r[0] = v;
        };
        match offset {
            1 => self.features = v,
            2 => push(&mut self.nsect),
            3 => push(&mut self.lba_lo),
            4 => push(&mut self.lba_mid),
            5 => push(&mut self.lba_hi),
            6 => self.device = v & 0x5f,
            7 => self.command(v),
            _ => {}
        }
    }

    fn fail(&mut self, err: u8, why: &str) {
        self.xfer = None;
        self.buf.clear();
        self.pos = 0;
        self.status = status::DRDY | status::DSC | status::ERR;
        self.error = err;
        if err & error::ABRT != 0 {
            self.stats.aborted += 1;
        }
        if err & error::IDNF != 0 {
            self.stats.idnf += 1;
        }
        if err & error::UNC != 0 {
            self.stats.unc += 1;
        }
        self.notes.note(format!("ata: ERR {why}"));
    }

    fn ok(&mut self) {
        self.status = status::DRDY | status::DSC;
        self.error = 0;
    }

    fn command(&mut self, c: u8) {
        if self.slave_selected() {
            return; // no device 1: the command is not for us
        }
        self.stats.commands += 1;
        if self.xfer.is_some() || self.status & (status::BSY | status::DRQ) != 0 {
            self.fail(
                error::ABRT,
                "ABRT: command issued while a data transfer was in progress (out of order)",
            );
            return;
        }
        use cmd::*;
        match c {
            IDENTIFY_DEVICE => self.identify(),
            READ_SECTORS | READ_SECTORS_NORETRY => self.start_rw(Dir::In, false, false),
            READ_SECTORS_EXT => self.start_rw(Dir::In, true, false),
            READ_MULTIPLE => self.start_rw(Dir::In, false, true),
            READ_MULTIPLE_EXT => self.start_rw(Dir::In, true, true),
            WRITE_SECTORS | WRITE_SECTORS_NORETRY => self.start_rw(Dir::Out, false, false),
            WRITE_SECTORS_EXT => self.start_rw(Dir::Out, true, false),
            WRITE_MULTIPLE => self.start_rw(Dir::Out, false, true),
            WRITE_MULTIPLE_EXT => self.start_rw(Dir::Out, true, true),
            SET_MULTIPLE_MODE => {
                let n = u16::from(self.nsect[0]);
                if n == 0 || n > MAX_MULTIPLE || !n.is_power_of_two() {
                    self.fail(error::ABRT, "ABRT: bad SET MULTIPLE MODE count");
                } else {
                    self.multiple = n;
                    self.ok();
                }
            }
            FLUSH_CACHE | FLUSH_CACHE_EXT => {
                self.stats.flushes += 1;
                let r = self.disk.lock().unwrap_or_else(|p| p.into_inner()).flush();
                match r {
                    Ok(()) => self.ok(),
                    Err(e) => {
                        self.stats.write_errors += 1;
                        self.fail(error::ABRT, &format!("ABRT: flush failed: {e}"));
                    }
                }
            }
            SET_FEATURES => self.ok(),
            CHECK_POWER_MODE => {
                self.nsect[0] = 0xff; // active or idle
                self.ok();
            }
            _ => self.fail(error::ABRT, "ABRT: unsupported command"),
        }
    }

    fn identify_words(&self) -> [u16; 256] {
        let sectors = self.sectors();
        let mut w = [0u16; 256];
        w[0] = 0x0040; // fixed device, not removable
        let cyl = (sectors / (16 * 63)).min(16383) as u16;
        w[1] = cyl;
        w[3] = 16;
        w[6] = 63;
        put_string(&mut w[10..20], "HVLAB00000001");
        put_string(&mut w[23..27], "0.1");
        put_string(&mut w[27..47], "hvlab ATA PIO disk");
        w[47] = 0x8000 | MAX_MULTIPLE;
        w[49] = 1 << 9; // LBA
        w[50] = 0x4000;
        w[53] = 0x0001; // words 54-58 valid
        w[54] = cyl;
        w[55] = 16;
        w[56] = 63;
        let chs = u32::from(cyl) * 16 * 63;
        w[57] = chs as u16;
        w[58] = (chs >> 16) as u16;
        if self.multiple != 0 {
            w[59] = 0x0100 | self.multiple;
        }
        let lba28 = sectors.min(0x0fff_ffff) as u32;
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[80] = 0x00f0; // ATA/ATAPI-4..7
        w[82] = 0x4000;
        w[83] = 0x4000 | (1 << 10) | (1 << 12) | (1 << 13); // LBA48, FLUSH CACHE (EXT)
        w[84] = 0x4000;
        w[85] = 0x4000;
        w[86] = (1 << 10) | (1 << 12) | (1 << 13);
        w[87] = 0x4000;
        for (i, word) in w[100..104].iter_mut().enumerate() {
            *word = (sectors >> (16 * i)) as u16;
        }
        // Integrity word: signature 0xA5, then a checksum making the 512 bytes sum to zero.
        w[255] = 0x00a5;
        let sum = w
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .fold(0u8, u8::wrapping_add);
        w[255] |= u16::from(sum.wrapping_neg()) << 8;
        w
    }

    fn identify(&mut self) {
        let words = self.identify_words();
        self.buf = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.pos = 0;
        self.xfer = Some(Transfer {
            dir: Dir::In,
            lba: 0,
            remaining: 1,
            block: 1,
            current: 1,
            disk: false,
        });
        self.status = status::DRDY | status::DSC | status::DRQ;
        self.error = 0;
    }

    fn start_rw(&mut self, dir: Dir, lba48: bool, multiple: bool) {
        let (lba, count) = if lba48 {
            let lba = u64::from(self.lba_lo[0])
                | u64::from(self.lba_mid[0]) << 8
                | u64::from(self.lba_hi[0]) << 16
                | u64::from(self.lba_lo[1]) << 24
                | u64::from(self.lba_mid[1]) << 32
                | u64::from(self.lba_hi[1]) << 40;
            let n = u64::from(self.nsect[0]) | u64::from(self.nsect[1]) << 8;
            (lba, if n == 0 { 65536 } else { n })
        } else {
            if self.device & DEV_LBA == 0 {
                self.fail(error::ABRT, "ABRT: CHS addressing is not supported");
                return;
            }
            let lba = u64::from(self.lba_lo[0])
                | u64::from(self.lba_mid[0]) << 8
                | u64::from(self.lba_hi[0]) << 16
                | u64::from(self.device & 0x0f) << 24;
            let n = u64::from(self.nsect[0]);
            (lba, if n == 0 { 256 } else { n })
        };
        let block = if multiple {
            if self.multiple == 0 {
                self.fail(
                    error::ABRT,
                    "ABRT: READ/WRITE MULTIPLE before SET MULTIPLE MODE",
                );
                return;
            }
            u64::from(self.multiple)
        } else {
            1
        };
        if lba
            .checked_add(count)
            .is_none_or(|end| end > self.sectors())
        {
            self.fail(error::IDNF, "IDNF: transfer past the end of the disk");
            return;
        }
        if dir == Dir::Out
            && self
                .disk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .readonly()
        {
            self.fail(error::ABRT, "ABRT: write to a read-only disk");
            return;
        }
        self.xfer = Some(Transfer {
            dir,
            lba,
            remaining: count,
            block,
            current: 0,
            disk: true,
        });
        self.error = 0;
        self.next_block();
    }

    /// Sets up the next DRQ block of the current transfer (reading it from disk for reads),
    /// or ends the transfer when no sectors are left.
    fn next_block(&mut self) {
        let Some(mut x) = self.xfer else { return };
        if x.remaining == 0 {
            self.xfer = None;
            self.buf.clear();
            self.pos = 0;
            self.ok();
            return;
        }
        x.current = x.block.min(x.remaining);
        let bytes = (x.current * SECTOR_SIZE) as usize;
        self.buf.clear();
        self.buf.resize(bytes, 0);
        self.pos = 0;
        if x.dir == Dir::In {
            let r = self
                .disk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_at(x.lba * SECTOR_SIZE, &mut self.buf);
            if let Err(e) = r {
                self.fail(error::UNC, &format!("UNC: read failed: {e}"));
                return;
            }
        }
        self.xfer = Some(x);
        self.status = status::DRDY | status::DSC | status::DRQ;
    }

    /// The current block has been fully transferred.
    fn block_done(&mut self) {
        let Some(mut x) = self.xfer else { return };
        if x.dir == Dir::Out && x.disk {
            let r = self
                .disk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_at(x.lba * SECTOR_SIZE, &self.buf);
            if let Err(e) = r {
                self.stats.write_errors += 1;
                self.fail(error::ABRT, &format!("ABRT: write failed: {e}"));
                return;
            }
            self.stats.sectors_written += x.current;
        } else if x.disk {
            self.stats.sectors_read += x.current;
        }
        x.lba += x.current;
        x.remaining -= x.current;
        self.xfer = Some(x);
        self.next_block();
    }

    fn stray(&mut self, what: &str) {
        self.stats.stray_data += 1;
        self.notes
            .note(format!("ata: data register {what} without DRQ (ignored)"));
    }

    fn data_in(&mut self, data: &mut [u8]) {
        let mut done = 0;
        while done < data.len() {
            match self.xfer {
                Some(x) if x.dir == Dir::In && self.pos < self.buf.len() => {
                    let n = (self.buf.len() - self.pos).min(data.len() - done);
                    data[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                    self.pos += n;
                    done += n;
                    if self.pos == self.buf.len() {
                        self.block_done();
                    }
                }
                _ => {
                    data[done..].fill(0xff);
                    self.stray("read");
                    return;
                }
            }
        }
    }

    fn data_out(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            match self.xfer {
                Some(x) if x.dir == Dir::Out && self.pos < self.buf.len() => {
                    let n = (self.buf.len() - self.pos).min(data.len() - done);
                    self.buf[self.pos..self.pos + n].copy_from_slice(&data[done..done + n]);
                    self.pos += n;
                    done += n;
                    if self.pos == self.buf.len() {
                        self.block_done();
                    }
                }
                _ => {
                    self.stray("write");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::disk::Disk;

    fn dev(sectors: u64) -> (AtaCore, SharedDisk, NoteSink) {
        let disk = Arc::new(Mutex::new(Disk::memory(sectors * SECTOR_SIZE).unwrap()));
        let notes = NoteSink::default();
        (AtaCore::new(disk.clone(), notes.clone()), disk, notes)
    }

    fn outb(d: &mut AtaCore, off: u64, v: u8) {
        d.write(off, &[v]);
    }

    fn inb(d: &mut AtaCore, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn lba28(d: &mut AtaCore, lba: u32, count: u8, c: u8) {
        outb(d, 6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
        outb(d, 2, count);
        outb(d, 3, lba as u8);
        outb(d, 4, (lba >> 8) as u8);
        outb(d, 5, (lba >> 16) as u8);
        outb(d, 7, c);
    }

    fn lba48(d: &mut AtaCore, lba: u64, count: u16, c: u8) {
        outb(d, 6, 0x40);
        outb(d, 2, (count >> 8) as u8);
        outb(d, 3, (lba >> 24) as u8);
        outb(d, 4, (lba >> 32) as u8);
        outb(d, 5, (lba >> 40) as u8);
        outb(d, 2, count as u8);
        outb(d, 3, lba as u8);
        outb(d, 4, (lba >> 8) as u8);
        outb(d, 5, (lba >> 16) as u8);
        outb(d, 7, c);
    }

    #[test]
    fn identify_reports_size_features_and_a_valid_checksum() {
        let (mut d, ..) = dev(1 << 20);
        outb(&mut d, 6, 0xa0);
        outb(&mut d, 7, cmd::IDENTIFY_DEVICE);
        assert_eq!(inb(&mut d, 7) & (status::DRQ | status::ERR), status::DRQ);
        let mut words = [0u16; 256];
        for w in words.iter_mut() {
            let mut b = [0u8; 2];
            d.read(0, &mut b);
            *w = u16::from_le_bytes(b);
        }
        assert_eq!(
            inb(&mut d, 7) & status::DRQ,
            0,
            "DRQ clears after 256 words"
        );
        assert_eq!(u32::from(words[60]) | u32::from(words[61]) << 16, 1 << 20);
        assert_eq!(u64::from(words[100]) | u64::from(words[101]) << 16, 1 << 20);
        assert_ne!(words[83] & (1 << 10), 0, "LBA48");
        assert_eq!(words[255] & 0xff, 0xa5);
        let sum = words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .fold(0u8, u8::wrapping_add);
        assert_eq!(sum, 0);
        assert_eq!(words[27] >> 8, u16::from(b'h'));
    }

    #[test]
    fn write_then_read_sectors_16_and_32_bit_round_trip() {
        let (mut d, disk, _) = dev(64);
        lba28(&mut d, 5, 2, cmd::WRITE_SECTORS);
        assert_ne!(inb(&mut d, 7) & status::DRQ, 0);
        for i in 0..512u32 {
            d.write(0, &(i as u16).to_le_bytes()); // 16-bit accesses
        }
        assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
        let mut raw = [0u8; 1024];
        disk.lock().unwrap().read_at(5 * 512, &mut raw).unwrap();
        assert_eq!(&raw[2..4], &1u16.to_le_bytes());
        lba28(&mut d, 5, 2, cmd::READ_SECTORS);
        let mut back = Vec::new();
        for _ in 0..256 {
            let mut b = [0u8; 4]; // 32-bit accesses
            d.read(0, &mut b);
            back.extend_from_slice(&b);
        }
        assert_eq!(back, raw);
        assert_eq!(inb(&mut d, 7) & status::DRQ, 0);
        assert_eq!(d.stats.sectors_read, 2);
        assert_eq!(d.stats.sectors_written, 2);
    }

    #[test]
    fn string_access_may_span_blocks() {
        let (mut d, ..) = dev(64);
        lba28(&mut d, 0, 4, cmd::WRITE_SECTORS);
        d.write(0, &[9u8; 2048]);
        assert_eq!(inb(&mut d, 7) & status::DRQ, 0);
        lba28(&mut d, 0, 4, cmd::READ_SECTORS);
        let mut b = [0u8; 2048];
        d.read(0, &mut b);
        assert!(b.iter().all(|&x| x == 9));
    }

    #[test]
    fn multiple_needs_set_multiple_and_moves_blocks() {
        let (mut d, ..) = dev(64);
        lba28(&mut d, 0, 8, cmd::READ_MULTIPLE);
        assert_eq!(inb(&mut d, 7) & status::ERR, status::ERR);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        outb(&mut d, 2, 3);
        outb(&mut d, 7, cmd::SET_MULTIPLE_MODE);
        assert_eq!(inb(&mut d, 1), error::ABRT, "3 is not a power of two");
        outb(&mut d, 2, 4);
        outb(&mut d, 7, cmd::SET_MULTIPLE_MODE);
        assert_eq!(inb(&mut d, 7) & status::ERR, 0);
        lba28(&mut d, 0, 6, cmd::WRITE_MULTIPLE);
        assert_eq!(d.buf.len(), 4 * 512, "first block is 4 sectors");
        d.write(0, &[1u8; 4 * 512]);
        assert_eq!(d.buf.len(), 2 * 512, "last block is the remainder");
        d.write(0, &[1u8; 2 * 512]);
        assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
        assert_eq!(d.stats.sectors_written, 6);
    }

    #[test]
    fn lba48_addresses_high_sectors_and_hob_reads_back() {
        // A sparse image: LBA48 sectors beyond 2^32 without allocating them.
        let path = std::env::temp_dir().join(format!("hvlab-ata48-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let disk = Arc::new(Mutex::new(
            Disk::open_sparse(&path, 0x1_0000_0100 * SECTOR_SIZE).unwrap(),
        ));
        let mut d = AtaCore::new(disk, NoteSink::default());
        lba48(&mut d, 0x1_0000_0010, 1, cmd::WRITE_SECTORS_EXT);
        d.write(0, &[0x5a; 512]);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), 0);
        d.control = CTL_HOB;
        assert_eq!(inb(&mut d, 3), 0x00, "HOB LBA low = bits 24..31");
        lba48(&mut d, 0x1_0000_0010, 1, cmd::READ_SECTORS_EXT);
        let mut b = [0u8; 512];
        d.read(0, &mut b);
        assert!(b.iter().all(|&x| x == 0x5a));
        drop(d);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn read_past_end_sets_idnf() {
        let (mut d, _, notes) = dev(16);
        lba28(&mut d, 15, 2, cmd::READ_SECTORS);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::ERR);
        assert_eq!(inb(&mut d, 1), error::IDNF);
        assert!(notes.snapshot().iter().any(|n| n.contains("IDNF")));
        lba48(&mut d, u64::MAX >> 16, 0, cmd::READ_SECTORS_EXT);
        assert_eq!(inb(&mut d, 1), error::IDNF);
    }

    #[test]
    fn command_during_transfer_is_aborted_out_of_order() {
        let (mut d, _, notes) = dev(16);
        lba28(&mut d, 0, 2, cmd::READ_SECTORS);
        let mut b = [0u8; 100];
        d.read(0, &mut b);
        outb(&mut d, 7, cmd::WRITE_SECTORS);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::ERR);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        assert!(notes.snapshot().iter().any(|n| n.contains("out of order")));
        // The device recovers: the next command works.
        lba28(&mut d, 0, 1, cmd::READ_SECTORS);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::DRQ);
    }

    #[test]
    fn unknown_command_chs_and_stray_data_are_errors_not_panics() {
        let (mut d, ..) = dev(16);
        outb(&mut d, 7, 0x00);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        outb(&mut d, 6, 0x00); // CHS
        outb(&mut d, 2, 1);
        outb(&mut d, 7, cmd::READ_SECTORS);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
        d.write(0, &[1, 2]);
        assert_eq!(d.stats.stray_data, 2);
    }

    #[test]
    fn slave_reads_no_device_and_srst_resets() {
        let (mut d, ..) = dev(16);
        outb(&mut d, 6, DEV_SLAVE);
        assert_eq!(inb(&mut d, 7), 0);
        outb(&mut d, 7, cmd::IDENTIFY_DEVICE);
        outb(&mut d, 6, 0);
        assert_eq!(
            inb(&mut d, 7) & status::DRQ,
            0,
            "command went to the absent slave"
        );
        lba28(&mut d, 0, 1, cmd::READ_SECTORS);
        d.device_control(CTL_SRST);
        d.device_control(0);
        assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
        assert_eq!((inb(&mut d, 2), inb(&mut d, 3)), (1, 1), "signature");
    }

    fn faulty_dev(faults: &[&str]) -> (AtaCore, SharedDisk, NoteSink) {
        let access = crate::devices::disk::DiskAccess {
            readonly: false,
            faults: faults.iter().map(|f| f.parse().unwrap()).collect(),
        };
        let disk = Arc::new(Mutex::new(
            Disk::from_options(None, 64 * SECTOR_SIZE, &access).unwrap(),
        ));
        let notes = NoteSink::default();
        (AtaCore::new(disk.clone(), notes.clone()), disk, notes)
    }

    #[test]
    fn an_injected_write_fault_aborts_the_command_at_its_block() {
        // The 3rd disk write is the 3rd sector of a 4-sector WRITE SECTORS.
        let (mut d, disk, notes) = faulty_dev(&["eio@write:3"]);
        lba28(&mut d, 8, 4, cmd::WRITE_SECTORS);
        d.write(0, &[1u8; 512]);
        d.write(0, &[2u8; 512]);
        assert_eq!(inb(&mut d, 7) & status::DRQ, status::DRQ);
        d.write(0, &[3u8; 512]);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::ERR);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        // The 4th sector arrives without DRQ: ignored, not written.
        d.write(0, &[4u8; 512]);
        let mut b = [0u8; 6 * 512];
        disk.lock().unwrap().read_at(7 * 512, &mut b).unwrap();
        let sector = |i: usize| b[i * 512..(i + 1) * 512].iter().all(|&x| x == b[i * 512]);
        assert!((0..6).all(sector));
        let first: Vec<u8> = (0..6).map(|i| b[i * 512]).collect();
        assert_eq!(
            first,
            [0, 1, 2, 0, 0, 0],
            "sectors 8, 9 written; 10.. untouched"
        );
        assert_eq!(d.stats.write_errors, 1);
        assert!(notes.snapshot().iter().any(|n| n.contains("eio@write:3")));
        // The device goes on: the next write works.
        lba28(&mut d, 10, 1, cmd::WRITE_SECTORS);
        d.write(0, &[5u8; 512]);
        assert_eq!(inb(&mut d, 7) & status::ERR, 0);
        assert!(d.summary().contains("faults_injected=1"), "{}", d.summary());
    }

    #[test]
    fn an_injected_read_fault_is_unc_and_a_flush_fault_abrt() {
        let (mut d, ..) = faulty_dev(&["eio@read:2", "eio@flush:1"]);
        lba28(&mut d, 0, 2, cmd::READ_SECTORS);
        let mut b = [0u8; 512];
        d.read(0, &mut b);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::ERR);
        assert_eq!(inb(&mut d, 1), error::UNC);
        outb(&mut d, 7, cmd::FLUSH_CACHE_EXT);
        assert_eq!(inb(&mut d, 7) & status::ERR, status::ERR);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        outb(&mut d, 7, cmd::FLUSH_CACHE);
        assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
        assert_eq!((d.stats.unc, d.stats.write_errors), (1, 1));
    }

    #[test]
    fn a_read_only_disk_aborts_writes_and_serves_reads() {
        let access = crate::devices::disk::DiskAccess {
            readonly: true,
            faults: Vec::new(),
        };
        let disk = Arc::new(Mutex::new(
            Disk::from_options(None, 64 * SECTOR_SIZE, &access).unwrap(),
        ));
        let mut d = AtaCore::new(disk, NoteSink::default());
        lba28(&mut d, 0, 1, cmd::WRITE_SECTORS);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::ERR);
        assert_eq!(inb(&mut d, 1), error::ABRT);
        lba28(&mut d, 0, 1, cmd::READ_SECTORS);
        assert_eq!(inb(&mut d, 7) & (status::ERR | status::DRQ), status::DRQ);
    }

    #[test]
    fn both_flush_commands_sync_the_image() {
        let path = std::env::temp_dir().join(format!("hvlab-ataflush-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let disk = Arc::new(Mutex::new(Disk::open(&path, 64 * SECTOR_SIZE).unwrap()));
        let mut d = AtaCore::new(disk.clone(), NoteSink::default());
        for c in [cmd::FLUSH_CACHE, cmd::FLUSH_CACHE_EXT] {
            lba28(&mut d, 1, 1, cmd::WRITE_SECTORS);
            d.write(0, &[7u8; 512]);
            let before = disk.lock().unwrap().stats().syncs;
            outb(&mut d, 7, c);
            assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
            assert_eq!(disk.lock().unwrap().stats().syncs, before + 1, "{c:#x}");
        }
        drop((d, disk));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn flush_and_check_power_complete() {
        let (mut d, ..) = dev(16);
        outb(&mut d, 7, cmd::FLUSH_CACHE);
        assert_eq!(inb(&mut d, 7), status::DRDY | status::DSC);
        outb(&mut d, 7, cmd::CHECK_POWER_MODE);
        assert_eq!(inb(&mut d, 2), 0xff);
    }
}
