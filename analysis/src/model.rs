//! The report's model, read from polars frames: one [`Row`] per (experiment, workload, phase,
//! vmm, vCPUs, partitions, variant) from [`crate::frame::summary`] (medians over all ok records,
//! repetitions x partitions), its baseline and ratio joined in polars, and bootstrap CIs over
//! repetitions fed from [`crate::frame::bootstrap_inputs`]. Every number a table or plot shows
//! is a cell of [`Model::summary`], which is also written as summary.csv/parquet.

use std::collections::BTreeMap;

use hv::record::{Manifest, RunRecord};
use polars::prelude::*;

use crate::AnalysisError;
use crate::frame::{GROUP_KEYS, SUMMARY_KEYS, TLB_SOURCES, bootstrap_inputs, not_ok, summary};
use crate::stats::{Estimate, bootstrap_median, bootstrap_ratio, fnv1a};

/// A row is flagged unstable when the 95% CI of its median ns/op is wider than this fraction
/// of the median ((hi - lo) / median). 10%: a wider interval cannot carry a 5% difference
/// between two runs or variants.
pub const UNSTABLE_CI_WIDTH: f64 = 0.10;

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
    pub fn of(r: &RunRecord) -> Self {
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
    /// Coefficient of variation of the per-repetition medians of ns/op.
    pub cv: Option<f64>,
    /// The median ns/op with a bootstrap 95% CI over repetitions.
    pub ci: Option<Estimate>,
    /// TLB flushes per op by source column (`tlb.*`), only the sources that were measured.
    pub tlb: Vec<(String, f64)>,
    /// Device workloads: the guest's doorbells (`kicks`: virtio notifications or VMBus
    /// signals) and completion interrupts per op, and hv's VMBus signals suppressed per op.
    pub doorbells_per_op: Option<f64>,
    pub guest_irqs_per_op: Option<f64>,
    pub suppressed_per_op: Option<f64>,
    /// The variant this row compares with.
    pub baseline: Option<String>,
}

impl Row {
    /// The CI of the median is wider than [`UNSTABLE_CI_WIDTH`] of it (needs two repetitions).
    pub fn unstable(&self) -> bool {
        self.reps >= 2
            && self
                .ci
                .is_some_and(|e| e.point > 0.0 && (e.hi - e.lo) / e.point > UNSTABLE_CI_WIDTH)
    }

    /// Stable: two or more repetitions and a CI within [`UNSTABLE_CI_WIDTH`].
    pub fn stable(&self) -> bool {
        self.reps >= 2 && self.ci.is_some() && !self.unstable()
    }

