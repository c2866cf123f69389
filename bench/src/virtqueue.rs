//! hv's virtqueue hot path without KVM: a virtio-blk device state over plain guest memory,
//! set up through its registers as a driver would, with a split virtqueue holding `n` read
//! requests of the virtio-blk shape (header readable, data writable, status byte writable).
//! The worker's loop (`DeviceState::serve_all`: pop the head, `chain::walk`, serve, used
//! ring, notification check) and the chain validation alone can then be timed per chain.

use std::sync::{Arc, Mutex};

use hv::devices::NoteSink;
use hv::devices::disk::Disk;
use hv::devices::synthetic::blk::{Blk, S_OK, T_IN};
use hv::devices::synthetic::chain::{self, F_NEXT, F_WRITE};
use hv::devices::synthetic::{DeviceState, QUEUE_MAX, Tuning, feature, reg, status};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Queue size (the largest hv offers).
pub const QSIZE: u16 = QUEUE_MAX;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const HEADERS: u64 = 0x6000;
const STATUS: u64 = 0x7000;
const DATA: u64 = 0x10000;
const SECTOR: u64 = 512;

/// A virtio-blk device and its driver-side ring, both in one process.
#[derive(Debug)]
pub struct BlkQueue {
    state: DeviceState,
    mem: GuestMemoryMmap,
    /// Requests per batch; heads are `0, 3, 6, ...`.
    n: u16,
    bs: u64,
    avail_idx: u16,
    _irq: EventFd,
}

impl BlkQueue {
    /// `n` read requests of `bs` bytes each (`n * 3 <= QSIZE`, `QSIZE % n == 0`).
    pub fn new(n: u16, bs: u64) -> BlkQueue {
        assert!(
            n > 0 && n * 3 <= QSIZE && QSIZE % n == 0,
            "bad batch size {n}"
        );
        assert!(bs > 0 && bs % SECTOR == 0);
        let mem_size = DATA + u64::from(n) * bs;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .expect("guest memory");
        let disk = Disk::memory((u64::from(n) * bs).max(1 << 20)).expect("memory disk");
        let notes = NoteSink::default();
        let backend = Blk::new(Arc::new(Mutex::new(disk)), notes.clone());
        let irq = EventFd::new(0).expect("eventfd");
        let tuning = Tuning {
            event_idx: true,
            polling: false,
        };
        let state = DeviceState::new(
            "virtio-blk",
            Box::new(backend),
            mem.clone(),
            irq.try_clone().expect("eventfd"),
            notes,
            tuning,
        )
        .expect("device state");
        let mut q = BlkQueue {
            state,
            mem,
            n,
            bs,
            avail_idx: 0,
            _irq: irq,
        };
        q.lay_out();
        q.driver_init();
        q
    }

    fn put_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + u64::from(i) * 16;
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).expect("desc");
        m.write_obj(len, GuestAddress(at + 8)).expect("desc");
        m.write_obj(flags, GuestAddress(at + 12)).expect("desc");
        m.write_obj(next, GuestAddress(at + 14)).expect("desc");
    }

    /// Descriptor chains and headers; every avail ring slot names the chain of its position
    /// modulo `n`, so a batch is published by moving the index alone.
    fn lay_out(&self) {
        for r in 0..self.n {
            let head = r * 3;
            let hdr = HEADERS + u64::from(r) * 16;
            self.mem.write_obj(T_IN, GuestAddress(hdr)).expect("hdr");
            let sector = u64::from(r) * self.bs / SECTOR;
            self.mem
                .write_obj(sector, GuestAddress(hdr + 8))
                .expect("hdr");
            let data = DATA + u64::from(r) * self.bs;
            self.put_desc(head, hdr, 16, F_NEXT, head + 1);
            self.put_desc(head + 1, data, self.bs as u32, F_NEXT | F_WRITE, head + 2);
            self.put_desc(head + 2, STATUS + u64::from(r), 1, F_WRITE, 0);
        }
        for slot in 0..QSIZE {
            let head = (slot % self.n) * 3;
            let at = AVAIL + 4 + u64::from(slot) * 2;
            self.mem.write_obj(head, GuestAddress(at)).expect("avail");
        }
    }

    /// The virtio-mmio initialisation sequence a driver performs.
    fn driver_init(&mut self) {
        let s = &mut self.state;
        let features = feature::VERSION_1 | feature::EVENT_IDX;
        s.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        s.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        s.write_reg(reg::DRIVER_FEATURES, features as u32);
        s.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        s.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        s.write_reg(reg::STATUS, st);
        s.write_reg(reg::QUEUE_SEL, 0);
        s.write_reg(reg::QUEUE_NUM, u32::from(QSIZE));
        s.write_reg(reg::QUEUE_DESC_LOW, DESC as u32);
        s.write_reg(reg::QUEUE_DESC_HIGH, 0);
        s.write_reg(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        s.write_reg(reg::QUEUE_DRIVER_HIGH, 0);
        s.write_reg(reg::QUEUE_DEVICE_LOW, USED as u32);
        s.write_reg(reg::QUEUE_DEVICE_HIGH, 0);
        s.write_reg(reg::QUEUE_READY, 1);
        s.write_reg(reg::STATUS, st | status::DRIVER_OK);
        assert!(s.live(), "device not live: status {:#x}", s.status());
    }

    /// Requests per batch.
    pub fn batch(&self) -> u16 {
        self.n
    }

    /// Publishes one batch of `n` requests and lets the device serve them; returns the
    /// chains completed.
    pub fn serve_batch(&mut self) -> u64 {
        for r in 0..self.n {
            self.mem
                .write_obj(0xffu8, GuestAddress(STATUS + u64::from(r)))
                .expect("status");
        }
        self.avail_idx = self.avail_idx.wrapping_add(self.n);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        self.state.serve_all()
    }

    /// Validates every chain of a batch with `chain::walk`; returns the segments seen.
    pub fn walk_batch(&self) -> usize {
        (0..self.n)
            .map(|r| {
                chain::walk(&self.mem, GuestAddress(DESC), QSIZE, r * 3, false)
                    .expect("valid chain")
                    .segments
                    .len()
            })
            .sum()
    }

    /// The used ring's index, as the driver reads it.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx")
    }

    /// True when every request of the last batch carries status OK.
    pub fn all_ok(&self) -> bool {
        (0..self.n).all(|r| {
            self.mem
                .read_obj::<u8>(GuestAddress(STATUS + u64::from(r)))
                .is_ok_and(|s| s == S_OK)
        })
    }

    /// Device remarks (errors a broken ring caused) and counters.
    pub fn summary(&self) -> String {
        self.state.summary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_complete_with_status_ok_and_wrap_the_rings() {
        let mut q = BlkQueue::new(64, 4096);
        assert_eq!(q.walk_batch(), 64 * 3);
        // Five batches of 64 go round the 256-entry rings more than once.
        for b in 1..=5u16 {
            assert_eq!(q.serve_batch(), 64, "{}", q.summary());
            assert!(q.all_ok(), "{}", q.summary());
            assert_eq!(q.used_idx(), b * 64);
        }
        assert!(q.summary().contains("chains=320"), "{}", q.summary());
    }
}
