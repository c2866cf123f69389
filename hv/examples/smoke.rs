//! Boots the guest image with a raw command line and echoes its console: the quickest way to
//! try a workload change. `cargo run -p hv --example smoke -- exit-floor cpus=2 iters=10`
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = hv::error::open_kvm()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if args.is_empty() {
        "exit-floor iters=10".to_string()
    } else {
        args.join(" ")
    };
    let vcpus = match cmd.split_whitespace().find_map(|t| t.strip_prefix("cpus=")) {
        Some(v) => v.parse()?,
        None => 1,
    };
    let cfg = hv::partition::PartitionConfig {
        cmdline: cmd,
        echo_console: true,
        vcpus,
        kernel_port: true,
        ..Default::default()
    };
    let p = hv::partition::Partition::new(&kvm, cfg, hv::GUEST_IMAGE)?;
    let t = Instant::now();
    let o = p.start()?.wait(
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    println!("status: {} in {:?}", o.status, t.elapsed());
    for ph in &o.phases {
        println!(
            "phase {}: {:?} exits {:?}",
            ph.id,
            Duration::from_nanos(ph.wall_ns),
            ph.exits
        );
    }
    for n in &o.notes {
        println!("note: {n}");
    }
    Ok(())
}
