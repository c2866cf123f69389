//! The QEMU peer: the same guest image under `qemu-system-x86_64 -accel kvm`, with the same
//! run records (`vmm = "qemu"`).
//!
//! QEMU boots the image exactly as hv does: `-kernel` finds the PVH note and enters the 32-bit
//! entry with EBX = start info (`-M microvm`, or `-M pc` through its PVH option ROM). The guest
//! protocol needs nothing else: the console is QEMU's 16550 at 0x3f8, the exit port 0xf4 is
//! QEMU's `isa-debug-exit` (QEMU exits with `(status << 1) | 1`), and the phase port is
//! unassigned there, so per-phase numbers are the guest's own TSC deltas. The exact command
//! line is [`command_line`]; see also `scripts/qemu-peer.sh`.
//!
//! Devices are QEMU's own, driven by the same guest drivers: the emulated console is QEMU's
//! 16550 (the boot console, as under hv; its loopback mode is QEMU's), the emulated disk is
//! the PIIX IDE of `-M pc` (microvm has no IDE), and the synthetic devices are microvm's
//! virtio-mmio transports with `virtio-blk-device` and `virtio-serial-device` + `virtconsole`,
//! which the guest finds from the `virtio_mmio.device=` words microvm appends to the command
//! line (`auto-kernel-cmdline`, which QEMU applies only with `acpi=off`), as Linux does. Two peer labels exist ([`PEER_VMMS`]): `qemu`
//! runs each device on the machine that has it (microvm; pc for ATA), `qemu-pc` always on
//! `-M pc`. What has no QEMU counterpart is skipped with the reason ([`supports_on`]).
//!
//! What is not measured under QEMU stays empty (exits, KVM stats, tracepoints, per-phase wall
//! time) and each record says so in its notes. hv-only ports that the exit-floor workload pokes
//! (test port, test MMIO, kernel port) are unassigned under QEMU: reads return all ones and the
//! guest reports `answered=0`, which the records keep as a metric.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hvlab_protocol::kvm_pv;
use thiserror::Error;

use hv::devices::DeviceVariant;
use hv::devices::emulated::serial::CONSOLE_CAPTURE_LIMIT;
use hv::enlightenments::EnlightenmentSet;
use hv::error::HvError;
use hv::guest_output;
use hv::record::{RecordStatus, RunRecord};
use hv::run::{RecordContext, RunRequest, effective_args, guest_cmdline, validate};
use hv::status::RunStatus;
use hv::vcpu::UnmappedPolicy;

/// Environment variable naming the QEMU binary to use instead of the one on `PATH`.
pub const QEMU_ENV: &str = "HVLAB_QEMU";
/// The binary looked up on `PATH`.
pub const QEMU_NAME: &str = "qemu-system-x86_64";
/// How to get it on Debian/Ubuntu.
pub const INSTALL_HINT: &str = "apt-get install qemu-system-x86";

/// How long `--version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the console reader threads once QEMU is gone.
const READER_GRACE: Duration = Duration::from_secs(2);
/// QEMU's stderr kept for failure reasons.
const STDERR_LIMIT: usize = 64 << 10;
/// Poll interval while waiting for QEMU.
const POLL: Duration = Duration::from_millis(1);

/// QEMU `-cpu` properties for KVM's paravirtual feature bits (CPUID 0x40000001 EAX), with the
/// bits each controls. Every one is set explicitly, on exactly when the enlightenment set
/// exposes one of its bits under hv, so the guest sees the same KVM leaf under both VMMs
/// (QEMU's `-cpu host` would otherwise expose most of them).
const KVM_PV_PROPS: &[(&str, &[u32])] = &[
    (
        "kvmclock",
        &[kvm_pv::FEATURE_CLOCKSOURCE, kvm_pv::FEATURE_CLOCKSOURCE2],
    ),
    ("kvm-nopiodelay", &[kvm_pv::FEATURE_NOP_IO_DELAY]),
    ("kvm-asyncpf", &[kvm_pv::FEATURE_ASYNC_PF]),
    ("kvm-steal-time", &[kvm_pv::FEATURE_STEAL_TIME]),
    ("kvm-pv-eoi", &[kvm_pv::FEATURE_PV_EOI]),
    ("kvm-pv-unhalt", &[kvm_pv::FEATURE_PV_UNHALT]),
    ("kvm-pv-tlb-flush", &[kvm_pv::FEATURE_PV_TLB_FLUSH]),
    ("kvm-pv-ipi", &[kvm_pv::FEATURE_PV_SEND_IPI]),
    ("kvm-poll-control", &[kvm_pv::FEATURE_POLL_CONTROL]),
    ("kvm-pv-sched-yield", &[kvm_pv::FEATURE_PV_SCHED_YIELD]),
    ("kvm-asyncpf-int", &[14]),
    ("kvm-msi-ext-dest-id", &[15]),
    (
        "kvmclock-stable-bit",
        &[kvm_pv::FEATURE_CLOCKSOURCE_STABLE_BIT],
    ),
];

/// Peer VMM labels a spec may name in `vmm = [...]` (records carry them in `vmm`): `qemu` runs
/// each device on the QEMU machine that has it (microvm; pc for the ATA disk, which microvm
/// lacks), `qemu-pc` runs everything on `-M pc`.
pub const PEER_VMMS: &[&str] = &["qemu", "qemu-pc"];

/// The QEMU machine type of a peer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: 16550, virtio-mmio transports, no PCI, no IDE.
    Microvm,
    /// `-M pc`: i440FX + PIIX, the 16550 and the IDE controller (virtio only over PCI).
    Pc,
}

impl Machine {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Pc => "pc",
        }
    }
}

/// The device classes the request's workload drives, when it asks for a device variant.
fn device_classes(req: &RunRequest) -> &'static [&'static str] {
    match hvlab_workloads::find(&req.workload) {
        Some(info) if req.devices.variant != DeviceVariant::None => info.devices,
        _ => &[],
    }
}

/// Whether the workload checks the PC platform (fw_cfg, ACPI, PIC, PCI, what firmware leaves
/// behind): it needs QEMU's `pc` with its full firmware, SeaBIOS.
fn checks_platform(req: &RunRequest) -> bool {
    hvlab_workloads::find(&req.workload).is_some_and(|w| w.host_features.contains(&"pc-platform"))
}

/// The machine a peer label runs `req` on; `None` when `vmm` is not a QEMU peer label.
pub fn machine_for(vmm: &str, req: &RunRequest) -> Option<Machine> {
    // ATA and the NE2000 are ISA devices of `pc` (microvm has no IDE; ne2k_isa is pc's).
    let isa = req.devices.variant == DeviceVariant::Emulated
        && device_classes(req)
            .iter()
            .any(|c| matches!(*c, "block" | "net"));
    match vmm {
        "qemu" if isa || checks_platform(req) => Some(Machine::Pc),
        "qemu" => Some(Machine::Microvm),
        "qemu-pc" => Some(Machine::Pc),
        _ => None,
    }
}

