//! Aggregation for the report: one [`Row`] per (experiment, workload, phase, vmm, vCPUs,
//! partitions, variant) with medians over all ok records (repetitions x partitions), the ratio
//! to the group's baseline and to the QEMU peer, each with a bootstrap CI over repetitions.

use std::collections::{BTreeMap, BTreeSet};

use hv::record::{Manifest, RunRecord};

use crate::frame::{exits_total, host_counted, status_parts, vcpu_ns_per_op};
use crate::stats::{Estimate, bootstrap_ratio, fnv1a, median};

/// A comparison group: rows in one group are variants measured under the same conditions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub experiment: String,
    pub workload: String,
    pub phase: String,
    pub vmm: String,
    pub vcpus: u32,
    pub partitions: u32,
}

impl GroupKey {
    fn of(r: &RunRecord) -> Self {
        Self {
            experiment: r.experiment.clone(),
            workload: r.workload.clone(),
            phase: r.phase.clone(),
            vmm: r.vmm.clone(),
            vcpus: r.vcpus,
            partitions: r.partitions,
        }
    }
}

/// One variant in one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: GroupKey,
    pub variant: String,
    pub device: String,
    pub enlightenments: Vec<String>,
    /// Repetitions and records (repetitions x partitions) that were ok.
    pub reps: usize,
    pub records: usize,
    pub ops: Option<f64>,
    /// Guest-measured ns per op (median), when the TSC frequency was known.
    pub ns_per_op: Option<f64>,
    pub wall_ns_per_op: Option<f64>,
    pub exits_per_op: Option<f64>,
    /// Top exit reasons by median per-op count (non-zero only), largest first.
    pub top_exits: Vec<(String, f64)>,
    /// Per-op medians of every exit reason (for plots).
    pub exits_by_reason: BTreeMap<String, f64>,
    /// Interrupts injected per op (KVM `irq_injections`), when KVM stats were collected.
    pub irqs_per_op: Option<f64>,
    /// Halts per op (KVM `halt_exits`, else hv's `hlt` exits).
    pub halts_per_op: Option<f64>,
    /// Host CPU time per op (medians), in µs: the vCPU threads and the device worker threads.
    pub vcpu_us_per_op: Option<f64>,
    pub worker_us_per_op: Option<f64>,
    pub lat_p50: Option<f64>,
    pub lat_p99: Option<f64>,
    pub lat_unit: String,
    /// Per repetition, the ns/op values of its partitions.
    pub clusters: Vec<Vec<f64>>,
    /// This row is its group's baseline.
    pub is_baseline: bool,
    /// time(variant) / time(baseline).
    pub vs_baseline: Option<Estimate>,
    /// time(hv) / time(qemu) for the same workload, phase, variant, vCPUs and partitions.
    pub vs_qemu: Option<Estimate>,
    /// Encoded latency histograms of its ok records.
    pub hdrs: Vec<String>,
}

/// A skipped or failed variant, with its reason and how many records said so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NotOk {
    pub experiment: String,
    pub workload: String,
    pub variant: String,
    pub vmm: String,
    pub vcpus: u32,
    pub partitions: u32,
    pub kind: String,
    pub reason: String,
    pub records: usize,
}

