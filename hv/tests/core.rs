//! Boots real guests through /dev/kvm: exit statuses, isolation between partitions, the
//! exit-floor counts, and every way a guest can misbehave.

mod common;

use std::time::Duration;

use common::{kvm, request};
use hv::partition::{Partition, PartitionConfig};
use hv::record::RecordStatus;
use hv::run::{RecordContext, RunRequest, RunResult};
use hv::vcpu::UnmappedPolicy;
use hv::{HvError, RunStatus};
use hvlab_workloads::mem_pattern::pattern_word;
use vm_memory::{Bytes, GuestAddress};

fn run(req: &RunRequest) -> RunResult {
    hv::run::run(&kvm(), req, &RecordContext::adhoc()).expect("run starts")
}

fn status_of(workload: &str, args: &[(&str, &str)]) -> RunStatus {
    run(&request(workload, args)).partitions[0]
        .outcome
        .status
        .clone()
}

#[test]
fn clean_exit_and_faulting_guest_are_told_apart() {
    assert_eq!(
        status_of("misbehave", &[("how", "exit=0")]),
        RunStatus::GuestExit(0)
    );
    let r = run(&request("misbehave", &[("how", "ud")]));
    let p = &r.partitions[0];
    assert_eq!(
        p.outcome.status,
        RunStatus::GuestExit(hvlab_protocol::status::EXCEPTION)
    );
    assert!(
        p.report
            .fault
            .as_deref()
            .is_some_and(|f| f.contains("name=UD")),
        "{:?}",
        p.report.fault
    );
    assert!(matches!(&r.records[0].status, RecordStatus::Failed(why) if why.contains("UD")));
    assert_eq!(
        status_of("misbehave", &[("how", "pf")]),
        RunStatus::GuestExit(hvlab_protocol::status::EXCEPTION)
    );
    assert_eq!(
        status_of("misbehave", &[("how", "panic")]),
        RunStatus::GuestExit(hvlab_protocol::status::PANIC)
    );
    assert_eq!(
        status_of("misbehave", &[("how", "exit=9")]),
        RunStatus::GuestExit(9)
    );
}

#[test]
fn triple_fault_ends_the_run_with_its_own_status() {
    assert!(matches!(
        status_of("misbehave", &[("how", "triple")]),
        RunStatus::TripleFault { vcpu: 0 }
    ));
}