/// Errors from running QEMU itself (the guest's own failures are run statuses, not errors).
#[derive(Debug, Error)]
pub enum QemuError {
    /// The guest image could not be written for `-kernel`.
    #[error("cannot write the guest image to {path}: {source}")]
    Image {
        path: String,
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Waiting for QEMU failed.
    #[error("waiting for QEMU failed: {0}")]
    Wait(#[source] io::Error),
    /// The memory size cannot be expressed to QEMU.
    #[error("guest memory of {0} bytes is not a whole number of KiB")]
    Memory(u64),
    /// The disk image for QEMU's block device could not be made.
    #[error("cannot create the disk image {path} for QEMU: {source}")]
    Disk {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A label that names no QEMU peer.
    #[error("unknown peer VMM `{0}`; valid: qemu, qemu-pc")]
    UnknownPeer(String),
}

/// Finds QEMU: `$HVLAB_QEMU` if set, else `qemu-system-x86_64` on `PATH`; checks that
/// `--version` answers. `Err` says why it cannot be used and how to install it.
pub fn qemu_binary() -> Result<PathBuf, String> {
    let path = locate(std::env::var_os(QEMU_ENV), std::env::var_os("PATH"))?;
    version_of(&path)?;
    Ok(path)
}

/// The first line of `qemu --version`, or why it cannot be had.
pub fn version_of(path: &Path) -> Result<String, String> {
    let out = run_bounded(Command::new(path).arg("--version"), PROBE_TIMEOUT)
        .map_err(|e| format!("{}: --version failed: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out);
    let first = text.lines().next().unwrap_or("").trim();
    if first.starts_with("QEMU emulator version") {
        Ok(first.to_string())
    } else {
        Err(format!(
            "{} does not look like QEMU (--version said {first:?})",
            path.display()
        ))
    }
}

/// Where the binary is, given `$HVLAB_QEMU` and `$PATH` (no probing).
fn locate(env: Option<OsString>, path_var: Option<OsString>) -> Result<PathBuf, String> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{QEMU_ENV}={} is not a file: point it at {QEMU_NAME} or unset it",
                p.display()
            ))
        };
    }
    path_var
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(QEMU_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{QEMU_NAME} not found: {INSTALL_HINT}"))
}

/// Runs a short command to completion within `limit`; its stdout.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Vec<u8>, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut child = KillOnDrop(child);
    let reader = child
        .0
        .stdout
        .take()
        .map(|s| spawn_reader(s, 64 << 10, None));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                return Err(format!("no answer within {} s", limit.as_secs()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let out = reader
        .and_then(|r| r.recv_timeout(READER_GRACE).ok())
        .map(|c| c.bytes)
        .unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("exited with {status}"))
    }
}

/// [`supports_on`] for the `qemu` peer label.
pub fn supports(req: &RunRequest) -> Result<(), String> {
    supports_on(req, machine_for("qemu", req).unwrap_or(Machine::Microvm))
}

/// Why QEMU's `machine` has no counterpart of a device the request uses, if it has none.
fn device_support(req: &RunRequest, machine: Machine) -> Result<(), String> {
    let d = &req.devices;
    for &class in device_classes(req) {
        match (class, d.variant, machine) {
            (_, DeviceVariant::Vmbus, _) => {
                return Err(format!(
                    "vmbus {class}: hv's VMBus-style channels are hv's own protocol over its SynIC; QEMU's hv-vmbus speaks Microsoft's VMBus to Windows and Linux drivers, which this guest does not have"
                ));
            }
            (_, DeviceVariant::Synthetic, Machine::Pc) => {
                return Err(format!(
                    "synthetic {class} on -M pc: QEMU's pc has virtio only over PCI and the guest drives virtio-mmio; the `qemu` column runs it on microvm"
                ));
            }
            (_, DeviceVariant::Synthetic, _) if d.polling => {
                return Err(
                    "synthetic-poll: hv's device worker polls the available ring before it sleeps; QEMU's virtio-mmio devices have no polling mode to compare with"
                        .into(),
                );
            }
            ("block", DeviceVariant::Emulated, Machine::Microvm) => {
                return Err(
                    "ATA PIO on -M microvm: microvm has no IDE controller; the `qemu` and `qemu-pc` columns run it on pc's PIIX IDE"
                        .into(),
                );
            }
            ("block", _, _) if !d.disk_access.faults.is_empty() => {
                return Err(
                    "--disk-fault is hv's fault injection; the QEMU peer injects no faults".into(),
                );
            }
            ("net", DeviceVariant::Emulated, Machine::Microvm) => {
                return Err(
                    "NE2000 on -M microvm: the `qemu` and `qemu-pc` columns run QEMU's ne2k_isa on -M pc"
                        .into(),
                );
            }
            ("net", _, _) if d.net_tap => {
                return Err(
                    "--backend tap: the responder in a network namespace is hv's; the QEMU peer joins two VMs (client and server) over a datagram socket"
                        .into(),
                );
            }
            ("block" | "console" | "net", _, _) => {}
            (other, _, _) => {
                return Err(format!(
                    "{other} devices: the QEMU peer has no counterpart wired for them"
                ));
            }
        }
    }
    Ok(())
}

/// Why QEMU (`machine`) cannot run this request meaningfully, if it cannot. hv-only mechanisms
/// are refused here (the record says skipped, with this reason) rather than run as something
/// else.
pub fn supports_on(req: &RunRequest, machine: Machine) -> Result<(), String> {
    if device_classes(req).contains(&"net") {
        if req.partitions != 2 && !req.devices.net_tap {
            return Err(format!(
                "--partitions {}: under QEMU net-io runs exactly two VMs, client (part=0) and server (part=1), on one datagram socket; hv's switch joins more (the hostile roles of partitions 2 and up)",
                req.partitions
            ));
        }
    } else if req.partitions > 1 {
        return Err(format!(
            "--partitions {}: the QEMU peer runs one VM; co-running partitions are hv's",
            req.partitions
        ));
    }
    device_support(req, machine)?;
    let e = &req.enlightenments;
    if e.hyperv_features().any() {
        let kvm = kvm_ioctls::Kvm::new().map_err(|err| {
            format!(
                "cannot open /dev/kvm to check KVM's Hyper-V support for QEMU's hv-* flags: {err}"
            )
        })?;
        hyperv_under_qemu(e, &hv::enlightenments::hyperv::kernel_caps_missing(&kvm))?;
    }
    if e.disable_exits() != 0 {
        return Err(
            "idle-no-exit: QEMU has no per-exit switch that matches it (-overcommit cpu-pm=on also disables MWAIT and C-state exits)"
                .into(),
        );
    }
    if req.unmapped == UnmappedPolicy::Fatal {
        return Err("fatal unmapped accesses: QEMU ignores unassigned ports and MMIO".into());
    }
    Ok(())
}

/// QEMU's `hv-*` flags are served by KVM's in-kernel Hyper-V emulation (QEMU has no
/// userspace TLFS as hv does): `Err` with the reason when KVM lacks what they need (`missing`,
/// from [`hv::enlightenments::hyperv::kernel_caps_missing`]).
fn hyperv_under_qemu(e: &EnlightenmentSet, missing: &[&str]) -> Result<(), String> {
    if !e.hyperv_features().any() || missing.is_empty() {
        return Ok(());
    }
    let hv: Vec<&str> = e
        .names()
        .into_iter()
        .filter(|n| n.starts_with("hv-"))
        .collect();
    Err(format!(
        "enlightenments {}: QEMU's hv-* flags need KVM's in-kernel Hyper-V support, and this host's KVM lacks {}",
        hv.join(","),
        missing.join(", ")
    ))
}

/// The `-cpu` value for the request: host CPU, `arch-capabilities` off (QEMU refuses it on
/// nested hosts), and every KVM PV property set as hv would expose it.
pub fn cpu_option(req: &RunRequest) -> String {
    let bits = req.enlightenments.kvm_pv_bits();
    let mut s = String::from("host,-arch-capabilities");
    for (name, features) in KVM_PV_PROPS {
        let on = features.iter().any(|&f| bits & kvm_pv::bit(f) != 0);
        s.push_str(&format!(",{name}={}", if on { "on" } else { "off" }));
    }
    // hv's Hyper-V names are QEMU's `-cpu` flags; hv-spinlocks takes the retry count hv shows.
    for name in req.enlightenments.names() {
        match name {
            "hv-spinlocks" => s.push_str(&format!(
                ",hv-spinlocks={:#x}",
                hv::enlightenments::hyperv::cpuid::SPIN_RETRIES
            )),
            n if n.starts_with("hv-") => s.push_str(&format!(",{n}=on")),
            _ => {}
        }
    }
    s
}

