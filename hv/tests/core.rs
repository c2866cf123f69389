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

/// hv's peak resident memory so far (VmHWM), bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn note_flood_guest_leaves_bounded_notes_and_records() {
    // The guest reads every port once (65,536 unmapped-port notes before the fix), ends
    // `count` phases it never began, reports `count` one-op phases and `count` skip lines.
    let count = 300;
    let mut req = request(
        "misbehave",
        &[("how", "note-flood"), ("count", &count.to_string())],
    );
    req.timeout = Duration::from_secs(120);
    let r = run(&req);
    let o = &r.partitions[0].outcome;
    assert!(o.status.is_ok(), "{}", o.status);
    let cap = hv::limits::MAX_NOTES + hv::limits::MAX_DEVICE_NOTES + 1;
    assert!(o.notes.len() <= cap, "{} notes", o.notes.len());
    assert!(
        o.notes
            .last()
            .is_some_and(|n| n.contains("more notes suppressed")),
        "{:?}",
        o.notes.last()
    );
    assert_eq!(r.partitions[0].report.phases.len(), count);
    assert_eq!(r.partitions[0].report.skips.len(), hv::limits::MAX_SKIPS);
    assert_eq!(r.records.len(), count + hv::limits::MAX_SKIPS);
    for rec in &r.records {
        // The partition's notes, plus at most a few of the run's own (dropped lines).
        assert!(rec.notes.len() <= cap + 3, "{} notes", rec.notes.len());
    }
    assert!(
        r.records[0]
            .notes
            .iter()
            .any(|n| n.contains("result lines dropped")),
        "skips past the cap are reported"
    );
    let peak = peak_rss().expect("VmHWM in /proc/self/status");
    eprintln!("note-flood count={count}: peak RSS {} MiB", peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
}

