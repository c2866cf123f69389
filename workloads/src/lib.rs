//! hvlab guest workloads.
//!
//! Each workload is one file with an `INFO` (plain data the host also reads, for `hv list` and
//! argument checks) and a `run` function that exists only in the guest build. Adding one is
//! that file plus one line in the `registry!` below.
#![no_std]

pub mod blk_io;
pub mod chaos;
pub mod clock;
#[cfg(target_os = "none")]
mod common;
pub mod console_io;
pub mod exit_floor;
pub mod hyperv_probe;
pub mod interrupts;
pub mod ipi;
pub mod mem_pattern;
pub mod misbehave;
pub mod net_io;
pub mod platform;
pub mod spinlock;
pub mod synic;
pub mod synic_hostile;
pub mod tlb_shootdown;
pub mod user_mode;

/// One workload argument.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Host-visible description of a workload.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadInfo {
    /// CLI and command-line name.
    pub name: &'static str,
    /// One line for `hv list`.
    pub summary: &'static str,
    /// Arguments it understands (others are rejected by hv before boot).
    pub params: &'static [Param],
    /// Fewest vCPUs it needs.
    pub min_vcpus: u32,
    /// Device classes it drives (`console`, `block`); empty = none beyond the boot console.
    pub devices: &'static [&'static str],
    /// hv-side resources it uses beyond the defaults: `kernel-port` (an ioeventfd on
    /// `KERNEL_PORT`), `full-irqchip` (PIC/IOAPIC in KVM), `pit` (KVM's in-kernel PIT; implies
    /// `full-irqchip`), `pm-timer` (hv's ACPI PM timer at port 0x608), `rtc` (hv's CMOS RTC at
    /// ports 0x70/0x71), `pc-platform` (hv's PC platform: fw_cfg, ACPI, PCI host bridge, ...;
    /// needs `full-irqchip`).
    pub host_features: &'static [&'static str],
}

macro_rules! registry {
    ($($module:ident),* $(,)?) => {
        /// Every workload, in `hv list` order.
        pub const ALL: &[WorkloadInfo] = &[$($module::INFO),*];

        /// Runs the workload the command line names (guest build only).
        #[cfg(target_os = "none")]
        pub fn run(ctx: &mut hvlab_guest_rt::Ctx) -> Result<(), hvlab_guest_rt::Fail> {
            let name = ctx.args.workload();
            $(if name == $module::INFO.name { return $module::run(ctx); })*
            Err(hvlab_guest_rt::Fail::UnknownWorkload)
        }
    };
}

registry!(
    exit_floor,
    mem_pattern,
    misbehave,
    blk_io,
    console_io,
    spinlock,
    tlb_shootdown,
    ipi,
    clock,
    interrupts,
    user_mode,
    chaos,
    hyperv_probe,
    platform,
    net_io,
    synic,
    synic_hostile,
);

/// Looks a workload up by name.
pub fn find(name: &str) -> Option<&'static WorkloadInfo> {
    ALL.iter().find(|w| w.name == name)
}