/// The device words of the guest command line under QEMU: which driver to use (`blk=ata`,
/// `con=virtio`, ...) without hv's addresses, so virtio devices are found from microvm's
/// `virtio_mmio.device=` words.
fn device_words(req: &RunRequest) -> Vec<String> {
    let classes = device_classes(req);
    let synthetic = req.devices.variant == DeviceVariant::Synthetic;
    let mut words: Vec<String> = classes
        .iter()
        .filter_map(|&c| match (c, synthetic) {
            ("block", false) => Some("blk=ata"),
            ("block", true) => Some("blk=virtio"),
            ("console", false) => Some("con=uart"),
            ("console", true) => Some("con=virtio"),
            // QEMU's ne2k_isa sits where hv's does (0x300, IRQ 9: the guest's defaults).
            ("net", false) => Some("net=ne2k"),
            ("net", true) => Some("net=virtio"),
            _ => None,
        })
        .map(String::from)
        .collect();
    if synthetic && !classes.is_empty() {
        words.push(format!("evidx={}", u8::from(req.devices.event_idx)));
        words.push("poll=0".into());
    }
    words
}

/// The guest command line under QEMU: hv's with QEMU's device words, plus the words hv adds
/// for enlightenments that are off (`apic=xapic`). microvm appends its `virtio_mmio.device=`
/// words after these.
pub fn qemu_guest_cmdline(req: &RunRequest) -> String {
    guest_cmdline_of(req, 0)
}

/// [`qemu_guest_cmdline`] for the VM that plays partition `part` (`part=` on the line).
fn guest_cmdline_of(req: &RunRequest, part: u32) -> String {
    let mut line = guest_cmdline(req, part, &device_words(req));
    for w in req.enlightenments.cmdline_words() {
        line.push(' ');
        line.push_str(w);
    }
    line
}

/// QEMU's `-m` value for `bytes`.
fn mem_option(bytes: u64) -> Result<String, QemuError> {
    if bytes % (1 << 20) == 0 {
        Ok(format!("{}M", bytes >> 20))
    } else if bytes % (1 << 10) == 0 {
        Ok(format!("{}K", bytes >> 10))
    } else {
        Err(QemuError::Memory(bytes))
    }
}

/// One VM of a net-io pair under QEMU: the partition it plays and the two ends of its
/// datagram link (Unix sockets, so no port is taken and nothing leaves the host).
#[derive(Debug, Clone)]
pub struct NetLink {
    /// 0: the client; 1: the server.
    pub part: u32,
    /// The socket this VM's NIC receives on.
    pub local: PathBuf,
    /// The socket of the other VM's NIC.
    pub remote: PathBuf,
}

/// The MAC of partition `part`'s NIC: the one hv's switch gives that partition's port.
pub fn net_mac(part: u32) -> String {
    let m = hv::devices::switch::port_mac(part);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A path as one value of a QEMU option (commas doubled).
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// QEMU's `-netdev` and NIC `-device` for `link`: `-netdev dgram` between two Unix sockets,
/// `ne2k_isa` at hv's port and IRQ, or `virtio-net-device` on a microvm transport.
fn net_options(req: &RunRequest, link: &NetLink) -> Vec<OsString> {
    let netdev = format!(
        "dgram,id=hvlab-net,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        opt_path(&link.local),
        opt_path(&link.remote)
    );
    let mac = net_mac(link.part);
    let nic = if req.devices.variant == DeviceVariant::Synthetic {
        let evidx = if req.devices.event_idx { "on" } else { "off" };
        format!("virtio-net-device,netdev=hvlab-net,mac={mac},event_idx={evidx}")
    } else {
        format!(
            "ne2k_isa,iobase={:#x},irq={},netdev=hvlab-net,mac={mac}",
            hv::devices::emulated::ne2000::NE2000_BASE,
            hv::devices::emulated::ne2000::NE2000_GSI
        )
    };
    ["-netdev".into(), netdev, "-device".into(), nic]
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// QEMU's device options for the request on `machine`; `disk` is the image for a block device.
fn device_options(req: &RunRequest, machine: Machine, disk: Option<&Path>) -> Vec<OsString> {
    let d = &req.devices;
    let evidx = if d.event_idx { "on" } else { "off" };
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    let classes = device_classes(req);
    if d.variant == DeviceVariant::Synthetic && machine == Machine::Microvm {
        // microvm's transports are legacy (version 1) unless told otherwise; the guest
        // drives virtio 1.0 (version 2) only, as hv offers.
        push(&["-global", "virtio-mmio.force-legacy=false"]);
    }
    for &class in classes {
        match (class, d.variant) {
            ("block", v) => {
                let Some(disk) = disk else { continue };
                let mut drive = OsString::from("file=");
                // QEMU splits options at commas; a comma in the path is doubled.
                drive.push(disk.to_string_lossy().replace(',', ",,"));
                drive.push(",format=raw,cache=writeback");
                if d.disk_access.readonly {
                    drive.push(",readonly=on");
                }
                if v == DeviceVariant::Synthetic {
                    drive.push(",if=none,id=hvlab-disk");
                    a.push("-drive".into());
                    a.push(drive);
                    a.push("-device".into());
                    a.push(format!("virtio-blk-device,drive=hvlab-disk,event_idx={evidx}").into());
                } else {
                    drive.push(",if=ide,index=0,media=disk");
                    a.push("-drive".into());
                    a.push(drive);
                }
            }
            ("console", DeviceVariant::Synthetic) => {
                a.extend(
                    [
                        "-chardev",
                        "null,id=hvlab-con",
                        "-device",
                        &format!("virtio-serial-device,event_idx={evidx}"),
                        "-device",
                        "virtconsole,chardev=hvlab-con",
                    ]
                    .iter()
                    .map(OsString::from),
                );
            }
            // The emulated console is the boot console (-serial stdio).
            _ => {}
        }
    }
    a
}

/// The `-M` value. microvm without ACPI: only then does it append `virtio_mmio.device=` words
/// to the command line (with ACPI its DSDT names the transports, and the guest reads no ACPI),
/// and without its second IOAPIC (the guest programs the first one only, so virtio interrupts
/// must land on pins below 24).
fn machine_option(machine: Machine) -> &'static str {
    match machine {
        Machine::Microvm => "microvm,acpi=off,ioapic2=off",
        Machine::Pc => "pc",
    }
}

/// The arguments after the binary, for `kernel` (the guest ELF on disk) on `machine`; `disk`
/// backs a block device when the workload has one.
pub fn command_line(
    req: &RunRequest,
    kernel: &Path,
    machine: Machine,
    disk: Option<&Path>,
) -> Result<Vec<OsString>, QemuError> {
    command_line_for(req, kernel, machine, disk, None)
}

/// [`command_line`] for one VM of a net-io pair (`net`), which plays partition `net.part`.
pub fn command_line_for(
    req: &RunRequest,
    kernel: &Path,
    machine: Machine,
    disk: Option<&Path>,
    net: Option<&NetLink>,
) -> Result<Vec<OsString>, QemuError> {
    let mut a: Vec<OsString> = [
        "-M",
        machine_option(machine),
        "-accel",
        "kvm",
        "-cpu",
        &cpu_option(req),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-m",
        &mem_option(req.mem_bytes)?,
        "-smp",
        &req.vcpus.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if machine == Machine::Pc && !checks_platform(req) {
        // qboot (QEMU's microvm firmware, shipped as qboot.rom) boots pc too, in well under a
        // second; SeaBIOS takes about 10 s where guest kernel code is emulated. Platform checks
        // keep SeaBIOS: they test what a PC's firmware leaves (i8042 system flag, PIC masks).
        a.push("-bios".into());
        a.push("qboot.rom".into());
    }
    a.push("-kernel".into());
    a.push(kernel.as_os_str().to_owned());
    a.push("-append".into());
    a.push(guest_cmdline_of(req, net.map_or(0, |n| n.part)).into());
    a.extend(device_options(req, machine, disk));
    if let Some(link) = net {
        a.extend(net_options(req, link));
    }
    Ok(a)
}

/// The disk image behind QEMU's block device: the request's `--disk` when given (created
/// sparse at the requested size when missing), else a sparse temporary file on tmpfs
/// (`/dev/shm`) when there is one, the closest QEMU gets to hv's in-memory default disk.
/// A temporary image is removed on drop.
#[derive(Debug)]
struct PeerDisk {
    path: PathBuf,
    temporary: bool,
}

impl PeerDisk {
    fn for_request(req: &RunRequest) -> Result<Option<PeerDisk>, QemuError> {
        if !device_classes(req).contains(&"block") {
            return Ok(None);
        }
        let size = match req.devices.disk_size {
            0 => hv::devices::disk::DEFAULT_DISK_SIZE,
            n => n,
        };
        let (path, temporary) = match &req.devices.disk {
            Some(p) if p.exists() => {
                return Ok(Some(PeerDisk {
                    path: p.clone(),
                    temporary: false,
                }));
            }
            Some(p) => (p.clone(), false),
            None => {
                static SEQ: AtomicU64 = AtomicU64::new(0);
                let shm = Path::new("/dev/shm");
                let dir = if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                };
                let name = format!(
                    "hvlab-qemu-disk-{}-{}.img",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                );
                (dir.join(name), true)
            }
        };
        let disk = PeerDisk { path, temporary };
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&disk.path)
            .and_then(|f| f.set_len(size));
        made.map_err(|source| QemuError::Disk {
            path: disk.path.display().to_string(),
            source,
        })?;
        Ok(Some(disk))
    }
}