/// The thread id of the thread named `name` in this process.
fn tid_of(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

#[test]
fn max_exits_counts_exits_not_signals() {
    // A flood of exits, while another thread keeps signalling the vCPU thread (each signal
    // makes KVM_RUN return EINTR, which is not an exit).
    let cfg = PartitionConfig {
        index: 50,
        cmdline: "misbehave how=port-flood".into(),
        max_exits: Some(3000),
        ..PartitionConfig::default()
    };
    let p = Partition::new(&kvm(), cfg, hv::GUEST_IMAGE)
        .unwrap()
        .start()
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let signaller = std::thread::spawn(move || {
        let mut sent = 0u32;
        while !d.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(tid) = tid_of("p50-vcpu0") {
                // SAFETY: tgkill with this process's pid; the kick signal has hv's handler.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGRTMIN() + 1)
                };
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    let o = p.wait(
        std::time::Instant::now() + Duration::from_secs(30),
        Duration::from_secs(30),
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = signaller.join().unwrap();
    assert_eq!(o.status, RunStatus::ExitLimit(3000));
    let intr = o.totals.exits.get("intr").copied().unwrap_or(0);
    let total = o.totals.exits["total"];
    assert!(intr > 0, "no signal interrupted KVM_RUN ({sent} sent)");
    assert_eq!(total - intr, 3000, "{intr} EINTR returns, {sent} signals");
}

fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usize::MAX;
    };
    tasks
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

#[test]
fn failed_start_stops_the_partitions_already_running() {
    // Partitions 60 and 61 spin forever; 62 fails to start (its vCPU cannot be pinned to a
    // CPU that does not exist). The run's start must stop and wait for 60 and 61.
    let kvm = kvm();
    let built: Vec<Partition> = (60..63)
        .map(|index| {
            let cfg = PartitionConfig {
                index,
                cmdline: "misbehave how=spin-cli".into(),
                pin: (index == 62).then(|| vec![libc::CPU_SETSIZE as usize + 5]),
                ..PartitionConfig::default()
            };
            Partition::new(&kvm, cfg, hv::GUEST_IMAGE).unwrap()
        })
        .collect();
    let e = hv::run::start_all(built).unwrap_err();
    assert!(e.to_string().contains("pinning"), "{e}");
    for name in ["p60-vcpu", "p61-vcpu", "p62-vcpu"] {
        assert_eq!(threads_named(name), 0, "{name} threads still running");
    }
}

/// A device whose writes never return: it waits on a channel nobody sends on.
struct Stuck(std::sync::mpsc::Receiver<()>);

impl hv::bus::BusDevice for Stuck {
    fn write(&mut self, _offset: u64, _data: &[u8]) -> hv::bus::DeviceAction {
        let _ = self.0.recv();
        hv::bus::DeviceAction::None
    }
}

#[test]
fn stuck_device_cannot_keep_the_run_from_ending() {
    let kvm = kvm();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Never sends and never drops (a drop would wake the device).
    std::mem::forget(tx);
    let stuck_cfg = PartitionConfig {
        index: 70,
        cmdline: "misbehave how=out=0x7f0".into(),
        ..PartitionConfig::default()
    };
    let mut a = Partition::new(&kvm, stuck_cfg, hv::GUEST_IMAGE).unwrap();
    a.add_pio_device(
        "stuck",
        0x7f0,
        1,
        std::sync::Arc::new(std::sync::Mutex::new(Stuck(rx))),
    )
    .unwrap();
    let good = PartitionConfig {
        index: 71,
        cmdline: "misbehave how=exit=0".into(),
        ..PartitionConfig::default()
    };
    let b = Partition::new(&kvm, good, hv::GUEST_IMAGE).unwrap();
    let running = hv::run::start_all(vec![a, b]).unwrap();
    let limit = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + limit;
        let outs: Vec<_> = running
            .into_iter()
            .map(|r| r.wait(deadline, limit))
            .collect();
        let _ = done_tx.send(outs);
    });
    // Without the watchdog `wait` never returns: fail instead of hanging.
    let outs = done_rx
        .recv_timeout(limit + hv::limits::VCPU_EXIT_GRACE + Duration::from_secs(20))
        .expect("wait returned despite the stuck device");
    let took = started.elapsed();
    assert!(
        matches!(&outs[0].status, RunStatus::DeviceStuck { vcpu: 0, threads: 1, after }
            if matches!(**after, RunStatus::Timeout(_))),
        "{}",
        outs[0].status
    );
    assert_eq!(outs[0].status.label(), "device-stuck");
    assert_eq!(outs[1].status, RunStatus::GuestExit(0));
    eprintln!("stuck partition ended after {took:?}");
}

#[test]
fn asking_for_more_memory_than_the_host_has_is_a_clear_error() {
    let mut req = request("misbehave", &[("how", "exit=0")]);
    req.partitions = 64;
    req.mem_bytes = 3 << 30;
    let e = hv::run::run(&kvm(), &req, &RecordContext::adhoc()).unwrap_err();
    assert!(matches!(e, HvError::Limit(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("MemAvailable") && msg.contains("--mem"),
        "{msg}"
    );
}

/// Stands for a device worker that never stops: dropping it blocks forever.
struct NeverStops(std::sync::mpsc::Receiver<()>);

impl Drop for NeverStops {
    fn drop(&mut self) {
        let _ = self.0.recv();
    }
}

#[test]
fn worker_that_never_stops_cannot_keep_the_run_from_ending() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::mem::forget(tx);
    let cfg = PartitionConfig {
        index: 72,
        cmdline: "misbehave how=exit=0".into(),
        ..PartitionConfig::default()
    };
    let mut p = Partition::new(&kvm(), cfg, hv::GUEST_IMAGE).unwrap();
    p.keep_alive(Box::new(NeverStops(rx)));
    let r = p.start().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let limit = Duration::from_secs(20);
        let _ = done_tx.send(r.wait(std::time::Instant::now() + limit, limit).status);
    });
    let status = done_rx
        .recv_timeout(hv::limits::VCPU_EXIT_GRACE + Duration::from_secs(20))
        .expect("wait returned despite the stuck worker");
    assert!(
        matches!(&status, RunStatus::WorkerStuck { after } if after.is_ok()),
        "{status}"
    );
    assert_eq!(status.label(), "device-stuck");
}

#[test]
fn partitions_end_cleanly_while_vcpus_leave_at_different_times() {
    // Many runs whose vCPUs leave at different moments (vCPU 0 ends the run, the others are
    // kicked out) while hv stops the run: every kick must find a live thread (or none), and
    // every run ends with a status.
    let kvm = kvm();
    for round in 0..15u32 {
        let cfg = PartitionConfig {
            index: 80,
            vcpus: 3,
            cmdline: "exit-floor cpus=3 iters=5 tests=nop".into(),
            ..PartitionConfig::default()
        };
        let r = Partition::new(&kvm, cfg, hv::GUEST_IMAGE)
            .unwrap()
            .start()
            .unwrap();
        // Stop at a different moment each round: before boot, mid-run, after the guest's exit.
        std::thread::sleep(Duration::from_millis(u64::from(round * 7 % 40)));
        r.stop("test stops it");
        let limit = Duration::from_secs(30);
        let o = r.wait(std::time::Instant::now() + limit, limit);
        assert!(
            o.status.is_ok() || matches!(o.status, RunStatus::Stopped(_)),
            "round {round}: {}",
            o.status
        );
    }
}
