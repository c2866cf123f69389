//! The flat table: one row per record, everything "per op" already divided out.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use hv::record::{RecordStatus, RunRecord};
use polars::prelude::*;
use polars_io::SerWriter;
use polars_io::csv::write::CsvWriter;
use polars_io::parquet::write::ParquetWriter;

use crate::AnalysisError;

/// Grouping keys of the summary table, in order.
pub const SUMMARY_KEYS: [&str; 7] = [
    "experiment",
    "workload",
    "phase",
    "variant",
    "vmm",
    "vcpus",
    "partitions",
];

/// The keys of a comparison group: rows that share them are variants measured under the same
/// conditions ([`SUMMARY_KEYS`] without `variant`).
pub const GROUP_KEYS: [&str; 6] = [
    "experiment",
    "workload",
    "phase",
    "vmm",
    "vcpus",
    "partitions",
];

/// TLB flushes per op by source: `(column, label)`. Each column is null where its source was
/// not measured (no KVM stats, no tracepoints, a workload that does not report INVLPGs).
pub const TLB_SOURCES: [(&str, &str); 8] = [
    // The guest's own count of INVLPGs it executed (tlb-shootdown reports them).
    ("tlb.guest_invlpg", "guest INVLPG"),
    // KVM's `invlpg` statistic: INVLPGs KVM intercepted or emulated (every workload).
    ("tlb.kvm_invlpg", "INVLPG in KVM"),
    // `kvm:kvm_cr` tracepoint: control-register accesses that reached KVM (CR3 writes among
    // them); it does not tell CR3 from other CRs.
    ("tlb.cr_access", "CR accesses"),
    // KVM's `tlb_flush` statistic: flushes KVM did for a vCPU (local or requested).
    ("tlb.kvm_flush", "KVM tlb_flush"),
    ("tlb.remote_flush", "remote_tlb_flush"),
    ("tlb.remote_flush_requests", "remote flush requests"),
    // `kvm:kvm_pv_tlb_flush`: KVM checked a vCPU's PV flush flag (pv-tlb-flush).
    ("tlb.pv_flush", "PV flush checks"),
    // hv's Hyper-V flush hypercall: vCPUs flushed on the guest's request.
    ("tlb.hv_flushes_done", "hv flushes done"),
];

/// The count of TLB flush source `column` in `r`, `None` when not measured.
fn tlb_count(r: &RunRecord, column: &str) -> Option<f64> {
    let kvm = |k: &str| r.kvm_stats.get(k).map(|&v| v as f64);
    let tp = |k: &str| r.tracepoints.get(k).map(|&v| v as f64);
    match column {
        "tlb.guest_invlpg" => {
            let l = r.metrics.get("invlpg_local");
            let rm = r.metrics.get("invlpg_remote");
            (l.is_some() || rm.is_some())
                .then(|| l.copied().unwrap_or(0.0) + rm.copied().unwrap_or(0.0))
        }
        "tlb.kvm_invlpg" => kvm("invlpg"),
        "tlb.cr_access" => tp("kvm_cr"),
        "tlb.kvm_flush" => kvm("tlb_flush"),
        "tlb.remote_flush" => kvm("vm.remote_tlb_flush"),
        "tlb.remote_flush_requests" => kvm("vm.remote_tlb_flush_requests"),
        "tlb.pv_flush" => tp("kvm_pv_tlb_flush"),
        "tlb.hv_flushes_done" => r
            .exits_by_device
            .get("hv-enl:tlb_flushes_done")
            .map(|&v| v as f64),
        _ => None,
    }
}

/// Column of hv's VMBus signals suppressed per op (the ring protocol found the guest still
/// draining or masked), from `hv-enl:vmbus_signals_suppressed`.
pub const VMBUS_SUPPRESSED: &str = "vmbus.signals_suppressed";

