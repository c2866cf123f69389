//! Results analysis: `runs.jsonl` + `manifest.json` -> tables (Parquet, CSV), plots (SVG, PNG)
//! and reports (Markdown, self-contained HTML).
//!
//! Entry points: [`load`], [`write_report`], [`compare`]. The record types are `hv::record`'s;
//! this crate never redefines them.
//!
//! Module map: [`stats`] (medians, seeded bootstrap), [`hdr`] (latency histograms), `frame`
//! (the flat polars table), `model` (groups, baselines, ratios), `ends` (end statuses and
//! device errors of experiments whose runs end other than ok), `plots`, `doc` (Markdown/HTML
//! rendering), `report` (assembly of report and comparison).

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::io;
use std::path::{Path, PathBuf};

use hv::record::{Manifest, RunRecord};

mod breakdown;
mod doc;
mod ends;
mod frame;
pub mod hdr;
mod model;
mod plots;
mod report;
mod scale;
pub mod stats;
mod transports;

pub use frame::records_frame;
pub use polars::prelude::DataFrame;

/// Errors of loading results and writing reports. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A results directory has no runs.jsonl.
    #[error(
        "{dir}: no runs.jsonl here (is this a results directory written by `hv run`/`hv suite`?)"
    )]
    MissingRuns { dir: PathBuf },
    /// No results directories were given.
    #[error("no results directories given")]
    NoInput,
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A line of runs.jsonl is not a run record.
    #[error("{path}:{line}: malformed run record: {source}")]
    Record {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    /// manifest.json is not a manifest.
    #[error("{path}: malformed manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// An output file or directory could not be written.
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// Building or writing a table failed.
    #[error("table: {0}")]
    Table(#[from] polars::prelude::PolarsError),
    /// Drawing a plot failed.
    #[error("plot {name}: {message}")]
    Plot { name: String, message: String },
    /// A latency histogram could not be decoded or encoded.
    #[error("latency histogram: {0}")]
    Histogram(String),
}

/// Options of [`write_report`] and [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOptions {
    /// Report title; default names the run ids.
    pub title: Option<String>,
    /// Bootstrap resamples per confidence interval (default 2000).
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap RNG, so that intervals are reproducible.
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            title: None,
            bootstrap_resamples: 2000,
            seed: 0x6876_6c61_6200_0001,
        }
    }
}

/// What [`write_report`] / [`compare`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// SVG and PNG files under `plots/`.
    pub plots: Vec<PathBuf>,
    /// Parquet and CSV tables.
    pub tables: Vec<PathBuf>,
    /// Lines worth printing: for a comparison, how many rows are stable, drift more than 5%
    /// or differ beyond both CIs.
    pub summary: Vec<String>,
}

/// Records and manifests of one or more results directories.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every record, in directory then line order.
    pub records: Vec<RunRecord>,
    /// One per directory (defaults where a directory has no manifest.json).
    pub manifests: Vec<Manifest>,
    /// The directories, in the order given.
    pub dirs: Vec<PathBuf>,
}

impl Loaded {
    /// The flat table, one row per record (see [`records_frame`]).
    pub fn frame(&self) -> Result<DataFrame, AnalysisError> {
        records_frame(&self.records)
    }
}

