//! The PC platform (`hv/src/devices/platform`) checked from a guest: the `platform` workload
//! under hv (fw_cfg, ACPI, PIC, PCI host bridge, SMP; exact exit counts per device) and under
//! QEMU's `-M pc` (the same image, booted through its multiboot header), plus the reset lines
//! and the platform's absence for workloads that do not ask for it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::request;
use hv::partition::{Partition, PartitionConfig, PartitionOutcome};
use hv::peer::{qemu_binary, run_qemu};
use hv::record::{RecordStatus, RunRecord};
use hv::run::{RecordContext, RunRequest};
use hv::status::RunStatus;
use hvlab_workloads::platform::PHASES;

fn platform_request(vcpus: u32, args: &[(&str, &str)]) -> RunRequest {
    RunRequest {
        vcpus,
        tracepoints: false,
        ..request("platform", args)
    }
}

fn run_hv(req: &RunRequest) -> Vec<RunRecord> {
    let kvm = common::kvm();
    let r = hv::run::run(&kvm, req, &RecordContext::adhoc()).unwrap();
    let o = &r.partitions[0].outcome;
    assert!(
        o.status.is_ok(),
        "status {}\nconsole:\n{}",
        o.status,
        o.console
    );
    r.records
}

fn phase<'a>(records: &'a [RunRecord], name: &str) -> &'a RunRecord {
    records
        .iter()
        .find(|r| r.phase == name)
        .unwrap_or_else(|| panic!("no record for phase {name}: {records:#?}"))
}

#[test]
fn platform_checks_pass_under_hv_with_exact_exits_per_device() {
    for vcpus in [1u32, 3] {
        let records = run_hv(&platform_request(vcpus, &[]));
        for name in PHASES {
            let r = phase(&records, name);
            assert_eq!(r.status, RecordStatus::Ok, "{name}: {:?}", r.notes);
            let by_device: Vec<_> = r
                .exits_by_device
                .iter()
                .filter(|(k, _)| k.starts_with("pio:"))
                .collect();
            eprintln!(
                "vcpus={vcpus} {name}: exits {:?} {by_device:?} metrics {:?}",
                r.exits, r.metrics
            );
        }
        let fw = phase(&records, "fw-cfg");
        assert_eq!(fw.metrics["nb_cpus"], f64::from(vcpus));
        // 7 selector writes; 4+4+8+2+2 item bytes, 4+64 directory bytes, 20 e820 bytes.
        assert_eq!(
            fw.exits_by_device.get("pio:fw-cfg"),
            Some(&(7 + 108)),
            "{fw:#?}"
        );
        let acpi = phase(&records, "acpi");
        assert_eq!(acpi.metrics["lapics"], f64::from(vcpus));
        assert_eq!(acpi.metrics["rsdp"], 0xe0000 as f64);
        assert_eq!(acpi.metrics["rsdp_rev"], 2.0);
        assert_eq!(acpi.metrics["xsdt_tables"], 2.0);
        assert_eq!(acpi.metrics["madt_entries"], f64::from(vcpus + 4));
        assert_eq!(acpi.metrics["pm_timer_port"], 0x608 as f64);
        assert_eq!(acpi.metrics["reset_port"], 0xcf9 as f64);
        // The tables are memory: the only userspace exits are the PM timer reads.
        assert_eq!(
            acpi.exits.get("total").copied(),
            Some(acpi.metrics["pm_reads"] as u64),
            "{acpi:#?}"
        );
        assert_eq!(
            acpi.exits_by_device.get("pio:pm-timer").copied(),
            Some(acpi.metrics["pm_reads"] as u64)
        );
        let pic = phase(&records, "pic");
        assert_eq!(
            (pic.metrics["mask1_start"], pic.metrics["mask2_start"]),
            (251.0, 255.0),
            "hv starts kernels with the PICs as firmware leaves them"
        );
        assert_eq!(
            pic.exits.get("total"),
            Some(&0),
            "the 8259s are KVM's: no userspace exit"
        );
        let pci = phase(&records, "pci");
        assert_eq!(
            pci.exits_by_device.get("pio:pci-config"),
            Some(&pci.ops),
            "one userspace exit per configuration access: {pci:#?}"
        );
        assert_eq!(pci.ops, 11);
        assert_eq!(
            phase(&records, "smp").metrics["aps_ran"],
            f64::from(vcpus - 1)
        );
    }
}

/// Builds and runs one partition of `platform` with `args`, the platform on or off.
fn boot_platform(args: &str, platform: bool) -> PartitionOutcome {
    let kvm = common::kvm();
    let info = hvlab_workloads::find("platform").unwrap();
    let mut cfg = PartitionConfig {
        cmdline: format!("platform cpus=1 {args}"),
        tracepoints: false,
        ..Default::default()
    };
    hv::run::apply_host_features(info, &mut cfg);
    cfg.platform = platform;
    let p = Partition::new(&kvm, cfg, hv::GUEST_IMAGE).unwrap();
    let limit = Duration::from_secs(30);
    p.start().unwrap().wait(Instant::now() + limit, limit)
}

