//! Enlightenments with real guests: CPUID bits follow the set, hv's hypercalls move the
//! counters they should, every TLB shootdown variant is correct, and unsupported variants are
//! refused with the probe's reason. Fails (naming the fix) when /dev/kvm is unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{field, kvm};
use hv::enlightenments::{EnlightenmentSet, registry};
use hv::partition::{Partition, PartitionConfig, PartitionOutcome};

/// `cmdline` on `vcpus` vCPUs with enlightenment set `set`.
fn config(cmdline: &str, vcpus: u32, set: &str, tracepoints: bool) -> PartitionConfig {
    PartitionConfig {
        cmdline: format!("{cmdline} cpus={vcpus}"),
        vcpus,
        enlightenments: Some(EnlightenmentSet::parse(set).expect("valid set")),
        tracepoints,
        ..Default::default()
    }
}

/// Boots `cfg` and waits (60 s at most) for the outcome.
fn boot_config(kvm: &kvm_ioctls::Kvm, cfg: PartitionConfig) -> PartitionOutcome {
    let p = Partition::new(kvm, cfg, hv::GUEST_IMAGE).expect("partition builds");
    let r = p.start().expect("starts");
    r.wait(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    )
}

fn boot(kvm: &kvm_ioctls::Kvm, cmdline: &str, vcpus: u32, set: &str) -> PartitionOutcome {
    boot_config(kvm, config(cmdline, vcpus, set, false))
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
    let kvm = kvm();
    for e in registry() {
        if e.probe(&kvm).is_err() || e.kvm_pv_bits() == 0 {
            continue;
        }
        let on = boot(&kvm, "exit-floor tests=nop iters=1", 1, e.name());
        assert!(on.status.is_ok(), "{}: {}", e.name(), on.status);
        let kvm_bits = field(&on, "rec=info", "kvm_features").unwrap_or(0) as u32;
        assert_eq!(kvm_bits, e.kvm_pv_bits(), "{}: KVM bits", e.name());
        // hv's own leaves offer no private hypercall: its hypercalls are Hyper-V's.
        assert_eq!(
            field(&on, "rec=info", "hv_features"),
            Some(0),
            "{}",
            e.name()
        );
    }
    let off = boot(&kvm, "exit-floor tests=nop iters=1", 1, "none");
    assert_eq!(field(&off, "rec=info", "kvm_features"), Some(0));
    assert_eq!(field(&off, "rec=info", "hv_features"), Some(0));
    assert!(off.console.contains("apic=xapic"), "x2apic off means xAPIC");
}

