//! Human-readable tables.

use std::fmt::Write as _;

use hv::record::{RecordStatus, RunRecord};
use hv::run::{RunRequest, RunResult};

/// `hv list`.
pub fn workloads() -> String {
    let mut s = String::new();
    for w in hvlab_workloads::ALL {
        let _ = writeln!(s, "{:<14} {}", w.name, w.summary);
        if !w.devices.is_empty() {
            let _ = writeln!(s, "{:<14}   devices: {}", "", w.devices.join(", "));
        }
        if w.min_vcpus > 1 {
            let _ = writeln!(s, "{:<14}   needs at least {} vCPUs", "", w.min_vcpus);
        }
        for p in w.params {
            let _ = writeln!(s, "{:<14}   {}={:<8} {}", "", p.key, p.default, p.help);
        }
    }
    s
}

fn per_op(v: u64, ops: u64) -> String {
    if ops == 0 {
        "-".into()
    } else {
        format!("{:.2}", v as f64 / ops as f64)
    }
}

fn top_exits(r: &RunRecord) -> String {
    let mut v: Vec<(&String, &u64)> = r
        .exits
        .iter()
        .filter(|(k, n)| k.as_str() != "total" && **n > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    let s: Vec<String> = v
        .iter()
        .take(2)
        .map(|(k, n)| format!("{k}:{}", per_op(**n, r.ops)))
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

/// The per-phase table `hv run` prints.
pub fn run_result(req: &RunRequest, res: &RunResult) -> String {
    let mut s = String::new();
    for p in &res.partitions {
        let o = &p.outcome;
        // A neighbour partition (`--neighbour`) runs its own workload.
        let workload = res
            .records
            .iter()
            .find(|r| r.partition == o.index && !r.role.is_empty())
            .map_or(req.workload.clone(), |r| {
                format!("{} ({})", r.workload, r.role)
            });
        let _ = writeln!(
            s,
            "{} · variant {} · {} vCPU · partition {}/{} · {} · {:.1} ms",
            workload,
            req.variant_label(),
            req.vcpus,
            o.index,
            req.partitions,
            o.status,
            o.wall.as_secs_f64() * 1e3
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>8} {:>11} {:>9} {:<28} {:>10} {:>10} {:>9}",
            "phase", "ops", "ns/op", "exits/op", "top exits/op", "kvm exits", "emul/op", "cpu us"
        );
        for r in res.records.iter().filter(|r| r.partition == o.index) {
            if let RecordStatus::Skipped(why) = &r.status {
                let _ = writeln!(s, "  {:<14} skipped: {why}", r.phase);
                continue;
            }
            let ns = r.ns_per_op().map_or("-".into(), |v| format!("{v:.0}"));
            let kvm_exits = r
                .kvm_stats
                .get("exits")
                .map_or("-".into(), |v| per_op(*v as u64, r.ops));
            let emul = r
                .kvm_stats
                .get("insn_emulation")
                .map_or("-".into(), |v| per_op(*v as u64, r.ops));
            let _ = writeln!(
                s,
                "  {:<14} {:>8} {:>11} {:>9} {:<28} {:>10} {:>10} {:>9}",
                r.phase,
                r.ops,
                ns,
                per_op(r.exits.get("total").copied().unwrap_or(0), r.ops),
                top_exits(r),
                kvm_exits,
                emul,
                r.cpu.vcpu_ns / 1000
            );
        }
        let notes: Vec<&String> = res
            .records
            .iter()
            .filter(|r| r.partition == o.index)
            .flat_map(|r| &r.notes)
            .collect();
        let mut seen = Vec::new();
        for n in notes {
            if !seen.contains(&n) {
                let _ = writeln!(s, "  note: {n}");
                seen.push(n);
            }
        }
    }
    s
}

fn metric(r: &RunRecord, key: &str) -> Option<f64> {
    (r.ops > 0).then(|| r.metrics.get(key).copied().unwrap_or(0.0) / r.ops as f64)
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The device variants of one `hv run --device a,b,...`, one table per phase with a row per
/// variant: time, userspace exits, doorbells (the guest's `kicks`: virtio notifications or
/// VMBus signals), interrupts and device-worker CPU per operation, latency p50/p99 (the
/// guest's histogram), and time relative to the first variant.
pub fn side_by_side(variants: &[Vec<RunRecord>]) -> String {
    let mut s = String::new();
    let Some(first) = variants.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "\nside by side (per operation; latency from the guest's histogram; x = time / {})",
        first.first().map_or("first", |r| r.variant.as_str())
    );
    for ra in first.iter().filter(|r| r.partition == 0) {
        let _ = writeln!(
            s,
            "  {:<12} {:<24} {:>10} {:>8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>6}",
            ra.phase,
            "variant",
            "ns/op",
            "exits",
            "doorbells",
            "irqs",
            "worker ns",
            "p50",
            "p99",
            "x"
        );
        let base = ra.ns_per_op();
        for v in variants {
            let Some(r) = v.iter().find(|r| r.partition == 0 && r.phase == ra.phase) else {
                continue;
            };
            let worker = (r.ops > 0).then(|| r.cpu.worker_ns as f64 / r.ops as f64);
            let ratio = match (base, r.ns_per_op()) {
                (Some(x), Some(y)) if x > 0.0 => format!("{:.2}", y / x),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "  {:<12} {:<24} {:>10} {:>8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>6}",
                "",
                r.variant,
                cell(r.ns_per_op(), 0),
                cell(r.exits_per_op("total"), 2),
                cell(metric(r, "kicks"), 2),
                cell(metric(r, "interrupts"), 2),
                cell(worker, 0),
                cell(r.latency.as_ref().map(|l| l.p50), 0),
                cell(r.latency.as_ref().map(|l| l.p99), 0),
                ratio
            );
        }
    }
    s
}
