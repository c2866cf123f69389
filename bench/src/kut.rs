//! The `kut-vmexit` experiment: kvm-unit-tests' `x86/vmexit.flat` (the field's exit
//! microbenchmark) under hv (`hv boot`) and QEMU (the command line kvm-unit-tests' `x86/run`
//! builds), each reported test (`cpuid 1234`: guest TSC cycles per operation) turned into one
//! run record, so the report shows exit costs measured by someone else's code next to
//! `exit-floor`'s.
//!
//! The kernel comes from `$KUT_DIR/x86/vmexit.flat` (a built kvm-unit-tests checkout); without
//! it every run is one record skipped with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;

use hv::boot::KernelBoot;
use hv::boot::session::{self, BootRequest};
use hv::record::{RecordStatus, RunRecord};
use hv::run::{RecordContext, RunRequest};
use hv::status::RunStatus;

/// The experiment's workload name in specs.
pub const WORKLOAD: &str = "kut-vmexit";
/// Tests run when a spec names none: the exit kinds exit-floor measures too. Not `vmcall`:
/// where KVM's hypercalls do not complete (nested `kvm_pvm` hosts, see `hv caps`) it never
/// returns, under QEMU as under hv.
pub const DEFAULT_TESTS: &str = "cpuid,inl_from_pmtimer,inl_from_qemu,inl_from_kernel,outl_to_kernel,mov_from_cr8,mov_to_cr8,mov_dr,wr_kernel_gs_base";

/// How specs see the experiment: a host-side workload (no hvlab guest) with one argument.
pub static INFO: hvlab_workloads::WorkloadInfo = hvlab_workloads::WorkloadInfo {
    name: WORKLOAD,
    summary: "kvm-unit-tests' x86/vmexit.flat from $KUT_DIR: cycles per exit, hv and QEMU",
    params: &[hvlab_workloads::Param {
        key: "tests",
        default: DEFAULT_TESTS,
        help: "comma list of vmexit.flat test names (its command line)",
    }],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

/// [`INFO`] when `name` is this experiment's workload (specs accept it beside the registry's).
pub fn workload_info(name: &str) -> Option<&'static hvlab_workloads::WorkloadInfo> {
    (name == WORKLOAD).then_some(&INFO)
}

/// `$KUT_DIR/x86/vmexit.flat`, or why it is not there.
pub fn vmexit_flat() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KUT_DIR").ok_or_else(|| {
        "KUT_DIR is not set (a built kvm-unit-tests checkout: ./configure --arch=x86_64 && make)"
            .to_string()
    })?;
    let flat = Path::new(&dir).join("x86/vmexit.flat");
    if flat.is_file() {
        Ok(flat)
    } else {
        Err(format!(
            "{} not found (build kvm-unit-tests there first)",
            flat.display()
        ))
    }
}

/// `name cycles` lines of vmexit.flat's output, in order (skipped tests and other text left out).
pub fn parse_vmexit(console: &str) -> Vec<(String, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.trim_end_matches('\r').split(' ');
            let (name, n, rest) = (w.next()?, w.next()?, w.next());
            let valid = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            match (valid, n.parse::<u64>(), rest) {
                (true, Ok(c), None) => Some((name.to_string(), c)),
                _ => None,
            }
        })
        .collect()
}

/// The tests a request names (its `tests` argument, else [`DEFAULT_TESTS`]), space-separated
/// as vmexit.flat's command line takes them.
fn cmdline(req: &RunRequest) -> String {
    req.args
        .get("tests")
        .map_or(DEFAULT_TESTS, String::as_str)
        .replace(',', " ")
}