#[test]
fn tlb_shootdown_every_variant_reads_the_new_frame() {
    let kvm = kvm();
    // (set, mode, expect IPIs)
    let cases = [
        ("none", "ipi", true),
        ("x2apic", "ipi", true),
        // The seed's old name is an alias of hv-vpindex,hv-tlbflush: it runs the TLFS call.
        ("tlb-flush-hypercall", "hv-space", false),
        ("hv-vpindex,hv-tlbflush", "hv-list", false),
        ("hv-vpindex,hv-tlbflush,hv-tlbflush-ext", "hv-ex", false),
        (
            "hv-vpindex,hv-tlbflush,hv-tlbflush-ext",
            "hv-list-ex",
            false,
        ),
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
            assert_eq!(hv_count(&o, "hvcall_flush_tlb"), 5, "{set}/{mode}");
            assert_eq!(hv_count(&o, "tlb_flushes_done"), 5 * 2, "{set}/{mode}");
            assert_eq!(hv_count(&o, "msis_sent"), 0, "{set}/{mode}");
            if mode.starts_with("hv-") {
                // One hypercall exit per shootdown, no error status.
                assert_eq!(hv_count(&o, "hyperv_hypercalls"), 5, "{set}/{mode}");
                assert_eq!(hv_count(&o, "hyperv_hypercall_errors"), 0, "{set}/{mode}");
                assert_eq!(field(&o, "rec=phase", "hvcall_timeouts"), Some(0));
                let shoot = o
                    .phases
                    .iter()
                    .find(|p| p.exits.get("msr_write") == Some(&5));
                assert!(
                    shoot.is_some(),
                    "{set}/{mode}: 5 MSR exits in the shootdown phase"
                );
            }
        }
    }
    // The control: without a shootdown a CPL0 reader must be caught reading stale data, or the
    // `stale_reads == 0` checks above prove nothing. Where guest CPL0 runs in KVM's instruction
    // emulator (kvm_pvm) every CPL0 read walks the page tables afresh and cannot be stale: there
    // the CPL3 test below carries the stale-read check, and this one the IPI/hypercall counts.
    let control = boot(&kvm, "tlb-shootdown iters=5 mode=none", 3, "none");
    assert!(
        control.status.is_ok(),
        "{}\n{}",
        control.status,
        control.console
    );
    let stale = field(&control, "rec=phase", "stale_reads").expect("stale_reads reported");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "cpl0 none: stale_reads={stale}: CPL0 is emulated here, stale reads are checked at CPL3"
        );
    } else {
        assert!(
            stale > 0,
            "mode=none at CPL0 read no stale data, so the fresh reads above prove nothing:\n{}",
            control.console
        );
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
fn tlb_shootdown_at_cpl3_reads_stale_without_shootdown_and_fresh_with_each() {
    let kvm = kvm();
    // The control: no shootdown must be caught, or the check below proves nothing. CPL3
    // readers (and a CPL3 remap) see KVM's shadow-MMU staleness even where CPL0 is emulated.
    let none = boot(
        &kvm,
        "tlb-shootdown iters=5 mode=none reader=cpl3",
        3,
        "none",
    );
    assert!(none.status.is_ok(), "{}\n{}", none.status, none.console);
    let stale = field(&none, "rec=phase", "stale_reads").expect("stale_reads reported");
    eprintln!("cpl3 none: stale_reads={stale}");
    // Measured on nested KVM (kvm_pvm): every check reads stale without a shootdown. A host
    // whose TLB drops the entry on its own fails here: there the fresh reads below prove nothing.
    assert!(
        stale > 0,
        "mode=none read no stale data, so the fresh reads below prove nothing:\n{}",
        none.console
    );
    let mut cases = vec![
        ("none", "ipi"),
        ("x2apic", "ipi"),
        ("hv-vpindex,hv-tlbflush", "hv-space"),
        ("hv-vpindex,hv-tlbflush", "hv-list"),
        ("hv-vpindex,hv-tlbflush,hv-tlbflush-ext", "hv-ex"),
        ("hv-vpindex,hv-tlbflush,hv-tlbflush-ext", "hv-list-ex"),
    ];
    if EnlightenmentSet::parse("pv-tlb-flush")
        .unwrap()
        .resolve(&kvm)
        .is_ok()
    {
        cases.push(("pv-tlb-flush", "pv-tlb-flush"));
    }
    for (set, mode) in cases {
        let o = boot(
            &kvm,
            &format!("tlb-shootdown iters=5 mode={mode} reader=cpl3"),
            3,
            set,
        );
        assert!(
            o.status.is_ok(),
            "{set}/{mode}: {}\n{}",
            o.status,
            o.console
        );
        let stale = field(&o, "rec=phase", "stale_reads");
        eprintln!("cpl3 {set}/{mode}: stale_reads={stale:?}");
        assert_eq!(stale, Some(0), "{set}/{mode}");
    }
}

#[test]
fn hv_spinlocks_yield_once_per_slow_wait() {
    let kvm = kvm();
    let cmd = "spinlock iters=60 hold=50 spins=16";
    let plain = boot(&kvm, &format!("{cmd} mode=pause"), 3, "none");
    assert!(plain.status.is_ok(), "{}", plain.status);
    assert_eq!(hv_count(&plain, "hyperv_spin_yields"), 0);
    // Hyper-V's notification: one hypercall exit per slow wait, each a host-thread yield.
    let hv = boot(&kvm, &format!("{cmd} mode=hv-spinlocks"), 3, "hv-spinlocks");
    assert!(hv.status.is_ok(), "{}\n{}", hv.status, hv.console);
    assert_eq!(field(&hv, "rec=phase", "count"), Some(180));
    let slow = field(&hv, "rec=phase", "slow_waits").unwrap();
    eprintln!("spinlock hv-spinlocks: {slow} slow waits (notifications)");
    assert_eq!(hv_count(&hv, "hyperv_hypercalls"), slow);
    assert_eq!(hv_count(&hv, "hyperv_spin_yields"), slow);
    assert_eq!(hv_count(&hv, "hyperv_hypercall_errors"), 0);
    // Timing is the host's business; report it, do not assert it.
    for (name, o) in [("pause", &plain), ("hv-spinlocks", &hv)] {
        let p = &o.phases[0];
        eprintln!(
            "spinlock {name}: {} us vCPU CPU per acquisition, {} spin yields",
            p.cpu.vcpu_ns / 1000 / 180,
            hv_count(o, "hyperv_spin_yields")
        );
    }
}

#[test]
fn spinlock_pv_sched_yield_runs_where_exposed_and_is_refused_otherwise() {
    let kvm = kvm();
    let cmd = "spinlock iters=30 hold=50 spins=16 mode=pv-sched-yield";
    match EnlightenmentSet::parse("pv-sched-yield")
        .unwrap()
        .resolve(&kvm)
    {
        Ok(_) => {
            let o = boot(&kvm, cmd, 3, "pv-sched-yield");
            assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
            assert_eq!(field(&o, "rec=phase", "count"), Some(90));
        }
        Err(e) => {
            // Skipped with the probe's reason; without the feature the guest refuses the mode.
            eprintln!("skipped spinlock pv-sched-yield: {e}");
            let o = boot(&kvm, cmd, 2, "none");
            assert_eq!(
                o.status,
                hv::RunStatus::GuestExit(hvlab_protocol::status::UNSUPPORTED),
                "{}",
                o.console
            );
            assert!(
                o.console.contains("pv-sched-yield_not_exposed"),
                "{}",
                o.console
            );
        }
    }
}

#[test]
fn unsupported_enlightenments_are_refused_with_the_probe_reason() {
    let kvm = kvm();
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
    let kvm = kvm();
    // The guest only calls what is exposed; with none exposed it refuses cleanly.
    let o = boot(&kvm, "tlb-shootdown iters=1 mode=hv-space", 2, "none");
    assert_eq!(
        o.status,
        hv::RunStatus::GuestExit(hvlab_protocol::status::UNSUPPORTED)
    );
}

fn boot_traced(kvm: &kvm_ioctls::Kvm, cmdline: &str, vcpus: u32, set: &str) -> PartitionOutcome {
    boot_config(kvm, config(cmdline, vcpus, set, true))
}

/// The guest's `rec=phase` line for phase `name`.
fn phase_line<'a>(o: &'a PartitionOutcome, name: &str) -> Option<&'a str> {
    o.console
        .lines()
        .find(|l| l.contains("rec=phase") && l.contains(&format!(" name={name} ")))
}

