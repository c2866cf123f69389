//! The Hyper-V (TLFS) interface with a real guest (`hyperv-probe`): CPUID leaves for the set,
//! synthetic MSR semantics (#GP on a reserved bit), hypercall status codes for bad inputs with
//! exactly one exit per call, a flush hypercall that flushes, and TSC-page time with no exits.
//! Fails, naming the fix, when /dev/kvm is unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use common::{boot_enlightened as boot, enl, exits, field, kvm, named_phase as phase};
use hvlab_protocol::hyperv as tlfs;

#[test]
fn probe_guest_checks_leaves_msrs_status_codes_and_tsc_page() {
    let kvm = kvm();
    let set = "kvm-clock,hv-vpindex,hv-time,hv-frequencies,hv-tlbflush";
    let o = boot(&kvm, "hyperv-probe iters=40", 1, set);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    assert!(
        o.notes.iter().any(|n| n.contains("hyperv transport")),
        "{:?}",
        o.notes
    );
    // CPUID: only the bits of the set.
    let privs = field(&o, "hyperv=1", "privileges").unwrap() as u32;
    assert_eq!(
        privs,
        tlfs::PRIV_HYPERCALL_MSRS
            | tlfs::PRIV_VP_INDEX
            | tlfs::PRIV_TIME_REF_COUNT
            | tlfs::PRIV_REFERENCE_TSC
            | tlfs::PRIV_FREQUENCY_MSRS
    );
    let rec = field(&o, "hyperv=1", "recommendations").unwrap() as u32;
    assert_eq!(rec, tlfs::REC_REMOTE_TLB_FLUSH);
    assert_eq!(field(&o, "hyperv=1", "spin_retries"), Some(0xffff_ffff));
    assert_eq!(field(&o, "hyperv=1", "max_vps"), Some(1));
    // The runtime's boot-time setup (pv::hyperv::init) set GUEST_OS_ID and enabled the
    // hypercall page and, with hv-time, the TSC page.
    assert_eq!(field(&o, "rec=info", "boot_hypercall_page"), Some(1));
    assert_eq!(field(&o, "rec=info", "boot_tsc_page"), Some(1));
    // KVM's leaves moved to 0x40000100 and the runtime still found kvm-clock there.
    let kvm_bits = field(&o, "rec=info", "kvm_features").unwrap() as u32;
    assert_ne!(kvm_bits, 0, "{}", o.console);

    // Six bad calls: six exits (the transport wrmsr), six hypercalls, six errors.
    let bad = phase(&o, "hypercall-bad");
    assert_eq!(field(&o, "name=hypercall-bad", "wrong"), Some(0));
    assert_eq!(exits(bad, "msr_write"), 6, "{:?}", bad.exits);
    assert_eq!(enl(bad, "hyperv_hypercalls"), 6);
    assert_eq!(enl(bad, "hyperv_hypercall_errors"), 6);
    assert_eq!(enl(bad, "tlb_flushes_done"), 0);
    // Valid flushes of the caller: one exit and one flush each.
    let flush = phase(&o, "flush-self");
    assert_eq!(exits(flush, "msr_write"), 40, "{:?}", flush.exits);
    assert_eq!(enl(flush, "hyperv_hypercalls"), 40);
    assert_eq!(enl(flush, "hyperv_hypercall_errors"), 0);
    assert_eq!(enl(flush, "flush_targets"), 40);
    assert_eq!(enl(flush, "tlb_flushes_done"), 40);
    // Time: 0 exits per TSC-page read, 1 per TIME_REF_COUNT read.
    let page = phase(&o, "tsc-page");
    assert_eq!(page.exits.values().sum::<u64>(), 0, "{:?}", page.exits);
    assert_eq!(field(&o, "name=tsc-page", "backwards"), Some(0));
    let msr = phase(&o, "time-ref-count");
    assert_eq!(exits(msr, "msr_read"), 40, "{:?}", msr.exits);
}

#[test]
fn reserved_hypercall_msr_bit_is_a_gp() {
    let kvm = kvm();
    let o = boot(
        &kvm,
        "hyperv-probe fault=hypercall-reserved",
        1,
        "hv-vpindex",
    );
    assert!(!o.status.is_ok(), "{}", o.console);
    assert!(o.console.contains("expect_fault=gp"), "{}", o.console);
    assert_eq!(field(&o, "rec=fault", "vector"), Some(13), "{}", o.console);
}

