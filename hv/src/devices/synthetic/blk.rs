//! virtio-blk: IN, OUT, FLUSH and GET_ID over the shared [`Disk`](crate::devices::disk::Disk).
//! Requests are served in ring order on the worker; many may be in flight (the driver can fill
//! the queue before the worker runs), and a completion is on the used ring only after the disk
//! write returned (FLUSH adds fdatasync).

use vm_memory::GuestMemoryMmap;

use super::chain::{self, Chain, ChainError};
use super::{Served, VirtioBackend};
use crate::devices::NoteSink;
use crate::devices::disk::{SECTOR_SIZE, SharedDisk};

/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// VIRTIO_BLK_F_FLUSH.
pub const F_FLUSH: u64 = 1 << 9;
/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
/// Status bytes.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// The ID string GET_ID returns (20 bytes, NUL-padded).
pub const ID: &[u8] = b"hvlab-virtio-blk";
/// Largest data transfer of one request.
pub const MAX_REQUEST: u64 = 4 << 20;

const HEADER: u64 = 16;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// The virtio-blk backend.
#[derive(Debug)]
pub struct Blk {
    disk: SharedDisk,
    notes: NoteSink,
    pub stats: BlkStats,
    scratch: Vec<u8>,
}

impl Blk {
    /// A block device over `disk`.
    pub fn new(disk: SharedDisk, notes: NoteSink) -> Blk {
        Blk {
            disk,
            notes,
            stats: BlkStats::default(),
            scratch: Vec::new(),
        }
    }

    fn io_error(&mut self, why: String) -> u8 {
        self.stats.errors += 1;
        self.notes.note(format!("virtio-blk: IOERR: {why}"));
        S_IOERR
    }

    /// Does the request; returns (status, data bytes written to the guest).
    fn request(
        &mut self,
        mem: &GuestMemoryMmap,
        c: &Chain,
        kind: u32,
        sector: u64,
        data_in: u64,
    ) -> Result<(u8, u64), ChainError> {
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let offset = sector.checked_mul(SECTOR_SIZE);
        match kind {
            T_IN => {
                if data_in % SECTOR_SIZE != 0 || data_in > MAX_REQUEST {
                    drop(disk);
                    return Ok((self.io_error(format!("read of {data_in} bytes")), 0));
                }
                self.scratch.resize(data_in as usize, 0);
                let r = offset.map(|o| disk.read_at(o, &mut self.scratch));
                drop(disk);
                match r {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return Ok((self.io_error(e.to_string()), 0)),
                    None => return Ok((self.io_error("sector overflows".into()), 0)),
                }
                // Writes the data and leaves the last writable byte for the status.
                let mut data = std::mem::take(&mut self.scratch);
                let n = chain::write_writable(mem, c, &data)?;
                data.clear();
                self.scratch = data;
                self.stats.reads += 1;
                self.stats.bytes += n as u64;
                Ok((S_OK, n as u64))
            }
            T_OUT => {
                let mut data = std::mem::take(&mut self.scratch);
                data.clear();
                chain::read_readable(mem, c, HEADER, &mut data, MAX_REQUEST + 1)?;
                let len = data.len() as u64;
                let status = if len % SECTOR_SIZE != 0 || len > MAX_REQUEST {
                    drop(disk);
                    self.io_error(format!("write of {len} bytes"))
                } else {
                    let r = offset.map(|o| disk.write_at(o, &data));
                    drop(disk);
                    match r {
                        Some(Ok(())) => {
                            self.stats.writes += 1;
                            self.stats.bytes += len;
                            S_OK
                        }
                        Some(Err(e)) => self.io_error(e.to_string()),
                        None => self.io_error("sector overflows".into()),
                    }
                };
                self.scratch = data;
                Ok((status, 0))
            }
            T_FLUSH => {
                let r = disk.flush();
                drop(disk);
                self.stats.flushes += 1;
                Ok(match r {
                    Ok(()) => (S_OK, 0),
                    Err(e) => (self.io_error(format!("flush: {e}")), 0),
                })
            }
            T_GET_ID => {
                drop(disk);
                let mut id = [0u8; 20];
                id[..ID.len()].copy_from_slice(ID);
                let n = (data_in as usize).min(20);
                let n = chain::write_writable(mem, c, &id[..n])?;
                Ok((S_OK, n as u64))
            }
            _ => Ok((S_UNSUPP, 0)),
        }
    }
}

impl VirtioBackend for Blk {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_FLUSH
    }

    fn queues(&self) -> usize {
        1
    }

    fn config(&self) -> Vec<u8> {
        let sectors = self
            .disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sectors();
        let mut c = sectors.to_le_bytes().to_vec(); // capacity
        c.resize(0x40, 0);
        c
    }

    fn serve(&mut self, _queue: usize, mem: &GuestMemoryMmap, c: &Chain) -> Served {
        // Header: le32 type, le32 reserved, le64 sector; then data; then one status byte,
        // the last writable byte of the chain.
        let mut hdr = Vec::with_capacity(16);
        if let Err(e) = chain::read_readable(mem, c, 0, &mut hdr, HEADER) {
            return Served::Broken(e);
        }
        let writable = c.writable_len();
        if hdr.len() < HEADER as usize || writable == 0 {
            // Not a request a driver could have meant; the driver is broken.
            self.stats.errors += 1;
            self.notes
                .note("virtio-blk: request without header or status byte".into());
            return Served::Used(0);
        }
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(s);
        let data_in = writable - 1;
        let (status, written) = match self.request(mem, c, kind, sector, data_in) {
            Ok(r) => r,
            Err(e) => return Served::Broken(e),
        };
        // The status byte is the last writable byte.
        let mut last = None;
        let mut seen = 0u64;
        for seg in c.segments.iter().filter(|s| s.write) {
            seen += u64::from(seg.len);
            if seg.len > 0 && seen == writable {
                last = Some(vm_memory::GuestAddress(seg.addr.0 + u64::from(seg.len) - 1));
            }
        }
        if let Some(addr) = last {
            use vm_memory::Bytes;
            if mem.write_obj(status, addr).is_err() {
                return Served::Broken(ChainError::OutOfMemory {
                    addr: addr.0,
                    len: 1,
                });
            }
        }
        let used = if kind == T_IN || kind == T_GET_ID {
            written + 1
        } else {
            1
        };
        Served::Used(used.min(u64::from(u32::MAX)) as u32)
    }

    fn stats(&self) -> String {
        let s = self.stats;
        format!(
            "reads={} writes={} flushes={} bytes={} errors={}",
            s.reads, s.writes, s.flushes, s.bytes, s.errors
        )
    }
}