/// Metric `key` of the guest's phase `name`.
fn metric(o: &PartitionOutcome, name: &str, key: &str) -> Option<u64> {
    phase_line(o, name)?
        .split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))?
        .parse()
        .ok()
}

/// The host's counter deltas of the guest's phase `name`.
fn host_phase<'a>(o: &'a PartitionOutcome, name: &str) -> Option<&'a hv::counters::PhaseDelta> {
    let id: u32 = phase_line(o, name)?
        .split_whitespace()
        .find_map(|t| t.strip_prefix("id="))?
        .parse()
        .ok()?;
    o.phases.iter().find(|p| p.id == id)
}

/// Tracepoint `tp` of phase `name`; `None` when tracepoints could not be opened here.
fn tracepoint(o: &PartitionOutcome, name: &str, tp: &str) -> Option<u64> {
    host_phase(o, name)?.tracepoints.get(tp).copied()
}

#[test]
fn ipi_every_runnable_variant_delivers_and_counts_its_mechanism() {
    let kvm = kvm();
    const ITERS: u64 = 10;
    const VCPUS: u32 = 4;
    let targets = u64::from(VCPUS - 1);
    // (set, mode, phase suffix)
    let cases = [
        ("none", "apic", "xapic"),
        ("x2apic", "apic", "x2apic"),
        ("hv-vpindex,hv-ipi", "hv-ipi", "hv-ipi"),
        ("hv-vpindex,hv-ipi", "hv-ipi-ex", "hv-ipi-ex"),
        ("pv-ipi", "pv-ipi", "pv-ipi"),
    ];
    for (set, mode, suffix) in cases {
        if let Err(e) = EnlightenmentSet::parse(set).unwrap().resolve(&kvm) {
            eprintln!("skipped ipi {set}: {e}");
            continue;
        }
        let o = boot_traced(&kvm, &format!("ipi iters={ITERS} mode={mode}"), VCPUS, set);
        assert!(o.status.is_ok(), "{set}: {}\n{}", o.status, o.console);
        let (uni, multi) = ("ipi-unicast".to_string(), "ipi-multicast".to_string());
        for (phase, per_op) in [(&uni, 1), (&multi, targets)] {
            assert_eq!(
                metric(&o, phase, "targets"),
                Some(ITERS * per_op),
                "{phase}"
            );
            assert_eq!(
                metric(&o, phase, "received"),
                Some(ITERS * per_op),
                "{phase}"
            );
            assert_eq!(metric(&o, phase, "failed"), Some(0), "{phase}");
            let h = host_phase(&o, phase).expect("host counters for the phase");
            let user = h.exits.get("total").copied().unwrap_or(0);
            let msr_writes = h.exits.get("msr_write").copied().unwrap_or(0);
            match mode {
                // The local APIC is in KVM: sending and EOI never leave the kernel.
                "apic" => assert_eq!(user, 0, "{phase}: {:?}", h.exits),
                // Hyper-V's call through the page: exactly one MSR exit to hv per IPI
                // operation, unicast or multicast, and one MSI per target.
                "hv-ipi" | "hv-ipi-ex" => {
                    assert_eq!(msr_writes, ITERS, "{phase}: {:?}", h.exits);
                    assert_eq!(user, ITERS, "{phase}: {:?}", h.exits);
                    let msis = h.exits_by_device.get("hv-enl:msis_sent").copied();
                    assert_eq!(msis, Some(ITERS * per_op), "{phase}");
                }
                _ => {}
            }
            let (mmio, msr) = (
                tracepoint(&o, phase, "kvm_mmio"),
                tracepoint(&o, phase, "kvm_msr"),
            );
            let (Some(mmio), Some(msr)) = (mmio, msr) else {
                eprintln!("{phase}: tracepoints unavailable, mechanism counts not checked");
                continue;
            };
            eprintln!(
                "{phase}: per op: {:.2} userspace exits, {:.2} kvm_mmio, {:.2} kvm_msr",
                user as f64 / ITERS as f64,
                mmio as f64 / ITERS as f64,
                msr as f64 / ITERS as f64
            );
            match suffix {
                // ICR writes (and EOIs) are MMIO accesses to the APIC page; no APIC MSR.
                "xapic" => {
                    assert!(mmio >= ITERS, "{phase}: kvm_mmio {mmio}");
                    assert_eq!(msr, 0, "{phase}: kvm_msr");
                }
                // ICR writes (and EOIs) are MSR writes; no APIC MMIO.
                "x2apic" => {
                    assert_eq!(mmio, 0, "{phase}: kvm_mmio");
                    assert!(msr >= ITERS, "{phase}: kvm_msr {msr}");
                }
                _ => {}
            }
        }
    }
}

