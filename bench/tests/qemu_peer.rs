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

/// Runs `workload` under the peer label `vmm` with the device variant `device` (a spec label).
fn run_device(vmm: &str, device: &str, workload: &str, args: &[(&str, &str)]) -> Vec<RunRecord> {
    let mut req = request(workload, args);
    req.devices = bench::suite::device_options(device);
    req.timeout = Duration::from_secs(60);
    peer::qemu::run_qemu_as(vmm, &req, &RecordContext::adhoc()).expect("the QEMU peer runs")
}

/// The record of `phase`, which must have run ok.
fn ok_phase<'a>(records: &'a [RunRecord], phase: &str) -> &'a RunRecord {
    let r = records
        .iter()
        .find(|r| r.phase == phase)
        .unwrap_or_else(|| panic!("no {phase} record: {records:#?}"));
    assert_eq!(r.status, RecordStatus::Ok, "{phase}: {:?}", r.notes);
    assert!(r.ops > 0 && r.guest_tsc > 0 && r.tsc_khz > 0, "{r:#?}");
    assert!(r.exits.is_empty(), "exits are not measured under QEMU");
    r
}

fn notes_say(r: &RunRecord, what: &str) -> bool {
    r.notes.iter().any(|n| n.contains(what))
}

/// console-io on QEMU's own consoles: its 16550 on microvm and on pc (with QEMU's loopback
/// for the read-back), and virtconsole on microvm, found from `virtio_mmio.device=`.
#[test]
fn console_io_runs_on_qemus_16550_and_virtconsole() {
    let args = [("bytes", "128"), ("line", "32")];
    let records = run_device("qemu", "emulated", "console-io", &args);
    if let Err(why) = qemu_binary() {
        assert_skipped_missing(&records, &why);
        return;
    }
    for (vmm, machine) in [("qemu", "-M microvm"), ("qemu-pc", "-M pc")] {
        let records = run_device(vmm, "emulated", "console-io", &args);
        let w = ok_phase(&records, "con-write");
        assert_eq!((w.vmm.as_str(), w.ops), (vmm, 4));
        assert!(notes_say(w, machine), "{vmm}: {:?}", w.notes);
        assert!(
            w.latency
                .as_ref()
                .is_some_and(|l| l.count == 4 && l.p50 > 0.0)
        );
        let rb = ok_phase(&records, "con-readback");
        assert_eq!(rb.metrics.get("mismatches"), Some(&0.0), "{vmm}");
    }
    let records = run_device("qemu", "synthetic", "console-io", &args);
    let w = ok_phase(&records, "con-write");
    assert!(notes_say(w, "-M microvm"), "{:?}", w.notes);
    // Found on the command line (so interrupts are acknowledged); every line sent went
    // through the transmit queue, each notification a kick of QEMU's device.
    assert_eq!(w.metrics.get("irq_ack"), Some(&1.0), "{w:#?}");
    assert_eq!(w.metrics.get("bytes"), Some(&128.0), "{w:#?}");
    assert!(w.metrics.get("kicks").is_some_and(|&n| n >= 1.0), "{w:#?}");
    assert_eq!(w.params.get("readback").map(String::as_str), Some("0"));
    assert!(records.iter().all(|r| r.phase != "con-readback"));
    assert!(notes_say(w, "no loopback"), "{:?}", w.notes);
}

/// blk-io on QEMU's own disks: PIIX IDE on pc for ATA PIO, virtio-blk-device on microvm, with
/// every byte verified in blk-verify; variants without a QEMU counterpart say why.
#[test]
fn blk_io_runs_on_qemus_ide_and_virtio_blk() {
    let args = [("count", "4"), ("qd", "2")];
    let records = run_device("qemu", "emulated", "blk-io", &args);
    if let Err(why) = qemu_binary() {
        assert_skipped_missing(&records, &why);
        return;
    }
    let r = ok_phase(&records, "blk-read");
    assert!(notes_say(r, "-M pc"), "{:?}", r.notes);
    assert_eq!(
        r.metrics.get("qd"),
        Some(&1.0),
        "ATA runs one command at a time"
    );
    let v = ok_phase(&records, "blk-verify");
    assert_eq!((v.ops, v.metrics.get("reread")), (4, Some(&0.0)));
    for device in ["synthetic", "synthetic-noevidx"] {
        let records = run_device("qemu", device, "blk-io", &args);
        let r = ok_phase(&records, "blk-read");
        assert!(notes_say(r, "-M microvm"), "{:?}", r.notes);
        assert_eq!(r.metrics.get("qd"), Some(&2.0), "{device}");
        assert_eq!(r.metrics.get("irq_ack"), Some(&1.0), "{device}");
        assert!(
            r.latency
                .as_ref()
                .is_some_and(|l| l.count == 4 && l.p50 > 0.0)
        );
        assert_eq!(ok_phase(&records, "blk-verify").ops, 4, "{device}");
    }
    for (vmm, device, why) in [
        ("qemu", "synthetic-poll", "polling"),
        ("qemu-pc", "synthetic", "PCI"),
    ] {
        let records = run_device(vmm, device, "blk-io", &args);
        assert_eq!(records.len(), 1, "{records:#?}");
        assert!(
            matches!(&records[0].status, RecordStatus::Skipped(s) if s.contains(why)),
            "{vmm} {device}: {records:#?}"
        );
    }
}

