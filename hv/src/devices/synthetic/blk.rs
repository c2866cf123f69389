//! virtio-blk: IN, OUT, FLUSH and GET_ID over the shared [`Disk`](crate::devices::disk::Disk).
//! Requests are served in ring order on the worker; many may be in flight (the driver can fill
//! the queue before the worker runs), and a completion is on the used ring only after the disk
//! write returned.
//!
//! Durability (virtio 1.2 §5.2.6): the device offers VIRTIO_BLK_F_FLUSH. When the driver acks
//! it, writes are write-back and T_FLUSH completes only after fdatasync returned; when it does
//! not, every write is made stable (fdatasync) before it completes. A read-only disk offers
//! VIRTIO_BLK_F_RO and fails writes with IOERR. A failed disk operation (an injected fault
//! included) is IOERR for that request alone; the device goes on.

use vm_memory::GuestMemoryMmap;

use super::chain::{self, Chain, ChainError};
use super::{Served, VirtioBackend};
use crate::devices::NoteSink;
use crate::devices::disk::{DiskError, SECTOR_SIZE, SharedDisk};

/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// VIRTIO_BLK_F_RO: the device is read-only.
pub const F_RO: u64 = 1 << 5;
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
    /// Requests completed with IOERR (malformed ones included).
    pub errors: u64,
    /// Of those, requests whose disk operation failed (injected faults included).
    pub disk_errors: u64,
    /// Writes refused because the disk is read-only.
    pub readonly_writes: u64,
    /// Writes made stable one by one because the driver did not ack FLUSH.
    pub write_through: u64,
}

/// The virtio-blk backend.
#[derive(Debug)]
pub struct Blk {
    disk: SharedDisk,
    notes: NoteSink,
    pub stats: BlkStats,
    scratch: Vec<u8>,
    /// The driver acked VIRTIO_BLK_F_FLUSH (else writes are write-through).
    flush_acked: bool,
    /// The disk refuses writes (offer VIRTIO_BLK_F_RO); fixed at open.
    readonly: bool,
}

impl Blk {
    /// A block device over `disk`.
    pub fn new(disk: SharedDisk, notes: NoteSink) -> Blk {
        let readonly = disk.lock().unwrap_or_else(|p| p.into_inner()).readonly();
        Blk {
            readonly,
            disk,
            notes,
            stats: BlkStats::default(),
            scratch: Vec::new(),
            flush_acked: false,
        }
    }