/// `(kind, reason)` of a status.
pub fn status_parts(s: &RecordStatus) -> (&'static str, &str) {
    match s {
        RecordStatus::Ok => ("ok", ""),
        RecordStatus::Skipped(r) => ("skipped", r),
        RecordStatus::Failed(r) => ("failed", r),
    }
}

fn per_op(r: &RunRecord, v: f64) -> Option<f64> {
    (r.ops > 0).then(|| v / r.ops as f64)
}

/// Total exits of a record: `exits["total"]` when hv wrote it, else the sum of the reasons.
pub fn exits_total(r: &RunRecord) -> u64 {
    r.exits
        .get("total")
        .copied()
        .unwrap_or_else(|| r.exits.values().sum())
}

/// Whether hv's counters (exits, KVM stats, host CPU time) were read for this record. hv's
/// meter writes the exit map (at least `total`) for every phase it saw; it is empty where
/// nothing was measured (QEMU peer rows, a phase without markers). Not measured is null in the
/// frame and "not measured" in tables, never 0.
pub fn host_counted(r: &RunRecord) -> bool {
    !r.exits.is_empty()
}

/// `v` per op where hv's counters were read, else null.
fn counted_per_op(r: &RunRecord, v: f64) -> Option<f64> {
    host_counted(r).then(|| per_op(r, v)).flatten()
}

/// vCPU CPU time per op: a vCPU that ran a phase used CPU, so 0 means its clock was not read
/// (QEMU rows; files from before whole-run CPU time was fixed): null.
pub fn vcpu_ns_per_op(r: &RunRecord) -> Option<f64> {
    (r.cpu.vcpu_ns > 0)
        .then(|| counted_per_op(r, r.cpu.vcpu_ns as f64))
        .flatten()
}

