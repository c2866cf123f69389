//! The virtio-mmio transport (virtio 1.x, register layout version 2): the register window a
//! vCPU reads and writes, and the register side of [`DeviceState`] (feature negotiation, device
//! status, queue setup and its validation).
//!
//! Every register access from a guest ends in defined behaviour: sub-word, unaligned and
//! config-space writes are ignored, reads of them return the config bytes or zero; a queue
//! selector past the last queue reads as "no queue" and its writes are ignored; ring
//! addresses, sizes and DRIVER_FEATURES are read-only once they matter (queue ready, or
//! FEATURES_OK set); rings are validated whenever a queue can be served (at DRIVER_OK, and
//! when the driver readies a queue after DRIVER_OK), and rings outside guest memory,
//! overlapping each other or over the MMIO window put the device into DEVICE_NEEDS_RESET with a
//! note; so does a status write that clears a bit only reset may clear.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VirtioBackend;
use crate::bus::{BusDevice, DeviceAction};
use crate::devices::NoteSink;
use crate::error::HvError;

/// "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID: "HVLB".
pub const VENDOR: u32 = 0x424c_5648;
/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Largest queue the devices offer.
pub const QUEUE_MAX: u16 = 256;

/// Feature bits.
pub mod feature {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Register offsets (virtio-mmio version 2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Status bits only a reset (a write of 0) may clear once set.
const STICKY: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

/// Switches of the synthetic variant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    pub event_idx: bool,
    pub polling: bool,
}

/// Transport statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub doorbells: u64,
    pub wakeups: u64,
    pub chains: u64,
    pub interrupts: u64,
    pub suppressed: u64,
    pub poll_hits: u64,
    /// Service passes over the queues (each bounded, see `service`).
    pub passes: u64,
    /// Iterations of the per-queue service loop, summed over passes (a measure of work done
    /// while holding the state lock).
    pub steps: u64,
}

/// Transport and queue state of one virtio-mmio device.
#[derive(Debug)]
pub struct DeviceState {
    pub(super) name: String,
    pub(super) backend: Box<dyn VirtioBackend>,
    pub(super) mem: GuestMemoryMmap,
    irq: EventFd,
    pub(super) notes: NoteSink,
    pub(super) tuning: Tuning,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    pub(super) queues: Vec<Queue>,
    status: u32,
    interrupt_status: u32,
    pub stats: TransportStats,
}