fn boot_workload(kvm: &kvm_ioctls::Kvm, cmdline: &str, vcpus: u32, set: &str) -> PartitionOutcome {
    let name = cmdline.split_whitespace().next().unwrap_or("");
    let info = hvlab_workloads::find(name).expect("known workload");
    let mut cfg = config(cmdline, vcpus, set, true);
    hv::run::apply_host_features(info, &mut cfg);
    boot_config(kvm, cfg)
}

#[test]
fn clock_every_source_reads_with_the_exits_its_mechanism_needs() {
    let kvm = kvm();
    const ITERS: u64 = 40;
    let with = EnlightenmentSet::parse("kvm-clock").unwrap().resolve(&kvm);
    // hv-time too: the Hyper-V leaves move KVM's to 0x40000100, where the guest finds them.
    let set = if with.is_ok() {
        "kvm-clock,hv-time"
    } else {
        "hv-time"
    };
    let o = boot_workload(&kvm, &format!("clock iters={ITERS}"), 1, set);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    // (phase, userspace exits per read, of which PIO reads per read)
    let cases = [
        ("clock-tsc", 0, 0),
        ("clock-kvm-clock", 0, 0),
        ("clock-pit", 0, 0),
        ("clock-pm-timer", 1, 1),
        ("clock-rtc", 2, 1),
        ("clock-hv-page", 0, 0),
        ("clock-hv-msr", 1, 0),
    ];
    for (phase, user, ins) in cases {
        if phase == "clock-kvm-clock" && set == "hv-time" {
            assert!(
                o.console
                    .contains("name=clock-kvm-clock reason=kvm-clock_not_exposed")
            );
            continue;
        }
        assert_eq!(metric(&o, phase, "backwards"), Some(0), "{phase}");
        let h = host_phase(&o, phase).unwrap_or_else(|| panic!("{phase} ran\n{}", o.console));
        let total = h.exits.get("total").copied().unwrap_or(0);
        let io_in = h.exits.get("io_in").copied().unwrap_or(0);
        assert_eq!(total, user * ITERS, "{phase}: {:?}", h.exits);
        assert_eq!(io_in, ins * ITERS, "{phase}: {:?}", h.exits);
        if let Some(pio) = tracepoint(&o, phase, "kvm_pio") {
            eprintln!(
                "{phase}: per read {} userspace exits, {:.2} kvm_pio, {} ns (wall, incl. loop)",
                user,
                pio as f64 / ITERS as f64,
                h.wall_ns / ITERS
            );
            if phase == "clock-pit" {
                // Latch command + two data reads, all answered by KVM's PIT; the phase markers'
                // own PIO (what the TSC phase shows) comes on top.
                let markers = tracepoint(&o, "clock-tsc", "kvm_pio").unwrap_or(0);
                assert_eq!(pio - markers, 3 * ITERS, "{phase}");
            }
        }
    }
    // The timer sources count; the RTC's seconds may not change within the phase.
    for phase in [
        "clock-tsc",
        "clock-pit",
        "clock-pm-timer",
        "clock-hv-page",
        "clock-hv-msr",
    ] {
        assert!(metric(&o, phase, "changes").unwrap_or(0) > 0, "{phase}");
    }
}

