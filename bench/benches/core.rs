//! hv's overhead against a raw kvm-ioctls loop running the same guest code:
//! (a) a PIO exit round trip through hv's dispatch, (b) partition create -> first exit ->
//! teardown. Prints both ratios after criterion's own reports (targets: <= 1.05x, <= 1.25x).

use std::time::{Duration, Instant};

use bench::{hv_create_run_destroy, hv_pio_exits, median, raw_create_run_destroy, raw_pio_exits};
use criterion::{Criterion, criterion_group};
use hv::tiny_guest;

fn pio_exit(c: &mut Criterion) {
    let kvm = hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("this bench boots guests and needs /dev/kvm: {e}"));
    let mut g = c.benchmark_group("pio_exit_round_trip");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("raw_kvm_ioctls", |b| {
        b.iter_custom(|iters| raw_pio_exits(&kvm, iters.max(1) as u32))
    });
    g.bench_function("hv_dispatch", |b| {
        b.iter_custom(|iters| hv_pio_exits(&kvm, iters.max(1) as u32))
    });
    g.finish();
}

fn lifecycle(c: &mut Criterion) {
    let kvm = hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("this bench boots guests and needs /dev/kvm: {e}"));
    let code = tiny_guest::exit_now(0);
    let elf = tiny_guest::elf(&code);
    let mut g = c.benchmark_group("create_first_exit_teardown");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    g.bench_function("raw_kvm_ioctls", |b| {
        b.iter(|| raw_create_run_destroy(&kvm, &code))
    });
    g.bench_function("hv_partition", |b| {
        b.iter(|| hv_create_run_destroy(&kvm, &elf))
    });
    g.finish();
}

/// Interleaved rounds so that drift on a shared host hits both sides alike.
fn print_ratios() {
    let kvm = hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("this bench boots guests and needs /dev/kvm: {e}"));
    let n = 2000u32;
    let (mut raw, mut hv) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        raw.push(raw_pio_exits(&kvm, n).as_nanos() as f64 / f64::from(n));
        hv.push(hv_pio_exits(&kvm, n).as_nanos() as f64 / f64::from(n));
    }
    let (r, h) = (median(raw), median(hv));
    println!(
        "ratio (a) PIO exit round trip: hv {h:.0} ns / raw {r:.0} ns = {:.3}x (target <= 1.05x)",
        h / r
    );

    let code = tiny_guest::exit_now(0);
    let elf = tiny_guest::elf(&code);
    let (mut raw, mut hv) = (Vec::new(), Vec::new());
    for _ in 0..41 {
        let t = Instant::now();
        raw_create_run_destroy(&kvm, &code);
        raw.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        hv_create_run_destroy(&kvm, &elf);
        hv.push(t.elapsed().as_nanos() as f64);
    }
    let (r, h) = (median(raw), median(hv));
    println!(
        "ratio (b) create -> first exit -> teardown: hv {:.3} ms / raw {:.3} ms = {:.3}x (target <= 1.25x)",
        h / 1e6,
        r / 1e6,
        h / r
    );
}

criterion_group!(benches, pio_exit, lifecycle);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}
