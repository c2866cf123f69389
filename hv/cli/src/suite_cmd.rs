//! `hv suite`, `hv report`, `hv compare`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use bench::suite::matrix::Shard;
use bench::suite::spec::Spec;
use bench::suite::{Progress, SuiteOptions};
use clap::Args;
use hv::record::{Manifest, RecordStatus};
use indicatif::{ProgressBar, ProgressStyle};

/// The default suite, built in so `hv suite` works from any directory.
const DEFAULT_SPEC: &str = include_str!("../../../bench/specs/default.toml");

/// `hv suite` arguments.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Spec files (TOML, see bench/specs/); none = the built-in default suite
    /// (bench/specs/default.toml).
    pub specs: Vec<PathBuf>,
    /// Results directory (default: results/<run-id>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue an interrupted suite in this directory: runs recorded whole are not repeated;
    /// the specs come from its manifest.
    #[arg(long, conflicts_with_all = ["out", "specs"])]
    pub resume: Option<PathBuf>,
    /// Run only the K-th of N deterministic slices of the matrix (e.g. 2/4), so several
    /// hosts can share it; `hv report` over all shard directories merges them.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Do not write the report afterwards (runs.jsonl and manifest.json only).
    #[arg(long)]
    pub no_report: bool,
    /// Print the planned runs and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// `hv report` arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results directories (several = shards or repeated suites, merged).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write report.md, report.html, tables and plots (default: the only DIR, or
    /// results/merged-<time> for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shards whose job failed: a DIR without results is listed in shards.md (with the runs
    /// each shard planned but did not record, and the runs that failed) instead of refused;
    /// the exit status is 1 when anything is missing or failed (`hv slurm`'s merge job).
    #[arg(long)]
    pub allow_missing: bool,
}

/// `hv compare` arguments.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Baseline results directory (e.g. another host or commit).
    pub a: PathBuf,
    /// Results directory compared against A (ratios are B/A).
    pub b: PathBuf,
    /// Where to write compare.md and compare.html (default: B).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: leave now. Whole runs are already on disk.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn install_sigint() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

fn load_specs(paths: &[PathBuf]) -> Result<Vec<Spec>> {
    if paths.is_empty() {
        return Ok(vec![Spec::parse(
            DEFAULT_SPEC,
            "bench/specs/default.toml (built in)",
        )?]);
    }
    paths.iter().map(|p| Ok(Spec::load(p)?)).collect()
}

fn new_manifest(specs: &[Spec], caps: &hv::caps::HostCaps) -> Result<Manifest> {
    Ok(Manifest {
        run_id: hv::run::new_run_id(),
        started: hv::run::rfc3339_now(),
        git_rev: hv::run::GIT_REV.into(),
        hv_version: env!("CARGO_PKG_VERSION").into(),
        toolchain: hv::run::TOOLCHAIN.into(),
        host: caps.to_host_info(),
        caps: serde_json::to_value(caps)?,
        command: std::env::args().collect(),
        specs: specs
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
        ..Manifest::default()
    })
}

/// The suite's first line: are kvm:* tracepoints counted, what hv did to get them, or how to.
fn tracepoints_line(availability: &Result<(), String>, tracefs: Option<String>) -> String {
    match (availability, tracefs) {
        (Ok(()), Some(did)) => format!("tracepoints: counted ({did})"),
        (Ok(()), None) => "tracepoints: counted".to_string(),
        (Err(why), _) => {
            format!("tracepoints: NOT counted, the kvm:* tracepoint columns stay empty: {why}")
        }
    }
}

