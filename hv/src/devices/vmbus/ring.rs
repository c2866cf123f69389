//! One VMBus-style ring buffer in guest memory, provider (hv) side: the layout VMBus uses, the
//! packet framing, and the two signal-suppression rules. Pure over guest memory: every hostile
//! index, length and placement is unit-tested.
//!
//! Layout: a 4 KiB control page, then the data area (a multiple of 4 KiB). Control page: write
//! index u32 @0, read index u32 @4, interrupt mask u32 @8, pending send size u32 @12, feature
//! bits u32 @64 (bit 0: the reader honours pending send size). Indices are byte offsets into
//! the data area, 8-aligned; the ring is empty when they are equal and never filled completely
//! (one 8-byte slot stays free), so full and empty differ.
//!
//! Packet: a 16-byte descriptor (type u16, data offset u16 and total length u16 both in 8-byte
//! units, flags u16, transaction id u64), the payload, padding to 8 bytes, then an 8-byte
//! trailer (the writer's start index in its upper half, as VMBus writes it), all wrapping at
//! the end of the data area.
//!
//! Signals: a writer signals the reader only when the reader has not masked interrupts and the
//! ring was empty before the write (a non-empty ring means the reader is still draining). A
//! reader that frees space signals the writer only when the writer asked (pending send size,
//! with the feature bit) and the free space crossed that size with this read.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use thiserror::Error;

/// Control page size; the data area starts after it.
pub const CONTROL: u64 = 4096;
/// Largest ring hv accepts (control page + data), so a guest cannot make hv scan or map
/// without bound.
pub const MAX_RING_BYTES: u64 = 1 << 20;
/// Largest packet hv reads or writes.
pub const MAX_PACKET: usize = 64 * 1024;
const DESC: usize = 16;
const TRAILER: u64 = 8;

/// What is wrong with a ring or a packet. Each ends the channel's use of the ring (the caller
/// counts and notes it); nothing else is affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RingError {
    #[error("ring at {gpa:#x} of {len} bytes is not page-aligned, too small or too large")]
    BadPlacement { gpa: u64, len: u64 },
    #[error("ring at {gpa:#x} of {len} bytes is not entirely inside guest RAM")]
    OutsideRam { gpa: u64, len: u64 },
    #[error("ring index {index:#x} is unaligned or past the data area ({size:#x} bytes)")]
    BadIndex { index: u32, size: u32 },
    #[error(
        "packet of {len} bytes does not fit what the ring holds ({avail} bytes) or {MAX_PACKET}"
    )]
    Oversized { len: usize, avail: u32 },
    #[error("packet descriptor with data offset {offset} outside its length {len}")]
    BadDescriptor { offset: usize, len: usize },
    #[error("guest memory access failed inside a checked ring")]
    Memory,
}

/// One ring in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    control: GuestAddress,
    size: u32,
}

/// A packet read from or written to a ring. A read payload is padded to 8 bytes (VMBus
/// framing: the protocols over it carry their own lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: u16,
    pub flags: u16,
    pub transaction: u64,
    pub payload: Vec<u8>,
}

/// What a read or write did beyond moving data: whether to signal the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub bool);

