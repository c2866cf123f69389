//! seccomp filters on the threads a guest drives (hv/src/isolation/seccomp.rs): a system call
//! outside a thread's allowlist ends its partition's run with `seccomp-violation`, naming the
//! thread and the call, and hv (this test process) carries on.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kvm, request};
use hv::RunStatus;
use hv::bus::{BusDevice, DeviceAction};
use hv::isolation::seccomp::{self, ThreadKind};
use hv::partition::{Partition, PartitionConfig, PartitionOutcome};
use hv::run::RecordContext;

/// Port the `misbehave how=port-flood` guest writes forever.
const FLOOD_PORT: u16 = 0x80;

/// A test-only device whose write makes a system call no vCPU thread needs (`getppid`), as a
/// bug a guest can steer might; it remembers what the call returned.
#[derive(Default)]
struct Snooper(Arc<AtomicI64>);

impl BusDevice for Snooper {
    fn write(&mut self, _offset: u64, _data: &[u8]) -> DeviceAction {
        // SAFETY: getppid has no preconditions.
        let rc = unsafe { libc::getppid() };
        self.0.store(i64::from(rc), Ordering::SeqCst);
        DeviceAction::None
    }
}

fn flood_partition(seccomp: bool, max_exits: Option<u64>) -> (Partition, Arc<AtomicI64>) {
    let cfg = PartitionConfig {
        cmdline: "misbehave cpus=1 part=0 how=port-flood".into(),
        seccomp,
        max_exits,
        ..PartitionConfig::default()
    };
    let mut p = Partition::new(&kvm(), cfg, hv::GUEST_IMAGE).expect("partition");
    let seen = Arc::new(AtomicI64::new(0));
    p.add_pio_device(
        "snooper",
        FLOOD_PORT,
        1,
        Arc::new(Mutex::new(Snooper(seen.clone()))),
    )
    .expect("port 0x80 is free");
    (p, seen)
}

fn finish(p: Partition) -> PartitionOutcome {
    let limit = Duration::from_secs(30);
    p.start()
        .expect("starts")
        .wait(Instant::now() + limit, limit)
}

#[test]
fn a_device_call_outside_the_vcpu_allowlist_ends_the_run_with_its_status() {
    let (p, seen) = flood_partition(true, None);
    let o = finish(p);
    assert_eq!(
        o.status,
        RunStatus::SeccompViolation {
            thread: "vCPU 0".into(),
            syscall: libc::SYS_getppid,
        },
        "{}",
        o.status
    );
    assert_eq!(o.status.label(), "seccomp-violation");
    let text = o.status.to_string();
    assert!(
        text.contains("getppid") && text.contains("vCPU 0"),
        "{text}"
    );
    // The call was refused, not made: the device saw EPERM's -1.
    assert_eq!(seen.load(Ordering::SeqCst), -1);
    assert!(
        o.notes.iter().any(|n| n.contains("seccomp: vCPU 0")),
        "{:?}",
        o.notes
    );
    // hv is fine: this thread is unfiltered, and the next run in the same process is clean.
    // SAFETY: getppid has no preconditions.
    assert!(unsafe { libc::getppid() } > 0);
    let r = hv::run::run(
        &kvm(),
        &request("misbehave", &[("how", "exit=0")]),
        &RecordContext::adhoc(),
    )
    .expect("runs");
    assert!(r.ok(), "{}", r.partitions[0].outcome.status);
}

#[test]
fn without_seccomp_the_same_device_call_goes_through() {
    let (p, seen) = flood_partition(false, Some(200));
    let o = finish(p);
    assert_eq!(o.status, RunStatus::ExitLimit(200), "{}", o.status);
    assert!(seen.load(Ordering::SeqCst) > 0, "getppid answered");
    assert!(
        o.notes.iter().any(|n| n.contains("seccomp: filters off")),
        "{:?}",
        o.notes
    );
}

#[test]
fn a_worker_call_outside_its_allowlist_ends_the_run_while_the_guest_spins() {
    // The guest spins with interrupts off and never exits; only `wait`'s check can end it.
    let cfg = PartitionConfig {
        cmdline: "misbehave cpus=1 part=0 how=spin-cli".into(),
        ..PartitionConfig::default()
    };
    let p = Partition::new(&kvm(), cfg, hv::GUEST_IMAGE).expect("partition");
    // A device worker gets its partition's filter target, as synthetic devices do.
    let target = p.seccomp_target("test-device worker");
    let running = p.start().expect("starts");
    let worker = std::thread::spawn(move || {
        seccomp::install(ThreadKind::Worker, &target);
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() }
    });
    assert_eq!(worker.join().expect("the worker goes on"), -1);
    let limit = Duration::from_secs(30);
    let t = Instant::now();
    let o = running.wait(Instant::now() + limit, limit);
    assert_eq!(
        o.status,
        RunStatus::SeccompViolation {
            thread: "test-device worker".into(),
            syscall: libc::SYS_getppid,
        },
        "{}",
        o.status
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