impl Drop for PeerDisk {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Guest TSC frequency as QEMU's guest sees it: KVM_GET_TSC_KHZ of a throwaway vCPU (QEMU sets
/// no `tsc-frequency`, so its vCPUs get KVM's default, the same value). Probed once.
fn tsc_khz() -> Result<Option<u32>, HvError> {
    static CACHE: OnceLock<Option<u32>> = OnceLock::new();
    if let Some(v) = CACHE.get() {
        return Ok(*v);
    }
    let kvm = hv::error::open_kvm()?;
    let khz = kvm
        .create_vm()
        .ok()
        .and_then(|vm| vm.create_vcpu(0).ok())
        .and_then(|v| v.get_tsc_khz().ok());
    Ok(*CACHE.get_or_init(|| khz))
}

/// The guest image on disk for `-kernel`, removed on drop.
#[derive(Debug)]
struct TempImage(PathBuf);

impl TempImage {
    fn write(bytes: &[u8]) -> Result<TempImage, QemuError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hvlab-qemu-{}-{}.elf",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).map_err(|source| QemuError::Image {
            path: path.display().to_string(),
            source,
        })?;
        Ok(TempImage(path))
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process that is killed and reaped if it is still around when dropped, so that no
/// path out of [`run_qemu`] (early return, panic) leaves QEMU running.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What a reader thread collected from one pipe.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
    /// When the first complete line arrived.
    first_line: Option<Instant>,
}

/// Drains `src` on a thread, keeping at most `limit` bytes (the rest is counted), optionally
/// echoing to stderr. The result arrives on the channel when the pipe closes.
fn spawn_reader(
    src: impl Read + Send + 'static,
    limit: usize,
    echo: Option<io::Stderr>,
) -> mpsc::Receiver<Captured> {
    spawn_reader_until(src, limit, echo, None)
}

/// [`spawn_reader`] that also signals `ready.1` once the kept bytes contain `ready.0`.
fn spawn_reader_until(
    mut src: impl Read + Send + 'static,
    limit: usize,
    echo: Option<io::Stderr>,
    mut ready: Option<(&'static str, mpsc::Sender<()>)>,
) -> mpsc::Receiver<Captured> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut c = Captured::default();
        let mut buf = [0u8; 8192];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = &buf[..n];
                    if c.first_line.is_none() && chunk.contains(&b'\n') {
                        c.first_line = Some(Instant::now());
                    }
                    if let Some(e) = &echo {
                        let _ = e.lock().write_all(chunk);
                    }
                    let room = limit.saturating_sub(c.bytes.len()).min(n);
                    c.bytes.extend_from_slice(&chunk[..room]);
                    c.dropped += (n - room) as u64;
                    if let Some((marker, _)) = &ready
                        && c.bytes
                            .windows(marker.len())
                            .any(|w| w == marker.as_bytes())
                        && let Some((_, signal)) = ready.take()
                    {
                        let _ = signal.send(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(c);
    });
    rx
}

/// How one QEMU run ended, with what it printed.
#[derive(Debug)]
pub struct QemuOutcome {
    pub status: RunStatus,
    pub console: String,
    pub console_dropped: u64,
    pub stderr: String,
    /// From spawn to QEMU's exit (or the kill).
    pub wall: Duration,
    /// From spawn to the first complete console line: QEMU's startup plus the guest's boot.
    pub first_line: Option<Duration>,
    pub pid: u32,
}

/// Maps QEMU's exit to a run status. With `isa-debug-exit`, a guest status `s` becomes exit
/// code `(s << 1) | 1` (truncated to 8 bits by the OS, so statuses above 127 wrap); QEMU's
/// own failures also exit with 1, which is told apart by the console being empty (the guest
/// always prints before it exits). Exit code 0 means QEMU stopped without the exit port being
/// written: with `-no-reboot`, a triple fault or a guest reset.
fn map_exit(status: ExitStatus, console_empty: bool, stderr: &str) -> RunStatus {
    use std::os::unix::process::ExitStatusExt;
    let tail = || {
        let t = stderr.trim();
        if t.is_empty() {
            String::new()
        } else {
            format!(": {}", t.lines().last().unwrap_or(t))
        }
    };
    match (status.code(), status.signal()) {
        (Some(1), _) if console_empty => RunStatus::Stopped(format!(
            "QEMU failed before the guest printed anything{}",
            tail()
        )),
        (Some(0), _) => RunStatus::Stopped(format!(
            "QEMU exited without a guest exit status (triple fault or guest reset under -no-reboot){}",
            tail()
        )),
        (Some(c), _) if c & 1 == 1 => RunStatus::GuestExit((c as u32) >> 1),
        (Some(c), _) => RunStatus::Stopped(format!("QEMU exited with code {c}{}", tail())),
        (None, Some(sig)) => RunStatus::Stopped(format!("QEMU killed by signal {sig}")),
        (None, None) => RunStatus::Stopped(format!("QEMU ended with {status}")),
    }
}

/// Boots the request's image under QEMU's `machine` once and waits (at most `req.timeout`;
/// QEMU is killed then). `qemu` is the binary from [`qemu_binary`].
pub fn boot(qemu: &Path, req: &RunRequest, machine: Machine) -> Result<QemuOutcome, QemuError> {
    let vm = Vm::spawn(qemu, req, machine, None, None)?;
    let deadline = vm.started + req.timeout;
    vm.wait(deadline, req.timeout)
}

