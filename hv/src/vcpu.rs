//! vCPU threads: the run loop and exit dispatch.
//!
//! Each vCPU runs on its own thread. Exits go to the PIO or MMIO bus by address; every exit is
//! counted before the guest resumes. Stopping a run is race-free: the stopper sets the stop
//! flag, then signals each vCPU thread; the signal handler sets `immediate_exit` in that
//! thread's own `kvm_run`, so a vCPU about to enter KVM_RUN returns at once and one inside it
//! returns with EINTR.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use hvlab_protocol::PHASE_END;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::{Bus, DeviceAction};
use crate::counters::exits::BusKind;
use crate::counters::{ExitReason, Meter, VcpuExitCounters};
use crate::enlightenments::EnlightenmentHost;
use crate::isolation::seccomp::Monitor;
use crate::limits::MMIO_LOG_LIMIT;
use crate::status::RunStatus;

/// What happens on an access to an address no device claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnmappedPolicy {
    /// Count it, note it once per address, read all ones, and go on (what a PC bus does).
    #[default]
    Ignore,
    /// End the run.
    Fatal,
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler. Const-initialised and without a
    /// destructor, so reading it in a signal handler is a plain TLS load.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: a non-null pointer is this thread's own kvm_run mapping: `KvmRunGuard` sets
        // it while the thread's VcpuFd is alive and clears it (also on unwind) before the fd
        // is dropped. The write goes through a raw pointer (no `&mut` that could alias the
        // run loop's own borrow of `kvm_run`); a volatile u8 store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// Publishes this thread's `kvm_run` to the kick handler while it lives; clears it on drop,
/// including when the run loop unwinds, so the handler never sees a dangling mapping.
struct KvmRunGuard;

impl KvmRunGuard {
    fn set(run: *mut kvm_run) -> KvmRunGuard {
        KVM_RUN.with(|r| r.set(run));
        KvmRunGuard
    }
}

impl Drop for KvmRunGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }
}

pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

fn install_kick_handler() -> Result<(), String> {
    static INSTALL: Once = Once::new();
    static FAILED: AtomicBool = AtomicBool::new(false);
    INSTALL.call_once(|| {
        if vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).is_err() {
            FAILED.store(true, Ordering::Relaxed);
        }
    });
    if FAILED.load(Ordering::Relaxed) {
        Err("cannot install the vCPU kick signal handler".into())
    } else {
        Ok(())
    }
}

/// One vCPU thread's entry in [`RunControl`]'s list.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Set by the thread itself when it starts, cleared by it before it exits: signals go only
    /// to threads listed here, under the list's lock, so never to an exited (or joined) thread.
    pthread: Option<libc::pthread_t>,
    /// The thread has left (or never started): `wait` may join it without blocking.
    exited: bool,
}

/// Shared stop/status state of one partition's run.
#[derive(Debug)]
pub struct RunControl {
    stop: AtomicBool,
    status: Mutex<Option<RunStatus>>,
    done: Condvar,
    threads: Mutex<Vec<Slot>>,
    /// Notified each time a vCPU thread leaves.
    left: Condvar,
    /// The partition's seccomp filters: a refused call ends the run (checked after every exit
    /// and while waiting).
    seccomp: Arc<Monitor>,
}

/// How often `wait` looks for a seccomp violation of a device worker (vCPUs see their own
/// after the exit that caused it).
const SECCOMP_POLL: Duration = Duration::from_millis(10);

/// Held by a vCPU thread from its first instruction: lists the thread for signals and, when
/// dropped (normal exit or unwind), unlists it and reports that it left.
pub(crate) struct ThreadSlot {
    control: Arc<RunControl>,
    index: usize,
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        let mut t = self.control.lock_threads();
        if let Some(s) = t.get_mut(self.index) {
            s.pthread = None;
            s.exited = true;
        }
        self.control.left.notify_all();
    }
}

impl RunControl {
    /// Control for a partition with `vcpus` vCPU threads.
    pub(crate) fn new(vcpus: usize, seccomp: Arc<Monitor>) -> Result<RunControl, String> {
        install_kick_handler()?;
        Ok(RunControl {
            stop: AtomicBool::new(false),
            status: Mutex::new(None),
            done: Condvar::new(),
            threads: Mutex::new(vec![Slot::default(); vcpus]),
            left: Condvar::new(),
            seccomp,
        })
    }