#[test]
fn interrupts_storm_counts_eois_with_and_without_pv_eoi() {
    let kvm = kvm();
    const ITERS: u64 = 20;
    let mut sets = vec!["none"];
    match EnlightenmentSet::parse("pv-eoi").unwrap().resolve(&kvm) {
        Ok(_) => sets.push("pv-eoi"),
        Err(e) => eprintln!("skipped interrupts pv-eoi: {e}"),
    }
    let mut apic_eois = Vec::new();
    for set in sets {
        let o = boot_traced(&kvm, &format!("interrupts iters={ITERS}"), 1, set);
        assert!(o.status.is_ok(), "{set}: {}\n{}", o.status, o.console);
        for phase in ["interrupts-timer", "interrupts-self-ipi"] {
            let n = metric(&o, phase, "interrupts");
            let pv = metric(&o, phase, "eoi_pv").unwrap_or(u64::MAX);
            let apic = metric(&o, phase, "eoi_apic").unwrap_or(u64::MAX);
            assert_eq!(n, Some(ITERS), "{set}/{phase}");
            assert_eq!(pv + apic, ITERS, "{set}/{phase}: every interrupt ends once");
            assert_eq!(
                metric(&o, phase, "pv_eoi"),
                Some(u64::from(set == "pv-eoi"))
            );
            if set == "none" {
                assert_eq!(pv, 0, "{phase}: no PV EOI without pv-eoi");
            }
            let h = host_phase(&o, phase).expect("host counters");
            assert_eq!(
                h.exits.get("total").copied(),
                Some(0),
                "{set}/{phase}: in-kernel APIC"
            );
            if let (Some(eoi), Some(pv_eoi)) = (
                tracepoint(&o, phase, "kvm_eoi"),
                tracepoint(&o, phase, "kvm_pv_eoi"),
            ) {
                eprintln!(
                    "{set}/{phase}: guest EOI writes {apic}, PV EOIs {pv}; KVM kvm_eoi {eoi}, kvm_pv_eoi {pv_eoi}"
                );
                // KVM ends every interrupt, through the register or the PV flag.
                assert!(eoi >= ITERS, "{set}/{phase}: kvm_eoi {eoi}");
                if set == "none" {
                    assert_eq!(pv_eoi, 0, "{phase}");
                }
            }
            apic_eois.push((set, phase, apic));
        }
    }
    // PV EOI can only remove EOI register writes (on some hosts it removes none).
    for (set, phase, apic) in &apic_eois {
        let base = apic_eois
            .iter()
            .find(|(s, p, _)| *s == "none" && p == phase)
            .map(|t| t.2);
        assert!(Some(*apic) <= base, "{set}/{phase}: {apic} > {base:?}");
    }
}

