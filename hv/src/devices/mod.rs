//! Devices a partition can have. `hv_ports` are hv's own protocol ports; `emulated/` devices are
//! driven register by register (every access traps); `synthetic/` devices use shared-memory
//! rings and doorbells, served by a worker thread.

pub mod emulated;
pub mod hv_ports;

use std::path::PathBuf;

use crate::error::HvError;
use crate::partition::Partition;

/// Which model backs a workload's device classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceVariant {
    /// The workload uses no device beyond the boot console.
    #[default]
    None,
    /// Register-level emulation (16550, ATA PIO): every access traps to hv.
    Emulated,
    /// virtio over virtio-mmio: rings in guest memory, ioeventfd doorbells, irqfd completions.
    Synthetic,
}

impl DeviceVariant {
    /// CLI / record spelling.
    pub fn name(self) -> &'static str {
        match self {
            DeviceVariant::None => "none",
            DeviceVariant::Emulated => "emulated",
            DeviceVariant::Synthetic => "synthetic",
        }
    }
}

/// Device options of one run.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    pub variant: DeviceVariant,
    /// Raw disk image backing the block device; `None` = in-memory disk.
    pub disk: Option<PathBuf>,
    /// Size for a created disk (file or memory), bytes.
    pub disk_size: u64,
    /// Synthetic devices: negotiate VIRTIO_F_EVENT_IDX.
    pub event_idx: bool,
    /// Synthetic devices: worker polls the available ring before sleeping.
    pub polling: bool,
}

/// Guest command-line words that tell the guest drivers which devices to expect.
pub fn cmdline_words(opts: &DeviceOptions, classes: &[&str]) -> Vec<String> {
    if classes.is_empty() {
        return Vec::new();
    }
    vec![format!("dev={}", opts.variant.name())]
}

/// Attaches the devices of `classes` (as a workload declares them: `console`, `block`) in the
/// chosen variant to `partition` (the guest learns them from [`cmdline_words`]).
pub fn attach(
    partition: &mut Partition,
    opts: &DeviceOptions,
    classes: &[&str],
) -> Result<(), HvError> {
    let _ = partition;
    if classes.is_empty() || opts.variant == DeviceVariant::None {
        return Ok(());
    }
    Err(HvError::Setup(format!(
        "{} devices for {} are not available in this build",
        opts.variant.name(),
        classes.join(", ")
    )))
}
