//! The channel worker: one thread per partition that serves its VMBus-style channels, as a
//! virtio device's worker serves its queues. It sleeps in epoll on its doorbell (written by a
//! vCPU thread when the guest signals a channel), serves each signalled channel a bounded round
//! at a time, and tells the guest what happened through [`GuestSignals`]: a channel event when
//! the ring protocol asks for one, a CHANNEL_CLOSED message when the guest broke a ring.
//!
//! It runs under the partition's seccomp filter for channel workers (the device worker's list
//! plus KVM_SIGNAL_MSI, which raises the SynIC interrupt) and ends within [`POLL`] of its
//! partition's end, or at once when its handle drops (which waits for it).

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
    /// Posts the CHANNEL_CLOSED management message with `payload` to the guest.
    fn closed_notice(&self, payload: Vec<u8>);
    /// Counts one round's work.
    fn served(&self, s: &Served);
    /// Counts and notes a ring error that closed `channel`.
    fn ring_error(&self, channel: u32, e: RingError);
    /// True once the partition has ended.
    fn stopping(&self) -> bool;
}

/// How long dropping the handle waits for the worker to end (a round in progress finishes
/// first; past this the thread is left to end on its own, within a round and [`POLL`]).
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// Stops the worker when dropped and waits (at most [`STOP_WAIT`]) until it has ended, so
/// that the partition's guest memory and VM are released with the partition.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: EventFd,
    stopped: Arc<AtomicBool>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        // The sender drops when the thread ends, however it ends.
        let _ = self.ended.recv_timeout(STOP_WAIT);
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
    let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("vmbus-worker".into())
        .spawn(move || {
            let _ended = ended_tx;
            seccomp::install(ThreadKind::ChannelWorker, &filter);
            let _ = clock_tx.send(ThreadClock::current());
            worker.run();
        })
        .map_err(|e| HvError::Thread(e.to_string()))?;
    let clock = clock_rx.recv().ok().flatten();
    Ok((
        WorkerHandle {
            stop,
            stopped,
            ended,
        },
        clock,
    ))
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
                        self.signals.closed_notice(words_to_bytes(&[
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::vmbus::ring::{CONTROL, Packet, Ring};

    #[derive(Default)]
    struct Seen {
        events: Mutex<Vec<u32>>,
        messages: Mutex<Vec<Vec<u8>>>,
        packets: std::sync::atomic::AtomicU64,
    }

    impl GuestSignals for Seen {
        fn channel_event(&self, channel: u32) {
            self.events.lock().unwrap().push(channel);
        }
        fn closed_notice(&self, payload: Vec<u8>) {
            self.messages.lock().unwrap().push(payload);
        }
        fn served(&self, s: &Served) {
            self.packets.fetch_add(s.packets, Ordering::SeqCst);
        }
        fn ring_error(&self, _: u32, _: RingError) {}
        fn stopping(&self) -> bool {
            false
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A signal wakes the worker, which echoes and raises the channel event; a broken ring
    /// brings a CHANNEL_CLOSED notice; dropping the handle ends the thread.
    #[test]
    fn the_worker_serves_signals_reports_closes_and_stops() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let bus = Arc::new(Vmbus::new());
        let open = words_to_bytes(&[proto::OPEN, 1, 0x20000, 0, 2, 2]);
        bus.on_message(&mem, &open).unwrap();
        let seen = Arc::new(Seen::default());
        let (handle, clock) = start(
            bus.clone(),
            mem.clone(),
            seen.clone(),
            seccomp::Target::none("test"),
        )
        .unwrap();
        assert!(clock.is_some());
        let out = Ring::new(&mem, 0x20000, 2 * CONTROL).unwrap();
        let p = Packet {
            kind: proto::PACKET_DATA,
            flags: 0,
            transaction: 3,
            payload: vec![1; 8],
        };
        out.write(&mem, &p).unwrap().unwrap();
        bus.signal(1).unwrap();
        wait_for("no channel event", || {
            !seen.events.lock().unwrap().is_empty()
        });
        assert_eq!(seen.packets.load(Ordering::SeqCst), 1);
        assert_eq!(*seen.events.lock().unwrap(), vec![1]);
        // An unaligned write index: the worker closes the channel and says why.
        mem.write_obj(12u32, GuestAddress(0x20000)).unwrap();
        bus.signal(1).unwrap();
        wait_for("no CHANNEL_CLOSED", || {
            !seen.messages.lock().unwrap().is_empty()
        });
        assert_eq!(
            seen.messages.lock().unwrap()[0],
            words_to_bytes(&[proto::CHANNEL_CLOSED, 1, proto::CLOSED_BAD_INDEX])
        );
        assert_eq!(bus.signal(1), Err(ChannelError::NotOpen));
        // Dropping the handle waits for the thread: its Arc of the bus is gone after.
        drop(handle);
        wait_for("worker still holds the bus", || {
            Arc::strong_count(&bus) == 1
        });
    }
}
