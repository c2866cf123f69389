//! `hv slurm`: a suite as a Slurm job array, one shard per array task, plus a merge job; and
//! the shard inventory `hv report` writes over shard directories (`shards.md`).
//!
//! The array runs `hv suite SPEC --shard K/N --out DIR/shard-K` in task K-1 (exclusive nodes:
//! timings do not share a host); a task requeued after it started resumes its directory. The
//! merge job depends on the array with `afterany`, so it runs however many tasks failed, and
//! runs `hv report --allow-missing` over every shard directory: shards that left no results,
//! runs a shard planned but never recorded, and runs that failed are listed in `shards.md`
//! beside the report, grouped by the host kind (KVM flavour and CPU) each shard ran on, with a
//! warning when the shards ran on different kinds of hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::matrix::{self, Shard};
use super::results::{self, MANIFEST, RUNS};
use super::spec::Spec;
use hv::record::{Manifest, RecordStatus, RunRecord};

/// Why a job cannot be written or submitted.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("--shards must be at least 1")]
    NoShards,
    #[error("{what} {value:?}: {why}")]
    BadValue {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run {cmd} ({source}); is Slurm installed here (sbatch on PATH)?")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Sbatch {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{cmd} printed no job id: {stdout:?}")]
    NoJobId { cmd: String, stdout: String },
}

impl SlurmError {
    /// True when the command line is wrong (not Slurm or the file system).
    pub fn is_usage(&self) -> bool {
        matches!(self, SlurmError::NoShards | SlurmError::BadValue { .. })
    }
}

/// One `hv slurm` request, paths absolute (the nodes run them from wherever Slurm starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// Spec files each shard runs.
    pub specs: Vec<PathBuf>,
    pub shards: u32,
    /// `--partition` (Slurm's, not hv's).
    pub partition: Option<String>,
    /// `--constraint`: node features, e.g. a feature marking hosts with /dev/kvm.
    pub constraint: Option<String>,
    /// `--time` for each shard and for the merge.
    pub time: Option<String>,
    /// Results root: `shard-K/` per shard, `merged/` for the report, `slurm/` for scripts and
    /// logs.
    pub out: PathBuf,
    /// The hv binary the nodes run (the one submitting, by default: a shared file system).
    pub hv: PathBuf,
    /// Job name prefix.
    pub name: String,
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> String {
    shell_quote(&p.display().to_string())
}

