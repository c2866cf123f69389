//! NE2000-compatible ISA NIC: the National DP8390 register set at [`NE2000_BASE`] (32 ports),
//! remote DMA through the data port at +0x10 and the reset port at +0x1f, as QEMU's `ne2k_isa`
//! lays them out. 32 KiB of card memory: the PROM (the MAC, each byte doubled) at 0 and 16 KiB
//! of packet RAM at 0x4000-0x7fff. Every register access and every byte or word of packet data
//! is a userspace exit.
//!
//! What a driver can use: reset (port +0x1f, ISR.RST), the MAC through the PROM, the receive
//! ring between PSTART and PSTOP with the boundary (BNRY) and current (CURR) pages and the
//! 4-byte packet headers (status, next page, length), transmit from TPSR/TBCR, the interrupt
//! status and mask (ISR/IMR, write-one-to-clear), the receive filter (physical address,
//! broadcast, multicast, promiscuous), and the tally counters. Interrupts are edges on an IOAPIC
//! pin through an irqfd, raised when a bit the mask allows becomes set.
//!
//! Receive: frames wait in the switch port's inbox while the ring has no room (as QEMU holds
//! them in its queue); the inbox's bound drops the rest, and those losses are the card's
//! overflow: ISR.OVW and the missed-packet tally (CNTR2). Frames are pulled into the ring when
//! they arrive (on the sending partition's thread), when the driver frees ring space (a BNRY
//! write) and when it starts the card; each pull is bounded by the ring's size.
//!
//! Lock order: the bus's lock on [`Ne2000`], then the card's core; the switch port's inbox is
//! a leaf. A transmitted frame is copied out under the core lock and sent after it is released,
//! so a receiving card's core lock is never taken while a sending one's is held.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction};
use crate::devices::NoteSink;
use crate::devices::switch::{MAX_FRAME, MIN_FRAME, Port, Switch};
use crate::error::HvError;
use crate::partition::Partition;

/// First I/O port of the card (QEMU's `ne2k_isa` default).
pub const NE2000_BASE: u16 = 0x300;
/// I/O ports the card decodes.
pub const NE2000_PORTS: u16 = 0x20;
/// IOAPIC pin of the card's interrupt (QEMU's `ne2k_isa` default IRQ).
pub const NE2000_GSI: u32 = 9;
/// Offset of the data port.
pub const DATA_PORT: u64 = 0x10;
/// Offset of the reset port.
pub const RESET_PORT: u64 = 0x1f;
/// Card memory: PROM at 0, packet RAM from [`RAM_START`].
const MEM_SIZE: usize = 0x8000;
const RAM_START: usize = 0x4000;
const PROM_SIZE: usize = 32;

/// CR bits.
pub mod cr {
    pub const STP: u8 = 0x01;
    pub const STA: u8 = 0x02;
    pub const TXP: u8 = 0x04;
    pub const RD_READ: u8 = 0x08;
    pub const RD_WRITE: u8 = 0x10;
    pub const RD_SEND: u8 = 0x18;
    pub const RD_ABORT: u8 = 0x20;
    pub const RD_MASK: u8 = 0x38;
    pub const PS_MASK: u8 = 0xc0;
}

/// ISR / IMR bits.
pub mod isr {
    pub const PRX: u8 = 0x01;
    pub const PTX: u8 = 0x02;
    pub const RXE: u8 = 0x04;
    pub const TXE: u8 = 0x08;
    pub const OVW: u8 = 0x10;
    pub const CNT: u8 = 0x20;
    pub const RDC: u8 = 0x40;
    pub const RST: u8 = 0x80;
}

/// RCR bits.
mod rcr {
    pub const AB: u8 = 0x04;
    /// Monitor mode: frames are checked, not buffered; they wait on the wire meanwhile.
    pub const MON: u8 = 0x20;
    pub const AM: u8 = 0x08;
    pub const PRO: u8 = 0x10;
}