fn med(rs: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Option<f64> {
    median(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

fn per_op(r: &RunRecord, v: f64) -> Option<f64> {
    (r.ops > 0).then(|| v / r.ops as f64)
}

/// Per repetition, the ns/op values of the ok records.
pub fn clusters(rs: &[&RunRecord]) -> Vec<Vec<f64>> {
    let mut by_rep: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for r in rs {
        if let Some(v) = r.ns_per_op() {
            by_rep.entry(r.repetition).or_default().push(v);
        }
    }
    by_rep.into_values().collect()
}

fn row(key: GroupKey, variant: &str, rs: &[&RunRecord]) -> Row {
    let reasons: BTreeSet<&String> = rs.iter().flat_map(|r| r.exits.keys()).collect();
    let exits_by_reason: BTreeMap<String, f64> = reasons
        .into_iter()
        .filter(|k| k.as_str() != "total")
        .filter_map(|k| {
            med(rs, |r| {
                host_counted(r)
                    .then(|| per_op(r, r.exits.get(k).copied().unwrap_or(0) as f64))
                    .flatten()
            })
            .map(|v| (k.clone(), v))
        })
        .collect();
    let mut top: Vec<(String, f64)> = exits_by_reason
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(3);
    let any_exits = rs.iter().any(|r| !r.exits.is_empty());
    let stat = |name: &'static str| {
        move |r: &RunRecord| r.kvm_stats.get(name).and_then(|&v| per_op(r, v as f64))
    };
    let halts = med(rs, stat("halt_exits")).or_else(|| {
        med(rs, |r| {
            r.exits.get("hlt").and_then(|&v| per_op(r, v as f64))
        })
    });
    let first = rs.first();
    Row {
        key,
        variant: variant.to_string(),
        device: first.map(|r| r.device.clone()).unwrap_or_default(),
        enlightenments: first.map(|r| r.enlightenments.clone()).unwrap_or_default(),
        reps: rs
            .iter()
            .map(|r| r.repetition)
            .collect::<BTreeSet<_>>()
            .len(),
        records: rs.len(),
        ops: med(rs, |r| Some(r.ops as f64)),
        ns_per_op: med(rs, RunRecord::ns_per_op),
        wall_ns_per_op: med(rs, |r| per_op(r, r.wall_ns as f64)),
        exits_per_op: if any_exits {
            med(rs, |r| {
                host_counted(r)
                    .then(|| per_op(r, exits_total(r) as f64))
                    .flatten()
            })
        } else {
            None
        },
        top_exits: top,
        exits_by_reason,
        irqs_per_op: med(rs, stat("irq_injections")),
        halts_per_op: halts,
        vcpu_us_per_op: med(rs, |r| vcpu_ns_per_op(r).map(|ns| ns / 1e3)),
        // 0 is a measurement here: a device without a worker thread.
        worker_us_per_op: med(rs, |r| {
            host_counted(r)
                .then(|| per_op(r, r.cpu.worker_ns as f64 / 1e3))
                .flatten()
        }),
        lat_p50: med(rs, |r| r.latency.as_ref().map(|l| l.p50)),
        lat_p99: med(rs, |r| r.latency.as_ref().map(|l| l.p99)),
        lat_unit: rs
            .iter()
            .find_map(|r| r.latency.as_ref().map(|l| l.unit.clone()))
            .unwrap_or_default(),
        clusters: clusters(rs),
        is_baseline: false,
        vs_baseline: None,
        vs_qemu: None,
        hdrs: rs
            .iter()
            .filter_map(|r| r.latency.as_ref())
            .filter(|l| !l.hdr.is_empty())
            .map(|l| l.hdr.clone())
            .collect(),
    }
}

/// A variant label split into its name and the arguments that vary within its experiment:
/// `"none reader=cpl3"` -> `("none", "reader=cpl3")`.
fn split_variant(label: &str) -> (&str, &str) {
    label.split_once(' ').unwrap_or((label, ""))
}

/// The baseline `variant` compares with, among `rows` (one group), counting only the rows that
/// ran the same varying arguments (a CPL3 reader's row with the CPL3 baseline, not the CPL0 one):
/// `baselines[experiment]` when that variant is there, else the variant named `none`, else the
/// one with device `emulated` and no enlightenments, else the first variant alphabetically.
/// Names compare without the varying arguments a label carries, so a spec's
/// `baseline = "none"` finds `none reader=cpl0`.
pub fn baseline_for<'a>(
    experiment: &str,
    rows: &[&'a Row],
    baselines: &BTreeMap<String, String>,
    variant: &str,
) -> Option<&'a str> {
    let args = split_variant(variant).1;
    let same: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| split_variant(&r.variant).1 == args)
        .collect();
    pick_baseline(experiment, &same, baselines)
}

/// The argument names a label carries: `"none reader=cpl3 qd=1"` -> `"reader, qd"`.
fn varying_keys(label: &str) -> String {
    split_variant(label)
        .1
        .split_whitespace()
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pick_baseline<'a>(
    experiment: &str,
    rows: &[&'a Row],
    baselines: &BTreeMap<String, String>,
) -> Option<&'a str> {
    let named = |v: &str| {
        rows.iter()
            .find(|r| r.variant == v)
            .or_else(|| rows.iter().find(|r| split_variant(&r.variant).0 == v))
            .map(|r| r.variant.as_str())
    };
    if let Some(found) = baselines.get(experiment).and_then(|b| named(b)) {
        return Some(found);
    }
    if let Some(found) = named("none") {
        return Some(found);
    }
    if let Some(r) = rows
        .iter()
        .find(|r| r.device == "emulated" && r.enlightenments.is_empty())
    {
        return Some(r.variant.as_str());
    }
    rows.iter().map(|r| r.variant.as_str()).min()
}

/// Report model.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Rows by group, groups and variants sorted.
    pub groups: BTreeMap<GroupKey, Vec<Row>>,
    pub baselines: BTreeMap<GroupKey, String>,
    pub not_ok: Vec<NotOk>,
    pub has_qemu: bool,
}

