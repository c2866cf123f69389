//! Devices a partition can have. `hv_ports` are hv's own protocol ports; `emulated/` devices are
//! driven register by register (every access traps); `synthetic/` devices use virtio's
//! shared-memory rings and doorbells, served by a worker thread; `vmbus/` devices use Hyper-V's
//! design (VMBus-style rings, SynIC messages and events, hypercall signals), served by a
//! worker thread too.

pub mod disk;
pub mod emulated;
pub mod hv_ports;
pub mod platform;
pub mod switch;
pub mod synthetic;
pub mod tap;
pub mod vmbus;

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
/// Slot of the virtio-net device.
pub const NET_SLOT: u32 = 2;

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
    /// VMBus-style channels: rings in guest memory, HvCallSignalEvent doorbells, SynIC event
    /// completions (needs `hv-synic`, which hv turns on for it).
    Vmbus,
}

impl DeviceVariant {
    /// CLI / record spelling.
    pub fn name(self) -> &'static str {
        match self {
            DeviceVariant::None => "none",
            DeviceVariant::Emulated => "emulated",
            DeviceVariant::Synthetic => "synthetic",
            DeviceVariant::Vmbus => "vmbus",
        }
    }

    /// Parses a CLI / spec spelling.
    pub fn parse(s: &str) -> Option<DeviceVariant> {
        [
            DeviceVariant::None,
            DeviceVariant::Emulated,
            DeviceVariant::Synthetic,
            DeviceVariant::Vmbus,
        ]
        .into_iter()
        .find(|v| v.name() == s)
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
    /// Network: the server is a responder behind a tap in a namespace (`--backend tap`),
    /// not partition 1.
    pub net_tap: bool,
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
            ("block", DeviceVariant::Vmbus) => words.push("blk=vmbus".to_string()),
            ("console", DeviceVariant::Vmbus) => words.push("con=vmbus".to_string()),
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
            ("net", DeviceVariant::Emulated) => {
                words.push("net=ne2k".into());
                words.push(format!("net_irq={}", emulated::ne2000::NE2000_GSI));
            }
            ("net", _) => {
                words.push("net=virtio".into());
                words.push(format!("net_mmio={:#x}", virtio_mmio_base(NET_SLOT.into())));
                words.push(format!("net_irq={}", virtio_gsi(NET_SLOT)));
            }
            _ => {}
        }
    }
    if opts.variant == DeviceVariant::Synthetic {
        words.push(format!("evidx={}", u8::from(opts.event_idx)));
        words.push(format!("poll={}", u8::from(opts.polling)));
    }
    if opts.variant == DeviceVariant::Vmbus && opts.polling {
        words.push("poll=1".into());
    }
    words
}

/// Why the device classes a workload drives (`classes`) cannot run in `variant`, if they
/// cannot: only block and console exist over VMBus-style channels.
pub fn unsupported(variant: DeviceVariant, classes: &[&str]) -> Option<String> {
    (variant == DeviceVariant::Vmbus && classes.contains(&"net")).then(|| {
        "the net class has no VMBus-style device yet: use --device emulated or synthetic".into()
    })
}

/// `set` plus the enlightenments the devices of `classes` in the chosen variant ride on:
/// VMBus-style channels need the SynIC (`hv-synic`, with its `hv-vpindex`). The run's label
/// keeps the user's set; the partition's notes list what it ran with.
pub fn with_required_enlightenments(
    opts: &DeviceOptions,
    classes: &[&str],
    set: crate::enlightenments::EnlightenmentSet,
) -> crate::enlightenments::EnlightenmentSet {
    if opts.variant != DeviceVariant::Vmbus || classes.is_empty() {
        return set;
    }
    ["hv-vpindex", "hv-synic"]
        .into_iter()
        .fold(set, |s, name| s.with(name).unwrap_or(s))
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
            ("block", DeviceVariant::Vmbus) => {
                let disk = open_disk(opts)?;
                let dev = vmbus::blk::Blk::new(disk, partition.device_notes());
                partition.add_vmbus_device(Box::new(dev))?;
            }
            ("console", DeviceVariant::Vmbus) => {
                let dev = vmbus::console::Console::new(
                    partition.console_sink(),
                    partition.device_notes(),
                );
                partition.add_vmbus_device(Box::new(dev))?;
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
            ("net", _) => {} // attach_net: the NIC needs the run's switch
            (other, _) => {
                return Err(HvError::Setup(format!(
                    "unknown device class `{other}` (known: block, console, net)"
                )));
            }
        }
    }
    Ok(())
}

