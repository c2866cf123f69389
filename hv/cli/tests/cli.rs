//! The `hv` binary as a user runs it: exit codes, error messages, JSON output.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

fn hv(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_workload_lists_the_valid_ones_and_exits_2() {
    let (code, _, err) = hv(&["run", "no-such-workload"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exit-floor") && err.contains("blk-io"),
        "{err}"
    );
}

#[test]
fn bad_workload_argument_names_the_valid_ones() {
    let (code, _, err) = hv(&["run", "exit-floor", "--", "itres=5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("itres") && err.contains("iters"), "{err}");
    let (code, _, err) = hv(&["run", "exit-floor", "--enlighten", "warp"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tlb-flush-hypercall"),
        "lists valid enlightenments: {err}"
    );
}

#[test]
fn list_shows_every_workload_with_its_arguments() {
    let (code, out, _) = hv(&["list"]);
    assert_eq!(code, 0);
    for w in hvlab_workloads::ALL {
        assert!(out.contains(w.name), "{} missing from:\n{out}", w.name);
    }
    assert!(out.contains("iters="));
}

#[test]
fn run_json_prints_one_parseable_record_per_phase() {
    let (code, out, err) = hv(&[
        "run",
        "exit-floor",
        "--json",
        "--",
        "iters=50",
        "tests=nop,pio-out",
    ]);
    assert_eq!(code, 0, "{err}");
    let recs: Vec<hv::record::RunRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases: Vec<&str> = recs.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, ["nop", "pio-out"]);
    assert_eq!(recs[1].exits["total"], 50);
    assert!(recs.iter().all(|r| r.status.is_ok() && r.vmm == "hv"));
}

#[test]
fn failing_guest_exits_1_with_its_status_and_console_tail() {
    let (code, _, err) = hv(&["run", "misbehave", "--", "how=ud"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("guest exception") && err.contains("name=UD"),
        "{err}"
    );
}

#[test]
fn suite_dry_run_plans_the_default_matrix() {
    let (code, out, err) = hv(&["suite", "--dry-run", "--shard", "1/2"]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" runs"), "{last}");
    assert!(out.lines().count() > 10);
}

#[test]
fn cpus_outside_the_affinity_mask_and_bad_limits_are_refused() {
    let (code, _, err) = hv(&["run", "misbehave", "--cpus", "1023", "--", "how=exit=0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("CPU 1023 not available") && err.contains("may run on CPUs"),
        "{err}"
    );
    let (code, _, err) = hv(&["run", "misbehave", "--partitions", "65"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MAX_PARTITIONS"), "{err}");
    let (code, _, err) = hv(&["run", "misbehave", "--timeout=-1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--timeout"), "{err}");
}
