//! hvlab's hypervisor library: partitions (KVM VMs) that boot tiny no_std guests, exit dispatch
//! through PIO/MMIO buses, counters snapshotted at guest phase markers, and run records.
//!
//! Code map: [`partition`] builds a VM and starts its vCPU threads; [`vcpu`] is the run loop and
//! exit dispatch; [`bus`] the address spaces; [`devices`] the device models; [`counters`] what
//! is measured; [`boot`] loads the guest; [`guest_output`] parses what the guest reports;
//! [`run`] turns a workload request into partitions and run records; [`record`] is the results
//! schema; [`peer`] runs the same image under QEMU for the peer column; [`isolation`] filters the system
//! calls of the threads a guest drives (seccomp); [`host_probe`] runs the probe guests that
//! find out what this host's KVM does, and [`caps`] reports it (`hv caps`).

pub mod boot;
pub mod bus;
pub mod caps;
pub mod counters;
pub mod devices;
pub mod enlightenments;
pub mod error;
pub mod guest_output;
pub mod host;
pub mod host_probe;
pub mod isolation;
pub mod latency;
pub mod limits;
pub mod neighbour;
pub mod partition;
pub mod record;
pub mod run;
pub mod scale;
pub mod status;
pub mod tiny_guest;
pub mod units;
pub mod vcpu;

pub use error::HvError;
pub use status::RunStatus;

/// The guest image built from guests/ and workloads/ by build.rs.
pub static GUEST_IMAGE: &[u8] = include_bytes!(env!("HVLAB_GUEST_ELF"));
