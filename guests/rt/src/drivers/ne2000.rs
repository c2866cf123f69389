//! NE2000 (DP8390) driver: programmed I/O at 0x300, remote DMA through the data port in word
//! mode, transmit buffer at page 0x40, receive ring 0x46..0x80. Every register access and
//! every data-port word is an exit to the VMM; `rep` moves a whole buffer with `rep insw` /
//! `rep outsw` (which KVM batches), `loop` with one `in`/`out` per word.
//!
//! Interrupts: ISR bits PRX, PTX, RXE, TXE and OVW are unmasked and arrive as edges on the
//! IOAPIC pin hv names (`net_irq=`); the driver acknowledges PRX before it finds the ring
//! empty, so a frame that arrives after that raises a new edge and `sti; hlt` cannot miss it.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, inb, inw, outb, outw};
use crate::drivers::ioapic;
use crate::net::{MAX_FRAME, MIN_FRAME, Nic, NicCounters, NicError};
use crate::{apic, idt};

pub const BASE: u16 = 0x300;
const CR: u16 = BASE;
const DATA: u16 = BASE + 0x10;
const RESET: u16 = BASE + 0x1f;
// Page 0.
const PSTART: u16 = BASE + 1;
const PSTOP: u16 = BASE + 2;
const BNRY: u16 = BASE + 3;
const TPSR: u16 = BASE + 4;
const TBCR0: u16 = BASE + 5;
const TBCR1: u16 = BASE + 6;
const ISR: u16 = BASE + 7;
const RSAR0: u16 = BASE + 8;
const RSAR1: u16 = BASE + 9;
const RBCR0: u16 = BASE + 0x0a;
const RBCR1: u16 = BASE + 0x0b;
const RCR: u16 = BASE + 0x0c;
const TCR: u16 = BASE + 0x0d;
const DCR: u16 = BASE + 0x0e;
const IMR: u16 = BASE + 0x0f;
const CNTR2: u16 = BASE + 0x0f;
// Page 1.
const CURR: u16 = BASE + 7;

const CR_STP: u8 = 0x01;
const CR_STA: u8 = 0x02;
const CR_TXP: u8 = 0x04;
const CR_RD_READ: u8 = 0x08;
const CR_RD_WRITE: u8 = 0x10;
const CR_NODMA: u8 = 0x20;
const CR_PAGE1: u8 = 0x40;

const ISR_PRX: u8 = 0x01;
const ISR_PTX: u8 = 0x02;
const ISR_RXE: u8 = 0x04;
const ISR_TXE: u8 = 0x08;
const ISR_OVW: u8 = 0x10;
const ISR_RDC: u8 = 0x40;
const ISR_RST: u8 = 0x80;

const TX_PAGE: u8 = 0x40;
const RX_START: u8 = 0x46;
const RX_STOP: u8 = 0x80;

/// Interrupt vector of the NIC.
pub const VECTOR: u8 = 0x42;

/// Interrupts taken on [`VECTOR`].
pub static IRQS: AtomicU64 = AtomicU64::new(0);

fn on_irq(_: u8) {
    IRQS.fetch_add(1, Ordering::Relaxed);
}

/// The driver of the card at [`BASE`].
#[derive(Debug)]
pub struct Ne2000 {
    mac: [u8; 6],
    /// Next ring page to read.
    next: u8,
    rep: bool,
    /// Interrupts routed (else `wait` spins).
    irq: bool,
    kicks: u64,
    dropped: u64,
}

fn rep_insw(port: u16, buf: *mut u16, words: usize) {
    // SAFETY: the caller's buffer holds `words` u16s; `rep insw` writes exactly those.
    unsafe {
        core::arch::asm!("rep insw", in("dx") port, inout("rdi") buf => _, inout("rcx") words => _,
            options(nostack, preserves_flags))
    }
}

fn rep_outsw(port: u16, buf: *const u16, words: usize) {
    // SAFETY: the caller's buffer holds `words` u16s; `rep outsw` only reads them.
    unsafe {
        core::arch::asm!("rep outsw", in("dx") port, inout("rsi") buf => _, inout("rcx") words => _,
            options(nostack, preserves_flags, readonly))
    }
}