/// Builds the flat table from records: identity columns, status, raw counts, `ns_per_op`
/// (guest TSC -> ns, null when the TSC frequency is unknown), and per-op columns
/// `exits.<reason>`, `kvm.<stat>`, `tp.<tracepoint>`, `metrics.<k>`, CPU time and latency.
pub fn records_frame(records: &[RunRecord]) -> Result<DataFrame, AnalysisError> {
    let s = |name: &str, f: &dyn Fn(&RunRecord) -> String| {
        Column::new(name.into(), records.iter().map(f).collect::<Vec<String>>())
    };
    let u = |name: &str, f: &dyn Fn(&RunRecord) -> u64| {
        Column::new(name.into(), records.iter().map(f).collect::<Vec<u64>>())
    };
    let o = |name: &str, f: &dyn Fn(&RunRecord) -> Option<f64>| {
        Column::new(
            name.into(),
            records.iter().map(f).collect::<Vec<Option<f64>>>(),
        )
    };
    let mut cols = vec![
        s("run_id", &|r| r.run_id.clone()),
        s("experiment", &|r| r.experiment.clone()),
        s("workload", &|r| r.workload.clone()),
        s("phase", &|r| r.phase.clone()),
        s("variant", &|r| r.variant.clone()),
        s("device", &|r| r.device.clone()),
        s("enlightenments", &|r| r.enlightenments.join(",")),
        s("vmm", &|r| r.vmm.clone()),
        u("vcpus", &|r| u64::from(r.vcpus)),
        u("partitions", &|r| u64::from(r.partitions)),
        u("partition", &|r| u64::from(r.partition)),
        u("repetition", &|r| u64::from(r.repetition)),
        s("status", &|r| status_parts(&r.status).0.to_string()),
        s("status_reason", &|r| status_parts(&r.status).1.to_string()),
        s("kvm_flavour", &|r| r.host.kvm_flavour.clone()),
        u("ops", &|r| r.ops),
        u("wall_ns", &|r| r.wall_ns),
        u("guest_tsc", &|r| r.guest_tsc),
        u("tsc_khz", &|r| r.tsc_khz),
        o("ns_per_op", &|r| r.ns_per_op()),
        o("wall_ns_per_op", &|r| per_op(r, r.wall_ns as f64)),
        o("exits_total_per_op", &|r| {
            counted_per_op(r, exits_total(r) as f64)
        }),
        o("cpu.vcpu_ns_per_op", &vcpu_ns_per_op),
        o(VMBUS_SUPPRESSED, &|r| {
            r.exits_by_device
                .get("hv-enl:vmbus_signals_suppressed")
                .and_then(|&v| per_op(r, v as f64))
        }),
        o("cpu.worker_ns_per_op", &|r| {
            counted_per_op(r, r.cpu.worker_ns as f64)
        }),
        o("latency.p50", &|r| r.latency.as_ref().map(|l| l.p50)),
        o("latency.p99", &|r| r.latency.as_ref().map(|l| l.p99)),
        Column::new(
            "latency.unit".into(),
            records
                .iter()
                .map(|r| r.latency.as_ref().map(|l| l.unit.clone()))
                .collect::<Vec<Option<String>>>(),
        ),
    ];
    for (name, _) in TLB_SOURCES {
        if records.iter().any(|r| tlb_count(r, name).is_some()) {
            cols.push(o(name, &|r| tlb_count(r, name).and_then(|v| per_op(r, v))));
        }
    }
    let keys = |f: &dyn Fn(&RunRecord) -> Vec<String>| {
        records.iter().flat_map(f).collect::<BTreeSet<String>>()
    };
    for k in keys(&|r| r.exits.keys().cloned().collect()) {
        if k != "total" {
            cols.push(o(&format!("exits.{k}"), &|r| {
                counted_per_op(r, r.exits.get(&k).copied().unwrap_or(0) as f64)
            }));
        }
    }
    for k in keys(&|r| r.kvm_stats.keys().cloned().collect()) {
        cols.push(o(&format!("kvm.{k}"), &|r| {
            r.kvm_stats.get(&k).and_then(|&v| per_op(r, v as f64))
        }));
    }
    for k in keys(&|r| r.tracepoints.keys().cloned().collect()) {
        cols.push(o(&format!("tp.{k}"), &|r| {
            r.tracepoints.get(&k).and_then(|&v| per_op(r, v as f64))
        }));
    }
    for k in keys(&|r| r.metrics.keys().cloned().collect()) {
        cols.push(o(&format!("metrics.{k}"), &|r| {
            r.metrics.get(&k).and_then(|&v| per_op(r, v))
        }));
    }
    Ok(DataFrame::new(records.len(), cols)?)
}

fn ok_rows(df: &DataFrame) -> LazyFrame {
    df.clone().lazy().filter(col("status").eq(lit("ok")))
}

fn exprs(keys: &[&str]) -> Vec<Expr> {
    keys.iter().map(|k| col(*k)).collect()
}

fn names(keys: &[&str]) -> Vec<PlSmallStr> {
    keys.iter().map(|k| PlSmallStr::from(*k)).collect()
}

/// The report's summary: one row per [`SUMMARY_KEYS`] over the ok records, with `n` (records),
/// `reps` (distinct repetitions), `device`, `enlightenments`, `latency.unit`, the median of
/// every per-op column, and `cv`: the coefficient of variation (sample standard deviation /
/// mean) of the per-repetition medians of `ns_per_op` (null with fewer than two repetitions).
pub fn summary(df: &DataFrame) -> Result<DataFrame, AnalysisError> {
    let mut aggs = vec![
        col("repetition")
            .n_unique()
            .cast(DataType::UInt64)
            .alias("reps"),
        col("device").first(),
        col("enlightenments").first(),
        col("latency.unit").drop_nulls().first(),
    ];
    aggs.extend(median_aggs(df, &SUMMARY_KEYS));
    let mut rep_keys = SUMMARY_KEYS.to_vec();
    rep_keys.push("repetition");
    let per_rep = ok_rows(df)
        .group_by(exprs(&rep_keys))
        .agg([col("ns_per_op").median().alias("rep_ns_per_op")])
        .group_by(exprs(&SUMMARY_KEYS))
        .agg([(col("rep_ns_per_op").std(1) / col("rep_ns_per_op").mean()).alias("cv")]);
    Ok(ok_rows(df)
        .group_by(exprs(&SUMMARY_KEYS))
        .agg(aggs)
        .join(
            per_rep,
            exprs(&SUMMARY_KEYS),
            exprs(&SUMMARY_KEYS),
            JoinArgs::new(JoinType::Left),
        )
        .sort(names(&SUMMARY_KEYS), SortMultipleOptions::default())
        .collect()?)
}

