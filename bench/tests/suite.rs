//! `hv suite` through real guests: results files, resume after a kill, shards.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../hv/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bench::suite::matrix::Shard;
use bench::suite::spec::Spec;
use bench::suite::{SuiteOptions, run_suite};
use hv::record::{Manifest, RunRecord};

const SPEC: &str = r#"
name = "t"
repetitions = 2
[[experiment]]
name = "ef"
workload = "exit-floor"
args = { iters = 20, tests = "nop,pio-out" }
vmm = ["hv", "qemu"]
[[experiment]]
name = "enl"
workload = "exit-floor"
args = { iters = 5, tests = "nop" }
enlighten = ["pv-ipi", "none"]
repetitions = 1
"#;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hvlab-suite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn records(dir: &Path) -> Vec<RunRecord> {
    std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn suite(dir: &Path, shard: Option<Shard>, resume: bool) -> bench::suite::SuiteSummary {
    let kvm = common::kvm();
    let spec = Spec::parse(SPEC, "t").unwrap();
    let opts = SuiteOptions {
        out_dir: dir.to_path_buf(),
        shard,
        resume,
    };
    let mut m = Manifest {
        run_id: "test".into(),
        ..Manifest::default()
    };
    run_suite(
        &kvm,
        &[spec],
        &opts,
        &mut m,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn suite_records_every_run_and_resumes_after_a_kill() {
    let dir = tmp("resume");
    let s = suite(&dir, None, false);
    assert_eq!(s.runs, 2 * 2 + 2);
    let recs = records(&dir);
    let keys: std::collections::BTreeSet<_> = recs.iter().map(|r| r.run_key.clone()).collect();
    assert_eq!(keys.len(), 6);
    // Every hv run of `ef` has both phases with exact exit counts.
    for r in recs
        .iter()
        .filter(|r| r.vmm == "hv" && r.experiment == "ef")
    {
        let want = if r.phase == "pio-out" { 20 } else { 0 };
        assert_eq!(r.exits["total"], want, "{}", r.run_key);
    }
    // The unsupported enlightenment is skipped with the probe's reason (on hosts without
    // working hypercalls); the plain variant runs.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        let skipped = recs.iter().find(|r| r.variant == "pv-ipi").unwrap();
        assert!(
            matches!(&skipped.status, hv::record::RecordStatus::Skipped(why) if why.contains("pv-ipi"))
        );
    }
    // Simulate a SIGKILL in the middle of writing a run: drop the last run's last line and
    // leave half a line behind.
    let text = std::fs::read_to_string(dir.join("runs.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last_key = records(&dir).last().unwrap().run_key.clone();
    let n_last = recs.iter().filter(|r| r.run_key == last_key).count();
    lines.pop();
    let mut f = std::fs::File::create(dir.join("runs.jsonl")).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    f.write_all(&lines[0].as_bytes()[..30]).unwrap();
    drop(f);
    let s = suite(&dir, None, true);
    assert_eq!(s.already_done, 5);
    assert_eq!(s.runs, 1, "only the cut run is repeated");
    let after = records(&dir);
    assert_eq!(
        after.len(),
        recs.len(),
        "whole lines only, nothing duplicated"
    );
    assert_eq!(
        after.iter().filter(|r| r.run_key == last_key).count(),
        n_last
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_shards_cover_the_matrix_exactly_once() {
    let (a, b) = (tmp("s1"), tmp("s2"));
    suite(&a, Some(Shard { k: 1, n: 2 }), false);
    suite(&b, Some(Shard { k: 2, n: 2 }), false);
    // Per matrix point: which shards ran it, and how many times each (phase, repetition)
    // record was written. A point run twice, or by both shards, shows up here.
    let mut shards: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
    let mut written: BTreeMap<(String, String, u32), usize> = BTreeMap::new();
    for (shard, dir) in [(1, &a), (2, &b)] {
        for r in records(dir) {
            shards.entry(r.run_key.clone()).or_default().insert(shard);
            *written
                .entry((r.run_key, r.phase, r.repetition))
                .or_default() += 1;
        }
    }
    let plan = bench::suite::matrix::plan(&[Spec::parse(SPEC, "t").unwrap()]);
    let planned: std::collections::BTreeSet<_> = plan.iter().map(|p| p.key.clone()).collect();
    assert_eq!(planned.len(), plan.len(), "plan keys are unique");
    let ran: std::collections::BTreeSet<_> = shards.keys().cloned().collect();
    assert_eq!(ran, planned, "the two shards together run exactly the plan");
    for (key, by) in &shards {
        assert_eq!(by.len(), 1, "{key} ran in shards {by:?}");
    }
    for (rec, n) in &written {
        assert_eq!(*n, 1, "record {rec:?} written {n} times");
    }
    // Each shard runs some of the plan, so the split is a real split.
    assert!(shards.values().any(|s| s.contains(&1)) && shards.values().any(|s| s.contains(&2)));
    let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
}

/// Whole-run counters are read after the vCPU and worker threads ended; their CPU time must
/// still be there (it read 0 when the clocks were read after the join).
#[test]
fn whole_run_cpu_time_of_vcpu_and_worker_threads_is_measured() {
    let kvm = common::kvm();
    let mut req = common::request("blk-io", &[("count", "8")]);
    req.devices.variant = hv::devices::DeviceVariant::Synthetic;
    let r = hv::run::run(&kvm, &req, &hv::run::RecordContext::adhoc()).unwrap();
    assert!(r.ok());
    let o = &r.partitions[0].outcome;
    let (vcpu, worker) = (o.totals.cpu.vcpu_ns, o.totals.cpu.worker_ns);
    println!(
        "whole run: wall {} us, vCPU CPU {} us, worker CPU {} us",
        o.wall.as_micros(),
        vcpu / 1000,
        worker / 1000
    );
    assert!(vcpu > 0, "whole-run vCPU CPU time is {vcpu} ns");
    assert!(worker > 0, "whole-run worker CPU time is {worker} ns");
    // The vCPU thread ran the guest for most of the run (it cannot use more than it lived).
    assert!(vcpu <= u64::try_from(o.wall.as_nanos()).unwrap() + 50_000_000);
}
