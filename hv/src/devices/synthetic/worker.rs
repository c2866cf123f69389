//! The device worker: one thread per device that sleeps in epoll on the queues' doorbells
//! (ioeventfds), a wake eventfd (register writes that need the worker) and a stop eventfd, and
//! serves the queues in bounded passes; in polling mode it keeps polling the available rings
//! for [`POLL_WINDOW`] after its last request before it sleeps again.
//!
//! Stopping always wins: the stop flag is checked between every two service passes and on
//! every turn of the poll loop, and the state lock is released between passes, so a vCPU's
//! register access and the run's teardown wait at most one bounded pass. [`WorkerHandle`]'s
//! drop waits [`JOIN_TIMEOUT`] for the thread and then detaches it with a note rather than
//! block its caller (a backend stuck in a host system call cannot hang the run's end).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::transport::lock;
use super::{DeviceState, VirtioMmio, reg};
use crate::counters::cputime::ThreadClock;
use crate::devices::NoteSink;
use crate::error::HvError;
use crate::isolation::seccomp::{self, ThreadKind};

/// How long a polling worker keeps polling after its last request.
pub const POLL_WINDOW: Duration = Duration::from_millis(20);
/// How long dropping a [`WorkerHandle`] waits for the worker thread before detaching it.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Chains the worker takes from one queue in one pass (one hold of the state lock): the
/// largest queue depth the workloads use, so that a batch is still served in one pass, while a
/// full 256-entry ring of 4 MiB requests is split into several holds with stop checks between.
pub const PASS_CHAINS: u16 = 64;
/// How long the worker waits, between two passes, for vCPUs that want the state lock.
const HANDOFF: Duration = Duration::from_millis(2);

/// Stops and joins the worker when the partition's run ends.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    /// The worker thread and a channel its thread closes when it exits (even by unwinding),
    /// so that drop can wait for it with a timeout.
    thread: Option<(JoinHandle<()>, Receiver<()>)>,
    state: Arc<Mutex<DeviceState>>,
    name: String,
    notes: NoteSink,
}

impl WorkerHandle {
    /// The device state (tests read the status and counters).
    pub fn state(&self) -> &Arc<Mutex<DeviceState>> {
        &self.state
    }

