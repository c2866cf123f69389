//! hv's error type. Each message says what went wrong and, where there is one, the fix.

use std::io;

use thiserror::Error;

/// Errors from building or running partitions.
#[derive(Debug, Error)]
pub enum HvError {
    /// /dev/kvm is missing.
    #[error(
        "/dev/kvm does not exist: load the KVM module (modprobe kvm_intel or kvm_amd) or run on a host with KVM"
    )]
    NoKvm,
    /// /dev/kvm exists but cannot be opened.
    #[error(
        "permission denied opening /dev/kvm: add your user to the `kvm` group (then log in again) or run as root"
    )]
    KvmPermission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(io::Error),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The requested configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest image could not be loaded.
    #[error("guest image: {0}")]
    Image(String),
    /// Two devices claim overlapping addresses.
    #[error("device `{new}` at {base:#x}+{len:#x} overlaps `{existing}`")]
    BusOverlap {
        new: String,
        existing: String,
        base: u64,
        len: u64,
    },
    /// A thread could not be created or pinned.
    #[error("vCPU thread: {0}")]
    Thread(String),
    /// The workload named is not one hv knows.
    #[error("unknown workload `{name}`; valid workloads: {valid}")]
    UnknownWorkload { name: String, valid: String },
    /// A workload argument is not one the workload declares.
    #[error("workload `{workload}` has no argument `{key}`; it takes: {valid}")]
    UnknownArgument {
        workload: String,
        key: String,
        valid: String,
    },
    /// A device or enlightenment failed to set up.
    #[error("{0}")]
    Setup(String),
    /// The request needs more than the host has (memory, vCPUs, file descriptors).
    // Not a `source`: the message already holds it, and `{:#}` would print it twice.
    #[error("host limit: {0}")]
    Limit(crate::limits::LimitError),
    /// Writing results failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl HvError {
    /// Wraps a KVM ioctl error with the name of the operation.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
        move |source| HvError::Kvm { op, source }
    }

    /// True for errors that mean "this host cannot run KVM guests for this user"; the CLI maps
    /// them to exit code 2.
    pub fn is_host_access(&self) -> bool {
        matches!(
            self,
            HvError::NoKvm | HvError::KvmPermission | HvError::KvmOpen(_)
        )
    }
}

impl HvError {
    /// True for errors in what the user asked for (unknown workload or argument, bad value).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            HvError::UnknownWorkload { .. }
                | HvError::UnknownArgument { .. }
                | HvError::Config(_)
                | HvError::Limit(_)
        )
    }
}

/// /dev/kvm for unit tests that run guests: without KVM access they fail, naming the fix, the
/// same way the integration tests do (no test passes by skipping silently).
/// `?` on a limit check.
impl From<crate::limits::LimitError> for HvError {
    fn from(e: crate::limits::LimitError) -> HvError {
        HvError::Limit(e)
    }
}

#[cfg(test)]
pub(crate) fn kvm_for_tests() -> kvm_ioctls::Kvm {
    open_kvm().unwrap_or_else(|e| panic!("this test runs guests and needs /dev/kvm: {e}"))
}

/// Opens /dev/kvm, mapping the common failures to messages that name the fix.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, HvError> {
    match kvm_ioctls::Kvm::new() {
        Ok(k) => Ok(k),
        Err(e) => Err(match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => HvError::NoKvm,
            libc::EACCES | libc::EPERM => HvError::KvmPermission,
            _ => HvError::KvmOpen(io::Error::from_raw_os_error(e.errno())),
        }),
    }
}