impl Ring {
    /// The ring at `gpa` spanning `len` bytes (control page + data): page-aligned, at least two
    /// pages, at most [`MAX_RING_BYTES`], and wholly inside `mem` (so never in the MMIO window).
    pub fn new(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<Ring, RingError> {
        if gpa % CONTROL != 0
            || len % CONTROL != 0
            || !(2 * CONTROL..=MAX_RING_BYTES).contains(&len)
        {
            return Err(RingError::BadPlacement { gpa, len });
        }
        let end = gpa
            .checked_add(len - 1)
            .ok_or(RingError::OutsideRam { gpa, len })?;
        // Every page must be RAM (regions may be split; check each page).
        let mut page = gpa;
        while page <= end {
            if !mem.address_in_range(GuestAddress(page)) {
                return Err(RingError::OutsideRam { gpa, len });
            }
            page += CONTROL;
        }
        Ok(Ring {
            control: GuestAddress(gpa),
            size: (len - CONTROL) as u32,
        })
    }

    fn u32_at(&self, mem: &GuestMemoryMmap, off: u64) -> Result<u32, RingError> {
        mem.read_obj(self.control.unchecked_add(off))
            .map_err(|_| RingError::Memory)
    }

    fn set_u32(&self, mem: &GuestMemoryMmap, off: u64, v: u32) -> Result<(), RingError> {
        mem.write_obj(v, self.control.unchecked_add(off))
            .map_err(|_| RingError::Memory)
    }

    fn index(&self, mem: &GuestMemoryMmap, off: u64) -> Result<u32, RingError> {
        let index = self.u32_at(mem, off)?;
        if index >= self.size || index % 8 != 0 {
            return Err(RingError::BadIndex {
                index,
                size: self.size,
            });
        }
        Ok(index)
    }

    /// Bytes readable given write and read indices.
    fn used(&self, write: u32, read: u32) -> u32 {
        if write >= read {
            write - read
        } else {
            self.size - read + write
        }
    }

    /// Copies `buf.len()` bytes from data offset `at`, wrapping.
    fn copy_out(&self, mem: &GuestMemoryMmap, at: u32, buf: &mut [u8]) -> Result<(), RingError> {
        let data = self.control.unchecked_add(CONTROL);
        let first = buf.len().min((self.size - at) as usize);
        let (a, b) = buf.split_at_mut(first);
        mem.read_slice(a, data.unchecked_add(u64::from(at)))
            .map_err(|_| RingError::Memory)?;
        mem.read_slice(b, data).map_err(|_| RingError::Memory)
    }

    fn copy_in(&self, mem: &GuestMemoryMmap, at: u32, buf: &[u8]) -> Result<(), RingError> {
        let data = self.control.unchecked_add(CONTROL);
        let first = buf.len().min((self.size - at) as usize);
        let (a, b) = buf.split_at(first);
        mem.write_slice(a, data.unchecked_add(u64::from(at)))
            .map_err(|_| RingError::Memory)?;
        mem.write_slice(b, data).map_err(|_| RingError::Memory)
    }

    /// Sets the interrupt mask (the reader side's "don't signal me").
    pub fn set_interrupt_mask(&self, mem: &GuestMemoryMmap, masked: bool) -> Result<(), RingError> {
        self.set_u32(mem, 8, u32::from(masked))
    }

    /// Asks the reader to signal once `bytes` are free (0: no request); sets the feature bit.
    pub fn set_pending_send_size(
        &self,
        mem: &GuestMemoryMmap,
        bytes: u32,
    ) -> Result<(), RingError> {
        self.set_u32(mem, 64, 1)?;
        self.set_u32(mem, 12, bytes)
    }

    /// The next packet's total length (descriptor, payload, padding; not the trailer) without
    /// taking it, or `None` when the ring is empty. Checked as [`Self::read`] checks it.
    pub fn next_len(&self, mem: &GuestMemoryMmap) -> Result<Option<usize>, RingError> {
        let write = self.index(mem, 0)?;
        let read = self.index(mem, 4)?;
        let used = self.used(write, read);
        if used == 0 {
            return Ok(None);
        }
        self.header(mem, read, used).map(|h| Some(h.2))
    }

    /// True when a packet of total length `len` (see [`Self::next_len`]) fits now.
    pub fn fits(&self, mem: &GuestMemoryMmap, len: usize) -> Result<bool, RingError> {
        let write = self.index(mem, 0)?;
        let read = self.index(mem, 4)?;
        let free = self.size - self.used(write, read);
        Ok((len as u64 + TRAILER) < u64::from(free))
    }

    /// Descriptor at `read` with `used` bytes readable: (kind, data offset, total length,
    /// flags, transaction), checked.
    fn header(
        &self,
        mem: &GuestMemoryMmap,
        read: u32,
        used: u32,
    ) -> Result<(u16, usize, usize, u16, u64), RingError> {
        let mut desc = [0u8; DESC];
        if (used as usize) < DESC + TRAILER as usize {
            return Err(RingError::Oversized {
                len: DESC,
                avail: used,
            });
        }
        self.copy_out(mem, read, &mut desc)?;
        let kind = u16::from_le_bytes([desc[0], desc[1]]);
        let offset = usize::from(u16::from_le_bytes([desc[2], desc[3]])) * 8;
        let len = usize::from(u16::from_le_bytes([desc[4], desc[5]])) * 8;
        let flags = u16::from_le_bytes([desc[6], desc[7]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&desc[8..16]);
        if offset < DESC || offset > len {
            return Err(RingError::BadDescriptor { offset, len });
        }
        if len > MAX_PACKET || len as u64 + TRAILER > u64::from(used) {
            return Err(RingError::Oversized { len, avail: used });
        }
        Ok((kind, offset, len, flags, u64::from_le_bytes(t)))
    }

    /// Reads one packet, or `None` when the ring is empty; says whether to signal the writer.
    pub fn read(&self, mem: &GuestMemoryMmap) -> Result<Option<(Packet, Signal)>, RingError> {
        let write = self.index(mem, 0)?;
        let read = self.index(mem, 4)?;
        let used = self.used(write, read);
        if used == 0 {
            return Ok(None);
        }
        let (kind, offset, len, flags, transaction) = self.header(mem, read, used)?;
        let mut payload = vec![0u8; len - offset];
        self.copy_out(mem, (read + offset as u32) % self.size, &mut payload)?;
        let next = ((u64::from(read) + len as u64 + TRAILER) % u64::from(self.size)) as u32;
        let free_before = self.size - used;
        self.set_u32(mem, 4, next)?;
        let free_after = free_before + len as u32 + TRAILER as u32;
        let feature = self.u32_at(mem, 64)? & 1 != 0;
        let pending = self.u32_at(mem, 12)?;
        let signal = feature && pending != 0 && free_before < pending && free_after >= pending;
        Ok(Some((
            Packet {
                kind,
                flags,
                transaction,
                payload,
            },
            Signal(signal),
        )))
    }

    /// Writes one packet; `Ok(None)` when it does not fit now (the writer waits for space);
    /// says whether to signal the reader.
    pub fn write(&self, mem: &GuestMemoryMmap, p: &Packet) -> Result<Option<Signal>, RingError> {
        let body = DESC + p.payload.len();
        let len = body.div_ceil(8) * 8;
        if len > MAX_PACKET || len > usize::from(u16::MAX) * 8 {
            return Err(RingError::Oversized {
                len,
                avail: self.size,
            });
        }
        let write = self.index(mem, 0)?;
        let read = self.index(mem, 4)?;
        let free = self.size - self.used(write, read);
        let total = len as u64 + TRAILER;
        // Keep one 8-byte slot free so that full and empty differ.
        if total >= u64::from(free) {
            return Ok(None);
        }
        let mut buf = vec![0u8; len + TRAILER as usize];
        buf[0..2].copy_from_slice(&p.kind.to_le_bytes());
        buf[2..4].copy_from_slice(&((DESC / 8) as u16).to_le_bytes());
        buf[4..6].copy_from_slice(&((len / 8) as u16).to_le_bytes());
        buf[6..8].copy_from_slice(&p.flags.to_le_bytes());
        buf[8..16].copy_from_slice(&p.transaction.to_le_bytes());
        buf[DESC..body].copy_from_slice(&p.payload);
        buf[len..].copy_from_slice(&(u64::from(write) << 32).to_le_bytes());
        self.copy_in(mem, write, &buf)?;
        let next = ((u64::from(write) + total) % u64::from(self.size)) as u32;
        self.set_u32(mem, 0, next)?;
        // Signal when the reader has not masked and the ring was empty before this packet
        // (read index re-read after publishing, as the reader may have moved on).
        let masked = self.u32_at(mem, 8)? != 0;
        let was_empty = self.u32_at(mem, 4)? == write;
        Ok(Some(Signal(!masked && was_empty)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MEM: usize = 1 << 20;
    const RING: u64 = 0x10000;

    fn setup(data_pages: u64) -> (GuestMemoryMmap, Ring) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let r = Ring::new(&mem, RING, CONTROL * (1 + data_pages)).unwrap();
        (mem, r)
    }

    fn pkt(n: usize, t: u64) -> Packet {
        Packet {
            kind: 6,
            flags: 1,
            transaction: t,
            payload: (0..n).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn placement_is_checked() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        assert!(matches!(
            Ring::new(&mem, 0x1001, 0x2000),
            Err(RingError::BadPlacement { .. })
        ));
        assert!(matches!(
            Ring::new(&mem, 0x1000, 0x1000),
            Err(RingError::BadPlacement { .. })
        ));
        assert!(matches!(
            Ring::new(&mem, 0x1000, 0x2800),
            Err(RingError::BadPlacement { .. })
        ));
        assert!(matches!(
            Ring::new(&mem, 0, MAX_RING_BYTES + CONTROL),
            Err(RingError::BadPlacement { .. })
        ));
        // Past RAM's end, in the MMIO window, wrapping the address space.
        assert!(matches!(
            Ring::new(&mem, MEM as u64 - 0x1000, 0x2000),
            Err(RingError::OutsideRam { .. })
        ));
        assert!(matches!(
            Ring::new(&mem, 0xd000_0000, 0x2000),
            Err(RingError::OutsideRam { .. })
        ));
        assert!(matches!(
            Ring::new(&mem, u64::MAX - 0xfff, 0x2000),
            Err(RingError::OutsideRam { .. })
        ));
    }

    #[test]
    fn packets_round_trip_and_wrap() {
        let (mem, r) = setup(1);
        assert_eq!(r.read(&mem).unwrap(), None);
        // 4096-byte data area: packets of 16 + 100 -> 120 bytes + 8 trailer = 128 each.
        // Sizes that do not divide the area, so packets and trailers wrap mid-way.
        for round in 0..100u64 {
            let p = pkt(100 + (round % 7) as usize * 3, round);
            assert!(r.write(&mem, &p).unwrap().is_some(), "round {round}");
            let (got, _) = r.read(&mem).unwrap().unwrap();
            // The payload comes back padded to 8 bytes (VMBus framing: protocols carry their
            // own lengths).
            assert_eq!(
                got.payload.len(),
                (16 + p.payload.len()).div_ceil(8) * 8 - 16
            );
            assert_eq!(&got.payload[..p.payload.len()], &p.payload[..]);
            assert_eq!((got.kind, got.flags, got.transaction), (6, 1, round));
        }
        let (mem, r) = setup(1);
        // Full: 31 packets of 128 fit (one slot stays free), the 32nd waits.
        for i in 0..31 {
            assert!(r.write(&mem, &pkt(100, i)).unwrap().is_some(), "{i}");
        }
        assert_eq!(r.write(&mem, &pkt(100, 99)).unwrap(), None);
        assert_eq!(r.read(&mem).unwrap().unwrap().0.transaction, 0);
    }

    #[test]
    fn writer_signals_only_an_unmasked_empty_ring() {
        let (mem, r) = setup(2);
        assert_eq!(r.write(&mem, &pkt(8, 1)).unwrap(), Some(Signal(true)));
        assert_eq!(
            r.write(&mem, &pkt(8, 2)).unwrap(),
            Some(Signal(false)),
            "not empty"
        );
        r.read(&mem).unwrap();
        r.read(&mem).unwrap();
        r.set_interrupt_mask(&mem, true).unwrap();
        assert_eq!(
            r.write(&mem, &pkt(8, 3)).unwrap(),
            Some(Signal(false)),
            "masked"
        );
    }

    #[test]
    fn reader_signals_when_pending_send_size_is_crossed() {
        let (mem, r) = setup(1);
        // Fill: 31 packets of 128 bytes -> 128 + 8 ... free = 4096 - 31*128 = 128.
        for i in 0..31 {
            r.write(&mem, &pkt(100, i)).unwrap().unwrap();
        }
        r.set_pending_send_size(&mem, 300).unwrap();
        // 128 free -> 256: not yet; -> 384: crossed; -> 512: already past.
        assert_eq!(r.read(&mem).unwrap().unwrap().1, Signal(false));
        assert_eq!(r.read(&mem).unwrap().unwrap().1, Signal(true));
        assert_eq!(r.read(&mem).unwrap().unwrap().1, Signal(false));
    }

    #[test]
    fn hostile_indices_and_descriptors() {
        let (mem, r) = setup(1);
        let ctl = |off: u64, v: u32| mem.write_obj(v, GuestAddress(RING + off)).unwrap();
        // Index past the data area, unaligned.
        ctl(0, 4096);
        assert!(matches!(r.read(&mem), Err(RingError::BadIndex { .. })));
        assert!(matches!(
            r.write(&mem, &pkt(1, 0)),
            Err(RingError::BadIndex { .. })
        ));
        ctl(0, 12);
        assert!(matches!(r.read(&mem), Err(RingError::BadIndex { .. })));
        // A descriptor whose length exceeds what was written.
        ctl(0, 0);
        ctl(4, 0);
        r.write(&mem, &pkt(8, 0)).unwrap().unwrap();
        let data = RING + CONTROL;
        mem.write_obj(200u16, GuestAddress(data + 4)).unwrap(); // len8 = 1600 bytes
        assert!(matches!(r.read(&mem), Err(RingError::Oversized { .. })));
        // Data offset below the descriptor, or past the length.
        mem.write_obj(1u16, GuestAddress(data + 2)).unwrap();
        mem.write_obj(3u16, GuestAddress(data + 4)).unwrap();
        assert!(matches!(r.read(&mem), Err(RingError::BadDescriptor { .. })));
        mem.write_obj(4u16, GuestAddress(data + 2)).unwrap();
        assert!(matches!(r.read(&mem), Err(RingError::BadDescriptor { .. })));
        // Fewer bytes than a descriptor.
        ctl(4, 0);
        ctl(0, 8);
        assert!(matches!(r.read(&mem), Err(RingError::Oversized { .. })));
        // A packet larger than hv handles is refused before any write.
        ctl(0, 0);
        assert!(matches!(
            r.write(&mem, &pkt(MAX_PACKET, 0)),
            Err(RingError::Oversized { .. })
        ));
    }
}
