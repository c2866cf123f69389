//! `hv boot KERNEL`: run a third-party kernel (the logic is `hv::boot::session`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use hv::boot::KernelBoot;
use hv::boot::session::{self, BootRequest, STATUS_HV};
use hv::enlightenments::EnlightenmentSet;
use hv::status::RunStatus;

/// `hv boot` arguments.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Kernel: an ELF with a PVH note, a multiboot image (ELF32, ELF64 or a.out kludge; e.g. a
    /// kvm-unit-tests `.flat`) or a Linux bzImage.
    pub kernel: PathBuf,
    /// Initial RAM disk: a multiboot module (as QEMU's `-initrd`), the bzImage initrd, or PVH
    /// module 0.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub append: String,
    /// vCPUs (secondary ones wait for INIT/SIPI, as on a PC).
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Guest RAM, e.g. 128M (QEMU's default).
    #[arg(long, default_value = "128M")]
    pub mem: String,
    /// Enlightenments, as for `hv run` (`none`, `all`, or a comma list).
    #[arg(long, default_value = "none")]
    pub enlighten: String,
    /// Wall-clock limit, seconds; past it hv exits with status 124.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Do not install seccomp filters on the vCPU threads.
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Runs the kernel; the process status follows QEMU's isa-debug-exit (see `hv boot --help`).
/// Every error ends with status 2 (never 1, which means "the kernel wrote 0 to port 0xf4").
pub fn cmd_boot(a: BootArgs) -> Result<ExitCode> {
    match boot(a) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("hv: {e:#}");
            Ok(ExitCode::from(STATUS_HV))
        }
    }
}

fn boot(a: BootArgs) -> Result<ExitCode> {
    let kernel = std::fs::read(&a.kernel)
        .with_context(|| format!("reading kernel {}", a.kernel.display()))?;
    let initrd = a
        .initrd
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading initrd {}", p.display())))
        .transpose()?;
    let req = BootRequest {
        kernel,
        boot: KernelBoot {
            cmdline: a.append.clone(),
            initrd,
            initrd_name: a
                .initrd
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            kernel_name: a.kernel.display().to_string(),
        },
        vcpus: a.smp,
        mem_bytes: hv::units::parse_size(&a.mem).context("--mem")?,
        enlightenments: EnlightenmentSet::parse(&a.enlighten)
            .map_err(|e| anyhow::anyhow!("--enlighten: {e}"))?,
        timeout: crate::parse_timeout(a.timeout)?,
        console_to_stdout: true,
        seccomp: !a.no_seccomp,
    };
    let kvm = hv::error::open_kvm()?;
    let out = session::boot(&kvm, &req)?;
    for n in &out.notes {
        eprintln!("hv: note: {n}");
    }
    if out.unmapped_pio + out.unmapped_mmio > 0 {
        eprintln!(
            "hv: {} port and {} MMIO accesses went to no device (each address noted once above)",
            out.unmapped_pio, out.unmapped_mmio
        );
    }
    match &out.status {
        RunStatus::GuestExit(_) => {}
        RunStatus::Timeout(t) => eprintln!(
            "hv: timeout: the {} kernel ran {:.1} s without writing to the exit port (0xf4)",
            out.format.name(),
            t.as_secs_f64()
        ),
        other => eprintln!("hv: the {} kernel did not exit: {other}", out.format.name()),
    }
    Ok(ExitCode::from(out.exit_status()))
}
