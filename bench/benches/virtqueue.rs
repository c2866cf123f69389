//! hv's virtqueue hot path, without KVM: per chain, `chain::walk` alone (validation of a
//! three-descriptor virtio-blk request) and the device's whole loop (`DeviceState::serve_all`:
//! pop, walk, serve the read from an in-memory disk, used ring, notification check) for 512-byte
//! and 4 KiB reads. Prints the per-chain times of a few interleaved rounds after criterion's
//! reports.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bench::median;
use bench::virtqueue::BlkQueue;
use criterion::{Criterion, criterion_group};

/// Requests per batch (three descriptors each, in a 256-entry queue).
const BATCH: u16 = 64;

/// Runs `op` (one batch of `BATCH` chains) often enough to cover `iters` chains; returns the
/// time of `iters` chains.
fn per_chain(iters: u64, mut op: impl FnMut()) -> Duration {
    let batches = iters.div_ceil(u64::from(BATCH)).max(1);
    let t = Instant::now();
    for _ in 0..batches {
        op();
    }
    let chains = batches * u64::from(BATCH);
    t.elapsed().mul_f64(iters as f64 / chains as f64)
}

fn virtqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtqueue_blk");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let q = BlkQueue::new(BATCH, 4096);
    g.bench_function("chain_walk", |b| {
        b.iter_custom(|iters| per_chain(iters, || assert_eq!(black_box(q.walk_batch()), 192)))
    });
    for bs in [512u64, 4096] {
        let mut q = BlkQueue::new(BATCH, bs);
        g.bench_function(format!("serve_read_{bs}"), |b| {
            b.iter_custom(|iters| per_chain(iters, || assert_eq!(q.serve_batch(), 64)))
        });
    }
    g.finish();
}

fn print_summary() {
    let walk_q = BlkQueue::new(BATCH, 4096);
    let mut small = BlkQueue::new(BATCH, 512);
    let mut large = BlkQueue::new(BATCH, 4096);
    let (mut walk, mut s512, mut s4k) = (Vec::new(), Vec::new(), Vec::new());
    let n = 64 * 200u64;
    for _ in 0..9 {
        let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
        walk.push(ns(per_chain(n, || {
            black_box(walk_q.walk_batch());
        })));
        s512.push(ns(per_chain(n, || {
            black_box(small.serve_batch());
        })));
        s4k.push(ns(per_chain(n, || {
            black_box(large.serve_batch());
        })));
    }
    assert!(small.all_ok() && large.all_ok());
    let (w, a, b) = (median(walk), median(s512), median(s4k));
    println!(
        "virtqueue_blk: per chain: chain::walk {w:.0} ns; serve_all 512 B read {a:.0} ns, 4 KiB read {b:.0} ns (walk = {:.0}% of a 512 B request)",
        100.0 * w / a
    );
}

criterion_group!(benches, virtqueue);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_summary();
}
