//! How a partition's run ended.

use std::fmt;
use std::time::Duration;

/// The end of a run. Only `GuestExit(0)` is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// The guest wrote this status to the exit port.
    GuestExit(u32),
    /// KVM_EXIT_SHUTDOWN: a triple fault (or a guest-requested shutdown).
    TripleFault { vcpu: u32 },
    /// The guest asked for a system reset through a platform device (i8042 command 0xFE, the
    /// reset control register at 0xCF9); hv does not reboot partitions, the run ends.
    GuestReset { vcpu: u32 },
    /// KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM's emulator rejects.
    InternalError { vcpu: u32, suberror: u32 },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused the vCPU state.
    FailEntry { vcpu: u32, reason: u64 },
    /// An exit hv does not handle.
    UnhandledExit { vcpu: u32, what: String },
    /// An access to an address with no device while unmapped accesses are fatal.
    UnmappedAccess { vcpu: u32, what: String },
    /// The vCPU halted and nothing can wake it (no in-kernel irqchip).
    Halted { vcpu: u32 },
    /// The run exceeded its wall-clock limit.
    Timeout(Duration),
    /// The run exceeded its exit budget.
    ExitLimit(u64),
    /// KVM_RUN itself failed.
    KvmRunError { vcpu: u32, errno: i32 },
    /// A vCPU thread died unexpectedly.
    VcpuThreadPanicked { vcpu: u32 },
    /// hv stopped the run (another partition failed, or the user interrupted).
    Stopped(String),
    /// After the run ended (`after`), vCPU `vcpu` (the first of `threads` such vCPU threads)
    /// did not leave within `limits::VCPU_EXIT_GRACE`: it is stuck inside a device (e.g.
    /// waiting for a device lock). hv gave the thread up and went on.
    DeviceStuck {
        vcpu: u32,
        threads: u32,
        after: Box<RunStatus>,
    },
    /// After the run ended (`after`), the partition's device workers did not stop within
    /// `limits::VCPU_EXIT_GRACE` (a worker stuck in its service loop); hv left them behind.
    WorkerStuck { after: Box<RunStatus> },
    /// A vCPU or device worker thread made a system call its seccomp filter does not allow
    /// (`hv/src/isolation/seccomp.rs`); the call failed with EPERM and the run ended.
    SeccompViolation { thread: String, syscall: i64 },
}

impl RunStatus {
    /// True for a clean guest exit with status 0.
    pub fn is_ok(&self) -> bool {
        matches!(self, RunStatus::GuestExit(0))
    }

    /// A short, stable label for tables and JSON (`ok`, `guest-exit-3`, `timeout`, ...).
    pub fn label(&self) -> String {
        match self {
            RunStatus::GuestExit(0) => "ok".into(),
            RunStatus::GuestExit(n) => format!("guest-exit-{n}"),
            RunStatus::TripleFault { .. } => "triple-fault".into(),
            RunStatus::GuestReset { .. } => "guest-reset".into(),
            RunStatus::InternalError { .. } => "kvm-internal-error".into(),
            RunStatus::FailEntry { .. } => "fail-entry".into(),
            RunStatus::UnhandledExit { .. } => "unhandled-exit".into(),
            RunStatus::UnmappedAccess { .. } => "unmapped-access".into(),
            RunStatus::Halted { .. } => "halted".into(),
            RunStatus::Timeout(_) => "timeout".into(),
            RunStatus::ExitLimit(_) => "exit-limit".into(),
            RunStatus::KvmRunError { .. } => "kvm-run-error".into(),
            RunStatus::VcpuThreadPanicked { .. } => "vcpu-thread-panicked".into(),
            RunStatus::Stopped(_) => "stopped".into(),
            RunStatus::DeviceStuck { .. } | RunStatus::WorkerStuck { .. } => "device-stuck".into(),
            RunStatus::SeccompViolation { .. } => "seccomp-violation".into(),
        }
    }
}

fn guest_status_meaning(n: u32) -> &'static str {
    use hvlab_protocol::status::*;
    match n {
        OK => "success",
        WORKLOAD_FAILED => "workload check failed",
        BAD_ARGS => "bad workload arguments",
        EXCEPTION => "guest exception",
        PANIC => "guest panic",
        UNSUPPORTED => "unsupported on this VMM/host",
        _ => "workload-defined status",
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::GuestExit(n) => write!(
                f,
                "guest exited with status {n} ({})",
                guest_status_meaning(*n)
            ),
            RunStatus::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            RunStatus::GuestReset { vcpu } => {
                write!(f, "vCPU {vcpu} asked for a system reset (hv ends the run)")
            }
            RunStatus::InternalError { vcpu, suberror } => write!(
                f,
                "KVM internal error on vCPU {vcpu} (suberror {suberror}{})",
                if *suberror == 1 {
                    ": instruction emulation failed"
                } else {
                    ""
                }
            ),
            RunStatus::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu} failed VM entry (hardware reason {reason:#x})"
                )
            }
            RunStatus::UnhandledExit { vcpu, what } => {
                write!(f, "unhandled exit on vCPU {vcpu}: {what}")
            }
            RunStatus::UnmappedAccess { vcpu, what } => {
                write!(
                    f,
                    "vCPU {vcpu} accessed {what}, which no device claims (unmapped accesses are fatal)"
                )
            }
            RunStatus::Halted { vcpu } => write!(f, "vCPU {vcpu} halted with nothing to wake it"),
            RunStatus::Timeout(d) => write!(f, "timed out after {:.1} s", d.as_secs_f64()),
            RunStatus::ExitLimit(n) => write!(f, "exceeded the exit budget of {n} userspace exits"),
            RunStatus::KvmRunError { vcpu, errno } => write!(
                f,
                "KVM_RUN failed on vCPU {vcpu}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            RunStatus::VcpuThreadPanicked { vcpu } => {
                write!(f, "vCPU {vcpu} thread panicked (hv bug)")
            }
            RunStatus::Stopped(why) => write!(f, "stopped: {why}"),
            RunStatus::DeviceStuck {
                vcpu,
                threads,
                after,
            } => write!(
                f,
                "vCPU {vcpu} stuck in a device: it did not leave within {:.1} s after the run ended ({after}); {threads} vCPU thread(s) given up",
                crate::limits::VCPU_EXIT_GRACE.as_secs_f64()
            ),
            RunStatus::WorkerStuck { after } => write!(
                f,
                "a device worker did not stop within {:.1} s after the run ended ({after}); left behind",
                crate::limits::VCPU_EXIT_GRACE.as_secs_f64()
            ),
            RunStatus::SeccompViolation { thread, syscall } => write!(
                f,
                "seccomp: {thread} thread made system call {} ({syscall}), which its filter \
                 does not allow (refused with EPERM; `--no-seccomp` turns filters off)",
                crate::isolation::seccomp::syscall_name(*syscall).unwrap_or("unknown")
            ),
        }
    }
}