/// An `#SBATCH` value: one line, no shell or directive syntax of its own.
fn check_value(what: &'static str, value: &str) -> Result<(), SlurmError> {
    let bad = |why| SlurmError::BadValue {
        what,
        value: value.to_string(),
        why,
    };
    if value.is_empty() {
        return Err(bad("must not be empty"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '#' || c == '\'' || c == '"')
    {
        return Err(bad(
            "must be one word without quotes, '#' or control characters",
        ));
    }
    Ok(())
}

/// `--time`: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (Slurm's forms).
fn check_time(t: &str) -> Result<(), SlurmError> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = days.is_none_or(numeric)
        && parts.iter().all(|p| numeric(p))
        && (1..=3).contains(&parts.len());
    if ok || t == "UNLIMITED" || t == "INFINITE" {
        Ok(())
    } else {
        Err(SlurmError::BadValue {
            what: "--time",
            value: t.to_string(),
            why: "expected minutes, MM:SS, HH:MM:SS or D-HH:MM:SS",
        })
    }
}

impl SlurmJob {
    /// Checks the values that go into `#SBATCH` lines.
    pub fn validate(&self) -> Result<(), SlurmError> {
        if self.shards == 0 {
            return Err(SlurmError::NoShards);
        }
        check_value("job name", &self.name)?;
        if let Some(p) = &self.partition {
            check_value("--partition", p)?;
        }
        if let Some(c) = &self.constraint {
            // Slurm's feature expressions use & | [ ] * ( ): allowed; whitespace and quotes not.
            check_value("--constraint", c)?;
        }
        if let Some(t) = &self.time {
            check_time(t)?;
        }
        for p in [&self.out, &self.hv].into_iter().chain(&self.specs) {
            if p.display().to_string().contains('\n') {
                return Err(SlurmError::BadValue {
                    what: "path",
                    value: p.display().to_string(),
                    why: "must not contain a newline",
                });
            }
        }
        Ok(())
    }

    /// Where shard `k` (1-based) writes its results.
    pub fn shard_dir(&self, k: u32) -> PathBuf {
        self.out.join(format!("shard-{k}"))
    }

    /// Scripts and Slurm's logs.
    pub fn slurm_dir(&self) -> PathBuf {
        self.out.join("slurm")
    }

    /// The merged report's directory.
    pub fn merged_dir(&self) -> PathBuf {
        self.out.join("merged")
    }

    fn common_lines(&self, s: &mut String) {
        if let Some(p) = &self.partition {
            let _ = writeln!(s, "#SBATCH --partition={p}");
        }
        if let Some(t) = &self.time {
            let _ = writeln!(s, "#SBATCH --time={t}");
        }
    }

    /// The array job: task `i` runs shard `i + 1` of `shards`.
    pub fn array_script(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let logs = self.slurm_dir();
        let _ = writeln!(s, "#SBATCH --job-name={}", self.name);
        let _ = writeln!(s, "#SBATCH --array=0-{}", self.shards - 1);
        // A whole node per shard: timings must not share a host with another shard's.
        let _ = writeln!(s, "#SBATCH --exclusive");
        let _ = writeln!(s, "#SBATCH --nodes=1");
        let _ = writeln!(s, "#SBATCH --ntasks=1");
        let _ = writeln!(s, "#SBATCH --output={}/shard-%a.out", logs.display());
        self.common_lines(&mut s);
        if let Some(c) = &self.constraint {
            let _ = writeln!(s, "#SBATCH --constraint={c}");
        }
        let specs: Vec<String> = self.specs.iter().map(|p| path_str(p)).collect();
        let _ = write!(
            s,
            "\n# Shard K of N (K = task id + 1) into its own directory; a requeued task resumes it.\n\
             set -eu\n\
             k=$((SLURM_ARRAY_TASK_ID + 1))\n\
             dir={out}/shard-$k\n\
             echo \"hv shard $k/{n} on $(hostname) -> $dir\"\n\
             if [ -f \"$dir/{manifest}\" ]; then\n\
             \x20   exec {hv} suite --resume \"$dir\" --shard \"$k/{n}\" --no-report\n\
             fi\n\
             exec {hv} suite {specs} --shard \"$k/{n}\" --out \"$dir\" --no-report\n",
            out = path_str(&self.out),
            n = self.shards,
            manifest = MANIFEST,
            hv = path_str(&self.hv),
            specs = specs.join(" "),
        );
        s
    }

    /// The merge job, after every array task has ended however it ended (`afterany`);
    /// `array_id` is the array's job id (`None`: a placeholder, for `--dry-run`).
    pub fn merge_script(&self, array_id: Option<&str>) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let _ = writeln!(s, "#SBATCH --job-name={}-merge", self.name);
        match array_id {
            Some(id) => {
                let _ = writeln!(s, "#SBATCH --dependency=afterany:{id}");
            }
            None => {
                s.push_str("# hv slurm writes the array's job id here when it submits:\n");
                let _ = writeln!(s, "#SBATCH --dependency=afterany:ARRAY_JOB_ID");
            }
        }
        let _ = writeln!(s, "#SBATCH --nodes=1");
        let _ = writeln!(s, "#SBATCH --ntasks=1");
        let _ = writeln!(
            s,
            "#SBATCH --output={}/merge.out",
            self.slurm_dir().display()
        );
        self.common_lines(&mut s);
        let dirs: Vec<String> = (1..=self.shards)
            .map(|k| path_str(&self.shard_dir(k)))
            .collect();
        let _ = write!(
            s,
            "\n# Every shard directory, present or not: missing shards and failed runs are listed\n\
             # in shards.md beside the report (exit status 1 when there are any).\n\
             exec {hv} report --allow-missing --out {merged} {dirs}\n",
            hv = path_str(&self.hv),
            merged = path_str(&self.merged_dir()),
            dirs = dirs.join(" "),
        );
        s
    }
}

/// Job ids of a submitted suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub array: String,
    pub merge: String,
}

