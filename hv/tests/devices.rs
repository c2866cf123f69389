//! Integration tests of the block and console devices: real guests through /dev/kvm. Each test
//! fails (naming the fix) on a host without KVM access.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hv::devices::{DeviceOptions, DeviceVariant};
use hv::partition::{Partition, PartitionConfig, PartitionOutcome};

/// Always `Some` (a host without /dev/kvm fails in `common::kvm`); the `Option` stays for the
/// call sites written when it could skip.
fn boot(opts: &DeviceOptions, cmdline: &str) -> Option<PartitionOutcome> {
    boot_within(opts, cmdline, Duration::from_secs(60))
}

/// [`boot`] with the run limited to `limit`.
fn boot_within(opts: &DeviceOptions, cmdline: &str, limit: Duration) -> Option<PartitionOutcome> {
    let kvm = common::kvm();
    let workload = cmdline.split_whitespace().next().unwrap_or("");
    let info = hvlab_workloads::find(workload).expect("known workload");
    let words = hv::devices::cmdline_words(opts, info.devices);
    let mut cfg = PartitionConfig {
        cmdline: format!("{cmdline} {}", words.join(" ")),
        tracepoints: false,
        ..Default::default()
    };
    hv::run::apply_host_features(info, &mut cfg);
    let mut p = Partition::new(&kvm, cfg, hv::GUEST_IMAGE).expect("partition");
    hv::devices::attach(&mut p, opts, info.devices).expect("attach");
    let r = p.start().expect("start");
    Some(r.wait(Instant::now() + limit, limit))
}

fn opts(variant: DeviceVariant) -> DeviceOptions {
    DeviceOptions {
        variant,
        event_idx: true,
        ..Default::default()
    }
}

use common::assert_ok;

/// The `rec=phase` line of phase `name`: (id, key=value pairs).
fn phase(o: &PartitionOutcome, name: &str) -> (u32, Vec<(String, u64)>) {
    let line = o
        .console
        .lines()
        .find(|l| l.starts_with("HVLAB rec=phase") && l.contains(&format!(" name={name} ")))
        .unwrap_or_else(|| panic!("no phase {name} in:\n{}", o.console));
    let mut id = 0;
    let mut kv = Vec::new();
    for w in line.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            if let Ok(n) = v.parse::<u64>() {
                if k == "id" {
                    id = n as u32;
                }
                kv.push((k.to_string(), n));
            }
        }
    }
    (id, kv)
}