impl Model {
    /// Aggregates `records`; `manifests` supply the baselines.
    pub fn build(
        records: &[RunRecord],
        manifests: &[Manifest],
        resamples: usize,
        seed: u64,
    ) -> Self {
        let mut baselines_by_exp = BTreeMap::new();
        for m in manifests {
            for (k, v) in &m.baselines {
                baselines_by_exp
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        let mut cells: BTreeMap<(GroupKey, String), Vec<&RunRecord>> = BTreeMap::new();
        let mut not_ok: BTreeMap<NotOk, usize> = BTreeMap::new();
        for r in records {
            let (kind, reason) = status_parts(&r.status);
            if r.status.is_ok() {
                cells
                    .entry((GroupKey::of(r), r.variant.clone()))
                    .or_default()
                    .push(r);
            } else {
                let k = NotOk {
                    experiment: r.experiment.clone(),
                    workload: r.workload.clone(),
                    variant: r.variant.clone(),
                    vmm: r.vmm.clone(),
                    vcpus: r.vcpus,
                    partitions: r.partitions,
                    kind: kind.to_string(),
                    reason: reason.to_string(),
                    records: 0,
                };
                *not_ok.entry(k).or_default() += 1;
            }
        }
        let mut groups: BTreeMap<GroupKey, Vec<Row>> = BTreeMap::new();
        for ((key, variant), rs) in &cells {
            groups
                .entry(key.clone())
                .or_default()
                .push(row(key.clone(), variant, rs));
        }
        let mut baselines = BTreeMap::new();
        for (key, rows) in groups.iter_mut() {
            // Each row's baseline: the one that ran the same varying arguments.
            let bases: Vec<Option<(String, Vec<Vec<f64>>)>> = {
                let refs: Vec<&Row> = rows.iter().collect();
                rows.iter()
                    .map(|r| {
                        let b =
                            baseline_for(&key.experiment, &refs, &baselines_by_exp, &r.variant)?;
                        let clusters = refs.iter().find(|x| x.variant == b)?.clusters.clone();
                        Some((b.to_string(), clusters))
                    })
                    .collect()
            };
            for (r, base) in rows.iter_mut().zip(&bases) {
                let Some((base, base_clusters)) = base else {
                    continue;
                };
                r.is_baseline = r.variant == *base;
                let s = seed ^ fnv1a(&format!("{key:?}/{}/{base}", r.variant));
                r.vs_baseline = bootstrap_ratio(base_clusters, &r.clusters, resamples, s);
            }
            // The name the report shows: the baseline's name without varying arguments when
            // rows compare with one baseline per argument set.
            let mut names: Vec<&str> = bases.iter().flatten().map(|(b, _)| b.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let shown = match names.as_slice() {
                [] => continue,
                [one] => (*one).to_string(),
                many => {
                    let name = split_variant(many[0]).0;
                    format!("{name} (with the same {})", varying_keys(many[0]))
                }
            };
            baselines.insert(key.clone(), shown);
        }
        // Peer column: hv vs qemu for the same workload, phase, variant, vCPUs, partitions.
        let peer_key = |k: &GroupKey, v: &str| {
            (
                k.workload.clone(),
                k.phase.clone(),
                v.to_string(),
                k.vcpus,
                k.partitions,
            )
        };
        let mut qemu: BTreeMap<_, Vec<Vec<f64>>> = BTreeMap::new();
        for (key, rows) in &groups {
            if key.vmm == "qemu" {
                for r in rows {
                    qemu.entry(peer_key(key, &r.variant))
                        .or_default()
                        .extend(r.clusters.iter().cloned());
                }
            }
        }
        let has_qemu = !qemu.is_empty();
        for (key, rows) in groups.iter_mut() {
            if key.vmm == "qemu" {
                continue;
            }
            for r in rows.iter_mut() {
                if let Some(q) = qemu.get(&peer_key(key, &r.variant)) {
                    let s = seed ^ fnv1a(&format!("{key:?}/{}/qemu", r.variant));
                    r.vs_qemu = bootstrap_ratio(q, &r.clusters, resamples, s);
                }
            }
        }
        let not_ok = not_ok
            .into_iter()
            .map(|(mut k, n)| {
                k.records = n;
                k
            })
            .collect();
        Self {
            groups,
            baselines,
            not_ok,
            has_qemu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rec;
    use hv::record::RecordStatus;

    fn rows_of(variants: &[(&str, &str, &[&str])]) -> Vec<Row> {
        variants
            .iter()
            .map(|(v, d, e)| {
                let mut r = rec("exp", "w", "p", v, 0, 100.0);
                r.device = d.to_string();
                r.enlightenments = e.iter().map(|s| s.to_string()).collect();
                let k = GroupKey::of(&r);
                row(k, v, &[&r])
            })
            .collect()
    }

    fn choose_baseline<'a>(
        experiment: &str,
        rows: &'a [Row],
        baselines: &BTreeMap<String, String>,
    ) -> Option<&'a str> {
        let refs: Vec<&Row> = rows.iter().collect();
        baseline_for(experiment, &refs, baselines, "")
    }

    #[test]
    fn baseline_prefers_manifest_then_none_then_emulated_then_alphabetical() {
        let none = BTreeMap::new();
        let rows = rows_of(&[
            ("syn+all", "synthetic", &["pv-ipi"]),
            ("none", "emulated", &[]),
            ("emu", "emulated", &[]),
        ]);
        let mut m = BTreeMap::new();
        m.insert("exp".to_string(), "syn+all".to_string());
        assert_eq!(choose_baseline("exp", &rows, &m), Some("syn+all"));
        // A manifest baseline that is not in the group falls through to the rules.
        m.insert("exp".to_string(), "absent".to_string());
        assert_eq!(choose_baseline("exp", &rows, &m), Some("none"));
        let rows = rows_of(&[
            ("syn", "synthetic", &[]),
            ("emu+x2apic", "emulated", &["x2apic"]),
            ("emu", "emulated", &[]),
        ]);
        assert_eq!(choose_baseline("exp", &rows, &none), Some("emu"));
        let rows = rows_of(&[
            ("zeta", "synthetic", &[]),
            ("alpha", "synthetic", &["pv-ipi"]),
        ]);
        assert_eq!(choose_baseline("exp", &rows, &none), Some("alpha"));
    }

    #[test]
    fn variants_with_varying_arguments_compare_with_the_baseline_that_ran_them() {
        // A spec's baseline names the variant ("none"); labels carry the arguments that vary
        // within the experiment ("none reader=cpl0"). Each row compares with the baseline that
        // ran the same arguments.
        let mut m = BTreeMap::new();
        m.insert("exp".to_string(), "none".to_string());
        let rows = rows_of(&[
            ("hv-tlbflush reader=cpl0", "none", &["hv-tlbflush"]),
            ("hv-tlbflush reader=cpl3", "none", &["hv-tlbflush"]),
            ("none reader=cpl0", "none", &[]),
            ("none reader=cpl3", "none", &[]),
        ]);
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(
            baseline_for("exp", &refs, &m, "hv-tlbflush reader=cpl3"),
            Some("none reader=cpl3")
        );
        assert_eq!(
            baseline_for("exp", &refs, &m, "none reader=cpl0"),
            Some("none reader=cpl0")
        );
        // Without a manifest baseline the rules apply to the names, per argument set.
        assert_eq!(
            baseline_for("exp", &refs, &BTreeMap::new(), "hv-tlbflush reader=cpl0"),
            Some("none reader=cpl0")
        );
    }

    #[test]
    fn model_medians_ratios_peer_and_skips() {
        let mut recs = Vec::new();
        for (rep, (a, b)) in [(100.0, 40.0), (120.0, 60.0), (110.0, 50.0)]
            .iter()
            .enumerate()
        {
            recs.push(rec("exp", "w", "p", "none", rep as u32, *a));
            let mut r = rec("exp", "w", "p", "pv", rep as u32, *b);
            r.exits.insert("io_out".into(), 300);
            recs.push(r);
            let mut q = rec("exp", "w", "p", "pv", rep as u32, b * 2.0);
            q.vmm = "qemu".into();
            recs.push(q);
        }
        let mut s = rec("exp", "w", "p", "pv-ipi", 0, 0.0);
        s.status = RecordStatus::Skipped("no hypercalls here".into());
        recs.push(s.clone());
        recs.push(s);
        let m = Model::build(&recs, &[], 500, 1);
        assert!(m.has_qemu);
        let key = GroupKey::of(&recs[0]);
        let rows = &m.groups[&key];
        assert_eq!(m.baselines[&key], "none");
        let none = rows.iter().find(|r| r.variant == "none").unwrap();
        let pv = rows.iter().find(|r| r.variant == "pv").unwrap();
        assert_eq!(none.ns_per_op, Some(110.0));
        assert_eq!(pv.ns_per_op, Some(50.0));
        assert_eq!(pv.exits_per_op, Some(3.0));
        assert_eq!(pv.top_exits, vec![("io_out".to_string(), 3.0)]);
        assert_eq!(pv.reps, 3);
        let e = pv.vs_baseline.unwrap();
        assert!((e.point - 50.0 / 110.0).abs() < 1e-12);
        assert!(e.lo <= e.point && e.point <= e.hi);
        let q = pv.vs_qemu.unwrap();
        assert!((q.point - 0.5).abs() < 1e-12, "{q:?}");
        assert!(none.vs_qemu.is_none());
        assert_eq!(m.not_ok.len(), 1);
        assert_eq!(m.not_ok[0].variant, "pv-ipi");
        assert_eq!(m.not_ok[0].reason, "no hypercalls here");
        assert_eq!(m.not_ok[0].records, 2);
    }
}