/// DCR.WTS: word-wide remote DMA.
const DCR_WTS: u8 = 0x01;
/// TSR.PTX: packet transmitted.
const TSR_PTX: u8 = 0x01;
/// RSR.PRX: packet received intact.
const RSR_PRX: u8 = 0x01;
/// RSR.PHY is clear for a multicast/broadcast frame.
const RSR_MULTI: u8 = 0x20;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ne2000Stats {
    pub register_reads: u64,
    pub register_writes: u64,
    /// Data-port exits (one per `in`/`out`; a `rep` string access is one exit of many words).
    pub data_accesses: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit commands refused: a length outside 14..=1514, or a buffer past the RAM.
    pub tx_bad: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames the receive filter refused (another MAC, broadcast not accepted).
    pub rx_filtered: u64,
    /// Pulls that found a frame waiting and no room in the ring.
    pub ring_full: u64,
    /// Frames lost because the ring stayed full (the switch dropped them): the missed tally.
    pub missed: u64,
    /// Remote DMA bytes outside the card's memory, or transfers past the byte count.
    pub dma_bad: u64,
    /// Pulls that found a frame waiting and PSTART/PSTOP/CURR not a ring in RAM.
    pub bad_ring: u64,
}

/// The card's registers and memory.
pub struct Core {
    mem: Box<[u8; MEM_SIZE]>,
    cmd: u8,
    pstart: u8,
    pstop: u8,
    bnry: u8,
    tpsr: u8,
    tbcr: u16,
    rsar: u16,
    rbcr: u16,
    isr: u8,
    imr: u8,
    rcr: u8,
    tcr: u8,
    dcr: u8,
    tsr: u8,
    rsr: u8,
    par: [u8; 6],
    curr: u8,
    mar: [u8; 8],
    tally: [u8; 3],
    port: Arc<Port>,
    irq: EventFd,
    notes: NoteSink,
    /// Switch drops seen so far (to turn new ones into OVW and the missed tally).
    seen_dropped: u64,
    pub stats: Ne2000Stats,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ne2000Core")
            .field("cmd", &self.cmd)
            .field("isr", &self.isr)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    /// A card on `port`, interrupting through `irq`.
    pub fn new(port: Arc<Port>, irq: EventFd, notes: NoteSink) -> Core {
        let mut mem = Box::new([0u8; MEM_SIZE]);
        let mac = port.mac();
        for i in 0..PROM_SIZE / 2 {
            let b = match i {
                0..6 => mac[i],
                14 | 15 => 0x57, // "WW": an NE2000 rather than an NE1000
                _ => 0,
            };
            mem[2 * i] = b;
            mem[2 * i + 1] = b;
        }
        let mut c = Core {
            mem,
            cmd: cr::STP | cr::RD_ABORT,
            pstart: 0,
            pstop: 0,
            bnry: 0,
            tpsr: 0,
            tbcr: 0,
            rsar: 0,
            rbcr: 0,
            isr: isr::RST,
            imr: 0,
            rcr: 0,
            tcr: 0,
            dcr: 0,
            tsr: 0,
            rsr: 0,
            par: [0; 6],
            curr: 0,
            mar: [0; 8],
            tally: [0; 3],
            port,
            irq,
            notes,
            seen_dropped: 0,
            stats: Ne2000Stats::default(),
        };
        c.reset();
        c
    }

    fn reset(&mut self) {
        self.cmd = cr::STP | cr::RD_ABORT;
        self.isr = isr::RST;
        self.imr = 0;
        self.rbcr = 0;
        self.tbcr = 0;
        self.dcr = 0;
        self.rcr = 0;
        self.tcr = 0;
    }

    fn page(&self) -> u8 {
        self.cmd >> 6
    }

    fn started(&self) -> bool {
        self.cmd & cr::STP == 0 && self.cmd & cr::STA != 0
    }

    /// Sets ISR bits; an interrupt edge when one of them is newly set and unmasked.
    fn raise(&mut self, bits: u8) {
        let new = bits & !self.isr;
        self.isr |= bits;
        if new & self.imr & 0x7f != 0 {
            let _ = self.irq.write(1);
        }
    }

    /// The receive ring as (start, stop) page numbers, if it lies in RAM and is not empty.
    fn ring(&self) -> Option<(u8, u8)> {
        let (s, e) = (self.pstart, self.pstop);
        let ram = (RAM_START / 256) as u8..=(MEM_SIZE / 256) as u8;
        (s < e && ram.contains(&s) && ram.contains(&e) && (s..e).contains(&self.curr))
            .then_some((s, e))
    }

