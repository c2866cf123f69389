//! Many partitions in one run: built on several threads, readied and started together, each
//! with its own records, and each guest's memory unmapped at the end (`hv::scale`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hv::run::{RecordContext, RunRequest};
use vm_memory::GuestMemoryBackend;

#[test]
fn forty_partitions_keep_their_records_apart_and_release_their_memory() {
    let kvm = hv::error::open_kvm().expect("/dev/kvm");
    let allowed = hv::limits::allowed_cpus().unwrap();
    let mut req = RunRequest {
        workload: "exit-floor".into(),
        partitions: 40,
        mem_bytes: 8 << 20,
        tracepoints: false,
        cpus: Some(allowed[..allowed.len().min(2)].to_vec()),
        ..RunRequest::default()
    };
    req.args.insert("iters".into(), "10".into());
    req.args.insert("tests".into(), "pio-out".into());
    let r = hv::run::run(&kvm, &req, &RecordContext::adhoc()).unwrap();
    assert!(
        r.ok(),
        "{:?}",
        r.partitions
            .iter()
            .map(|p| p.outcome.status.to_string())
            .collect::<Vec<_>>()
    );
    let c = &r.host_cost;
    assert_eq!(c.partitions, 40);
    assert!(c.build_threads >= 1);
    assert_eq!(c.released, 40, "every guest mapping is gone after the run");
    // One vCPU thread per partition while all were up; a handful of fds (VM, vCPU, stats).
    assert!((0.9..1.5).contains(&c.threads), "{c:?}");
    assert!((2.0..16.0).contains(&c.fds), "{c:?}");
    assert!(
        c.guest_touched_bytes > 0.0,
        "the image was loaded into every guest: {c:?}"
    );
    // One pio-out record per partition, each its own, each with its own times.
    let mut seen: Vec<u32> = r
        .records
        .iter()
        .filter(|rec| rec.phase == "pio-out")
        .map(|rec| {
            let hc = rec.host_cost.as_ref().expect("host_cost in every record");
            assert!(hc.startup_ns > 0 && hc.teardown_ns > 0, "{hc:?}");
            assert_eq!(rec.ops, 10);
            rec.partition
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    for p in &r.partitions {
        assert_eq!(p.outcome.memory.num_regions(), 0, "memory released");
    }
}
