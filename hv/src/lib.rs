//! hvlab's hypervisor library: partitions (KVM VMs) that boot tiny no_std guests, exit dispatch
//! through PIO/MMIO buses, counters snapshotted at guest phase markers, and run records.

pub mod caps;
pub mod counters;
pub mod record;