    /// Accepts by the receive filter.
    fn accepts(&self, dst: &[u8]) -> bool {
        if self.rcr & rcr::PRO != 0 {
            return true;
        }
        if dst == [0xff; 6] {
            return self.rcr & rcr::AB != 0;
        }
        if dst[0] & 1 != 0 {
            // Multicast hash: the top 6 bits of the CRC select a MAR bit; any set MAR bit with
            // AM accepts here (a driver that sets MAR wants multicast).
            return self.rcr & rcr::AM != 0 && self.mar.iter().any(|&m| m != 0);
        }
        dst == self.par
    }

    /// Moves waiting frames from the port into the ring while they fit; bounded by the ring.
    pub fn pull(&mut self) {
        let dropped = self
            .port
            .stats
            .rx_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        if dropped > self.seen_dropped {
            let n = dropped - self.seen_dropped;
            self.seen_dropped = dropped;
            self.stats.missed += n;
            self.tally[2] = self.tally[2].saturating_add(n.min(255) as u8);
            self.raise(isr::OVW);
        }
        if !self.started() || self.rcr & rcr::MON != 0 {
            return;
        }
        let Some((start, stop)) = self.ring() else {
            if self.port.pending() {
                self.stats.bad_ring += 1;
                self.notes.note(format!(
                    "ne2000: receive ring PSTART {:#x} PSTOP {:#x} CURR {:#x} is not a ring in RAM; not receiving",
                    self.pstart, self.pstop, self.curr
                ));
            }
            return;
        };
        // At most one frame per ring page per pull.
        for _ in start..stop {
            let Some(len) = self.port.peek_len() else {
                return;
            };
            let total = len.max(MIN_FRAME) + 4;
            let pages = total.div_ceil(256);
            // Free pages between CURR and BNRY, keeping one page so CURR never reaches BNRY
            // (the DP8390's full-ring rule).
            let ring_pages = usize::from(stop - start);
            let (c, b) = (usize::from(self.curr), usize::from(self.bnry));
            let free = if b > c {
                b - c
            } else {
                ring_pages.saturating_sub(c - b)
            };
            if pages >= free {
                self.stats.ring_full += 1;
                return;
            }
            let Some(frame) = self.port.take() else {
                return;
            };
            if frame.len() < 6 || !self.accepts(&frame[..6]) {
                self.stats.rx_filtered += 1;
                continue;
            }
            let mut next = usize::from(self.curr) + pages;
            if next >= usize::from(stop) {
                next -= ring_pages;
            }
            let mut hdr = [0u8; 4];
            self.rsr = RSR_PRX | if frame[0] & 1 != 0 { RSR_MULTI } else { 0 };
            hdr[0] = self.rsr;
            hdr[1] = next as u8;
            hdr[2..4].copy_from_slice(&(total as u16).to_le_bytes());
            let mut at = usize::from(self.curr) * 256;
            let ring_start = usize::from(start) * 256;
            let ring_end = usize::from(stop) * 256;
            for i in 0..total {
                let b = if i < 4 {
                    hdr[i]
                } else if i - 4 < frame.len() {
                    frame[i - 4]
                } else {
                    0
                };
                self.mem[at] = b;
                at += 1;
                if at >= ring_end {
                    at = ring_start;
                }
            }
            self.curr = next as u8;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
            self.raise(isr::PRX);
        }
    }

    /// Returns the frame to send (sent by the caller once the core lock is released).
    fn transmit(&mut self) -> Option<Vec<u8>> {
        let start = usize::from(self.tpsr) * 256;
        let len = usize::from(self.tbcr);
        let end = start + len;
        if !(14..=MAX_FRAME).contains(&len) || start < RAM_START || end > MEM_SIZE {
            self.stats.tx_bad += 1;
            self.notes.note(format!(
                "ne2000: transmit of {len} bytes at page {:#x} refused",
                self.tpsr
            ));
            self.tsr = 0;
            self.raise(isr::TXE);
            return None;
        }
        let frame = self.mem[start..end].to_vec();
        self.tsr = TSR_PTX;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        self.raise(isr::PTX);
        Some(frame)
    }

    fn write_cr(&mut self, v: u8) -> Option<Vec<u8>> {
        self.cmd = v & !cr::TXP;
        let mut out = None;
        if v & cr::STP == 0 {
            self.isr &= !isr::RST;
            let rd = v & cr::RD_MASK;
            if (rd == cr::RD_READ || rd == cr::RD_WRITE) && self.rbcr == 0 {
                self.raise(isr::RDC);
            }
            if v & cr::TXP != 0 {
                out = self.transmit();
            }
            self.pull();
        } else {
            self.raise(isr::RST);
        }
        out
    }