/// Runs the experiment once under `vmm` (`hv` or `qemu`) and returns one record per reported
/// test, or one record for the whole run when it was skipped or failed.
pub fn records(kvm: &Kvm, vmm: &str, req: &RunRequest, ctx: &RecordContext) -> Vec<RunRecord> {
    let mut base = hv::run::base_record(req, ctx, &req.args, vmm, 0);
    base.workload = WORKLOAD.to_string();
    base.phase = "run".into();
    let one = |status: RecordStatus| {
        vec![RunRecord {
            status,
            ..base.clone()
        }]
    };
    let flat = match vmexit_flat() {
        Ok(f) => f,
        Err(why) => return one(RecordStatus::Skipped(why)),
    };
    let ran = match vmm {
        "qemu" => run_qemu(&flat, req),
        _ => run_hv(kvm, &flat, req),
    };
    let (console, wall) = match ran {
        Ok(r) => r,
        Err(Ran::Skipped(why)) => return one(RecordStatus::Skipped(why)),
        Err(Ran::Failed(why)) => return one(RecordStatus::Failed(why)),
    };
    // Both VMMs leave the guest TSC at KVM's default rate for a new vCPU (the host's), so
    // one figure turns both VMMs' cycles into ns for the report.
    let tsc_khz = kvm_tsc_khz(kvm);
    let found = parse_vmexit(&console);
    if found.is_empty() {
        let tail: Vec<&str> = console.lines().rev().take(3).collect();
        return one(RecordStatus::Failed(format!(
            "vmexit.flat reported no test; last lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, (name, cycles))| RunRecord {
            phase: name,
            phase_id: i as u32,
            ops: 1,
            guest_tsc: cycles,
            tsc_khz,
            // The whole boot's wall time, for reference; the per-op figure is the cycles.
            wall_ns: wall.as_nanos() as u64,
            metrics: BTreeMap::from([("cycles_per_op".to_string(), cycles as f64)]),
            notes: vec!["cycles per operation as kvm-unit-tests' vmexit.flat reports them".into()],
            ..base.clone()
        })
        .collect()
}

enum Ran {
    Skipped(String),
    Failed(String),
}

type Console = (String, Duration);

fn run_hv(kvm: &Kvm, flat: &Path, req: &RunRequest) -> Result<Console, Ran> {
    let kernel =
        std::fs::read(flat).map_err(|e| Ran::Failed(format!("{}: {e}", flat.display())))?;
    let boot = BootRequest {
        kernel,
        boot: KernelBoot {
            cmdline: cmdline(req),
            kernel_name: flat.display().to_string(),
            ..KernelBoot::default()
        },
        vcpus: req.vcpus,
        timeout: req.timeout,
        console_to_stdout: false,
        enlightenments: req.enlightenments,
        seccomp: req.seccomp,
        ..BootRequest::default()
    };
    let out = session::boot(kvm, &boot).map_err(|e| Ran::Failed(e.to_string()))?;
    match out.status {
        // vmexit.flat exits with 0 when every test ran.
        RunStatus::GuestExit(0) => Ok((out.console, out.wall)),
        s => Err(Ran::Failed(format!("hv boot: {s}"))),
    }
}

/// The host TSC rate as KVM reports it for a new vCPU (0 when unknown).
fn kvm_tsc_khz(kvm: &Kvm) -> u64 {
    kvm.create_vm()
        .ok()
        .and_then(|vm| vm.create_vcpu(0).ok())
        .and_then(|v| v.get_tsc_khz().ok())
        .map_or(0, u64::from)
}

/// QEMU with the options kvm-unit-tests' `x86/run` passes.
fn run_qemu(flat: &Path, req: &RunRequest) -> Result<Console, Ran> {
    let qemu = crate::peer::qemu_binary().map_err(Ran::Skipped)?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "--no-reboot",
        "-nodefaults",
        "-global",
        "kvm-pit.lost_tick_policy=discard",
        "-device",
        "pc-testdev",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x4",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "pci-testdev",
        "-machine",
        "accel=kvm",
        "-kernel",
    ])
    .arg(flat)
    .args(["-smp", &req.vcpus.to_string(), "-append", &cmdline(req)])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Ran::Failed(format!("cannot start QEMU: {e}")))?;
    // Read stdout on a thread so a chatty guest cannot fill the pipe while we wait.
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            use std::io::Read;
            let mut buf = Vec::new();
            let _ = o
                .take(hv::limits::CONSOLE_CAPTURE_BYTES as u64)
                .read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() >= req.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Ran::Failed(format!("waiting for QEMU: {e}"))),
        }
    };
    let wall = started.elapsed();
    let console = reader.join().unwrap_or_default();
    match status.and_then(|s| s.code()) {
        // isa-debug-exit: guest status 0 -> 1.
        Some(1) => Ok((console, wall)),
        Some(c) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = (&mut e).take(4096).read_to_string(&mut err);
            }
            Err(Ran::Failed(format!(
                "QEMU exited with status {c}: {}",
                err.lines().next().unwrap_or("")
            )))
        }
        None => Err(Ran::Failed(format!(
            "QEMU timed out after {:.0} s",
            req.timeout.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmexit_lines_and_nothing_else() {
        let out = "enabling apic\r\nPM timer port is 608\ncpuid 1234\r\nvmcall (skipped)\n  ipi ipi 55\nmov_to_cr8 17\ninl_from_qemu 99999\nSUMMARY: 0 tests\n";
        assert_eq!(
            parse_vmexit(out),
            vec![
                ("cpuid".to_string(), 1234),
                ("mov_to_cr8".to_string(), 17),
                ("inl_from_qemu".to_string(), 99999)
            ]
        );
    }

    #[test]
    fn the_tests_argument_becomes_the_command_line() {
        let mut req = RunRequest::default();
        assert_eq!(cmdline(&req), DEFAULT_TESTS.replace(',', " "));
        req.args.insert("tests".into(), "cpuid,vmcall".into());
        assert_eq!(cmdline(&req), "cpuid vmcall");
    }
}
