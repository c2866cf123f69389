//! virtio over virtio-mmio (version 2) with split virtqueues in static memory, and the
//! virtio-blk and virtio-console request formats.
//!
//! Notification: the driver publishes the available index, then notifies only when the device
//! asks for it (VRING_USED_F_NO_NOTIFY, or the avail_event index with VIRTIO_F_EVENT_IDX);
//! completions are found on the used ring, either after an interrupt (`sti; hlt`) or by
//! polling. hv signals interrupts as edges on IOAPIC pins, so a driver of hv's devices never
//! reads or acknowledges InterruptStatus (each would be an exit). Transports found through
//! `virtio_mmio.device=` on the command line ([`find_on_cmdline`], as Linux and QEMU's
//! microvm name them) hold their line until acknowledged: their drivers call
//! [`ack_interrupt`] in the interrupt handler, as Linux's `vm_interrupt` does.

use core::ptr::{read_volatile, write_volatile};

use crate::cpu::{mmio_read32, mmio_write32};
use crate::drivers::{compiler_fence, mb};

pub const MAGIC: u32 = 0x7472_6976;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG: u64 = 0x100;

pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 0x40;

pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// Largest queue this driver sets up.
pub const MAX_QUEUE: u16 = 256;
/// Bytes of ring memory per queue (descriptors, available ring, used ring on its own page).
pub const RING_BYTES: usize = 12288;

/// Ring memory for one queue.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct RingMem(pub [u8; RING_BYTES]);

impl RingMem {
    pub const fn new() -> RingMem {
        RingMem([0; RING_BYTES])
    }
}

impl Default for RingMem {
    fn default() -> Self {
        RingMem::new()
    }
}

/// Why setting up a device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// No virtio-mmio device (or the wrong one) at that address.
    NotFound,
    /// The device refused the features or a queue.
    Refused(&'static str),
}

/// A virtio-mmio register window.
#[derive(Debug, Clone, Copy)]
pub struct Mmio(pub u64);

impl Mmio {
    pub fn read(self, off: u64) -> u32 {
        mmio_read32(self.0 + off)
    }
    pub fn write(self, off: u64, v: u32) {
        mmio_write32(self.0 + off, v)
    }
    /// The device status register.
    pub fn status(self) -> u32 {
        self.read(REG_STATUS)
    }
}

/// A split virtqueue in ring memory the driver owns.
#[derive(Debug)]
pub struct VirtQueue {
    pub index: u16,
    pub size: u16,
    base: u64,
    avail: u64,
    used: u64,
    /// Next available index (published with `publish`).
    pub avail_idx: u16,
    /// Avail index the device last saw published (for the notify decision).
    published: u16,
    /// Next used index to consume.
    pub last_used: u16,
    pub event_idx: bool,
}

impl VirtQueue {
    /// A queue of `size` entries in `mem`.
    pub fn new(index: u16, size: u16, mem: &'static mut RingMem, event_idx: bool) -> VirtQueue {
        let base = mem.0.as_mut_ptr() as u64;
        let avail = base + u64::from(size) * 16;
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        VirtQueue {
            index,
            size,
            base,
            avail,
            used,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            event_idx,
        }
    }

