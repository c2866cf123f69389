//! virtio-net driver: queue 0 receives into [`RX_SLOTS`] buffers of 2 KiB that are posted
//! again as soon as their frame is copied out; queue 1 transmits from [`TX_SLOTS`] buffers, each
//! one descriptor holding the 12-byte header and the frame. Transmit completions are reaped
//! lazily and never interrupt (VRING_AVAIL_F_NO_INTERRUPT, or a used_event far ahead with
//! EVENT_IDX); receive completions interrupt unless the driver polls.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::drivers::ioapic;
use crate::drivers::virtio::{
    self, DESC_F_WRITE, F_EVENT_IDX, F_VERSION_1, Mmio, RingMem, S_NEEDS_RESET, VirtQueue,
};
use crate::net::{MAX_FRAME, MIN_FRAME, Nic, NicCounters, NicError};
use crate::{apic, cpu, idt};

pub const DEVICE_ID: u32 = 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_STATUS: u64 = 1 << 16;
/// `virtio_net_hdr` with `num_buffers` (virtio 1.x).
pub const HDR_LEN: usize = 12;
pub const RX_SLOTS: u16 = 32;
pub const TX_SLOTS: u16 = 32;
const BUF: usize = 2048;
/// Interrupt vector of the NIC.
pub const VECTOR: u8 = 0x41;

/// Interrupts taken on [`VECTOR`].
pub static IRQS: AtomicU64 = AtomicU64::new(0);
/// The transport whose InterruptStatus the handler acknowledges (0: none). A transport found
/// from `virtio_mmio.device=` (QEMU's microvm) holds its line until acknowledged, so with an
/// edge-triggered IOAPIC pin an unacknowledged interrupt would be the last one.
static ACK_BASE: AtomicU64 = AtomicU64::new(0);

fn on_irq(_: u8) {
    IRQS.fetch_add(1, Ordering::Relaxed);
    let base = ACK_BASE.load(Ordering::Relaxed);
    if base != 0 {
        virtio::ack_interrupt(Mmio(base));
    }
}

#[repr(C, align(4096))]
struct Bufs([[u8; BUF]; 32]);

static mut RX_RING: RingMem = RingMem::new();
static mut TX_RING: RingMem = RingMem::new();
static mut RX_BUF: Bufs = Bufs([[0; BUF]; 32]);
static mut TX_BUF: Bufs = Bufs([[0; BUF]; 32]);

fn rx_buf(i: u16) -> *mut u8 {
    // SAFETY: only the address is taken; i < RX_SLOTS.
    unsafe { (*core::ptr::addr_of_mut!(RX_BUF)).0[usize::from(i % RX_SLOTS)].as_mut_ptr() }
}

fn tx_buf(i: u16) -> *mut u8 {
    // SAFETY: only the address is taken; i < TX_SLOTS.
    unsafe { (*core::ptr::addr_of_mut!(TX_BUF)).0[usize::from(i % TX_SLOTS)].as_mut_ptr() }
}

/// The driver of one virtio-net device (one per guest: the rings are static).
#[derive(Debug)]
pub struct VirtioNet {
    dev: Mmio,
    rx: VirtQueue,
    tx: VirtQueue,
    mac: [u8; 6],
    poll: bool,
    tx_next: u16,
    tx_inflight: u16,
    kicks: u64,
    waits: u64,
    /// Link status from the configuration space at open.
    pub link_up: bool,
}