/// net-io (`partitions` VMs) under the peer label `vmm` with the device variant `device`.
fn run_net(vmm: &str, device: &str, partitions: u32, args: &[(&str, &str)]) -> Vec<RunRecord> {
    let mut req = request("net-io", args);
    req.devices = bench::suite::device_options(device);
    req.partitions = partitions;
    req.timeout = Duration::from_secs(60);
    peer::qemu::run_qemu_as(vmm, &req, &RecordContext::adhoc()).expect("the QEMU peer runs")
}

/// net-io as two QEMU VMs (client part=0, server part=1) joined by `-netdev dgram`: QEMU's
/// ne2k_isa on pc and virtio-net-device on microvm carry every ping and pong intact (the
/// guests check IP and UDP checksums and the payload pattern of each frame); what QEMU cannot
/// pair is skipped with the reason.
#[test]
fn net_io_pingpong_runs_on_qemus_ne2k_and_virtio_net() {
    let args = [("count", "6"), ("size", "1514")];
    let records = run_net("qemu", "emulated", 2, &args);
    if let Err(why) = qemu_binary() {
        eprintln!("SKIPPED: net-io under QEMU not run: {why}");
        assert_skipped_missing(&records, &why);
        return;
    }
    for (device, machine, nic) in [
        ("emulated", "-M pc", "ne2k_isa"),
        ("synthetic", "-M microvm", "virtio"),
        ("synthetic-noevidx", "-M microvm", "virtio"),
    ] {
        let records = if device == "emulated" {
            records.clone()
        } else {
            run_net("qemu", device, 2, &args)
        };
        let r = ok_phase(&records, "net-pingpong");
        assert_eq!(r.vmm, "qemu", "{device}");
        assert_eq!(r.ops, 12, "{device}: two frames per round trip");
        for m in ["bad", "wrong", "lost", "foreign"] {
            assert_eq!(r.metrics.get(m), Some(&0.0), "{device} {m}: {r:#?}");
        }
        assert!(
            r.latency
                .as_ref()
                .is_some_and(|l| l.count == 6 && l.p50 > 0.0),
            "{device}: {r:#?}"
        );
        assert!(
            notes_say(r, machine) && notes_say(r, nic),
            "{device}: {:?}",
            r.notes
        );
        assert!(notes_say(r, "02:68:76:00:00:02"), "{:?}", r.notes);
        assert!(
            r.metrics.get("interrupts").is_some_and(|&n| n >= 6.0),
            "{device}: each pong interrupts: {r:#?}"
        );
        assert!(r.exits.is_empty(), "exits are not measured under QEMU");
    }
    let mut tap = request("net-io", &[]);
    tap.devices = bench::suite::device_options("synthetic");
    tap.devices.net_tap = true;
    for (records, why) in [
        (run_net("qemu", "emulated", 3, &args), "exactly two VMs"),
        (run_net("qemu", "synthetic-poll", 2, &args), "polling"),
        (run_net("qemu-pc", "synthetic", 2, &args), "PCI"),
        (
            peer::qemu::run_qemu_as("qemu", &tap, &RecordContext::adhoc())
                .expect("the QEMU peer skips"),
            "tap",
        ),
    ] {
        assert_eq!(records.len(), 1, "{records:#?}");
        assert!(
            matches!(&records[0].status, RecordStatus::Skipped(s) if s.contains(why)),
            "{why}: {records:#?}"
        );
    }
}
