//! Integration tests of the VMBus-style transport's devices (`--device vmbus`): blk-io and
//! console-io through hv's channels, with the counts that set the transport apart from virtio
//! (hypercall doorbells instead of ioeventfds, SynIC events instead of IOAPIC interrupts), and
//! hostile guests against the channel. Real guests through /dev/kvm; each test fails (naming
//! the fix) on a host without KVM access.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use hv::devices::{DeviceOptions, DeviceVariant};
use hv::partition::PartitionOutcome;
use hv::run::{RecordContext, RunResult};

use common::{enl, exits, field, named_phase};

fn run(workload: &str, variant: DeviceVariant, args: &[(&str, &str)]) -> RunResult {
    let kvm = common::kvm();
    let mut req = common::request(workload, args);
    req.devices = DeviceOptions {
        variant,
        event_idx: true,
        ..DeviceOptions::default()
    };
    req.tracepoints = false;
    hv::run::run(&kvm, &req, &RecordContext::adhoc()).expect("run starts")
}

fn outcome(r: &RunResult) -> &PartitionOutcome {
    let o = &r.partitions[0].outcome;
    common::assert_ok(o);
    o
}

/// The guest's channel interrupts in phase `p` are hv's MSIs for it, one per event hv raised
/// whose flag the guest had already taken: an event that finds its flag still set (the guest
/// has not yet run its handler for the previous one, say because its vCPU was in hv for the
/// next doorbell) raises none, as the TLFS says, and the handler's one run sees both. So there
/// are between 1 and `events` of them, and exactly as many as hv sent.
fn assert_irqs_follow_events(o: &PartitionOutcome, name: &str, events: u64) {
    let p = named_phase(o, name);
    let irqs = field(o, &format!("name={name} "), "interrupts").unwrap();
    assert!(
        (1..=events).contains(&irqs),
        "{name}: {irqs} interrupts for {events} events"
    );
    assert_eq!(
        enl(p, "synic_irqs"),
        irqs,
        "{name}: guest interrupts = hv's SynIC MSIs"
    );
}

/// At QD1 each request is one doorbell (a HvCallSignalEvent: one MSR exit to hv, none of
/// them ioeventfds), one packet, one completion and one channel event; at QD32 one doorbell
/// and one event serve the whole batch (the ring was empty before the first request; the
/// completions after the first find the guest still draining). Interrupts follow the events
/// (see [`assert_irqs_follow_events`]).
#[test]
fn blk_io_over_vmbus_at_qd1_and_qd32() {
    for (qd, count) in [("1", 32u64), ("32", 64)] {
        let c = count.to_string();
        let r = run(
            "blk-io",
            DeviceVariant::Vmbus,
            &[("qd", qd), ("count", &c), ("rw", "read")],
        );
        let o = outcome(&r);
        let p = named_phase(o, "blk-read");
        let batches = count / qd.parse::<u64>().unwrap();
        assert_eq!(enl(p, "vmbus_packets"), count, "qd {qd}");
        assert_eq!(enl(p, "vmbus_replies"), count, "qd {qd}");
        assert_eq!(
            enl(p, "vmbus_signals"),
            batches,
            "qd {qd}: one doorbell per batch"
        );
        assert_eq!(
            enl(p, "vmbus_guest_signals"),
            batches,
            "qd {qd}: one event per batch"
        );
        // Every reply after a round's first finds the guest still draining, unless the guest
        // emptied the ring while the worker was still writing (then the reply would have
        // signalled, but the round raises one event anyway): at most count - batches.
        let suppressed = enl(p, "vmbus_signals_suppressed");
        assert!(suppressed <= count - batches, "qd {qd}: {suppressed}");
        if qd == "1" {
            assert_eq!(suppressed, 0);
        } else {
            assert!(suppressed > 0, "qd {qd}: nothing suppressed");
        }
        assert_irqs_follow_events(o, "blk-read", batches);
        assert_eq!(field(o, "name=blk-read ", "kicks"), Some(batches));
        // The doorbell is a hypercall (the transport MSR write), never an ioeventfd.
        assert!(exits(p, "msr_write") >= batches, "{:?}", p.exits);
        assert_eq!(exits(p, "mmio_write"), 0, "{:?}", p.exits);
        // The verify phase read back what the reads left in memory: the data came through.
        assert!(o.console.contains("name=blk-verify"), "{}", o.console);
        // The worker's CPU time is in the records.
        let rec = r.records.iter().find(|x| x.phase == "blk-read").unwrap();
        assert!(rec.cpu.worker_ns > 0, "no worker CPU time recorded");
        assert_eq!(rec.variant, "vmbus");
        assert!(
            rec.notes
                .iter()
                .any(|n| n.contains("vmbus-blk (channel 2): reads=")),
            "{:?}",
            rec.notes
        );
    }
}