    /// The partition's seccomp monitor.
    pub(crate) fn seccomp(&self) -> &Arc<Monitor> {
        &self.seccomp
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called first thing on vCPU thread `index`: lists it for kicks until the returned
    /// guard drops.
    pub(crate) fn enter_thread(self: &Arc<Self>, index: usize) -> ThreadSlot {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if let Some(s) = self.lock_threads().get_mut(index) {
            s.pthread = Some(me);
        }
        ThreadSlot {
            control: self.clone(),
            index,
        }
    }

    /// Marks vCPU thread `index` as gone without it having run (its spawn failed).
    pub(crate) fn never_started(&self, index: usize) {
        if let Some(s) = self.lock_threads().get_mut(index) {
            s.exited = true;
        }
    }

    /// Sends the kick signal to vCPU thread `index` if it is still listed. Call with the list
    /// locked.
    fn signal(threads: &[Slot], index: usize) {
        if let Some(t) = threads.get(index).and_then(|s| s.pthread) {
            // SAFETY: `t` is listed, and a thread unlists itself (under this lock, which the
            // caller holds) before it exits, so `t` names a live thread: it has not exited,
            // so it cannot have been joined or its id reused.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// True once the run has an outcome.
    #[inline]
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Ends the run with `status` (the first outcome wins) and kicks every vCPU out of the guest.
    pub fn finish(&self, status: RunStatus) {
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(status);
            }
            self.stop.store(true, Ordering::SeqCst);
            self.done.notify_all();
        }
        let threads = self.lock_threads();
        for i in 0..threads.len() {
            Self::signal(&threads, i);
        }
    }

    /// Kicks vCPU `index` (start order) out of KVM_RUN without ending the run: its loop sees
    /// an EINTR and goes round again (enlightenments use this to act before it re-enters).
    pub(crate) fn kick(&self, index: usize) {
        Self::signal(&self.lock_threads(), index);
    }

    /// Waits for an outcome until `deadline`; past it, ends the run as timed out. Takes only
    /// this control's own status lock, never a device's, so a stuck device cannot delay it.
    pub fn wait(&self, deadline: Instant, limit: Duration) -> RunStatus {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(st) = s.as_ref() {
                return st.clone();
            }
            if let Some(v) = self.seccomp.violation() {
                drop(s);
                self.finish(v);
                s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(s);
                self.finish(RunStatus::Timeout(limit));
                s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            s = self
                .done
                .wait_timeout(s, (deadline - now).min(SECCOMP_POLL))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// After the run has ended: waits until every vCPU thread has left or `until` passes, and
    /// returns the indexes of those still inside (stuck, e.g. on a device lock).
    pub(crate) fn wait_threads_left(&self, until: Instant) -> Vec<usize> {
        let mut t = self.lock_threads();
        loop {
            let stuck: Vec<usize> = t
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.exited)
                .map(|(i, _)| i)
                .collect();
            let now = Instant::now();
            if stuck.is_empty() || now >= until {
                return stuck;
            }
            t = self
                .left
                .wait_timeout(t, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Set by the partition for each vCPU thread.
pub(crate) struct VcpuRunner {
    pub index: u32,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub counters: Arc<VcpuExitCounters>,
    pub meter: Arc<Meter>,
    pub control: Arc<RunControl>,
    pub unmapped: UnmappedPolicy,
    pub unmapped_log: Arc<UnmappedLog>,
    pub max_exits: Option<u64>,
    /// Enlightenment runtime (hv's hypercall MSR, TLB flushes before entry); `None` = off.
    pub enlightenments: Option<Arc<EnlightenmentHost>>,
    /// Where to leave the registers when the thread leaves the guest (`None`: not asked for).
    pub exit_regs: Option<Arc<ExitRegs>>,
}

/// Each vCPU's registers as its thread left the guest (`Partition::record_exit_regs`): where
/// a vCPU that the run's end pulled out of KVM_RUN stood, e.g. a host probe's hypercall
/// instruction that never completed.
#[derive(Debug)]
pub struct ExitRegs(Mutex<Vec<Option<kvm_bindings::kvm_regs>>>);

impl ExitRegs {
    pub(crate) fn new(vcpus: usize) -> ExitRegs {
        ExitRegs(Mutex::new(vec![None; vcpus]))
    }

    /// vCPU `index`'s registers when its thread left (`None`: still running, never ran, or
    /// KVM_GET_REGS failed).
    pub fn get(&self, index: usize) -> Option<kvm_bindings::kvm_regs> {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.get(index).copied().flatten()
    }

    fn set(&self, index: usize, regs: Option<kvm_bindings::kvm_regs>) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = r.get_mut(index) {
            *slot = regs;
        }
    }
}

/// Remembers which unmapped addresses were already reported, so a flooding guest produces
/// one note per address, not one per access (and the meter caps the notes themselves).
#[derive(Debug)]
pub struct UnmappedLog {
    ports: Box<[AtomicU64]>,
    mmio: Mutex<HashSet<u64>>,
}

impl Default for UnmappedLog {
    fn default() -> Self {
        UnmappedLog {
            ports: (0..1024).map(|_| AtomicU64::new(0)).collect(),
            mmio: Mutex::default(),
        }
    }
}

impl UnmappedLog {
    /// True the first time `port` is seen.
    fn first_port(&self, port: u16) -> bool {
        let bit = 1u64 << (port % 64);
        self.ports[usize::from(port / 64)].fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// True the first time `addr` is seen (up to a bound).
    fn first_mmio(&self, addr: u64) -> bool {
        let mut seen = self.mmio.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MMIO_LOG_LIMIT {
            return false;
        }
        seen.insert(addr)
    }
}

impl VcpuRunner {
    /// Handles a phase marker so that the marker exits themselves fall outside the phase:
    /// a begin is counted before the snapshot, an end after it.
    fn phase_marker(&self, value: u32, slot: usize) {
        let id = value & !PHASE_END;
        if value & PHASE_END != 0 {
            self.meter.phase_end(id);
            self.counters
                .count_bus(ExitReason::IoOut, BusKind::Pio, Some(slot));
        } else {
            self.counters
                .count_bus(ExitReason::IoOut, BusKind::Pio, Some(slot));
            self.meter.phase_begin(id);
        }
    }

    fn unmapped(&self, what: String, first: bool) -> Option<RunStatus> {
        match self.unmapped {
            UnmappedPolicy::Fatal => Some(RunStatus::UnmappedAccess {
                vcpu: self.index,
                what,
            }),
            UnmappedPolicy::Ignore => {
                if first {
                    self.meter.note(format!(
                        "{what}: no device (ignored; noted once per address)"
                    ));
                }
                None
            }
        }
    }

    /// Runs the guest until the partition's run ends. Never panics on guest behaviour.
    pub fn run(mut self) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        // Dropped before `self.fd` (locals drop before parameters), also on unwind.
        let _kvm_run = KvmRunGuard::set(run_ptr);
        // Userspace exits so far (KVM_RUN returning an exit), for `max_exits`: EINTR and
        // EAGAIN returns are not exits (kicks and signals cause them).
        let mut exits: u64 = 0;
        let entry_hooks = self
            .enlightenments
            .clone()
            .filter(|e| e.needs_entry_hooks());
        let outcome = loop {
            if self.control.stopping() {
                break None;
            }
            // A call refused by this partition's seccomp filters (on any of its threads).
            if let Some(v) = self.control.seccomp.violation() {
                break Some(v);
            }
            if let Some(limit) = self.max_exits {
                if exits >= limit {
                    break Some(RunStatus::ExitLimit(limit));
                }
            }
            let index = self.index;
            // Enlightenments: a pending TLB flush happens here, before the guest runs again.
            if let Some(e) = &entry_hooks {
                e.before_entry(index, &mut self.fd);
            }
            let result = self.fd.run();
            if let Some(e) = &entry_hooks {
                e.after_exit(index);
            }
            if result.is_ok() {
                exits += 1;
            }
            let stop = match result {
                Ok(exit) => match exit {
                    VcpuExit::IoOut(port, data) => match self.pio.lookup(u64::from(port)) {
                        Some(hit) => match hit.write(data) {
                            DeviceAction::None => {
                                self.counters.count_bus(
                                    ExitReason::IoOut,
                                    BusKind::Pio,
                                    Some(hit.slot),
                                );
                                None
                            }
                            DeviceAction::Phase(v) => {
                                self.phase_marker(v, hit.slot);
                                None
                            }
                            DeviceAction::Exit(code) => {
                                self.counters.count_bus(
                                    ExitReason::IoOut,
                                    BusKind::Pio,
                                    Some(hit.slot),
                                );
                                Some(RunStatus::GuestExit(code))
                            }
                            DeviceAction::Reset => {
                                self.counters.count_bus(
                                    ExitReason::IoOut,
                                    BusKind::Pio,
                                    Some(hit.slot),
                                );
                                Some(RunStatus::GuestReset { vcpu: index })
                            }
                        },
                        None => {
                            self.counters
                                .count_bus(ExitReason::IoOut, BusKind::Pio, None);
                            let first = self.unmapped_log.first_port(port);
                            self.unmapped(format!("PIO write to port {port:#x}"), first)
                        }
                    },
                    VcpuExit::IoIn(port, data) => match self.pio.lookup(u64::from(port)) {
                        Some(hit) => {
                            hit.read(data);
                            self.counters
                                .count_bus(ExitReason::IoIn, BusKind::Pio, Some(hit.slot));
                            None
                        }
                        None => {
                            data.fill(0xff);
                            self.counters
                                .count_bus(ExitReason::IoIn, BusKind::Pio, None);
                            let first = self.unmapped_log.first_port(port);
                            self.unmapped(format!("PIO read from port {port:#x}"), first)
                        }
                    },
                    VcpuExit::MmioWrite(addr, data) => match self.mmio.lookup(addr) {
                        Some(hit) => {
                            let action = hit.write(data);
                            self.counters.count_bus(
                                ExitReason::MmioWrite,
                                BusKind::Mmio,
                                Some(hit.slot),
                            );
                            match action {
                                DeviceAction::Exit(code) => Some(RunStatus::GuestExit(code)),
                                _ => None,
                            }
                        }
                        None => {
                            self.counters
                                .count_bus(ExitReason::MmioWrite, BusKind::Mmio, None);
                            let first = self.unmapped_log.first_mmio(addr);
                            self.unmapped(format!("MMIO write to {addr:#x}"), first)
                        }
                    },
                    VcpuExit::MmioRead(addr, data) => match self.mmio.lookup(addr) {
                        Some(hit) => {
                            hit.read(data);
                            self.counters.count_bus(
                                ExitReason::MmioRead,
                                BusKind::Mmio,
                                Some(hit.slot),
                            );
                            None
                        }
                        None => {
                            data.fill(0xff);
                            self.counters
                                .count_bus(ExitReason::MmioRead, BusKind::Mmio, None);
                            let first = self.unmapped_log.first_mmio(addr);
                            self.unmapped(format!("MMIO read from {addr:#x}"), first)
                        }
                    },
                    VcpuExit::Hlt => {
                        self.counters.count(ExitReason::Hlt);
                        Some(RunStatus::Halted { vcpu: index })
                    }
                    VcpuExit::IrqWindowOpen => {
                        self.counters.count(ExitReason::IrqWindow);
                        None
                    }
                    VcpuExit::Shutdown => {
                        self.counters.count(ExitReason::Shutdown);
                        Some(RunStatus::TripleFault { vcpu: index })
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        self.counters.count(ExitReason::SystemEvent);
                        Some(RunStatus::UnhandledExit {
                            vcpu: index,
                            what: format!("system event {kind}"),
                        })
                    }
                    VcpuExit::InternalError => {
                        self.counters.count(ExitReason::InternalError);
                        Some(RunStatus::InternalError {
                            vcpu: index,
                            suberror: 0,
                        })
                    }
                    VcpuExit::FailEntry(reason, _) => {
                        self.counters.count(ExitReason::FailEntry);
                        Some(RunStatus::FailEntry {
                            vcpu: index,
                            reason,
                        })
                    }
                    // MSR accesses hv filters to userspace: hv's hypercall MSR (enlightenments).
                    // Anything hv does not serve gets a #GP, as a missing MSR would.
                    VcpuExit::X86Rdmsr(exit) => {
                        self.counters.count(ExitReason::MsrRead);
                        let v = self
                            .enlightenments
                            .as_ref()
                            .and_then(|e| e.on_rdmsr(index, exit.index));
                        *exit.data = v.unwrap_or(0);
                        *exit.error = u8::from(v.is_none());
                        None
                    }
                    VcpuExit::X86Wrmsr(exit) => {
                        self.counters.count(ExitReason::MsrWrite);
                        let ok = self
                            .enlightenments
                            .as_ref()
                            .is_some_and(|e| e.on_wrmsr(index, exit.index, exit.data));
                        *exit.error = u8::from(!ok);
                        None
                    }
                    VcpuExit::Hypercall(_) => {
                        self.counters.count(ExitReason::Hypercall);
                        Some(RunStatus::UnhandledExit {
                            vcpu: index,
                            what: "hypercall".into(),
                        })
                    }
                    other => {
                        self.counters.count(ExitReason::Other);
                        Some(RunStatus::UnhandledExit {
                            vcpu: index,
                            what: format!("{other:?}"),
                        })
                    }
                },
                Err(e) => match e.errno() {
                    libc::EINTR => {
                        self.counters.count(ExitReason::Intr);
                        self.fd.set_kvm_immediate_exit(0);
                        None
                    }
                    libc::EAGAIN => None,
                    errno => Some(RunStatus::KvmRunError { vcpu: index, errno }),
                },
            };
            // A Hyper-V hypercall (the transport MSR write) runs now that the exit is done.
            if let Some(e) = &self.enlightenments {
                if e.hypercall_pending(index) {
                    e.complete_hypercall(index, &mut self.fd);
                }
            }
            if let Some(s) = stop {
                break Some(s);
            }
        };
        // Internal errors carry a sub-error code worth reporting.
        let outcome = match outcome {
            Some(RunStatus::InternalError { vcpu, .. }) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the last exit reason was KVM_EXIT_INTERNAL_ERROR, so the kernel filled
                // the `internal` member of the union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Some(RunStatus::InternalError { vcpu, suberror })
            }
            o => o,
        };
        // Before the outcome is published, so that it is there once the run has ended.
        if let Some(r) = &self.exit_regs {
            r.set(self.index as usize, self.fd.get_regs().ok());
        }
        if let Some(s) = outcome {
            self.control.finish(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_and_finish_race_threads_that_exit_and_are_joined() {
        // vCPU-like threads leave at different times while other threads kick and finish,
        // and the owner joins them in order as soon as they leave: no signal may go to a
        // thread that has exited (before the fix that was pthread_kill on a joined thread).
        for round in 0..200u64 {
            let control = Arc::new(RunControl::new(4, Monitor::new(false)).unwrap());
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let c = control.clone();
                    std::thread::spawn(move || {
                        let _slot = c.enter_thread(i);
                        std::thread::sleep(Duration::from_micros((round * 7 + i as u64 * 13) % 50));
                    })
                })
                .collect();
            let kicker = {
                let c = control.clone();
                std::thread::spawn(move || {
                    for k in 0..200 {
                        c.kick(k % 4);
                    }
                    c.finish(RunStatus::Stopped("test".into()));
                })
            };
            for h in handles {
                h.join().unwrap();
            }
            control.finish(RunStatus::GuestExit(0));
            kicker.join().unwrap();
            assert!(control.wait_threads_left(Instant::now()).is_empty());
        }
    }

    #[test]
    fn threads_that_do_not_leave_are_reported_after_the_grace() {
        let control = Arc::new(RunControl::new(2, Monitor::new(false)).unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let c = control.clone();
        let stuck = std::thread::spawn(move || {
            let _slot = c.enter_thread(1);
            let _ = rx.recv();
        });
        control.never_started(0);
        control.finish(RunStatus::GuestExit(0));
        let t0 = Instant::now();
        let left = control.wait_threads_left(Instant::now() + Duration::from_millis(100));
        assert_eq!(left, vec![1]);
        assert!(t0.elapsed() >= Duration::from_millis(100));
        drop(tx);
        stuck.join().unwrap();
        assert!(control.wait_threads_left(Instant::now()).is_empty());
    }
}
