//! Boots one guest with its console echoed: `cargo run -p hv --example smoke -- <cmdline>`.
#![allow(clippy::unwrap_used)] // a developer smoke test: a panic is the report
use std::time::{Duration, Instant};
fn main() {
    let kvm = hv::error::open_kvm().unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if args.is_empty() {
        "exit-floor iters=10".to_string()
    } else {
        args.join(" ")
    };
    let vcpus = cmd
        .split_whitespace()
        .find_map(|t| t.strip_prefix("cpus="))
        .map(|v| v.parse().unwrap())
        .unwrap_or(1);
    let cfg = hv::partition::PartitionConfig {
        cmdline: cmd,
        echo_console: true,
        vcpus,
        ..Default::default()
    };
    let p = hv::partition::Partition::new(&kvm, cfg, hv::GUEST_IMAGE).unwrap();
    let t = Instant::now();
    let r = p.start().unwrap();
    let o = r.wait(
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    println!("status: {} in {:?}", o.status, t.elapsed());
    for ph in &o.phases {
        println!("{ph:?}");
    }
    println!("notes {:?}", o.notes);
}
