//! hv's VMBus-style channel, client side: one ring in guest memory with the layout hv's
//! provider reads (`hvlab_protocol::vmbus`; control page: write index @0, read index @4,
//! interrupt mask @8, pending send size @12; then the data area), packet framing (16-byte
//! descriptor, payload padded to 8 bytes, 8-byte trailer) and the writer's signal rule: signal
//! only when the ring was empty before this packet and the reader has not masked.

use core::sync::atomic::{Ordering, fence};

const CONTROL: usize = 4096;
const DESC: usize = 16;
const TRAILER: usize = 8;

/// One ring: its control page at `base`, `pages` pages in all (control included).
#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
    size: u32,
}

// SAFETY: a ring is used by one CPU at a time on the guest side (hv is the other side).
unsafe impl Send for Ring {}

impl Ring {
    /// The ring at `base` (page-aligned, identity-mapped RAM) of `pages` pages; zeroes its
    /// control page.
    ///
    /// # Safety
    /// `base..base + pages * 4096` must be memory this ring owns.
    pub unsafe fn new(base: *mut u8, pages: usize) -> Ring {
        // SAFETY: the caller gives us the control page.
        unsafe { core::ptr::write_bytes(base, 0, CONTROL) };
        Ring {
            base,
            size: ((pages - 1) * CONTROL) as u32,
        }
    }

    fn ctl(&self, off: usize) -> u32 {
        // SAFETY: inside the control page, aligned.
        unsafe { core::ptr::read_volatile(self.base.add(off) as *const u32) }
    }

    fn set_ctl(&self, off: usize, v: u32) {
        // SAFETY: as in `ctl`.
        unsafe { core::ptr::write_volatile(self.base.add(off) as *mut u32, v) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area follows the control page.
        unsafe { self.base.add(CONTROL) }
    }

    fn used(&self, write: u32, read: u32) -> u32 {
        if write >= read {
            write - read
        } else {
            self.size - read + write
        }
    }

    fn copy_in(&self, at: u32, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let off = (at as usize + i) % self.size as usize;
            // SAFETY: `off` is inside the data area.
            unsafe { core::ptr::write_volatile(self.data().add(off), *b) };
        }
    }

    fn byte(&self, at: usize) -> u8 {
        // SAFETY: reduced modulo the data area.
        unsafe { core::ptr::read_volatile(self.data().add(at % self.size as usize)) }
    }

    /// Writes one packet; `None` when it does not fit, else whether to signal the reader.
    pub fn write(&self, kind: u16, transaction: u64, payload: &[u8]) -> Option<bool> {
        let len = (DESC + payload.len()).div_ceil(8) * 8;
        let write = self.ctl(0);
        let read = self.ctl(4);
        let free = self.size - self.used(write, read);
        if (len + TRAILER) as u32 >= free {
            return None;
        }
        let mut desc = [0u8; DESC];
        desc[0..2].copy_from_slice(&kind.to_le_bytes());
        desc[2..4].copy_from_slice(&((DESC / 8) as u16).to_le_bytes());
        desc[4..6].copy_from_slice(&((len / 8) as u16).to_le_bytes());
        desc[8..16].copy_from_slice(&transaction.to_le_bytes());
        self.copy_in(write, &desc);
        self.copy_in(write + DESC as u32, payload);
        self.copy_in(write + len as u32, &(u64::from(write) << 32).to_le_bytes());
        fence(Ordering::SeqCst);
        self.set_ctl(0, (write + (len + TRAILER) as u32) % self.size);
        fence(Ordering::SeqCst);
        Some(self.ctl(8) == 0 && self.ctl(4) == write)
    }

    /// Overwrites the write index with `v`, as a hostile or broken guest would (tests only).
    pub fn set_write_index_raw(&self, v: u32) {
        self.set_ctl(0, v);
    }

    /// Reads one packet's payload into `buf` (cut to its length); (kind, transaction, payload
    /// bytes including padding), or `None` when empty or malformed.
    pub fn read(&self, buf: &mut [u8]) -> Option<(u16, u64, usize)> {
        let write = self.ctl(0);
        let read = self.ctl(4);
        if write == read {
            return None;
        }
        let at = read as usize;
        let h = |i: usize| self.byte(at + i);
        let kind = u16::from_le_bytes([h(0), h(1)]);
        let offset = usize::from(u16::from_le_bytes([h(2), h(3)])) * 8;
        let len = usize::from(u16::from_le_bytes([h(4), h(5)])) * 8;
        let mut t = [0u8; 8];
        for (i, b) in t.iter_mut().enumerate() {
            *b = h(8 + i);
        }
        if offset < DESC || offset > len || len + TRAILER > self.used(write, read) as usize {
            return None;
        }
        let n = len - offset;
        for (i, b) in buf.iter_mut().take(n).enumerate() {
            *b = h(offset + i);
        }
        fence(Ordering::SeqCst);
        self.set_ctl(4, ((at + len + TRAILER) % self.size as usize) as u32);
        Some((kind, u64::from_le_bytes(t), n))
    }
}