    fn disk_error(&mut self, e: DiskError) -> u8 {
        if matches!(e, DiskError::ReadOnly) {
            self.stats.readonly_writes += 1;
        } else {
            self.stats.disk_errors += 1;
        }
        self.io_error(e.to_string())
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
                    Some(Err(e)) => return Ok((self.disk_error(e), 0)),
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
                    let write_through = !self.flush_acked;
                    let r = offset.map(|o| -> Result<(), DiskError> {
                        disk.write_at(o, &data)?;
                        if write_through {
                            disk.sync()?;
                        }
                        Ok(())
                    });
                    drop(disk);
                    match r {
                        Some(Ok(())) => {
                            self.stats.writes += 1;
                            self.stats.bytes += len;
                            self.stats.write_through += u64::from(write_through);
                            S_OK
                        }
                        Some(Err(e)) => self.disk_error(e),
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
                    Err(e) => (self.disk_error(e), 0),
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
        F_FLUSH | if self.readonly { F_RO } else { 0 }
    }

    fn activated(&mut self, driver_features: u64) {
        self.flush_acked = driver_features & F_FLUSH != 0;
    }

    fn reset(&mut self) {
        self.flush_acked = false;
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
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner()).stats();
        format!(
            "reads={} writes={} flushes={} bytes={} errors={} disk_errors={} readonly_writes={} \
             write_through={} {}",
            s.reads,
            s.writes,
            s.flushes,
            s.bytes,
            s.errors,
            s.disk_errors,
            s.readonly_writes,
            s.write_through,
            disk.words()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::disk::{Disk, DiskAccess};
    use crate::devices::synthetic::chain::Segment;

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x8000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// Puts a request header in memory and returns its chain (header, data, status byte).
    fn request(m: &GuestMemoryMmap, kind: u32, sector: u64, data: u32) -> Chain {
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let seg = |addr, len, write| Segment {
            addr: GuestAddress(addr),
            len,
            write,
        };
        let mut segments = vec![seg(HDR, 16, false)];
        if data > 0 {
            segments.push(seg(DATA, data, kind == T_IN));
        }
        segments.push(seg(STATUS, 1, true));
        Chain { head: 0, segments }
    }

    fn status(m: &GuestMemoryMmap) -> u8 {
        m.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn blk(disk: Disk) -> (Blk, SharedDisk) {
        let d = Arc::new(Mutex::new(disk));
        (Blk::new(d.clone(), NoteSink::default()), d)
    }

    fn faulty(faults: &[&str], readonly: bool) -> (Blk, SharedDisk) {
        let access = DiskAccess {
            readonly,
            faults: faults.iter().map(|f| f.parse().unwrap()).collect(),
        };
        blk(Disk::from_options(None, 1 << 20, &access).unwrap())
    }

    #[test]
    fn flush_syncs_the_image_and_writes_are_write_through_until_flush_is_acked() {
        let path = std::env::temp_dir().join(format!("hvlab-blkflush-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (mut b, disk) = blk(Disk::open(&path, 1 << 20).unwrap());
        let m = mem();
        let syncs = || disk.lock().unwrap().stats().syncs;
        // Driver without FLUSH: the write itself is made stable.
        b.activated(0);
        b.serve(0, &m, &request(&m, T_OUT, 2, 512));
        assert_eq!((status(&m), syncs()), (S_OK, 1));
        // Driver with FLUSH: writes are write-back; T_FLUSH syncs before completing.
        b.activated(F_FLUSH | (1 << 32));
        b.serve(0, &m, &request(&m, T_OUT, 3, 512));
        assert_eq!((status(&m), syncs()), (S_OK, 1));
        b.serve(0, &m, &request(&m, T_FLUSH, 0, 0));
        assert_eq!((status(&m), syncs()), (S_OK, 2));
        assert_eq!(b.stats.flushes, 1);
        assert_eq!(b.stats.write_through, 1);
        drop((b, disk));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_injected_fault_fails_only_its_request_with_ioerr() {
        let (mut b, disk) = faulty(&["eio@write:2", "enospc@flush:1", "eio@read:1"], false);
        b.activated(F_FLUSH);
        let m = mem();
        for (i, want) in [(0u64, S_OK), (8, S_IOERR), (16, S_OK)] {
            m.write_slice(&[i as u8 + 1; 4096], GuestAddress(DATA))
                .unwrap();
            b.serve(0, &m, &request(&m, T_OUT, i, 4096));
            assert_eq!(status(&m), want, "write at sector {i}");
        }
        b.serve(0, &m, &request(&m, T_FLUSH, 0, 0));
        assert_eq!(status(&m), S_IOERR);
        b.serve(0, &m, &request(&m, T_IN, 0, 512));
        assert_eq!(status(&m), S_IOERR);
        let mut raw = vec![0u8; 24 * 512];
        disk.lock().unwrap().read_at(0, &mut raw).unwrap();
        assert!(raw[..4096].iter().all(|&x| x == 1));
        assert!(
            raw[4096..8192].iter().all(|&x| x == 0),
            "faulted request untouched"
        );
        assert!(raw[8192..].iter().all(|&x| x == 17));
        assert_eq!(b.stats.disk_errors, 3);
        assert!(b.stats().contains("faults_injected=3"), "{}", b.stats());
    }

    #[test]
    fn a_read_only_disk_offers_ro_and_fails_writes() {
        let (mut b, _) = faulty(&[], true);
        assert_ne!(b.features() & F_RO, 0);
        let m = mem();
        b.serve(0, &m, &request(&m, T_OUT, 0, 512));
        assert_eq!(status(&m), S_IOERR);
        b.serve(0, &m, &request(&m, T_IN, 0, 512));
        assert_eq!(status(&m), S_OK);
        assert_eq!(b.stats.readonly_writes, 1);
        let (rw, _) = faulty(&[], false);
        assert_eq!(rw.features() & F_RO, 0);
    }
}