#[test]
fn without_hyperv_the_guest_sees_kvm_and_no_hyperv_leaves() {
    let kvm = kvm();
    let o = boot(&kvm, "hyperv-probe", 1, "kvm-clock");
    // Unsupported (status 5): no Hyper-V leaves.
    assert!(!o.status.is_ok());
    assert!(!o.console.contains("hyperv=1"), "{}", o.console);
    assert!(o.console.contains("hypervisor=KVMKVMKVM"), "{}", o.console);
}

#[test]
fn ipis_and_flushes_reach_exactly_the_named_vcpus() {
    let kvm = kvm();
    let set = "hv-vpindex,hv-tlbflush,hv-tlbflush-ext,hv-ipi";
    let o = boot(&kvm, "hyperv-probe iters=20", 3, set);
    assert!(o.status.is_ok(), "{}\n{}", o.status, o.console);
    let rec = field(&o, "hyperv=1", "recommendations").unwrap() as u32;
    assert_eq!(
        rec,
        tlfs::REC_REMOTE_TLB_FLUSH | tlfs::REC_EX_PROCESSOR_MASKS | tlfs::REC_CLUSTER_IPI
    );
    // Multicast to both APs: 1 exit and 2 MSIs per call.
    let p = phase(&o, "hv-ipi-multicast");
    assert_eq!(exits(p, "msr_write"), 20, "{:?}", p.exits);
    assert_eq!(enl(p, "hyperv_hypercalls"), 20);
    assert_eq!(enl(p, "msis_sent"), 40);
    // Ex form naming VP 2 only: 1 MSI per call (the guest checked VP 1 received none).
    let p = phase(&o, "hv-ipi-ex-one");
    assert_eq!(exits(p, "msr_write"), 20, "{:?}", p.exits);
    assert_eq!(enl(p, "msis_sent"), 20);
    // Flushes of both APs: 1 exit per call, both targets kicked, no interrupt sent.
    let p = phase(&o, "hv-flush-others");
    assert_eq!(exits(p, "msr_write"), 20, "{:?}", p.exits);
    assert_eq!(enl(p, "flush_targets"), 40);
    assert_eq!(enl(p, "kicks"), 40);
    assert_eq!(enl(p, "msis_sent"), 0);
    let done = enl(p, "tlb_flushes_done");
    assert!(done > 0 && done <= 40, "{done}");
    let p = phase(&o, "hv-flush-ex-one");
    assert_eq!(exits(p, "msr_write"), 20, "{:?}", p.exits);
    assert_eq!(enl(p, "flush_targets"), 20);
    assert_eq!(enl(p, "kicks"), 20);
    assert_eq!(enl(p, "hyperv_hypercall_errors"), 0);
}

#[test]
fn a_hypercall_from_cpl3_faults_in_the_guest_and_never_reaches_hv() {
    let kvm = kvm();
    let o = boot(
        &kvm,
        "hyperv-probe fault=cpl3-hypercall",
        1,
        "hv-vpindex,hv-tlbflush",
    );
    // The page's transport is `wrmsr`, which is privileged: at CPL3 the CPU raises #GP before
    // any exit (on every x86 host; KVM and the TLFS never see the call). The runtime reports
    // the fault at the page's wrmsr (offset 11) and ends the run with status 3.
    assert_eq!(
        o.status,
        hv::RunStatus::GuestExit(hvlab_protocol::status::EXCEPTION),
        "{}",
        o.console
    );
    assert!(o.console.contains("expect_fault=cpl3"), "{}", o.console);
    assert!(!o.console.contains("cpl3_status="), "{}", o.console);
    assert_eq!(field(&o, "rec=fault", "vector"), Some(13), "{}", o.console);
    let page = field(&o, "expect_fault=cpl3", "hypercall_page").unwrap();
    assert_eq!(
        field(&o, "rec=fault", "rip"),
        Some(page + 11),
        "{}",
        o.console
    );
    assert_eq!(enl(&o.totals, "hyperv_hypercalls"), 0, "{:?}", o.totals);
}
