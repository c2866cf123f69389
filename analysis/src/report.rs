//! Assembles the report and the comparison from the model, the tables and the plots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hv::record::HostInfo;
use polars::prelude::*;

use crate::doc::{Block, html, markdown};
use crate::frame::TLB_SOURCES;
use crate::frame::{SUMMARY_KEYS, medians, records_frame, write_csv, write_parquet};
use crate::model::{GroupKey, Model, Row, UNSTABLE_CI_WIDTH};
use crate::plots::{Bars, Cdf, ErrorBars, Lines, Palette, Plot, render, slug};
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

pub(crate) fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

/// A host-counter cell (exits, KVM stats, host CPU): `None` means hv did not measure it (QEMU
/// rows, counters unavailable), which the table says instead of a dash or a 0.
pub(crate) fn measured(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured".into(), num)
}

pub(crate) fn est(e: Option<Estimate>) -> String {
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

/// Whether the rows ran in more than one shape (vCPUs × partitions), so labels must say which.
fn multi_shape(rows: &[&&Row]) -> bool {
    rows.iter()
        .map(|r| (r.key.vcpus, r.key.partitions))
        .collect::<BTreeSet<_>>()
        .len()
        > 1
}

/// One category per row: "phase · variant" (with the shape where rows differ in it).
pub(crate) fn phase_categories(rows: &[&&Row]) -> Vec<String> {
    let multi = multi_shape(rows);
    rows.iter()
        .map(|r| format!("{} · {}", r.key.phase, row_label(r, multi)))
        .collect()
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

/// A time in ns with a unit (ns, µs, ms, s) and 3 significant digits: "22.9 ms".
pub fn time(ns: f64) -> String {
    let (u, scale) = crate::plots::time_unit(ns);
    format!("{} {u}", sig3(ns / scale))
}

/// 3 significant digits (at least one decimal place below 1000 is kept as digits allow).
pub fn sig3(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    // Rounding can add a digit (999.6 -> "1000"): that is still 3 significant digits' worth.
    s
}

fn opt_time(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), time)
}

/// A latency cell: times when the unit is ns, else the number and its unit.
pub(crate) fn latency(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".into(),
        Some(v) if unit == "ns" || unit.is_empty() => time(v),
        Some(v) => format!("{} {unit}", sig3(v)),
    }
}

/// Coefficient of variation as a percentage.
fn pct(v: f64) -> String {
    format!("{}%", sig3(v * 100.0))
}

/// The stability cell: CV across repetitions and the CI width of the median, flagged when
/// wider than [`UNSTABLE_CI_WIDTH`].
fn stability(r: &Row) -> String {
    if r.reps < 2 {
        return "1 rep".into();
    }
    let cv = r.cv.map_or_else(|| "–".into(), pct);
    match r.ci {
        Some(e) if e.point > 0.0 => {
            let w = (e.hi - e.lo) / e.point;
            let flag = if r.unstable() { " ⚠ unstable" } else { "" };
            format!("{cv} (CI ±{}){flag}", pct(w / 2.0))
        }
        _ => cv,
    }
}

/// Label of a TLB source column.
fn tlb_label(col: &str) -> &str {
    TLB_SOURCES
        .iter()
        .find(|(c, _)| *c == col)
        .map_or(col, |(_, l)| *l)
}

/// The non-zero TLB flush sources of a row, per op.
fn tlb_cell(r: &Row) -> String {
    if r.tlb.is_empty() {
        return "not measured".into();
    }
    let nz: Vec<String> = r
        .tlb
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{} {}", tlb_label(k), num(*v)))
        .collect();
    if nz.is_empty() {
        "0".into()
    } else {
        nz.join(", ")
    }
}

