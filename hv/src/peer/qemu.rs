//! The QEMU peer: the same guest image under `qemu-system-x86_64 -accel kvm`, with the same
//! run records (`vmm = "qemu"`).
//!
//! QEMU boots the image exactly as hv does: `-kernel` finds the PVH note and enters the 32-bit
//! entry with EBX = start info (`-M microvm`). The guest protocol needs nothing else: the
//! console is QEMU's 16550 at 0x3f8, the exit port 0xf4 is QEMU's `isa-debug-exit` (QEMU exits
//! with `(status << 1) | 1`), and the phase port is unassigned there, so per-phase numbers are
//! the guest's own TSC deltas. The exact command line is [`command_line`]; see also
//! `scripts/qemu-peer.sh`.
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

use crate::devices::emulated::serial::CONSOLE_CAPTURE_LIMIT;
use crate::enlightenments::EnlightenmentSet;
use crate::error::HvError;
use crate::guest_output;
use crate::record::{RecordStatus, RunRecord};
use crate::run::{RecordContext, RunRequest, effective_args, guest_cmdline, validate};
use crate::status::RunStatus;
use crate::vcpu::UnmappedPolicy;

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

/// Why QEMU cannot run this request meaningfully, if it cannot. hv-only mechanisms are refused
/// here (the record says skipped, with this reason) rather than run as something else.
pub fn supports(req: &RunRequest) -> Result<(), String> {
    if req.partitions > 1 {
        return Err(format!(
            "--partitions {}: the QEMU peer runs one VM; co-running partitions are hv's",
            req.partitions
        ));
    }
    if let Some(info) = hvlab_workloads::find(&req.workload)
        && !info.devices.is_empty()
    {
        return Err(format!(
            "{} drives {} devices; the QEMU peer provides no device variants yet (only the boot console)",
            info.name,
            info.devices.join("+")
        ));
    }
    let e = &req.enlightenments;
    if e.hyperv_features().any() {
        let kvm = kvm_ioctls::Kvm::new().map_err(|err| {
            format!(
                "cannot open /dev/kvm to check KVM's Hyper-V support for QEMU's hv-* flags: {err}"
            )
        })?;
        hyperv_under_qemu(e, &crate::enlightenments::hyperv::kernel_caps_missing(&kvm))?;
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
/// from [`crate::enlightenments::hyperv::kernel_caps_missing`]).
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
                crate::enlightenments::hyperv::cpuid::SPIN_RETRIES
            )),
            n if n.starts_with("hv-") => s.push_str(&format!(",{n}=on")),
            _ => {}
        }
    }
    s
}

