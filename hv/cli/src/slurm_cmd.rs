//! `hv slurm`, and the shard inventory `hv report` writes (`shards.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bench::suite::slurm::{self, SlurmJob};
use clap::Args;

/// `hv slurm` arguments.
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Spec files every shard runs (TOML, see bench/specs/).
    #[arg(required = true)]
    pub specs: Vec<PathBuf>,
    /// Array tasks: shard K of N runs in task K-1, each on a node of its own.
    #[arg(long)]
    pub shards: u32,
    /// Slurm partition for the shards and the merge.
    #[arg(long)]
    pub partition: Option<String>,
    /// Node features the shards need (sbatch --constraint), e.g. one marking /dev/kvm hosts.
    #[arg(long)]
    pub constraint: Option<String>,
    /// Time limit per shard and for the merge (sbatch --time), e.g. 2:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Results root on a file system every node shares: shard-K/, merged/, slurm/ (default:
    /// results/slurm-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The hv binary the nodes run (default: this one).
    #[arg(long)]
    pub hv: Option<PathBuf>,
    /// Job name (default: hv-<first spec's file stem>).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Print the two sbatch scripts instead of submitting them.
    #[arg(long)]
    pub dry_run: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

pub fn cmd_slurm(a: SlurmArgs) -> Result<ExitCode> {
    // Fail here, not on 8 nodes: every spec must parse.
    for s in &a.specs {
        bench::suite::spec::Spec::load(s)?;
    }
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(format!("slurm-{}", hv::run::new_run_id()))
    });
    let hv_bin = match &a.hv {
        Some(p) => absolute(p)?,
        None => std::env::current_exe().context("finding this hv binary")?,
    };
    let name = a.job_name.clone().unwrap_or_else(|| {
        let stem = a.specs[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("hv-{stem}")
    });
    let job = SlurmJob {
        specs: a.specs.iter().map(|p| absolute(p)).collect::<Result<_>>()?,
        shards: a.shards,
        partition: a.partition.clone(),
        constraint: a.constraint.clone(),
        time: a.time.clone(),
        out: absolute(&out)?,
        hv: hv_bin,
        name,
    };
    job.validate()?;
    if a.dry_run {
        println!("# {}/array.sbatch", job.slurm_dir().display());
        print!("{}", job.array_script());
        println!("\n# {}/merge.sbatch", job.slurm_dir().display());
        print!("{}", job.merge_script(None));
        return Ok(ExitCode::SUCCESS);
    }
    let ids = slurm::submit(&job)?;
    println!(
        "array job {} ({} shards), merge job {}",
        ids.array, job.shards, ids.merge
    );
    println!("shards: {}/shard-K", job.out.display());
    println!(
        "report: {}/report.html (after the merge job)",
        job.merged_dir().display()
    );
    println!("array={} merge={}", ids.array, ids.merge);
    Ok(ExitCode::SUCCESS)
}

/// Writes `out/shards.md` when `dirs` are shards (several directories, or one with a shard
/// manifest) and prints its warnings; true when every shard is complete.
pub fn shard_inventory(dirs: &[PathBuf], out: &Path) -> Result<bool> {
    let states: Vec<slurm::ShardState> = dirs.iter().map(|d| slurm::inspect(d)).collect();
    let sharded = dirs.len() > 1 || states.iter().any(|s| s.shard.is_some());
    if !sharded {
        return Ok(true);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let md = out.join("shards.md");
    std::fs::write(&md, slurm::shards_markdown(&states))
        .with_context(|| format!("writing {}", md.display()))?;
    if let Some(w) = slurm::host_kinds_warning(&states) {
        eprintln!("warning: {w}");
    }
    let incomplete: Vec<&slurm::ShardState> = states.iter().filter(|s| !s.complete()).collect();
    for s in &incomplete {
        eprintln!(
            "shard {}: {}{} runs not run, {} failed",
            s.shard
                .clone()
                .unwrap_or_else(|| s.dir.display().to_string()),
            s.absent
                .as_ref()
                .map_or(String::new(), |w| format!("{w}; ")),
            s.missing.len(),
            s.failed.len()
        );
    }
    println!("shards: {}", md.display());
    Ok(incomplete.is_empty())
}