/// Loads records from `dirs` (each has runs.jsonl and, usually, manifest.json). A missing
/// manifest gives a default one; blank lines are skipped; a malformed line is an error that names
/// `file:line`.
pub fn load(dirs: &[PathBuf]) -> Result<Loaded, AnalysisError> {
    if dirs.is_empty() {
        return Err(AnalysisError::NoInput);
    }
    let mut out = Loaded::default();
    for dir in dirs {
        let runs = dir.join("runs.jsonl");
        if !runs.is_file() {
            return Err(AnalysisError::MissingRuns { dir: dir.clone() });
        }
        let text = read(&runs)?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let rec = serde_json::from_str::<RunRecord>(line).map_err(|source| {
                AnalysisError::Record {
                    path: runs.clone(),
                    line: i + 1,
                    source,
                }
            })?;
            out.records.push(rec);
        }
        let mpath = dir.join("manifest.json");
        let manifest = if mpath.is_file() {
            serde_json::from_str::<Manifest>(&read(&mpath)?).map_err(|source| {
                AnalysisError::Manifest {
                    path: mpath,
                    source,
                }
            })?
        } else {
            Manifest::default()
        };
        out.manifests.push(manifest);
        out.dirs.push(dir.clone());
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, AnalysisError> {
    std::fs::read_to_string(path).map_err(|source| AnalysisError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes runs.parquet, runs.csv, summary.csv (+ .parquet), partitions.csv, report.md,
/// report.html and plots/*.svg|png into `out_dir`.
pub fn write_report(
    dirs: &[PathBuf],
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let loaded = load(dirs)?;
    report::write_report(&loaded, out_dir, opts)
}

/// Two result sets side by side (two hosts or two commits): per (experiment, workload, phase,
/// variant, vmm, vCPUs, partitions) the medians of A and B and B/A with a bootstrap CI; writes
/// compare.md, compare.html and compare.csv.
pub fn compare(
    a: &[PathBuf],
    b: &[PathBuf],
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let la = load(a)?;
    let lb = load(b)?;
    report::write_compare(&la, &lb, out_dir, opts)
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{rec, results_dir, temp_dir};
    use hv::record::{Latency, RecordStatus};

    fn fixture() -> (Vec<RunRecord>, Manifest) {
        let mut recs = Vec::new();
        for (rep, (emu, syn)) in [(1000.0, 400.0), (1200.0, 500.0), (1100.0, 450.0)]
            .iter()
            .enumerate()
        {
            let rep = rep as u32;
            let mut a = rec("exit-floor", "exit-floor", "pio-out", "emulated", rep, *emu);
            a.host.kvm_flavour = "nested-pvm".into();
            a.host.kernel = "6.12.0-test".into();
            a.exits.insert("io_out".into(), 200);
            a.exits.insert("hlt".into(), 100);
            a.latency = Some(Latency {
                unit: "ns".into(),
                count: 3,
                p50: 900.0,
                p99: 2000.0,
                hdr: hdr::encode_values(&[800, 900, 2000]).unwrap(),
                ..Default::default()
            });
            recs.push(a);
            let mut b = rec(
                "exit-floor",
                "exit-floor",
                "pio-out",
                "synthetic",
                rep,
                *syn,
            );
            b.device = "synthetic".into();
            b.exits.insert("mmio_write".into(), 50);
            b.latency = Some(Latency {
                unit: "ns".into(),
                count: 3,
                p50: 400.0,
                p99: 700.0,
                hdr: hdr::encode_values(&[300, 400, 700]).unwrap(),
                ..Default::default()
            });
            recs.push(b);
            let mut q = rec(
                "exit-floor",
                "exit-floor",
                "pio-out",
                "emulated",
                rep,
                emu * 1.25,
            );
            q.vmm = "qemu".into();
            recs.push(q);
        }
        let mut s = rec("exit-floor", "exit-floor", "pio-out", "pv-ipi", 0, 0.0);
        s.status = RecordStatus::Skipped("hypercalls do not work on this host".into());
        recs.push(s);
        let mut f = rec("exit-floor", "exit-floor", "pio-out", "pv-tlb", 0, 0.0);
        f.status = RecordStatus::Failed("guest exit status 3".into());
        recs.push(f);
        let mut m = Manifest {
            run_id: "run-1".into(),
            git_rev: "abc1234".into(),
            command: vec![
                "hv".into(),
                "suite".into(),
                "bench/specs/exit-floor.toml".into(),
            ],
            ..Default::default()
        };
        m.host.kvm_flavour = "nested-pvm".into();
        m.baselines.insert("exit-floor".into(), "emulated".into());
        (recs, m)
    }

    #[test]
    fn report_over_shards_equals_the_unsharded_report() {
        // The same records, once in one directory and once split round-robin over two shard
        // directories (as `hv suite --shard 1/2` and `2/2` write them), give the same tables.
        let (recs, m) = fixture();
        let whole = results_dir("whole", &recs, Some(&m));
        let (a, b): (Vec<_>, Vec<_>) = recs
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, RunRecord)>| v.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        let mut m1 = m.clone();
        m1.shard = Some("1/2".into());
        let mut m2 = m.clone();
        m2.shard = Some("2/2".into());
        let s1 = results_dir("shard1", &strip(a), Some(&m1));
        let s2 = results_dir("shard2", &strip(b), Some(&m2));
        let (o1, o2) = (temp_dir("out-whole"), temp_dir("out-shards"));
        let opts = ReportOptions::default();
        write_report(std::slice::from_ref(&whole), &o1, &opts).unwrap();
        write_report(&[s1, s2], &o2, &opts).unwrap();
        let summary = |d: &Path| std::fs::read_to_string(d.join("summary.csv")).unwrap();
        assert_eq!(summary(&o1), summary(&o2));
        let tables = |d: &Path| {
            std::fs::read_to_string(d.join("report.md"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with('|'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let (t1, t2) = (tables(&o1), tables(&o2));
        assert!(t1.len() > 5, "{t1:?}");
        assert_eq!(t1, t2);
    }

    /// tlb-shootdown rows carry TLB flushes per op (KVM's plus hv's) and the full breakdown by
    /// source; the key findings compare them with the baseline; a plot draws them.
    #[test]
    fn tlb_flushes_reach_tables_findings_and_a_plot() {
        let mut recs = Vec::new();
        for rep in 0..2 {
            for (v, kvm, hv_done, ns) in [("none", 400, 0, 1000.0), ("hv-tlbflush", 0, 300, 800.0)]
            {
                let mut r = rec("tlb", "tlb-shootdown", "shootdown", v, rep, ns);
                r.exits.insert("total".into(), 0);
                r.kvm_stats.insert("tlb_flush".into(), kvm);
                r.kvm_stats.insert("invlpg".into(), 400);
                r.exits_by_device
                    .insert("hv-enl:tlb_flushes_done".into(), hv_done);
                recs.push(r);
            }
        }
        let d = results_dir("tlb", &recs, None);
        let out = temp_dir("tlb-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(
            md.contains("TLB flushes per shootdown by source, every source:"),
            "{md}"
        );
        assert!(
            md.contains("| shootdown | hv-tlbflush | hv | 4.00 | 0 | 3.00 |"),
            "INVLPG in KVM, KVM tlb_flush, hv flushes done: {md}"
        );
        assert!(md.contains("TLB flushes/op 4.00 → 3.00"), "{md}");
        assert!(out.join("plots/tlb_tlb_tlb-shootdown.png").is_file());
    }

    #[test]
    fn load_skips_blank_lines_and_defaults_missing_manifest() {
        let (recs, _) = fixture();
        let d = results_dir("load", &recs, None);
        let l = load(std::slice::from_ref(&d)).unwrap();
        assert_eq!(l.records.len(), recs.len());
        assert_eq!(l.manifests, vec![Manifest::default()]);
        assert_eq!(l.frame().unwrap().height(), recs.len());
    }

    #[test]
    fn load_malformed_line_names_file_and_line() {
        let d = temp_dir("bad");
        let good = serde_json::to_string(&rec("e", "w", "p", "none", 0, 1.0)).unwrap();
        std::fs::write(
            d.join("runs.jsonl"),
            format!("{good}\n\n{{\"schema\": 1, oops\n"),
        )
        .unwrap();
        let err = load(std::slice::from_ref(&d)).unwrap_err();
        assert!(
            matches!(err, AnalysisError::Record { line: 3, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("runs.jsonl:3: malformed run record"), "{msg}");
    }

    #[test]
    fn load_missing_runs_and_no_input_are_errors() {
        assert!(matches!(load(&[]), Err(AnalysisError::NoInput)));
        let d = temp_dir("empty");
        let err = load(std::slice::from_ref(&d)).unwrap_err();
        assert!(err.to_string().contains("no runs.jsonl"), "{err}");
    }

    #[test]
    fn report_tabulates_end_statuses_of_a_chaos_experiment() {
        let mut recs = Vec::new();
        for (i, label) in ["ok", "ok", "guest-exit-3", "triple-fault"]
            .iter()
            .enumerate()
        {
            let mut r = rec("chaos", "chaos", "chaos", "emulated", 0, 100.0);
            r.run_key = format!("chaos/chaos/seed={i}");
            r.status_label = label.to_string();
            if *label != "ok" {
                r.status = RecordStatus::Failed(format!("{label} at rip {i:#x}"));
            }
            r.metrics.insert("ata_err".into(), i as f64);
            recs.push(r);
        }
        let d = results_dir("ends", &recs, None);
        let out = temp_dir("ends-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("## End statuses"), "{md}");
        assert!(md.contains("| run | emulated | ok | 2 |"), "{md}");
        assert!(md.contains("| run | emulated | guest-exit-3 | 1 |"), "{md}");
        assert!(md.contains("| emulated | ata_err | 6 | 3 |"), "{md}");
    }

    #[test]
    fn report_puts_the_three_device_transports_in_one_table_and_plot() {
        let mut recs = Vec::new();
        for rep in 0..2 {
            for (dev, ns, kicks, irqs, exits) in [
                ("emulated", 800.0, 0.0, 0.0, 2300),
                ("synthetic", 300.0, 100.0, 60.0, 0),
                ("vmbus", 500.0, 100.0, 100.0, 100),
            ] {
                let mut r = rec("blk", "blk-io", "blk-read", dev, rep, ns);
                r.device = dev.into();
                r.metrics.insert("kicks".into(), kicks);
                r.metrics.insert("interrupts".into(), irqs);
                let reason = if dev == "vmbus" { "msr_write" } else { "io_in" };
                r.exits.insert(reason.into(), exits);
                if dev == "vmbus" {
                    r.exits_by_device
                        .insert("hv-enl:vmbus_signals_suppressed".into(), 50);
                }
                recs.push(r);
            }
        }
        let d = results_dir("transports", &recs, None);
        let out = temp_dir("transports-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        // The transport table's rows are the ones that name a doorbell.
        let row = |dev: &str| {
            md.lines()
                .find(|l| {
                    l.starts_with(&format!("| blk-read | {dev} | "))
                        && ["trap", "ioeventfd", "MSR exit"]
                            .iter()
                            .any(|d| l.contains(d))
                })
                .unwrap_or_else(|| panic!("no transport row for {dev}:\n{md}"))
                .to_string()
        };
        let vmbus = row("vmbus");
        assert!(
            vmbus.contains(
                "| HvCallSignalEvent (MSR exit) | 1.00 | 1.00 | msr_write 1.00 | 1.00 | 0.500 |"
            ),
            "{vmbus}"
        );
        let virtio = row("synthetic");
        assert!(
            virtio.contains("| ioeventfd (in KVM) | 1.00 | 0 |  | 0.600 | – |"),
            "{virtio}"
        );
        assert!(row("emulated").contains("| register access (trap) | – | 23.00 |"));
        assert!(out.join("plots/transports_blk_blk-io.png").exists());
        // Without a VMBus-style row there is no transport table.
        let no_vmbus: Vec<_> = recs.into_iter().filter(|r| r.device != "vmbus").collect();
        let d = results_dir("transports-none", &no_vmbus, None);
        let out = temp_dir("transports-none-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(!md.contains("Device transports per request"), "{md}");
    }

    #[test]
    fn write_report_writes_tables_plots_and_readable_report() {
        let (recs, m) = fixture();
        let d = results_dir("report", &recs, Some(&m));
        let out = temp_dir("report-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        // Medians: emulated hv 1100 ns/op, 3 exits/op; synthetic 450 ns/op; ratio 450/1100.
        // CV of the repetitions' medians: sd 100 / mean 1100 = 9.09%, sd 50 / mean 450 = 11.1%.
        assert!(
            md.contains("| pio-out | emulated | hv | 1 | 1 | 3 | 100 | 1.10 µs | 9.09% (CI ±"),
            "{md}"
        );
        assert!(md.contains("| 3.00 | io_out 2.00, hlt 1.00 |"), "{md}");
        assert!(
            md.contains("| pio-out | synthetic | hv | 1 | 1 | 3 | 100 | 450 ns | 11.1% (CI ±"),
            "{md}"
        );
        assert!(md.contains("| 0.500 | mmio_write 0.500 |"), "{md}");
        // The key findings open the report: the headline ratio with its CI, exits/op against
        // the baseline's.
        let findings = md.find("## Key findings").unwrap();
        assert!(findings < md.find("## Host").unwrap());
        assert!(
            md.contains("`synthetic` vs `emulated` (pio-out, 1v×1p): time ×0.409 ["),
            "{md}"
        );
        assert!(md.contains("exits/op 3.00 → 0.500"), "{md}");
        assert!(
            md.contains(&format!("{}×", report::num(1100.0 / 450.0))),
            "{md}"
        );
        assert!(md.contains("| 0.409 ["), "ratio 450/1100 = 0.409: {md}");
        // Peer column: hv/qemu = 1100 / 1375 = 0.8 for the emulated variant.
        assert!(md.contains("hv/qemu time [95% CI]"));
        assert!(md.contains("0.800 ["), "{md}");
        assert!(md.contains("**Trust note:**") && md.contains("instruction emulator"));
        assert!(md.contains("hv suite bench/specs/exit-floor.toml") && md.contains("abc1234"));
        assert!(md.contains("## Skipped and failed"));
        assert!(
            md.contains(
                "| pv-ipi | hv | 1 | 1 | skipped | 1 | hypercalls do not work on this host |"
            ),
            "{md}"
        );
        assert!(md.contains("| failed | 1 | guest exit status 3 |"), "{md}");
        assert!(md.contains("Scaling: skipped"));
        let html = std::fs::read_to_string(&files.html).unwrap();
        assert!(html.contains("<img src=\"data:image/png;base64,"));
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
        assert!(html.contains("<td>synthetic</td>"));
        // overview, exits, latency, time-vs-baseline plots, each SVG + PNG.
        assert_eq!(files.plots.len(), 8, "{:?}", files.plots);
        assert!(files.plots.iter().all(|p| p.is_file()));
        for t in [
            "runs.parquet",
            "runs.csv",
            "summary.csv",
            "summary.parquet",
            "partitions.csv",
        ] {
            assert!(out.join(t).is_file(), "{t}");
        }
        let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        let head = summary.lines().next().unwrap();
        assert!(
            head.starts_with("experiment,workload,phase,variant,vmm,vcpus,partitions,"),
            "{head}"
        );
        for c in [
            "n",
            "reps",
            "ops",
            "ns_per_op",
            "cv",
            "baseline",
            "time_vs_baseline",
            "time_vs_baseline_lo",
            "ns_per_op_hi",
            "unstable",
        ] {
            assert!(head.split(',').any(|h| h == c), "no {c} in {head}");
        }
        assert_eq!(summary.lines().count(), 4, "{summary}");
    }

    /// QEMU rows measure no exits and no host CPU time: runs.csv leaves those cells empty
    /// (null in Parquet), and the tables say "not measured", never 0.
    #[test]
    fn not_measured_is_null_in_files_and_says_so_in_tables() {
        let (mut recs, m) = fixture();
        for r in recs.iter_mut().filter(|r| r.vmm == "hv") {
            r.cpu.vcpu_ns = 200_000;
        }
        // exit-floor's pio-kernel under QEMU: a different mechanism, said next to the ratio.
        for (vmm, ns) in [("hv", 1200.0), ("qemu", 6000.0)] {
            let mut k = rec("exit-floor", "exit-floor", "pio-kernel", "emulated", 0, ns);
            k.vmm = vmm.into();
            if vmm == "hv" {
                k.exits.insert("total".into(), 0);
            }
            recs.push(k);
        }
        let d = results_dir("not-measured", &recs, Some(&m));
        let out = temp_dir("not-measured-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        let qemu_row = md
            .lines()
            .find(|l| l.starts_with("| pio-out | emulated | qemu |"))
            .unwrap_or_else(|| panic!("no qemu row in:\n{md}"));
        assert!(qemu_row.contains("| not measured |"), "{qemu_row}");
        assert!(!qemu_row.contains("| 0.00"), "{qemu_row}");
        let hv_row = md
            .lines()
            .find(|l| l.starts_with("| pio-out | emulated | hv |"))
            .unwrap();
        assert!(
            hv_row.contains("| 2.00 µs |"),
            "vCPU 200 us / 100 ops: {hv_row}"
        );
        let kernel = md
            .lines()
            .find(|l| l.starts_with("| pio-kernel | emulated | hv |"))
            .unwrap_or_else(|| panic!("no pio-kernel row in:\n{md}"));
        assert!(kernel.contains("not the same mechanism"), "{kernel}");
        let csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
        let (vmm, exits, cpu) = (
            col("vmm"),
            col("exits_total_per_op"),
            col("cpu.vcpu_ns_per_op"),
        );
        let mut qemu_rows = 0;
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.get(vmm) == Some(&"qemu") {
                qemu_rows += 1;
                assert_eq!(f[exits], "", "exits_total_per_op of a qemu row: {l}");
                assert_eq!(f[cpu], "", "cpu.vcpu_ns_per_op of a qemu row: {l}");
            }
        }
        assert!(qemu_rows >= 3, "{csv}");
    }

    #[test]
    fn write_report_is_deterministic() {
        let (recs, m) = fixture();
        let d = results_dir("det", &recs, Some(&m));
        let (o1, o2) = (temp_dir("det1"), temp_dir("det2"));
        let f1 = write_report(std::slice::from_ref(&d), &o1, &ReportOptions::default()).unwrap();
        let f2 = write_report(std::slice::from_ref(&d), &o2, &ReportOptions::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(f1.markdown).unwrap(),
            std::fs::read_to_string(f2.markdown).unwrap()
        );
    }

    #[test]
    fn write_report_draws_scaling_when_vcpus_vary_and_skips_missing_plots() {
        let mut recs = Vec::new();
        for vcpus in [1u32, 2, 4] {
            for rep in 0..2 {
                for (v, base) in [("none", 1000.0), ("pv-ipi", 600.0)] {
                    let mut r = rec(
                        "ipi",
                        "ipi-pingpong",
                        "ipi",
                        v,
                        rep,
                        base * f64::from(vcpus),
                    );
                    r.vcpus = vcpus;
                    recs.push(r);
                }
            }
        }
        let d = results_dir("scaling", &recs, None);
        let out = temp_dir("scaling-out");
        let f = write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&f.markdown).unwrap();
        assert!(!md.contains("Scaling: skipped"), "{md}");
        assert!(md.contains("Latency CDF: skipped") && md.contains("Exits per operation: skipped"));
        assert!(
            md.contains("| ipi | pv-ipi | hv | 4 | 1 | 2 | 100 | 2.40 µs |"),
            "{md}"
        );
        let svg = out.join("plots/scaling_vCPUs_ipi_ipi-pingpong_ipi_hv.svg");
        assert!(svg.is_file(), "{:?}", f.plots);
        assert!(
            out.join("plots/scaling_vCPUs_ipi_ipi-pingpong_ipi_hv.png")
                .is_file()
        );
        // Baseline rule without a manifest: the variant named `none`.
        assert!(md.contains("Baseline: `none`."));
    }

    #[test]
    fn compare_reports_b_over_a() {
        let (recs, m) = fixture();
        let faster: Vec<RunRecord> = recs
            .iter()
            .cloned()
            .map(|mut r| {
                r.guest_tsc /= 2;
                r
            })
            .collect();
        let a = results_dir("cmp-a", &recs, Some(&m));
        let b = results_dir("cmp-b", &faster, Some(&m));
        let out = temp_dir("cmp-out");
        let f = compare(&[a], &[b], &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&f.markdown).unwrap();
        assert!(
            md.contains("| pio-out | emulated | hv | 1 | 1 | 1.10 µs | 550 ns | 0.500 ["),
            "{md}"
        );
        let html = std::fs::read_to_string(&f.html).unwrap();
        assert!(html.contains("<img") && !html.contains("src=\"http"));
        assert!(out.join("compare.csv").is_file());
        // Every time halved with no spread inside a side: outside both (degenerate) CIs.
        assert!(md.contains("⚑ differs"), "{md}");
        assert!(md.contains("## Repeatability"), "{md}");
    }

    /// The report's tables show what a polars query over the written runs.parquet gives:
    /// medians of time/op and exits/op per phase, variant and vmm, formatted as the tables do.
    #[test]
    fn report_tables_equal_a_polars_query_over_runs_parquet() {
        use polars::prelude::*;
        use polars_io::SerReader;
        use polars_io::parquet::read::ParquetReader;
        let (mut recs, m) = fixture();
        // A second partition in one repetition, so that medians pool partitions and
        // repetitions.
        let mut extra = recs[0].clone();
        extra.partition = 1;
        extra.guest_tsc = 97_000;
        recs.push(extra);
        let d = results_dir("polars-query", &recs, Some(&m));
        let out = temp_dir("polars-query-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        let f = std::fs::File::open(out.join("runs.parquet")).unwrap();
        let runs = ParquetReader::new(f).finish().unwrap();
        assert_eq!(runs.height(), recs.len());
        let q = runs
            .lazy()
            .filter(col("status").eq(lit("ok")))
            .group_by([col("phase"), col("variant"), col("vmm")])
            .agg([
                col("ns_per_op").median(),
                col("exits_total_per_op").median(),
            ])
            .collect()
            .unwrap();
        assert!(q.height() >= 3, "{q:?}");
        let s = |c: &str, i: usize| {
            q.column(c)
                .unwrap()
                .str()
                .unwrap()
                .get(i)
                .unwrap()
                .to_string()
        };
        let v = |c: &str, i: usize| q.column(c).unwrap().f64().unwrap().get(i);
        for i in 0..q.height() {
            let (phase, variant, vmm) = (s("phase", i), s("variant", i), s("vmm", i));
            let prefix = format!("| {phase} | {variant} | {vmm} |");
            let line = md
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no row {prefix} in:\n{md}"));
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let time = v("ns_per_op", i).map_or("–".to_string(), report::time);
            assert_eq!(cells[7], time, "time/op of {prefix}: {line}");
            let exits = v("exits_total_per_op", i).map_or("not measured".to_string(), report::num);
            assert_eq!(cells[9], exits, "exits/op of {prefix}: {line}");
        }
    }

    /// A Chromium, if one is installed.
    fn chromium() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    }

    /// Opens `html` in headless Chromium and returns (images, images not rendered).
    fn rendered_images(chrome: &Path, html: &str, tag: &str) -> (usize, usize) {
        let probe = "<script>window.addEventListener('load', () => { \
            const im = [...document.images]; \
            const bad = im.filter(i => !i.complete || i.naturalWidth === 0).length; \
            document.body.setAttribute('data-images', im.length + ' ' + bad); });</script>";
        let page = html.replace("</body>", &format!("{probe}</body>"));
        let dir = temp_dir(tag);
        let file = dir.join("page.html");
        std::fs::write(&file, page).unwrap();
        let out = std::process::Command::new(chrome)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("file://{}", file.display()))
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        let at = dom.find("data-images=\"").unwrap_or_else(|| {
            panic!(
                "chromium did not run the probe: {}\n{dom}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let rest = &dom[at + "data-images=\"".len()..];
        let mut it = rest[..rest.find('"').unwrap()].split(' ');
        let n = it.next().unwrap().parse().unwrap();
        let bad = it.next().unwrap().parse().unwrap();
        (n, bad)
    }

    /// report.html renders in headless Chromium with every plot present; a broken image is
    /// caught (the control). Skips, saying so, where no Chromium is installed.
    #[test]
    fn report_html_renders_every_image_in_headless_chromium() {
        let Some(chrome) = chromium() else {
            eprintln!(
                "SKIPPED report_html_renders_every_image_in_headless_chromium: no chromium on \
                 PATH (apt-get install chromium)"
            );
            return;
        };
        let (recs, m) = fixture();
        let d = results_dir("chromium", &recs, Some(&m));
        let out = temp_dir("chromium-out");
        let files =
            write_report(std::slice::from_ref(&d), &out, &ReportOptions::default()).unwrap();
        let html = std::fs::read_to_string(&files.html).unwrap();
        let pngs = files
            .plots
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count();
        assert!(pngs >= 4, "{:?}", files.plots);
        assert_eq!(rendered_images(&chrome, &html, "chromium-page"), (pngs, 0));
        // Control: one image's data cut short must be reported as not rendered.
        let i = html.find("base64,").unwrap() + "base64,".len();
        let broken = format!("{}AAAA{}", &html[..i], &html[i + 200..]);
        assert_eq!(
            rendered_images(&chrome, &broken, "chromium-broken"),
            (pngs, 1)
        );
    }
}