    /// Tells the worker to stop; it does so at its next check (between service passes, in the
    /// poll loop, or at once from epoll). Does not wait.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.request_stop();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        if let Some((t, exited)) = self.thread.take() {
            if let Err(RecvTimeoutError::Disconnected) = exited.recv_timeout(JOIN_TIMEOUT) {
                let _ = t.join();
            } else {
                // Dropping the handle detaches the thread; it exits at its next stop check.
                self.notes.note(format!(
                    "{}: worker did not stop within {} ms; detached",
                    self.name,
                    JOIN_TIMEOUT.as_millis()
                ));
            }
        }
        // The summary needs the state lock, which a stuck worker may hold: try, don't block.
        loop {
            match self.state.try_lock() {
                Ok(s) => break s.notes.note(s.summary()),
                Err(TryLockError::Poisoned(p)) => {
                    let s = p.into_inner();
                    break s.notes.note(s.summary());
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => {
                    break self.notes.note(format!(
                        "{}: device state still locked at teardown; no counters",
                        self.name
                    ));
                }
            }
        }
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
/// per queue on QueueNotify and an irqfd, and starts the worker thread, which filters itself
/// with `filter` (its partition's seccomp target) before it touches guest data.
pub fn create(
    vm: &VmFd,
    name: &str,
    base: u64,
    gsi: u32,
    state: DeviceState,
    irq: &EventFd,
    filter: seccomp::Target,
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
    let stopping = Arc::new(AtomicBool::new(false));
    let polling = state.tuning.polling;
    let notes = state.notes.clone();
    let state = Arc::new(Mutex::new(state));
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let waiting = Arc::new(AtomicU32::new(0));
    let worker = Worker {
        state: state.clone(),
        waiting: waiting.clone(),
        doorbells,
        wake: wake.try_clone().map_err(setup)?,
        stop: stop.try_clone().map_err(setup)?,
        stopping: stopping.clone(),
        polling,
    };
    let thread = std::thread::Builder::new()
        .name(format!("{name}-worker"))
        .spawn(move || {
            seccomp::install(ThreadKind::Worker, &filter);
            // Dropped when the thread ends, however it ends: WorkerHandle's drop waits for that.
            let _exit = exit_tx;
            let _ = clock_tx.send(ThreadClock::current());
            worker.run();
        })
        .map_err(|e| HvError::Thread(e.to_string()))?;
    let clock = clock_rx.recv().ok().flatten();
    Ok(Attached {
        bus_device: Arc::new(Mutex::new(VirtioMmio {
            state: state.clone(),
            wake,
            waiting,
        })),
        worker: WorkerHandle {
            stop,
            stopping,
            thread: Some((thread, exit_rx)),
            state,
            name: name.to_string(),
            notes,
        },
        clock,
    })
}

struct Worker {
    state: Arc<Mutex<DeviceState>>,
    /// vCPUs waiting for the state lock (see [`VirtioMmio`]).
    waiting: Arc<AtomicU32>,
    doorbells: Vec<EventFd>,
    wake: EventFd,
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    polling: bool,
}

const STOP_TOKEN: u64 = u64::MAX;
/// Rounds the worker looks again without sleeping in epoll before it sleeps anyway (with
/// notifications on, so a doorbell still wakes it).
const MAX_AGAIN: u32 = 8;
const WAKE_TOKEN: u64 = u64::MAX - 1;

impl Worker {
    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

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
        // Rounds in a row that looked again without sleeping because re-enabling
        // notifications found work; bounded so that no guest can keep the worker from epoll.
        let mut again = 0;
        loop {
            if self.stopped() {
                return;
            }
            if again == 0 || again > MAX_AGAIN {
                again = 0;
                // No lock is held here: this is the one place the worker blocks.
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
                let mut s = lock(&self.state);
                s.stats.doorbells += kicks;
                s.stats.wakeups += 1;
            }
            let Some(served) = self.serve_until_idle() else {
                return;
            };
            if !self.polling {
                // The service loop re-enabled notifications before it found the rings empty.
                again = 0;
                continue;
            }
            // Polling passes leave notifications off; they go back on before the worker
            // sleeps, and work that arrived meanwhile is served first.
            let more = if served > 0 {
                match self.poll() {
                    Polled::Stop => return,
                    Polled::Idle => false,
                    Polled::More => true,
                }
            } else {
                lock(&self.state).stop_polling()
            };
            again = if more { again + 1 } else { 0 };
        }
    }

    /// Runs service passes until one finds nothing more to do, taking the lock for one pass
    /// at a time. Returns the chains completed, or None when asked to stop meanwhile.
    fn serve_until_idle(&self) -> Option<u64> {
        let mut total = 0;
        loop {
            if self.stopped() {
                return None;
            }
            let pass = lock(&self.state).serve_pass_limited(PASS_CHAINS);
            total += pass.served;
            if !pass.more {
                return Some(total);
            }
            self.let_waiters_in();
        }
    }

    /// Lets vCPUs that wait for the state lock take it before the next pass (std's mutex is
    /// not fair: re-locking at once could starve a register access for as long as the guest
    /// keeps a ring busy). Waits at most [`HANDOFF`].
    fn let_waiters_in(&self) {
        let t0 = Instant::now();
        while self.waiting.load(Ordering::Acquire) > 0 && t0.elapsed() < HANDOFF {
            std::thread::yield_now();
        }
    }

    /// Polls the available rings with notifications suppressed until [`POLL_WINDOW`] passes
    /// without work, then re-enables notifications.
    fn poll(&self) -> Polled {
        let mut last_work = Instant::now();
        loop {
            if self.stopped() {
                return Polled::Stop;
            }
            let mut s = lock(&self.state);
            if s.pending() {
                let n = s.serve_pass_limited(PASS_CHAINS).served;
                if n > 0 {
                    s.stats.poll_hits += n;
                    last_work = Instant::now();
                }
            } else if last_work.elapsed() >= POLL_WINDOW {
                return if s.stop_polling() {
                    Polled::More
                } else {
                    Polled::Idle
                };
            }
            drop(s);
            // Yield rather than spin hard: on an oversubscribed host the vCPU needs the core.
            std::thread::yield_now();
            self.let_waiters_in();
        }
    }
}

