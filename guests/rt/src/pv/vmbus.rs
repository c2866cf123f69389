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

    // Whole u64 accesses: every index, descriptor, payload (padded) and trailer is 8-aligned
    // and the data area is a multiple of 8, so no word straddles the wrap. (Kernel-mode guest
    // code may run in the host's instruction emulator: one access per 8 bytes, not per byte.)
    fn put(&self, at: usize, w: u64) {
        let off = (at % self.size as usize) & !7;
        // SAFETY: `off` is an aligned word inside the data area.
        unsafe { core::ptr::write_volatile(self.data().add(off) as *mut u64, w) };
    }

    fn get(&self, at: usize) -> u64 {
        let off = (at % self.size as usize) & !7;
        // SAFETY: as in `put`.
        unsafe { core::ptr::read_volatile(self.data().add(off) as *const u64) }
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
        let at = write as usize;
        let d0 = u64::from(kind) | ((DESC / 8) as u64) << 16 | ((len / 8) as u64) << 32;
        self.put(at, d0);
        self.put(at + 8, transaction);
        for (i, chunk) in payload.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.put(at + DESC + 8 * i, u64::from_le_bytes(b));
        }
        self.put(at + len, u64::from(write) << 32);
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
        let d0 = self.get(at);
        let kind = d0 as u16;
        let offset = ((d0 >> 16) & 0xffff) as usize * 8;
        let len = ((d0 >> 32) & 0xffff) as usize * 8;
        let transaction = self.get(at + 8);
        if offset < DESC || offset > len || len + TRAILER > self.used(write, read) as usize {
            return None;
        }
        let n = len - offset;
        let take = n.min(buf.len());
        for (i, chunk) in buf[..take].chunks_mut(8).enumerate() {
            let w = self.get(at + offset + 8 * i).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        fence(Ordering::SeqCst);
        self.set_ctl(4, ((at + len + TRAILER) % self.size as usize) as u32);
        Some((kind, transaction, n))
    }
}
