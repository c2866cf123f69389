//! vCPU threads: the run loop and exit dispatch.
//!
//! Each vCPU runs on its own thread. Exits go to the PIO or MMIO bus by address; every exit is
//! counted before the guest resumes. Stopping a run is race-free: the stopper sets the stop
//! flag, then signals each vCPU thread; the signal handler sets `immediate_exit` in that
//! thread's own `kvm_run`, so a vCPU about to enter KVM_RUN returns at once and one inside it
//! returns with EINTR.

use std::cell::Cell;
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
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by the vCPU loop while
        // its VcpuFd is alive and cleared before it is dropped; a u8 store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
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

/// Shared stop/status state of one partition's run.
#[derive(Debug)]
pub struct RunControl {
    stop: AtomicBool,
    status: Mutex<Option<RunStatus>>,
    done: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    /// The partition's seccomp filters: a refused call ends the run (checked after every exit
    /// and while waiting).
    seccomp: Arc<Monitor>,
}

/// How often `wait` looks for a seccomp violation of a device worker (vCPUs see their own
/// after the exit that caused it).
const SECCOMP_POLL: Duration = Duration::from_millis(10);

impl RunControl {
    pub(crate) fn new(seccomp: Arc<Monitor>) -> Result<RunControl, String> {
        install_kick_handler()?;
        Ok(RunControl {
            stop: AtomicBool::new(false),
            status: Mutex::new(None),
            done: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            seccomp,
        })
    }

    /// The partition's seccomp monitor.
    pub(crate) fn seccomp(&self) -> &Arc<Monitor> {
        &self.seccomp
    }

    pub(crate) fn add_thread(&self, t: libc::pthread_t) {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
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
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for &t in threads.iter() {
            // SAFETY: `t` is a vCPU thread of this partition that has not been joined yet
            // (joins happen only after `finish`); signalling an exited but unjoined thread is
            // harmless.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Kicks vCPU `index` (start order) out of KVM_RUN without ending the run: its loop sees
    /// an EINTR and goes round again (enlightenments use this to act before it re-enters).
    pub(crate) fn kick(&self, index: usize) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&t) = threads.get(index) {
            // SAFETY: as in `finish`: a vCPU thread of this partition that is not joined yet.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Waits for an outcome until `deadline`; past it, ends the run as timed out.
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
}

/// Remembers which unmapped addresses were already reported, so a flooding guest produces
/// one note per address, not one per access.
#[derive(Debug)]
pub struct UnmappedLog {
    ports: Box<[AtomicU64]>,
    mmio: Mutex<Vec<u64>>,
}

const MMIO_LOG_LIMIT: usize = 64;

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
        if seen.contains(&addr) || seen.len() >= MMIO_LOG_LIMIT {
            return false;
        }
        seen.push(addr);
        true
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
        KVM_RUN.with(|r| r.set(run_ptr));
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
            exits += 1;
            let index = self.index;
            // Enlightenments: a pending TLB flush happens here, before the guest runs again.
            if let Some(e) = &entry_hooks {
                e.before_entry(index, &mut self.fd);
            }
            let result = self.fd.run();
            if let Some(e) = &entry_hooks {
                e.after_exit(index);
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
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
        if let Some(s) = outcome {
            self.control.finish(s);
        }
    }
}
