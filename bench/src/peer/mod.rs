//! Peer VMMs: the same guest image run under another VMM, reported in the same run records
//! (`RunRecord::vmm` names the VMM), so that reports can put hv and its peers side by side.
//!
//! Only the guest's own measurements (operation counts, TSC deltas, latency histograms,
//! workload metrics) exist under a peer; hv's exit counts, KVM stats and tracepoints are left
//! empty there, never estimated.

pub mod qemu;

pub use qemu::{QemuError, qemu_binary, run_qemu, supports};