/// How a polling window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// Asked to stop.
    Stop,
    /// Notifications are on again and the rings were empty.
    Idle,
    /// Notifications are on again but work arrived meanwhile: serve before sleeping.
    More,
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::super::chain::Chain;
    use super::super::testing::drive_to_ready;
    use super::super::{Served, Tuning, VirtioBackend};
    use super::*;
    use crate::bus::BusDevice;

    /// A driver that never runs out of work: serving a chain publishes it again (avail index
    /// at 0x2002, every avail entry names descriptor 0).
    #[derive(Debug)]
    struct Endless;

    impl VirtioBackend for Endless {
        fn device_id(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            0
        }
        fn queues(&self) -> usize {
            1
        }
        fn config(&self) -> Vec<u8> {
            Vec::new()
        }
        fn serve(&mut self, _queue: usize, mem: &GuestMemoryMmap, _chain: &Chain) -> Served {
            let idx: u16 = mem.read_obj(GuestAddress(0x2002)).unwrap_or(0);
            let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(0x2002));
            Served::Used(0)
        }
    }

    /// The state lock within 5 s, or a failed test (a worker that never lets go of it). Counts
    /// itself in `waiting`, as a vCPU's register access does.
    /// A worker over `state` without doorbells, and the handles a test drives it with.
    struct Harness {
        worker: Worker,
        wake: EventFd,
        stop: EventFd,
        stopping: Arc<AtomicBool>,
        waiting: Arc<AtomicU32>,
    }

    fn harness(state: &Arc<Mutex<DeviceState>>, polling: bool) -> Harness {
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicU32::new(0));
        let worker = Worker {
            state: state.clone(),
            waiting: waiting.clone(),
            doorbells: Vec::new(),
            wake: wake.try_clone().unwrap(),
            stop: stop.try_clone().unwrap(),
            stopping: stopping.clone(),
            polling,
        };
        Harness {
            worker,
            wake,
            stop,
            stopping,
            waiting,
        }
    }

    fn within<'a>(
        state: &'a Mutex<DeviceState>,
        waiting: &AtomicU32,
    ) -> std::sync::MutexGuard<'a, DeviceState> {
        waiting.fetch_add(1, Ordering::AcqRel);
        let t0 = Instant::now();
        let g = loop {
            match state.try_lock() {
                Ok(g) => break g,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(5),
                        "the worker held the state lock for 5 s"
                    );
                    std::thread::yield_now();
                }
            }
        };
        waiting.fetch_sub(1, Ordering::AcqRel);
        g
    }

    /// The worker checks for stop inside its service loop: with a ring that is never empty it
    /// lets go of the state lock between passes (a register access and a reset get in), and
    /// it stops promptly when asked.
    #[test]
    fn a_worker_with_endless_work_takes_a_reset_and_stops_when_asked() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let notes = NoteSink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let tuning = Tuning {
            event_idx: true,
            polling: false,
        };
        let mut s = DeviceState::new(
            "endless",
            Box::new(Endless),
            mem.clone(),
            irq,
            notes,
            tuning,
        )
        .unwrap();
        drive_to_ready(&mut s);
        // Descriptor 0: 16 readable bytes at 0x8000; one entry published.
        mem.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(16u32, GuestAddress(0x1008)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        assert!(s.live());
        let state = Arc::new(Mutex::new(s));
        let Harness {
            worker,
            wake,
            stop,
            stopping,
            waiting,
        } = harness(&state, false);
        let mut mmio = VirtioMmio {
            state: state.clone(),
            wake: wake.try_clone().unwrap(),
            waiting: waiting.clone(),
        };
        let t = std::thread::spawn(move || worker.run());
        wake.write(1).unwrap();
        let t0 = Instant::now();
        while within(&state, &waiting).stats.chains < 1000 && t0.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            within(&state, &waiting).stats.chains >= 1000,
            "the worker did not serve"
        );
        // The worker is busy for good, yet a vCPU's register accesses get the lock; the reset
        // lands between two passes, and the worker serves no more after it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4];
            let t0 = Instant::now();
            for _ in 0..100 {
                mmio.read(reg::STATUS, &mut b);
            }
            // Not asserted (timings depend on the host); shown with --nocapture.
            eprintln!(
                "100 register reads beside a busy worker: {:?}",
                t0.elapsed()
            );
            mmio.write(reg::INTERRUPT_ACK, &1u32.to_le_bytes());
            mmio.write(reg::STATUS, &0u32.to_le_bytes());
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("register accesses waited 5 s for the state lock");
        let chains = within(&state, &waiting).stats.chains;
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            within(&state, &waiting).stats.chains,
            chains,
            "served after reset"
        );
        assert_eq!(within(&state, &waiting).status(), 0);
        stopping.store(true, Ordering::Release);
        stop.write(1).unwrap();
        let t0 = Instant::now();
        while !t.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            t.is_finished(),
            "the worker did not stop inside its service loop"
        );
        t.join().unwrap();
    }

    /// A polling worker (without EVENT_IDX, so notifications are the used ring's NO_NOTIFY
    /// flag) that was woken with nothing to do must not sleep with notifications off: the
    /// driver would never notify again and its requests would wait for ever.
    #[test]
    fn a_polling_worker_never_sleeps_with_notifications_off() {
        let (s, _notes) = super::super::testing::blk_state_tuned(
            1 << 20,
            Tuning {
                event_idx: false,
                polling: true,
            },
        );
        let mut s = s;
        super::super::testing::drive_to_ready(&mut s);
        assert!(s.live());
        let mem = s.mem.clone();
        let state = Arc::new(Mutex::new(s));
        let Harness {
            worker,
            wake,
            stop,
            stopping,
            waiting,
        } = harness(&state, true);
        let t = std::thread::spawn(move || worker.run());
        // A wake with an empty ring (as QUEUE_READY or DRIVER_OK causes).
        wake.write(1).unwrap();
        let t0 = Instant::now();
        while within(&state, &waiting).stats.wakeups == 0 && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Past any polling window: the worker is asleep in epoll now.
        std::thread::sleep(POLL_WINDOW * 5);
        let flags: u16 = mem.read_obj(GuestAddress(0x3000)).unwrap();
        stopping.store(true, Ordering::Release);
        stop.write(1).unwrap();
        t.join().unwrap();
        assert_eq!(
            flags & 1,
            0,
            "the worker sleeps with VRING_USED_F_NO_NOTIFY set"
        );
    }

    /// A worker that never stops (a backend stuck in a host call) must not hang the drop.
    #[test]
    fn drop_detaches_a_worker_that_does_not_stop() {
        let (s, notes) = super::super::testing::blk_state(1 << 20);
        let state = Arc::new(Mutex::new(s));
        let stuck = state.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _exit = exit_tx;
            let _held = lock(&stuck);
            let _ = locked_tx.send(());
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
        });
        locked_rx.recv().unwrap();
        let handle = WorkerHandle {
            stop: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            stopping: Arc::new(AtomicBool::new(false)),
            thread: Some((thread, exit_rx)),
            state,
            name: "virtio-blk".into(),
            notes: notes.clone(),
        };
        let t0 = Instant::now();
        drop(handle);
        let took = t0.elapsed();
        let _ = release_tx.send(());
        assert!(took < JOIN_TIMEOUT * 5, "drop took {took:?}");
        let n = notes.snapshot();
        assert!(n.iter().any(|n| n.contains("detached")), "{n:?}");
        assert!(n.iter().any(|n| n.contains("still locked")), "{n:?}");
    }

    /// A worker that stops at once is joined at once (no polling delay at teardown), and its
    /// counters reach the notes.
    #[test]
    fn drop_joins_a_worker_that_stops() {
        let (s, notes) = super::super::testing::blk_state(1 << 20);
        let state = Arc::new(Mutex::new(s));
        let stopping = Arc::new(AtomicBool::new(false));
        let seen = stopping.clone();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _exit = exit_tx;
            while !seen.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        });
        let handle = WorkerHandle {
            stop: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            stopping,
            thread: Some((thread, exit_rx)),
            state,
            name: "virtio-blk".into(),
            notes: notes.clone(),
        };
        let t0 = Instant::now();
        drop(handle);
        let took = t0.elapsed();
        assert!(took < JOIN_TIMEOUT / 2, "drop took {took:?}");
        let n = notes.snapshot();
        assert!(!n.iter().any(|n| n.contains("detached")), "{n:?}");
        assert!(n.iter().any(|n| n.contains("chains=0")), "{n:?}");
    }
}
