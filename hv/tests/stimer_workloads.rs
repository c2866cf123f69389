//! The Hyper-V synthetic timers measured against the local APIC timer by the `interrupts` and
//! `clock` workloads: periodic storms (`interrupts source=stimer,stimer-direct` beside
//! `timer`) with their interrupt, message, EOM and expiry counts, one-shot lateness
//! (`clock timers=lapic,stimer,stimer-direct`) with its histogram, and the sources skipped with
//! the reason when an enlightenment they need is off. Fails, naming the fix, when /dev/kvm is
//! unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use common::{boot_enlightened as boot, enl, exits, kvm, named_phase};
use hv::guest_output::{GuestPhase, GuestReport, parse};
use hv::partition::PartitionOutcome;

const ALL: &str = "hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct";

fn guest_phase<'a>(r: &'a GuestReport, name: &str, o: &PartitionOutcome) -> &'a GuestPhase {
    r.phases
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no phase {name}:\n{}", o.console))
}

fn metric(p: &GuestPhase, key: &str) -> u64 {
    *p.metrics
        .get(key)
        .unwrap_or_else(|| panic!("{}: no metric {key}: {:?}", p.name, p.metrics))
}

/// The reason hv recorded for skipping `name` (the guest's underscores read as spaces).
fn skip_reason<'a>(r: &'a GuestReport, name: &str) -> Option<&'a str> {
    r.skips
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, why)| why.as_str())
}

#[test]
fn interrupts_stimer_sources_count_like_the_apic_timer() {
    const ITERS: u64 = 20;
    let kvm = kvm();
    let o = boot(
        &kvm,
        &format!("interrupts iters={ITERS} period_us=1000"),
        1,
        ALL,
    );
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let r = parse(&o.console);
    for name in [
        "interrupts-timer",
        "interrupts-self-ipi",
        "interrupts-stimer",
        "interrupts-stimer-direct",
    ] {
        let g = guest_phase(&r, name, &o);
        let h = named_phase(&o, name);
        eprintln!(
            "{name}: guest {:?}; exits {:?}; enl {:?}; wall {} us/interrupt",
            g.metrics,
            h.exits,
            h.exits_by_device
                .iter()
                .filter(|(k, v)| k.starts_with("hv-enl:") && **v != 0)
                .collect::<Vec<_>>(),
            h.wall_ns / ITERS / 1000
        );
        assert_eq!(metric(g, "interrupts"), ITERS, "{name}");
        assert_eq!(
            metric(g, "eoi_pv") + metric(g, "eoi_apic"),
            ITERS,
            "{name}: every interrupt ends once"
        );
    }
    // The APIC timer never involves hv's timers.
    let lapic = named_phase(&o, "interrupts-timer");
    assert_eq!(enl(lapic, "stimer_expiries"), 0);
    assert_eq!(enl(lapic, "synic_irqs"), 0);
    for (name, timer_msrs) in [("interrupts-stimer", 3), ("interrupts-stimer-direct", 3)] {
        let g = guest_phase(&r, name, &o);
        let h = named_phase(&o, name);
        // One expiry and one MSI per interrupt the guest took; hv may count one more that
        // came due before the guest's stop reached it.
        let expiries = enl(h, "stimer_expiries");
        assert!(
            (ITERS..=ITERS + 1).contains(&expiries),
            "{name}: {expiries} expiries"
        );
        let irqs = enl(h, "synic_irqs");
        assert!((ITERS..=ITERS + 1).contains(&irqs), "{name}: {irqs} MSIs");
        // Userspace MSR exits: COUNT + CONFIG to start, CONFIG to stop, and one per EOM.
        let eom = if name == "interrupts-stimer" {
            metric(g, "eom")
        } else {
            0
        };
        assert_eq!(
            exits(h, "msr_write"),
            timer_msrs + eom,
            "{name}: {:?}",
            h.exits
        );
    }
    // Message mode: every interrupt brought its HVMSG_TIMER_EXPIRED.
    let g = guest_phase(&r, "interrupts-stimer", &o);
    assert_eq!(metric(g, "messages"), ITERS);
    assert!(metric(g, "eom") <= ITERS);
    // Direct mode has no messages to consume.
    let d = guest_phase(&r, "interrupts-stimer-direct", &o);
    assert!(!d.metrics.contains_key("messages"), "{:?}", d.metrics);
}