impl VirtioNet {
    /// Brings the device at `base` up, interrupting on IOAPIC pin `irq` (unless `poll`);
    /// `ack`: the interrupt handler acknowledges InterruptStatus (a level-style transport).
    pub fn open(
        base: u64,
        irq: u8,
        evidx: bool,
        poll: bool,
        ack: bool,
    ) -> Result<VirtioNet, NicError> {
        let dev = Mmio(base);
        ACK_BASE.store(if ack { base } else { 0 }, Ordering::Relaxed);
        // SAFETY: one driver instance per guest owns the ring memory.
        let (rxm, txm) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(RX_RING),
                &mut *core::ptr::addr_of_mut!(TX_RING),
            )
        };
        let mut rx = VirtQueue::new(0, RX_SLOTS, rxm, false);
        let mut tx = VirtQueue::new(1, TX_SLOTS, txm, false);
        let mut wanted = F_VERSION_1 | F_MAC | F_STATUS;
        if evidx {
            wanted |= F_EVENT_IDX;
        }
        let features = virtio::init(dev, DEVICE_ID, wanted, &[&rx, &tx])
            .map_err(|_| NicError::Broken("virtio-net setup"))?;
        if features & F_MAC == 0 {
            return Err(NicError::Broken("virtio-net without a MAC"));
        }
        rx.event_idx = features & F_EVENT_IDX != 0;
        tx.event_idx = rx.event_idx;
        let lo = dev.read(virtio::REG_CONFIG).to_le_bytes();
        let hi = dev.read(virtio::REG_CONFIG + 4).to_le_bytes();
        let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        let link_up = features & F_STATUS == 0 || hi[2] & 1 != 0;
        // Transmit completions never interrupt.
        if tx.event_idx {
            tx.set_used_event(0x7fff);
        } else {
            tx.set_no_interrupt(true);
        }
        if poll {
            cpu::cli();
            if rx.event_idx {
                rx.set_used_event(0x7fff);
            } else {
                rx.set_no_interrupt(true);
            }
        } else {
            idt::register(VECTOR, on_irq);
            ioapic::mask_pic();
            ioapic::route(irq, VECTOR, apic::id());
        }
        for i in 0..RX_SLOTS {
            rx.set_desc(i, rx_buf(i) as u64, BUF as u32, DESC_F_WRITE, 0);
            rx.push(i);
        }
        let mut n = VirtioNet {
            dev,
            rx,
            tx,
            mac,
            poll,
            tx_next: 0,
            tx_inflight: 0,
            kicks: 0,
            waits: 0,
            link_up,
        };
        if n.rx.kick(dev) {
            n.kicks += 1;
        }
        Ok(n)
    }

    fn reap_tx(&mut self) {
        while self.tx.pop_used().is_some() {
            self.tx_inflight = self.tx_inflight.saturating_sub(1);
        }
        if self.tx.event_idx {
            self.tx
                .set_used_event(self.tx.last_used.wrapping_add(0x7fff));
        }
    }

    /// Hostile tests: puts one transmit descriptor of `len` bytes at `addr` (0: the next
    /// slot's own buffer) on the ring, as no honest driver would.
    pub fn send_raw(&mut self, addr: u64, len: u32) -> Result<(), NicError> {
        let slot = self.free_slot()?;
        let addr = if addr == 0 { tx_buf(slot) as u64 } else { addr };
        self.tx.set_desc(slot, addr, len, 0, 0);
        self.tx.push(slot);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_inflight += 1;
        if self.tx.kick(self.dev) {
            self.kicks += 1;
        }
        Ok(())
    }

    /// True when the device reports DEVICE_NEEDS_RESET (one register read: an exit).
    pub fn needs_reset(&self) -> bool {
        self.dev.status() & S_NEEDS_RESET != 0
    }

    /// The next transmit slot, once the device is done with it (reaping completions).
    fn free_slot(&mut self) -> Result<u16, NicError> {
        self.reap_tx();
        let mut spins = 0u64;
        while self.tx_inflight >= TX_SLOTS {
            cpu::pause();
            self.reap_tx();
            spins += 1;
            if spins.is_multiple_of(4096) {
                self.broken()?;
                if spins > 50_000_000 {
                    return Err(NicError::Timeout);
                }
            }
        }
        Ok(self.tx_next % TX_SLOTS)
    }

    fn broken(&self) -> Result<(), NicError> {
        if self.dev.status() & S_NEEDS_RESET != 0 {
            Err(NicError::Broken("virtio-net: device needs reset"))
        } else {
            Ok(())
        }
    }
}

impl Nic for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), NicError> {
        if frame.len() > MAX_FRAME || frame.len() < 14 {
            return Err(NicError::BadFrame);
        }
        let slot = self.free_slot()?;
        let b = tx_buf(slot);
        let len = frame.len().max(MIN_FRAME);
        // SAFETY: the slot's buffer holds BUF >= HDR_LEN + MAX_FRAME bytes, and the device is
        // done with it (it is not in flight).
        unsafe {
            core::ptr::write_bytes(b, 0, HDR_LEN);
            core::ptr::copy_nonoverlapping(frame.as_ptr(), b.add(HDR_LEN), frame.len());
            if len > frame.len() {
                core::ptr::write_bytes(b.add(HDR_LEN + frame.len()), 0, len - frame.len());
            }
        }
        self.tx
            .set_desc(slot, b as u64, (HDR_LEN + len) as u32, 0, 0);
        self.tx.push(slot);
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx_inflight += 1;
        if self.tx.kick(self.dev) {
            self.kicks += 1;
        }
        Ok(())
    }

    fn recv(&mut self, out: &mut [u8]) -> Result<Option<usize>, NicError> {
        let Some((id, len)) = self.rx.pop_used() else {
            return Ok(None);
        };
        let id = (id % u32::from(RX_SLOTS)) as u16;
        let len = (len as usize)
            .saturating_sub(HDR_LEN)
            .min(out.len())
            .min(MAX_FRAME);
        // SAFETY: the device wrote this buffer before its used entry; len <= BUF - HDR_LEN.
        unsafe {
            core::ptr::copy_nonoverlapping(rx_buf(id).add(HDR_LEN), out.as_mut_ptr(), len);
        }
        self.rx.push(id);
        if self.rx.kick(self.dev) {
            self.kicks += 1;
        }
        Ok(Some(len))
    }

    fn wait(&mut self) -> Result<(), NicError> {
        self.waits += 1;
        // The status read is an exit: look only now and then.
        if self.waits.is_multiple_of(1024) {
            self.broken()?;
        }
        if self.poll {
            cpu::pause();
            return Ok(());
        }
        if self.rx.event_idx {
            self.rx.set_used_event(self.rx.last_used);
        }
        crate::drivers::mb();
        cpu::cli();
        if self.rx.has_used() {
            cpu::sti();
        } else {
            cpu::sti_hlt();
        }
        Ok(())
    }

    fn counters(&self) -> NicCounters {
        NicCounters {
            kicks: self.kicks,
            dropped: 0,
        }
    }
}