/// The bootstrap's input: `ns_per_op` of every ok record that has one, with its
/// [`SUMMARY_KEYS`], repetition and partition, sorted by them.
pub fn bootstrap_inputs(df: &DataFrame) -> Result<DataFrame, AnalysisError> {
    let mut cols = SUMMARY_KEYS.to_vec();
    cols.extend(["repetition", "partition", "ns_per_op"]);
    let mut sort = SUMMARY_KEYS.to_vec();
    sort.extend(["repetition", "partition"]);
    Ok(ok_rows(df)
        .filter(col("ns_per_op").is_not_null())
        .select(exprs(&cols))
        .sort(names(&sort), SortMultipleOptions::default())
        .collect()?)
}

/// Records that were not ok, counted per experiment, workload, variant, vmm, vCPUs,
/// partitions, status and reason.
pub fn not_ok(df: &DataFrame) -> Result<DataFrame, AnalysisError> {
    let keys = [
        "experiment",
        "workload",
        "variant",
        "vmm",
        "vcpus",
        "partitions",
        "status",
        "status_reason",
    ];
    Ok(df
        .clone()
        .lazy()
        .filter(col("status").neq(lit("ok")))
        .group_by(exprs(&keys))
        .agg([len().cast(DataType::UInt64).alias("records")])
        .sort(names(&keys), SortMultipleOptions::default())
        .collect()?)
}

/// `n` (records) and the median of `ops` and of every Float64 column that is not a key.
fn median_aggs(df: &DataFrame, keys: &[&str]) -> Vec<Expr> {
    let key_set: BTreeSet<&str> = keys.iter().copied().collect();
    let mut aggs = vec![
        len().cast(DataType::UInt64).alias("n"),
        col("ops").median().alias("ops"),
    ];
    for c in df.get_column_names() {
        let name = c.as_str();
        if key_set.contains(name) {
            continue;
        }
        if matches!(
            df.column(name).map(|c| c.dtype().clone()),
            Ok(DataType::Float64)
        ) {
            aggs.push(col(name).median());
        }
    }
    aggs
}

/// Medians of every per-op column over the ok rows, grouped by `keys`, with a row count `n`.
pub fn medians(df: &DataFrame, keys: &[&str]) -> Result<DataFrame, AnalysisError> {
    let aggs = median_aggs(df, keys);
    let key_exprs: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    let sort_keys: Vec<PlSmallStr> = keys.iter().map(|k| PlSmallStr::from(*k)).collect();
    Ok(df
        .clone()
        .lazy()
        .filter(col("status").eq(lit("ok")))
        .group_by(key_exprs)
        .agg(aggs)
        .sort(sort_keys, SortMultipleOptions::default())
        .collect()?)
}

/// Writes `df` as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), AnalysisError> {
    let f = create(path)?;
    ParquetWriter::new(f).finish(df)?;
    Ok(())
}

/// Writes `df` as CSV with a header.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), AnalysisError> {
    let mut f = create(path)?;
    CsvWriter::new(&mut f).include_header(true).finish(df)?;
    Ok(())
}