#[test]
fn idle_no_exit_keeps_hlt_in_the_guest_where_the_host_executes_it() {
    let kvm = kvm();
    const ITERS: u64 = 30;
    if let Err(e) = EnlightenmentSet::parse("idle-no-exit")
        .unwrap()
        .resolve(&kvm)
    {
        eprintln!("skipped idle-no-exit: {e}");
        return;
    }
    let halt_exits = |set: &str| {
        let o = boot_traced(&kvm, &format!("exit-floor tests=hlt iters={ITERS}"), 1, set);
        assert!(o.status.is_ok(), "{set}: {}\n{}", o.status, o.console);
        let h = host_phase(&o, "hlt").expect("hlt phase");
        assert_eq!(
            h.exits.get("total").copied(),
            Some(0),
            "{set}: {:?}",
            h.exits
        );
        let stat = h.kvm_stats.get("halt_exits").copied();
        let wakeups = h.tracepoints.get("kvm_vcpu_wakeup").copied();
        (stat, wakeups)
    };
    let (Some(plain), plain_wake) = halt_exits("none") else {
        eprintln!("KVM stats unavailable: halt_exits not checked");
        return;
    };
    let (Some(idle), idle_wake) = halt_exits("idle-no-exit") else {
        eprintln!("KVM stats unavailable: halt_exits not checked");
        return;
    };
    assert!(
        plain >= ITERS as i64,
        "every HLT exits to KVM without idle-no-exit: {plain}"
    );
    assert!(
        idle <= plain,
        "idle-no-exit cannot add HLT exits: {idle} > {plain}"
    );
    if idle == 0 {
        eprintln!("idle-no-exit: HLT stayed in the guest ({plain} HLT exits without it, 0 with)");
    } else {
        // Nested/PVM hosts run guest CPL0 code in KVM's instruction emulator, which handles HLT
        // itself (counting halt_exits and halting in KVM) whatever KVM_CAP_X86_DISABLE_EXITS
        // says: the capability only lets hardware execute HLT without a VM exit.
        eprintln!(
            "idle-no-exit: HLT still exits to KVM on this host: halt_exits {idle} with it, {plain} without \
             (kvm_vcpu_wakeup {idle_wake:?} / {plain_wake:?}); KVM emulates the guest's HLT here"
        );
    }
}