    fn reg_read(&mut self, off: u64) -> u8 {
        self.stats.register_reads += 1;
        let off = off as u8;
        if off == 0 {
            return self.cmd;
        }
        match (self.page(), off) {
            (0, 0x03) => self.bnry,
            (0, 0x04) => self.tsr,
            (0, 0x07) => self.isr,
            (0, 0x08) => self.rsar as u8,
            (0, 0x09) => (self.rsar >> 8) as u8,
            (0, 0x0c) => self.rsr,
            (0, 0x0d..=0x0f) => {
                let i = usize::from(off - 0x0d);
                std::mem::take(&mut self.tally[i])
            }
            (1, 0x01..=0x06) => self.par[usize::from(off - 1)],
            (1, 0x07) => self.curr,
            (1, 0x08..=0x0f) => self.mar[usize::from(off - 8)],
            (2, 0x01) => self.pstart,
            (2, 0x02) => self.pstop,
            (2, 0x04) => self.tpsr,
            (2, 0x0c) => self.rcr,
            (2, 0x0d) => self.tcr,
            (2, 0x0e) => self.dcr,
            (2, 0x0f) => self.imr,
            _ => 0,
        }
    }

    fn reg_write(&mut self, off: u64, v: u8) -> Option<Vec<u8>> {
        self.stats.register_writes += 1;
        let off = off as u8;
        if off == 0 {
            return self.write_cr(v);
        }
        match (self.page(), off) {
            (0, 0x01) => self.pstart = v,
            (0, 0x02) => self.pstop = v,
            (0, 0x03) => {
                self.bnry = v;
                self.pull();
            }
            (0, 0x04) => self.tpsr = v,
            (0, 0x05) => self.tbcr = (self.tbcr & 0xff00) | u16::from(v),
            (0, 0x06) => self.tbcr = (self.tbcr & 0x00ff) | (u16::from(v) << 8),
            (0, 0x07) => self.isr &= !(v & 0x7f),
            (0, 0x08) => self.rsar = (self.rsar & 0xff00) | u16::from(v),
            (0, 0x09) => self.rsar = (self.rsar & 0x00ff) | (u16::from(v) << 8),
            (0, 0x0a) => self.rbcr = (self.rbcr & 0xff00) | u16::from(v),
            (0, 0x0b) => self.rbcr = (self.rbcr & 0x00ff) | (u16::from(v) << 8),
            (0, 0x0c) => {
                self.rcr = v;
                self.pull();
            }
            (0, 0x0d) => self.tcr = v,
            (0, 0x0e) => self.dcr = v,
            (0, 0x0f) => {
                let old = self.imr;
                self.imr = v;
                // Unmasking a pending bit interrupts.
                if self.isr & v & !old & 0x7f != 0 {
                    let _ = self.irq.write(1);
                }
            }
            (1, 0x01..=0x06) => self.par[usize::from(off - 1)] = v,
            (1, 0x07) => self.curr = v,
            (1, 0x08..=0x0f) => self.mar[usize::from(off - 8)] = v,
            _ => {}
        }
        None
    }

    /// Card memory byte at `addr` for remote DMA reads (PROM, RAM, else 0xff).
    fn mem_read(&mut self, addr: usize) -> u8 {
        match addr {
            a if a < PROM_SIZE || (RAM_START..MEM_SIZE).contains(&a) => self.mem[a],
            _ => {
                self.stats.dma_bad += 1;
                0xff
            }
        }
    }

    /// Advances the remote DMA by `n` bytes: wraps at PSTOP (a packet that wraps the ring is
    /// read in one go), raises RDC at the end of the count.
    fn dma_step(&mut self, n: u16) {
        self.rsar = self.rsar.wrapping_add(n);
        if self.pstop != 0 && self.rsar == u16::from(self.pstop) << 8 {
            self.rsar = u16::from(self.pstart) << 8;
        }
        if self.rbcr <= n {
            self.rbcr = 0;
            self.raise(isr::RDC);
        } else {
            self.rbcr -= n;
        }
    }

