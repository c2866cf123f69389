//! Descriptor-chain validation. The guest owns the rings, so every chain is checked in full
//! before the device touches a byte of it: index range, loops, length against the queue size,
//! address overflow, and guest-memory bounds. Any failure is a ring the guest corrupted, which
//! puts the device into DEVICE_NEEDS_RESET (the caller's job); nothing here panics or reads
//! outside guest memory (every read goes through bounds-checked `GuestMemory` accessors).
//!
//! virtio-queue's own `DescriptorChain` iterator stops silently on the same conditions (it
//! cannot tell a loop from a long chain or a bad index from the end); hv needs to name the
//! fault, so it walks the descriptor table itself, reading the same `Descriptor` layout.

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// VIRTQ_DESC_F_NEXT.
pub const F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const F_WRITE: u16 = 2;
/// VIRTQ_DESC_F_INDIRECT.
pub const F_INDIRECT: u16 = 4;

/// How a chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChainError {
    /// A head or `next` index at or beyond the queue (or indirect table) size.
    #[error("descriptor index {index} out of range (table size {size})")]
    IndexOutOfRange { index: u16, size: u16 },
    /// The chain visits a descriptor twice.
    #[error("descriptor chain loops back to index {index}")]
    Loop { index: u16 },
    /// More descriptors than the queue size (possible only through an indirect table).
    #[error("descriptor chain longer than the queue size {size}")]
    TooLong { size: u16 },
    /// A descriptor whose address plus length wraps, or a chain whose total length exceeds
    /// 2^32 bytes.
    #[error("descriptor length overflows (address {addr:#x}, length {len:#x})")]
    LengthOverflow { addr: u64, len: u32 },
    /// A buffer (or the descriptor table itself) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { addr: u64, len: u64 },
    /// An indirect descriptor where none may be (inside an indirect table, not negotiated, or
    /// with a table size that is not a whole number of descriptors).
    #[error("invalid indirect descriptor")]
    BadIndirect,
}

/// One validated buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A validated chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub segments: Vec<Segment>,
}

impl Chain {
    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.write)
            .map(|s| u64::from(s.len))
            .sum()
    }
}

const DESC_SIZE: u64 = 16;

fn read_desc(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    index: u16,
) -> Result<Descriptor, ChainError> {
    if index >= size {
        return Err(ChainError::IndexOutOfRange { index, size });
    }
    let addr =
        table
            .0
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::OutOfMemory {
                addr: table.0,
                len: DESC_SIZE,
            })?;
    mem.read_obj::<Descriptor>(GuestAddress(addr))
        .map_err(|_| ChainError::OutOfMemory {
            addr,
            len: DESC_SIZE,
        })
}

/// Walks the chain starting at `head` in the descriptor table at `table` of a queue of
/// `queue_size` entries. `indirect` says whether VIRTIO_F_INDIRECT_DESC was negotiated.
pub fn walk(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    queue_size: u16,
    head: u16,
    indirect: bool,
) -> Result<Chain, ChainError> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut total: u32 = 0;
    // Current table: the queue's, or an indirect one.
    let (mut tbl, mut tbl_size, mut in_indirect) = (table, queue_size, false);
    // A table of N descriptors yields at most N distinct ones, so a walk that visits more
    // has looped. Counting needs no per-request allocation (Linux's vring uses this bound).
    let mut visited: u32 = 0;
    let mut index = head;
    loop {
        let d = read_desc(mem, tbl, tbl_size, index)?;
        visited += 1;
        if visited > u32::from(tbl_size) {
            return Err(ChainError::Loop { index });
        }
        if d.flags() & F_INDIRECT != 0 {
            // An indirect descriptor must be the only one in the chain it appears in.
            if !indirect || in_indirect || d.flags() & F_NEXT != 0 || !segments.is_empty() {
                return Err(ChainError::BadIndirect);
            }
            if d.len() == 0 || u64::from(d.len()) % DESC_SIZE != 0 {
                return Err(ChainError::BadIndirect);
            }
            let entries = u64::from(d.len()) / DESC_SIZE;
            if entries > u64::from(queue_size) {
                return Err(ChainError::TooLong { size: queue_size });
            }
            let base = d.addr().0;
            if base.checked_add(u64::from(d.len())).is_none() {
                return Err(ChainError::LengthOverflow {
                    addr: base,
                    len: d.len(),
                });
            }
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(ChainError::OutOfMemory {
                    addr: base,
                    len: u64::from(d.len()),
                });
            }
            tbl = d.addr();
            tbl_size = entries as u16;
            in_indirect = true;
            visited = 0;
            index = 0;
            continue;
        }
        if segments.len() >= usize::from(queue_size) {
            return Err(ChainError::TooLong { size: queue_size });
        }
        let addr = d.addr().0;
        let overflow = ChainError::LengthOverflow { addr, len: d.len() };
        if addr.checked_add(u64::from(d.len())).is_none() {
            return Err(overflow);
        }
        total = total.checked_add(d.len()).ok_or(overflow)?;
        segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
            write: d.flags() & F_WRITE != 0,
        });
        if d.flags() & F_NEXT == 0 {
            break;
        }
        index = d.next();
    }
    // Bounds last, so that overflow and loops are named as such.
    for s in &segments {
        if s.len > 0 && !mem.check_range(s.addr, s.len as usize) {
            return Err(ChainError::OutOfMemory {
                addr: s.addr.0,
                len: u64::from(s.len),
            });
        }
    }
    Ok(Chain { head, segments })
}