/// The guest command line under QEMU: hv's, plus the words hv adds for enlightenments that are
/// off (`apic=xapic`).
pub fn qemu_guest_cmdline(req: &RunRequest) -> String {
    let mut line = guest_cmdline(req, 0, &[]);
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

/// The arguments after the binary, for `kernel` (the guest ELF on disk).
pub fn command_line(req: &RunRequest, kernel: &Path) -> Result<Vec<OsString>, QemuError> {
    // Workloads that check the PC platform get QEMU's `pc` (fw_cfg, ACPI, PIC, PCI); the rest
    // the lean microvm.
    let pc = hvlab_workloads::find(&req.workload)
        .is_some_and(|w| w.host_features.contains(&"pc-platform"));
    let mut a: Vec<OsString> = [
        "-M",
        if pc { "pc" } else { "microvm" },
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
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push(kernel.as_os_str().to_owned());
    a.push("-append".into());
    a.push(qemu_guest_cmdline(req).into());
    Ok(a)
}

/// Guest TSC frequency as QEMU's guest sees it: KVM_GET_TSC_KHZ of a throwaway vCPU (QEMU sets
/// no `tsc-frequency`, so its vCPUs get KVM's default, the same value). Probed once.
fn tsc_khz() -> Result<Option<u32>, HvError> {
    static CACHE: OnceLock<Option<u32>> = OnceLock::new();
    if let Some(v) = CACHE.get() {
        return Ok(*v);
    }
    let kvm = crate::error::open_kvm()?;
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
    mut src: impl Read + Send + 'static,
    limit: usize,
    echo: Option<io::Stderr>,
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

/// Boots the request's image under QEMU once and waits (at most `req.timeout`; QEMU is killed
/// then). `qemu` is the binary from [`qemu_binary`].
pub fn boot(qemu: &Path, req: &RunRequest) -> Result<QemuOutcome, QemuError> {
    let image = TempImage::write(req.image.as_deref().unwrap_or(crate::GUEST_IMAGE))?;
    let mut cmd = Command::new(qemu);
    cmd.args(command_line(req, &image.0)?)
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
    let out = child
        .0
        .stdout
        .take()
        .map(|s| spawn_reader(s, CONSOLE_CAPTURE_LIMIT, echo));
    let err = child
        .0
        .stderr
        .take()
        .map(|s| spawn_reader(s, STDERR_LIMIT, None));
    let deadline = started + req.timeout;
    let exit = loop {
        if let Some(s) = child.0.try_wait().map_err(QemuError::Wait)? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // Kill and reap now; the status is the timeout, whatever the kill returns.
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    let wall = started.elapsed();
    let collect = |rx: Option<mpsc::Receiver<Captured>>| {
        rx.and_then(|r| r.recv_timeout(READER_GRACE).ok())
            .unwrap_or_default()
    };
    let out = collect(out);
    let err = collect(err);
    let console = String::from_utf8_lossy(&out.bytes).into_owned();
    let stderr = String::from_utf8_lossy(&err.bytes).into_owned();
    let status = match exit {
        Some(s) => map_exit(s, out.bytes.is_empty(), &stderr),
        None => RunStatus::Timeout(req.timeout),
    };
    Ok(QemuOutcome {
        status,
        console,
        console_dropped: out.dropped,
        stderr,
        wall,
        first_line: out.first_line.map(|t| t.saturating_duration_since(started)),
        pid,
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
pub fn run_qemu(req: &RunRequest, ctx: &RecordContext) -> Result<Vec<RunRecord>, HvError> {
    let info = validate(req)?;
    let params = effective_args(info, req);
    let mut base = crate::run::base_record(req, ctx, &params, "qemu", 0);
    let skipped = |why: String| {
        let mut r = base.clone();
        r.phase = "run".into();
        r.status = RecordStatus::Skipped(why);
        vec![r]
    };
    if let Err(why) = supports(req) {
        return Ok(skipped(why));
    }
    let qemu = match qemu_binary() {
        Ok(q) => q,
        Err(why) => return Ok(skipped(why)),
    };
    let tsc_khz = tsc_khz()?;
    let outcome = boot(&qemu, req)?;
    let report = guest_output::parse(&outcome.console);
    let mut notes = vec![
        version_of(&qemu).unwrap_or_else(|e| e),
        "exits, KVM stats, tracepoints and per-phase wall time are not collected under QEMU; phase timings are the guest's TSC".into(),
    ];
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
    let mut records = crate::run::guest_records(
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

impl crate::run::HostCounters for QemuCounters {
    fn phase(&self, _r: &mut RunRecord) {}

    fn whole_run(&self, r: &mut RunRecord) {
        r.wall_ns = u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(workload: &str) -> RunRequest {
        RunRequest {
            workload: workload.into(),
            ..RunRequest::default()
        }
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
        assert!(supports(&req("blk-io")).unwrap_err().contains("block"));
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
            && !crate::enlightenments::hyperv::kernel_caps_missing(&kvm).is_empty()
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
        let a = command_line(&r, Path::new("/tmp/g.elf")).unwrap_or_default();
        let s: Vec<String> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        let after = |k: &str| s.iter().position(|x| x == k).map(|i| s[i + 1].as_str());
        assert_eq!(after("-M"), Some("microvm"));
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
