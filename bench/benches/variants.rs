//! The key comparisons by guest-measured time per operation: virtio against emulated devices
//! (block reads, console writes) and hv's enlightenments against none (TLB shootdown, IPI
//! multicast, contended spinlock). Every sample is one `hv::run::run` of the workload; the
//! time criterion sees is the guest's TSC delta over the measured phase, scaled to the
//! iteration count, so VM creation and boot are not in it. Variants this host cannot run (an
//! enlightenment it lacks) are skipped with the reason; a run that fails fails the bench. After criterion's reports, one line per comparison gives the
//! ratios from a few interleaved runs.

use std::time::Duration;

use bench::median;
use bench::variants::{COMPARISONS, Comparison, Variant};
use criterion::{Criterion, SamplingMode};
use kvm_ioctls::Kvm;

/// Operations per run for the summary ratios, and interleaved rounds.
const RATIO_OPS: u64 = 32;
const ROUNDS: usize = 5;

/// The variants of `c` this host can run. A variant is skipped (with the reason printed) only
/// when this host cannot run it (its enlightenment set does not resolve here); a variant that
/// can run but whose run fails fails the bench, it is never reported as skipped.
fn runnable(kvm: &Kvm, c: &Comparison) -> Vec<Variant> {
    c.variants
        .iter()
        .filter(|v| match c.request(kvm, v, 2) {
            Ok(_) => {
                if let Err(e) = c.run(kvm, v, 2) {
                    panic!("{}/{}: the run failed: {e}", c.group, v.label);
                }
                true
            }
            Err(why) => {
                println!("{}/{}: skipped: {why}", c.group, v.label);
                false
            }
        })
        .copied()
        .collect()
}

fn bench(crit: &mut Criterion, kvm: &Kvm, c: &Comparison, variants: &[Variant]) {
    let mut g = crit.benchmark_group(c.group);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for v in variants {
        g.bench_function(v.label, |b| {
            b.iter_custom(|iters| c.guest_time(kvm, v, iters))
        });
    }
    g.finish();
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Interleaved rounds so that drift on a shared host hits every variant alike; ratios
/// against the comparison's first variant.
fn print_ratios(kvm: &Kvm, c: &Comparison, variants: &[Variant]) {
    let Some(base) = variants.first().filter(|v| v.label == c.variants[0].label) else {
        println!(
            "{}: baseline {} not runnable here",
            c.group, c.variants[0].label
        );
        return;
    };
    let mut samples = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (v, s) in variants.iter().zip(&mut samples) {
            // A failed run fails the bench: a ratio over the runs that happened to work would
            // read as measured.
            let ns = match c.run(kvm, v, RATIO_OPS) {
                Ok(r) => r.ns_per_op().unwrap_or(f64::NAN),
                Err(e) => panic!("{}/{}: the run failed: {e}", c.group, v.label),
            };
            s.push(ns);
        }
    }
    // Ratios within a round, then their median and range across rounds.
    let ratios: Vec<String> = variants
        .iter()
        .zip(&samples)
        .skip(1)
        .map(|(v, s)| {
            let per_round: Vec<f64> = s.iter().zip(&samples[0]).map(|(a, b)| a / b).collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{}/{} = {:.2}x [{lo:.2}-{hi:.2}]",
                v.label,
                base.label,
                median(per_round)
            )
        })
        .collect();
    let times: Vec<String> = variants
        .iter()
        .zip(samples)
        .map(|(v, s)| format!("{} {}", v.label, fmt_ns(median(s))))
        .collect();
    println!(
        "{}: guest time per op {} ({}; medians, [range] over {ROUNDS} interleaved runs x {RATIO_OPS} ops)",
        c.group,
        ratios.join(", "),
        times.join(", ")
    );
}

fn main() {
    let kvm = hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("the variants bench boots guests and needs /dev/kvm: {e}"));
    let mut crit = Criterion::default().configure_from_args();
    let plan: Vec<(&Comparison, Vec<Variant>)> =
        COMPARISONS.iter().map(|c| (c, runnable(&kvm, c))).collect();
    for (c, variants) in &plan {
        bench(&mut crit, &kvm, c, variants);
    }
    crit.final_summary();
    for (c, variants) in &plan {
        print_ratios(&kvm, c, variants);
    }
}
