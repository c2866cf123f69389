//! A guest abusing the Hyper-V SynIC on purpose (`synic-hostile` workload): calls to
//! connections that name nothing, floods into message slots and event flags it never drains,
//! all four synthetic timers at hv's shortest period in message and direct mode. Each is
//! checked twice: by the guest (statuses, what reached its pages, interrupts taken) and here
//! against hv's counters (`hv-enl:*`). Then two such partitions storm side by side with a
//! `mem-pattern` neighbour on one host CPU: each partition's own results, the neighbour's
//! memory and every end status stay intact. (`hv/tests/synic.rs` covers the protocol itself and
//! one timer storm; this file covers abuse across SINTs, timers and partitions.) Fails, naming
//! the fix, when /dev/kvm is unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{boot_enlightened as boot, enl, field, kvm, named_phase as phase};
use hv::enlightenments::EnlightenmentSet;
use hv::neighbour::Neighbour;
use hv::record::RunRecord;
use hv::run::{RecordContext, RunRequest};
use hvlab_protocol::hyperv as tlfs;

const ALL: &str = "hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct";

/// Timer expiries four timers at hv's 100 us minimum period may produce in `elapsed` (100 ns
/// units), with one more per timer for each edge.
fn timer_bound(elapsed: u64) -> u64 {
    4 * (elapsed / 1_000 + 2)
}

#[test]
fn unknown_connections_are_refused_and_never_delivered() {
    let kvm = kvm();
    let o = boot(&kvm, "synic-hostile phases=unknown", 1, ALL);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let p = phase(&o, "synic-unknown");
    let calls = field(&o, "name=synic-unknown ", "calls").unwrap();
    assert_eq!(calls, 30);
    // Every call reached hv and every one failed with INVALID_CONNECTION_ID (the guest
    // checked each status); nothing was written or raised anywhere.
    assert_eq!(
        enl(p, "hyperv_hypercalls"),
        calls,
        "{:?}",
        p.exits_by_device
    );
    assert_eq!(enl(p, "hyperv_hypercall_errors"), calls);
    assert_eq!(
        field(&o, "name=synic-unknown ", "unexpected_status"),
        Some(0)
    );
    assert_eq!(field(&o, "name=synic-unknown ", "delivered"), Some(0));
    for counter in [
        "synic_messages_posted",
        "synic_events_signalled",
        "synic_irqs",
        "synic_slot_busy",
        "msis_sent",
        "vmbus_messages",
        "vmbus_signals",
    ] {
        assert_eq!(enl(p, counter), 0, "{counter}: {:?}", p.exits_by_device);
    }
}

#[test]
fn floods_into_undrained_slots_and_timer_storms_are_bounded() {
    let kvm = kvm();
    let o = boot(
        &kvm,
        "synic-hostile phases=flood,timers,direct iters=200",
        1,
        ALL,
    );
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);

    // 200 posts into one undrained slot: one lands, 199 are busy; 200 signals of one flag:
    // one interrupt. After consume + EOM one more post lands.
    let f = phase(&o, "synic-flood");
    eprintln!("flood: {:?}", f.exits_by_device);
    assert_eq!(enl(f, "synic_messages_posted"), 2);
    assert_eq!(enl(f, "synic_slot_busy"), 199);
    assert_eq!(enl(f, "synic_events_signalled"), 200);
    assert_eq!(enl(f, "synic_irqs"), 3);
    assert_eq!(enl(f, "hyperv_hypercall_errors"), 199);
    assert_eq!(field(&o, "name=synic-flood ", "busy"), Some(199));
    assert_eq!(
        field(&o, "name=synic-flood ", "first"),
        Some(u64::from(tlfs::STATUS_SUCCESS))
    );

    // Four message-mode timers into an undrained SINT: one message delivered, one waiting for
    // EOM (delivered after it), every other expiry missed; expiries bounded by the period.
    let t = phase(&o, "stimer-flood");
    let elapsed = field(&o, "name=stimer-flood ", "elapsed_100ns").unwrap();
    let expiries = enl(t, "stimer_expiries");
    let missed = enl(t, "stimer_missed");
    eprintln!(
        "stimer-flood: {expiries} expiries, {missed} missed in {elapsed} x 100 ns: {:?}",
        t.exits_by_device
    );
    assert!(
        (4..=timer_bound(elapsed)).contains(&expiries),
        "{expiries} expiries in {elapsed}"
    );
    assert!(
        missed >= expiries - 2,
        "{missed} missed of {expiries} expiries"
    );
    assert_eq!(enl(t, "synic_slot_busy"), 1);
    assert_eq!(enl(t, "synic_irqs"), 2);
    assert_eq!(field(&o, "name=stimer-flood ", "interrupts"), Some(1));
    assert_eq!(field(&o, "name=stimer-flood ", "redelivered"), Some(1));

    // Four direct-mode timers: the guest kept running, the interrupts it took and hv's
    // expiries are bounded by the elapsed time.
    let d = phase(&o, "stimer-direct-flood");
    let elapsed = field(&o, "name=stimer-direct-flood ", "elapsed_100ns").unwrap();
    let got = field(&o, "name=stimer-direct-flood ", "interrupts").unwrap();
    let expiries = enl(d, "stimer_expiries");
    eprintln!(
        "stimer-direct-flood: {got} interrupts, {expiries} expiries in {elapsed} x 100 ns, exits {:?}",
        d.exits
    );
    assert!(
        got >= 4 && got <= timer_bound(elapsed),
        "{got} in {elapsed}"
    );
    assert!(
        (got..=timer_bound(elapsed)).contains(&expiries),
        "{expiries} expiries, {got} interrupts in {elapsed}"
    );
    // Each direct expiry is one MSI to the timer's vector (no message slot); the guest took
    // fewer interrupts than hv raised where they coalesced in the LAPIC.
    assert_eq!(enl(d, "synic_irqs"), expiries);
    assert_eq!(enl(d, "msis_sent"), expiries);
}

