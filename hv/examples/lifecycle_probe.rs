//! Where the time of a partition's create -> first exit -> teardown goes, per irqchip mode.
//! (This is how the 11-15 ms teardown of a full irqchip on nested hosts was found.)
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = hv::error::open_kvm()?;
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
            let p = hv::partition::Partition::new(&kvm, cfg, &elf)?;
            let a = t.elapsed();
            let r = p.start()?;
            let b = t.elapsed();
            let o = r.wait(
                Instant::now() + Duration::from_secs(5),
                Duration::from_secs(5),
            );
            let c = t.elapsed();
            drop(o);
            let d = t.elapsed();
            println!(
                "{irqchip:?}: new {a:?} start {:?} wait+teardown {:?} drop {:?}",
                b - a,
                c - b,
                d - c
            );
        }
    }
    Ok(())
}
