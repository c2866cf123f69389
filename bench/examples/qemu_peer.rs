//! Runs one workload under QEMU (the peer column) and prints ns per operation per phase, or the
//! run records as JSON lines with `--json`.
//! `cargo run -p hv --release --example qemu_peer -- [--json] [--vcpus N] [--vmm qemu|qemu-pc]
//! [--device emulated|synthetic|synthetic-noevidx] [--partitions N] WORKLOAD [key=value ...]`
use std::collections::BTreeMap;

use hv::record::RecordStatus;
use hv::run::{RecordContext, RunRequest};

fn main() {
    let mut json = false;
    let mut vcpus = 1;
    let mut vmm = String::from("qemu");
    let mut device = String::from("none");
    let mut partitions = 1;
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next_if(|a| a.starts_with("--")) {
        match a.as_str() {
            "--json" => json = true,
            "--vcpus" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => vcpus = n,
                None => usage("--vcpus needs a number"),
            },
            "--vmm" => {
                vmm = args
                    .next()
                    .unwrap_or_else(|| usage("--vmm needs a peer label"))
            }
            "--device" => {
                device = args
                    .next()
                    .unwrap_or_else(|| usage("--device needs a variant"))
            }
            "--partitions" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => partitions = n,
                None => usage("--partitions needs a number"),
            },
            other => usage(&format!("unknown option {other}")),
        }
    }
    let Some(workload) = args.next() else {
        usage("no workload named");
    };
    let mut kv = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => kv.insert(k.to_string(), v.to_string()),
            None => usage(&format!("{a}: arguments are key=value")),
        };
    }
    let req = RunRequest {
        workload,
        args: kv,
        vcpus,
        partitions,
        devices: bench::suite::device_options(&device),
        ..RunRequest::default()
    };
    let records = match bench::peer::qemu::run_qemu_as(&vmm, &req, &RecordContext::adhoc()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut ok = true;
    if let Some(r) = records.first() {
        for n in &r.notes {
            eprintln!("note: {n}");
        }
    }
    if !json {
        println!("{:<14} {:>8} {:>10}  status", "phase", "ops", "ns/op");
    }
    for r in &records {
        ok &= r.status.is_ok() || matches!(r.status, RecordStatus::Skipped(_));
        if json {
            match serde_json::to_string(r) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        let ns = if r.ops > 0 && r.tsc_khz > 0 {
            r.guest_tsc as f64 * 1e6 / r.tsc_khz as f64 / r.ops as f64
        } else {
            0.0
        };
        println!("{:<14} {:>8} {:>10.0}  {:?}", r.phase, r.ops, ns, r.status);
    }
    std::process::exit(if ok { 0 } else { 1 });
}

fn usage(why: &str) -> ! {
    eprintln!(
        "{why}\nusage: qemu_peer [--json] [--vcpus N] [--vmm qemu|qemu-pc] [--device VARIANT] [--partitions N] WORKLOAD [key=value ...]"
    );
    std::process::exit(2);
}