fn record<'a>(records: &'a [RunRecord], partition: u32, phase: &str) -> &'a RunRecord {
    records
        .iter()
        .find(|r| r.partition == partition && r.phase == phase)
        .unwrap_or_else(|| panic!("no record of phase {phase} for partition {partition}"))
}

fn counter(r: &RunRecord, name: &str) -> u64 {
    r.exits_by_device
        .get(&format!("hv-enl:{name}"))
        .copied()
        .unwrap_or(0)
}

/// Two partitions storm at once (unknown ids, floods, four timers each) on one host CPU beside
/// a neighbour: each partition's guest checks pass with its own counts, hv's counters per
/// partition are exactly one partition's worth (no cross-talk: a message or event of one never
/// lands in the other), and the neighbour's memory is intact.
#[test]
fn two_storming_partitions_leave_each_other_and_a_neighbour_intact() {
    let kvm = kvm();
    let args: BTreeMap<String, String> =
        [("iters", "100"), ("phases", "unknown,flood,timers,direct")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let req = RunRequest {
        workload: "synic-hostile".into(),
        args,
        partitions: 2,
        cpus: Some(vec![0]),
        timeout: Duration::from_secs(60),
        tracepoints: false,
        enlightenments: EnlightenmentSet::parse(ALL).unwrap(),
        neighbour: Some(Neighbour::parse("mem-pattern:seed=5,size=16k").unwrap()),
        ..RunRequest::default()
    };
    let r = hv::run::run(&kvm, &req, &RecordContext::adhoc()).unwrap();
    for p in &r.partitions {
        assert!(
            p.outcome.status.is_ok(),
            "partition {}: {}\n{}",
            p.outcome.index,
            p.outcome.status,
            p.outcome.console
        );
    }
    assert_eq!(
        r.partitions.len(),
        3,
        "two storming partitions and the neighbour"
    );
    for part in 0..2 {
        let u = record(&r.records, part, "synic-unknown");
        assert_eq!(counter(u, "synic_messages_posted"), 0, "partition {part}");
        assert_eq!(counter(u, "synic_events_signalled"), 0, "partition {part}");
        assert_eq!(counter(u, "synic_irqs"), 0, "partition {part}");
        assert_eq!(u.metrics.get("delivered"), Some(&0.0), "partition {part}");
        let f = record(&r.records, part, "synic-flood");
        assert_eq!(counter(f, "synic_slot_busy"), 99, "partition {part}");
        assert_eq!(counter(f, "synic_messages_posted"), 2, "partition {part}");
        assert_eq!(
            counter(f, "synic_events_signalled"),
            100,
            "partition {part}"
        );
        assert_eq!(counter(f, "synic_irqs"), 3, "partition {part}");
        let t = record(&r.records, part, "stimer-flood");
        assert_eq!(counter(t, "synic_slot_busy"), 1, "partition {part}");
        assert_eq!(counter(t, "synic_irqs"), 2, "partition {part}");
        let elapsed = t.metrics["elapsed_100ns"] as u64;
        assert!(
            counter(t, "stimer_expiries") <= timer_bound(elapsed),
            "partition {part}: {} expiries in {elapsed}",
            counter(t, "stimer_expiries")
        );
    }
    let neighbour: Vec<&RunRecord> = r
        .records
        .iter()
        .filter(|rec| rec.role == hv::neighbour::ROLE)
        .collect();
    assert!(!neighbour.is_empty(), "no neighbour records");
    for rec in neighbour {
        assert!(
            rec.status.is_ok(),
            "neighbour {}: {:?}",
            rec.phase,
            rec.status
        );
        assert_eq!(
            rec.metrics.get("host_mismatches"),
            Some(&0.0),
            "neighbour {}",
            rec.phase
        );
    }
}

#[test]
fn without_hv_synic_the_workload_is_unsupported() {
    let kvm = kvm();
    let o = boot(&kvm, "synic-hostile", 1, "hv-vpindex,hv-time");
    common::assert_unsupported(&o, "hv-synic_not_exposed");
}
