//! Integration tests of the network devices: partitions on hv's switch exchange UDP through
//! real guests (/dev/kvm). Each test fails (naming the fix) on a host without KVM access.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use hv::devices::{DeviceOptions, DeviceVariant};
use hv::run::{RunRequest, RunResult};

fn request(variant: DeviceVariant, partitions: u32, args: &[(&str, &str)]) -> RunRequest {
    let mut r = common::request("net-io", args);
    r.partitions = partitions;
    r.tracepoints = false;
    r.devices = DeviceOptions {
        variant,
        event_idx: true,
        ..Default::default()
    };
    r
}

fn run(req: &RunRequest) -> RunResult {
    let kvm = common::kvm();
    hv::run::run(&kvm, req, &hv::run::RecordContext::default()).expect("run")
}

/// Fails with every partition's status, console and notes unless partition `part` is ok (a
/// partition that waits for ever usually waits for one that failed).
fn assert_ok(r: &RunResult, part: usize) {
    if r.partitions[part].outcome.status.is_ok() {
        return;
    }
    let mut all = String::new();
    for (i, p) in r.partitions.iter().enumerate() {
        let o = &p.outcome;
        all.push_str(&format!(
            "--- partition {i}: status {}\nconsole:\n{}\nnotes: {:?}\n",
            o.status, o.console, o.notes
        ));
    }
    panic!("partition {part} failed\n{all}");
}