/// Reads the readable bytes of a chain (in order) into `out`, up to `limit` bytes.
pub fn read_readable(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    skip: u64,
    out: &mut Vec<u8>,
    limit: u64,
) -> Result<(), ChainError> {
    let mut skip = skip;
    for s in chain.segments.iter().filter(|s| !s.write) {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(limit.saturating_sub(out.len() as u64));
        if take == 0 {
            break;
        }
        let start = out.len();
        out.resize(start + take as usize, 0);
        let addr = GuestAddress(s.addr.0 + skip);
        mem.read_slice(&mut out[start..], addr)
            .map_err(|_| ChainError::OutOfMemory {
                addr: addr.0,
                len: take,
            })?;
        skip = 0;
    }
    Ok(())
}

/// Writes `data` into the chain's writable buffers, in order; returns bytes written.
pub fn write_writable(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for s in chain.segments.iter().filter(|s| s.write) {
        if done == data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], s.addr)
            .map_err(|_| ChainError::OutOfMemory {
                addr: s.addr.0,
                len: n as u64,
            })?;
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const TABLE: u64 = 0x1000;
    const MEM: usize = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        m.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(table + u64::from(i) * 16),
        )
        .unwrap();
    }

    #[test]
    fn valid_chain_yields_segments_in_order() {
        let m = mem();
        put(&m, TABLE, 3, 0x2000, 16, F_NEXT, 5);
        put(&m, TABLE, 5, 0x3000, 4096, F_NEXT | F_WRITE, 0);
        put(&m, TABLE, 0, 0x4000, 1, F_WRITE, 0);
        let c = walk(&m, GuestAddress(TABLE), 8, 3, false).unwrap();
        assert_eq!(c.head, 3);
        assert_eq!(c.segments.len(), 3);
        assert_eq!(c.writable_len(), 4097);
        assert!(!c.segments[0].write);
    }

    #[test]
    fn head_index_out_of_range_is_refused() {
        let m = mem();
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 8, false),
            Err(ChainError::IndexOutOfRange { index: 8, size: 8 })
        );
    }

    #[test]
    fn next_index_out_of_range_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 300);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::IndexOutOfRange {
                index: 300,
                size: 8
            })
        );
    }

    #[test]
    fn loop_in_chain_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x2000, 16, F_NEXT, 1);
        put(&m, TABLE, 1, 0x2000, 16, F_NEXT, 0);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::Loop { index: 0 })
        );
        put(&m, TABLE, 2, 0x2000, 16, F_NEXT, 2);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 2, false),
            Err(ChainError::Loop { index: 2 })
        );
    }

    #[test]
    fn chain_longer_than_queue_is_refused() {
        let m = mem();
        // An indirect table of 9 descriptors in a queue of 8.
        let ind = 0x8000;
        for i in 0..9u16 {
            put(&m, ind, i, 0x2000, 16, F_NEXT, i + 1);
        }
        put(&m, TABLE, 0, ind, 9 * 16, F_INDIRECT, 0);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true),
            Err(ChainError::TooLong { size: 8 })
        );
        // Without the feature, the indirect flag itself is the fault.
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::BadIndirect)
        );
        // A well-formed indirect chain within the limit walks.
        put(&m, ind, 3, 0x2000, 16, F_WRITE, 0);
        put(&m, TABLE, 0, ind, 4 * 16, F_INDIRECT, 0);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true)
                .unwrap()
                .segments
                .len(),
            4
        );
    }

    #[test]
    fn address_outside_guest_memory_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, MEM as u64 - 8, 16, 0, 0);
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::OutOfMemory {
                addr: MEM as u64 - 8,
                len: 16
            })
        );
        put(&m, TABLE, 0, 0xd000_0000, 4, 0, 0);
        assert!(matches!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::OutOfMemory { .. })
        ));
        // The descriptor table itself outside memory.
        assert!(matches!(
            walk(&m, GuestAddress(MEM as u64), 8, 0, false),
            Err(ChainError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn length_overflow_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, u64::MAX - 0xff, 0x1000, 0, 0);
        assert!(matches!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::LengthOverflow { .. })
        ));
        // Total chain length beyond 2^32.
        put(&m, TABLE, 0, 0x2000, 0x9000_0000, F_NEXT, 1);
        put(&m, TABLE, 1, 0x2000, 0x9000_0000, 0, 0);
        assert!(matches!(
            walk(&m, GuestAddress(TABLE), 8, 0, false),
            Err(ChainError::LengthOverflow { .. })
        ));
    }

    #[test]
    fn readable_and_writable_helpers_follow_segments() {
        let m = mem();
        m.write_slice(b"abcd", GuestAddress(0x2000)).unwrap();
        m.write_slice(b"efgh", GuestAddress(0x3000)).unwrap();
        put(&m, TABLE, 0, 0x2000, 4, F_NEXT, 1);
        put(&m, TABLE, 1, 0x3000, 4, F_NEXT, 2);
        put(&m, TABLE, 2, 0x4000, 2, F_NEXT | F_WRITE, 3);
        put(&m, TABLE, 3, 0x5000, 2, F_WRITE, 0);
        let c = walk(&m, GuestAddress(TABLE), 8, 0, false).unwrap();
        let mut v = Vec::new();
        read_readable(&m, &c, 2, &mut v, 100).unwrap();
        assert_eq!(v, b"cdefgh");
        assert_eq!(write_writable(&m, &c, b"xyz").unwrap(), 3);
        let mut b = [0u8; 2];
        m.read_slice(&mut b, GuestAddress(0x5000)).unwrap();
        assert_eq!(&b, b"z\0");
    }
}
