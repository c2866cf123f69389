//! The QEMU peer column: the same guest image under `qemu-system-x86_64 -accel kvm`, the same
//! run records with `vmm = "qemu"`. With QEMU installed the guest really runs; without it every
//! run is one skipped record with the reason. The missing-QEMU branch is also exercised on hosts
//! that have QEMU, by re-running one test of this binary with a `PATH` that lacks it.

#[path = "../../hv/tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bench::peer::{self, qemu_binary, run_qemu};
use common::request;
use hv::record::{RecordStatus, RunRecord};
use hv::run::{RecordContext, RunRequest};

fn run(req: &RunRequest) -> Vec<RunRecord> {
    run_qemu(req, &RecordContext::adhoc()).expect("the QEMU peer runs or skips")
}

/// Asserts the one skipped `run` record a host without QEMU gets.
fn assert_skipped_missing(records: &[RunRecord], why: &str) {
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!((r.vmm.as_str(), r.phase.as_str()), ("qemu", "run"));
    assert_eq!(r.status, RecordStatus::Skipped(why.to_string()));
    assert!(why.contains("qemu-system-x86_64"), "{why}");
    assert_eq!(
        (r.ops, r.guest_tsc, r.wall_ns),
        (0, 0, 0),
        "no made-up numbers"
    );
}

#[test]
fn exit_floor_under_qemu_reports_every_micro_test() {
    let req = request("exit-floor", &[("iters", "300")]);
    let records = run(&req);
    let Err(why) = qemu_binary() else {
        let names: Vec<&str> = records.iter().map(|r| r.phase.as_str()).collect();
        for test in hvlab_workloads::exit_floor::TESTS {
            let r = records
                .iter()
                .find(|r| r.phase == *test)
                .unwrap_or_else(|| panic!("no record for {test}: {names:?}"));
            assert_eq!(r.vmm, "qemu");
            assert_eq!(r.status, RecordStatus::Ok, "{test}: {:?}", r.notes);
            assert_eq!(r.ops, 300, "{test}");
            assert!(r.guest_tsc > 0, "{test}");
            assert!(r.exits.is_empty() && r.kvm_stats.is_empty(), "{test}");
            assert_eq!(r.params["iters"], "300");
        }
        // hv-only devices are unassigned under QEMU: the guest sees all ones and says so.
        for test in ["pio-in", "mmio-read"] {
            let r = records.iter().find(|r| r.phase == test).expect("record");
            assert_eq!(r.metrics.get("answered"), Some(&0.0), "{test}");
        }
        assert!(records.iter().all(|r| r.tsc_khz > 0), "tsc_khz probed");
        return;
    };
    assert_skipped_missing(&records, &why);
}

#[test]
fn faulting_guest_under_qemu_is_a_failed_run() {
    let records = run(&request("misbehave", &[("how", "ud")]));
    let Err(why) = qemu_binary() else {
        assert_eq!(records.len(), 1, "{records:#?}");
        match &records[0].status {
            RecordStatus::Failed(s) => {
                assert!(s.contains("status 3"), "{s}");
                assert!(s.contains("UD"), "fault line kept: {s}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
        return;
    };
    assert_skipped_missing(&records, &why);
}

#[test]
fn guest_exit_status_comes_through_qemus_exit_code() {
    let records = run(&request("misbehave", &[("how", "exit=5")]));
    let Err(why) = qemu_binary() else {
        assert!(
            matches!(&records[0].status, RecordStatus::Failed(s) if s.contains("status 5")),
            "{records:#?}"
        );
        return;
    };
    assert_skipped_missing(&records, &why);
}

#[test]
fn timeout_kills_qemu() {
    let mut req = request("misbehave", &[("how", "spin-cli")]);
    req.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let records = run(&req);
    let Err(why) = qemu_binary() else {
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        let r = &records[0];
        assert!(
            matches!(&r.status, RecordStatus::Failed(s) if s.contains("timed out")),
            "{r:#?}"
        );
        let pid = r
            .notes
            .iter()
            .find_map(|n| {
                n.strip_prefix("QEMU pid ")?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .expect("the note names the killed pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "QEMU {pid} is gone (killed and reaped)"
        );
        return;
    };
    assert_skipped_missing(&records, &why);
}

#[test]
fn requests_qemu_cannot_run_are_skipped_with_the_reason() {
    let mut req = request("exit-floor", &[]);
    req.partitions = 2;
    let records = run(&req);
    assert_eq!(records.len(), 1);
    assert!(
        matches!(&records[0].status, RecordStatus::Skipped(s) if s.contains("partitions")),
        "{records:#?}"
    );
    assert!(run_qemu(&request("no-such-workload", &[]), &RecordContext::adhoc()).is_err());
}

/// Run by [`missing_qemu_gives_one_skipped_record`] in a child process whose `PATH` has no
/// QEMU; ignored in normal runs.
#[test]
#[ignore = "run by missing_qemu_gives_one_skipped_record with PATH emptied"]
fn child_without_qemu() {
    let why = qemu_binary().expect_err("PATH has no QEMU in this child");
    assert!(why.contains("apt-get install qemu-system-x86"), "{why}");
    assert_skipped_missing(&run(&request("exit-floor", &[])), &why);
}

#[test]
fn missing_qemu_gives_one_skipped_record() {
    let me = std::env::current_exe().expect("test binary path");
    let out = Command::new(me)
        .args([
            "--exact",
            "child_without_qemu",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PATH", "/nonexistent-hvlab")
        .env_remove(peer::qemu::QEMU_ENV)
        .output()
        .expect("re-run the test binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}