/// A QEMU process on its way, with the files it uses (removed when it is dropped, after the
/// process is gone: fields drop in order).
struct Vm {
    child: KillOnDrop,
    out: Option<mpsc::Receiver<Captured>>,
    err: Option<mpsc::Receiver<Captured>>,
    /// Signalled once the console shows the marker given to [`Vm::spawn`].
    ready: Option<mpsc::Receiver<()>>,
    started: Instant,
    pid: u32,
    _image: TempImage,
    _disk: Option<PeerDisk>,
}

impl Vm {
    /// Starts QEMU for `req` on `machine` (one VM of a net-io pair with `net`); `ready_on`
    /// names a console line to be told about.
    fn spawn(
        qemu: &Path,
        req: &RunRequest,
        machine: Machine,
        net: Option<&NetLink>,
        ready_on: Option<&'static str>,
    ) -> Result<Vm, QemuError> {
        let bytes = req.image.as_deref().unwrap_or(hv::GUEST_IMAGE);
        let image = match machine {
            Machine::Microvm => TempImage::write(&without_multiboot(bytes))?,
            Machine::Pc => TempImage::write(bytes)?,
        };
        let disk = PeerDisk::for_request(req)?;
        let mut cmd = Command::new(qemu);
        cmd.args(command_line_for(
            req,
            &image.0,
            machine,
            disk.as_ref().map(|d| d.path.as_path()),
            net,
        )?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(cpus) = &req.cpus {
            pin_to(&mut cmd, cpus);
        }
        let started = Instant::now();
        let mut child = KillOnDrop(cmd.spawn().map_err(|source| QemuError::Spawn {
            path: qemu.display().to_string(),
            source,
        })?);
        let pid = child.0.id();
        let echo = req.echo_console.then(io::stderr);
        let (ready_tx, ready) = match ready_on {
            Some(m) => {
                let (tx, rx) = mpsc::channel();
                (Some((m, tx)), Some(rx))
            }
            None => (None, None),
        };
        let out = child
            .0
            .stdout
            .take()
            .map(|s| spawn_reader_until(s, CONSOLE_CAPTURE_LIMIT, echo, ready_tx));
        let err = child
            .0
            .stderr
            .take()
            .map(|s| spawn_reader(s, STDERR_LIMIT, None));
        Ok(Vm {
            child,
            out,
            err,
            ready,
            started,
            pid,
            _image: image,
            _disk: disk,
        })
    }

    /// Waits until the console showed the ready marker (true), or QEMU ended or `deadline`
    /// passed (false).
    fn wait_ready(&mut self, deadline: Instant) -> Result<bool, QemuError> {
        let Some(rx) = &self.ready else {
            return Ok(true);
        };
        loop {
            if rx.try_recv().is_ok() {
                return Ok(true);
            }
            if self.child.0.try_wait().map_err(QemuError::Wait)?.is_some()
                || Instant::now() >= deadline
            {
                return Ok(false);
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for QEMU to exit, killing it at `deadline` (the status is then a timeout of
    /// `timeout`).
    fn wait(mut self, deadline: Instant, timeout: Duration) -> Result<QemuOutcome, QemuError> {
        let exit = loop {
            if let Some(s) = self.child.0.try_wait().map_err(QemuError::Wait)? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                // Kill and reap now; the status is the timeout, whatever the kill returns.
                let _ = self.child.0.kill();
                let _ = self.child.0.wait();
                break None;
            }
            thread::sleep(POLL);
        };
        let wall = self.started.elapsed();
        let collect = |rx: Option<mpsc::Receiver<Captured>>| {
            rx.and_then(|r| r.recv_timeout(READER_GRACE).ok())
                .unwrap_or_default()
        };
        let out = collect(self.out.take());
        let err = collect(self.err.take());
        let console = String::from_utf8_lossy(&out.bytes).into_owned();
        let stderr = String::from_utf8_lossy(&err.bytes).into_owned();
        let status = match exit {
            Some(s) => map_exit(s, out.bytes.is_empty(), &stderr),
            None => RunStatus::Timeout(timeout),
        };
        Ok(QemuOutcome {
            status,
            console,
            console_dropped: out.dropped,
            stderr,
            wall,
            first_line: out
                .first_line
                .map(|t| t.saturating_duration_since(self.started)),
            pid: self.pid,
        })
    }
}

/// `image` with its multiboot header's magic cleared, so QEMU boots the PVH entry. QEMU's
/// `-kernel` tries multiboot before PVH, and a multiboot guest gets the command line from the
/// multiboot information QEMU built at load time, without the `virtio_mmio.device=` words
/// microvm appends later (to fw_cfg's command line, which the PVH path reads): the guest
/// would find no virtio transport. A header is a 4-aligned magic in the first 8 KiB whose
/// checksum holds (magic + flags + checksum = 0).
fn without_multiboot(image: &[u8]) -> Vec<u8> {
    const MAGIC: u32 = 0x1bad_b002;
    const SCAN: usize = 8192;
    let mut out = image.to_vec();
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .and_then(|w| w.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let end = out.len().min(SCAN).saturating_sub(12);
    for at in (0..=end).step_by(4) {
        if let (Some(MAGIC), Some(flags), Some(sum)) =
            (word(&out, at), word(&out, at + 4), word(&out, at + 8))
            && MAGIC.wrapping_add(flags).wrapping_add(sum) == 0
        {
            out[at..at + 4].fill(0);
            break;
        }
    }
    out
}

/// `-netdev dgram` (the pair's link) exists from QEMU 7.2 on; `version` is the first line of
/// `--version`.
fn dgram_support(version: &str) -> Result<(), String> {
    let num = version
        .strip_prefix("QEMU emulator version ")
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("");
    let mut parts = num.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= (7, 2) => Ok(()),
        _ => Err(format!(
            "net-io under QEMU joins two VMs with -netdev dgram, which needs QEMU 7.2 or later; this is {version:?}"
        )),
    }
}

/// A directory of its own for a pair's sockets, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> Result<SocketDir, QemuError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hvlab-qemu-net-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|source| QemuError::Image {
            path: path.display().to_string(),
            source,
        })?;
        Ok(SocketDir(path))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a net-io pair under QEMU ended: the client's outcome (its records are the run's) and
/// the server's status, with the server's stderr's last line when it failed.
#[derive(Debug)]
pub struct PairOutcome {
    pub client: QemuOutcome,
    pub server: RunStatus,
    pub server_stderr: String,
}

/// Runs net-io as two QEMU VMs joined by `-netdev dgram` over two Unix sockets: the server
/// (part=1) first, and the client (part=0) once the server's console says its NIC is up
/// ([`hvlab_workloads::net_io::SERVER_READY`]), so that the client's first ARP request is
/// not sent to a card that is not yet receiving. Both share `req.timeout`.
pub fn boot_pair(
    qemu: &Path,
    req: &RunRequest,
    machine: Machine,
) -> Result<PairOutcome, QemuError> {
    let dir = SocketDir::create()?;
    let (client_sock, server_sock) = (dir.0.join("client.sock"), dir.0.join("server.sock"));
    let server_link = NetLink {
        part: 1,
        local: server_sock.clone(),
        remote: client_sock.clone(),
    };
    let client_link = NetLink {
        part: 0,
        local: client_sock,
        remote: server_sock,
    };
    let mut server = Vm::spawn(
        qemu,
        req,
        machine,
        Some(&server_link),
        Some(hvlab_workloads::net_io::SERVER_READY),
    )?;
    let deadline = server.started + req.timeout;
    if !server.wait_ready(deadline)? {
        let s = server.wait(Instant::now(), req.timeout)?;
        let why = match &s.status {
            RunStatus::Timeout(_) => "never printed that its NIC is up".to_string(),
            other => format!("ended before its NIC was up: {other:?}"),
        };
        let mut client = s;
        client.status = RunStatus::Stopped(format!(
            "net-io server (part=1) under QEMU {why}; the client was not started"
        ));
        return Ok(PairOutcome {
            server: client.status.clone(),
            server_stderr: client.stderr.clone(),
            client,
        });
    }
    let client = Vm::spawn(qemu, req, machine, Some(&client_link), None)?;
    let client = client.wait(deadline, req.timeout)?;
    // The server ends right after answering DONE; it gets a moment more than the client.
    let server = server.wait(Instant::now().max(deadline) + READER_GRACE, req.timeout)?;
    Ok(PairOutcome {
        client,
        server: server.status,
        server_stderr: server.stderr,
    })
}

/// Pins QEMU (all its threads, vCPUs included, inherit it) to the union of `cpus`.
fn pin_to(cmd: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: `c` is below CPU_SETSIZE, so CPU_SET stays inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    // SAFETY: the closure runs in the forked child before exec; it only makes one system call
    // (async-signal-safe) on a set prepared before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs the request under QEMU and returns its run records (`vmm = "qemu"`).
///
/// Validation is hv's (unknown workloads and arguments are errors). When QEMU is missing, or
/// cannot run the request meaningfully ([`supports`]), the answer is one `run` record with
/// status skipped and the reason; numbers are never made up.
pub fn run_qemu(
    req: &RunRequest,
    ctx: &RecordContext,
) -> Result<Vec<RunRecord>, crate::BenchError> {
    run_qemu_as("qemu", req, ctx)
}

/// The request as QEMU runs it: virtconsole has no loopback, so the read-back phase is off
/// (with the reason returned for the records' notes).
fn adjusted(req: &RunRequest) -> (RunRequest, Option<&'static str>) {
    let mut r = req.clone();
    let vcon = req.devices.variant == DeviceVariant::Synthetic
        && device_classes(req).contains(&"console")
        && hvlab_workloads::find(&req.workload)
            .is_some_and(|i| i.params.iter().any(|p| p.key == "readback"));
    if vcon {
        r.args.insert("readback".into(), "0".into());
        return (
            r,
            Some(
                "readback=0: QEMU's virtconsole has no loopback (hv's virtio-console returns what the guest sends), so only con-write runs",
            ),
        );
    }
    (r, None)
}

/// [`run_qemu`] under the peer label `vmm` (one of [`PEER_VMMS`]), which picks the machine
/// ([`machine_for`]) and is what the records' `vmm` says.
pub fn run_qemu_as(
    vmm: &str,
    req: &RunRequest,
    ctx: &RecordContext,
) -> Result<Vec<RunRecord>, crate::BenchError> {
    let machine = machine_for(vmm, req).ok_or_else(|| QemuError::UnknownPeer(vmm.into()))?;
    let (req, adjust_note) = adjusted(req);
    let req = &req;
    let info = validate(req)?;
    let params = effective_args(info, req);
    let mut base = hv::run::base_record(req, ctx, &params, vmm, 0);
    let skipped = |why: String| {
        let mut r = base.clone();
        r.phase = "run".into();
        r.status = RecordStatus::Skipped(why);
        vec![r]
    };
    if let Err(why) = supports_on(req, machine) {
        return Ok(skipped(why));
    }
    let qemu = match qemu_binary() {
        Ok(q) => q,
        Err(why) => return Ok(skipped(why)),
    };
    if device_classes(req).contains(&"net")
        && let Err(why) = dgram_support(&version_of(&qemu).unwrap_or_default())
    {
        return Ok(skipped(why));
    }
    let tsc_khz = tsc_khz()?;
    let mut pair_notes = Vec::new();
    let outcome = if device_classes(req).contains(&"net") {
        let pair = boot_pair(&qemu, req, machine)?;
        pair_notes.push(format!(
            "records are the client's (part=0); the server (part=1) ran as a second QEMU, NICs {} and {}, joined by -netdev dgram over two Unix sockets",
            net_mac(0),
            net_mac(1)
        ));
        if pair.server != RunStatus::GuestExit(0) {
            let tail = pair.server_stderr.trim().lines().last().unwrap_or("");
            pair_notes.push(format!("server: {:?} {tail}", pair.server));
        }
        pair.client
    } else {
        boot(&qemu, req, machine)?
    };
    let report = guest_output::parse(&outcome.console);
    let mut notes = vec![
        version_of(&qemu).unwrap_or_else(|e| e),
        "exits, KVM stats, tracepoints and per-phase wall time are not collected under QEMU; phase timings are the guest's TSC".into(),
        format!("QEMU machine: -M {}", machine_option(machine)),
    ];
    notes.extend(device_notes(req, machine).into_iter().map(String::from));
    notes.extend(adjust_note.map(String::from));
    notes.extend(pair_notes);
    match tsc_khz {
        Some(_) => notes.push("tsc_khz from KVM_GET_TSC_KHZ of a throwaway vCPU".into()),
        None => notes.push("tsc_khz unknown: KVM_GET_TSC_KHZ failed".into()),
    }
    if let Some(t) = outcome.first_line {
        notes.push(format!(
            "first console line {:.1} ms after spawning QEMU",
            t.as_secs_f64() * 1e3
        ));
    }
    if info.host_features.contains(&"kernel-port") {
        notes.push(
            "hv's test port, test MMIO and kernel port are unassigned under QEMU (reads are all ones, answered=0)"
                .into(),
        );
    }
    if req.cpus.is_some() {
        notes
            .push("--cpus pins the whole QEMU process to the CPU set, not one vCPU per CPU".into());
    }
    if req.max_exits.is_some() {
        notes.push("--max-exits is not enforced under QEMU".into());
    }
    if matches!(outcome.status, RunStatus::Timeout(_)) {
        notes.push(format!("QEMU pid {} killed at the timeout", outcome.pid));
    }
    base.tsc_khz = u64::from(tsc_khz.unwrap_or(0));
    base.notes = notes;
    let mut records = hv::run::guest_records(
        base,
        &outcome.status,
        &report,
        outcome.console_dropped,
        &QemuCounters(outcome.wall),
    );
    for r in &mut records {
        if let Some(c) = phase_caveat(&r.workload, &r.phase) {
            r.notes.push(c.to_string());
        }
    }
    Ok(records)
}

/// What differs between QEMU's devices and hv's for this request, for the records' notes.
fn device_notes(req: &RunRequest, machine: Machine) -> Vec<&'static str> {
    let classes = device_classes(req);
    let mut n = Vec::new();
    let synthetic = req.devices.variant == DeviceVariant::Synthetic;
    if synthetic && !classes.is_empty() {
        n.push("virtio-mmio transports found from microvm's virtio_mmio.device= words; QEMU holds the interrupt line until acknowledged, so the guest reads InterruptStatus and writes InterruptAck per interrupt (2 MMIO exits hv's edge-signalled transport does not need)");
        n.push("QEMU's virtio-mmio QueueNotify goes through an ioeventfd (completed in KVM), as hv's doorbell does");
    }
    if classes.contains(&"block") {
        n.push("disk: QEMU's raw file (sparse, on tmpfs unless --disk names one), cache=writeback; hv's default disk is in memory");
        if !synthetic && machine == Machine::Pc {
            n.push("ATA PIO on QEMU's PIIX IDE (-M pc); like hv's, one command at a time (qd=1)");
        }
    }
    if classes.contains(&"net") {
        n.push("network: QEMU's NIC on -netdev dgram (Unix sockets between two QEMU processes), where hv copies frames between partitions through its in-process switch");
        if !synthetic {
            n.push("NE2000: QEMU's ne2k_isa on -M pc at 0x300, IRQ 9 through the IOAPIC");
        }
    }
    if classes.contains(&"console") && !synthetic {
        n.push("16550: QEMU's, which is also the boot console on stdio; its loopback mode (MCR.LOOP) is QEMU's");
    }
    n
}

/// Why the QEMU row of `workload`/`phase` does not measure what hv's row measures, where the
/// two run the same guest code through different mechanisms. Shown in the record's notes and
/// next to the hv/qemu ratio in the report.
pub fn phase_caveat(workload: &str, phase: &str) -> Option<&'static str> {
    match (workload, phase) {
        ("exit-floor", "pio-kernel") => Some(
            "not the same mechanism: hv completes pio-kernel in KVM through an ioeventfd (no userspace exit); under QEMU the port is unassigned, so each write is a userspace exit into QEMU",
        ),
        _ => None,
    }
}

