//! Devices a partition can have. `hv_ports` are hv's own protocol ports; `emulated/` devices are
//! driven register by register (every access traps); `synthetic/` devices use shared-memory
//! rings and doorbells, served by a worker thread.

pub mod disk;
pub mod emulated;
pub mod hv_ports;
pub mod platform;
pub mod synthetic;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::error::HvError;
use crate::limits::{BoundedNotes, MAX_DEVICE_NOTES};
use crate::partition::Partition;
use disk::Disk;
use emulated::ata::{ATA_BASE, ATA_CONTROL, AtaCommandBlock, AtaControlBlock, AtaCore};
use synthetic::{DeviceState, MMIO_SIZE, Tuning};

/// Where devices report remarks (errors a guest caused, counters) for the run's notes. Each
/// distinct message is kept once, at most `limits::MAX_DEVICE_NOTES` of them (a hostile guest
/// must not grow hv's memory); the rest are counted.
#[derive(Debug, Clone)]
pub struct NoteSink(Arc<Mutex<BoundedNotes>>);

impl Default for NoteSink {
    fn default() -> Self {
        NoteSink(Arc::new(Mutex::new(BoundedNotes::new(MAX_DEVICE_NOTES))))
    }
}

impl NoteSink {
    /// Adds `msg` unless it is already there; past the cap it is only counted.
    pub fn note(&self, msg: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).add(msg);
    }

    /// The remarks so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.bounded().kept().to_vec()
    }

    /// The remarks so far with their suppressed count.
    pub fn bounded(&self) -> BoundedNotes {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Guest-physical base of synthetic device `n` (virtio-mmio, one page each).
pub const fn virtio_mmio_base(n: u64) -> u64 {
    0xd000_1000 + n * MMIO_SIZE
}

/// IOAPIC pin (GSI) of synthetic device `n`.
pub const fn virtio_gsi(n: u32) -> u32 {
    10 + n
}

/// Slot of the virtio-blk device.
pub const BLK_SLOT: u32 = 0;
/// Slot of the virtio-console device.
pub const CONSOLE_SLOT: u32 = 1;

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
    /// Block devices: read-only image, injected faults (`--disk-readonly`, `--disk-fault`).
    pub disk_access: disk::DiskAccess,
}

/// Guest command-line words that tell the guest drivers which devices to expect and where:
/// `blk=ata` or `blk=virtio blk_mmio=ADDR blk_irq=GSI`, `con=uart` or `con=virtio con_mmio=ADDR
/// con_irq=GSI`, and for synthetic devices `evidx=0|1 poll=0|1`. They depend only on the
/// options, so the command line is complete before the partition exists.
pub fn cmdline_words(opts: &DeviceOptions, classes: &[&str]) -> Vec<String> {
    let mut words = Vec::new();
    if classes.is_empty() || opts.variant == DeviceVariant::None {
        return words;
    }
    for &class in classes {
        match (class, opts.variant) {
            ("block", DeviceVariant::Emulated) => words.push("blk=ata".to_string()),
            ("block", _) => {
                words.push("blk=virtio".into());
                words.push(format!("blk_mmio={:#x}", virtio_mmio_base(BLK_SLOT.into())));
                words.push(format!("blk_irq={}", virtio_gsi(BLK_SLOT)));
            }
            ("console", DeviceVariant::Emulated) => words.push("con=uart".into()),
            ("console", _) => {
                words.push("con=virtio".into());
                words.push(format!(
                    "con_mmio={:#x}",
                    virtio_mmio_base(CONSOLE_SLOT.into())
                ));
                words.push(format!("con_irq={}", virtio_gsi(CONSOLE_SLOT)));
            }
            _ => {}
        }
    }
    if opts.variant == DeviceVariant::Synthetic {
        words.push(format!("evidx={}", u8::from(opts.event_idx)));
        words.push(format!("poll={}", u8::from(opts.polling)));
    }
    words
}