    /// Tells the device where the rings are and marks the queue ready.
    pub fn attach(&self, dev: Mmio) -> Result<(), VirtioError> {
        dev.write(REG_QUEUE_SEL, u32::from(self.index));
        let max = dev.read(REG_QUEUE_NUM_MAX);
        if max < u32::from(self.size) {
            return Err(VirtioError::Refused("queue size"));
        }
        dev.write(REG_QUEUE_NUM, u32::from(self.size));
        dev.write(REG_QUEUE_DESC_LOW, self.base as u32);
        dev.write(REG_QUEUE_DESC_HIGH, (self.base >> 32) as u32);
        dev.write(REG_QUEUE_DRIVER_LOW, self.avail as u32);
        dev.write(REG_QUEUE_DRIVER_HIGH, (self.avail >> 32) as u32);
        dev.write(REG_QUEUE_DEVICE_LOW, self.used as u32);
        dev.write(REG_QUEUE_DEVICE_HIGH, (self.used >> 32) as u32);
        dev.write(REG_QUEUE_READY, 1);
        Ok(())
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.base + u64::from(i % self.size) * 16;
        // SAFETY: the descriptor table lies in this queue's ring memory.
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Puts chain head `head` on the available ring (visible after `publish`). The raw value
    /// is written as given (hostile tests write out-of-range heads on purpose).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        // SAFETY: inside the available ring.
        unsafe { write_volatile(slot as *mut u16, head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index; returns whether the device wants a notification.
    pub fn publish(&mut self) -> bool {
        compiler_fence();
        // SAFETY: avail.idx is in the ring memory.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.avail_idx) };
        mb();
        let old = self.published;
        self.published = self.avail_idx;
        if self.event_idx {
            let used_end = self.used + 4 + 8 * u64::from(self.size);
            // SAFETY: avail_event follows the used ring's entries, inside ring memory.
            let event = unsafe { read_volatile(used_end as *const u16) };
            self.avail_idx.wrapping_sub(event).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
        } else {
            // SAFETY: used.flags is in ring memory.
            let flags = unsafe { read_volatile(self.used as *const u16) };
            flags & 1 == 0
        }
    }

    /// Publishes and, when the device wants it, notifies. Returns true if it notified.
    pub fn kick(&mut self, dev: Mmio) -> bool {
        if self.publish() {
            dev.write(REG_QUEUE_NOTIFY, u32::from(self.index));
            true
        } else {
            false
        }
    }

    /// Sets the index of the used entry after which the device should interrupt (EVENT_IDX).
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        // SAFETY: used_event follows the available ring's entries, inside ring memory.
        unsafe { write_volatile(at as *mut u16, v) };
    }

    /// VRING_AVAIL_F_NO_INTERRUPT on or off.
    pub fn set_no_interrupt(&self, on: bool) {
        // SAFETY: avail.flags is in ring memory.
        unsafe { write_volatile(self.avail as *mut u16, u16::from(on)) };
    }

    /// Publishes a raw available index (hostile tests).
    pub fn publish_raw(&mut self, idx: u16) {
        compiler_fence();
        // SAFETY: avail.idx is in ring memory.
        unsafe { write_volatile((self.avail + 2) as *mut u16, idx) };
    }

    /// True when the device has used entries not yet consumed.
    #[inline]
    pub fn has_used(&self) -> bool {
        // SAFETY: used.idx is in ring memory.
        unsafe { read_volatile((self.used + 2) as *const u16) != self.last_used }
    }

    /// Takes the next used entry: (descriptor head, bytes written).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        compiler_fence();
        let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        // SAFETY: inside the used ring.
        let r = unsafe {
            (
                read_volatile(e as *const u32),
                read_volatile((e + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(r)
    }
}

/// The first transport named by a `virtio_mmio.device=` word of `cmdline` whose device has
/// `device_id`, with its interrupt line. Only windows inside the uncached MMIO region of the
/// identity map (3-4 GiB) are probed, one magic and one device-ID read each.
pub fn find_on_cmdline(cmdline: &str, device_id: u32) -> Option<(Mmio, u32)> {
    hvlab_protocol::virtio_mmio::devices(cmdline)
        .filter(|d| d.base >= hvlab_protocol::MMIO_WINDOW_BASE && d.base + d.size <= 1 << 32)
        .map(|d| (Mmio(d.base), d.irq))
        .find(|(m, _)| m.read(REG_MAGIC) == MAGIC && m.read(REG_DEVICE_ID) == device_id)
}

/// Reads InterruptStatus and acknowledges what it holds, so a level-style transport lowers
/// its line (two exits; hv's transports never need it).
pub fn ack_interrupt(dev: Mmio) {
    let pending = dev.read(REG_INTERRUPT_STATUS);
    if pending != 0 {
        dev.write(REG_INTERRUPT_ACK, pending);
    }
}

/// Brings a device at `dev` through reset, feature negotiation (offering `wanted`, which must
/// include VERSION_1) and queue setup, up to DRIVER_OK. Returns the negotiated features.
pub fn init(
    dev: Mmio,
    device_id: u32,
    wanted: u64,
    queues: &[&VirtQueue],
) -> Result<u64, VirtioError> {
    if dev.read(REG_MAGIC) != MAGIC
        || dev.read(REG_VERSION) != 2
        || dev.read(REG_DEVICE_ID) != device_id
    {
        return Err(VirtioError::NotFound);
    }
    dev.write(REG_STATUS, 0);
    dev.write(REG_STATUS, S_ACKNOWLEDGE);
    dev.write(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    dev.write(REG_DEVICE_FEATURES_SEL, 0);
    let lo = dev.read(REG_DEVICE_FEATURES);
    dev.write(REG_DEVICE_FEATURES_SEL, 1);
    let hi = dev.read(REG_DEVICE_FEATURES);
    let features = (u64::from(hi) << 32 | u64::from(lo)) & wanted;
    if features & F_VERSION_1 == 0 {
        return Err(VirtioError::Refused("VERSION_1"));
    }
    dev.write(REG_DRIVER_FEATURES_SEL, 0);
    dev.write(REG_DRIVER_FEATURES, features as u32);
    dev.write(REG_DRIVER_FEATURES_SEL, 1);
    dev.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
    let s = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK;
    dev.write(REG_STATUS, s);
    if dev.read(REG_STATUS) & S_FEATURES_OK == 0 {
        return Err(VirtioError::Refused("features"));
    }
    for q in queues {
        q.attach(dev)?;
    }
    dev.write(REG_STATUS, s | S_DRIVER_OK);
    Ok(features)
}

/// virtio-blk request types and status.
pub mod blk {
    pub const DEVICE_ID: u32 = 2;
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const T_GET_ID: u32 = 8;
    pub const S_OK: u8 = 0;
    /// The request failed on the device (a host I/O error, a write to a read-only disk).
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
    /// VIRTIO_BLK_F_RO: the disk is read-only.
    pub const F_RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_FLUSH: writes are write-back until a T_FLUSH (without it the device makes
    /// each write stable before completing it).
    pub const F_FLUSH: u64 = 1 << 9;
}

/// virtio-console device ID.
pub const CONSOLE_DEVICE_ID: u32 = 3;
