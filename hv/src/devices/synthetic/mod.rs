//! Synthetic (virtio) devices: the virtio-mmio transport (virtio 1.x, register layout version
//! 2), split virtqueues through the `virtio-queue` crate, doorbells through ioeventfd on
//! QueueNotify (one per queue, datamatch = queue index), completions through irqfd on an
//! IOAPIC pin (the guest programs the redirection entry; edge-triggered, so it never needs to
//! read or acknowledge InterruptStatus), and all request work on one device worker thread per
//! device, never on a vCPU thread.
//!
//! Locking: the device state sits behind one mutex, taken by the vCPU for register accesses
//! (setup, rare) and by the worker while it serves the queues. Neither takes another lock while
//! holding it, except the disk's (always after this one).
//!
//! Variants: VIRTIO_F_EVENT_IDX is offered when [`Tuning::event_idx`]; in polling mode the
//! worker keeps notifications suppressed and polls the available rings for
//! [`POLL_WINDOW`] after its last request before it sleeps in epoll again.
//!
//! Hostile rings: every chain is validated by [`chain::walk`]; a bad one (or rings outside
//! guest memory, or an available index that jumps past the queue) sets DEVICE_NEEDS_RESET,
//! raises a configuration interrupt, stops the device until the driver resets it, and is
//! reported once in the run's notes.

pub mod blk;
pub mod chain;
pub mod console;

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction};
use crate::counters::cputime::ThreadClock;
use crate::devices::NoteSink;
use crate::error::HvError;
use crate::isolation::seccomp::{self, ThreadKind};
use chain::{Chain, ChainError};

/// "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID: "HVLB".
pub const VENDOR: u32 = 0x424c_5648;
/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Largest queue the devices offer.
pub const QUEUE_MAX: u16 = 256;
/// How long a polling worker keeps polling after its last request.
pub const POLL_WINDOW: Duration = Duration::from_millis(20);

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

/// Switches of the synthetic variant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    pub event_idx: bool,
    pub polling: bool,
}

/// What a device backend did with one chain.
#[derive(Debug)]
pub enum Served {
    /// Completed: put it on the used ring with this many bytes written.
    Used(u32),
    /// The chain is malformed for this device in a way that means a broken driver.
    Broken(ChainError),
}

/// One device's request semantics; the transport and worker do the rest.
pub trait VirtioBackend: Send + std::fmt::Debug {
    /// virtio device ID.
    fn device_id(&self) -> u32;
    /// Device-specific feature bits (transport bits are added by the transport).
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn queues(&self) -> usize;
    /// Configuration space.
    fn config(&self) -> Vec<u8>;
    /// Whether the worker should take chains from `queue` now (a receive queue waits for
    /// data to deliver).
    fn wants(&self, queue: usize) -> bool {
        let _ = queue;
        true
    }
    /// Serves one validated chain from `queue`.
    fn serve(&mut self, queue: usize, mem: &GuestMemoryMmap, chain: &Chain) -> Served;
    /// `queue` is wanted but the driver has no buffers on it (a receive queue with data and
    /// nowhere to put it).
    fn starved(&mut self, queue: usize) {
        let _ = queue;
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Counters for the run's notes, as `key=value` words.
    fn stats(&self) -> String {
        String::new()
    }
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
}

/// Transport and queue state of one virtio-mmio device.
#[derive(Debug)]
pub struct DeviceState {
    name: String,
    backend: Box<dyn VirtioBackend>,
    mem: GuestMemoryMmap,
    irq: EventFd,
    notes: NoteSink,
    tuning: Tuning,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    interrupt_status: u32,
    pub stats: TransportStats,
}

fn lock(s: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
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

    fn negotiated(&self, bit: u64) -> bool {
        self.driver_features & bit != 0
    }

    /// True while the driver has the device running and it is not broken.
    pub fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
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
        self.queue_sel = 0;
        self.backend.reset();
    }

    fn interrupt(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.stats.interrupts += 1;
        let _ = self.irq.write(1);
    }