fn create(path: &Path) -> Result<File, AnalysisError> {
    File::create(path).map_err(|source| AnalysisError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rec;

    #[test]
    fn frame_flattens_per_op_columns() {
        let mut r = rec("exp", "w", "p", "none", 0, 1000.0);
        r.exits.insert("io_out".into(), 200);
        r.exits.insert("hlt".into(), 100);
        r.kvm_stats.insert("halt_exits".into(), 50);
        r.enlightenments = vec!["kvm-clock".into(), "pv-eoi".into()];
        let df = records_frame(&[r]).unwrap();
        assert_eq!(df.height(), 1);
        let f = |c: &str| df.column(c).unwrap().f64().unwrap().get(0);
        assert_eq!(f("ns_per_op"), Some(1000.0));
        assert_eq!(f("exits.io_out"), Some(2.0));
        assert_eq!(f("exits.hlt"), Some(1.0));
        assert_eq!(f("exits_total_per_op"), Some(3.0));
        assert_eq!(f("kvm.halt_exits"), Some(0.5));
        let e = df.column("enlightenments").unwrap();
        assert_eq!(e.str().unwrap().get(0), Some("kvm-clock,pv-eoi"));
    }

    #[test]
    fn tlb_flushes_per_op_by_source_and_null_where_not_measured() {
        let mut r = rec(
            "tlb",
            "tlb-shootdown",
            "shootdown",
            "hv-tlbflush",
            0,
            1000.0,
        );
        r.metrics.insert("invlpg_local".into(), 100.0);
        r.metrics.insert("invlpg_remote".into(), 300.0);
        r.kvm_stats.insert("invlpg".into(), 400);
        r.kvm_stats.insert("tlb_flush".into(), 700);
        r.kvm_stats.insert("vm.remote_tlb_flush".into(), 0);
        r.kvm_stats
            .insert("vm.remote_tlb_flush_requests".into(), 200);
        r.tracepoints.insert("kvm_cr".into(), 50);
        r.tracepoints.insert("kvm_pv_tlb_flush".into(), 1300);
        r.exits_by_device
            .insert("hv-enl:tlb_flushes_done".into(), 300);
        // A QEMU row: nothing measured.
        let mut q = rec("tlb", "tlb-shootdown", "shootdown", "none", 0, 1000.0);
        q.vmm = "qemu".into();
        let df = records_frame(&[r, q]).unwrap();
        let f = |c: &str, i: usize| df.column(c).unwrap().f64().unwrap().get(i);
        for (col, per_op) in [
            ("tlb.guest_invlpg", 4.0),
            ("tlb.kvm_invlpg", 4.0),
            ("tlb.cr_access", 0.5),
            ("tlb.kvm_flush", 7.0),
            ("tlb.remote_flush", 0.0),
            ("tlb.remote_flush_requests", 2.0),
            ("tlb.pv_flush", 13.0),
            ("tlb.hv_flushes_done", 3.0),
        ] {
            assert_eq!(f(col, 0), Some(per_op), "{col}");
            assert_eq!(f(col, 1), None, "{col} of the QEMU row");
        }
    }

    #[test]
    fn medians_group_ok_rows_only() {
        let mut recs = vec![
            rec("exp", "w", "p", "none", 0, 100.0),
            rec("exp", "w", "p", "none", 1, 300.0),
            rec("exp", "w", "p", "none", 2, 200.0),
        ];
        let mut bad = rec("exp", "w", "p", "none", 3, 1e9);
        bad.status = RecordStatus::Failed("boom".into());
        recs.push(bad);
        let df = records_frame(&recs).unwrap();
        let m = medians(&df, &SUMMARY_KEYS).unwrap();
        assert_eq!(m.height(), 1);
        assert_eq!(
            m.column("ns_per_op").unwrap().f64().unwrap().get(0),
            Some(200.0)
        );
        assert_eq!(m.column("n").unwrap().u64().unwrap().get(0), Some(3));
    }
}
