//! Test helpers: a virtio-blk device state over plain guest memory and a memory disk, driven
//! through its registers as a driver would (no VM, no worker thread).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::blk::{Blk, T_IN};
use super::chain::{F_NEXT, F_WRITE};
use super::{DeviceState, Tuning, feature, reg, status};
use crate::devices::NoteSink;
use crate::devices::disk::Disk;

/// A virtio-blk device over `mem_bytes` of guest memory at GPA 0 and a 1 MiB memory disk,
/// with EVENT_IDX offered; and the sink its notes go to.
pub(crate) fn blk_state(mem_bytes: u64) -> (DeviceState, NoteSink) {
    blk_state_tuned(
        mem_bytes,
        Tuning {
            event_idx: true,
            polling: false,
        },
    )
}

/// [`blk_state`] with the given tuning.
pub(crate) fn blk_state_tuned(mem_bytes: u64, tuning: Tuning) -> (DeviceState, NoteSink) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_bytes as usize)]).unwrap();
    let notes = NoteSink::default();
    let disk = Disk::memory(1 << 20).unwrap();
    let backend = Blk::new(Arc::new(Mutex::new(disk)), notes.clone());
    // Non-blocking, so that a counter nobody reads can never block a write.
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let s = DeviceState::new(
        "virtio-blk",
        Box::new(backend),
        mem,
        irq,
        notes.clone(),
        tuning,
    )
    .unwrap();
    (s, notes)
}

/// ACKNOWLEDGE, DRIVER, VERSION_1 | EVENT_IDX | INDIRECT_DESC as far as the device offers
/// them, FEATURES_OK.
pub(crate) fn negotiate(s: &mut DeviceState) {
    s.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    s.write_reg(reg::DEVICE_FEATURES_SEL, 0);
    let lo = u64::from(s.read_reg(reg::DEVICE_FEATURES));
    s.write_reg(reg::DEVICE_FEATURES_SEL, 1);
    let offered = lo | u64::from(s.read_reg(reg::DEVICE_FEATURES)) << 32;
    let features = (feature::VERSION_1 | feature::EVENT_IDX | feature::INDIRECT_DESC) & offered;
    s.write_reg(reg::DRIVER_FEATURES_SEL, 0);
    s.write_reg(reg::DRIVER_FEATURES, features as u32);
    s.write_reg(reg::DRIVER_FEATURES_SEL, 1);
    s.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
    s.write_reg(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

/// Negotiates, sets up queue 0 with `n` entries at the given ring addresses, and writes
/// DRIVER_OK.
pub(crate) fn drive_to_ready_with(s: &mut DeviceState, n: u16, desc: u64, avail: u64, used: u64) {
    negotiate(s);
    s.write_reg(reg::QUEUE_SEL, 0);
    s.write_reg(reg::QUEUE_NUM, u32::from(n));
    s.write_reg(reg::QUEUE_DESC_LOW, desc as u32);
    s.write_reg(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
    s.write_reg(reg::QUEUE_DRIVER_LOW, avail as u32);
    s.write_reg(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    s.write_reg(reg::QUEUE_DEVICE_LOW, used as u32);
    s.write_reg(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    s.write_reg(reg::QUEUE_READY, 1);
    let st = s.status();
    s.write_reg(reg::STATUS, st | status::DRIVER_OK);
}

/// A 16-entry queue 0 at 0x1000 / 0x2000 / 0x3000, live.
pub(crate) fn drive_to_ready(s: &mut DeviceState) {
    drive_to_ready_with(s, 16, 0x1000, 0x2000, 0x3000);
}

fn put_desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = table + u64::from(i) * 16;
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

/// A 512-byte read of sector 0 as descriptors `head..head + 3` of the table at `table`:
/// header at `buf`, status byte at `buf + 16`, data at `buf + 512`.
pub(crate) fn put_read_request(mem: &GuestMemoryMmap, table: u64, head: u16, buf: u64) {
    mem.write_obj(T_IN, GuestAddress(buf)).unwrap();
    mem.write_obj(0u64, GuestAddress(buf + 8)).unwrap();
    put_desc(mem, table, head, buf, 16, F_NEXT, head + 1);
    put_desc(
        mem,
        table,
        head + 1,
        buf + 512,
        512,
        F_NEXT | F_WRITE,
        head + 2,
    );
    put_desc(mem, table, head + 2, buf + 16, 1, F_WRITE, 0);
}
