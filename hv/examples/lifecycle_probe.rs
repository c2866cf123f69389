//! Where the time of a partition's create -> first exit -> teardown goes.
#![allow(clippy::unwrap_used)] // a developer probe: a panic is the report
use std::time::{Duration, Instant};
fn main() {
    let kvm = hv::error::open_kvm().unwrap();
    let elf = hv::tiny_guest::elf(&hv::tiny_guest::exit_now(0));
    for irqchip in [hv::partition::IrqChip::Split, hv::partition::IrqChip::Full] {
        for _ in 0..3 {
            let t = Instant::now();
            let cfg = hv::partition::PartitionConfig {
                tracepoints: false,
                kvm_stats: false,
                irqchip,
                ..Default::default()
            };
            let p = hv::partition::Partition::new(&kvm, cfg, &elf).unwrap();
            let a = t.elapsed();
            let r = p.start().unwrap();
            let b = t.elapsed();
            let o = r.wait(
                Instant::now() + Duration::from_secs(5),
                Duration::from_secs(5),
            );
            let c = t.elapsed();
            drop(o);
            let d = t.elapsed();
            println!(
                "{irqchip:?}: new {a:?} start {:?} wait {:?} drop {:?}",
                b - a,
                c - b,
                d - c
            );
        }
    }
}