fn workload_table(rows: &[&Row], has_qemu: bool) -> Block {
    let any = |f: &dyn Fn(&Row) -> bool| rows.iter().any(|r| f(r));
    let irqs = any(&|r| r.irqs_per_op.is_some());
    let halts = any(&|r| r.halts_per_op.is_some());
    let lat = any(&|r| r.lat_p50.is_some());
    let cpu = any(&|r| r.vcpu_us_per_op.is_some());
    let worker = any(&|r| r.worker_us_per_op.is_some());
    let tlb = any(&|r| !r.tlb.is_empty());
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
        "time/op",
        "CV (CI)",
        "exits/op",
        "top exits/op",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if tlb {
        head.push("TLB flushes/op".into());
        head.push("TLB by source /op".into());
    }
    if irqs {
        head.push("irqs/op".into());
    }
    if halts {
        head.push("halts/op".into());
    }
    if lat {
        head.push("p50".into());
        head.push("p99".into());
    }
    if cpu {
        head.push("vCPU host time/op".into());
    }
    if worker {
        head.push("worker host time/op".into());
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
                    (Some(ns), _) => time(ns),
                    // No guest TSC frequency: host wall time between the markers instead.
                    (None, Some(w)) => format!("{} (wall)", time(w)),
                    (None, None) => "–".into(),
                },
                stability(r),
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
            if tlb {
                c.push(measured(r.tlb_flushes()));
                c.push(tlb_cell(r));
            }
            if irqs {
                c.push(measured(r.irqs_per_op));
            }
            if halts {
                c.push(measured(r.halts_per_op));
            }
            if lat {
                c.push(latency(r.lat_p50, &unit));
                c.push(latency(r.lat_p99, &unit));
            }
            if cpu {
                c.push(
                    r.vcpu_us_per_op
                        .map_or_else(|| "not measured".into(), |v| time(v * 1e3)),
                );
            }
            if worker {
                c.push(
                    r.worker_us_per_op
                        .map_or_else(|| "not measured".into(), |v| time(v * 1e3)),
                );
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

/// Every TLB flush source per op, one column each, for workloads that are about TLB flushes.
fn tlb_table(rows: &[&Row]) -> Option<Block> {
    let cols: Vec<&str> = TLB_SOURCES
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| rows.iter().any(|r| r.tlb.iter().any(|(k, _)| k == c)))
        .collect();
    if cols.is_empty() {
        return None;
    }
    let mut head: Vec<String> = ["phase", "variant", "vmm"].map(String::from).to_vec();
    head.extend(cols.iter().map(|c| format!("{} /op", tlb_label(c))));
    let rows = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.key.phase.clone(), r.variant.clone(), r.key.vmm.clone()];
            for col in &cols {
                c.push(measured(
                    r.tlb.iter().find(|(k, _)| k == col).map(|(_, v)| *v),
                ));
            }
            c
        })
        .collect();
    Some(Block::Table { head, rows })
}

/// The report's opening: per experiment, each variant against its baseline (time ratio with
/// CI, exits/op and TLB flushes/op of both), or against QEMU where the experiment has one
/// variant. At most [`MAX_FINDINGS`] lines per experiment, in table order.
fn key_findings(m: &Model) -> Vec<Block> {
    let mut out = vec![Block::Heading(2, "Key findings".into())];
    let mut by_exp: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for rows in m.groups.values() {
        for r in rows {
            by_exp.entry(r.key.experiment.as_str()).or_default().push(r);
        }
    }
    fn find<'a>(m: &'a Model, r: &Row, v: &str) -> Option<&'a Row> {
        m.groups.get(&r.key)?.iter().find(|x| x.variant == v)
    }
    let arrow = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{} → {}", num(a), num(b)),
        _ => "not measured".into(),
    };
    let mut items = Vec::new();
    for (exp, rows) in by_exp {
        let mut lines = Vec::new();
        for r in rows.iter().filter(|r| r.key.vmm == "hv" && !r.is_baseline) {
            let (Some(e), Some(base)) = (r.vs_baseline, r.baseline.as_deref()) else {
                continue;
            };
            let b = find(m, r, base);
            lines.push(format!(
                "`{}` vs `{base}` ({}, {}v×{}p): time ×{} [{}, {}]{}; exits/op {}; TLB flushes/op {}",
                r.variant,
                r.key.phase,
                r.key.vcpus,
                r.key.partitions,
                num(e.point),
                num(e.lo),
                num(e.hi),
                if r.unstable() || b.is_some_and(Row::unstable) {
                    " ⚠ unstable"
                } else {
                    ""
                },
                arrow(b.and_then(|b| b.exits_per_op), r.exits_per_op),
                arrow(b.and_then(Row::tlb_flushes), r.tlb_flushes()),
            ));
        }
        if lines.is_empty() {
            for r in rows.iter().filter(|r| r.key.vmm == "hv") {
                let peer = r.vs_qemu.map_or(String::new(), |e| {
                    format!(
                        "; hv/qemu time ×{} [{}, {}]",
                        num(e.point),
                        num(e.lo),
                        num(e.hi)
                    )
                });
                lines.push(format!(
                    "`{}` ({}): {}/op; exits/op {}; TLB flushes/op {}{peer}",
                    r.variant,
                    r.key.phase,
                    opt_time(r.ns_per_op),
                    measured(r.exits_per_op),
                    measured(r.tlb_flushes()),
                ));
            }
        }
        let more = lines.len().saturating_sub(MAX_FINDINGS);
        lines.truncate(MAX_FINDINGS);
        if more > 0 {
            lines.push(format!("... {more} more rows in the table below"));
        }
        items.extend(lines.into_iter().map(|l| format!("**{exp}**: {l}")));
    }
    if items.is_empty() {
        out.push(Block::Para("No ok records.".into()));
    } else {
        out.push(Block::List(items));
    }
    out
}

