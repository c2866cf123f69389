//! The block device over a VMBus-style channel (`hvlab_protocol::vmbus::blk` has the request
//! and completion layout): INFO, READ, WRITE and FLUSH over the shared
//! [`Disk`](crate::devices::disk::Disk), one completion per request, in ring order.
//!
//! Durability is write-back, as virtio-blk's with FLUSH acked: a WRITE completes once the disk
//! has the data, FLUSH completes after fdatasync. A read-only disk says so in INFO and fails
//! WRITE with IOERR. Every field of a request is the guest's: a buffer outside RAM, a transfer
//! of 0 or more than `MAX_TRANSFER` bytes, or a short request is BAD_REQUEST for that request
//! alone, a failed disk operation (an injected fault included) IOERR; the channel goes on.

use hvlab_protocol::vmbus::{self as proto, blk as wire};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ChannelDevice;
use super::ring::Packet;
use crate::devices::NoteSink;
use crate::devices::disk::{DiskError, SECTOR_SIZE, SharedDisk};

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes: u64,
    /// Requests answered with a status other than OK.
    pub errors: u64,
}

/// The block device of one channel.
#[derive(Debug)]
pub struct Blk {
    disk: SharedDisk,
    notes: NoteSink,
    stats: Stats,
    scratch: Vec<u8>,
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from(u32_at(p, at)) | u64::from(u32_at(p, at + 4)) << 32
}

/// A completion's payload.
fn completion(status: u32, bytes: u32, value: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(wire::COMPLETION_BYTES);
    c.extend_from_slice(&status.to_le_bytes());
    c.extend_from_slice(&bytes.to_le_bytes());
    c.extend_from_slice(&value.to_le_bytes());
    c
}