/// Takes the state lock; a worker that panicked while holding it leaves the state usable (every
/// update is a plain field write, so nothing is half-done in a way that matters).
pub(super) fn lock(s: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// `[start, start + len)` of one ring part, for the overlap check.
#[derive(Debug, Clone, Copy)]
struct Span {
    what: &'static str,
    start: u64,
    len: u64,
}

impl Span {
    fn overlaps(&self, o: &Span) -> bool {
        // Lengths are at most 16 * QUEUE_MAX and the addresses were checked against guest
        // memory, so neither end overflows; saturate anyway.
        self.start < o.start.saturating_add(o.len) && o.start < self.start.saturating_add(self.len)
    }
}

/// The three ring parts of queue `q` (split virtqueue layout; the avail and used rings include
/// used_event / avail_event).
fn spans(q: &Queue) -> [Span; 3] {
    let n = u64::from(q.size());
    [
        Span {
            what: "descriptor table",
            start: q.desc_table(),
            len: 16 * n,
        },
        Span {
            what: "available ring",
            start: q.avail_ring(),
            len: 6 + 2 * n,
        },
        Span {
            what: "used ring",
            start: q.used_ring(),
            len: 6 + 8 * n,
        },
    ]
}

impl DeviceState {
    /// State for `backend` over guest memory `mem`, interrupting through `irq`.
    pub fn new(
        name: &str,
        backend: Box<dyn VirtioBackend>,
        mem: GuestMemoryMmap,
        irq: EventFd,
        notes: NoteSink,
        tuning: Tuning,
    ) -> Result<DeviceState, HvError> {
        let queues = (0..backend.queues())
            .map(|_| Queue::new(QUEUE_MAX))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HvError::Setup(format!("virtqueue: {e}")))?;
        Ok(DeviceState {
            name: name.to_string(),
            backend,
            mem,
            irq,
            notes,
            tuning,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            stats: TransportStats::default(),
        })
    }

    fn device_features(&self) -> u64 {
        let mut f = feature::VERSION_1 | feature::INDIRECT_DESC | self.backend.features();
        if self.tuning.event_idx {
            f |= feature::EVENT_IDX;
        }
        f
    }

    pub(super) fn negotiated(&self, bit: u64) -> bool {
        self.driver_features & bit != 0
    }

    /// True while the driver has the device running and it is neither broken nor failed.
    pub fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device's name (for notes).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn selected(&self) -> Option<usize> {
        let i = self.queue_sel as usize;
        (i < self.queues.len()).then_some(i)
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.backend.reset();
    }

    pub(super) fn interrupt(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.stats.interrupts += 1;
        let _ = self.irq.write(1);
    }

    /// Puts the device into DEVICE_NEEDS_RESET because the driver broke a ring or the
    /// protocol; the first reason is noted, later ones are not (the device is already stopped).
    pub(super) fn broken(&mut self, why: String) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.notes
            .note(format!("{}: DEVICE_NEEDS_RESET: {why}", self.name));
        self.interrupt(2);
    }

    /// Checks ready queue `i` before the device may serve it: size a power of two no larger
    /// than [`QUEUE_MAX`] (virtio-queue's setters keep an invalid size or a misaligned address
    /// from being set at all), every ring part inside guest memory (hence not over the MMIO
    /// window), and no ring part overlapping another of this or another ready queue.
    fn check_queue(&self, i: usize) -> Result<(), String> {
        let q = &self.queues[i];
        let n = q.size();
        if n == 0 || !n.is_power_of_two() || n > QUEUE_MAX {
            return Err(format!("queue {i} size {n} is invalid"));
        }
        if q.desc_table() % 16 != 0 || q.avail_ring() % 2 != 0 || q.used_ring() % 4 != 0 {
            return Err(format!("queue {i} rings are misaligned"));
        }
        if !q.is_valid(&self.mem) {
            return Err(format!(
                "queue {i} rings lie outside guest memory (descriptors {:#x}, available {:#x}, \
                 used {:#x}, size {n})",
                q.desc_table(),
                q.avail_ring(),
                q.used_ring()
            ));
        }
        let mine = spans(q);
        for (a, x) in mine.iter().enumerate() {
            for y in &mine[a + 1..] {
                if x.overlaps(y) {
                    return Err(format!("queue {i}: {} overlaps {}", x.what, y.what));
                }
            }
        }
        for (j, other) in self.queues.iter().enumerate() {
            if j == i || !other.ready() {
                continue;
            }
            for x in &mine {
                for y in &spans(other) {
                    if x.overlaps(y) {
                        return Err(format!(
                            "queue {i}: {} overlaps queue {j}'s {}",
                            x.what, y.what
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// DRIVER_OK: the negotiated features reach the queues and every ready queue is checked.
    fn activate(&mut self) {
        self.backend.activated(self.driver_features);
        let event_idx = self.negotiated(feature::EVENT_IDX);
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        let bad = (0..self.queues.len())
            .filter(|&i| self.queues[i].ready())
            .find_map(|i| self.check_queue(i).err());
        if let Some(why) = bad {
            self.broken(why);
        }
    }

    /// QUEUE_READY written with `v` for the selected queue.
    fn set_queue_ready(&mut self, v: u32) {
        let Some(i) = self.selected() else {
            return;
        };
        match v {
            0 => self.queues[i].set_ready(false),
            1 if !self.queues[i].ready() => {
                self.queues[i].set_ready(true);
                if self.status & status::DRIVER_OK != 0 {
                    // Readied after DRIVER_OK: nothing else will check these rings before the
                    // worker walks them.
                    let event_idx = self.negotiated(feature::EVENT_IDX);
                    self.queues[i].set_event_idx(event_idx);
                    if let Err(why) = self.check_queue(i) {
                        self.broken(format!("re-readied {why}"));
                    }
                }
            }
            _ => {} // already ready, or not a value the register takes
        }
    }

    /// STATUS written with a non-zero `v`.
    fn set_status(&mut self, v: u32) -> bool {
        // The device alone sets DEVICE_NEEDS_RESET.
        let mut v = (v & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
        let cleared = self.status & STICKY & !v;
        if cleared != 0 {
            // Only a reset may take the device back (renegotiation after FEATURES_OK or
            // DRIVER_OK goes through reset, virtio 1.x 3.1.1).
            self.broken(format!(
                "status write {v:#x} clears bits {cleared:#x} without a reset"
            ));
            return false;
        }
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = self.driver_features & !self.device_features() == 0
                && self.negotiated(feature::VERSION_1);
            if !ok {
                v &= !status::FEATURES_OK;
            }
        }
        let starting = v & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        if starting && v & status::FEATURES_OK == 0 {
            self.status = v;
            self.broken("DRIVER_OK without FEATURES_OK".into());
            return false;
        }
        self.status = v;
        if starting {
            self.activate();
        }
        starting
    }

    pub(super) fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.backend.device_id(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    /// A driver's 32-bit write of register `offset`; true when the worker should look at the
    /// queues. Public so that benches and tests can drive the transport without a VM.
    pub fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        let mut wake = false;
        let ready = self.queue().is_some_and(|q| q.ready());
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Ignored once FEATURES_OK is set: the features are fixed until reset.
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            // A size that is not a u16 is ignored, as virtio-queue ignores one that is not a
            // power of two up to QUEUE_MAX.
            reg::QUEUE_NUM if !ready => {
                if let (Some(q), Ok(n)) = (self.queue(), u16::try_from(v)) {
                    q.set_size(n);
                }
            }
            reg::QUEUE_DESC_LOW if !ready => {
                if let Some(q) = self.queue() {
                    q.set_desc_table_address(Some(v), None);
                }
            }
            reg::QUEUE_DESC_HIGH if !ready => {
                if let Some(q) = self.queue() {
                    q.set_desc_table_address(None, Some(v));
                }
            }
            reg::QUEUE_DRIVER_LOW if !ready => {
                if let Some(q) = self.queue() {
                    q.set_avail_ring_address(Some(v), None);
                }
            }
            reg::QUEUE_DRIVER_HIGH if !ready => {
                if let Some(q) = self.queue() {
                    q.set_avail_ring_address(None, Some(v));
                }
            }
            reg::QUEUE_DEVICE_LOW if !ready => {
                if let Some(q) = self.queue() {
                    q.set_used_ring_address(Some(v), None);
                }
            }
            reg::QUEUE_DEVICE_HIGH if !ready => {
                if let Some(q) = self.queue() {
                    q.set_used_ring_address(None, Some(v));
                }
            }
            reg::QUEUE_READY => {
                self.set_queue_ready(v);
                wake = true;
            }
            reg::QUEUE_NOTIFY => {
                // A notify that missed the ioeventfd (a value no queue has).
                self.stats.doorbells += 1;
                wake = true;
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS if v == 0 => self.reset(),
            reg::STATUS => wake = self.set_status(v),
            _ => {}
        }
        wake
    }

    /// Backend counters and transport counters, for the run's notes.
    pub fn summary(&self) -> String {
        let s = self.stats;
        format!(
            "{}: chains={} doorbells_seen={} wakeups={} interrupts={} suppressed={} poll_hits={} {}",
            self.name,
            s.chains,
            s.doorbells,
            s.wakeups,
            s.interrupts,
            s.suppressed,
            s.poll_hits,
            self.backend.stats()
        )
    }
}

/// The device's register window on the MMIO bus. A vCPU holds the state lock for one register
/// access; the worker holds it for at most one bounded service pass.
#[derive(Debug)]
pub struct VirtioMmio {
    pub(super) state: Arc<Mutex<DeviceState>>,
    pub(super) wake: EventFd,
    /// vCPUs waiting for the state lock; the worker lets them in between passes (std's
    /// mutex is not fair, so a worker that re-locks at once could starve them).
    pub(super) waiting: Arc<AtomicU32>,
}

impl VirtioMmio {
    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let s = lock(&self.state);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        s
    }
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let s = self.lock();
        if offset >= reg::CONFIG {
            // Any width and alignment: the config bytes, zero past their end.
            let cfg = s.backend.config();
            let start = (offset - reg::CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = start
                    .checked_add(i)
                    .and_then(|at| cfg.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        if offset % 4 != 0 || data.len() != 4 {
            return; // registers are 32-bit, aligned: other accesses read 0
        }
        data.copy_from_slice(&s.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        // Registers are 32-bit and aligned; the config space is read-only for both devices.
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return DeviceAction::None;
        };
        if offset % 4 != 0 || offset >= reg::CONFIG {
            return DeviceAction::None;
        }
        let wake = self.lock().write_reg(offset, u32::from_le_bytes(bytes));
        if wake {
            let _ = self.wake.write(1);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{blk_state, drive_to_ready, drive_to_ready_with};
    use super::*;

    #[test]
    fn clearing_status_bits_without_reset_needs_reset() {
        let (mut s, _) = blk_state(1 << 20);
        drive_to_ready(&mut s);
        assert!(s.live());
        // Renegotiation after DRIVER_OK: drop back to ACKNOWLEDGE|DRIVER.
        s.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        assert!(!s.live());
        assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
        // Reset brings it back.
        s.write_reg(reg::STATUS, 0);
        assert_eq!(s.status(), 0);
        drive_to_ready(&mut s);
        assert!(s.live());
    }

    #[test]
    fn driver_features_are_fixed_after_features_ok() {
        let (mut s, _) = blk_state(1 << 20);
        drive_to_ready(&mut s);
        let before = s.driver_features;
        s.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        s.write_reg(reg::DRIVER_FEATURES, 0);
        assert_eq!(s.driver_features, before);
        assert!(s.live());
    }

    #[test]
    fn driver_ok_without_features_ok_needs_reset() {
        let (mut s, _) = blk_state(1 << 20);
        s.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        s.write_reg(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert!(!s.live());
        assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn driver_cannot_set_needs_reset_itself() {
        let (mut s, _) = blk_state(1 << 20);
        s.write_reg(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET,
        );
        assert_eq!(s.status(), status::ACKNOWLEDGE);
    }

    #[test]
    fn queue_sel_out_of_range_reads_no_queue_and_ignores_writes() {
        let (mut s, _) = blk_state(1 << 20);
        s.write_reg(reg::QUEUE_SEL, 7);
        assert_eq!(s.read_reg(reg::QUEUE_NUM_MAX), 0);
        s.write_reg(reg::QUEUE_NUM, 8);
        s.write_reg(reg::QUEUE_READY, 1);
        assert_eq!(s.read_reg(reg::QUEUE_READY), 0);
        s.write_reg(reg::QUEUE_SEL, 0);
        assert_eq!(s.queues[0].size(), QUEUE_MAX);
        assert!(!s.queues[0].ready());
    }

    #[test]
    fn queue_num_that_is_not_a_u16_or_power_of_two_is_ignored() {
        let (mut s, _) = blk_state(1 << 20);
        s.write_reg(reg::QUEUE_NUM, 0x1_0080);
        assert_eq!(s.queues[0].size(), QUEUE_MAX);
        s.write_reg(reg::QUEUE_NUM, 100);
        assert_eq!(s.queues[0].size(), QUEUE_MAX);
        s.write_reg(reg::QUEUE_NUM, 64);
        assert_eq!(s.queues[0].size(), 64);
    }

    #[test]
    fn rings_that_overlap_or_leave_memory_need_reset_at_driver_ok() {
        // (desc, avail, used) for a 16-entry queue in 1 MiB of guest memory.
        for (desc, avail, used, expect) in [
            (0x1000u64, 0x1000u64, 0x2000u64, "overlaps"),
            (0x1000, 0x2000, 0x2008, "overlaps"),
            (0x1000, 0x2000, 0xd000_0000, "outside guest memory"),
            (0x1000, 0xf_fffc, 0x3000, "outside guest memory"),
        ] {
            let (mut s, notes) = blk_state(1 << 20);
            drive_to_ready_with(&mut s, 16, desc, avail, used);
            assert!(!s.live(), "{desc:#x} {avail:#x} {used:#x}");
            assert!(
                notes.snapshot().iter().any(|n| n.contains(expect)),
                "{:?}",
                notes.snapshot()
            );
        }
    }

    #[test]
    fn subword_unaligned_and_config_writes_are_ignored() {
        let (s, _) = blk_state(1 << 20);
        let state = Arc::new(Mutex::new(s));
        let mut mmio = VirtioMmio {
            state: state.clone(),
            wake: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            waiting: Arc::default(),
        };
        mmio.write(reg::STATUS, &[1, 0]);
        mmio.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        mmio.write(reg::CONFIG, &[1, 2, 3, 4]);
        mmio.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lock(&state).status(), 0);
        let mut b = [0xffu8; 2];
        mmio.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 8];
        mmio.read(MMIO_SIZE - 4, &mut b);
        assert_eq!(b, [0; 8]);
        let mut b = [0u8; 4];
        mmio.read(reg::CONFIG + 1, &mut b); // capacity is 2048 sectors: 0x800
        assert_eq!(b, [8, 0, 0, 0]);
    }
}
