//! `hv run` output for many partitions: one line per phase over all partitions instead of a
//! table per partition, the partitions that did not end ok, and what they cost the host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hv::run::{RunRequest, RunResult};

/// Partitions above which `hv run` prints the collapsed view.
pub const COLLAPSE_ABOVE: u32 = 8;

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Per phase over all partitions: partitions that reported it, median ns/op and exits/op.
pub fn collapsed(req: &RunRequest, res: &RunResult) -> String {
    let mut s = String::new();
    let ok = res
        .partitions
        .iter()
        .filter(|p| p.outcome.status.is_ok())
        .count();
    let _ = writeln!(
        s,
        "{} · variant {} · {} vCPU · {} partitions: {} ok, {} not",
        req.workload,
        req.variant_label(),
        req.vcpus,
        res.partitions.len(),
        ok,
        res.partitions.len() - ok
    );
    // (phase id, name) -> (records, ns/op values, exits/op values)
    type PhaseStats = (usize, Vec<f64>, Vec<f64>);
    let mut phases: BTreeMap<(u32, &str), PhaseStats> = BTreeMap::new();
    for r in res.records.iter().filter(|r| r.role.is_empty()) {
        let e = phases.entry((r.phase_id, r.phase.as_str())).or_default();
        e.0 += 1;
        if let Some(ns) = r.ns_per_op() {
            e.1.push(ns);
        }
        if let Some(x) = r.exits_per_op("total") {
            e.2.push(x);
        }
    }
    let _ = writeln!(
        s,
        "  {:<14} {:>10} {:>14} {:>14}",
        "phase", "partitions", "median ns/op", "median exits/op"
    );
    for ((_, name), (n, mut ns, mut ex)) in phases {
        let f = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
        let _ = writeln!(
            s,
            "  {:<14} {:>10} {:>14} {:>14}",
            name,
            n,
            f(median(&mut ns), 0),
            f(median(&mut ex), 2)
        );
    }
    for p in res
        .partitions
        .iter()
        .filter(|p| !p.outcome.status.is_ok())
        .take(20)
    {
        let _ = writeln!(s, "  partition {}: {}", p.outcome.index, p.outcome.status);
    }
    s
}