/// hv-time over a span: the TSC page never goes back across vCPUs, and the reference time the
/// guest saw between the phase's markers matches the host's CLOCK_MONOTONIC between them (the
/// phase's `wall_ns`) within `HV_TIME_TOLERANCE_PPM`, once the markers' own latency (measured
/// by the guest's span-less edge phases) is taken off.
#[test]
fn hv_time_is_monotonic_across_vcpus_and_tracks_the_host_clock() {
    let kvm = kvm();
    // Host-side noise (a preemption at a phase edge, other tests on the same cores) only ever
    // adds host time, so the best of a few spans is the measurement; a clock whose rate is off
    // by more than the tolerance fails every attempt. Monotonicity and 0 exits must hold in all.
    const ATTEMPTS: usize = 3;
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        let ppm = hv_time_span_ppm(&kvm);
        seen.push(ppm);
        if ppm.abs() <= HV_TIME_TOLERANCE_PPM {
            return;
        }
    }
    panic!(
        "hv-time off the host's clock by more than {HV_TIME_TOLERANCE_PPM} ppm in every span: {seen:+.1?}"
    );
}

/// One `clock span-ms` run with hv-time on 2 vCPUs: checks monotonicity across vCPUs and 0
/// exits in every phase, and returns the reference clock's offset from the host's
/// CLOCK_MONOTONIC over the span in ppm, with the phase markers' own latency taken off.
fn hv_time_span_ppm(kvm: &kvm_ioctls::Kvm) -> f64 {
    const SPAN_MS: u64 = 1000;
    let o = boot_workload(
        kvm,
        &format!("clock iters=1 sources=hv-page span-ms={SPAN_MS}"),
        2,
        "hv-time",
    );
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    // (host ns - guest ns) of a phase, and its guest ns.
    let gap = |phase: &str| {
        let m = |k| metric(&o, phase, k).unwrap_or_else(|| panic!("{phase} {k}\n{}", o.console));
        assert_eq!(
            m("backwards"),
            0,
            "{phase}: the TSC page went back across vCPUs"
        );
        let h = host_phase(&o, phase).expect("host phase");
        // 0 exits per TSC-page read: no userspace exit inside the phase.
        assert_eq!(
            h.exits.get("total").copied().unwrap_or(0),
            0,
            "{phase}: {:?}",
            h.exits
        );
        let guest_ns = (m("ref_end") - m("ref_start")) as f64 * 100.0;
        (
            h.wall_ns as f64 - guest_ns,
            guest_ns,
            m("ref_start"),
            m("ref_end"),
        )
    };
    let edges: Vec<f64> = (0..5)
        .map(|i| gap(&format!("clock-hv-edge{i}")).0)
        .collect();
    // Preemption only adds to an edge; the smallest is the markers' own latency.
    let latency = edges.iter().copied().fold(f64::INFINITY, f64::min);
    let (span_gap, guest_ns, start, end) = gap("clock-hv-span");
    let reads = metric(&o, "clock-hv-span", "reads").unwrap_or(0);
    let bsp_reads = metric(&o, "clock-hv-span", "bsp_reads").unwrap_or(0);
    assert!(
        reads > bsp_reads,
        "the AP read the page too: {reads} vs {bsp_reads}"
    );
    assert!(guest_ns >= (SPAN_MS * 1_000_000) as f64, "{start}..{end}");
    let host_ns = guest_ns + span_gap;
    let raw_ppm = -span_gap / host_ns * 1e6;
    let ppm = -(span_gap - latency) / (host_ns - latency) * 1e6;
    eprintln!(
        "hv-time span: guest {guest_ns:.0} ns (ref {start}..{end}), host CLOCK_MONOTONIC {host_ns:.0} ns: {raw_ppm:+.1} ppm raw; marker latency (min of {edges:.0?}) {latency:.0} ns; {ppm:+.1} ppm without it"
    );
    ppm
}

/// The bound, on the rate: the markers' latency (tens of µs here, about 100 ppm of a
/// 1 s span on its own) is measured and taken off first.
const HV_TIME_TOLERANCE_PPM: f64 = 100.0;
