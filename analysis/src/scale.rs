//! Scale: what one partition costs the host against the number of partitions in the run
//! (`bench/specs/scale.toml`; every hv record carries `host_cost`, see `hv::scale`).
//!
//! One point per run and metric: the per-partition values of the run's `host_cost` (memory
//! beyond touched guest memory, RSS, kernel memory, fds, threads), the median startup and
//! teardown time over its partitions, its wall time per partition, and its median exit cost
//! (ns/op over the partitions' ok phase records). Each metric gets a least-squares line
//! `value = a + b * partitions` (b: the cost of one more partition) and a log-log fit
//! `value ~ partitions^k`: a per-partition cost should be flat (k near 0); k above
//! [`SUPERLINEAR_K`] means the total grows faster than linearly and is flagged.

use std::collections::BTreeMap;
use std::path::Path;

use hv::record::RunRecord;

use crate::AnalysisError;
use crate::doc::Block;
use crate::plots::{Lines, color, render};

/// Log-log exponent above which a per-partition cost counts as growing with the partition
/// count (total cost super-linear).
pub const SUPERLINEAR_K: f64 = 0.15;

/// A metric: name, unit, and how to get it from one run's records.
type Extract = fn(&[&RunRecord]) -> Option<f64>;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn cost<'a>(recs: &[&'a RunRecord]) -> Option<&'a hv::scale::HostCost> {
    recs.iter().find_map(|r| r.host_cost.as_ref())
}

const KIB: f64 = 1024.0;

/// The metrics plotted, in report order.
pub const METRICS: &[(&str, &str, Extract)] = &[
    (
        "host memory beyond touched guest memory",
        "KiB / partition",
        |r| cost(r).map(|c| c.beyond_guest_bytes / KIB),
    ),
    ("hv RSS", "KiB / partition", |r| {
        cost(r).map(|c| c.rss_bytes / KIB)
    }),
    (
        "kernel memory (KVM, stacks, page tables)",
        "KiB / partition",
        |r| cost(r).map(|c| c.kernel_bytes / KIB),
    ),
    ("file descriptors", "fds / partition", |r| {
        cost(r).map(|c| c.fds)
    }),
    ("threads", "threads / partition", |r| {
        cost(r).map(|c| c.threads)
    }),
    (
        "startup (build + vCPU thread setup)",
        "ms / partition (median)",
        |r| {
            median(
                per_partition(r)
                    .into_values()
                    .filter_map(|r| r.host_cost.as_ref().map(|c| c.startup_ns as f64 / 1e6))
                    .collect(),
            )
        },
    ),
    ("teardown", "ms / partition (median)", |r| {
        median(
            per_partition(r)
                .into_values()
                .filter_map(|r| r.host_cost.as_ref().map(|c| c.teardown_ns as f64 / 1e6))
                .collect(),
        )
    }),
    ("wall time", "ms / partition", |r| {
        cost(r).map(|c| c.wall_ns as f64 / 1e6 / f64::from(c.partitions.max(1)))
    }),
    ("exit cost", "ns / op (median over partitions)", |r| {
        median(
            r.iter()
                .filter(|r| r.status.is_ok())
                .filter_map(|r| r.ns_per_op())
                .collect(),
        )
    }),
];

fn per_partition<'a>(recs: &[&'a RunRecord]) -> BTreeMap<u32, &'a RunRecord> {
    recs.iter().map(|r| (r.partition, *r)).collect()
}

/// Least squares `y = a + b x`; `None` with fewer than two distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if points.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

/// Exponent `k` of `y ~ x^k` (least squares in log-log; points with y <= 0 left out).
pub fn loglog_exponent(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 > 0.0 && p.1 > 0.0)
        .map(|p| (p.0.ln(), p.1.ln()))
        .collect();
    fit(&logs).map(|(_, k)| k)
}

/// The runs that carry `host_cost`, by run: (run id, run key or partitions + repetition).
fn runs(records: &[RunRecord]) -> BTreeMap<(String, String), Vec<&RunRecord>> {
    let mut out: BTreeMap<(String, String), Vec<&RunRecord>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.host_cost.is_some() && r.role.is_empty())
    {
        let key = if r.run_key.is_empty() {
            format!("{}/{}/{}", r.experiment, r.partitions, r.repetition)
        } else {
            r.run_key.clone()
        };
        out.entry((r.run_id.clone(), key)).or_default().push(r);
    }
    out
}

/// One metric's points and fits.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub unit: &'static str,
    pub points: Vec<(f64, f64)>,
    /// `a + b * partitions`.
    pub line: Option<(f64, f64)>,
    pub k: Option<f64>,
}

impl Series {
    pub fn superlinear(&self) -> bool {
        self.k.is_some_and(|k| k > SUPERLINEAR_K)
    }
}

