//! Boots one workload with an enlightenment set and prints its phases with the counters that
//! matter for enlightenments (until `hv run --enlighten` lands on main).
//!
//! `cargo run -p hv --example enlighten_run -- <workload> [key=val ...] enlighten=SET
//! [pin=0,1] [partitions=P]` (`cpus=N` sets the vCPU count, as for `smoke`).
use std::time::{Duration, Instant};

use hv::enlightenments::EnlightenmentSet;
use hv::partition::{Partition, PartitionConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = hv::error::open_kvm()?;
    let mut guest = Vec::new();
    let mut set = EnlightenmentSet::NONE;
    let mut pin = None;
    let mut partitions = 1u32;
    let mut vcpus = 1;
    for a in std::env::args().skip(1) {
        if let Some(v) = a.strip_prefix("enlighten=") {
            set = EnlightenmentSet::parse(v)?;
        } else if let Some(v) = a.strip_prefix("pin=") {
            pin = Some(
                v.split(',')
                    .map(|c| c.parse())
                    .collect::<Result<Vec<usize>, _>>()?,
            );
        } else if let Some(v) = a.strip_prefix("partitions=") {
            partitions = v.parse()?;
        } else {
            if let Some(v) = a.strip_prefix("cpus=") {
                vcpus = v.parse()?;
            }
            guest.push(a);
        }
    }
    let mut running = Vec::new();
    for index in 0..partitions {
        let cfg = PartitionConfig {
            index,
            cmdline: format!("{} part={index}", guest.join(" ")),
            vcpus,
            pin: pin.clone(),
            enlightenments: Some(set),
            ..Default::default()
        };
        running.push(Partition::new(&kvm, cfg, hv::GUEST_IMAGE)?.start()?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in running {
        let o = r.wait(deadline, Duration::from_secs(60));
        println!(
            "== partition {} status: {} in {:?}",
            o.index, o.status, o.wall
        );
        for line in o.console.lines().filter(|l| l.starts_with("HVLAB")) {
            println!("   {line}");
        }
        for ph in &o.phases {
            println!(
                "   phase {} wall={}us vcpu_cpu={}us exits={:?}",
                ph.id,
                ph.wall_ns / 1000,
                ph.cpu.vcpu_ns / 1000,
                ph.exits
            );
            let hv: Vec<_> = ph.exits_by_device.iter().filter(|(_, v)| **v > 0).collect();
            println!("     by_device={hv:?}");
            let tp: Vec<_> = ph.tracepoints.iter().filter(|(_, v)| **v > 0).collect();
            println!("     tracepoints={tp:?}");
            let ks: Vec<_> = ph
                .kvm_stats
                .iter()
                .filter(|(k, v)| **v != 0 && !k.starts_with("vm."))
                .collect();
            println!("     kvm_stats={ks:?}");
        }
        println!("   notes {:?}", o.notes);
    }
    Ok(())
}
