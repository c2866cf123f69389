//! Enlightenments with real guests: CPUID bits follow the set, hv's hypercalls move the
//! counters they should, every TLB shootdown variant is correct, and unsupported variants are
//! refused with the probe's reason. Skipped (passing) when /dev/kvm is unavailable.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hv::enlightenments::{EnlightenmentSet, registry};
use hv::partition::{Partition, PartitionConfig, PartitionOutcome};

fn kvm() -> Option<kvm_ioctls::Kvm> {
    hv::error::open_kvm().ok()
}

fn boot(kvm: &kvm_ioctls::Kvm, cmdline: &str, vcpus: u32, set: &str) -> PartitionOutcome {
    let cfg = PartitionConfig {
        cmdline: format!("{cmdline} cpus={vcpus}"),
        vcpus,
        enlightenments: Some(EnlightenmentSet::parse(set).expect("valid set")),
        tracepoints: false,
        ..Default::default()
    };
    let p = Partition::new(kvm, cfg, hv::GUEST_IMAGE).expect("partition builds");
    let r = p.start().expect("starts");
    r.wait(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    )
}

/// `key=value` of the first guest line containing `rec` and `key=`.
fn field(o: &PartitionOutcome, rec: &str, key: &str) -> Option<u64> {
    let line = o
        .console
        .lines()
        .find(|l| l.contains(rec) && l.contains(&format!(" {key}=")))?;
    let v = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn hv_count(o: &PartitionOutcome, name: &str) -> u64 {
    o.phases
        .iter()
        .map(|p| {
            p.exits_by_device
                .get(&format!("hv-enl:{name}"))
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn guest_sees_cpuid_bits_exactly_when_enabled() {
    let Some(kvm) = kvm() else { return };
    for e in registry() {
        if e.probe(&kvm).is_err() || (e.kvm_pv_bits() == 0 && e.hv_bits() == 0) {
            continue;
        }
        let on = boot(&kvm, "exit-floor tests=nop iters=1", 1, e.name());
        assert!(on.status.is_ok(), "{}: {}", e.name(), on.status);
        let kvm_bits = field(&on, "rec=info", "kvm_features").unwrap_or(0) as u32;
        let hv_bits = field(&on, "rec=info", "hv_features").unwrap_or(0) as u32;
        assert_eq!(kvm_bits, e.kvm_pv_bits(), "{}: KVM bits", e.name());
        assert_eq!(hv_bits, e.hv_bits(), "{}: hv bits", e.name());
    }
    let off = boot(&kvm, "exit-floor tests=nop iters=1", 1, "none");
    assert_eq!(field(&off, "rec=info", "kvm_features"), Some(0));
    assert_eq!(field(&off, "rec=info", "hv_features"), Some(0));
    assert!(off.console.contains("apic=xapic"), "x2apic off means xAPIC");
}

#[test]
fn tlb_shootdown_every_variant_reads_the_new_frame() {
    let Some(kvm) = kvm() else { return };
    // (set, mode, expect IPIs)
    let cases = [
        ("none", "ipi", true),
        ("tlb-flush-hypercall", "hypercall", false),
        ("x2apic", "ipi", true),
    ];
    for (set, mode, ipis) in cases {
        let o = boot(&kvm, &format!("tlb-shootdown iters=5 mode={mode}"), 3, set);
        assert!(
            o.status.is_ok(),
            "{set}/{mode}: {}\n{}",
            o.status,
            o.console
        );
        assert_eq!(
            field(&o, "rec=phase", "stale_reads"),
            Some(0),
            "{set}/{mode}"
        );
        let sent = field(&o, "rec=phase", "ipis").expect("ipis reported");
        if ipis {
            assert_eq!(
                sent,
                5 * 2,
                "{set}/{mode}: one IPI per target per shootdown"
            );
        } else {
            assert_eq!(sent, 0, "{set}/{mode}: the hypercall sends no IPI");
            assert_eq!(hv_count(&o, "hvcall_flush_tlb"), 5);
            assert_eq!(hv_count(&o, "tlb_flushes_done"), 5 * 2);
        }
    }
    // pv-tlb-flush where KVM offers it (MSR-based; it needs no hypercall).
    if EnlightenmentSet::parse("pv-tlb-flush")
        .unwrap()
        .resolve(&kvm)
        .is_ok()
    {
        let o = boot(
            &kvm,
            "tlb-shootdown iters=5 mode=pv-tlb-flush",
            3,
            "pv-tlb-flush",
        );
        assert!(
            o.status.is_ok(),
            "pv-tlb-flush: {}\n{}",
            o.status,
            o.console
        );
        assert_eq!(field(&o, "rec=phase", "stale_reads"), Some(0));
    }
}

#[test]
fn long_spin_notify_parks_waiters_and_counts_calls() {
    let Some(kvm) = kvm() else { return };
    let cmd = "spinlock iters=60 hold=50 spins=16";
    let plain = boot(&kvm, &format!("{cmd} mode=pause"), 3, "none");
    assert!(plain.status.is_ok(), "{}", plain.status);
    assert_eq!(hv_count(&plain, "hvcall_spin_wait"), 0);
    let notify = boot(&kvm, &format!("{cmd} mode=notify"), 3, "long-spin-notify");
    assert!(
        notify.status.is_ok(),
        "{}\n{}",
        notify.status,
        notify.console
    );
    assert_eq!(field(&notify, "rec=phase", "count"), Some(180));
    // Timing is the host's business; report it, do not assert it.
    for (name, o) in [("pause", &plain), ("notify", &notify)] {
        let p = &o.phases[0];
        eprintln!(
            "spinlock {name}: {} us vCPU CPU per acquisition, hv spin waits {}",
            p.cpu.vcpu_ns / 1000 / 180,
            hv_count(o, "hvcall_spin_wait")
        );
    }
}

#[test]
fn unsupported_enlightenments_are_refused_with_the_probe_reason() {
    let Some(kvm) = kvm() else { return };
    for e in registry() {
        let Err(reason) = e.probe(&kvm) else { continue };
        let cfg = PartitionConfig {
            cmdline: "exit-floor tests=nop iters=1".into(),
            enlightenments: Some(EnlightenmentSet::parse(e.name()).unwrap()),
            ..Default::default()
        };
        let err = Partition::new(&kvm, cfg, hv::GUEST_IMAGE).expect_err("must refuse");
        assert!(err.to_string().contains(&reason), "{}: {err}", e.name());
        eprintln!("skipped {}: {reason}", e.name());
    }
}

#[test]
fn shootdown_by_hypercall_without_the_feature_is_refused_by_the_guest() {
    let Some(kvm) = kvm() else { return };
    // The guest only calls what is exposed; with none exposed it refuses cleanly.
    let o = boot(&kvm, "tlb-shootdown iters=1 mode=hypercall", 2, "none");
    assert_eq!(
        o.status,
        hv::RunStatus::GuestExit(hvlab_protocol::status::UNSUPPORTED)
    );
}