#[test]
fn clock_one_shot_lateness_lapic_deadline_vs_stimer() {
    const ITERS: u64 = 20;
    let kvm = kvm();
    let o = boot(
        &kvm,
        &format!("clock iters={ITERS} sources=tsc delay-us=300"),
        1,
        ALL,
    );
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let r = parse(&o.console);
    let khz = u64::from(o.tsc_khz.expect("KVM_GET_TSC_KHZ answered"));
    for name in [
        "clock-timer-lapic",
        "clock-timer-stimer",
        "clock-timer-stimer-direct",
    ] {
        let g = guest_phase(&r, name, &o);
        let h = named_phase(&o, name);
        let lat = hv::latency::summarize(&g.hist, khz).expect("a lateness histogram");
        eprintln!(
            "{name}: lateness p50 {:.0} p99 {:.0} max {:.0} {} over {}; guest {:?}; exits {:?}; stimer_expiries {}",
            lat.p50,
            lat.p99,
            lat.max,
            lat.unit,
            lat.count,
            g.metrics,
            h.exits,
            enl(h, "stimer_expiries")
        );
        assert_eq!(metric(g, "expiries"), ITERS, "{name}");
        let early = metric(g, "early");
        assert_eq!(
            lat.count + early,
            ITERS,
            "{name}: every expiry measured once"
        );
        // The requested delay, converted with the TSC page's rate, is 300 us of the host's TSC.
        let delay_us = metric(g, "delay") * 1000 / khz;
        assert!(
            (299..=301).contains(&delay_us),
            "{name}: delay {delay_us} us"
        );
        if name == "clock-timer-lapic" {
            // TSC-deadline writes are KVM's; hv's timers are idle.
            assert_eq!(enl(h, "stimer_expiries"), 0, "{name}");
            assert_eq!(exits(h, "msr_write"), 0, "{name}: {:?}", h.exits);
        } else {
            // hv delivers only once its reference time reached the expiry.
            assert_eq!(early, 0, "{name}: fired before the requested expiry");
            // Each arm is one COUNT write (auto-enable), each expiry hv's.
            assert_eq!(enl(h, "stimer_expiries"), ITERS, "{name}");
            assert_eq!(exits(h, "msr_write"), ITERS, "{name}: {:?}", h.exits);
        }
    }
    let m = guest_phase(&r, "clock-timer-stimer", &o);
    assert_eq!(metric(m, "messages"), ITERS);
}

#[test]
fn stimer_sources_are_skipped_with_the_reason_when_not_exposed() {
    let kvm = kvm();
    // (enlightenments, reason for stimer, reason for stimer-direct); None = it ran.
    let cases = [
        (
            "none",
            Some("hv-synic not exposed"),
            Some("hv-synic not exposed"),
        ),
        (
            "hv-vpindex,hv-time,hv-synic",
            Some("hv-stimer not exposed"),
            Some("hv-stimer not exposed"),
        ),
        (
            "hv-vpindex,hv-time,hv-synic,hv-stimer",
            None,
            Some("hv-stimer-direct not exposed"),
        ),
    ];
    for (set, stimer, direct) in cases {
        let o = boot(
            &kvm,
            "interrupts iters=5 source=timer,stimer,stimer-direct",
            1,
            set,
        );
        assert!(o.status.is_ok(), "{set}: {}\n{}", o.status, o.console);
        let r = parse(&o.console);
        assert_eq!(
            metric(guest_phase(&r, "interrupts-timer", &o), "interrupts"),
            5
        );
        for (name, want) in [
            ("interrupts-stimer", stimer),
            ("interrupts-stimer-direct", direct),
        ] {
            let ran = r.phases.iter().any(|p| p.name == name);
            assert_eq!(skip_reason(&r, name), want, "{set}/{name}\n{}", o.console);
            assert_eq!(
                ran,
                want.is_none(),
                "{set}/{name}: ran or skipped, never both"
            );
        }
    }
    // The clock's timers: without hv-time no TSC rate (all skipped); with hv-time alone the
    // APIC timer runs and the synthetic ones are skipped.
    let o = boot(&kvm, "clock iters=5 sources=tsc", 1, "none");
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let r = parse(&o.console);
    for name in [
        "clock-timer-lapic",
        "clock-timer-stimer",
        "clock-timer-stimer-direct",
    ] {
        assert_eq!(skip_reason(&r, name), Some("hv-time not exposed"), "{name}");
    }
    let o = boot(&kvm, "clock iters=5 sources=tsc", 1, "hv-time");
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let r = parse(&o.console);
    assert_eq!(
        metric(guest_phase(&r, "clock-timer-lapic", &o), "expiries"),
        5
    );
    for name in ["clock-timer-stimer", "clock-timer-stimer-direct"] {
        assert_eq!(
            skip_reason(&r, name),
            Some("hv-synic not exposed"),
            "{name}"
        );
    }
}
