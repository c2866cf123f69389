//! The SynIC and synthetic timers with a real guest (`synic` workload), in the spirit of
//! kvm-unit-tests' hyperv_connections, hyperv_synic and hyperv_stimer: messages and events to
//! the vCPU itself and to another vCPU with one hypercall exit each, the busy-slot protocol and
//! status codes, a timer expiry redelivered on EOM, one-shot and periodic timers (message and
//! direct mode) with their expiry counts. Fails, naming the fix, when /dev/kvm is unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use common::{boot_enlightened as boot, enl, exits, field, kvm, named_phase as phase};

const ALL: &str = "hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct";

#[test]
fn messages_events_busy_slots_and_timers() {
    let kvm = kvm();
    let o = boot(&kvm, "synic iters=10", 2, ALL);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    for name in [
        "synic-msg-self",
        "synic-msg-other",
        "synic-event-self",
        "synic-event-other",
        "synic-status",
        "stimer-redelivery",
        "stimer-oneshot",
        "stimer-periodic",
        "stimer-periodic-direct",
        "vmbus-echo",
        "vmbus-echo-burst",
    ] {
        let p = phase(&o, name);
        eprintln!(
            "{name}: exits {:?} enl {:?}",
            p.exits,
            p.exits_by_device
                .iter()
                .filter(|(k, v)| k.starts_with("hv-enl:") && **v != 0)
                .collect::<Vec<_>>()
        );
    }
    // One hypercall exit (the page's wrmsr) and one MSI per message or event; the receiver
    // needs no EOM (nothing was pending).
    for (name, counter) in [
        ("synic-msg-self", "synic_messages_posted"),
        ("synic-msg-other", "synic_messages_posted"),
        ("synic-event-self", "synic_events_signalled"),
        ("synic-event-other", "synic_events_signalled"),
    ] {
        let p = phase(&o, name);
        assert_eq!(enl(p, counter), 10, "{name}");
        assert_eq!(enl(p, "synic_irqs"), 10, "{name}");
        assert_eq!(enl(p, "hyperv_hypercalls"), 10, "{name}");
        assert_eq!(exits(p, "msr_write"), 10, "{name}: {:?}", p.exits);
        assert_eq!(enl(p, "hyperv_hypercall_errors"), 0, "{name}");
    }
    // The busy slot was seen by hv, and the guest checked every status code.
    let s = phase(&o, "synic-status");
    assert_eq!(enl(s, "synic_slot_busy"), 1);
    assert_eq!(field(&o, "name=synic-status ", "busy"), Some(0x13));
    assert_eq!(
        field(&o, "name=synic-status ", "unknown_connection"),
        Some(0x12)
    );
    assert_eq!(field(&o, "name=synic-status ", "too_big"), Some(0x5));
    // Redelivery: the expiry found the slot full once, then came in on EOM.
    let r = phase(&o, "stimer-redelivery");
    assert_eq!(enl(r, "synic_slot_busy"), 1, "{:?}", r.exits_by_device);
    assert_eq!(enl(r, "stimer_expiries"), 1);
    assert_eq!(
        field(&o, "name=stimer-redelivery ", "redelivered_type"),
        Some(0x8000_0010)
    );
    // Ten one-shot expiries, each its own message.
    let one = phase(&o, "stimer-oneshot");
    assert_eq!(enl(one, "stimer_expiries"), 10);
    assert_eq!(enl(one, "stimer_missed"), 0);
    // Periodic: ten expiries seen by the guest (hv may count one more before the stop).
    for name in ["stimer-periodic", "stimer-periodic-direct"] {
        let p = phase(&o, name);
        let n = enl(p, "stimer_expiries");
        assert!((10..=11).contains(&n), "{name}: {n}");
        assert_eq!(field(&o, &format!("name={name} "), "expiries"), Some(10));
    }
    // VMBus-style echo channel: one signal hypercall per request at QD1 and per burst of 8,
    // one channel event per signal, the other 7 replies of a burst suppressed.
    let one = phase(&o, "vmbus-echo");
    assert_eq!(exits(one, "msr_write"), 10, "{:?}", one.exits);
    assert_eq!(enl(one, "vmbus_packets"), 10);
    assert_eq!(enl(one, "vmbus_guest_signals"), 10);
    assert_eq!(enl(one, "vmbus_signals_suppressed"), 0);
    let burst = phase(&o, "vmbus-echo-burst");
    assert_eq!(exits(burst, "msr_write"), 10, "{:?}", burst.exits);
    assert_eq!(enl(burst, "vmbus_packets"), 80);
    assert_eq!(enl(burst, "vmbus_guest_signals"), 10);
    assert_eq!(enl(burst, "vmbus_signals_suppressed"), 70);
    assert_eq!(field(&o, "name=vmbus-echo-burst ", "bad"), Some(0));
    // A hostile write index closes the channel (counted and noted); it reopens cleanly.
    let h = phase(&o, "vmbus-hostile");
    assert_eq!(enl(h, "vmbus_ring_errors"), 1, "{:?}", h.exits_by_device);
    assert_eq!(field(&o, "name=vmbus-hostile ", "echoed"), Some(1));
    assert!(
        o.notes.iter().any(|n| n.contains("vmbus channel 1 closed")),
        "{:?}",
        o.notes
    );
}