    /// Puts the device into DEVICE_NEEDS_RESET because the driver broke a ring.
    fn broken(&mut self, why: String) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.notes
            .note(format!("{}: DEVICE_NEEDS_RESET: {why}", self.name));
        self.interrupt(2);
    }

    fn activate(&mut self) {
        let event_idx = self.negotiated(feature::EVENT_IDX);
        let mut bad = None;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.mem) {
                bad = Some(format!("queue {i} rings lie outside guest memory"));
            }
        }
        if let Some(why) = bad {
            self.broken(why);
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
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
    /// queues. Public so that benches can drive the transport without a VM (`bench/`).
    pub fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        let mut wake = false;
        let ready = self.queue().is_some_and(|q| q.ready());
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
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
            reg::QUEUE_NUM if !ready => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
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
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
                wake = true;
            }
            reg::QUEUE_NOTIFY => {
                // A notify that missed the ioeventfd (a value no queue has).
                self.stats.doorbells += 1;
                wake = true;
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => {
                if v == 0 {
                    self.reset();
                } else {
                    let mut v = v | (self.status & status::DEVICE_NEEDS_RESET);
                    if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
                        let ok = self.driver_features & !self.device_features() == 0
                            && self.negotiated(feature::VERSION_1);
                        if !ok {
                            v &= !status::FEATURES_OK;
                        }
                    }
                    let starting =
                        v & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
                    self.status = v;
                    if starting {
                        self.activate();
                        wake = true;
                    }
                }
            }
            _ => {}
        }
        wake
    }

    /// Reads the driver's avail flags (VRING_AVAIL_F_NO_INTERRUPT), which virtio-queue does not
    /// honour itself.
    fn interrupt_suppressed(&self, q: &Queue) -> bool {
        self.mem
            .read_obj::<u16>(GuestAddress(q.avail_ring()))
            .is_ok_and(|f| f & 1 != 0)
    }

    /// Serves every queue until none has work; returns the chains completed.
    pub fn serve_all(&mut self) -> u64 {
        if !self.live() {
            return 0;
        }
        let mut total = 0;
        loop {
            let mut progress = 0;
            for qi in 0..self.queues.len() {
                progress += self.serve_queue(qi);
                if !self.live() {
                    return total + progress;
                }
            }
            total += progress;
            if progress == 0 {
                for qi in 0..self.queues.len() {
                    let q = &self.queues[qi];
                    let empty = q
                        .avail_idx(&self.mem, Ordering::Acquire)
                        .is_ok_and(|idx| idx == Wrapping(q.next_avail()));
                    if q.ready() && self.backend.wants(qi) && empty {
                        self.backend.starved(qi);
                    }
                }
                return total;
            }
        }
    }

    fn serve_queue(&mut self, qi: usize) -> u64 {
        let mem = self.mem.clone();
        let indirect = self.negotiated(feature::INDIRECT_DESC);
        let mut done = 0u64;
        loop {
            if !self.queues[qi].ready() || !self.backend.wants(qi) {
                break;
            }
            let q = &mut self.queues[qi];
            let _ = q.disable_notification(&mem);
            let (table, size) = (GuestAddress(q.desc_table()), q.size());
            let head = match q.iter(&mem) {
                Ok(mut it) => it.next().map(|c| c.head_index()),
                Err(e) => {
                    self.broken(format!("queue {qi}: {e}"));
                    return done;
                }
            };
            let Some(head) = head else {
                // Nothing left: re-enable notifications (unless polling) and re-check.
                let q = &mut self.queues[qi];
                if self.tuning.polling {
                    break;
                }
                match q.enable_notification(&mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let chain = match chain::walk(&mem, table, size, head, indirect) {
                Ok(c) => c,
                Err(e) => {
                    self.broken(format!("queue {qi}, chain at descriptor {head}: {e}"));
                    return done;
                }
            };
            self.stats.chains += 1;
            match self.backend.serve(qi, &mem, &chain) {
                Served::Used(len) => {
                    if let Err(e) = self.queues[qi].add_used(&mem, head, len) {
                        self.broken(format!("queue {qi}: used ring: {e}"));
                        return done;
                    }
                    done += 1;
                }
                Served::Broken(e) => {
                    self.broken(format!("queue {qi}, request at descriptor {head}: {e}"));
                    return done;
                }
            }
            // Wanted-ness may change (a receive queue with nothing more to deliver).
            if !self.backend.wants(qi) {
                break;
            }
        }
        if done > 0 {
            let q = &mut self.queues[qi];
            let needed = q.needs_notification(&mem).unwrap_or(true);
            let q = &self.queues[qi];
            let suppressed = !q.event_idx_enabled() && self.interrupt_suppressed(q);
            if needed && !suppressed {
                self.interrupt(1);
            } else {
                self.stats.suppressed += 1;
            }
        }
        done
    }

    /// True when some ready queue has available chains the worker has not taken.
    fn pending(&self) -> bool {
        self.queues.iter().enumerate().any(|(i, q)| {
            q.ready()
                && self.backend.wants(i)
                && q.avail_idx(&self.mem, Ordering::Acquire)
                    .is_ok_and(|idx| idx != Wrapping(q.next_avail()))
        })
    }

    /// Leaves polling: lets the driver notify again. Returns true if work arrived meanwhile.
    fn stop_polling(&mut self) -> bool {
        let mem = self.mem.clone();
        let mut more = false;
        for q in self.queues.iter_mut().filter(|q| q.ready()) {
            more |= q.enable_notification(&mem).unwrap_or(false);
        }
        more
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

/// The device's register window on the MMIO bus.
#[derive(Debug)]
pub struct VirtioMmio {
    state: Arc<Mutex<DeviceState>>,
    wake: EventFd,
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let s = lock(&self.state);
        if offset >= reg::CONFIG {
            let cfg = s.backend.config();
            let start = (offset - reg::CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        if offset % 4 != 0 || data.len() != 4 {
            return; // registers are 32-bit, aligned
        }
        data.copy_from_slice(&s.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset % 4 != 0 || data.len() != 4 || offset >= reg::CONFIG {
            return DeviceAction::None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let wake = lock(&self.state).write_reg(offset, v);
        if wake {
            let _ = self.wake.write(1);
        }
        DeviceAction::None
    }
}

/// Stops and joins the worker when the partition's run ends.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    state: Arc<Mutex<DeviceState>>,
}

impl WorkerHandle {
    /// The device state (tests read the status and counters).
    pub fn state(&self) -> &Arc<Mutex<DeviceState>> {
        &self.state
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = lock(&self.state);
        s.notes.note(s.summary());
    }
}

/// What `attach_device` leaves with the partition.
#[derive(Debug)]
pub struct Attached {
    pub bus_device: Arc<Mutex<VirtioMmio>>,
    pub worker: WorkerHandle,
    pub clock: Option<ThreadClock>,
}

fn setup(e: impl std::fmt::Display) -> HvError {
    HvError::Setup(format!("virtio device: {e}"))
}

/// Builds a virtio-mmio device at `base` with interrupts on `gsi`: registers one ioeventfd
/// per queue on QueueNotify and an irqfd, and starts the worker thread.
pub fn create(
    vm: &VmFd,
    name: &str,
    base: u64,
    gsi: u32,
    state: DeviceState,
    irq: &EventFd,
) -> Result<Attached, HvError> {
    let queues = state.queues.len();
    let mut doorbells = Vec::with_capacity(queues);
    for i in 0..queues {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
        vm.register_ioevent(
            &fd,
            &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
            i as u32,
        )
        .map_err(HvError::kvm("KVM_IOEVENTFD"))?;
        doorbells.push(fd);
    }
    vm.register_irqfd(irq, gsi)
        .map_err(HvError::kvm("KVM_IRQFD"))?;
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
    let polling = state.tuning.polling;
    let state = Arc::new(Mutex::new(state));
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    let filter = seccomp::Target::for_vm(vm, format!("{name} worker"));
    let worker = Worker {
        state: state.clone(),
        doorbells,
        wake: wake.try_clone().map_err(setup)?,
        stop: stop.try_clone().map_err(setup)?,
        polling,
    };
    let thread = std::thread::Builder::new()
        .name(format!("{name}-worker"))
        .spawn(move || {
            seccomp::install(ThreadKind::Worker, &filter);
            let _ = clock_tx.send(ThreadClock::current());
            worker.run();
        })
        .map_err(|e| HvError::Thread(e.to_string()))?;
    let clock = clock_rx.recv().ok().flatten();
    Ok(Attached {
        bus_device: Arc::new(Mutex::new(VirtioMmio {
            state: state.clone(),
            wake,
        })),
        worker: WorkerHandle {
            stop,
            thread: Some(thread),
            state,
        },
        clock,
    })
}

struct Worker {
    state: Arc<Mutex<DeviceState>>,
    doorbells: Vec<EventFd>,
    wake: EventFd,
    stop: EventFd,
    polling: bool,
}

const STOP_TOKEN: u64 = u64::MAX;
const WAKE_TOKEN: u64 = u64::MAX - 1;

impl Worker {
    fn run(self) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                let s = lock(&self.state);
                s.notes
                    .note(format!("{}: worker cannot create epoll: {e}", s.name));
                return;
            }
        };
        let mut fds: Vec<(i32, u64)> = self
            .doorbells
            .iter()
            .enumerate()
            .map(|(i, fd)| (fd.as_raw_fd(), i as u64))
            .collect();
        fds.push((self.wake.as_raw_fd(), WAKE_TOKEN));
        fds.push((self.stop.as_raw_fd(), STOP_TOKEN));
        for (fd, token) in fds {
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                let s = lock(&self.state);
                s.notes.note(format!("{}: worker epoll_ctl: {e}", s.name));
                return;
            }
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut kicks = 0;
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => return,
                    WAKE_TOKEN => {
                        let _ = self.wake.read();
                    }
                    i => {
                        if let Some(fd) = self.doorbells.get(i as usize) {
                            kicks += fd.read().unwrap_or(0);
                        }
                    }
                }
            }
            let served = {
                let mut s = lock(&self.state);
                s.stats.doorbells += kicks;
                s.stats.wakeups += 1;
                s.serve_all()
            };
            if self.polling && served > 0 && self.poll() {
                return;
            }
        }
    }

    /// Polls the available rings with notifications suppressed until [`POLL_WINDOW`] passes
    /// without work; returns true if asked to stop meanwhile.
    fn poll(&self) -> bool {
        let mut last_work = Instant::now();
        loop {
            if self.stop.read().is_ok() {
                return true;
            }
            let mut s = lock(&self.state);
            if s.pending() {
                let n = s.serve_all();
                if n > 0 {
                    s.stats.poll_hits += n;
                    last_work = Instant::now();
                }
            } else if last_work.elapsed() >= POLL_WINDOW {
                if s.stop_polling() {
                    s.serve_all();
                }
                return false;
            }
            drop(s);
            // Yield rather than spin hard: on an oversubscribed host the vCPU needs the core.
            std::thread::yield_now();
        }
    }
}
