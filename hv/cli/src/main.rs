//! `hv`: run hvlab workloads on KVM, probe the host, run experiment suites and write reports.

mod args;
mod boot_cmd;
mod scale_out;
mod slurm_cmd;
mod suite_cmd;
mod table;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hv::HvError;
use hv::devices::{DeviceOptions, DeviceVariant};
use hv::enlightenments::EnlightenmentSet;
use hv::run::{RecordContext, RunRequest};

/// hvlab: measure what virtualization costs, and what enlightenments and synthetic devices save.
///
/// Start with `hv caps` (what this host can do), `hv list` (the workloads), then
/// `hv run exit-floor` (the cost of each kind of exit).
#[derive(Debug, Parser)]
#[command(name = "hv", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one workload in one variant and print a per-phase table (or JSON run records).
    ///
    /// Examples:
    ///   hv run exit-floor
    ///   hv run exit-floor --json -- iters=5000 tests=pio-out,pio-in
    ///   hv run mem-pattern --partitions 2 --cpus 0,1
    ///   hv run blk-io --device emulated,synthetic,vmbus --qd 32 --bs 4K --pattern rand
    ///   hv run net-io --device both --partitions 2 -- size=1514 mode=stream
    ///   hv run chaos --device synthetic --cpus 0 --neighbour mem-pattern --timeout 5 -- seed=7
    #[command(verbatim_doc_comment)]
    Run(Box<args::RunArgs>),
    /// Probe what this host's KVM can do: capabilities, PV features, whether hypercalls work,
    /// and whether virtualization is hardware or nested/emulated.
    Caps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the workloads, their arguments and the devices they drive.
    List,
    /// Run experiment matrices from spec files, write results/<run-id>/runs.jsonl and
    /// manifest.json, then the report (report.md, report.html, plots).
    ///
    /// Examples:
    ///   hv suite                                   # the default suite (bench/specs/default.toml)
    ///   hv suite bench/specs/devices.toml --out results/dev
    ///   hv suite --shard 1/2 --out results/s1      # half the matrix; another host runs 2/2
    ///   hv suite --resume results/<run-id>         # after Ctrl-C or a crash
    #[command(verbatim_doc_comment)]
    Suite(suite_cmd::SuiteArgs),
    /// (Re)generate the report from one or more results directories (shards merge).
    Report(suite_cmd::ReportArgs),
    /// Put two result sets side by side (two hosts, or two commits): B/A per metric.
    Compare(suite_cmd::CompareArgs),
    /// Boot a kernel (PVH ELF, multiboot, bzImage; e.g. a kvm-unit-tests .flat) with its
    /// console on stdout. Exit status as QEMU's isa-debug-exit (port 0xf4): a guest write of v
    /// gives (v << 1) | 1; 124 = timeout; 2 = hv ended the run or could not start it.
    ///
    /// Example:
    ///   hv boot x86/msr.flat --smp 1 --append "arg" --initrd env.txt --timeout 90
    #[command(verbatim_doc_comment)]
    Boot(boot_cmd::BootArgs),
    /// Run a suite on a Slurm cluster: a job array with one shard per task, then a merge job
    /// that writes the report over every shard (listing shards and runs that failed).
    ///
    /// Examples:
    ///   hv slurm bench/specs/default.toml --shards 8 --partition kvm --time 2:00:00 --dry-run
    ///   hv slurm bench/specs/scale.toml --shards 4 --constraint kvm --out /shared/results/scale
    #[command(verbatim_doc_comment)]
    Slurm(slurm_cmd::SlurmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // 2 = the host or the command line is wrong (as clap does for usage errors);
            // 1 = the run itself failed.
            let host_access = e
                .downcast_ref::<HvError>()
                .is_some_and(|h| h.is_host_access() || h.is_usage())
                || e.downcast_ref::<hv::caps::CapsError>().is_some_and(|c| {
                    matches!(
                        c,
                        hv::caps::CapsError::Kvm(h) if h.is_host_access()
                    )
                })
                || e.downcast_ref::<bench::suite::slurm::SlurmError>()
                    .is_some_and(|s| s.is_usage());
            eprintln!("hv: {e:#}");
            ExitCode::from(if host_access { 2 } else { 1 })
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Command::Run(a) => cmd_run(*a),
        Command::Caps { json } => cmd_caps(json),
        Command::Suite(a) => suite_cmd::cmd_suite(a),
        Command::Report(a) => suite_cmd::cmd_report(a),
        Command::Compare(a) => suite_cmd::cmd_compare(a),
        Command::Boot(a) => boot_cmd::cmd_boot(a),
        Command::Slurm(a) => slurm_cmd::cmd_slurm(a),
        Command::List => {
            print!("{}", table::workloads());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_caps(json: bool) -> Result<ExitCode> {
    let caps = hv::caps::probe()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
    } else {
        print!("{}", caps.render_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn build_request(a: &args::RunArgs, variant: DeviceVariant) -> Result<RunRequest> {
    let net_tap = match a.backend.as_str() {
        "switch" => false,
        "tap" => true,
        other => bail!("--backend {other}: expected switch or tap"),
    };
    let mut wl_args = BTreeMap::new();
    for kv in &a.workload_args {
        let Some((k, v)) = kv.split_once('=') else {
            bail!(
                "workload argument `{kv}` is not key=value (see `hv list` for each workload's arguments)"
            );
        };
        wl_args.insert(k.to_string(), v.to_string());
    }
    // Block-workload flags are shorthands for workload arguments.
    let shorthands = [
        ("qd", a.qd.map(|v| v.to_string())),
        (
            "bs",
            a.bs.as_deref()
                .map(|v| hv::units::parse_size(v).map(|n| n.to_string()))
                .transpose()
                .context("--bs")?,
        ),
        ("pattern", a.pattern.clone()),
        ("rw", a.rw.clone()),
    ];
    for (k, v) in shorthands {
        if let Some(v) = v {
            wl_args.insert(k.to_string(), v);
        }
    }
    Ok(RunRequest {
        workload: a.workload.clone(),
        args: wl_args,
        vcpus: a.vcpus,
        mem_bytes: hv::units::parse_size(&a.mem).context("--mem")?,
        partitions: a.partitions,
        cpus: a
            .cpus
            .as_deref()
            .map(hv::units::parse_cpu_list)
            .transpose()
            .context("--cpus")?,
        timeout: parse_timeout(a.timeout)?,
        unmapped: if a.unmapped_fatal {
            hv::vcpu::UnmappedPolicy::Fatal
        } else {
            hv::vcpu::UnmappedPolicy::Ignore
        },
        max_exits: a.max_exits,
        echo_console: a.console,
        tracepoints: !a.no_tracepoints,
        devices: DeviceOptions {
            variant,
            disk: a.disk.clone(),
            disk_size: a
                .disk_size
                .as_deref()
                .map(hv::units::parse_size)
                .transpose()
                .context("--disk-size")?
                .unwrap_or(0),
            event_idx: !a.no_event_idx,
            polling: a.polling,
            disk_access: hv::devices::disk::DiskAccess {
                readonly: a.disk_readonly,
                faults: a.disk_fault.clone(),
            },
            net_tap,
        },
        enlightenments: EnlightenmentSet::parse(&a.enlighten)
            .map_err(|e| anyhow::anyhow!("--enlighten: {e}"))?
            .with_hyperv_backend(
                hv::enlightenments::hyperv::Backend::parse(&a.hyperv_backend)
                    .map_err(|e| anyhow::anyhow!("--hyperv-backend: {e}"))?,
            ),
        image: match &a.image {
            Some(p) => Some(
                std::fs::read(p).with_context(|| format!("reading guest image {}", p.display()))?,
            ),
            None => None,
        },
        seccomp: !a.no_seccomp,
        neighbour: a
            .neighbour
            .as_deref()
            .map(hv::neighbour::Neighbour::parse)
            .transpose()
            .context("--neighbour")?,
    })
}

/// `--timeout` seconds as a duration: positive and finite (from_secs_f64 would panic).
fn parse_timeout(secs: f64) -> Result<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(HvError::Config(format!(
            "--timeout {secs}: expected a positive number of seconds"
        ))
        .into()),
    }
}

fn cmd_run(a: args::RunArgs) -> Result<ExitCode> {
    let variants = parse_device_list(&a.device)?;
    let mut code = ExitCode::SUCCESS;
    let mut done = Vec::new();
    for v in variants {
        let (c, records) = cmd_run_one(&a, v)?;
        if c != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
        done.push(records);
    }
    if done.len() > 1 && !a.json {
        print!("{}", table::side_by_side(&done));
    }
    Ok(code)
}

/// `--device`: one variant, a comma list run back to back, `both` (emulated,synthetic) or
/// `all` (emulated,synthetic,vmbus).
fn parse_device_list(s: &str) -> Result<Vec<DeviceVariant>> {
    let words: Vec<&str> = match s {
        "both" => vec!["emulated", "synthetic"],
        "all" => vec!["emulated", "synthetic", "vmbus"],
        _ => s.split(',').map(str::trim).collect(),
    };
    let mut out = Vec::new();
    for w in words {
        let v = DeviceVariant::parse(w).ok_or_else(|| {
            anyhow::anyhow!(
                "--device {s}: `{w}` is not a device variant (expected none, emulated, synthetic, vmbus, a comma list of them, both or all)"
            )
        })?;
        if out.contains(&v) {
            bail!("--device {s}: `{w}` is listed twice");
        }
        out.push(v);
    }
    Ok(out)
}

fn cmd_run_one(
    a: &args::RunArgs,
    variant: DeviceVariant,
) -> Result<(ExitCode, Vec<hv::record::RunRecord>)> {
    let req = build_request(a, variant)?;
    hv::run::validate(&req)?;
    let kvm = hv::error::open_kvm()?;
    let ctx = RecordContext::adhoc();
    let result = hv::run::run(&kvm, &req, &ctx)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in &result.records {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else if req.partitions > scale_out::COLLAPSE_ABOVE {
        write!(out, "{}", scale_out::collapsed(&req, &result))?;
    } else {
        write!(out, "{}", table::run_result(&req, &result))?;
    }
    if !a.json && result.partitions.len() > 1 {
        let ok = result
            .partitions
            .iter()
            .filter(|p| p.outcome.status.is_ok());
        write!(out, "{}", result.host_cost.summary(ok.count()))?;
    }
    for p in result
        .partitions
        .iter()
        .take(if a.json { usize::MAX } else { 20 })
    {
        if !p.outcome.status.is_ok() {
            eprintln!("hv: partition {}: {}", p.outcome.index, p.outcome.status);
            if let Some(f) = &p.report.fault {
                eprintln!("hv: partition {} guest fault: {f}", p.outcome.index);
            }
            let tail: Vec<&str> = p.outcome.console.lines().rev().take(5).collect();
            if !tail.is_empty() && !a.console {
                eprintln!("hv: last console lines:");
                for l in tail.iter().rev() {
                    eprintln!("    {l}");
                }
            }
        }
    }
    let code = if result.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    Ok((code, result.records))
}
