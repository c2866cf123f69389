//! Assembles the report and the comparison from the model, the tables and the plots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hv::record::HostInfo;
use polars::prelude::*;

use crate::doc::{Block, html, markdown};
use crate::frame::{SUMMARY_KEYS, medians, records_frame, write_csv, write_parquet};
use crate::model::{GroupKey, Model, Row};
use crate::plots::{Bars, ErrorBars, Lines, Plot, render, slug};
use crate::stats::{Estimate, bootstrap_ratio, fnv1a};
use crate::{AnalysisError, Loaded, ReportFiles, ReportOptions, hdr};

fn mkdir(p: &Path) -> Result<(), AnalysisError> {
    std::fs::create_dir_all(p).map_err(|source| AnalysisError::Write {
        path: p.to_path_buf(),
        source,
    })
}

fn write(p: &Path, text: &str) -> Result<(), AnalysisError> {
    std::fs::write(p, text).map_err(|source| AnalysisError::Write {
        path: p.to_path_buf(),
        source,
    })
}

/// A number with about 3-4 significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

/// A host-counter cell (exits, KVM stats, host CPU): `None` means hv did not measure it (QEMU
/// rows, counters unavailable), which the table says instead of a dash or a 0.
fn measured(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured".into(), num)
}

fn est(e: Option<Estimate>) -> String {
    e.map_or_else(
        || "–".into(),
        |e| format!("{} [{}, {}]", num(e.point), num(e.lo), num(e.hi)),
    )
}

fn hosts(l: &Loaded) -> Vec<HostInfo> {
    let mut out: Vec<HostInfo> = Vec::new();
    let from_manifests = l
        .manifests
        .iter()
        .map(|m| &m.host)
        .filter(|h| !h.kernel.is_empty() || !h.kvm_flavour.is_empty());
    let from_records = l.records.iter().map(|r| &r.host);
    for h in from_manifests.chain(from_records) {
        if !out.iter().any(|o| {
            o.kernel == h.kernel && o.cpu_model == h.cpu_model && o.kvm_flavour == h.kvm_flavour
        }) {
            out.push(h.clone());
        }
        if out.len() >= 4 {
            break;
        }
    }
    out
}

/// Host summary and trust note.
fn host_blocks(l: &Loaded, label: &str) -> Vec<Block> {
    let mut b = vec![Block::Heading(2, format!("Host{label}"))];
    let hs = hosts(l);
    if hs.is_empty() {
        b.push(Block::Para("No host information recorded.".into()));
    }
    for h in &hs {
        b.push(Block::List(vec![
            format!("Kernel: `{}`", h.kernel),
            format!("CPU: {} ({} cores)", h.cpu_model, h.cores),
            format!("KVM flavour: `{}`", h.kvm_flavour),
        ]));
        if !h.kvm_flavour.starts_with("hardware-") {
            b.push(Block::Para(format!(
                "**Trust note:** KVM flavour `{}` is not hardware virtualization: guest CPL0 code ran in \
                 KVM's instruction emulator, so times are not representative of hardware virtualization. \
                 Exit COUNTS (exits/op, interrupts, halts) are the portable result; compare times only \
                 between variants on this host.",
                if h.kvm_flavour.is_empty() { "unknown" } else { &h.kvm_flavour }
            )));
        }
    }
    let mut prov = Vec::new();
    for (m, d) in l.manifests.iter().zip(&l.dirs) {
        let rev = if m.git_rev.is_empty() {
            l.records
                .first()
                .map(|r| r.git_rev.clone())
                .unwrap_or_default()
        } else {
            m.git_rev.clone()
        };
        prov.push(format!(
            "`{}`: run `{}`, git `{}`{}{}{}, command: `{}`",
            d.display(),
            m.run_id,
            rev,
            if m.hv_version.is_empty() {
                String::new()
            } else {
                format!(", hv {}", m.hv_version)
            },
            if m.toolchain.is_empty() {
                String::new()
            } else {
                format!(", {}", m.toolchain)
            },
            m.shard
                .as_ref()
                .map_or(String::new(), |s| format!(", shard {s}")),
            if m.command.is_empty() {
                "(unknown)".to_string()
            } else {
                m.command.join(" ")
            }
        ));
    }
    b.push(Block::Para("Provenance:".into()));
    b.push(Block::List(prov));
    b
}