    /// Width of one data-port transfer: a word in word mode (DCR.WTS), else a byte. A string
    /// access (`rep insw`) arrives as one buffer of many transfers, served one by one.
    fn width(&self, len: usize) -> usize {
        if self.dcr & DCR_WTS != 0 && len >= 2 {
            2
        } else {
            1
        }
    }

    fn data_read(&mut self, data: &mut [u8]) {
        self.stats.data_accesses += 1;
        data.fill(0xff);
        let w = self.width(data.len());
        for chunk in data.chunks_mut(w) {
            if self.rbcr == 0 {
                self.stats.dma_bad += 1;
                return;
            }
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = self.mem_read(usize::from(self.rsar) + i);
            }
            self.dma_step(w as u16);
        }
    }

    fn data_write(&mut self, data: &[u8]) {
        self.stats.data_accesses += 1;
        let w = self.width(data.len());
        for chunk in data.chunks(w) {
            if self.rbcr == 0 {
                self.stats.dma_bad += 1;
                return;
            }
            for (i, &b) in chunk.iter().enumerate() {
                let a = usize::from(self.rsar) + i;
                if (RAM_START..MEM_SIZE).contains(&a) {
                    self.mem[a] = b;
                } else {
                    self.stats.dma_bad += 1;
                }
            }
            self.dma_step(w as u16);
        }
    }

    /// The counters as two notes (each note holds at most 256 bytes).
    fn summary(&self) -> [String; 2] {
        let s = self.stats;
        [
            format!(
                "ne2000: register_reads={} register_writes={} data_accesses={} tx_frames={} \
                 tx_bytes={} tx_bad={} rx_frames={} rx_bytes={} dma_bad={}",
                s.register_reads,
                s.register_writes,
                s.data_accesses,
                s.tx_frames,
                s.tx_bytes,
                s.tx_bad,
                s.rx_frames,
                s.rx_bytes,
                s.dma_bad,
            ),
            format!(
                "ne2000 receive: rx_filtered={} ring_full={} missed={} bad_ring={} {}",
                s.rx_filtered,
                s.ring_full,
                s.missed,
                s.bad_ring,
                self.port.words()
            ),
        ]
    }
}

/// The card on the PIO bus.
#[derive(Debug)]
pub struct Ne2000 {
    core: Arc<Mutex<Core>>,
    switch: Arc<Switch>,
    port_index: usize,
}

impl BusDevice for Ne2000 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut c = locked(&self.core);
        match offset {
            DATA_PORT => c.data_read(data),
            RESET_PORT => {
                c.stats.register_reads += 1;
                c.reset();
                data.fill(0);
            }
            o if o < DATA_PORT => {
                let v = c.reg_read(o);
                data.fill(0);
                data[0] = v;
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let frame = {
            let mut c = locked(&self.core);
            match offset {
                DATA_PORT => {
                    c.data_write(data);
                    None
                }
                RESET_PORT => {
                    c.stats.register_writes += 1;
                    c.reset();
                    None
                }
                o if o < DATA_PORT => c.reg_write(o, data.first().copied().unwrap_or(0)),
                _ => None,
            }
        };
        // Sent with the core unlocked: the receiving card's core is locked by its delivery.
        if let Some(f) = frame {
            let _ = self.switch.send(self.port_index, &f);
        }
        DeviceAction::None
    }
}

/// Leaves the card's counters in the run's notes at teardown.
#[derive(Debug)]
pub struct StatsNote(pub Arc<Mutex<Core>>);

impl Drop for StatsNote {
    fn drop(&mut self) {
        let c = locked(&self.0);
        for n in c.summary() {
            c.notes.note(n);
        }
    }
}