/// Attaches the devices of `classes` (as a workload declares them: `console`, `block`) in the
/// chosen variant to `partition` (the guest learns them from [`cmdline_words`]).
pub fn attach(
    partition: &mut Partition,
    opts: &DeviceOptions,
    classes: &[&str],
) -> Result<(), HvError> {
    if classes.is_empty() || opts.variant == DeviceVariant::None {
        return Ok(());
    }
    for &class in classes {
        match (class, opts.variant) {
            ("block", DeviceVariant::Emulated) => {
                let disk = open_disk(opts)?;
                let core = Arc::new(Mutex::new(AtaCore::new(disk, partition.device_notes())));
                partition.keep_alive(Box::new(emulated::ata::StatsNote(core.clone())));
                partition.add_pio_device(
                    "ata",
                    ATA_BASE,
                    8,
                    Arc::new(Mutex::new(AtaCommandBlock(core.clone()))),
                )?;
                partition.add_pio_device(
                    "ata-ctl",
                    ATA_CONTROL,
                    1,
                    Arc::new(Mutex::new(AtaControlBlock(core))),
                )?;
            }
            ("block", _) => {
                let disk = open_disk(opts)?;
                let backend = synthetic::blk::Blk::new(disk, partition.device_notes());
                attach_virtio(partition, opts, "virtio-blk", BLK_SLOT, Box::new(backend))?;
            }
            ("console", DeviceVariant::Emulated) => {} // COM1 is always there
            ("console", _) => {
                let backend = synthetic::console::Console::new(partition.console_sink());
                attach_virtio(
                    partition,
                    opts,
                    "virtio-console",
                    CONSOLE_SLOT,
                    Box::new(backend),
                )?;
            }
            (other, _) => {
                return Err(HvError::Setup(format!(
                    "unknown device class `{other}` (known: block, console)"
                )));
            }
        }
    }
    Ok(())
}

fn open_disk(opts: &DeviceOptions) -> Result<disk::SharedDisk, HvError> {
    let d = Disk::from_options(opts.disk.as_deref(), opts.disk_size, &opts.disk_access)
        .map_err(|e| HvError::Setup(e.to_string()))?;
    Ok(Arc::new(Mutex::new(d)))
}

fn attach_virtio(
    partition: &mut Partition,
    opts: &DeviceOptions,
    name: &str,
    slot: u32,
    backend: Box<dyn synthetic::VirtioBackend>,
) -> Result<(), HvError> {
    let irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| HvError::Setup(format!("eventfd: {e}")))?;
    let state = DeviceState::new(
        name,
        backend,
        partition.memory().clone(),
        irq.try_clone()
            .map_err(|e| HvError::Setup(format!("eventfd: {e}")))?,
        partition.device_notes(),
        Tuning {
            event_idx: opts.event_idx,
            polling: opts.polling,
        },
    )?;
    let base = virtio_mmio_base(slot.into());
    let vm = partition.vm().clone();
    let filter = partition.seccomp_target(format!("{name} worker"));
    let attached = synthetic::create(&vm, name, base, virtio_gsi(slot), state, &irq, filter)?;
    partition.add_mmio_device(name, base, MMIO_SIZE, attached.bus_device)?;
    if let Some(c) = attached.clock {
        partition.add_worker_clock(c);
    }
    partition.keep_alive(Box::new(attached.worker));
    partition.keep_alive(Box::new(irq));
    Ok(())
}

#[cfg(test)]
mod note_sink_tests {
    use super::*;

    #[test]
    fn device_notes_are_deduplicated_and_capped() {
        let s = NoteSink::default();
        for i in 0..1000 {
            s.note(format!("queue error {i}"));
            s.note("same".into());
        }
        let b = s.bounded();
        assert_eq!(b.kept().len(), MAX_DEVICE_NOTES);
        assert_eq!(s.snapshot().iter().filter(|n| *n == "same").count(), 1);
        assert!(b.suppressed() > 0);
    }
}