/// Attaches the NIC of the `net` class (if `classes` has it) in the chosen variant to
/// `partition`, on a new port of `switch` (one switch per run joins its partitions).
pub fn attach_net(
    partition: &mut Partition,
    opts: &DeviceOptions,
    classes: &[&str],
    switch: &Arc<switch::Switch>,
) -> Result<(), HvError> {
    if !classes.contains(&"net") || opts.variant == DeviceVariant::None {
        return Ok(());
    }
    let mac = switch::port_mac(partition.config().index);
    let port = switch
        .add_port(mac)
        .ok_or_else(|| HvError::Setup(format!("switch has {} ports already", switch::MAX_PORTS)))?;
    match opts.variant {
        DeviceVariant::Emulated => emulated::ne2000::attach(partition, switch.clone(), port),
        DeviceVariant::Vmbus => Err(HvError::Config(
            unsupported(opts.variant, classes).unwrap_or_default(),
        )),
        _ => {
            let backend =
                synthetic::net::Net::new(switch.clone(), port.clone(), partition.device_notes());
            let dev = attach_virtio(partition, opts, "virtio-net", NET_SLOT, Box::new(backend))?;
            let waker =
                synthetic::net::waker(&dev).map_err(|e| HvError::Setup(format!("eventfd: {e}")))?;
            port.set_waker(waker);
            Ok(())
        }
    }
}

/// The tap backend of a run whose workload has the `net` class and asked for it: a namespace
/// with a tap on `switch` and a responder, kept until the returned value drops. One partition
/// only (the responder plays partition 1).
pub fn tap_backend(
    opts: &DeviceOptions,
    classes: &[&str],
    partitions: u32,
    switch: &Arc<switch::Switch>,
) -> Result<Option<tap::TapNet>, HvError> {
    if !opts.net_tap || !classes.contains(&"net") || opts.variant == DeviceVariant::None {
        return Ok(None);
    }
    if partitions != 1 {
        return Err(HvError::Config(format!(
            "--backend tap runs one partition (the responder in the namespace is the server), not {partitions}"
        )));
    }
    tap::TapNet::create(switch)
        .map(Some)
        .map_err(|e| HvError::Setup(e.to_string()))
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
) -> Result<Arc<Mutex<synthetic::VirtioMmio>>, HvError> {
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
    partition.add_mmio_device(name, base, MMIO_SIZE, attached.bus_device.clone())?;
    if let Some(c) = attached.clock {
        partition.add_worker_clock(c);
    }
    partition.keep_alive(Box::new(attached.worker));
    partition.keep_alive(Box::new(irq));
    Ok(attached.bus_device)
}

/// Maps a spec's device label onto device options.
pub fn device_options(label: &str) -> DeviceOptions {
    let (variant, polling, event_idx) = match label {
        "emulated" => (DeviceVariant::Emulated, false, true),
        "synthetic" => (DeviceVariant::Synthetic, false, true),
        "synthetic-poll" => (DeviceVariant::Synthetic, true, true),
        "synthetic-noevidx" => (DeviceVariant::Synthetic, false, false),
        "vmbus" => (DeviceVariant::Vmbus, false, true),
        "vmbus-poll" => (DeviceVariant::Vmbus, true, true),
        _ => (DeviceVariant::None, false, true),
    };
    DeviceOptions {
        variant,
        polling,
        event_idx,
        ..DeviceOptions::default()
    }
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