pub fn cmd_suite(a: SuiteArgs) -> Result<ExitCode> {
    let (specs, mut manifest, dir, resume) = match &a.resume {
        Some(dir) => {
            let m = bench::suite::results::read_manifest(dir)?;
            let specs = m
                .specs
                .iter()
                .map(|v| serde_json::from_value::<Spec>(v.clone()))
                .collect::<Result<Vec<_>, _>>()
                .context("the manifest's specs")?;
            if a.shard.map(|s| s.to_string()) != m.shard {
                bail!("--shard must match the interrupted suite's ({:?})", m.shard);
            }
            (specs, m, dir.clone(), true)
        }
        None => {
            let specs = load_specs(&a.specs)?;
            if a.dry_run {
                let mut runs = bench::suite::matrix::plan(&specs);
                if let Some(s) = a.shard {
                    runs = s.select(runs);
                }
                for r in &runs {
                    println!("{}", r.key);
                }
                println!("{} runs", runs.len());
                return Ok(ExitCode::SUCCESS);
            }
            let caps = hv::caps::probe()?;
            let m = new_manifest(&specs, &caps)?;
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("results").join(&m.run_id));
            (specs, m, dir, false)
        }
    };
    let kvm = hv::error::open_kvm()?;
    // First line: whether the kvm:* tracepoint columns will be there, and if not how to get
    // them (as root, the probe mounts a missing tracefs and says so).
    eprintln!(
        "{}",
        tracepoints_line(
            &hv::counters::tracepoints::availability(),
            hv::counters::tracepoints::tracefs_note()
        )
    );
    install_sigint();
    let opts = SuiteOptions {
        out_dir: dir.clone(),
        shard: a.shard,
        resume,
    };
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32}] {pos}/{len} runs · ETA {eta} · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut failures = Vec::new();
    let summary =
        bench::suite::run_suite(
            &kvm,
            &specs,
            &opts,
            &mut manifest,
            &STOP,
            &mut |p| match p {
                Progress::Planned { todo, already_done } => {
                    if already_done > 0 {
                        eprintln!(
                            "resuming {}: {already_done} runs already recorded, {todo} to go",
                            dir.display()
                        );
                    } else {
                        eprintln!(
                            "suite {}: {todo} runs → {}",
                            manifest_name(&specs),
                            dir.display()
                        );
                    }
                    bar.set_length(todo as u64);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                Progress::Started(run) => bar.set_message(run.key.clone()),
                Progress::Finished(run, records) => {
                    bar.inc(1);
                    for r in records {
                        if let RecordStatus::Failed(why) = &r.status {
                            failures.push(format!("{} [{}]: {why}", run.key, r.phase));
                            break;
                        }
                    }
                }
            },
        )?;
    bar.finish_and_clear();
    eprintln!(
        "{} runs: {} ok, {} skipped, {} failed{}",
        summary.runs,
        summary.ok,
        summary.skipped,
        summary.failed,
        if summary.already_done > 0 {
            format!(" ({} recorded earlier)", summary.already_done)
        } else {
            String::new()
        }
    );
    for f in failures.iter().take(10) {
        eprintln!("  failed: {f}");
    }
    if summary.interrupted {
        eprintln!(
            "interrupted: resume with `hv suite --resume {}`",
            dir.display()
        );
        return Ok(ExitCode::from(130));
    }
    if !a.no_report {
        write_report(std::slice::from_ref(&dir), &dir)?;
    }
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn manifest_name(specs: &[Spec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(feature = "analysis")]
fn write_report(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let files = hvlab_analysis::write_report(dirs, out, &hvlab_analysis::ReportOptions::default())?;
    println!("report: {}", files.html.display());
    println!("        {}", files.markdown.display());
    Ok(())
}

#[cfg(not(feature = "analysis"))]
fn write_report(_dirs: &[PathBuf], out: &Path) -> Result<()> {
    eprintln!(
        "hv was built without the `analysis` feature: runs are in {}; build hv-cli with default features and run `hv report {}`",
        out.display(),
        out.display()
    );
    Ok(())
}

pub fn cmd_report(a: ReportArgs) -> Result<ExitCode> {
    let present: Vec<PathBuf> = a
        .dirs
        .iter()
        .filter(|d| d.join(bench::suite::results::RUNS).exists())
        .cloned()
        .collect();
    if !a.allow_missing {
        if let Some(d) = a.dirs.iter().find(|d| !present.contains(d)) {
            bail!(
                "{} has no {}: not a results directory (--allow-missing lists such shards instead)",
                d.display(),
                bench::suite::results::RUNS
            );
        }
    }
    let out = match (&a.out, a.dirs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.clone(),
        (None, _) => PathBuf::from("results").join(format!("merged-{}", hv::run::new_run_id())),
    };
    let complete = crate::slurm_cmd::shard_inventory(&a.dirs, &out)?;
    if present.is_empty() {
        bail!(
            "no directory holds results; {} says why",
            out.join("shards.md").display()
        );
    }
    write_report(&present, &out)?;
    Ok(if a.allow_missing && !complete {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(feature = "analysis")]
pub fn cmd_compare(a: CompareArgs) -> Result<ExitCode> {
    let out = a.out.clone().unwrap_or_else(|| a.b.clone());
    let files = hvlab_analysis::compare(
        std::slice::from_ref(&a.a),
        std::slice::from_ref(&a.b),
        &out,
        &hvlab_analysis::ReportOptions::default(),
    )?;
    for line in &files.summary {
        println!("{line}");
    }
    println!("comparison: {}", files.html.display());
    println!("            {}", files.markdown.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "analysis"))]
pub fn cmd_compare(_a: CompareArgs) -> Result<ExitCode> {
    bail!("hv was built without the `analysis` feature; rebuild hv-cli with default features")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_says_whether_tracepoints_count_and_how_to_get_them() {
        let l = tracepoints_line(
            &Ok(()),
            Some("tracefs was not mounted: hv mounted it".into()),
        );
        assert!(
            l.starts_with("tracepoints: counted") && l.contains("hv mounted it"),
            "{l}"
        );
        let l = tracepoints_line(
            &Err("tracefs is not mounted and hv is not root: as root, run `mount -t tracefs nodev /sys/kernel/tracing`".into()),
            None,
        );
        assert!(
            l.contains("NOT counted") && l.contains("mount -t tracefs"),
            "{l}"
        );
    }
}
