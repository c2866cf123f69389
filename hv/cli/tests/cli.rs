//! The `hv` binary as a user runs it: exit codes, error messages, JSON output.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

fn hv(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_workload_lists_the_valid_ones_and_exits_2() {
    let (code, _, err) = hv(&["run", "no-such-workload"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exit-floor") && err.contains("blk-io"),
        "{err}"
    );
}

#[test]
fn bad_workload_argument_names_the_valid_ones() {
    let (code, _, err) = hv(&["run", "exit-floor", "--", "itres=5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("itres") && err.contains("iters"), "{err}");
    let (code, _, err) = hv(&["run", "exit-floor", "--enlighten", "warp"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tlb-flush-hypercall"),
        "lists valid enlightenments: {err}"
    );
}

#[test]
fn list_shows_every_workload_with_its_arguments() {
    let (code, out, _) = hv(&["list"]);
    assert_eq!(code, 0);
    for w in hvlab_workloads::ALL {
        assert!(out.contains(w.name), "{} missing from:\n{out}", w.name);
    }
    assert!(out.contains("iters="));
}

#[test]
fn run_json_prints_one_parseable_record_per_phase() {
    let (code, out, err) = hv(&[
        "run",
        "exit-floor",
        "--json",
        "--",
        "iters=50",
        "tests=nop,pio-out",
    ]);
    assert_eq!(code, 0, "{err}");
    let recs: Vec<hv::record::RunRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases: Vec<&str> = recs.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, ["nop", "pio-out"]);
    assert_eq!(recs[1].exits["total"], 50);
    assert!(recs.iter().all(|r| r.status.is_ok() && r.vmm == "hv"));
}

#[test]
fn failing_guest_exits_1_with_its_status_and_console_tail() {
    let (code, _, err) = hv(&["run", "misbehave", "--", "how=ud"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("guest exception") && err.contains("name=UD"),
        "{err}"
    );
}

#[test]
fn suite_dry_run_plans_the_default_matrix() {
    let (code, out, err) = hv(&["suite", "--dry-run", "--shard", "1/2"]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" runs"), "{last}");
    assert!(out.lines().count() > 10);
}

#[test]
fn cpus_outside_the_affinity_mask_and_bad_limits_are_refused() {
    let (code, _, err) = hv(&["run", "misbehave", "--cpus", "1023", "--", "how=exit=0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("CPU 1023 not available") && err.contains("may run on CPUs"),
        "{err}"
    );
    let (code, _, err) = hv(&["run", "misbehave", "--partitions", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 1"), "{err}");
    // No fixed cap: a request beyond this host's memory is refused naming the limit.
    let (code, _, err) = hv(&["run", "misbehave", "--partitions", "100000", "--mem", "1G"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MemAvailable"), "{err}");
    let (code, _, err) = hv(&["run", "misbehave", "--timeout=-1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--timeout"), "{err}");
}

#[test]
fn a_bad_disk_fault_spec_is_refused_with_the_grammar() {
    let (code, _, err) = hv(&["run", "blk-io", "--disk-fault", "eio@write:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--disk-fault") && err.contains("counts from 1"),
        "{err}"
    );
    let (code, _, err) = hv(&["run", "blk-io", "--disk-fault", "bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KIND@OP:WHEN"), "{err}");
}

/// Starts `hv run blk-io` writing `count` 4 KiB blocks to `img` and holding after its FLUSH;
/// returns the child once the guest printed that the flush completed (stderr lines so far in
/// `seen`). `None` when the host has no /dev/kvm.
fn start_holding(
    device: &str,
    img: &std::path::Path,
    seed: u32,
    seen: &mut String,
) -> Option<std::process::Child> {
    use std::io::{BufRead, BufReader};
    if let Err(e) = hv::error::open_kvm() {
        eprintln!("skipping: {e}");
        return None;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(["run", "blk-io", "--device", device, "--disk"])
        .arg(img)
        .args(["--disk-size", "1M", "--console", "--timeout", "120", "--"])
        .args(["rw=write", "count=16", "hold=1", &format!("seed={seed}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // hv ends the run by --timeout at the latest, which ends the stream.
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("blk-io: flushed=1") {
            // Keep draining stderr so hv never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Some(child);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("hv ended without flushing:\n{seen}");
}

fn expected_sector(lba: u64, seed: u64) -> Vec<u8> {
    let fill = (lba ^ (seed << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..64u64)
        .flat_map(|i| {
            match i {
                0 => 0x4856_4c42_0000_0000 ^ seed,
                1 => lba,
                _ => fill,
            }
            .to_le_bytes()
        })
        .collect()
}

#[test]
fn data_flushed_before_hv_is_sigkilled_is_in_the_image() {
    for (device, seed) in [("synthetic", 33u32), ("emulated", 34)] {
        let img =
            std::env::temp_dir().join(format!("hvlab-crash-{}-{device}.img", std::process::id()));
        let _ = std::fs::remove_file(&img);
        let mut seen = String::new();
        let Some(mut child) = start_holding(device, &img, seed, &mut seen) else {
            return;
        };
        // SIGKILL right after the guest saw its FLUSH complete: no clean exit, no drop.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "hv was killed, not exited"
        );
        let bytes = std::fs::read(&img).unwrap();
        for lba in 0..16 * 8u64 {
            assert_eq!(
                &bytes[lba as usize * 512..][..512],
                expected_sector(lba, u64::from(seed)).as_slice(),
                "{device}: sector {lba} after SIGKILL\n{seen}"
            );
        }
        // The killed hv left no lock behind.
        drop(hv::devices::disk::Disk::open(&img, 0).expect("image reopens read-write"));
        let _ = std::fs::remove_file(&img);
    }
}

#[test]
fn a_second_hv_cannot_open_an_image_in_use_and_names_the_holder() {
    let img = std::env::temp_dir().join(format!("hvlab-lock-{}.img", std::process::id()));
    let _ = std::fs::remove_file(&img);
    let mut seen = String::new();
    let Some(mut first) = start_holding("synthetic", &img, 1, &mut seen) else {
        return;
    };
    let path = img.to_str().unwrap();
    let (code, _, err) = hv(&["run", "blk-io", "--device", "emulated", "--disk", path]);
    let (ro_code, _, ro_err) = hv(&[
        "run",
        "blk-io",
        "--device",
        "emulated",
        "--disk-readonly",
        "--disk",
        path,
    ]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("in use") && err.contains(path), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())),
        "names the holder: {err}"
    );
    assert_ne!(ro_code, 0, "no reader beside a writer: {ro_err}");
    assert!(ro_err.contains("in use"), "{ro_err}");
    let _ = std::fs::remove_file(&img);
}

#[test]
fn device_lists_run_side_by_side_and_bad_ones_are_refused() {
    let (code, out, err) = hv(&[
        "run",
        "blk-io",
        "--device",
        "emulated,synthetic,vmbus",
        "--qd",
        "4",
        "--",
        "count=8",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    let table = out
        .split("side by side")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    for v in ["emulated", "synthetic", "vmbus"] {
        assert!(table.contains(v), "{v} missing from:\n{table}");
    }
    assert!(
        table.contains("doorbells") && table.contains("worker ns"),
        "{table}"
    );
    // blk-read at QD4 over the channel: one doorbell per batch of 4, and at most one
    // interrupt (SynIC events coalesce while the guest has not taken the previous one).
    let vmbus_read = table
        .split("blk-read")
        .nth(1)
        .and_then(|t| t.lines().find(|l| l.contains("vmbus")))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = vmbus_read.split_whitespace().collect();
    assert_eq!(cols[3], "0.25", "{vmbus_read}");
    let irqs: f64 = cols[4].parse().unwrap();
    assert!(irqs > 0.0 && irqs <= 0.25, "{vmbus_read}");
    for (bad, says) in [
        ("vmbus,bogus", "`bogus` is not a device variant"),
        ("synthetic,synthetic", "listed twice"),
    ] {
        let (code, _, err) = hv(&["run", "blk-io", "--device", bad]);
        assert_ne!(code, 0, "{bad}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}
