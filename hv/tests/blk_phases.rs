//! blk-io's measured phase holds the I/O and nothing else: checking the data read (thousands of
//! guest instructions per 4 KiB, each emulated where guest kernel code is) happens in its own
//! `blk-verify` phase. Real guests through /dev/kvm.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use hv::record::{RecordStatus, RunRecord};
use hv::run::RecordContext;

fn run(device: &str, args: &[(&str, &str)]) -> Vec<RunRecord> {
    let kvm = common::kvm();
    let mut req = common::request("blk-io", args);
    req.devices = hv::devices::device_options(device);
    req.tracepoints = false;
    let records = hv::run::run(&kvm, &req, &RecordContext::adhoc())
        .unwrap()
        .records;
    for r in &records {
        assert_eq!(r.status, RecordStatus::Ok, "{}: {:?}", r.phase, r.notes);
    }
    records
}

fn phase<'a>(records: &'a [RunRecord], name: &str) -> &'a RunRecord {
    records
        .iter()
        .find(|r| r.phase == name)
        .unwrap_or_else(|| panic!("no {name}: {records:#?}"))
}

/// KVM's emulated-instruction count per operation of a phase.
fn emulated_per_op(r: &RunRecord) -> Option<f64> {
    let n = *r.kvm_stats.get("insn_emulation")?;
    (r.ops > 0).then(|| n as f64 / r.ops as f64)
}

#[test]
fn verification_is_a_phase_of_its_own_after_the_measured_reads() {
    for device in ["emulated", "synthetic"] {
        let records = run(device, &[("count", "8")]);
        let names: Vec<&str> = records.iter().map(|r| r.phase.as_str()).collect();
        assert_eq!(names, ["blk-prep", "blk-read", "blk-verify"], "{device}");
        let read = phase(&records, "blk-read");
        let verify = phase(&records, "blk-verify");
        // All 8 reads fit in the arena: blk-verify checks what blk-read left, without I/O.
        assert_eq!(verify.ops, 8, "{device}: every block checked");
        assert_eq!(verify.metrics.get("reread"), Some(&0.0), "{device}");
        assert_eq!(
            verify.exits.get("total").copied().unwrap_or(0),
            0,
            "{device}: checking in place does no I/O"
        );
        // Where kernel-mode guest code is emulated, KVM counts every instruction: checking
        // 8 sectors per read is at least 8 x 62 compares, which must now be blk-verify's.
        match (emulated_per_op(read), emulated_per_op(verify)) {
            (Some(r), Some(v)) if v > 0.0 => {
                println!(
                    "{device}: emulated instructions per op: blk-read {r:.0}, blk-verify {v:.0}"
                );
                assert!(
                    v >= 8.0 * 62.0,
                    "{device}: blk-verify {v:.0}/op cannot have checked 4 KiB"
                );
            }
            other => println!(
                "{device}: KVM does not emulate guest kernel code here ({other:?}); the count check does not apply"
            ),
        }
    }
}

#[test]
fn reads_that_do_not_fit_the_arena_are_read_back_to_verify() {
    // 160 x 4 KiB is more than the 512 KiB arena: blk-verify reads every block again.
    let records = run("synthetic", &[("count", "160"), ("qd", "32")]);
    let verify = phase(&records, "blk-verify");
    assert_eq!(
        (verify.ops, verify.metrics.get("reread")),
        (160, Some(&1.0))
    );
    assert_eq!(phase(&records, "blk-read").ops, 160);
}

#[test]
fn write_buffers_are_filled_before_the_measured_phase_when_they_fit() {
    let records = run("synthetic", &[("rw", "write"), ("count", "8")]);
    let names: Vec<&str> = records.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(names, ["blk-write", "blk-verify"]);
    let write = phase(&records, "blk-write");
    assert_eq!(write.metrics.get("filled_in_phase"), Some(&0.0));
    let verify = phase(&records, "blk-verify");
    assert_eq!((verify.ops, verify.metrics.get("reread")), (8, Some(&1.0)));
    // Beyond the arena, buffers are filled as they are sent, and the record says so.
    let records = run(
        "synthetic",
        &[("rw", "write"), ("count", "160"), ("qd", "32")],
    );
    let write = phase(&records, "blk-write");
    assert_eq!(write.metrics.get("filled_in_phase"), Some(&1.0));
    assert_eq!(phase(&records, "blk-verify").ops, 160);
}
