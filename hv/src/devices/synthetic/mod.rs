//! Synthetic (virtio) devices: the virtio-mmio transport (virtio 1.x, register layout version
//! 2), split virtqueues through the `virtio-queue` crate, doorbells through ioeventfd on
//! QueueNotify (one per queue, datamatch = queue index), completions through irqfd on an
//! IOAPIC pin (the guest programs the redirection entry; edge-triggered, so it never needs to
//! read or acknowledge InterruptStatus), and all request work on one device worker thread per
//! device, never on a vCPU thread.
//!
//! One job per file: [`transport`] (registers, negotiation, queue setup and its validation),
//! [`service`] (bounded queue service), [`worker`] (the epoll worker, polling, stop),
//! [`chain`] (descriptor-chain validation), and one file per backend ([`blk`], [`console`]).
//!
//! Lock order (outermost first; nothing takes an earlier lock while holding a later one):
//!
//! 1. the bus's lock on [`VirtioMmio`] (vCPU threads only, for one register access);
//! 2. the device's state lock, `Mutex<DeviceState>`: a vCPU holds it for one register access,
//!    the worker for one bounded service pass ([`service`], at most
//!    [`worker::PASS_CHAINS`] chains per queue), never across epoll, a sleep or an unbounded
//!    loop; between passes the worker checks for stop and lets waiting vCPUs in first;
//! 3. a backend's own locks, taken inside a pass: the shared disk (virtio-blk, one request at a
//!    time: its reads, writes and fdatasync are the only blocking host calls made under the
//!    state lock), the console capture (virtio-console);
//! 4. the run's [`NoteSink`](crate::devices::NoteSink) (a leaf).
//!
//! Variants: VIRTIO_F_EVENT_IDX is offered when [`Tuning::event_idx`]; in polling mode the
//! worker keeps notifications suppressed and polls the available rings for
//! [`POLL_WINDOW`] after its last request before it sleeps in epoll again.
//!
//! Hostile rings: rings are checked whenever a queue can be served (at DRIVER_OK and when a
//! queue is readied after it), every chain is validated by [`chain::walk`], and the service
//! loop is bounded by construction; a bad ring or chain (rings outside guest memory or
//! overlapping, an available index that jumps past the queue or names an entry that cannot be
//! read) sets DEVICE_NEEDS_RESET, raises a configuration interrupt, stops the device until the
//! driver resets it, and is reported once in the run's notes.

pub mod blk;
pub mod chain;
pub mod console;
#[cfg(test)]
mod fuzz;
pub mod net;
pub mod service;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod worker;

use vm_memory::GuestMemoryMmap;

use chain::{Chain, ChainError};

pub use service::Pass;
pub use transport::{
    DeviceState, MAGIC, MMIO_SIZE, QUEUE_MAX, TransportStats, Tuning, VENDOR, VirtioMmio, feature,
    reg, status,
};
pub use worker::{Attached, POLL_WINDOW, WorkerHandle, create};

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
    /// The driver set DRIVER_OK having acked `driver_features` (virtio-blk needs to know
    /// whether FLUSH was negotiated: without it every write must be stable on completion).
    fn activated(&mut self, driver_features: u64) {
        let _ = driver_features;
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Counters for the run's notes, as `key=value` words.
    fn stats(&self) -> String {
        String::new()
    }
}