fn row_label(r: &Row, multi_shape: bool) -> String {
    let mut s = r.variant.clone();
    if r.key.vmm != "hv" {
        s.push_str(&format!(" ({})", r.key.vmm));
    }
    if multi_shape {
        s.push_str(&format!(" {}v×{}p", r.key.vcpus, r.key.partitions));
    }
    s
}

type Wl = (String, String);

/// Rows by (experiment, workload), sorted phase, shape, vmm (hv first), baseline first, variant.
fn by_workload(m: &Model) -> BTreeMap<Wl, Vec<&Row>> {
    let mut out: BTreeMap<Wl, Vec<&Row>> = BTreeMap::new();
    for (k, rows) in &m.groups {
        out.entry((k.experiment.clone(), k.workload.clone()))
            .or_default()
            .extend(rows.iter());
    }
    for rows in out.values_mut() {
        rows.sort_by(|a, b| {
            (
                &a.key.phase,
                a.key.vcpus,
                a.key.partitions,
                a.key.vmm != "hv",
                &a.key.vmm,
                !a.is_baseline,
                &a.variant,
            )
                .cmp(&(
                    &b.key.phase,
                    b.key.vcpus,
                    b.key.partitions,
                    b.key.vmm != "hv",
                    &b.key.vmm,
                    !b.is_baseline,
                    &b.variant,
                ))
        });
    }
    out
}