/// Attaches an NE2000 on `port` of `switch` at [`NE2000_BASE`], interrupting on
/// [`NE2000_GSI`].
pub fn attach(
    partition: &mut Partition,
    switch: Arc<Switch>,
    port: Arc<Port>,
) -> Result<(), HvError> {
    let irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| HvError::Setup(format!("eventfd: {e}")))?;
    partition
        .vm()
        .register_irqfd(&irq, NE2000_GSI)
        .map_err(HvError::kvm("KVM_IRQFD"))?;
    let core = Arc::new(Mutex::new(Core::new(
        port.clone(),
        irq,
        partition.device_notes(),
    )));
    let weak = Arc::downgrade(&core);
    port.set_waker(Box::new(move || {
        if let Some(c) = weak.upgrade() {
            locked(&c).pull();
        }
    }));
    partition.keep_alive(Box::new(StatsNote(core.clone())));
    partition.add_pio_device(
        "ne2000",
        NE2000_BASE,
        NE2000_PORTS,
        Arc::new(Mutex::new(Ne2000 {
            core,
            switch,
            port_index: port.index(),
        })),
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::switch::port_mac;

    fn card(sw: &Arc<Switch>, i: u32) -> (Ne2000, Arc<Mutex<Core>>, EventFd) {
        let port = sw.add_port(port_mac(i)).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let core = Arc::new(Mutex::new(Core::new(
            port.clone(),
            irq.try_clone().unwrap(),
            NoteSink::default(),
        )));
        let weak = Arc::downgrade(&core);
        port.set_waker(Box::new(move || {
            if let Some(c) = weak.upgrade() {
                locked(&c).pull();
            }
        }));
        (
            Ne2000 {
                core: core.clone(),
                switch: sw.clone(),
                port_index: port.index(),
            },
            core,
            irq,
        )
    }

    fn outb(d: &mut Ne2000, off: u64, v: u8) {
        d.write(off, &[v]);
    }

    fn inb(d: &mut Ne2000, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn inw(d: &mut Ne2000) -> u16 {
        let mut b = [0u8; 2];
        d.read(DATA_PORT, &mut b);
        u16::from_le_bytes(b)
    }

    /// The driver's init sequence: word mode, ring 0x46..0x80, MAC from the PROM into PAR.
    fn init(d: &mut Ne2000) -> [u8; 6] {
        inb(d, RESET_PORT);
        assert_ne!(inb(d, 7) & isr::RST, 0);
        outb(d, 0, cr::STP | cr::RD_ABORT);
        outb(d, 0x0e, 0x49);
        outb(d, 0x01, 0x46);
        outb(d, 0x02, 0x80);
        outb(d, 0x03, 0x46);
        outb(d, 0x04, 0x40);
        outb(d, 0x07, 0xff);
        // PROM: 32 bytes by remote read.
        outb(d, 0x08, 0);
        outb(d, 0x09, 0);
        outb(d, 0x0a, 32);
        outb(d, 0x0b, 0);
        outb(d, 0, cr::RD_READ | cr::STA);
        let prom: Vec<u16> = (0..16).map(|_| inw(d)).collect();
        let mut mac = [0u8; 6];
        for (m, w) in mac.iter_mut().zip(&prom) {
            *m = *w as u8;
        }
        assert_eq!(prom[14], 0x5757, "NE2000 signature");
        assert_ne!(inb(d, 7) & isr::RDC, 0);
        outb(d, 0, 0x40 | cr::STP | cr::RD_ABORT);
        for (i, b) in mac.iter().enumerate() {
            outb(d, 1 + i as u64, *b);
        }
        outb(d, 0x07, 0x47);
        outb(d, 0, cr::STA | cr::RD_ABORT);
        outb(d, 0x0c, rcr::AB);
        outb(d, 0x0f, 0x1f);
        mac
    }

    fn send(d: &mut Ne2000, frame: &[u8]) {
        let len = frame.len() as u16;
        outb(d, 0x0a, len as u8);
        outb(d, 0x0b, (len >> 8) as u8);
        outb(d, 0x08, 0);
        outb(d, 0x09, 0x40);
        outb(d, 0, cr::RD_WRITE | cr::STA);
        for w in frame.chunks(2) {
            d.write(DATA_PORT, &[w[0], *w.get(1).unwrap_or(&0)]);
        }
        outb(d, 0x04, 0x40);
        outb(d, 0x05, len as u8);
        outb(d, 0x06, (len >> 8) as u8);
        outb(d, 0, cr::TXP | cr::STA | cr::RD_ABORT);
    }

    /// Reads the next packet out of the ring: (header status, frame).
    fn receive(d: &mut Ne2000) -> Option<Vec<u8>> {
        outb(d, 0, 0x40 | cr::STA | cr::RD_ABORT);
        let curr = inb(d, 7);
        outb(d, 0, cr::STA | cr::RD_ABORT);
        let bnry = inb(d, 3);
        let next = if bnry + 1 == 0x80 { 0x46 } else { bnry + 1 };
        if next == curr {
            return None;
        }
        outb(d, 0x08, 0);
        outb(d, 0x09, next);
        outb(d, 0x0a, 4);
        outb(d, 0x0b, 0);
        outb(d, 0, cr::RD_READ | cr::STA);
        let (a, b) = (inw(d), inw(d));
        let nextpkt = (a >> 8) as u8;
        let len = usize::from(b) - 4;
        outb(d, 0x08, 4);
        outb(d, 0x09, next);
        outb(d, 0x0a, len as u8);
        outb(d, 0x0b, (len >> 8) as u8);
        outb(d, 0, cr::RD_READ | cr::STA);
        let mut f = Vec::new();
        for _ in 0..len.div_ceil(2) {
            f.extend_from_slice(&inw(d).to_le_bytes());
        }
        f.truncate(len);
        let nb = if nextpkt == 0x46 { 0x7f } else { nextpkt - 1 };
        outb(d, 0x03, nb);
        Some(f)
    }

    #[test]
    fn frames_cross_between_two_cards_intact_and_the_ring_wraps() {
        let sw = Switch::new();
        let (mut a, _, _) = card(&sw, 0);
        let (mut b, bcore, birq) = card(&sw, 1);
        assert_eq!(init(&mut a), port_mac(0));
        init(&mut b);
        // 40 full-size frames: the 58-page ring wraps several times.
        for n in 0..40u32 {
            let mut f = vec![0u8; 1514];
            f[..6].copy_from_slice(&port_mac(1));
            f[6..12].copy_from_slice(&port_mac(0));
            for (i, x) in f[12..].iter_mut().enumerate() {
                *x = (i as u32 * 7 + n) as u8;
            }
            send(&mut a, &f);
            assert_ne!(inb(&mut a, 7) & isr::PTX, 0);
            outb(&mut a, 7, 0xff);
            assert_eq!(receive(&mut b).unwrap(), f, "frame {n}");
            assert!(receive(&mut b).is_none());
        }
        assert!(birq.read().unwrap() > 0);
        assert_eq!(locked(&bcore).stats.rx_frames, 40);
    }

    /// A ring the driver never drains: frames wait in the switch inbox, the inbox bound drops
    /// the rest, and the card reports the loss as overflow (OVW, the missed tally).
    #[test]
    fn an_undrained_ring_overflows_with_ovw_and_missed_counts() {
        let sw = Switch::new();
        let (mut a, _, _) = card(&sw, 0);
        let (mut b, bcore, _) = card(&sw, 1);
        init(&mut a);
        init(&mut b);
        let mut f = vec![0u8; 1000];
        f[..6].copy_from_slice(&port_mac(1));
        for _ in 0..400 {
            send(&mut a, &f);
        }
        let c = locked(&bcore).stats;
        assert!(c.rx_frames > 0 && c.rx_frames < 20, "{c:?}");
        assert!(c.ring_full > 0);
        // Draining frees room: the waiting frames come in (pulled at the BNRY write).
        let mut got = 0;
        while receive(&mut b).is_some() {
            got += 1;
            if got > 1000 {
                break;
            }
        }
        assert!(got > 20, "{got}");
        assert_ne!(inb(&mut b, 7) & isr::OVW, 0);
        let missed = inb(&mut b, 0x0f);
        assert!(missed > 0);
        assert!(locked(&bcore).stats.missed > 0);
    }

    #[test]
    fn bad_transmits_and_dma_are_refused_and_counted() {
        let sw = Switch::new();
        let (mut a, acore, _) = card(&sw, 0);
        init(&mut a);
        // Length past the RAM and over a frame.
        outb(&mut a, 0x04, 0x7f);
        outb(&mut a, 0x05, 0xff);
        outb(&mut a, 0x06, 0xff);
        outb(&mut a, 0, cr::TXP | cr::STA | cr::RD_ABORT);
        assert_ne!(inb(&mut a, 7) & isr::TXE, 0);
        // Remote DMA beyond memory: reads 0xff, writes ignored.
        outb(&mut a, 0x08, 0);
        outb(&mut a, 0x09, 0x90);
        outb(&mut a, 0x0a, 4);
        outb(&mut a, 0x0b, 0);
        outb(&mut a, 0, cr::RD_READ | cr::STA);
        assert_eq!(inw(&mut a), 0xffff);
        let s = locked(&acore).stats;
        assert_eq!((s.tx_bad, s.tx_frames), (1, 0));
        assert!(s.dma_bad >= 2);
    }
}