impl Ne2000 {
    /// Resets and starts the card; interrupts on IOAPIC pin `irq` unless `irq` is None.
    pub fn open(irq: Option<u8>, rep: bool) -> Result<Ne2000, NicError> {
        let r = inb(RESET);
        outb(RESET, r);
        let mut spins = 0;
        while inb(ISR) & ISR_RST == 0 {
            spins += 1;
            if spins > 1000 {
                return Err(NicError::Broken(
                    "ne2000: no card at 0x300 (reset never completes)",
                ));
            }
        }
        outb(CR, CR_STP | CR_NODMA);
        outb(DCR, 0x49); // word transfers, normal operation, FIFO threshold 8
        outb(RBCR0, 0);
        outb(RBCR1, 0);
        outb(RCR, 0x20); // monitor while setting up
        outb(TCR, 0x02); // internal loopback while setting up
        outb(TPSR, TX_PAGE);
        outb(PSTART, RX_START);
        outb(PSTOP, RX_STOP);
        outb(BNRY, RX_START);
        outb(ISR, 0xff);
        outb(IMR, 0);
        // The PROM: 16 words, the low byte of each of the first six is the MAC.
        outb(RBCR0, 32);
        outb(RBCR1, 0);
        outb(RSAR0, 0);
        outb(RSAR1, 0);
        outb(CR, CR_RD_READ | CR_STA);
        let mut prom = [0u16; 16];
        for w in prom.iter_mut() {
            *w = inw(DATA);
        }
        outb(ISR, ISR_RDC);
        let mut mac = [0u8; 6];
        for (m, w) in mac.iter_mut().zip(prom) {
            *m = w as u8;
        }
        if prom[14] as u8 != 0x57 {
            return Err(NicError::Broken(
                "ne2000: PROM signature is not an NE2000's",
            ));
        }
        outb(CR, CR_PAGE1 | CR_STP | CR_NODMA);
        for (i, b) in mac.iter().enumerate() {
            outb(BASE + 1 + i as u16, *b);
        }
        outb(CURR, RX_START + 1);
        for i in 0..8 {
            outb(BASE + 8 + i, 0);
        }
        // Receive configuration before the start, so no frame meets the set-up filter.
        outb(CR, CR_STP | CR_NODMA);
        outb(TCR, 0);
        outb(RCR, 0x04); // accept broadcast and our address
        outb(ISR, 0xff);
        outb(CR, CR_STA | CR_NODMA);
        if let Some(pin) = irq {
            idt::register(VECTOR, on_irq);
            ioapic::mask_pic();
            ioapic::route(pin, VECTOR, apic::id());
            outb(IMR, ISR_PRX | ISR_PTX | ISR_RXE | ISR_TXE | ISR_OVW);
        }
        Ok(Ne2000 {
            mac,
            next: RX_START + 1,
            rep,
            irq: irq.is_some(),
            kicks: 0,
            dropped: 0,
        })
    }

    /// Hostile tests: a transmit command with byte count `len` from page `page`, whatever
    /// the buffer holds.
    pub fn transmit_raw(&mut self, page: u8, len: u16) {
        outb(TPSR, page);
        outb(TBCR0, len as u8);
        outb(TBCR1, (len >> 8) as u8);
        outb(CR, CR_TXP | CR_STA | CR_NODMA);
        self.kicks += 1;
    }

    /// Hostile tests: remote DMA of `len` bytes at card address `addr` (reads, discarded).
    pub fn dma_raw(&mut self, addr: u16, len: u16) {
        outb(RBCR0, len as u8);
        outb(RBCR1, (len >> 8) as u8);
        outb(RSAR0, addr as u8);
        outb(RSAR1, (addr >> 8) as u8);
        outb(CR, CR_RD_READ | CR_STA);
        for _ in 0..len.div_ceil(2) {
            let _ = inw(DATA);
        }
        outb(ISR, ISR_RDC);
    }

    /// ISR bits now (one exit).
    pub fn isr(&self) -> u8 {
        inb(ISR)
    }

    fn curr() -> u8 {
        outb(CR, CR_PAGE1 | CR_STA | CR_NODMA);
        let c = inb(CURR);
        outb(CR, CR_STA | CR_NODMA);
        c
    }

