//! `hv boot`: one partition running a third-party kernel (PVH, multiboot or bzImage) on the PC
//! platform KVM and hv model, its serial console on stdout, ended by the kernel through QEMU's
//! isa-debug-exit port (0xf4, `iobase=0xf4,iosize=4`).
//!
//! Exit statuses follow QEMU's, so scripts written for QEMU read them unchanged: a guest write
//! of `v` to port 0xf4 → `(v << 1) | 1` (low 8 bits, as a process status keeps them). hv's own
//! outcomes are even and cannot be mistaken for one: [`STATUS_TIMEOUT`] (124, as `timeout(1)`
//! reports, which kvm-unit-tests' scripts read as a timeout) and [`STATUS_HV`] (2: the kernel
//! could not be booted, or the run ended without an exit-port write, e.g. a triple fault).

use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;

use super::{Format, KernelBoot};
use crate::enlightenments::EnlightenmentSet;
use crate::error::HvError;
use crate::partition::{IrqChip, Partition, PartitionConfig};
use crate::status::RunStatus;
use crate::vcpu::UnmappedPolicy;

/// Process status for a run that hit its `--timeout`.
pub const STATUS_TIMEOUT: u8 = 124;
/// Process status when hv, not the kernel, ended the run (or could not start it).
pub const STATUS_HV: u8 = 2;

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The kernel file's bytes.
    pub kernel: Vec<u8>,
    pub boot: KernelBoot,
    pub vcpus: u32,
    pub mem_bytes: u64,
    pub enlightenments: EnlightenmentSet,
    pub timeout: Duration,
    /// Copy the serial console to stdout as the kernel writes it.
    pub console_to_stdout: bool,
    pub seccomp: bool,
}

impl Default for BootRequest {
    fn default() -> Self {
        BootRequest {
            kernel: Vec::new(),
            boot: KernelBoot::default(),
            vcpus: 1,
            // QEMU's default for `-m`.
            mem_bytes: 128 << 20,
            enlightenments: EnlightenmentSet::NONE,
            timeout: Duration::from_secs(60),
            console_to_stdout: true,
            seccomp: true,
        }
    }
}

/// How a boot ended.
#[derive(Debug)]
pub struct BootOutcome {
    pub format: Format,
    pub status: RunStatus,
    /// Everything the kernel printed on the serial port.
    pub console: String,
    /// Accesses to ports and MMIO addresses no device claims (each address is also noted once
    /// in `notes`).
    pub unmapped_pio: u64,
    pub unmapped_mmio: u64,
    pub notes: Vec<String>,
    pub wall: Duration,
}

impl BootOutcome {
    /// The process status `hv boot` exits with (see the module documentation).
    pub fn exit_status(&self) -> u8 {
        exit_status(&self.status)
    }
}

/// QEMU's isa-debug-exit mapping for a guest exit, hv's own statuses otherwise.
pub fn exit_status(status: &RunStatus) -> u8 {
    match status {
        RunStatus::GuestExit(v) => ((v << 1) | 1) as u8,
        RunStatus::Timeout(_) => STATUS_TIMEOUT,
        // QEMU with --no-reboot exits 0 on a reset request.
        RunStatus::GuestReset { .. } => 0,
        _ => STATUS_HV,
    }
}

/// The partition a kernel gets: the PC platform (`devices::platform`: fw_cfg, ACPI tables,
/// PCI host bridge, pc-testdev, i8042, port 0x80) with KVM's interrupt controllers (PIC pair,
/// IOAPIC, local APICs) and PIT, hv's RTC and ACPI PM timer, and its serial port and exit port.
pub fn partition_config(req: &BootRequest) -> PartitionConfig {
    PartitionConfig {
        vcpus: req.vcpus,
        mem_bytes: req.mem_bytes,
        cmdline: req.boot.cmdline.clone(),
        unmapped: UnmappedPolicy::Ignore,
        tracepoints: false,
        irqchip: IrqChip::Full,
        pit: true,
        pm_timer: true,
        rtc: true,
        platform: true,
        enlightenments: Some(req.enlightenments),
        seccomp: req.seccomp,
        kernel: Some(req.boot.clone()),
        ..PartitionConfig::default()
    }
}

/// Boots the kernel and waits until it writes to the exit port, fails, or times out.
pub fn boot(kvm: &Kvm, req: &BootRequest) -> Result<BootOutcome, HvError> {
    crate::limits::ensure_host_resources(
        kvm,
        &crate::limits::ResourceAsk {
            partitions: 1,
            vcpus: req.vcpus,
            mem_bytes: req.mem_bytes,
            tracepoints: false,
        },
    )?;
    // Which format it is, for the outcome (the partition loads it again into its own memory;
    // a failure here is the one-line "tried ..." error before any VM exists).
    let format = {
        let probe = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            req.mem_bytes as usize,
        )])
        .map_err(|e| HvError::Memory(format!("cannot map {} bytes: {e}", req.mem_bytes)))?;
        super::load_kernel(&probe, req.mem_bytes, &req.kernel, &req.boot)?.format
    };
    let p = Partition::new(kvm, partition_config(req), &req.kernel)?;
    if req.console_to_stdout {
        p.console_sink()
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .echo_to_stdout();
    }
    let running = p.start()?;
    let out = running.wait(Instant::now() + req.timeout, req.timeout);
    let unmapped = |k: &str| out.totals.exits_by_device.get(k).copied().unwrap_or(0);
    Ok(BootOutcome {
        format,
        unmapped_pio: unmapped("pio:unmapped"),
        unmapped_mmio: unmapped("mmio:unmapped"),
        status: out.status,
        console: out.console,
        notes: out.notes,
        wall: out.wall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_isa_debug_exit_and_keep_hv_outcomes_even() {
        assert_eq!(exit_status(&RunStatus::GuestExit(0)), 1);
        assert_eq!(exit_status(&RunStatus::GuestExit(1)), 3);
        assert_eq!(exit_status(&RunStatus::GuestExit(0x7f)), 0xff);
        assert_eq!(exit_status(&RunStatus::GuestExit(0x80)), 1, "low 8 bits");
        assert_eq!(
            exit_status(&RunStatus::Timeout(Duration::from_secs(1))),
            124
        );
        assert_eq!(exit_status(&RunStatus::TripleFault { vcpu: 0 }), 2);
    }
}