#[test]
fn two_partitions_each_see_only_their_own_memory() {
    // Both partitions run the same workload at the same guest-physical range with different
    // seeds; afterwards each memory must hold exactly its own pattern.
    let kvm = kvm();
    let base = 0x40_0000u64;
    let size = 16 * 1024u64;
    let mut running = Vec::new();
    for seed in [11u64, 22] {
        let cfg = PartitionConfig {
            index: running.len() as u32,
            cmdline: format!("mem-pattern seed={seed} base={base:#x} size={size}"),
            ..PartitionConfig::default()
        };
        running.push((
            seed,
            Partition::new(&kvm, cfg, hv::GUEST_IMAGE)
                .unwrap()
                .start()
                .unwrap(),
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcomes: Vec<_> = running
        .into_iter()
        .map(|(seed, r)| (seed, r.wait(deadline, Duration::from_secs(30))))
        .collect();
    for (seed, o) in &outcomes {
        assert!(o.status.is_ok(), "seed {seed}: {}", o.status);
        let other = if *seed == 11 { 22 } else { 11 };
        for i in 0..size / 8 {
            let a = base + i * 8;
            let v: u64 = o.memory.read_obj(GuestAddress(a)).unwrap();
            assert_eq!(v, pattern_word(*seed, a), "seed {seed} word at {a:#x}");
            assert_ne!(
                v,
                pattern_word(other, a),
                "seed {seed} holds the other partition's word at {a:#x}"
            );
        }
    }
}

#[test]
fn run_request_with_partitions_keeps_records_apart() {
    let mut req = request("mem-pattern", &[("size", "4096")]);
    req.partitions = 2;
    let r = run(&req);
    assert!(r.ok());
    for part in 0..2 {
        let phases: Vec<_> = r
            .records
            .iter()
            .filter(|x| x.partition == part)
            .map(|x| x.phase.as_str())
            .collect();
        assert_eq!(phases, ["write", "verify"], "partition {part}");
    }
}

#[test]
fn exit_floor_counts_one_userspace_exit_per_trapping_op() {
    let iters = 300u64;
    let r = run(&request("exit-floor", &[("iters", "300")]));
    assert!(r.ok(), "{}", r.partitions[0].outcome.status);
    let by_phase = |name: &str| {
        r.records
            .iter()
            .find(|x| x.phase == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for name in hvlab_workloads::exit_floor::TESTS {
        let rec = by_phase(name);
        assert_eq!(rec.ops, iters, "{name}");
        let total = rec.exits["total"];
        match *name {
            "pio-out" | "pio-in" | "mmio-write" | "mmio-read" => {
                assert_eq!(total, iters, "{name}: userspace exits");
                // Independent sources agree where the host provides them, within the
                // issue's 1.00 +- 0.01 per op (the closing phase marker exits before KVM's
                // counters can be read, and the host may add a stray exit).
                let agree = iters..=iters + iters / 100 + 1;
                if let Some(&kvm_exits) = rec.kvm_stats.get("exits") {
                    let k = kvm_exits as u64;
                    assert!(agree.contains(&k), "{name}: kvm exits {k}");
                }
                if let Some(&ue) = rec.tracepoints.get("kvm_userspace_exit") {
                    assert!(agree.contains(&ue), "{name}: kvm_userspace_exit {ue}");
                }
            }
            _ => assert_eq!(total, 0, "{name}: no userspace exits expected"),
        }
        assert!(rec.guest_tsc > 0, "{name}: guest timed it");
    }
    assert_eq!(
        by_phase("pio-in").metrics["answered"],
        iters as f64,
        "hv answered every read"
    );
    assert_eq!(by_phase("pio-out").exits_by_device["pio:test-port"], iters);
    assert_eq!(
        by_phase("mmio-read").exits_by_device["mmio:test-mmio"],
        iters
    );
}

#[test]
fn spinning_guest_times_out_while_the_other_partition_finishes() {
    let kvm = kvm();
    let spin = PartitionConfig {
        cmdline: "misbehave how=spin-cli".into(),
        ..PartitionConfig::default()
    };
    let good = PartitionConfig {
        index: 1,
        cmdline: "misbehave how=exit=0".into(),
        ..PartitionConfig::default()
    };
    let a = Partition::new(&kvm, spin, hv::GUEST_IMAGE)
        .unwrap()
        .start()
        .unwrap();
    let b = Partition::new(&kvm, good, hv::GUEST_IMAGE)
        .unwrap()
        .start()
        .unwrap();
    let limit = Duration::from_millis(800);
    let deadline = std::time::Instant::now() + limit;
    let ob = b.wait(deadline + Duration::from_secs(20), Duration::from_secs(20));
    let oa = a.wait(deadline, limit);
    assert_eq!(ob.status, RunStatus::GuestExit(0));
    assert_eq!(oa.status, RunStatus::Timeout(limit));
}

#[test]
fn halted_guest_with_interrupts_off_times_out() {
    let mut req = request("misbehave", &[("how", "hlt-cli")]);
    req.timeout = Duration::from_millis(500);
    assert!(matches!(
        run(&req).partitions[0].outcome.status,
        RunStatus::Timeout(_)
    ));
}

#[test]
fn port_flood_is_bounded_by_the_exit_budget_and_noted_once() {
    let mut req = request("misbehave", &[("how", "port-flood")]);
    req.max_exits = Some(500);
    let r = run(&req);
    let o = &r.partitions[0].outcome;
    assert_eq!(o.status, RunStatus::ExitLimit(500));
    let unmapped: Vec<_> = o.notes.iter().filter(|n| n.contains("port 0x80")).collect();
    assert_eq!(unmapped.len(), 1, "one note per address: {:?}", o.notes);
    // The budget counts boot console exits too, so most (not all) 500 went to port 0x80.
    let flood = o.totals.exits_by_device["pio:unmapped"];
    assert!((250..500).contains(&flood), "{flood}");
}

#[test]
fn unmapped_access_can_be_fatal() {
    let mut req = request("misbehave", &[("how", "mmio-flood")]);
    req.unmapped = UnmappedPolicy::Fatal;
    let s = run(&req).partitions[0].outcome.status.clone();
    assert!(
        matches!(&s, RunStatus::UnmappedAccess { what, .. } if what.contains("0xe0000000")),
        "{s}"
    );
}

#[test]
fn bad_images_and_requests_are_clear_errors() {
    let kvm = kvm();
    let e = Partition::new(&kvm, PartitionConfig::default(), b"not an elf").unwrap_err();
    assert!(e.to_string().contains("not an ELF"), "{e}");
    let truncated = &hv::GUEST_IMAGE[..100];
    assert!(matches!(
        Partition::new(&kvm, PartitionConfig::default(), truncated),
        Err(HvError::Image(_))
    ));
    let cfg = PartitionConfig {
        mem_bytes: 1 << 20,
        ..PartitionConfig::default()
    };
    assert!(matches!(
        Partition::new(&kvm, cfg, hv::GUEST_IMAGE),
        Err(HvError::Config(_))
    ));
    let cfg = PartitionConfig {
        vcpus: 0,
        ..PartitionConfig::default()
    };
    assert!(matches!(
        Partition::new(&kvm, cfg, hv::GUEST_IMAGE),
        Err(HvError::Config(_))
    ));
}

#[test]
fn smp_guest_brings_up_every_vcpu() {
    let mut req = request("exit-floor", &[("iters", "10"), ("tests", "nop")]);
    req.vcpus = 4;
    let r = run(&req);
    assert!(r.ok());
    assert_eq!(
        r.partitions[0].report.info.get("cpus").map(String::as_str),
        Some("4")
    );
}

#[test]
fn user_mode_round_trips_come_back_on_every_cpu() {
    // Ring 3 runs natively on nested hosts (CPL0 is emulated): the shootdown's CPL3 reader
    // depends on entering it, reading a user page, and being kicked back by an IPI.
    let mut req = request("user-mode", &[("iters", "3")]);
    req.vcpus = 3;
    let r = run(&req);
    assert!(
        r.ok(),
        "{}\n{}",
        r.partitions[0].outcome.status,
        r.partitions[0].outcome.console
    );
    let rec = r
        .records
        .iter()
        .find(|x| x.phase == "user-round-trip")
        .expect("phase reported");
    assert_eq!(rec.ops, 3);
}