/// A guest flooding itself (a 100 ns periodic timer, posts into a SINT nobody drains) gets at
/// most one expiry per 100 us and one message per slot; hv and the run stay responsive.
#[test]
fn timer_and_message_storms_are_bounded() {
    let kvm = kvm();
    let o = boot(&kvm, "synic phases=storm", 1, ALL);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let p = phase(&o, "synic-storm");
    let kicks = enl(p, "stimer_kicks");
    let expiries = enl(p, "stimer_expiries");
    eprintln!(
        "storm: {expiries} expiries, {kicks} kicks, exits {:?}",
        p.exits
    );
    // 20 ms at one expiry per 100 us at most (plus the edges).
    assert!((1..=210).contains(&expiries), "{expiries}");
    assert!(
        kicks <= expiries + 2,
        "{kicks} kicks for {expiries} expiries"
    );
    assert_eq!(field(&o, "name=synic-storm ", "busy"), Some(50));
    assert_eq!(enl(p, "synic_slot_busy"), 50);
}

/// Each refused write (TLFS reserved bits, a vector below 16, a page in the MMIO window, a
/// read-only MSR) reaches the guest as #GP through hv's MSR error path.
#[test]
fn refused_msr_writes_raise_gp_in_the_guest() {
    let kvm = kvm();
    for fault in [
        "sint-vector",
        "sint-reserved",
        "simp-reserved",
        "simp-mmio",
        "sversion",
        "stimer-reserved",
    ] {
        let o = boot(&kvm, &format!("synic fault={fault}"), 1, ALL);
        assert_eq!(
            o.status,
            hv::RunStatus::GuestExit(hvlab_protocol::status::EXCEPTION),
            "{fault}: {}",
            o.console
        );
        assert!(
            o.console.contains("expect_fault=gp"),
            "{fault}: {}",
            o.console
        );
        assert_eq!(
            field(&o, "rec=fault", "vector"),
            Some(13),
            "{fault}: {}",
            o.console
        );
    }
}

#[test]
fn without_hv_synic_the_workload_is_unsupported_and_timers_need_hv_stimer() {
    let kvm = kvm();
    let o = boot(&kvm, "synic", 1, "hv-vpindex,hv-time");
    common::assert_unsupported(&o, "hv-synic_not_exposed");
    // SynIC without timers: the message phases run, the timer phases are skipped.
    let o = boot(
        &kvm,
        "synic iters=3 phases=msg,status,oneshot",
        1,
        "hv-vpindex,hv-synic",
    );
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    assert_eq!(enl(phase(&o, "synic-msg-self"), "synic_messages_posted"), 3);
    assert!(o.console.contains("hv-stimer_not_exposed"), "{}", o.console);
}