/// What QEMU leaves for the records: only the whole run's wall time (hv's counters do not
/// exist there, and are never estimated).
struct QemuCounters(Duration);

impl hv::run::HostCounters for QemuCounters {
    fn phase(&self, _r: &mut RunRecord) {}

    fn whole_run(&self, r: &mut RunRecord) {
        r.wall_ns = u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(variant: DeviceVariant) -> hv::devices::DeviceOptions {
        hv::devices::DeviceOptions {
            variant,
            event_idx: true,
            ..Default::default()
        }
    }

    fn args_of(r: &RunRequest, m: Machine, disk: Option<&Path>) -> Vec<String> {
        command_line(r, Path::new("/tmp/g.elf"), m, disk)
            .unwrap_or_default()
            .iter()
            .map(|x| x.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn each_device_variant_gets_qemus_own_device_or_a_reason() {
        let mut r = req("blk-io");
        // ATA: pc's IDE under both labels; microvm has none.
        r.devices = dev(DeviceVariant::Emulated);
        assert_eq!(machine_for("qemu", &r), Some(Machine::Pc));
        assert_eq!(machine_for("qemu-pc", &r), Some(Machine::Pc));
        assert_eq!(machine_for("hv", &r), None);
        assert!(
            supports_on(&r, Machine::Microvm)
                .unwrap_err()
                .contains("no IDE")
        );
        let a = args_of(&r, Machine::Pc, Some(Path::new("/d,x.img")));
        assert!(
            a.contains(
                &"file=/d,,x.img,format=raw,cache=writeback,if=ide,index=0,media=disk".into()
            ),
            "{a:?}"
        );
        assert!(a.iter().any(|w| w.contains(" blk=ata")), "{a:?}");
        // virtio-blk: microvm's transport, found by the guest from the command line.
        r.devices = dev(DeviceVariant::Synthetic);
        assert_eq!(machine_for("qemu", &r), Some(Machine::Microvm));
        assert!(supports_on(&r, Machine::Pc).unwrap_err().contains("PCI"));
        let a = args_of(&r, Machine::Microvm, Some(Path::new("/d.img")));
        assert!(
            a.contains(&"virtio-blk-device,drive=hvlab-disk,event_idx=on".into()),
            "{a:?}"
        );
        assert!(
            a.contains(&"virtio-mmio.force-legacy=false".into()),
            "{a:?}"
        );
        let line = qemu_guest_cmdline(&r);
        assert!(line.contains(" blk=virtio evidx=1 poll=0"), "{line}");
        assert!(
            !line.contains("blk_mmio"),
            "hv's addresses never reach QEMU's guest: {line}"
        );
        r.devices.event_idx = false;
        assert!(
            args_of(&r, Machine::Microvm, Some(Path::new("/d.img")))
                .contains(&"virtio-blk-device,drive=hvlab-disk,event_idx=off".into())
        );
        r.devices.polling = true;
        assert!(
            supports_on(&r, Machine::Microvm)
                .unwrap_err()
                .contains("polling")
        );
        // Consoles: 16550 on both machines, virtconsole on microvm without read-back.
        let mut c = req("console-io");
        c.devices = dev(DeviceVariant::Emulated);
        assert_eq!(machine_for("qemu", &c), Some(Machine::Microvm));
        assert_eq!(supports_on(&c, Machine::Pc), Ok(()));
        assert!(qemu_guest_cmdline(&c).contains(" con=uart"));
        assert_eq!(adjusted(&c).1, None);
        c.devices = dev(DeviceVariant::Synthetic);
        let a = args_of(&c, Machine::Microvm, None);
        assert!(a.contains(&"virtconsole,chardev=hvlab-con".into()), "{a:?}");
        let (adj, why) = adjusted(&c);
        assert_eq!(adj.args.get("readback").map(String::as_str), Some("0"));
        assert!(why.is_some_and(|w| w.contains("loopback")));
    }

    fn req(workload: &str) -> RunRequest {
        RunRequest {
            workload: workload.into(),
            ..RunRequest::default()
        }
    }

    #[test]
    fn net_io_pair_gets_qemus_nics_with_the_switch_macs() {
        let mut r = req("net-io");
        r.partitions = 2;
        r.devices = dev(DeviceVariant::Emulated);
        assert_eq!(machine_for("qemu", &r), Some(Machine::Pc));
        assert_eq!(supports_on(&r, Machine::Pc), Ok(()));
        assert!(
            supports_on(&r, Machine::Microvm)
                .unwrap_err()
                .contains("ne2k_isa")
        );
        let link = NetLink {
            part: 1,
            local: "/t/s,1.sock".into(),
            remote: "/t/c.sock".into(),
        };
        let args = |r: &RunRequest, m| -> Vec<String> {
            command_line_for(r, Path::new("/g"), m, None, Some(&link))
                .unwrap_or_default()
                .iter()
                .map(|x| x.to_string_lossy().into_owned())
                .collect()
        };
        let a = args(&r, Machine::Pc);
        assert!(
            a.contains(
                &"ne2k_isa,iobase=0x300,irq=9,netdev=hvlab-net,mac=02:68:76:00:00:02".into()
            ),
            "{a:?}"
        );
        assert!(
            a.contains(&"dgram,id=hvlab-net,local.type=unix,local.path=/t/s,,1.sock,remote.type=unix,remote.path=/t/c.sock".into()),
            "{a:?}"
        );
        assert!(
            a.iter()
                .any(|w| w.starts_with("net-io cpus=1 part=1 ") && w.contains(" net=ne2k")),
            "{a:?}"
        );
        r.devices = dev(DeviceVariant::Synthetic);
        assert_eq!(machine_for("qemu", &r), Some(Machine::Microvm));
        let a = args(&r, Machine::Microvm);
        assert!(
            a.contains(
                &"virtio-net-device,netdev=hvlab-net,mac=02:68:76:00:00:02,event_idx=on".into()
            ),
            "{a:?}"
        );
        assert!(a.iter().any(|w| w.contains(" net=virtio evidx=1")), "{a:?}");
        for n in [1, 3] {
            r.partitions = n;
            assert!(supports(&r).unwrap_err().contains("exactly two"), "{n}");
        }
        r.partitions = 2;
        r.devices.net_tap = true;
        assert!(supports(&r).unwrap_err().contains("tap"));
    }

    #[test]
    fn dgram_needs_qemu_7_2() {
        assert_eq!(
            dgram_support("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Ok(())
        );
        assert_eq!(dgram_support("QEMU emulator version 10.0.0"), Ok(()));
        for old in [
            "QEMU emulator version 7.1.0",
            "QEMU emulator version 6.2.0",
            "",
        ] {
            assert!(dgram_support(old).unwrap_err().contains("7.2"), "{old}");
        }
    }

    #[test]
    fn microvm_image_loses_only_its_multiboot_magic() {
        let mut img = vec![0xaau8; 64];
        let (flags, sum) = (3u32, 0u32.wrapping_sub(0x1bad_b002 + 3));
        img[16..20].copy_from_slice(&0x1bad_b002u32.to_le_bytes());
        img[20..24].copy_from_slice(&flags.to_le_bytes());
        img[24..28].copy_from_slice(&sum.to_le_bytes());
        let out = without_multiboot(&img);
        assert_eq!(&out[16..20], &[0; 4]);
        assert_eq!((&out[..16], &out[20..]), (&img[..16], &img[20..]));
        // A magic whose checksum fails is data, left alone.
        img[24] ^= 1;
        assert_eq!(without_multiboot(&img), img);
        // hv's guest image has a header, and QEMU would take it before the PVH note.
        assert_ne!(without_multiboot(hv::GUEST_IMAGE), hv::GUEST_IMAGE);
    }

    #[test]
    fn pio_kernel_row_says_it_is_not_the_same_mechanism() {
        let c = phase_caveat("exit-floor", "pio-kernel").unwrap_or_default();
        assert!(
            c.contains("ioeventfd") && c.contains("userspace exit"),
            "{c}"
        );
        assert_eq!(phase_caveat("exit-floor", "pio-out"), None);
    }

    #[test]
    fn missing_binary_reason_names_the_install_line() {
        let e = locate(None, Some(OsString::from("/nonexistent-hvlab"))).unwrap_err();
        assert!(e.contains(QEMU_NAME) && e.contains(INSTALL_HINT), "{e}");
        let e = locate(Some("/nonexistent/qemu".into()), None).unwrap_err();
        assert!(e.contains(QEMU_ENV), "{e}");
    }

    #[test]
    fn env_override_wins_over_path() {
        let me = std::env::current_exe().unwrap_or_default();
        assert_eq!(locate(Some(me.clone().into()), None), Ok(me));
    }

    #[test]
    fn supports_refuses_what_qemu_cannot_run() {
        let mut r = req("exit-floor");
        assert_eq!(supports(&r), Ok(()));
        r.partitions = 2;
        assert!(supports(&r).unwrap_err().contains("partitions"));
        let mut blk = req("blk-io");
        blk.devices = dev(DeviceVariant::Synthetic);
        assert_eq!(supports(&blk), Ok(()));
        if let Ok(f) = "eio@write:3".parse() {
            blk.devices.disk_access.faults.push(f);
        }
        assert!(supports(&blk).unwrap_err().contains("disk-fault"));
        let mut r = req("exit-floor");
        r.enlightenments = EnlightenmentSet::parse("idle-no-exit").unwrap_or_default();
        assert!(supports(&r).unwrap_err().contains("idle-no-exit"));
        r.enlightenments = EnlightenmentSet::parse("kvm-clock,pv-eoi").unwrap_or_default();
        assert_eq!(supports(&r), Ok(()));
    }

    #[test]
    fn hyperv_variants_are_skipped_where_kvm_lacks_hyperv() {
        let hv = EnlightenmentSet::parse("kvm-clock,ipi-hypercall").unwrap_or_default();
        let why =
            hyperv_under_qemu(&hv, &["KVM_CAP_HYPERV", "KVM_CAP_HYPERV_SEND_IPI"]).unwrap_err();
        assert!(why.contains("hv-vpindex,hv-ipi"), "{why}");
        assert!(why.contains("KVM_CAP_HYPERV_SEND_IPI"), "{why}");
        assert!(!why.contains("kvm-clock"), "{why}");
        // Where KVM has Hyper-V, QEMU runs them; without hv-* members nothing is asked.
        assert_eq!(hyperv_under_qemu(&hv, &[]), Ok(()));
        let kvm_only = EnlightenmentSet::parse("kvm-clock,pv-ipi").unwrap_or_default();
        assert_eq!(hyperv_under_qemu(&kvm_only, &["KVM_CAP_HYPERV"]), Ok(()));
        // supports() asks this host: on one without Hyper-V in KVM (ours), a skip naming it.
        let mut r = req("exit-floor");
        r.enlightenments = hv;
        if let Ok(kvm) = kvm_ioctls::Kvm::new()
            && !hv::enlightenments::hyperv::kernel_caps_missing(&kvm).is_empty()
        {
            assert!(supports(&r).unwrap_err().contains("in-kernel Hyper-V"));
        }
        // The -cpu value passes the hv-* names as QEMU's flags.
        let cpu = cpu_option(&r);
        assert!(
            cpu.contains(",hv-vpindex=on") && cpu.contains(",hv-ipi=on"),
            "{cpu}"
        );
        r.enlightenments = EnlightenmentSet::parse("hv-spinlocks").unwrap_or_default();
        assert!(cpu_option(&r).contains(",hv-spinlocks=0x"));
    }

    #[test]
    fn cpu_option_mirrors_the_kvm_leaf_hv_would_expose() {
        let mut r = req("exit-floor");
        let none = cpu_option(&r);
        assert!(none.starts_with("host,-arch-capabilities,"));
        assert!(none.contains("kvmclock=off") && none.contains("kvm-pv-eoi=off"));
        assert!(!none.contains("=on"), "{none}");
        r.enlightenments = EnlightenmentSet::parse("kvm-clock,pv-eoi").unwrap_or_default();
        let some = cpu_option(&r);
        assert!(some.contains("kvmclock=on") && some.contains("kvmclock-stable-bit=on"));
        assert!(some.contains("kvm-pv-eoi=on") && some.contains("kvm-steal-time=off"));
    }

    #[test]
    fn command_line_boots_the_kernel_with_hvs_cmdline() {
        let mut r = req("exit-floor");
        r.args.insert("iters".into(), "9".into());
        r.vcpus = 2;
        let a =
            command_line(&r, Path::new("/tmp/g.elf"), Machine::Microvm, None).unwrap_or_default();
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        let after = |k: &str| s.iter().position(|x| x == k).map(|i| s[i + 1].as_str());
        assert_eq!(after("-M"), Some("microvm,acpi=off,ioapic2=off"));
        assert_eq!(after("-m"), Some("32M"));
        assert_eq!(after("-smp"), Some("2"));
        assert_eq!(after("-kernel"), Some("/tmp/g.elf"));
        assert_eq!(
            after("-append"),
            Some("exit-floor cpus=2 part=0 iters=9 apic=xapic")
        );
        assert_eq!(
            after("-device"),
            Some("isa-debug-exit,iobase=0xf4,iosize=0x04")
        );
        assert!(matches!(mem_option(1000), Err(QemuError::Memory(1000))));
    }

    #[test]
    fn exit_codes_map_to_guest_statuses() {
        use std::os::unix::process::ExitStatusExt;
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(map_exit(code(1), false, ""), RunStatus::GuestExit(0));
        assert_eq!(map_exit(code(7), false, ""), RunStatus::GuestExit(3));
        assert!(matches!(
            map_exit(code(1), true, "qemu-system-x86_64: -bogus: invalid option\n"),
            RunStatus::Stopped(s) if s.contains("invalid option")
        ));
        assert!(
            matches!(map_exit(code(0), false, ""), RunStatus::Stopped(s) if s.contains("triple"))
        );
        assert!(matches!(
            map_exit(ExitStatus::from_raw(9), false, ""),
            RunStatus::Stopped(s) if s.contains("signal 9")
        ));
    }
}
