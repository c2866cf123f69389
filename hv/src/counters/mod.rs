//! Counters and their snapshots.
//!
//! hv counts every userspace exit by reason and by bus slot in per-vCPU atomics that only the
//! owning vCPU writes (a load and a store, no lock prefix, no allocation). At each phase marker
//! the [`meter::Meter`] snapshots those, the KVM binary stats, the `kvm:*` tracepoints and the
//! threads' CPU time; a phase's record is the difference of its two snapshots.

pub mod cputime;
pub mod exits;
pub mod kvm_stats;
pub mod meter;
pub mod tracepoints;

pub use exits::{ExitReason, VcpuExitCounters};
pub use meter::{CounterSource, Meter, PhaseDelta};