/// `key` on partition `part`'s `rec=phase` line of phase `name`.
fn metric(r: &RunResult, part: usize, name: &str, key: &str) -> u64 {
    let o = &r.partitions[part].outcome;
    let line = o
        .console
        .lines()
        .find(|l| l.starts_with("HVLAB rec=phase") && l.contains(&format!(" name={name} ")))
        .unwrap_or_else(|| panic!("no phase {name} in partition {part}:\n{}", o.console));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn notes(r: &RunResult, part: usize) -> String {
    r.partitions[part].outcome.notes.join("\n")
}

/// The number after ` key=` in partition `part`'s notes (device counters).
fn counter(r: &RunResult, part: usize, key: &str) -> u64 {
    let n = notes(r, part);
    n.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in notes of partition {part}:\n{n}"))
}

/// Ping-pong of full-size frames: every pong carries the ping's pattern and checksums, so a
/// frame changed on the way fails the guest's checks (`bad`, `wrong`) or ends the run.
fn pingpong_intact(variant: DeviceVariant) {
    let r = run(&request(variant, 2, &[("size", "1514"), ("count", "6")]));
    assert_ok(&r, 0);
    assert_ok(&r, 1);
    assert_eq!(metric(&r, 0, "net-pingpong", "ops"), 12);
    assert_eq!(metric(&r, 0, "net-pingpong", "bad"), 0);
    assert_eq!(metric(&r, 0, "net-pingpong", "wrong"), 0);
    assert_eq!(metric(&r, 1, "net-serve", "bad"), 0);
    // What each NIC costs in userspace exits per packet: the NE2000 moves every word of a
    // 1514-byte frame through its data port (757 accesses, plus registers); virtio-net's
    // doorbells and interrupts never leave the kernel.
    let rec = r
        .records
        .iter()
        .find(|x| x.partition == 0 && x.phase == "net-pingpong")
        .expect("record of the ping-pong phase");
    let per_packet = rec.exits.get("total").copied().unwrap_or(0) as f64 / rec.ops as f64;
    match variant {
        DeviceVariant::Emulated => assert!(per_packet >= 757.0, "{per_packet} exits/packet"),
        _ => assert!(per_packet <= 1.0, "{per_packet} exits/packet"),
    }
    assert!(
        r.partitions[0]
            .outcome
            .console
            .lines()
            .any(|l| l.starts_with("HVLAB rec=hist")),
        "no RTT histogram"
    );
}

#[test]
fn synthetic_pingpong_frames_cross_the_switch_intact() {
    pingpong_intact(DeviceVariant::Synthetic);
}

#[test]
fn emulated_pingpong_frames_cross_the_switch_intact() {
    pingpong_intact(DeviceVariant::Emulated);
}

#[test]
fn synthetic_stream_delivers_every_frame() {
    let r = run(&request(
        DeviceVariant::Synthetic,
        2,
        &[
            ("mode", "stream"),
            ("size", "512"),
            ("count", "48"),
            ("window", "16"),
        ],
    ));
    assert_ok(&r, 0);
    assert_ok(&r, 1);
    assert_eq!(metric(&r, 0, "net-stream", "ops"), 48);
    assert_eq!(metric(&r, 0, "net-stream", "lost"), 0);
    assert_eq!(metric(&r, 1, "net-serve", "data"), 48);
}

/// A third partition floods both others with valid, corrupted and malformed frames while they
/// ping-pong: their results stay correct (the guests drop the bad frames and count them), the
/// flooder ends normally, and hv's switch bounds what waits for each port.
#[test]
fn synthetic_flood_from_a_third_partition_leaves_the_pair_correct() {
    let r = run(&request(
        DeviceVariant::Synthetic,
        3,
        &[("count", "16"), ("how", "flood"), ("flood", "400")],
    ));
    for p in 0..3 {
        assert_ok(&r, p);
    }
    assert_eq!(metric(&r, 0, "net-pingpong", "wrong"), 0);
    assert_eq!(metric(&r, 2, "net-hostile", "sent"), 400);
}

/// A partition whose receive ring never drains, one that transmits descriptors far longer than
/// a frame, and one that points a descriptor outside its memory: each is contained to its own
/// device (frames dropped and counted, DEVICE_NEEDS_RESET), the pair beside it is correct.
#[test]
fn synthetic_hostile_neighbours_break_only_their_own_device() {
    for how in ["undrained", "oversize", "oob"] {
        // The pair answers the undrained partition's 64 ARP requests only while it runs: a
        // longer ping-pong keeps it there.
        let count = if how == "undrained" { "64" } else { "8" };
        let r = run(&request(
            DeviceVariant::Synthetic,
            3,
            &[("count", count), ("how", how), ("flood", "64")],
        ));
        for p in 0..3 {
            assert_ok(&r, p);
        }
        assert_eq!(metric(&r, 0, "net-pingpong", "wrong"), 0, "{how}");
        let n = notes(&r, 2);
        match how {
            "oversize" => assert_eq!(counter(&r, 2, "tx_long"), 64, "{n}"),
            "oob" => assert!(n.contains("queue 1") && n.contains("outside"), "{how}: {n}"),
            // The ring filled once and was never refilled: frames wait (or were dropped).
            _ => assert!(
                counter(&r, 2, "rx_starved") > 0
                    && counter(&r, 2, "sw_queued") + counter(&r, 2, "sw_rx_dropped") > 0,
                "{how}: {n}"
            ),
        }
    }
}

#[test]
fn emulated_stream_delivers_every_frame_through_the_ring() {
    // 24 frames of 1514 bytes in bursts of 16: more than the 58-page ring holds at once, so
    // frames wait in the switch inbox and the ring wraps.
    let r = run(&request(
        DeviceVariant::Emulated,
        2,
        &[
            ("mode", "stream"),
            ("size", "1514"),
            ("count", "24"),
            ("window", "16"),
            ("pio", "rep"),
        ],
    ));
    assert_ok(&r, 0);
    assert_ok(&r, 1);
    assert_eq!(metric(&r, 0, "net-stream", "lost"), 0);
    assert_eq!(metric(&r, 1, "net-serve", "data"), 24);
}

/// The emulated card's hostile cases: a flood, a transmit past the card's RAM with an
/// impossible length, remote DMA past its memory, a ring never drained.
#[test]
fn emulated_hostile_neighbours_break_only_their_own_card() {
    for how in ["flood", "oversize", "oob", "undrained"] {
        let r = run(&request(
            DeviceVariant::Emulated,
            3,
            &[
                ("count", if how == "undrained" { "32" } else { "6" }),
                ("how", how),
                ("flood", "60"),
                ("pio", "rep"),
            ],
        ));
        for p in 0..3 {
            assert_ok(&r, p);
        }
        assert_eq!(metric(&r, 0, "net-pingpong", "wrong"), 0, "{how}");
        let n = notes(&r, 2);
        match how {
            "oversize" => assert!(n.contains("tx_bad=60"), "{how}: {n}"),
            "oob" => assert!(
                n.contains("tx_bad=1") && !n.contains("dma_bad=0"),
                "{how}: {n}"
            ),
            _ => assert!(n.contains("ne2000:"), "{how}: {n}"),
        }
    }
}

/// The tap backend: one partition's client talks through a tap device in a namespace of its
/// own to a responder there (ARP answered by the host kernel, checksums by its UDP stack), and
/// the namespace's threads are gone when the run has ended, also when it failed.
#[test]
fn tap_backend_crosses_the_host_kernel_and_cleans_up() {
    for variant in [DeviceVariant::Synthetic, DeviceVariant::Emulated] {
        let mut req = request(variant, 1, &[("size", "1514"), ("count", "4")]);
        req.devices.net_tap = true;
        let r = run(&req);
        assert_ok(&r, 0);
        assert_eq!(metric(&r, 0, "net-pingpong", "wrong"), 0);
        assert_eq!(metric(&r, 0, "net-pingpong", "bad"), 0);
        assert_eq!(netns_threads(), 0, "{variant:?}: namespace threads left");
    }
    // A run that fails (the guest times out mid-stream): the namespace goes all the same.
    let mut req = request(
        DeviceVariant::Synthetic,
        1,
        &[("mode", "stream"), ("count", "100000")],
    );
    req.devices.net_tap = true;
    req.timeout = std::time::Duration::from_secs(2);
    let r = run(&req);
    assert!(!r.partitions[0].outcome.status.is_ok());
    assert_eq!(
        netns_threads(),
        0,
        "namespace threads left after a failed run"
    );
    // Two partitions with a tap: refused with the reason.
    let mut req = request(DeviceVariant::Synthetic, 2, &[]);
    req.devices.net_tap = true;
    let e = hv::run::run(&common::kvm(), &req, &hv::run::RecordContext::default()).unwrap_err();
    assert!(e.to_string().contains("one partition"), "{e}");
}

/// Threads of this process named after the tap backend's.
fn netns_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("hv-netns") || c.starts_with("hv-tap-reader"))
        .count()
}