    /// Sum of the TLB flush sources that count flushes done for the guest (KVM's flushes and
    /// hv's), per op; `None` where neither was measured.
    pub fn tlb_flushes(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .tlb
            .iter()
            .filter(|(k, _)| k == "tlb.kvm_flush" || k == "tlb.hv_flushes_done")
            .map(|(_, v)| *v)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
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
    /// The summary frame every row was read from: [`crate::frame::summary`] plus `baseline`,
    /// `baseline_ns_per_op`, `time_vs_baseline` (joined in polars) and the bootstrap columns
    /// `time_vs_baseline_lo/hi`, `ns_per_op_lo/hi` and `unstable`.
    pub summary: DataFrame,
}

/// Cell `i` of column `name` as f64 (null, absent or non-numeric: `None`).
pub fn f64_at(df: &DataFrame, name: &str, i: usize) -> Option<f64> {
    let v = df.column(name).ok()?.get(i).ok()?;
    if v.is_null() {
        return None;
    }
    v.extract::<f64>()
}

/// Cell `i` of column `name` as a string ("" when null or absent).
pub fn str_at(df: &DataFrame, name: &str, i: usize) -> String {
    df.column(name)
        .ok()
        .and_then(|c| c.get(i).ok())
        .and_then(|v| v.get_str().map(str::to_string))
        .unwrap_or_default()
}

fn u32_at(df: &DataFrame, name: &str, i: usize) -> u32 {
    f64_at(df, name, i).map_or(0, |v| v as u32)
}

fn key_at(df: &DataFrame, i: usize) -> GroupKey {
    GroupKey {
        experiment: str_at(df, "experiment", i),
        workload: str_at(df, "workload", i),
        phase: str_at(df, "phase", i),
        vmm: str_at(df, "vmm", i),
        vcpus: u32_at(df, "vcpus", i),
        partitions: u32_at(df, "partitions", i),
    }
}

/// A summary row as a [`Row`] (no baseline, CIs or histograms yet).
fn row_at(df: &DataFrame, i: usize) -> Row {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let exits_by_reason: BTreeMap<String, f64> = names
        .iter()
        .filter_map(|n| n.strip_prefix("exits.").map(|k| (n, k)))
        .filter_map(|(n, k)| f64_at(df, n, i).map(|v| (k.to_string(), v)))
        .collect();
    let mut top: Vec<(String, f64)> = exits_by_reason
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(3);
    let f = |n: &str| f64_at(df, n, i);
    let enl = str_at(df, "enlightenments", i);
    Row {
        key: key_at(df, i),
        variant: str_at(df, "variant", i),
        device: str_at(df, "device", i),
        enlightenments: enl
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        reps: f("reps").map_or(0, |v| v as usize),
        records: f("n").map_or(0, |v| v as usize),
        ops: f("ops"),
        ns_per_op: f("ns_per_op"),
        wall_ns_per_op: f("wall_ns_per_op"),
        exits_per_op: f("exits_total_per_op"),
        top_exits: top,
        exits_by_reason,
        irqs_per_op: f("kvm.irq_injections"),
        halts_per_op: f("kvm.halt_exits").or_else(|| f("exits.hlt")),
        vcpu_us_per_op: f("cpu.vcpu_ns_per_op").map(|v| v / 1e3),
        worker_us_per_op: f("cpu.worker_ns_per_op").map(|v| v / 1e3),
        lat_p50: f("latency.p50"),
        lat_p99: f("latency.p99"),
        lat_unit: str_at(df, "latency.unit", i),
        clusters: Vec::new(),
        is_baseline: false,
        vs_baseline: None,
        vs_qemu: None,
        hdrs: Vec::new(),
        cv: f("cv"),
        ci: None,
        tlb: TLB_SOURCES
            .iter()
            .filter_map(|(c, _)| f(c).map(|v| (c.to_string(), v)))
            .collect(),
        doorbells_per_op: f("metrics.kicks"),
        guest_irqs_per_op: f("metrics.interrupts"),
        suppressed_per_op: f(crate::frame::VMBUS_SUPPRESSED),
        baseline: None,
    }
}

/// Per (group, variant), per repetition, the ns/op values of its partitions, read from
/// [`bootstrap_inputs`] (sorted by repetition).
fn clusters_of(df: &DataFrame) -> BTreeMap<(GroupKey, String), Vec<Vec<f64>>> {
    let mut out: BTreeMap<(GroupKey, String), Vec<Vec<f64>>> = BTreeMap::new();
    let mut last: Option<((GroupKey, String), u32)> = None;
    for i in 0..df.height() {
        let k = (key_at(df, i), str_at(df, "variant", i));
        let rep = u32_at(df, "repetition", i);
        let Some(v) = f64_at(df, "ns_per_op", i) else {
            continue;
        };
        let e = out.entry(k.clone()).or_default();
        let here = Some((k, rep));
        if last != here || e.is_empty() {
            e.push(Vec::new());
        }
        if let Some(c) = e.last_mut() {
            c.push(v);
        }
        last = here;
    }
    out
}

fn f64_col(name: &str, v: Vec<Option<f64>>) -> Column {
    Column::new(name.into(), v)
}

impl Model {
    /// Builds the model from the flat frame `df` (one row per record, [`crate::records_frame`]
    /// of `records`); `records` supply the latency histograms, `manifests` the baselines.
    pub fn build(
        df: &DataFrame,
        records: &[RunRecord],
        manifests: &[Manifest],
        resamples: usize,
        seed: u64,
    ) -> Result<Self, AnalysisError> {
        let mut baselines_by_exp = BTreeMap::new();
        for m in manifests {
            for (k, v) in &m.baselines {
                baselines_by_exp
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        let sum = summary(df)?;
        let mut rows: Vec<Row> = (0..sum.height()).map(|i| row_at(&sum, i)).collect();
        // Baselines: the rule is `baseline_for`'s; the ratio of medians is a polars join.
        let mut by_group: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_group.entry(r.key.clone()).or_default().push(i);
        }
        let mut base_of: Vec<Option<String>> = vec![None; rows.len()];
        for (key, idx) in &by_group {
            let refs: Vec<&Row> = idx.iter().map(|&i| &rows[i]).collect();
            for &i in idx {
                base_of[i] =
                    baseline_for(&key.experiment, &refs, &baselines_by_exp, &rows[i].variant)
                        .map(str::to_string);
            }
        }
        let key_cols: Vec<Expr> = SUMMARY_KEYS.iter().map(|k| col(*k)).collect();
        let mut bases = sum.select(SUMMARY_KEYS)?;
        bases.with_column(Column::new("baseline".into(), base_of.clone()))?;
        let bases = bases.lazy();
        let mut base_keys: Vec<Expr> = GROUP_KEYS.iter().map(|k| col(*k)).collect();
        let mut right_keys = base_keys.clone();
        base_keys.push(col("baseline"));
        right_keys.push(col("variant"));
        let base_vals = sum.clone().lazy().select(
            right_keys
                .iter()
                .cloned()
                .chain([col("ns_per_op").alias("baseline_ns_per_op")])
                .collect::<Vec<_>>(),
        );
        let joined = sum
            .clone()
            .lazy()
            .join(
                bases,
                key_cols.clone(),
                key_cols.clone(),
                JoinArgs::new(JoinType::Left),
            )
            .join(
                base_vals,
                base_keys,
                right_keys,
                JoinArgs::new(JoinType::Left),
            )
            .with_column((col("ns_per_op") / col("baseline_ns_per_op")).alias("time_vs_baseline"))
            .sort(
                SUMMARY_KEYS
                    .iter()
                    .map(|k| PlSmallStr::from(*k))
                    .collect::<Vec<_>>(),
                SortMultipleOptions::default(),
            );
        let mut sum = joined.collect()?;
        // The join keeps the summary's order (sorted by the same keys); check rather than
        // assume, since every row below is matched by index.
        for (i, r) in rows.iter().enumerate() {
            if str_at(&sum, "variant", i) != r.variant || key_at(&sum, i) != r.key {
                return Err(AnalysisError::Table(PolarsError::ComputeError(
                    "summary rows changed order in the baseline join".into(),
                )));
            }
        }
        // Bootstrap inputs, from polars.
        let clusters = clusters_of(&bootstrap_inputs(df)?);
        for (i, r) in rows.iter_mut().enumerate() {
            r.clusters = clusters
                .get(&(r.key.clone(), r.variant.clone()))
                .cloned()
                .unwrap_or_default();
            let s = seed ^ fnv1a(&format!("{:?}/{}/median", r.key, r.variant));
            r.ci = bootstrap_median(&r.clusters, resamples, s);
            r.baseline = base_of[i].clone();
        }
        let index: BTreeMap<(GroupKey, String), usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.key.clone(), r.variant.clone()), i))
            .collect();
        let mut ratio_lo = vec![None; rows.len()];
        let mut ratio_hi = vec![None; rows.len()];
        for i in 0..rows.len() {
            let Some(base) = rows[i].baseline.clone() else {
                continue;
            };
            let Some(&b) = index.get(&(rows[i].key.clone(), base.clone())) else {
                continue;
            };
            rows[i].is_baseline = rows[i].variant == base;
            let s = seed ^ fnv1a(&format!("{:?}/{}/{base}", rows[i].key, rows[i].variant));
            let e = bootstrap_ratio(&rows[b].clusters, &rows[i].clusters, resamples, s);
            // The point estimate is polars' ratio of medians; the bootstrap gives the interval.
            let point = f64_at(&sum, "time_vs_baseline", i);
            rows[i].vs_baseline = match (e, point) {
                (Some(e), Some(p)) => Some(Estimate {
                    point: p,
                    lo: e.lo.min(p),
                    hi: e.hi.max(p),
                }),
                _ => None,
            };
            ratio_lo[i] = rows[i].vs_baseline.map(|e| e.lo);
            ratio_hi[i] = rows[i].vs_baseline.map(|e| e.hi);
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
        for r in rows.iter().filter(|r| r.key.vmm == "qemu") {
            qemu.entry(peer_key(&r.key, &r.variant))
                .or_default()
                .extend(r.clusters.iter().cloned());
        }
        let has_qemu = !qemu.is_empty();
        for r in rows.iter_mut().filter(|r| r.key.vmm != "qemu") {
            if let Some(q) = qemu.get(&peer_key(&r.key, &r.variant)) {
                let s = seed ^ fnv1a(&format!("{:?}/{}/qemu", r.key, r.variant));
                r.vs_qemu = bootstrap_ratio(q, &r.clusters, resamples, s);
            }
        }
        // Latency histograms: encoded blobs, kept out of the tables.
        let mut hdrs: BTreeMap<(GroupKey, String), Vec<String>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.status.is_ok()) {
            if let Some(l) = r.latency.as_ref().filter(|l| !l.hdr.is_empty()) {
                hdrs.entry((GroupKey::of(r), r.variant.clone()))
                    .or_default()
                    .push(l.hdr.clone());
            }
        }
        for r in rows.iter_mut() {
            r.hdrs = hdrs
                .remove(&(r.key.clone(), r.variant.clone()))
                .unwrap_or_default();
        }
        sum.with_column(f64_col("time_vs_baseline_lo", ratio_lo))?;
        sum.with_column(f64_col("time_vs_baseline_hi", ratio_hi))?;
        sum.with_column(f64_col(
            "ns_per_op_lo",
            rows.iter().map(|r| r.ci.map(|e| e.lo)).collect(),
        ))?;
        sum.with_column(f64_col(
            "ns_per_op_hi",
            rows.iter().map(|r| r.ci.map(|e| e.hi)).collect(),
        ))?;
        sum.with_column(Column::new(
            "unstable".into(),
            rows.iter().map(Row::unstable).collect::<Vec<bool>>(),
        ))?;
        // Group baselines as the report names them.
        let mut baselines = BTreeMap::new();
        let mut groups: BTreeMap<GroupKey, Vec<Row>> = BTreeMap::new();
        for r in rows {
            groups.entry(r.key.clone()).or_default().push(r);
        }
        for (key, rows) in &groups {
            // The name the report shows: the baseline's name without varying arguments when
            // rows compare with one baseline per argument set.
            let mut names: Vec<&str> = rows.iter().filter_map(|r| r.baseline.as_deref()).collect();
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
        let nk = not_ok(df)?;
        let not_ok = (0..nk.height())
            .map(|i| NotOk {
                experiment: str_at(&nk, "experiment", i),
                workload: str_at(&nk, "workload", i),
                variant: str_at(&nk, "variant", i),
                vmm: str_at(&nk, "vmm", i),
                vcpus: u32_at(&nk, "vcpus", i),
                partitions: u32_at(&nk, "partitions", i),
                kind: str_at(&nk, "status", i),
                reason: str_at(&nk, "status_reason", i),
                records: f64_at(&nk, "records", i).map_or(0, |v| v as usize),
            })
            .collect();
        Ok(Self {
            groups,
            baselines,
            not_ok,
            has_qemu,
            summary: sum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records_frame;
    use crate::testutil::rec;
    use hv::record::RecordStatus;

    fn model(recs: &[RunRecord], resamples: usize) -> Model {
        let df = records_frame(recs).unwrap();
        Model::build(&df, recs, &[], resamples, 1).unwrap()
    }

    fn rows_of(variants: &[(&str, &str, &[&str])]) -> Vec<Row> {
        let recs: Vec<RunRecord> = variants
            .iter()
            .map(|(v, d, e)| {
                let mut r = rec("exp", "w", "p", v, 0, 100.0);
                r.device = d.to_string();
                r.enlightenments = e.iter().map(|s| s.to_string()).collect();
                r
            })
            .collect();
        model(&recs, 0).groups.into_values().flatten().collect()
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
        let m = model(&recs, 500);
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
