//! The channel worker: one thread per partition that serves its VMBus-style channels, as a
//! virtio device's worker serves its queues. It sleeps in epoll on its doorbell (written by a
//! vCPU thread when the guest signals a channel), serves each signalled channel a bounded round
//! at a time, and tells the guest what happened through [`GuestSignals`]: a channel event when
//! the ring protocol asks for one, a CHANNEL_CLOSED message when the guest broke a ring.
//!
//! It runs under the partition's seccomp filter for channel workers (the device worker's list
//! plus KVM_SIGNAL_MSI, which raises the SynIC interrupt) and ends within [`POLL`] of its
//! partition's end.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hvlab_protocol::vmbus as proto;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::channel::{ChannelError, Served, Vmbus, closed_reason, words_to_bytes};
use super::ring::RingError;
use crate::counters::cputime::ThreadClock;
use crate::error::HvError;
use crate::isolation::seccomp::{self, ThreadKind};

/// How often the worker looks whether its partition has ended while no doorbell rings.
pub const POLL: Duration = Duration::from_millis(50);

/// What the worker needs from the SynIC side (`enlightenments::host` implements it).
pub trait GuestSignals: Send + Sync {
    /// Sets event flag `channel` in the guest's channel SINT and raises its interrupt.
    fn channel_event(&self, channel: u32);
    /// Posts a management message with `payload` to the guest.
    fn management(&self, payload: Vec<u8>);
    /// Counts one round's work.
    fn served(&self, s: &Served);
    /// Counts and notes a ring error that closed `channel`.
    fn ring_error(&self, channel: u32, e: RingError);
    /// True once the partition has ended.
    fn stopping(&self) -> bool;
}

/// Stops the worker when dropped (without waiting for it: it ends within [`POLL`]).
#[derive(Debug)]
pub struct WorkerHandle {
    stop: EventFd,
    stopped: Arc<AtomicBool>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.stop.write(1);
    }
}

fn setup(e: impl std::fmt::Display) -> HvError {
    HvError::Setup(format!("vmbus worker: {e}"))
}

/// Starts the worker of `bus` (guest memory `mem`), filtered with `filter`. Returns its handle
/// and its CPU clock (for the worker CPU time in the phase records).
pub fn start(
    bus: Arc<Vmbus>,
    mem: GuestMemoryMmap,
    signals: Arc<dyn GuestSignals>,
    filter: seccomp::Target,
) -> Result<(WorkerHandle, Option<ThreadClock>), HvError> {
    let doorbell = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
    bus.set_doorbell(doorbell.try_clone().map_err(setup)?);
    let stopped = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        bus,
        mem,
        signals,
        doorbell,
        stop: stop.try_clone().map_err(setup)?,
        stopped: stopped.clone(),
    };
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vmbus-worker".into())
        .spawn(move || {
            seccomp::install(ThreadKind::ChannelWorker, &filter);
            let _ = clock_tx.send(ThreadClock::current());
            worker.run();
        })
        .map_err(|e| HvError::Thread(e.to_string()))?;
    let clock = clock_rx.recv().ok().flatten();
    Ok((WorkerHandle { stop, stopped }, clock))
}

struct Worker {
    bus: Arc<Vmbus>,
    mem: GuestMemoryMmap,
    signals: Arc<dyn GuestSignals>,
    doorbell: EventFd,
    stop: EventFd,
    stopped: Arc<AtomicBool>,
}

const DOORBELL: u64 = 1;
const STOP: u64 = 2;

impl Worker {
    fn done(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.signals.stopping()
    }

    fn run(self) {
        let Ok(epoll) = Epoll::new() else { return };
        for (fd, token) in [
            (self.doorbell.as_raw_fd(), DOORBELL),
            (self.stop.as_raw_fd(), STOP),
        ] {
            if epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .is_err()
            {
                return;
            }
        }
        let mut events = vec![EpollEvent::default(); 2];
        let timeout = POLL.as_millis() as i32;
        while !self.done() {
            match epoll.wait(timeout, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            let _ = self.doorbell.read();
            self.serve_pending();
        }
    }

    /// Serves every signalled channel until none has work left (each round bounded, so one
    /// busy channel cannot starve the others).
    fn serve_pending(&self) {
        loop {
            let pending = self.bus.take_pending();
            if pending.is_empty() || self.done() {
                return;
            }
            for channel in pending {
                match self.bus.serve(&self.mem, channel) {
                    Ok(s) => {
                        self.signals.served(&s);
                        if s.signal_guest {
                            self.signals.channel_event(channel);
                        }
                        if s.more {
                            self.bus.repend(channel);
                        }
                    }
                    // Closed between the signal and now (the guest reopened or hv closed it).
                    Err(ChannelError::NotOpen) => {}
                    Err(ChannelError::Ring(e)) => {
                        self.signals.ring_error(channel, e);
                        self.signals.management(words_to_bytes(&[
                            proto::CHANNEL_CLOSED,
                            channel,
                            closed_reason(e),
                        ]));
                    }
                }
            }
        }
    }
}