    /// Remote DMA read of `len` bytes at card address `addr` into `out`.
    fn dma_read(&self, addr: u16, out: &mut [u8], len: usize) {
        let words = len.div_ceil(2);
        outb(RBCR0, (words * 2) as u8);
        outb(RBCR1, ((words * 2) >> 8) as u8);
        outb(RSAR0, addr as u8);
        outb(RSAR1, (addr >> 8) as u8);
        outb(CR, CR_RD_READ | CR_STA);
        let full = len / 2;
        if self.rep {
            rep_insw(DATA, out.as_mut_ptr() as *mut u16, full);
        } else {
            for i in 0..full {
                let w = inw(DATA).to_le_bytes();
                out[2 * i] = w[0];
                out[2 * i + 1] = w[1];
            }
        }
        if len % 2 == 1 {
            out[len - 1] = inw(DATA) as u8;
        }
        outb(ISR, ISR_RDC);
    }

    /// Frames the card counted as missed (reads and clears the tally), after an overflow.
    fn overflow(&mut self) {
        outb(ISR, ISR_OVW);
        self.dropped += u64::from(inb(CNTR2));
    }
}

impl Nic for Ne2000 {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), NicError> {
        if frame.len() > MAX_FRAME || frame.len() < 14 {
            return Err(NicError::BadFrame);
        }
        let mut spins = 0;
        while inb(CR) & CR_TXP != 0 {
            spins += 1;
            if spins > 100_000 {
                return Err(NicError::Timeout);
            }
        }
        let len = frame.len().max(MIN_FRAME);
        let words = frame.len().div_ceil(2);
        outb(RBCR0, (len.div_ceil(2) * 2) as u8);
        outb(RBCR1, ((len.div_ceil(2) * 2) >> 8) as u8);
        outb(RSAR0, 0);
        outb(RSAR1, TX_PAGE);
        outb(CR, CR_RD_WRITE | CR_STA);
        let full = frame.len() / 2;
        if self.rep && full > 0 {
            rep_outsw(DATA, frame.as_ptr() as *const u16, full);
        } else {
            for i in 0..full {
                outw(DATA, u16::from_le_bytes([frame[2 * i], frame[2 * i + 1]]));
            }
        }
        if frame.len() % 2 == 1 {
            outw(DATA, u16::from(frame[frame.len() - 1]));
        }
        // Padding to the minimum frame: the card sends TBCR bytes of its buffer.
        for _ in words..len.div_ceil(2) {
            outw(DATA, 0);
        }
        outb(ISR, ISR_RDC);
        outb(TPSR, TX_PAGE);
        outb(TBCR0, len as u8);
        outb(TBCR1, (len >> 8) as u8);
        outb(CR, CR_TXP | CR_STA | CR_NODMA);
        self.kicks += 1;
        Ok(())
    }

    fn recv(&mut self, out: &mut [u8]) -> Result<Option<usize>, NicError> {
        let mut curr = Self::curr();
        if curr == self.next {
            // Acknowledge first, then look again: a frame after this raises a new edge.
            outb(ISR, ISR_PRX | ISR_PTX | ISR_RXE | ISR_TXE);
            curr = Self::curr();
            if curr == self.next {
                return Ok(None);
            }
        }
        let mut hdr = [0u8; 4];
        self.dma_read(u16::from(self.next) << 8, &mut hdr, 4);
        let next = hdr[1];
        let total = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        if !(RX_START..RX_STOP).contains(&next) || !(4 + 14..=4 + MAX_FRAME).contains(&total) {
            // A corrupt header: start over from the card's current page.
            self.next = curr;
            let b = if curr == RX_START {
                RX_STOP - 1
            } else {
                curr - 1
            };
            outb(BNRY, b);
            return Err(NicError::Broken("ne2000: corrupt receive header"));
        }
        let len = (total - 4).min(out.len());
        self.dma_read((u16::from(self.next) << 8) + 4, out, len);
        self.next = next;
        let b = if next == RX_START {
            RX_STOP - 1
        } else {
            next - 1
        };
        outb(BNRY, b);
        Ok(Some(len))
    }

    fn wait(&mut self) -> Result<(), NicError> {
        if !self.irq {
            cpu::pause();
            return Ok(());
        }
        cpu::cli();
        let isr = inb(ISR);
        if isr & ISR_OVW != 0 {
            self.overflow();
        }
        if isr & ISR_PRX == 0 {
            cpu::sti_hlt();
        } else {
            cpu::sti();
        }
        Ok(())
    }

    fn counters(&self) -> NicCounters {
        NicCounters {
            kicks: self.kicks,
            dropped: self.dropped,
        }
    }
}