#[test]
fn reset_requests_end_the_run_with_guest_reset() {
    for how in ["i8042", "cf9"] {
        let o = boot_platform(&format!("reset={how}"), true);
        assert_eq!(
            o.status,
            RunStatus::GuestReset { vcpu: 0 },
            "{how}:\n{}",
            o.console
        );
        assert_eq!(o.status.label(), "guest-reset");
    }
}

#[test]
fn without_the_platform_the_guest_finds_no_fw_cfg() {
    let o = boot_platform("", false);
    assert_eq!(o.status, RunStatus::GuestExit(1), "{}", o.console);
    assert!(o.console.contains("fw_cfg signature QEMU"), "{}", o.console);
}

#[test]
fn platform_without_the_full_irqchip_is_refused() {
    let kvm = common::kvm();
    let cfg = PartitionConfig {
        platform: true,
        ..Default::default()
    };
    let e = Partition::new(&kvm, cfg, hv::GUEST_IMAGE).unwrap_err();
    assert!(e.to_string().contains("full irqchip"), "{e}");
}

#[test]
fn platform_checks_pass_under_qemu_pc() {
    let req = platform_request(2, &[]);
    let records = run_qemu(&req, &RecordContext::adhoc()).unwrap();
    if let Err(why) = qemu_binary() {
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0].status, RecordStatus::Skipped(why));
        return;
    }
    for name in PHASES {
        let r = phase(&records, name);
        assert_eq!(r.vmm, "qemu");
        assert_eq!(r.status, RecordStatus::Ok, "{name}: {:?}", r.notes);
        eprintln!("qemu {name}: {:?}", r.metrics);
    }
    assert_eq!(phase(&records, "fw-cfg").metrics["nb_cpus"], 2.0);
    assert_eq!(phase(&records, "acpi").metrics["lapics"], 2.0);
    assert_eq!(phase(&records, "smp").metrics["aps_ran"], 1.0);
}

#[test]
fn qemu_resets_end_its_run_too() {
    let Ok(qemu) = qemu_binary() else {
        return; // platform_checks_pass_under_qemu_pc asserts the skipped record
    };
    // Under -no-reboot a reset ends QEMU with status 0, before the guest's "ignored" check.
    for how in ["i8042", "cf9"] {
        let o = hv::peer::qemu::boot(&qemu, &platform_request(1, &[("reset", how)])).unwrap();
        match &o.status {
            RunStatus::Stopped(why) => assert!(why.contains("guest reset"), "{how}: {why}"),
            other => panic!("{how}: {other}\n{}", o.console),
        }
        assert!(
            o.console.contains("name=smp"),
            "{how}: the checks ran:\n{}",
            o.console
        );
        assert!(!o.console.contains("ignored"), "{how}:\n{}", o.console);
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// What a multiboot loader (QEMU's, `hv boot`'s) reads from the image: a header in the first
/// 8 KiB whose a.out-kludge fields describe exactly the ELF's one loadable segment, so loading
/// the file flat gives the same memory image as loading the ELF.
#[test]
fn guest_image_carries_a_multiboot_header_matching_its_elf_segment() {
    let img = hv::GUEST_IMAGE;
    let off = (0..8192 - 32)
        .step_by(4)
        .find(|&o| le32(img, o) == 0x1bad_b002)
        .expect("multiboot magic in the first 8 KiB");
    let (flags, sum) = (le32(img, off + 4), le32(img, off + 8));
    assert_eq!(
        0x1bad_b002u32.wrapping_add(flags).wrapping_add(sum),
        0,
        "checksum"
    );
    assert_ne!(
        flags & 1 << 16,
        0,
        "address fields (a.out kludge): QEMU refuses ELF64"
    );
    let [header, load, load_end, bss_end, entry] =
        [12, 16, 20, 24, 28].map(|f| u64::from(le32(img, off + f)));

    // The ELF64 program headers: exactly one PT_LOAD.
    assert_eq!(img[4], 2, "ELF64");
    let (phoff, phentsize, phnum) = (
        le64(img, 0x20) as usize,
        usize::from(u16::from_le_bytes([img[0x36], img[0x37]])),
        usize::from(u16::from_le_bytes([img[0x38], img[0x39]])),
    );
    let loads: Vec<usize> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&p| le32(img, p) == 1)
        .collect();
    assert_eq!(loads.len(), 1, "one loadable segment");
    let p = loads[0];
    let (p_offset, p_vaddr, p_filesz, p_memsz) = (
        le64(img, p + 8),
        le64(img, p + 16),
        le64(img, p + 32),
        le64(img, p + 40),
    );
    assert_eq!(load, p_vaddr, "load_addr = the segment's address");
    assert_eq!(
        off as u64 - (header - load),
        p_offset,
        "the file offset QEMU derives for load_addr is the segment's"
    );
    assert!(
        load_end > load && load_end - load <= p_filesz,
        "load_end within the file bytes"
    );
    assert_eq!(
        bss_end,
        p_vaddr + p_memsz,
        "bss_end = the segment's end in memory"
    );
    assert!((load..load_end).contains(&entry));
    assert_eq!(
        img[(p_offset + entry - load) as usize],
        0xfa,
        "entry starts with cli"
    );
}