impl Blk {
    /// A block device over `disk`; remarks (errors a guest caused) go to `notes`.
    pub fn new(disk: SharedDisk, notes: NoteSink) -> Blk {
        Blk {
            disk,
            notes,
            stats: Stats::default(),
            scratch: Vec::new(),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Stats {
        self.stats
    }

    fn failed(&mut self, status: u32, why: impl FnOnce() -> String) -> (u32, u32, u64) {
        self.stats.errors += 1;
        self.notes.note(format!("vmbus-blk: {}", why()));
        (status, 0, 0)
    }

    fn bad_buffer(&mut self, what: &str, gpa: u64, n: usize) -> (u32, u32, u64) {
        self.failed(wire::STATUS_BAD_REQUEST, || {
            format!("{what} buffer {gpa:#x}+{n} not in guest RAM")
        })
    }

    fn disk_error(&mut self, e: DiskError) -> (u32, u32, u64) {
        self.failed(wire::STATUS_IOERR, || format!("IOERR: {e}"))
    }

    /// Does one request: (status, bytes, value).
    fn request(&mut self, mem: &GuestMemoryMmap, payload: &[u8]) -> (u32, u32, u64) {
        if payload.len() < wire::REQUEST_BYTES {
            let n = payload.len();
            return self.failed(wire::STATUS_BAD_REQUEST, || {
                format!("request of {n} bytes, expected {}", wire::REQUEST_BYTES)
            });
        }
        let (op, sectors, lba, gpa) = (
            u32_at(payload, 0),
            u32_at(payload, 4),
            u64_at(payload, 8),
            u64_at(payload, 16),
        );
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        match op {
            wire::OP_INFO => (wire::STATUS_OK, u32::from(disk.readonly()), disk.sectors()),
            wire::OP_FLUSH => {
                let r = disk.flush();
                drop(disk);
                self.stats.flushes += 1;
                match r {
                    Ok(()) => (wire::STATUS_OK, 0, 0),
                    Err(e) => self.disk_error(e),
                }
            }
            wire::OP_READ | wire::OP_WRITE => {
                drop(disk);
                let bytes = u64::from(sectors) * SECTOR_SIZE;
                if bytes == 0 || bytes > u64::from(wire::MAX_TRANSFER) {
                    return self.failed(wire::STATUS_BAD_REQUEST, || {
                        format!("transfer of {sectors} sectors")
                    });
                }
                let Some(offset) = lba.checked_mul(SECTOR_SIZE) else {
                    return self.failed(wire::STATUS_IOERR, || format!("lba {lba} overflows"));
                };
                let mut data = std::mem::take(&mut self.scratch);
                data.resize(bytes as usize, 0);
                let r = if op == wire::OP_READ {
                    self.read(mem, offset, gpa, &mut data)
                } else {
                    self.write(mem, offset, gpa, &mut data)
                };
                self.scratch = data;
                r
            }
            _ => {
                drop(disk);
                self.failed(wire::STATUS_UNSUPPORTED, || format!("unknown op {op}"))
            }
        }
    }

    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        gpa: u64,
        data: &mut [u8],
    ) -> (u32, u32, u64) {
        let r = self
            .disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_at(offset, data);
        if let Err(e) = r {
            return self.disk_error(e);
        }
        // The whole buffer or nothing: a range that leaves RAM is refused before any byte lands.
        if !in_ram(mem, gpa, data.len()) || mem.write_slice(data, GuestAddress(gpa)).is_err() {
            return self.bad_buffer("read", gpa, data.len());
        }
        self.stats.reads += 1;
        self.stats.bytes += data.len() as u64;
        (wire::STATUS_OK, data.len() as u32, 0)
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        gpa: u64,
        data: &mut [u8],
    ) -> (u32, u32, u64) {
        if !in_ram(mem, gpa, data.len()) || mem.read_slice(data, GuestAddress(gpa)).is_err() {
            return self.bad_buffer("write", gpa, data.len());
        }
        let r = self
            .disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_at(offset, data);
        match r {
            Ok(()) => {
                self.stats.writes += 1;
                self.stats.bytes += data.len() as u64;
                (wire::STATUS_OK, data.len() as u32, 0)
            }
            Err(e) => self.disk_error(e),
        }
    }
}

/// True when `gpa..gpa+len` is guest RAM and `len > 0`. Checking both ends is enough: a
/// transfer is at most `MAX_TRANSFER` bytes, far less than the MMIO window between the RAM
/// below and above it, so a range with both ends in RAM has no hole in it.
fn in_ram(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> bool {
    use vm_memory::GuestMemoryBackend;
    let Some(last) = (len as u64).checked_sub(1).and_then(|l| gpa.checked_add(l)) else {
        return false;
    };
    mem.address_in_range(GuestAddress(gpa)) && mem.address_in_range(GuestAddress(last))
}

impl ChannelDevice for Blk {
    fn class(&self) -> u32 {
        proto::DEVICE_BLOCK
    }

    fn name(&self) -> &'static str {
        "vmbus-blk"
    }

    fn max_reply(&self, _: usize) -> usize {
        wire::COMPLETION_BYTES
    }

    fn on_packet(&mut self, mem: &GuestMemoryMmap, p: &Packet) -> Option<Packet> {
        let (status, bytes, value) = if p.kind == proto::PACKET_DATA {
            self.request(mem, &p.payload)
        } else {
            let kind = p.kind;
            self.failed(wire::STATUS_UNSUPPORTED, || format!("packet kind {kind}"))
        };
        // A request that asked for no completion gets none (the guest chose not to know).
        (p.flags & proto::FLAG_COMPLETION_REQUESTED != 0).then(|| Packet {
            kind: proto::PACKET_COMPLETION,
            flags: 0,
            transaction: p.transaction,
            payload: completion(status, bytes, value),
        })
    }

    fn stats(&self) -> String {
        let s = self.stats;
        format!(
            "reads={} writes={} flushes={} bytes={} errors={}",
            s.reads, s.writes, s.flushes, s.bytes, s.errors
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::disk::Disk;
    use std::sync::{Arc, Mutex};

    const MEM: usize = 1 << 20;

    fn request(op: u32, sectors: u32, lba: u64, gpa: u64) -> Packet {
        let mut p = Vec::new();
        p.extend_from_slice(&op.to_le_bytes());
        p.extend_from_slice(&sectors.to_le_bytes());
        p.extend_from_slice(&lba.to_le_bytes());
        p.extend_from_slice(&gpa.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        Packet {
            kind: proto::PACKET_DATA,
            flags: proto::FLAG_COMPLETION_REQUESTED,
            transaction: 77,
            payload: p,
        }
    }

    fn status(reply: &Option<Packet>) -> (u32, u32, u64) {
        let r = reply.as_ref().unwrap();
        assert_eq!((r.kind, r.transaction), (proto::PACKET_COMPLETION, 77));
        (
            u32_at(&r.payload, 0),
            u32_at(&r.payload, 4),
            u64_at(&r.payload, 8),
        )
    }

    fn setup() -> (GuestMemoryMmap, Blk) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let disk = Arc::new(Mutex::new(Disk::memory(1 << 20).unwrap()));
        (mem, Blk::new(disk, NoteSink::default()))
    }

    #[test]
    fn write_read_flush_info() {
        let (mem, mut b) = setup();
        assert_eq!(
            status(&b.on_packet(&mem, &request(wire::OP_INFO, 0, 0, 0))),
            (wire::STATUS_OK, 0, 2048)
        );
        mem.write_slice(&[0xa5; 1024], GuestAddress(0x4000))
            .unwrap();
        let w = b.on_packet(&mem, &request(wire::OP_WRITE, 2, 10, 0x4000));
        assert_eq!(status(&w), (wire::STATUS_OK, 1024, 0));
        let r = b.on_packet(&mem, &request(wire::OP_READ, 2, 10, 0x8000));
        assert_eq!(status(&r), (wire::STATUS_OK, 1024, 0));
        let mut back = [0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, [0xa5; 1024]);
        let f = b.on_packet(&mem, &request(wire::OP_FLUSH, 0, 0, 0));
        assert_eq!(status(&f).0, wire::STATUS_OK);
        assert_eq!(
            b.counters(),
            Stats {
                reads: 1,
                writes: 1,
                flushes: 1,
                bytes: 2048,
                errors: 0
            }
        );
    }

    #[test]
    fn hostile_requests_fail_alone() {
        let (mem, mut b) = setup();
        let bad = |b: &mut Blk, p: Packet| status(&b.on_packet(&mem, &p)).0;
        // Buffers past RAM, straddling its end, wrapping, in the MMIO window.
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, 1, 0, MEM as u64)),
            wire::STATUS_BAD_REQUEST
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_WRITE, 2, 0, MEM as u64 - 512)),
            wire::STATUS_BAD_REQUEST
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, 1, 0, u64::MAX - 100)),
            wire::STATUS_BAD_REQUEST
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, 1, 0, 0xd000_0000)),
            wire::STATUS_BAD_REQUEST
        );
        // Zero, oversized, past the disk's end, overflowing LBAs; unknown ops; short requests.
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, 0, 0, 0x1000)),
            wire::STATUS_BAD_REQUEST
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, u32::MAX, 0, 0x1000)),
            wire::STATUS_BAD_REQUEST
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_READ, 1, 4096, 0x1000)),
            wire::STATUS_IOERR
        );
        assert_eq!(
            bad(&mut b, request(wire::OP_WRITE, 1, u64::MAX, 0x1000)),
            wire::STATUS_IOERR
        );
        assert_eq!(
            bad(&mut b, request(99, 1, 0, 0x1000)),
            wire::STATUS_UNSUPPORTED
        );
        let mut short = request(wire::OP_READ, 1, 0, 0x1000);
        short.payload.truncate(8);
        assert_eq!(bad(&mut b, short), wire::STATUS_BAD_REQUEST);
        assert_eq!(b.counters().errors, 10);
        // Nothing asked for a completion: none comes, but the request is still done.
        let mut quiet = request(wire::OP_INFO, 0, 0, 0);
        quiet.flags = 0;
        assert_eq!(b.on_packet(&mem, &quiet), None);
        // The device still works.
        let r = b.on_packet(&mem, &request(wire::OP_READ, 1, 0, 0x1000));
        assert_eq!(status(&r).0, wire::STATUS_OK);
    }
}