/// The series of each metric, per experiment, over the runs that carry `host_cost`; only
/// experiments whose runs have at least two partition counts.
pub fn series(records: &[RunRecord]) -> BTreeMap<String, Vec<Series>> {
    let mut by_exp: BTreeMap<String, Vec<Vec<&RunRecord>>> = BTreeMap::new();
    for ((_, _), recs) in runs(records) {
        by_exp
            .entry(recs[0].experiment.clone())
            .or_default()
            .push(recs);
    }
    let mut out = BTreeMap::new();
    for (exp, runs) in by_exp {
        let counts: std::collections::BTreeSet<u32> =
            runs.iter().map(|r| r[0].partitions).collect();
        if counts.len() < 2 {
            continue;
        }
        let list = METRICS
            .iter()
            .map(|(name, unit, f)| {
                let mut points: Vec<(f64, f64)> = runs
                    .iter()
                    .filter_map(|r| f(r).map(|v| (f64::from(r[0].partitions), v)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name,
                    unit,
                    line: fit(&points),
                    k: loglog_exponent(&points),
                    points,
                }
            })
            .collect();
        out.insert(exp, list);
    }
    out
}

fn num(v: f64) -> String {
    crate::report::num(v)
}

/// The report's "Scale" section: a table of fits and one plot per metric; empty when no
/// experiment varies the partition count with `host_cost` records.
pub fn blocks(
    records: &[RunRecord],
    plot_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<Block>, AnalysisError> {
    let all = series(records);
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let mut b = vec![
        Block::Heading(2, "Scale: per-partition host cost".into()),
        Block::Para(format!(
            "Per partition, against the partitions in the run. `b`: least-squares slope of \
             value = a + b x partitions (the change per extra partition); `k`: exponent of \
             value ~ partitions^k (log-log fit). A per-partition cost should be flat (k near 0); \
             k > {SUPERLINEAR_K} is flagged SUPER-LINEAR (the total grows faster than the \
             partition count)."
        )),
    ];
    for (exp, list) in &all {
        b.push(Block::Heading(3, exp.clone()));
        let rows = list
            .iter()
            .map(|s| {
                let at = |i: usize| s.points.get(i).map_or("–".into(), |p| num(p.1));
                vec![
                    s.name.to_string(),
                    s.unit.to_string(),
                    at(0),
                    s.points.last().map_or("–".into(), |p| num(p.1)),
                    s.line.map_or("–".into(), |(a, _)| num(a)),
                    s.line.map_or("–".into(), |(_, b)| format!("{b:.3e}")),
                    s.k.map_or("–".into(), |k| format!("{k:.3}")),
                    if s.points.len() < 2 {
                        "too few points".into()
                    } else if s.superlinear() {
                        "SUPER-LINEAR".into()
                    } else {
                        "flat or sub-linear".into()
                    },
                ]
            })
            .collect();
        let first = list
            .iter()
            .find_map(|s| s.points.first())
            .map_or(0.0, |p| p.0);
        let last = list
            .iter()
            .find_map(|s| s.points.last())
            .map_or(0.0, |p| p.0);
        b.push(Block::Table {
            head: vec![
                "metric".into(),
                "unit".into(),
                format!("at {first:.0}"),
                format!("at {last:.0}"),
                "a".into(),
                "b (per partition)".into(),
                "k".into(),
                "growth".into(),
            ],
            rows,
        });
        for s in list.iter().filter(|s| !s.points.is_empty()) {
            // Partition counts are log-spaced (1 ... 1,000): x is log10(partitions), so each
            // decade gets the same width.
            let logx = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
                pts.iter().map(|&(x, y)| (x.max(1.0).log10(), y)).collect()
            };
            let mut series = vec![("measured".to_string(), color(0), logx(&s.points))];
            if let Some((a, bb)) = s.line {
                let fit: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, a + bb * p.0)).collect();
                series.push((format!("fit a + b·n (b = {bb:.3e})"), color(1), logx(&fit)));
            }
            let title = format!("{exp}: {} vs partitions", s.name);
            let chart = Lines {
                title: title.clone(),
                x_label: "log10(partitions)".into(),
                y_label: s.unit.into(),
                series,
                x_time: false,
                y_time: false,
            };
            let name = crate::plots::slug(&format!("scale_{exp}_{}", s.name));
            let p = render(&chart, plot_dir, &name, &title)?;
            b.push(crate::report::plot_block(&p, out_dir)?);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv::scale::HostCost;

    #[test]
    fn least_squares_and_loglog_fits() {
        let (a, b) = fit(&[(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
        assert!(fit(&[(1.0, 3.0)]).is_none());
        assert!(fit(&[(2.0, 3.0), (2.0, 4.0)]).is_none());
        // Flat: k = 0; linear per partition (quadratic total): k = 1.
        let flat: Vec<(f64, f64)> = [1.0, 10.0, 100.0].iter().map(|&x| (x, 5.0)).collect();
        assert!(loglog_exponent(&flat).unwrap().abs() < 1e-9);
        let lin: Vec<(f64, f64)> = [1.0, 10.0, 100.0].iter().map(|&x| (x, 2.0 * x)).collect();
        assert!((loglog_exponent(&lin).unwrap() - 1.0).abs() < 1e-9);
    }

    fn run(partitions: u32, beyond_kib: f64) -> Vec<RunRecord> {
        (0..partitions)
            .map(|p| RunRecord {
                run_id: "r".into(),
                run_key: format!("scale/p{partitions}"),
                experiment: "scale".into(),
                partitions,
                partition: p,
                host_cost: Some(HostCost {
                    partitions,
                    beyond_guest_bytes: beyond_kib * 1024.0,
                    fds: 4.0,
                    threads: 1.0,
                    startup_ns: 1_000_000,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_growing_per_partition_cost_is_flagged_and_a_flat_one_is_not() {
        let mut recs = Vec::new();
        for n in [1, 10, 100] {
            // 200 KiB flat vs growing with n.
            recs.extend(run(n, 200.0 + f64::from(n) * 10.0));
        }
        let s = series(&recs);
        let list = &s["scale"];
        let mem = &list[0];
        assert_eq!(mem.points.len(), 3);
        assert!(mem.superlinear(), "{mem:?}");
        let fds = list.iter().find(|s| s.name == "file descriptors").unwrap();
        assert!(!fds.superlinear() && fds.k.unwrap().abs() < 1e-9, "{fds:?}");
        let startup = list.iter().find(|s| s.name.starts_with("startup")).unwrap();
        assert_eq!(startup.points[0].1, 1.0);
        // One partition count only: no section.
        assert!(series(&run(5, 1.0)).is_empty());
    }
}