fn workload_table(rows: &[&Row], has_qemu: bool) -> Block {
    let any = |f: &dyn Fn(&Row) -> bool| rows.iter().any(|r| f(r));
    let irqs = any(&|r| r.irqs_per_op.is_some());
    let halts = any(&|r| r.halts_per_op.is_some());
    let lat = any(&|r| r.lat_p50.is_some());
    let cpu = any(&|r| r.vcpu_us_per_op.is_some());
    let worker = any(&|r| r.worker_us_per_op.is_some());
    let peer = has_qemu && any(&|r| r.key.vmm == "qemu");
    let unit = rows
        .iter()
        .find(|r| !r.lat_unit.is_empty())
        .map_or("ns", |r| r.lat_unit.as_str())
        .to_string();
    let mut head: Vec<String> = [
        "phase",
        "variant",
        "vmm",
        "vCPUs",
        "parts",
        "reps",
        "ops",
        "ns/op",
        "exits/op",
        "top exits/op",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if irqs {
        head.push("irqs/op".into());
    }
    if halts {
        head.push("halts/op".into());
    }
    if lat {
        head.push(format!("p50 ({unit})"));
        head.push(format!("p99 ({unit})"));
    }
    if cpu {
        head.push("vCPU host µs/op".into());
    }
    if worker {
        head.push("worker host µs/op".into());
    }
    head.push("time vs baseline [95% CI]".into());
    head.push("speed-up".into());
    if peer {
        head.push("hv/qemu time [95% CI]".into());
    }
    let rows = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.key.phase.clone(),
                r.variant.clone(),
                r.key.vmm.clone(),
                r.key.vcpus.to_string(),
                r.key.partitions.to_string(),
                r.reps.to_string(),
                r.ops.map_or_else(|| "–".into(), |v| format!("{v:.0}")),
                match (r.ns_per_op, r.wall_ns_per_op) {
                    (Some(ns), _) => num(ns),
                    // No guest TSC frequency: host wall time between the markers instead.
                    (None, Some(w)) => format!("{} (wall)", num(w)),
                    (None, None) => "–".into(),
                },
                measured(r.exits_per_op),
                if r.exits_per_op.is_none() {
                    "not measured".into()
                } else {
                    r.top_exits
                        .iter()
                        .map(|(k, v)| format!("{k} {}", num(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ];
            if irqs {
                c.push(measured(r.irqs_per_op));
            }
            if halts {
                c.push(measured(r.halts_per_op));
            }
            if lat {
                c.push(opt(r.lat_p50));
                c.push(opt(r.lat_p99));
            }
            if cpu {
                c.push(measured(r.vcpu_us_per_op));
            }
            if worker {
                c.push(measured(r.worker_us_per_op));
            }
            if r.is_baseline {
                c.push("baseline".into());
                c.push("1.00".into());
            } else {
                c.push(est(r.vs_baseline));
                c.push(
                    r.vs_baseline
                        .map_or_else(|| "–".into(), |e| format!("{}×", num(1.0 / e.point))),
                );
            }
            if peer {
                // Where QEMU runs the same guest code through a different mechanism, the ratio
                // says so (bench::peer::qemu::phase_caveat; also in the QEMU record's notes).
                c.push(
                    match bench::peer::qemu::phase_caveat(&r.key.workload, &r.key.phase) {
                        Some(why) => format!("{} ({why})", est(r.vs_qemu)),
                        None => est(r.vs_qemu),
                    },
                );
            }
            c
        })
        .collect();
    Block::Table { head, rows }
}

fn plot_block(p: &Plot, out_dir: &Path) -> Block {
    let rel = |q: &Path| q.strip_prefix(out_dir).unwrap_or(q).display().to_string();
    Block::Plot {
        title: p.title.clone(),
        svg: p.svg.clone(),
        svg_rel: rel(&p.svg_path),
        png_rel: rel(&p.png_path),
    }
}

/// All plots of a model; returns the plots and a note for each kind that had no data.
fn make_plots(m: &Model, dir: &Path) -> Result<(Vec<Plot>, Vec<String>), AnalysisError> {
    let mut plots = Vec::new();
    let mut notes = Vec::new();
    let wl = by_workload(m);
    // (1) exits per op by variant, bars per phase.
    let mut n_exits = 0;
    for ((exp, w), rows) in &wl {
        let rows: Vec<&&Row> = rows.iter().filter(|r| r.exits_per_op.is_some()).collect();
        if rows.is_empty() {
            continue;
        }
        let shapes: BTreeSet<(u32, u32)> = rows
            .iter()
            .map(|r| (r.key.vcpus, r.key.partitions))
            .collect();
        let multi = shapes.len() > 1;
        let mut cats: Vec<String> = Vec::new();
        for r in &rows {
            let l = row_label(r, multi);
            if !cats.contains(&l) {
                cats.push(l);
            }
        }
        let phases: BTreeSet<&str> = rows.iter().map(|r| r.key.phase.as_str()).collect();
        let series = phases
            .iter()
            .map(|ph| {
                let vals = cats
                    .iter()
                    .map(|c| {
                        rows.iter()
                            .find(|r| r.key.phase == *ph && &row_label(r, multi) == c)
                            .and_then(|r| r.exits_per_op)
                    })
                    .collect();
                (ph.to_string(), vals)
            })
            .collect();
        let title = format!("{exp} / {w}: exits per operation");
        let chart = Bars {
            title: title.clone(),
            y_label: "exits / op".into(),
            categories: cats,
            series,
        };
        plots.push(render(
            &chart,
            dir,
            &slug(&format!("exits_{exp}_{w}")),
            &title,
        )?);
        n_exits += 1;
    }
    if n_exits == 0 {
        notes.push("Exits per operation: skipped, no record has exit counts.".into());
    }
    // (2) latency CDF per variant, per phase.
    let mut n_lat = 0;
    for (k, rows) in &m.groups {
        let mut series = Vec::new();
        for r in rows {
            let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
            for s in &r.hdrs {
                let h = hdr::decode(s)?;
                match merged.as_mut() {
                    None => merged = Some(h),
                    Some(acc) => acc
                        .add(&h)
                        .map_err(|e| AnalysisError::Histogram(format!("cannot merge: {e:?}")))?,
                }
            }
            if let Some(h) = merged {
                let pts = hdr::cdf(&h);
                if !pts.is_empty() {
                    series.push((r.variant.clone(), pts));
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        let unit = rows
            .iter()
            .find(|r| !r.lat_unit.is_empty())
            .map_or("ns", |r| r.lat_unit.as_str());
        let title = format!(
            "{} / {} / {}: latency CDF ({}, {}v×{}p)",
            k.experiment, k.workload, k.phase, k.vmm, k.vcpus, k.partitions
        );
        let chart = Lines {
            title: title.clone(),
            x_label: format!("latency ({unit}, log scale)"),
            y_label: "fraction of operations".into(),
            log_x: true,
            series,
        };
        let name = slug(&format!(
            "latency_{}_{}_{}_{}_{}v{}p",
            k.experiment, k.workload, k.phase, k.vmm, k.vcpus, k.partitions
        ));
        plots.push(render(&chart, dir, &name, &title)?);
        n_lat += 1;
    }
    if n_lat == 0 {
        notes.push("Latency CDF: skipped, no record has a latency histogram.".into());
    }
    // (3) speed-up vs baseline with CI.
    let mut n_sp = 0;
    for ((exp, w), rows) in &wl {
        let rows: Vec<&&Row> = rows
            .iter()
            .filter(|r| !r.is_baseline && r.vs_baseline.is_some())
            .collect();
        let mut cats = Vec::new();
        let mut points = Vec::new();
        let shapes: BTreeSet<_> = rows
            .iter()
            .map(|r| (r.key.vcpus, r.key.partitions))
            .collect();
        for r in &rows {
            if let Some(e) = r.vs_baseline
                && e.point > 0.0
                && e.lo > 0.0
            {
                cats.push(format!(
                    "{} / {}",
                    row_label(r, shapes.len() > 1),
                    r.key.phase
                ));
                points.push((1.0 / e.hi, 1.0 / e.point, 1.0 / e.lo));
            }
        }
        if cats.is_empty() {
            continue;
        }
        let title = format!("{exp} / {w}: speed-up vs baseline (95% CI)");
        let chart = ErrorBars {
            title: title.clone(),
            y_label: "speed-up (baseline time / variant time)".into(),
            categories: cats,
            points,
        };
        plots.push(render(
            &chart,
            dir,
            &slug(&format!("speedup_{exp}_{w}")),
            &title,
        )?);
        n_sp += 1;
    }
    if n_sp == 0 {
        notes.push("Speed-up vs baseline: skipped, no group has a baseline and another variant with times.".into());
    }
    // (4) scaling with vCPUs and partitions.
    let mut n_sc = 0;
    let mut cells: BTreeMap<(String, String, String, String), Vec<&Row>> = BTreeMap::new();
    for (k, rows) in &m.groups {
        cells
            .entry((
                k.experiment.clone(),
                k.workload.clone(),
                k.phase.clone(),
                k.vmm.clone(),
            ))
            .or_default()
            .extend(rows.iter());
    }
    for ((exp, w, ph, vmm), rows) in &cells {
        for (axis, x_of, fixed_of) in [
            (
                "vCPUs",
                (|r: &Row| r.key.vcpus) as fn(&Row) -> u32,
                (|r: &Row| r.key.partitions) as fn(&Row) -> u32,
            ),
            (
                "partitions",
                |r: &Row| r.key.partitions,
                |r: &Row| r.key.vcpus,
            ),
        ] {
            let xs: BTreeSet<u32> = rows.iter().map(|r| x_of(r)).collect();
            if xs.len() < 2 {
                continue;
            }
            let fixed = rows.iter().map(|r| fixed_of(r)).min().unwrap_or(1);
            let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            for r in rows.iter().filter(|r| fixed_of(r) == fixed) {
                if let Some(ns) = r.ns_per_op {
                    series
                        .entry(r.variant.as_str())
                        .or_default()
                        .push((f64::from(x_of(r)), ns));
                }
            }
            let series: Vec<(String, Vec<(f64, f64)>)> = series
                .into_iter()
                .map(|(k, mut v)| {
                    v.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (k.to_string(), v)
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            let other = if axis == "vCPUs" {
                "partitions"
            } else {
                "vCPUs"
            };
            let title = format!("{exp} / {w} / {ph} ({vmm}): ns/op vs {axis} ({other} = {fixed})");
            let chart = Lines {
                title: title.clone(),
                x_label: axis.into(),
                y_label: "ns / op (median)".into(),
                log_x: false,
                series,
            };
            plots.push(render(
                &chart,
                dir,
                &slug(&format!("scaling_{axis}_{exp}_{w}_{ph}_{vmm}")),
                &title,
            )?);
            n_sc += 1;
        }
    }
    if n_sc == 0 {
        notes.push(
            "Scaling: skipped, every group ran with a single vCPU count and partition count."
                .into(),
        );
    }
    Ok((plots, notes))
}

fn write_tables(l: &Loaded, out_dir: &Path) -> Result<Vec<PathBuf>, AnalysisError> {
    let mut df = records_frame(&l.records)?;
    let mut tables = Vec::new();
    let p = out_dir.join("runs.parquet");
    write_parquet(&mut df, &p)?;
    tables.push(p);
    let p = out_dir.join("runs.csv");
    write_csv(&mut df, &p)?;
    tables.push(p);
    let mut summary = medians(&df, &SUMMARY_KEYS)?;
    let p = out_dir.join("summary.csv");
    write_csv(&mut summary, &p)?;
    tables.push(p);
    let p = out_dir.join("summary.parquet");
    write_parquet(&mut summary, &p)?;
    tables.push(p);
    let mut keys = SUMMARY_KEYS.to_vec();
    keys.push("partition");
    let mut parts = medians(&df, &keys)?;
    let p = out_dir.join("partitions.csv");
    write_csv(&mut parts, &p)?;
    tables.push(p);
    Ok(tables)
}

fn run_ids(l: &Loaded) -> String {
    let ids: BTreeSet<&str> = l
        .manifests
        .iter()
        .map(|m| m.run_id.as_str())
        .chain(l.records.iter().map(|r| r.run_id.as_str()))
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        "(no run id)".into()
    } else {
        ids.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// Rows of the skipped-and-failed table before it is cut short (a chaos suite has a distinct
/// reason, with its fault address, per faulting seed).
const MAX_NOT_OK_ROWS: usize = 100;

pub fn write_report(
    l: &Loaded,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let plot_dir = out_dir.join("plots");
    mkdir(&plot_dir)?;
    let tables = write_tables(l, out_dir)?;
    let m = Model::build(
        &l.records,
        &l.manifests,
        opts.bootstrap_resamples,
        opts.seed,
    );
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| format!("hvlab report: {}", run_ids(l)));
    let ok = l.records.iter().filter(|r| r.status.is_ok()).count();
    let mut b = vec![Block::Para(format!(
        "{} records ({} ok, {} skipped or failed) from {} results director{}. Medians over repetitions and partitions; \
         ratios are time(variant)/time(baseline) with a percentile bootstrap 95% CI over repetitions \
         ({} resamples, seed {:#x}); speed-up = 1/ratio.",
        l.records.len(),
        ok,
        l.records.len() - ok,
        l.dirs.len(),
        if l.dirs.len() == 1 { "y" } else { "ies" },
        opts.bootstrap_resamples,
        opts.seed
    ))];
    b.extend(host_blocks(l, ""));
    b.push(Block::Heading(2, "Results".into()));
    let wl = by_workload(&m);
    if wl.is_empty() {
        b.push(Block::Para("No ok records: nothing to tabulate.".into()));
    }
    for ((exp, w), rows) in &wl {
        b.push(Block::Heading(3, format!("{exp} / {w}")));
        let bases: BTreeSet<&str> = m
            .baselines
            .iter()
            .filter(|(k, _)| &k.experiment == exp && &k.workload == w)
            .map(|(_, v)| v.as_str())
            .collect();
        if !bases.is_empty() {
            b.push(Block::Para(format!(
                "Baseline: `{}`.",
                bases.into_iter().collect::<Vec<_>>().join("`, `")
            )));
        }
        b.push(workload_table(rows, m.has_qemu));
    }
    b.extend(crate::breakdown::blocks(&l.records));
    // Experiments with runs that ended other than ok (chaos): end statuses and device errors.
    let ends = crate::ends::end_tables(&l.records);
    if !ends.is_empty() {
        b.extend(crate::ends::blocks(&ends));
    }
    b.extend(crate::scale::blocks(&l.records, &plot_dir, out_dir)?);
    b.push(Block::Heading(2, "Plots".into()));
    let (plots, notes) = make_plots(&m, &plot_dir)?;
    for p in &plots {
        b.push(plot_block(p, out_dir));
    }
    if !notes.is_empty() {
        b.push(Block::List(notes));
    }
    b.push(Block::Heading(2, "Skipped and failed".into()));
    if m.not_ok.is_empty() {
        b.push(Block::Para("None.".into()));
    } else {
        b.push(Block::Table {
            head: [
                "experiment",
                "workload",
                "variant",
                "vmm",
                "vCPUs",
                "parts",
                "status",
                "records",
                "reason",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rows: m
                .not_ok
                .iter()
                .take(MAX_NOT_OK_ROWS)
                .map(|n| {
                    vec![
                        n.experiment.clone(),
                        n.workload.clone(),
                        n.variant.clone(),
                        n.vmm.clone(),
                        n.vcpus.to_string(),
                        n.partitions.to_string(),
                        n.kind.clone(),
                        n.records.to_string(),
                        n.reason.clone(),
                    ]
                })
                .collect(),
        });
    }
    if m.not_ok.len() > MAX_NOT_OK_ROWS {
        b.push(Block::Para(format!(
            "... and {} more rows (runs.csv has every record; End statuses groups them).",
            m.not_ok.len() - MAX_NOT_OK_ROWS
        )));
    }
    b.push(Block::Para("Tables: `runs.parquet`/`runs.csv` (one row per record, per-op columns), `summary.csv`/`summary.parquet` (medians per experiment, workload, phase, variant, vmm, vCPUs, partitions), `partitions.csv` (the same per partition).".into()));
    let markdown_path = out_dir.join("report.md");
    write(&markdown_path, &markdown(&title, &b))?;
    let html_path = out_dir.join("report.html");
    write(&html_path, &html(&title, &b))?;
    Ok(ReportFiles {
        markdown: markdown_path,
        html: html_path,
        plots: plots
            .iter()
            .flat_map(|p| [p.svg_path.clone(), p.png_path.clone()])
            .collect(),
        tables,
    })
}

/// One line of a comparison.
#[derive(Debug, Clone)]
struct CmpRow {
    key: GroupKey,
    variant: String,
    a: Option<f64>,
    b: Option<f64>,
    a_exits: Option<f64>,
    b_exits: Option<f64>,
    ratio: Option<Estimate>,
}

pub fn write_compare(
    la: &Loaded,
    lb: &Loaded,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let plot_dir = out_dir.join("plots");
    mkdir(&plot_dir)?;
    let ma = Model::build(&la.records, &la.manifests, 0, opts.seed);
    let mb = Model::build(&lb.records, &lb.manifests, 0, opts.seed);
    let index = |m: &Model| -> BTreeMap<(GroupKey, String), Row> {
        m.groups
            .values()
            .flatten()
            .map(|r| ((r.key.clone(), r.variant.clone()), r.clone()))
            .collect()
    };
    let (ia, ib) = (index(&ma), index(&mb));
    let keys: BTreeSet<&(GroupKey, String)> = ia.keys().chain(ib.keys()).collect();
    let rows: Vec<CmpRow> = keys
        .into_iter()
        .map(|k| {
            let (ra, rb) = (ia.get(k), ib.get(k));
            let ratio = match (ra, rb) {
                (Some(ra), Some(rb)) => bootstrap_ratio(
                    &ra.clusters,
                    &rb.clusters,
                    opts.bootstrap_resamples,
                    opts.seed ^ fnv1a(&format!("{:?}/{}", k.0, k.1)),
                ),
                _ => None,
            };
            CmpRow {
                key: k.0.clone(),
                variant: k.1.clone(),
                a: ra.and_then(|r| r.ns_per_op),
                b: rb.and_then(|r| r.ns_per_op),
                a_exits: ra.and_then(|r| r.exits_per_op),
                b_exits: rb.and_then(|r| r.exits_per_op),
                ratio,
            }
        })
        .collect();
    // Table file.
    let s = |f: &dyn Fn(&CmpRow) -> String, n: &str| {
        Column::new(n.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    let o = |f: &dyn Fn(&CmpRow) -> Option<f64>, n: &str| {
        Column::new(n.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            s(&|r| r.key.experiment.clone(), "experiment"),
            s(&|r| r.key.workload.clone(), "workload"),
            s(&|r| r.key.phase.clone(), "phase"),
            s(&|r| r.variant.clone(), "variant"),
            s(&|r| r.key.vmm.clone(), "vmm"),
            Column::new(
                "vcpus".into(),
                rows.iter().map(|r| r.key.vcpus).collect::<Vec<u32>>(),
            ),
            Column::new(
                "partitions".into(),
                rows.iter().map(|r| r.key.partitions).collect::<Vec<u32>>(),
            ),
            o(&|r| r.a, "a_ns_per_op"),
            o(&|r| r.b, "b_ns_per_op"),
            o(&|r| r.ratio.map(|e| e.point), "b_over_a"),
            o(&|r| r.ratio.map(|e| e.lo), "b_over_a_lo"),
            o(&|r| r.ratio.map(|e| e.hi), "b_over_a_hi"),
            o(&|r| r.a_exits, "a_exits_per_op"),
            o(&|r| r.b_exits, "b_exits_per_op"),
        ],
    )?;
    let csv = out_dir.join("compare.csv");
    write_csv(&mut df, &csv)?;
    let title = opts.title.clone().unwrap_or_else(|| {
        format!(
            "hvlab comparison: A = {} vs B = {}",
            run_ids(la),
            run_ids(lb)
        )
    });
    let mut b = vec![Block::Para(format!(
        "Per experiment, workload, phase, variant, vmm, vCPUs and partitions: median ns/op of A and B, and B/A with a \
         percentile bootstrap 95% CI over repetitions ({} resamples). B/A < 1 means B is faster.",
        opts.bootstrap_resamples
    ))];
    b.extend(host_blocks(la, " A"));
    b.extend(host_blocks(lb, " B"));
    b.push(Block::Heading(2, "Results".into()));
    let mut by_wl: BTreeMap<(String, String), Vec<&CmpRow>> = BTreeMap::new();
    for r in &rows {
        by_wl
            .entry((r.key.experiment.clone(), r.key.workload.clone()))
            .or_default()
            .push(r);
    }
    let mut plots = Vec::new();
    for ((exp, w), rs) in &by_wl {
        b.push(Block::Heading(3, format!("{exp} / {w}")));
        b.push(Block::Table {
            head: [
                "phase",
                "variant",
                "vmm",
                "vCPUs",
                "parts",
                "A ns/op",
                "B ns/op",
                "B/A [95% CI]",
                "A exits/op",
                "B exits/op",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rows: rs
                .iter()
                .map(|r| {
                    vec![
                        r.key.phase.clone(),
                        r.variant.clone(),
                        r.key.vmm.clone(),
                        r.key.vcpus.to_string(),
                        r.key.partitions.to_string(),
                        opt(r.a),
                        opt(r.b),
                        est(r.ratio),
                        opt(r.a_exits),
                        opt(r.b_exits),
                    ]
                })
                .collect(),
        });
        let with: Vec<&&CmpRow> = rs.iter().filter(|r| r.ratio.is_some()).collect();
        if !with.is_empty() {
            let title = format!("{exp} / {w}: B/A time (95% CI)");
            let chart = ErrorBars {
                title: title.clone(),
                y_label: "time B / time A".into(),
                categories: with
                    .iter()
                    .map(|r| format!("{} / {}", r.variant, r.key.phase))
                    .collect(),
                points: with
                    .iter()
                    .filter_map(|r| r.ratio.map(|e| (e.lo, e.point, e.hi)))
                    .collect(),
            };
            let p = render(
                &chart,
                &plot_dir,
                &slug(&format!("compare_{exp}_{w}")),
                &title,
            )?;
            b.push(plot_block(&p, out_dir));
            plots.push(p);
        }
    }
    if rows.is_empty() {
        b.push(Block::Para("No ok records on either side.".into()));
    }
    let md = out_dir.join("compare.md");
    write(&md, &markdown(&title, &b))?;
    let h = out_dir.join("compare.html");
    write(&h, &html(&title, &b))?;
    Ok(ReportFiles {
        markdown: md,
        html: h,
        plots: plots
            .iter()
            .flat_map(|p| [p.svg_path.clone(), p.png_path.clone()])
            .collect(),
        tables: vec![csv],
    })
}