/// The guest masks the channel's interrupt and polls: hv's worker still serves every request,
/// but the ring protocol suppresses every completion signal: no event, no interrupt.
#[test]
fn a_polling_guest_masks_the_channel_and_gets_no_events() {
    let kvm = common::kvm();
    let mut req = common::request("blk-io", &[("qd", "8"), ("count", "32")]);
    req.devices = hv::devices::device_options("vmbus-poll");
    let r = hv::run::run(&kvm, &req, &RecordContext::adhoc()).expect("run starts");
    let o = outcome(&r);
    let p = named_phase(o, "blk-read");
    assert_eq!(enl(p, "vmbus_replies"), 32);
    assert_eq!(
        enl(p, "vmbus_signals"),
        4,
        "the doorbells still ring, one per batch"
    );
    assert_eq!(enl(p, "vmbus_guest_signals"), 0);
    assert_eq!(enl(p, "vmbus_signals_suppressed"), 32);
    assert_eq!(field(o, "name=blk-read ", "interrupts"), Some(0));
    let rec = r.records.iter().find(|x| x.phase == "blk-read").unwrap();
    assert_eq!(rec.variant, "vmbus-poll");
}

/// Writes through the channel, FLUSH, then reads back through it: every byte verified.
#[test]
fn blk_io_writes_flush_and_verify_over_vmbus() {
    let r = run(
        "blk-io",
        DeviceVariant::Vmbus,
        &[
            ("rw", "mixed"),
            ("qd", "8"),
            ("count", "48"),
            ("pattern", "rand"),
        ],
    );
    let o = outcome(&r);
    assert!(o.console.contains("name=blk-verify"), "{}", o.console);
    assert!(
        o.notes.iter().any(|n| n.contains("flushes=1")),
        "{:?}",
        o.notes
    );
}

#[test]
fn console_io_writes_and_reads_back_over_vmbus() {
    let r = run(
        "console-io",
        DeviceVariant::Vmbus,
        &[("bytes", "640"), ("line", "64")],
    );
    let o = outcome(&r);
    assert_eq!(field(o, "name=con-readback ", "mismatches"), Some(0));
    let w = named_phase(o, "con-write");
    assert_eq!(enl(w, "vmbus_packets"), 10);
    assert_eq!(enl(w, "vmbus_signals"), 10);
    assert_eq!(enl(w, "vmbus_guest_signals"), 10);
    assert_irqs_follow_events(o, "con-write", 10);
    assert!(
        o.console.contains("abcdefghij"),
        "the lines reached the console"
    );
}

/// Without hv-synic shown, hv turns it on for `--device vmbus`; with the kernel backend
/// (KVM would serve the SynIC, not hv) the device cannot exist and the run says why.
#[test]
fn vmbus_devices_bring_their_synic_and_refuse_the_kernel_backend() {
    let r = run("blk-io", DeviceVariant::Vmbus, &[("count", "2")]);
    let o = outcome(&r);
    assert!(
        o.notes
            .iter()
            .any(|n| n.contains("enlightenments:") && n.contains("hv-synic")),
        "{:?}",
        o.notes
    );
    let kvm = common::kvm();
    let mut req = common::request("blk-io", &[("count", "2")]);
    req.devices.variant = DeviceVariant::Vmbus;
    req.enlightenments = hv::enlightenments::EnlightenmentSet::NONE
        .with_hyperv_backend(hv::enlightenments::hyperv::Backend::Kernel);
    match hv::run::run(&kvm, &req, &RecordContext::adhoc()) {
        Err(e) => assert!(e.to_string().contains("hv-synic"), "{e}"),
        Ok(r) => panic!(
            "a vmbus device ran with the kernel backend: {:?}",
            r.partitions[0].outcome.status
        ),
    }
}

/// Hostile guests against the block channel: bad buffers and requests fail alone; a broken
/// ring closes the channel (counted, noted, announced with CHANNEL_CLOSED, signals refused)
/// until the guest opens it again; rings outside RAM and unknown channels are refused at
/// open; a signal storm costs only the caller. Each case ends with a good read.
#[test]
fn hostile_guests_against_the_vmbus_channel() {
    let ram = hv::run::RunRequest::default().mem_bytes.to_string();
    for (how, ring_errors) in [
        ("oob-buffer", 0),
        ("bad-request", 0),
        ("bad-index", 1),
        ("oversized", 1),
        ("bad-open", 0),
        ("signal-storm", 0),
    ] {
        let r = run(
            "blk-io",
            DeviceVariant::Vmbus,
            &[("how", how), ("ram", &ram)],
        );
        let o = outcome(&r);
        assert!(
            o.console.contains(&format!("hostile={how} ")) && o.console.contains("detected=1"),
            "{how}: {}",
            o.console
        );
        assert_eq!(
            enl(&o.totals, "vmbus_ring_errors"),
            ring_errors,
            "{how}: {:?}",
            o.notes
        );
        if ring_errors > 0 {
            assert_eq!(enl(&o.totals, "vmbus_closed_notices"), 1, "{how}");
            assert!(
                o.notes.iter().any(|n| n.contains("vmbus channel 2 closed")),
                "{how}: {:?}",
                o.notes
            );
        }
        if how == "oob-buffer" {
            assert!(
                o.notes.iter().any(|n| n.contains("not in guest RAM")),
                "{:?}",
                o.notes
            );
        }
    }
}
