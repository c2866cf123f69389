//! Boots one workload with a device variant attached and prints its phases with exits per
//! operation. `cargo run -p hv --example devices_run -- VARIANT [disk=PATH] [evidx=0|1]
//! [poll=0|1] WORKLOAD [key=value ...]` (VARIANT: emulated | synthetic).
use std::time::{Duration, Instant};

use hv::devices::{DeviceOptions, DeviceVariant};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!(
            "usage: devices_run emulated|synthetic [disk=PATH] [evidx=0|1] [poll=0|1] WORKLOAD [k=v ...]"
        );
        std::process::exit(2);
    }
    let variant = match args.remove(0).as_str() {
        "emulated" => DeviceVariant::Emulated,
        "synthetic" => DeviceVariant::Synthetic,
        v => {
            eprintln!("unknown variant {v}");
            std::process::exit(2);
        }
    };
    let mut opts = DeviceOptions {
        variant,
        event_idx: true,
        ..Default::default()
    };
    while let Some(a) = args.first() {
        if let Some(p) = a.strip_prefix("disk=") {
            opts.disk = Some(p.into());
        } else if let Some(v) = a.strip_prefix("evidx=") {
            opts.event_idx = v == "1";
        } else if let Some(v) = a.strip_prefix("poll=") {
            opts.polling = v == "1";
        } else {
            break;
        }
        args.remove(0);
    }
    let workload = args.first().cloned().unwrap_or_else(|| "blk-io".into());
    let info = hvlab_workloads::find(&workload).expect("unknown workload");
    let kvm = hv::error::open_kvm().expect("open /dev/kvm");
    let words = hv::devices::cmdline_words(&opts, info.devices);
    println!("device words: {}", words.join(" "));
    let cfg = hv::partition::PartitionConfig {
        cmdline: format!("{} {}", args.join(" "), words.join(" ")),
        echo_console: std::env::var_os("ECHO").is_some(),
        ..Default::default()
    };
    let mut p = hv::partition::Partition::new(&kvm, cfg, hv::GUEST_IMAGE).expect("partition");
    hv::devices::attach(&mut p, &opts, info.devices).expect("attach");
    let o = p.start().expect("start").wait(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    println!("status: {} wall {:?}", o.status, o.wall);
    print!("{}", hv_console_results(&o.console));
    for ph in &o.phases {
        let user = ph.exits.get("total").copied().unwrap_or(0);
        println!(
            "phase {} wall={}us userspace_exits={} exits={:?} cpu={:?}",
            ph.id,
            ph.wall_ns / 1000,
            user,
            ph.exits,
            ph.cpu
        );
    }
    for n in &o.notes {
        println!("note: {n}");
    }
}

fn hv_console_results(c: &str) -> String {
    c.lines()
        .filter(|l| l.starts_with("HVLAB") || l.contains("blk-io") || l.contains("console-io"))
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}