/// Lines per experiment in the key findings.
const MAX_FINDINGS: usize = 8;

pub(crate) fn plot_block(p: &Plot, out_dir: &Path) -> Result<Block, AnalysisError> {
    use base64::Engine as _;
    let rel = |q: &Path| q.strip_prefix(out_dir).unwrap_or(q).display().to_string();
    let png = std::fs::read(&p.png_path).map_err(|source| AnalysisError::Read {
        path: p.png_path.clone(),
        source,
    })?;
    Ok(Block::Plot {
        title: p.title.clone(),
        png_base64: base64::engine::general_purpose::STANDARD.encode(png),
        svg_rel: rel(&p.svg_path),
        png_rel: rel(&p.png_path),
    })
}

/// All plots of a model; returns the plots and a note for each kind that had no data.
fn make_plots(m: &Model, dir: &Path) -> Result<(Vec<Plot>, Vec<String>), AnalysisError> {
    let mut plots = Vec::new();
    let mut notes = Vec::new();
    let palette = Palette::new(m.groups.values().flatten().map(|r| r.variant.as_str()));
    let wl = by_workload(m);
    // (0) Overview: every variant against its baseline, one figure for the report.
    let over: Vec<&&Row> = wl
        .values()
        .flatten()
        .filter(|r| !r.is_baseline && r.key.vmm == "hv")
        .filter(|r| r.vs_baseline.is_some_and(|e| e.lo > 0.0))
        .collect();
    if over.is_empty() {
        notes.push("Overview: skipped, no variant has a baseline to compare with.".into());
    } else {
        let shown = &over[..over.len().min(MAX_OVERVIEW)];
        let title = "Overview: time per op vs baseline (95% CI; < 1 is faster)".to_string();
        let chart = ErrorBars {
            title: title.clone(),
            x_label: "time(variant) / time(baseline), log scale".into(),
            categories: shown
                .iter()
                .map(|r| format!("{}: {} · {}", r.key.experiment, r.variant, r.key.phase))
                .collect(),
            colors: shown.iter().map(|r| palette.of(&r.variant)).collect(),
            points: shown
                .iter()
                .filter_map(|r| r.vs_baseline.map(|e| (e.lo, e.point, e.hi)))
                .collect(),
        };
        plots.push(render(&chart, dir, "overview", &title)?);
        if over.len() > MAX_OVERVIEW {
            notes.push(format!(
                "Overview: the first {MAX_OVERVIEW} of {} rows (the tables have all).",
                over.len()
            ));
        }
    }
    // (1) exits per op, one bar per phase and variant, in the variant's colour.
    let mut n_exits = 0;
    for ((exp, w), rows) in &wl {
        let rows: Vec<&&Row> = rows.iter().filter(|r| r.exits_per_op.is_some()).collect();
        if rows.is_empty() {
            continue;
        }
        let title = format!("{exp} / {w}: exits per operation");
        let chart = Bars {
            title: title.clone(),
            x_label: "exits / op (median)".into(),
            categories: phase_categories(&rows),
            category_colors: rows.iter().map(|r| palette.of(&r.variant)).collect(),
            series: vec![(
                "exits/op".into(),
                rows.iter().map(|r| r.exits_per_op).collect(),
            )],
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
    // (1b) the device transports' per-request counts, where a VMBus-style row is there.
    for ((exp, w), rows) in &wl {
        if let Some(p) = crate::transports::plot(exp, w, rows, &palette, dir)? {
            plots.push(p);
        }
    }
    // (2) TLB flushes per op by source.
    let mut tlb_zero = Vec::new();
    let mut n_tlb = 0;
    for ((exp, w), rows) in &wl {
        let rows: Vec<&&Row> = rows.iter().filter(|r| !r.tlb.is_empty()).collect();
        if rows.is_empty() {
            continue;
        }
        let sources: Vec<&str> = TLB_SOURCES
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| {
                rows.iter()
                    .any(|r| r.tlb.iter().any(|(k, v)| k == c && *v > 0.0))
            })
            .collect();
        if sources.is_empty() {
            tlb_zero.push(format!("{exp} / {w}"));
            continue;
        }
        let title = format!("{exp} / {w}: TLB flushes per operation by source");
        let chart = Bars {
            title: title.clone(),
            x_label: "per op (median)".into(),
            categories: phase_categories(&rows),
            category_colors: Vec::new(),
            series: sources
                .iter()
                .map(|c| {
                    (
                        tlb_label(c).to_string(),
                        rows.iter()
                            .map(|r| r.tlb.iter().find(|(k, _)| k == c).map(|(_, v)| *v))
                            .collect(),
                    )
                })
                .collect(),
        };
        plots.push(render(
            &chart,
            dir,
            &slug(&format!("tlb_{exp}_{w}")),
            &title,
        )?);
        n_tlb += 1;
    }
    if !tlb_zero.is_empty() {
        notes.push(format!(
            "TLB flushes per operation: 0 from every source in {} (no plot).",
            tlb_zero.join(", ")
        ));
    }
    if n_tlb == 0 && tlb_zero.is_empty() {
        notes.push("TLB flushes per operation: skipped, no record has KVM statistics.".into());
    }
    // (3) latency percentiles per variant, per phase.
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
                    series.push((r.variant.clone(), palette.of(&r.variant), pts));
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        let title = format!(
            "{} / {} / {}: latency percentiles ({}, {}v×{}p)",
            k.experiment, k.workload, k.phase, k.vmm, k.vcpus, k.partitions
        );
        let chart = Cdf {
            title: title.clone(),
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
    // (4) time vs baseline with CI.
    let mut n_sp = 0;
    for ((exp, w), rows) in &wl {
        let rows: Vec<&&Row> = rows
            .iter()
            .filter(|r| !r.is_baseline && r.vs_baseline.is_some_and(|e| e.lo > 0.0))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let title = format!("{exp} / {w}: time per op vs baseline (95% CI)");
        let chart = ErrorBars {
            title: title.clone(),
            x_label: "time(variant) / time(baseline), log scale; < 1 is faster".into(),
            categories: phase_categories(&rows),
            colors: rows.iter().map(|r| palette.of(&r.variant)).collect(),
            points: rows
                .iter()
                .filter_map(|r| r.vs_baseline.map(|e| (e.lo, e.point, e.hi)))
                .collect(),
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
    // (5) scaling with vCPUs and partitions.
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
            let series: Vec<(String, _, Vec<(f64, f64)>)> = series
                .into_iter()
                .map(|(k, mut v)| {
                    v.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (k.to_string(), palette.of(k), v)
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
            let title =
                format!("{exp} / {w} / {ph} ({vmm}): time/op vs {axis} ({other} = {fixed})");
            let chart = Lines {
                title: title.clone(),
                x_label: axis.into(),
                y_label: "time / op (median)".into(),
                series,
                x_time: false,
                y_time: true,
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

fn write_tables(
    df: &mut DataFrame,
    summary: &DataFrame,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, AnalysisError> {
    let mut tables = Vec::new();
    let p = out_dir.join("runs.parquet");
    write_parquet(df, &p)?;
    tables.push(p);
    let p = out_dir.join("runs.csv");
    write_csv(df, &p)?;
    tables.push(p);
    let mut summary = summary.clone();
    let p = out_dir.join("summary.csv");
    write_csv(&mut summary, &p)?;
    tables.push(p);
    let p = out_dir.join("summary.parquet");
    write_parquet(&mut summary, &p)?;
    tables.push(p);
    let mut keys = SUMMARY_KEYS.to_vec();
    keys.push("partition");
    let mut parts = medians(df, &keys)?;
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

/// Rows in the overview figure.
const MAX_OVERVIEW: usize = 60;

pub fn write_report(
    l: &Loaded,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let plot_dir = out_dir.join("plots");
    mkdir(&plot_dir)?;
    // The frame is built once; the model, every table and every plot read it.
    let mut df = records_frame(&l.records)?;
    let m = Model::build(
        &df,
        &l.records,
        &l.manifests,
        opts.bootstrap_resamples,
        opts.seed,
    )?;
    let tables = write_tables(&mut df, &m.summary, out_dir)?;
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| format!("hvlab report: {}", run_ids(l)));
    let ok = l.records.iter().filter(|r| r.status.is_ok()).count();
    let mut b = vec![Block::Para(format!(
        "{} records ({} ok, {} skipped or failed) from {} results director{}. Medians over repetitions and partitions; \
         ratios are time(variant)/time(baseline) with a percentile bootstrap 95% CI over repetitions \
         ({} resamples, seed {:#x}); speed-up = 1/ratio. Times carry their unit (3 significant digits). \
         CV (CI): coefficient of variation of the per-repetition medians of time/op, and the half-width \
         of the 95% bootstrap CI of the median; a row whose CI is wider than {}% of its median is \
         flagged ⚠ unstable (its time cannot carry a 5% difference). TLB flushes/op: flushes KVM did \
         (`tlb_flush`) plus flushes hv did for the Hyper-V flush hypercall; by source also counts \
         INVLPGs, CR accesses and remote flush requests.",
        l.records.len(),
        ok,
        l.records.len() - ok,
        l.dirs.len(),
        if l.dirs.len() == 1 { "y" } else { "ies" },
        opts.bootstrap_resamples,
        opts.seed,
        UNSTABLE_CI_WIDTH * 100.0
    ))];
    b.extend(key_findings(&m));
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
        if let Some(t) = crate::transports::table(rows) {
            b.push(Block::Para(crate::transports::INTRO.into()));
            b.push(t);
        }
        if w == "tlb-shootdown"
            && let Some(t) = tlb_table(rows)
        {
            b.push(Block::Para(
                "TLB flushes per shootdown by source, every source:".into(),
            ));
            b.push(t);
        }
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
        b.push(plot_block(p, out_dir)?);
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
        summary: Vec::new(),
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
    /// Each side's median with its CI, CV and stability.
    a_row: Option<Row>,
    b_row: Option<Row>,
}

impl CmpRow {
    /// Both sides stable (see [`Row::stable`]).
    fn stable(&self) -> bool {
        self.a_row.as_ref().is_some_and(Row::stable) && self.b_row.as_ref().is_some_and(Row::stable)
    }

    /// |B - A| / A of the medians.
    fn rel_diff(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some(a), Some(b)) if a > 0.0 => Some((b - a).abs() / a),
            _ => None,
        }
    }

    /// The difference exceeds both CIs: B's median lies outside A's 95% CI and A's median
    /// outside B's.
    fn differs(&self) -> bool {
        let (Some(a), Some(b)) = (&self.a_row, &self.b_row) else {
            return false;
        };
        // One repetition has no interval to speak of.
        if a.reps < 2 || b.reps < 2 {
            return false;
        }
        let (Some(ca), Some(cb)) = (a.ci, b.ci) else {
            return false;
        };
        (cb.point < ca.lo || cb.point > ca.hi) && (ca.point < cb.lo || ca.point > cb.hi)
    }
}

/// Stable rows whose medians differ by more than this fraction are counted in the comparison's
/// summary line.
const DRIFT: f64 = 0.05;

pub fn write_compare(
    la: &Loaded,
    lb: &Loaded,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportFiles, AnalysisError> {
    let plot_dir = out_dir.join("plots");
    mkdir(&plot_dir)?;
    let build = |l: &Loaded| {
        Model::build(
            &records_frame(&l.records)?,
            &l.records,
            &l.manifests,
            opts.bootstrap_resamples,
            opts.seed,
        )
    };
    let (ma, mb) = (build(la)?, build(lb)?);
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
                a_row: ra.cloned(),
                b_row: rb.cloned(),
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
            o(&|r| r.a_row.as_ref().and_then(|x| x.cv), "a_cv"),
            o(&|r| r.b_row.as_ref().and_then(|x| x.cv), "b_cv"),
            o(
                &|r| r.a_row.as_ref().and_then(|x| x.ci).map(|e| e.lo),
                "a_lo",
            ),
            o(
                &|r| r.a_row.as_ref().and_then(|x| x.ci).map(|e| e.hi),
                "a_hi",
            ),
            o(
                &|r| r.b_row.as_ref().and_then(|x| x.ci).map(|e| e.lo),
                "b_lo",
            ),
            o(
                &|r| r.b_row.as_ref().and_then(|x| x.ci).map(|e| e.hi),
                "b_hi",
            ),
            Column::new(
                "stable".into(),
                rows.iter().map(CmpRow::stable).collect::<Vec<bool>>(),
            ),
            Column::new(
                "differs".into(),
                rows.iter().map(CmpRow::differs).collect::<Vec<bool>>(),
            ),
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
    let both: Vec<&CmpRow> = rows.iter().filter(|r| r.rel_diff().is_some()).collect();
    let stable: Vec<&&CmpRow> = both.iter().filter(|r| r.stable()).collect();
    let drift: Vec<&&&CmpRow> = stable
        .iter()
        .filter(|r| r.rel_diff().is_some_and(|d| d > DRIFT))
        .collect();
    let differs = both.iter().filter(|r| r.differs()).count();
    b.push(Block::Heading(2, "Repeatability".into()));
    let summary = vec![
        format!("{} rows have a median time/op on both sides.", both.len()),
        format!(
            "{} are stable on both sides (2+ repetitions, CI of the median within ±{}%); of these {} ({}) have medians more than {}% apart{}.",
            stable.len(),
            num(UNSTABLE_CI_WIDTH * 50.0),
            drift.len(),
            if stable.is_empty() {
                "–".to_string()
            } else {
                pct(drift.len() as f64 / stable.len() as f64)
            },
            num(DRIFT * 100.0),
            if drift.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    drift
                        .iter()
                        .map(|r| format!(
                            "{} / {} / {} ({})",
                            r.key.experiment,
                            r.variant,
                            r.key.phase,
                            r.rel_diff().map_or_else(String::new, pct)
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ),
        format!(
            "Over all {} rows, stable or not, {} ({}) have medians more than {}% apart.",
            both.len(),
            both.iter()
                .filter(|r| r.rel_diff().is_some_and(|d| d > DRIFT))
                .count(),
            if both.is_empty() {
                "–".to_string()
            } else {
                pct(both
                    .iter()
                    .filter(|r| r.rel_diff().is_some_and(|d| d > DRIFT))
                    .count() as f64
                    / both.len() as f64)
            },
            num(DRIFT * 100.0),
        ),
        format!(
            "{differs} differ beyond both CIs (B's median outside A's 95% CI and A's outside B's, 2+ repetitions on each side): flagged ⚑ below."
        ),
        format!(
            "{} are unstable on at least one side (⚠): the comparison cannot resolve them.",
            both.iter().filter(|r| !r.stable()).count()
        ),
    ];
    b.push(Block::List(summary.clone()));
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
                "A time/op",
                "B time/op",
                "B/A [95% CI]",
                "A CV (CI)",
                "B CV (CI)",
                "flag",
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
                        opt_time(r.a),
                        opt_time(r.b),
                        est(r.ratio),
                        r.a_row.as_ref().map_or_else(|| "–".into(), stability),
                        r.b_row.as_ref().map_or_else(|| "–".into(), stability),
                        if r.differs() {
                            "⚑ differs".into()
                        } else if r.rel_diff().is_some() && !r.stable() {
                            "⚠ unstable".into()
                        } else {
                            String::new()
                        },
                        opt(r.a_exits),
                        opt(r.b_exits),
                    ]
                })
                .collect(),
        });
        let with: Vec<&&CmpRow> = rs.iter().filter(|r| r.ratio.is_some()).collect();
        if !with.is_empty() {
            let title = format!("{exp} / {w}: B/A time (95% CI)");
            let palette = Palette::new(with.iter().map(|r| r.variant.as_str()));
            let chart = ErrorBars {
                title: title.clone(),
                x_label: "time B / time A, log scale".into(),
                categories: with
                    .iter()
                    .map(|r| format!("{} · {}", r.key.phase, r.variant))
                    .collect(),
                colors: with.iter().map(|r| palette.of(&r.variant)).collect(),
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
            b.push(plot_block(&p, out_dir)?);
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
        summary,
    })
}