fn sbatch(args: &[String]) -> Result<String, SlurmError> {
    let cmd = format!("sbatch {}", args.join(" "));
    let out = Command::new("sbatch")
        .args(args)
        .output()
        .map_err(|source| SlurmError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(SlurmError::Sbatch {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // --parsable prints `id` or `id;cluster`.
    match stdout.split(';').next().map(str::trim) {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => Ok(id.to_string()),
        _ => Err(SlurmError::NoJobId { cmd, stdout }),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), SlurmError> {
    std::fs::write(path, text).map_err(|source| SlurmError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes the scripts into `job.slurm_dir()` and submits the array, then the merge.
pub fn submit(job: &SlurmJob) -> Result<Submitted, SlurmError> {
    job.validate()?;
    let dir = job.slurm_dir();
    std::fs::create_dir_all(&dir).map_err(|source| SlurmError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let array_path = dir.join("array.sbatch");
    write_file(&array_path, &job.array_script())?;
    let array = sbatch(&["--parsable".into(), array_path.display().to_string()])?;
    let merge_path = dir.join("merge.sbatch");
    write_file(&merge_path, &job.merge_script(Some(&array)))?;
    let merge = sbatch(&["--parsable".into(), merge_path.display().to_string()])?;
    Ok(Submitted { array, merge })
}

/// What one shard directory holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardState {
    pub dir: PathBuf,
    /// `K/N` from the manifest.
    pub shard: Option<String>,
    /// Host kind: KVM flavour and CPU model (from the manifest's `hv caps`).
    pub flavour: String,
    pub cpu_model: String,
    pub planned: u64,
    /// Whole runs recorded, and of those the ones with a failed record.
    pub recorded: usize,
    pub failed: Vec<(String, String)>,
    /// Runs the shard planned but did not record (its job ended early).
    pub missing: Vec<String>,
    /// Why the directory holds no usable results, when it does not.
    pub absent: Option<String>,
}

impl ShardState {
    /// True when the shard recorded every planned run and none failed.
    pub fn complete(&self) -> bool {
        self.absent.is_none() && self.missing.is_empty() && self.failed.is_empty()
    }

    /// The host kind the shard ran on.
    pub fn host_kind(&self) -> String {
        if self.flavour.is_empty() && self.cpu_model.is_empty() {
            return "unknown host".into();
        }
        format!("{} · {}", self.flavour, self.cpu_model)
    }
}

/// Reads a results directory as a shard: manifest, whole runs, failed and missing runs.
pub fn inspect(dir: &Path) -> ShardState {
    let mut st = ShardState {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let manifest: Option<Manifest> = results::read_manifest(dir).ok();
    if let Some(m) = &manifest {
        st.shard = m.shard.clone();
        st.flavour = m.host.kvm_flavour.clone();
        st.cpu_model = m.host.cpu_model.clone();
        st.planned = m.planned_runs;
    }
    let text = match std::fs::read_to_string(dir.join(RUNS)) {
        Ok(t) => t,
        Err(e) => {
            st.absent = Some(if dir.is_dir() {
                format!("no {RUNS} ({e}): the shard's job did not start its suite")
            } else {
                "no directory: the shard's job never ran (or failed before hv started)".into()
            });
            return st;
        }
    };
    let (_, recovered) = results::recover(&text);
    st.recorded = recovered.done.len();
    let mut failed = BTreeMap::new();
    for line in text.lines() {
        if let Ok(r) = serde_json::from_str::<RunRecord>(line) {
            if let (true, RecordStatus::Failed(why)) =
                (recovered.done.contains(&r.run_key), &r.status)
            {
                failed
                    .entry(r.run_key.clone())
                    .or_insert_with(|| why.clone());
            }
        }
    }
    st.failed = failed.into_iter().collect();
    if let Some(m) = &manifest {
        let specs: Result<Vec<Spec>, _> = m
            .specs
            .iter()
            .map(|v| serde_json::from_value::<Spec>(v.clone()))
            .collect();
        if let Ok(specs) = specs {
            let mut planned = matrix::plan(&specs);
            if let Some(s) = m.shard.as_deref().and_then(|s| s.parse::<Shard>().ok()) {
                planned = s.select(planned);
            }
            st.missing = planned
                .into_iter()
                .map(|r| r.key)
                .filter(|k| !recovered.done.contains(k))
                .collect();
        }
    } else {
        st.absent = Some(format!("no {MANIFEST}"));
    }
    st
}

/// The warning when shards ran on more than one kind of host, if they did.
pub fn host_kinds_warning(states: &[ShardState]) -> Option<String> {
    let kinds: BTreeSet<String> = states
        .iter()
        .filter(|s| s.absent.is_none())
        .map(ShardState::host_kind)
        .collect();
    (kinds.len() > 1).then(|| {
        format!(
            "shards ran on {} different kinds of hosts ({}): times are only comparable within one kind; compare counts across them",
            kinds.len(),
            kinds.into_iter().collect::<Vec<_>>().join("; ")
        )
    })
}

/// `shards.md`: the shards grouped by host kind, then what is missing or failed.
pub fn shards_markdown(states: &[ShardState]) -> String {
    let mut s = String::from("# Shards\n\n");
    if let Some(w) = host_kinds_warning(states) {
        let _ = writeln!(s, "**Warning:** {w}.\n");
    }
    let mut by_kind: BTreeMap<String, Vec<&ShardState>> = BTreeMap::new();
    for st in states {
        by_kind.entry(st.host_kind()).or_default().push(st);
    }
    for (kind, list) in &by_kind {
        let _ = writeln!(s, "## {kind}\n");
        let _ = writeln!(
            s,
            "| shard | directory | planned | recorded | failed | missing | state |"
        );
        let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | --- |");
        for st in list {
            let state = match &st.absent {
                Some(why) => why.clone(),
                None if st.complete() => "complete".into(),
                None => "incomplete".into(),
            };
            let _ = writeln!(
                s,
                "| {} | `{}` | {} | {} | {} | {} | {} |",
                st.shard.as_deref().unwrap_or("-"),
                st.dir.display(),
                st.planned,
                st.recorded,
                st.failed.len(),
                st.missing.len(),
                state
            );
        }
        s.push('\n');
    }
    let problems: Vec<&ShardState> = states.iter().filter(|s| !s.complete()).collect();
    if problems.is_empty() {
        s.push_str("Every shard recorded every planned run; none failed.\n");
        return s;
    }
    s.push_str("## What failed\n\n");
    for st in problems {
        let name = st
            .shard
            .clone()
            .unwrap_or_else(|| st.dir.display().to_string());
        if let Some(why) = &st.absent {
            let _ = writeln!(s, "- shard {name}: {why}");
        }
        for k in st.missing.iter().take(50) {
            let _ = writeln!(s, "- shard {name}: not run: `{k}`");
        }
        if st.missing.len() > 50 {
            let _ = writeln!(
                s,
                "- shard {name}: {} more runs not run",
                st.missing.len() - 50
            );
        }
        for (k, why) in st.failed.iter().take(50) {
            let _ = writeln!(s, "- shard {name}: failed: `{k}`: {why}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> SlurmJob {
        SlurmJob {
            specs: vec!["/data/bench/specs/scale.toml".into()],
            shards: 4,
            partition: Some("kvm".into()),
            constraint: Some("kvm&avx2".into()),
            time: Some("01:00:00".into()),
            out: "/scratch/my results".into(),
            hv: "/opt/hv/bin/hv".into(),
            name: "hv-scale".into(),
        }
    }

    #[test]
    fn the_array_runs_one_exclusive_shard_per_task() {
        let s = job().array_script();
        assert!(s.starts_with("#!/bin/bash\n"), "{s}");
        for line in [
            "#SBATCH --array=0-3",
            "#SBATCH --exclusive",
            "#SBATCH --partition=kvm",
            "#SBATCH --constraint=kvm&avx2",
            "#SBATCH --time=01:00:00",
            "#SBATCH --output='/scratch/my results/slurm'/shard-%a.out",
            "k=$((SLURM_ARRAY_TASK_ID + 1))",
            "dir='/scratch/my results'/shard-$k",
            "exec /opt/hv/bin/hv suite /data/bench/specs/scale.toml --shard \"$k/4\" --out \"$dir\" --no-report",
        ] {
            // The output path is not shell-quoted in #SBATCH lines: compare unquoted there.
            let line = if line.starts_with("#SBATCH --output") {
                "#SBATCH --output=/scratch/my results/slurm/shard-%a.out"
            } else {
                line
            };
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        // Every #SBATCH line comes before the first command (sbatch stops reading them there).
        let first_cmd = s
            .lines()
            .position(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(s.lines().skip(first_cmd).all(|l| !l.starts_with("#SBATCH")));
    }

    #[test]
    fn the_merge_waits_for_any_end_and_reports_every_shard() {
        let j = job();
        let s = j.merge_script(Some("1234"));
        assert!(s.contains("#SBATCH --dependency=afterany:1234\n"), "{s}");
        assert!(!s.contains("--exclusive") && !s.contains("--constraint"));
        assert!(
            s.contains(
                "report --allow-missing --out '/scratch/my results/merged' '/scratch/my results/shard-1'"
            ),
            "{s}"
        );
        assert!(s.contains("'/scratch/my results/shard-4'\n"), "{s}");
        assert!(j.merge_script(None).contains("afterany:ARRAY_JOB_ID"));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut j = job();
        j.shards = 0;
        assert!(matches!(j.validate(), Err(SlurmError::NoShards)));
        let mut j = job();
        j.partition = Some("a b".into());
        assert!(
            j.validate()
                .unwrap_err()
                .to_string()
                .contains("--partition")
        );
        let mut j = job();
        j.constraint = Some("kvm\n#SBATCH --x".into());
        assert!(j.validate().is_err());
        for ok in [
            "30",
            "10:00",
            "1:00:00",
            "2-0",
            "2-12:00",
            "1-00:00:00",
            "UNLIMITED",
        ] {
            let mut j = job();
            j.time = Some(ok.into());
            assert!(j.validate().is_ok(), "{ok}");
        }
        for bad in ["1h", "", "1:2:3:4", "-1", "a-1"] {
            let mut j = job();
            j.time = Some(bad.into());
            assert!(j.validate().is_err(), "{bad}");
        }
        assert!(job().validate().is_ok());
    }

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn a_missing_shard_and_mixed_hosts_are_reported() {
        let a = ShardState {
            dir: "/r/shard-1".into(),
            shard: Some("1/2".into()),
            flavour: "nested-pvm".into(),
            cpu_model: "EPYC".into(),
            planned: 2,
            recorded: 2,
            ..Default::default()
        };
        let b = ShardState {
            dir: "/r/shard-2".into(),
            absent: Some("no directory".into()),
            ..Default::default()
        };
        let md = shards_markdown(&[a.clone(), b]);
        assert!(md.contains("shard /r/shard-2: no directory"), "{md}");
        assert!(
            md.contains("| 1/2 | `/r/shard-1` | 2 | 2 | 0 | 0 | complete |"),
            "{md}"
        );
        assert!(host_kinds_warning(std::slice::from_ref(&a)).is_none());
        let c = ShardState {
            flavour: "hardware-vmx".into(),
            ..a.clone()
        };
        let w = host_kinds_warning(&[a, c]).unwrap();
        assert!(w.contains("2 different kinds"), "{w}");
    }

    #[test]
    fn inspect_finds_missing_and_failed_runs() {
        let dir = std::env::temp_dir().join(format!("hv-slurm-inspect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = Spec::parse(
            "name = \"t\"\nrepetitions = 1\n[[experiment]]\nname = \"e\"\nworkload = \"exit-floor\"\nargs = { tests = [\"pio-out\", \"pio-in\", \"cpuid\"] }\n",
            "t.toml",
        )
        .unwrap();
        let planned = matrix::plan(std::slice::from_ref(&spec));
        assert_eq!(planned.len(), 3);
        let m = Manifest {
            specs: vec![serde_json::to_value(&spec).unwrap()],
            planned_runs: 3,
            ..Default::default()
        };
        results::write_manifest(&dir, &m).unwrap();
        let rec = |key: &str, status: RecordStatus| RunRecord {
            run_key: key.into(),
            run_records: 1,
            status,
            ..Default::default()
        };
        let lines = [
            rec(&planned[0].key, RecordStatus::Ok),
            rec(&planned[1].key, RecordStatus::Failed("timeout".into())),
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect::<String>();
        std::fs::write(dir.join(RUNS), lines).unwrap();
        let st = inspect(&dir);
        assert_eq!(st.recorded, 2);
        assert_eq!(st.missing, vec![planned[2].key.clone()]);
        assert_eq!(st.failed, vec![(planned[1].key.clone(), "timeout".into())]);
        assert!(!st.complete());
        let gone = inspect(&dir.join("nope"));
        assert!(gone.absent.unwrap().contains("never ran"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