fn metric(kv: &[(String, u64)], key: &str) -> u64 {
    kv.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

/// Userspace exits hv counted inside phase `name`, and its op count.
fn exits_in(o: &PartitionOutcome, name: &str) -> (u64, u64) {
    let (id, kv) = phase(o, name);
    let d = o.phases.iter().find(|p| p.id == id).expect("phase delta");
    (
        d.exits.get("total").copied().unwrap_or(0),
        metric(&kv, "ops"),
    )
}

/// p50 and p99 of phase `name`'s latency histogram, in TSC cycles (bucket lower bounds).
fn percentiles(o: &PartitionOutcome, name: &str) -> (u64, u64) {
    let (id, _) = phase(o, name);
    let line = o
        .console
        .lines()
        .find(|l| l.starts_with(&format!("HVLAB rec=hist id={id} ")))
        .expect("histogram");
    let mut buckets: Vec<(usize, u64)> = line
        .split("b=")
        .nth(1)
        .unwrap_or("")
        .trim()
        .split(',')
        .filter_map(|p| {
            let (b, n) = p.split_once(':')?;
            Some((b.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    buckets.sort();
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    let at = |q: f64| {
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &buckets {
            seen += n;
            if seen >= want {
                return hvlab_protocol::hist_bucket_low(*b);
            }
        }
        0
    };
    (at(0.5), at(0.99))
}

fn temp_image(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hvlab-devtest-{}-{name}.img", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn blk_io_on_ata_writes_reads_and_verifies() {
    let o = opts(DeviceVariant::Emulated);
    let Some(r) = boot(&o, "blk-io rw=write count=8 pattern=rand") else {
        return;
    };
    assert_ok(&r);
    let (_, kv) = phase(&r, "blk-verify");
    assert_eq!(metric(&kv, "ops"), 8);
    let r = boot(&o, "blk-io rw=mixed count=8 width=32 multiple=4 lba48=1").expect("kvm");
    assert_ok(&r);
}

#[test]
fn blk_io_on_virtio_passes_at_qd1_qd8_and_polling() {
    for (evidx, poll, args) in [
        (true, false, "blk-io rw=write count=16"),
        (true, false, "blk-io rw=read count=16 qd=8 pattern=rand"),
        (false, false, "blk-io rw=mixed count=16 qd=8 pattern=rand"),
        (true, true, "blk-io rw=read count=16"),
    ] {
        let mut o = opts(DeviceVariant::Synthetic);
        o.event_idx = evidx;
        o.polling = poll;
        let Some(r) = boot(&o, args) else { return };
        assert_ok(&r);
    }
}

#[test]
fn data_written_through_one_device_kind_reads_back_through_the_other() {
    let img = temp_image("cross");
    let mut emu = opts(DeviceVariant::Emulated);
    emu.disk = Some(img.clone());
    emu.disk_size = 4 << 20;
    let mut syn = opts(DeviceVariant::Synthetic);
    syn.disk = Some(img.clone());
    // ATA writes, virtio-blk reads (no prep: the data must come from the first run).
    let Some(r) = boot(&emu, "blk-io rw=write count=8 seed=77 span=1m") else {
        return;
    };
    assert_ok(&r);
    let r = boot(&syn, "blk-io rw=read prep=0 count=8 seed=77 span=1m").expect("kvm");
    assert_ok(&r);
    // And the other way round, with a different pattern and random offsets.
    let r = boot(
        &syn,
        "blk-io rw=write count=8 seed=91 pattern=rand span=1m qd=4",
    )
    .expect("kvm");
    assert_ok(&r);
    let r = boot(
        &emu,
        "blk-io rw=read prep=0 count=8 seed=91 pattern=rand span=1m",
    )
    .expect("kvm");
    assert_ok(&r);
    // The image file holds the pattern: the sector header is (magic ^ seed, lba).
    let bytes = std::fs::read(&img).expect("image");
    let word = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
    assert_eq!(
        word(0),
        0x4856_4c42_0000_0000 ^ 77,
        "sector 0 written by the ATA run"
    );
    assert_eq!(word(8 * 512 + 8), 8);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn hostile_virtio_rings_put_the_device_into_needs_reset() {
    for (how, expect) in [
        ("desc-index", "out of range"),
        ("loop", "loops"),
        ("long", "longer than the queue"),
        ("oob-addr", "outside guest memory"),
        ("len-overflow", "overflows"),
        ("avail-idx", "queue 0"),
        ("reready-overlap", "overlaps"),
        ("renegotiate", "without a reset"),
    ] {
        let Some(r) = boot(
            &opts(DeviceVariant::Synthetic),
            &format!("blk-io how={how}"),
        ) else {
            return;
        };
        assert_ok(&r);
        assert!(
            r.console.contains(&format!("hostile={how} ")) && r.console.contains("detected=1"),
            "{how}: {}",
            r.console
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("DEVICE_NEEDS_RESET") && n.contains(expect)),
            "{how}: notes {:?}",
            r.notes
        );
    }
}

/// Finding 1 of issue 8: after DRIVER_OK the guest re-readies queue 0 with its available ring
/// on the last 4 bytes of RAM and publishes an entry. hv used to serve that queue forever inside
/// the device lock (the guest's next register read, the run's timeout and teardown all hung);
/// now re-readying validates the rings. The run has a 20 s limit and the test gives up waiting
/// for hv 40 s later, so a hang fails the test instead of hanging it.
#[test]
fn hostile_virtio_reready_at_end_of_ram_needs_reset_and_does_not_hang() {
    let ram = PartitionConfig::default().mem_bytes;
    let how = "reready-end-of-ram";
    let cmdline = format!("blk-io how={how} ram={ram}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(boot_within(
            &opts(DeviceVariant::Synthetic),
            &cmdline,
            Duration::from_secs(20),
        ));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hv did not return within 60 s of a 20 s run: the device hung");
    let Some(r) = r else {
        return;
    };
    assert_ok(&r);
    assert!(
        r.console.contains(&format!("hostile={how} ")) && r.console.contains("detected=1"),
        "{}",
        r.console
    );
    assert!(
        r.notes.iter().any(|n| n.contains("DEVICE_NEEDS_RESET")
            && n.contains("queue 0 rings lie outside guest memory")),
        "notes {:?}",
        r.notes
    );
}

#[test]
fn hostile_ata_commands_end_in_err_with_idnf_or_abrt() {
    for (how, expect) in [("past-end", "IDNF"), ("out-of-order", "out of order")] {
        let Some(r) = boot(&opts(DeviceVariant::Emulated), &format!("blk-io how={how}")) else {
            return;
        };
        assert_ok(&r);
        assert!(r.console.contains("detected=1"), "{how}: {}", r.console);
        assert!(
            r.notes.iter().any(|n| n.contains(expect)),
            "{how}: notes {:?}",
            r.notes
        );
    }
}

/// Exits per sector (ATA) and per request (virtio-blk) are the README's numbers; p50/p99
/// latencies are printed, and the one timing claim (synthetic p50 below emulated p50) is
/// asserted only as a plain inequality: the README measured 2.3x between them (185 vs 430 us)
/// and the histogram resolves 19%, so it holds by a wide margin even on a loaded host.
#[test]
fn measure_exits_and_latency_per_io() {
    let tsc_mhz = |r: &PartitionOutcome| r.tsc_khz.map_or(1.0, |k| f64::from(k) / 1000.0);
    let mut rows = Vec::new();
    // (label, variant, event_idx, polling, args, README claim)
    let cases: [(&str, DeviceVariant, bool, bool, &str, Claim); 7] = [
        (
            "ata rep insw (16-bit)",
            DeviceVariant::Emulated,
            true,
            false,
            "blk-io count=16",
            Claim::ExitsPerSector(2.9),
        ),
        (
            "ata rep insd (32-bit)",
            DeviceVariant::Emulated,
            true,
            false,
            "blk-io count=16 width=32",
            Claim::ExitsPerSector(2.9),
        ),
        (
            "ata in loop (16-bit)",
            DeviceVariant::Emulated,
            true,
            false,
            "blk-io count=4 pio=loop",
            Claim::ExitsPerSector(258.0),
        ),
        (
            "ata in loop (32-bit)",
            DeviceVariant::Emulated,
            true,
            false,
            "blk-io count=4 pio=loop width=32",
            Claim::ExitsPerSector(130.0),
        ),
        (
            "virtio qd1 event-idx",
            DeviceVariant::Synthetic,
            true,
            false,
            "blk-io count=32",
            Claim::NoExits,
        ),
        (
            "virtio qd32 event-idx",
            DeviceVariant::Synthetic,
            true,
            false,
            "blk-io count=64 qd=32",
            Claim::NoExits,
        ),
        (
            "virtio qd1 polling",
            DeviceVariant::Synthetic,
            true,
            true,
            "blk-io count=32",
            Claim::NoExits,
        ),
    ];
    let mut p50 = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for (label, variant, evidx, poll, args, claim) in cases {
        let mut o = opts(variant);
        o.event_idx = evidx;
        o.polling = poll;
        let r = boot(&o, args).expect("boot");
        assert_ok(&r);
        let (exits, ops) = exits_in(&r, "blk-read");
        let (_, kv) = phase(&r, "blk-read");
        let sectors = metric(&kv, "sectors");
        assert!(
            ops > 0 && sectors >= ops * 8,
            "{label}: {ops} ops, {sectors} sectors"
        );
        let (p50c, p99c) = percentiles(&r, "blk-read");
        assert!(
            p50c > 0 && p99c >= p50c,
            "{label}: p50 {p50c} p99 {p99c} cycles"
        );
        let us = |c: u64| c as f64 / tsc_mhz(&r);
        let per_sector = exits as f64 / sectors as f64;
        rows.push(format!(
            "{label:24} ops={ops:3} exits={exits:6} exits/op={:8.2} exits/sector={per_sector:7.2} irq/op={:5.2} kicks/op={:5.2} p50={:8.1}us p99={:8.1}us",
            exits as f64 / ops as f64,
            metric(&kv, "interrupts") as f64 / ops as f64,
            metric(&kv, "kicks") as f64 / ops as f64,
            us(p50c),
            us(p99c)
        ));
        p50.insert(label, us(p50c));
        match claim {
            // Compared at the README's precision (2.9 is one decimal, 258 and 130 whole).
            Claim::ExitsPerSector(want) => {
                let scale = if want < 10.0 { 10.0 } else { 1.0 };
                if (per_sector * scale).round() != (want * scale).round() {
                    failures.push(format!(
                        "{label}: {per_sector:.3} userspace exits per sector, README says {want}"
                    ));
                }
            }
            Claim::NoExits => {
                if exits != 0 {
                    failures.push(format!(
                        "{label}: {exits} userspace exits for {ops} requests, README says 0"
                    ));
                }
            }
        }
    }
    println!("4 KiB reads, userspace exits counted by hv inside the phase:");
    for r in &rows {
        println!("{r}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (syn, emu) = (p50["virtio qd1 event-idx"], p50["ata rep insw (16-bit)"]);
    assert!(
        syn < emu,
        "virtio-blk QD1 p50 {syn:.1} us is not below ATA rep insw p50 {emu:.1} us"
    );
}

/// What the README claims for one row of the measurement.
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// hv-counted userspace exits per 512-byte sector.
    ExitsPerSector(f64),
    /// No userspace exit in the measured phase (the kick is an ioeventfd, the interrupt an irqfd).
    NoExits,
}

#[test]
fn console_io_writes_and_reads_back_on_uart_and_virtio_console() {
    for variant in [DeviceVariant::Emulated, DeviceVariant::Synthetic] {
        let Some(r) = boot(&opts(variant), "console-io bytes=256 line=32") else {
            return;
        };
        assert_ok(&r);
        let (_, kv) = phase(&r, "con-readback");
        assert_eq!(metric(&kv, "mismatches"), 0);
        assert_eq!(metric(&kv, "bytes"), 256);
        // The written lines reached the console capture either way.
        assert!(
            r.console.contains("abcdefghijklmnopqrstuvwxyzabcde\n"),
            "{}",
            r.console
        );
        let (exits, lines) = exits_in(&r, "con-write");
        println!(
            "{:?}: con-write {exits} userspace exits for {lines} lines",
            variant
        );
    }
}

// ---- Disk faults, read-only sharing and locking ----

/// The sector blk-io writes at `lba` with `seed` (header magic ^ seed, lba, then a fill word).
fn expected_sector(lba: u64, seed: u64) -> [u8; 512] {
    let fill = (lba ^ (seed << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut s = [0u8; 512];
    for (i, w) in s.chunks_exact_mut(8).enumerate() {
        let v = match i {
            0 => 0x4856_4c42_0000_0000 ^ seed,
            1 => lba,
            _ => fill,
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
    s
}

fn faulty_opts(variant: DeviceVariant, img: &std::path::Path, faults: &[&str]) -> DeviceOptions {
    let mut o = opts(variant);
    o.disk = Some(img.to_path_buf());
    o.disk_size = 1 << 20;
    o.disk_access.faults = faults.iter().map(|f| f.parse().unwrap()).collect();
    o
}

/// The device stats note (`ata: ...` or `virtio-blk: chains=...`).
fn stats_note(o: &PartitionOutcome) -> String {
    o.notes
        .iter()
        .find(|n| n.contains("faults_injected="))
        .cloned()
        .unwrap_or_else(|| panic!("no device stats note in {:?}", o.notes))
}

fn note_count(note: &str, key: &str) -> u64 {
    note.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {note}"))
}

#[test]
fn an_injected_write_fault_is_seen_counted_and_touches_only_its_request() {
    // 8 writes of 8 sectors at LBA 0, 8, ..., 56. The 3rd disk write fails: on virtio-blk that
    // is the 3rd request (sectors 16-23, nothing written); on ATA the 3rd DRQ block, i.e.
    // sector 2 of the first command (sectors 0-1 written, 2-7 not).
    for (variant, bad_first, bad_written) in [
        (DeviceVariant::Synthetic, 16u64, 0u64),
        (DeviceVariant::Emulated, 0, 2),
    ] {
        let img = temp_image(&format!("wfault-{}", variant.name()));
        let o = faulty_opts(variant, &img, &["eio@write:3"]);
        let Some(r) = boot(&o, "blk-io rw=write count=8 seed=5 errors=count") else {
            return;
        };
        assert_ok(&r);
        let (_, w) = phase(&r, "blk-write");
        assert_eq!(metric(&w, "io_errors"), 1, "{}", r.console);
        let (_, v) = phase(&r, "blk-verify");
        assert_eq!(
            (
                metric(&v, "io_errors"),
                metric(&v, "skipped"),
                metric(&v, "ops")
            ),
            (0, 1, 7),
            "verify checks the 7 requests that were written"
        );
        assert_eq!(note_count(&stats_note(&r), "faults_injected"), 1);
        let bytes = std::fs::read(&img).unwrap();
        for lba in 0..(bytes.len() as u64 / 512) {
            let got = &bytes[lba as usize * 512..][..512];
            let in_bad = (bad_first..bad_first + 8).contains(&lba);
            if lba >= 64 || (in_bad && lba >= bad_first + bad_written) {
                assert!(
                    got.iter().all(|&b| b == 0),
                    "{variant:?}: sector {lba} untouched"
                );
            } else {
                assert_eq!(got, expected_sector(lba, 5), "{variant:?}: sector {lba}");
            }
        }
        let _ = std::fs::remove_file(&img);
    }
}

#[test]
fn without_errors_count_the_first_io_error_fails_the_run() {
    let img = temp_image("wfault-fail");
    let o = faulty_opts(DeviceVariant::Synthetic, &img, &["eio@read:1"]);
    let Some(r) = boot(&o, "blk-io rw=read count=4") else {
        return;
    };
    assert!(!r.status.is_ok(), "{}", r.console);
    assert!(r.console.contains("IOERR"), "{}", r.console);
    let _ = std::fs::remove_file(&img);
}

/// One row of the disk fault table: the fault, the device, what the guest printed for the
/// first error, the io_errors of each phase, and what hv counted.
fn fault_row(variant: DeviceVariant, fault: &str, args: &str) -> Option<(String, u64, u64)> {
    let img = temp_image(&format!("table-{}", variant.name()));
    let o = faulty_opts(variant, &img, &[fault]);
    let r = boot(&o, &format!("blk-io {args} errors=count"))?;
    assert_ok(&r);
    let seen = r
        .console
        .lines()
        .find_map(|l| l.strip_prefix("blk-io: io error: "))
        .unwrap_or("-")
        .to_string();
    let errors: u64 = ["blk-prep", "blk-read", "blk-write", "blk-verify"]
        .iter()
        .filter(|p| r.console.contains(&format!(" name={p} ")))
        .map(|p| metric(&phase(&r, p).1, "io_errors") + metric(&phase(&r, p).1, "flush_errors"))
        .sum();
    let note = stats_note(&r);
    let injected = note_count(&note, "faults_injected");
    println!(
        "| {fault} | {} | {args} | {seen} | io_errors+flush_errors={errors} | faults_injected={injected}, {} |",
        variant.name(),
        note.split_whitespace()
            .filter(|w| [
                "errors=",
                "disk_errors=",
                "unc=",
                "write_errors=",
                "aborted="
            ]
            .iter()
            .any(|k| w.starts_with(k)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = std::fs::remove_file(&img);
    Some((seen, errors, injected))
}

#[test]
fn disk_fault_table() {
    // Every fault on both devices: what the guest saw, what it counted, what hv counted.
    // `cargo test -p hv --test devices disk_fault_table -- --nocapture` prints the table.
    let cases: &[(&str, &str, u64)] = &[
        ("eio@write:3", "rw=write count=8", 1),
        ("enospc@write:2+", "rw=write count=4 bs=512", 3),
        ("short@write:1", "rw=write count=4 bs=4096 multiple=8", 1),
        ("eio@read:2", "rw=read count=4 bs=512", 1),
        ("eio@read:every=2", "rw=read count=4 bs=512", 2),
        ("eio@flush:1", "rw=write count=2 bs=512", 1),
        ("enospc@flush:1", "rw=write count=2 bs=512", 1),
        (
            "eio@write:sectors=8-15",
            "rw=write count=4 bs=4096 multiple=8",
            1,
        ),
    ];
    println!("| fault | device | workload | guest saw (first) | guest counted | hv counted |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for variant in [DeviceVariant::Synthetic, DeviceVariant::Emulated] {
        for &(fault, args, want) in cases {
            let Some((seen, errors, injected)) = fault_row(variant, fault, args) else {
                return;
            };
            assert_eq!(errors, want, "{fault} on {variant:?}: guest count");
            assert_eq!(injected, want, "{fault} on {variant:?}: hv count");
            let expect = match (variant, fault) {
                (DeviceVariant::Synthetic, _) => "IOERR",
                (_, f) if f.contains("@read") => "(UNC)",
                _ => "(ABRT)",
            };
            assert!(seen.contains(expect), "{fault} on {variant:?}: saw {seen}");
        }
    }
}

#[test]
fn two_partitions_cannot_share_a_read_write_image_but_may_share_it_read_only() {
    let kvm = common::kvm();
    let img = temp_image("shared");
    let mut req = common::request("blk-io", &[("rw", "write"), ("count", "4"), ("seed", "9")]);
    req.devices = opts(DeviceVariant::Synthetic);
    req.devices.disk = Some(img.clone());
    req.devices.disk_size = 1 << 20;
    req.partitions = 2;
    let ctx = hv::run::RecordContext::adhoc();
    let Err(e) = hv::run::run(&kvm, &req, &ctx) else {
        panic!("two partitions opened one image read-write");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("in use") && msg.contains(&img.display().to_string()),
        "{msg}"
    );
    // One writer prepares the image; then two read-only partitions read it back together.
    req.partitions = 1;
    let r = hv::run::run(&kvm, &req, &ctx).expect("one writer");
    assert!(r.ok());
    req.partitions = 2;
    req.args.insert("rw".into(), "read".into());
    req.args.insert("prep".into(), "0".into());
    req.devices.disk_access.readonly = true;
    for variant in [DeviceVariant::Synthetic, DeviceVariant::Emulated] {
        req.devices.variant = variant;
        let r = hv::run::run(&kvm, &req, &ctx).expect("read-only sharing");
        for p in &r.partitions {
            assert!(
                p.outcome.status.is_ok(),
                "{variant:?}: {}",
                p.outcome.console
            );
        }
    }
    // Read-only devices refuse writes: the guest sees the error.
    req.partitions = 1;
    req.args.insert("rw".into(), "write".into());
    req.args.insert("errors".into(), "count".into());
    for variant in [DeviceVariant::Synthetic, DeviceVariant::Emulated] {
        req.devices.variant = variant;
        let r = hv::run::run(&kvm, &req, &ctx).expect("read-only run");
        let o = &r.partitions[0].outcome;
        assert!(o.status.is_ok(), "{}", o.console);
        assert_eq!(
            metric(&phase(o, "blk-write").1, "io_errors"),
            4,
            "{}",
            o.console
        );
    }
    let _ = std::fs::remove_file(&img);
}
