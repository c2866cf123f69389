//! The experiment machinery's errors: hv's own, plus the peer VMM's, which the hypervisor library
//! knows nothing about.

use crate::peer::QemuError;

/// A suite or peer run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The hypervisor library failed (bad request, host limit, results I/O).
    #[error(transparent)]
    Hv(#[from] hv::HvError),
    /// QEMU, the peer VMM, could not be run (its guest's failures are run statuses instead).
    #[error("QEMU peer: {0}")]
    Qemu(#[from] QemuError),
}
