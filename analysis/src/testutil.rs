//! Fixtures for tests: records and results directories built in code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use hv::record::{Manifest, RunRecord};

/// An ok record with `ns_per_op` exactly (100 ops, 1 GHz TSC), hv, 1 vCPU, 1 partition.
pub fn rec(
    experiment: &str,
    workload: &str,
    phase: &str,
    variant: &str,
    rep: u32,
    ns: f64,
) -> RunRecord {
    RunRecord {
        schema: hv::record::SCHEMA_VERSION,
        run_id: "run-1".into(),
        experiment: experiment.into(),
        vmm: "hv".into(),
        workload: workload.into(),
        device: "emulated".into(),
        variant: variant.into(),
        vcpus: 1,
        partitions: 1,
        repetition: rep,
        phase: phase.into(),
        ops: 100,
        wall_ns: (ns * 110.0) as u64,
        guest_tsc: (ns * 100.0) as u64,
        tsc_khz: 1_000_000,
        ..Default::default()
    }
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "hvlab-analysis-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A results directory holding `records` (one per line, plus a blank line) and `manifest`.
pub fn results_dir(tag: &str, records: &[RunRecord], manifest: Option<&Manifest>) -> PathBuf {
    let d = temp_dir(tag);
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap());
        text.push('\n');
    }
    text.push('\n');
    std::fs::write(d.join("runs.jsonl"), text).unwrap();
    if let Some(m) = manifest {
        std::fs::write(
            d.join("manifest.json"),
            serde_json::to_string_pretty(m).unwrap(),
        )
        .unwrap();
    }
    d
}
