//! `cargo bench -p bench --bench lifecycle [-- SECONDS]`: partitions created -> booted ->
//! exited -> destroyed per second, hv against the raw kvm-ioctls loop in the same run,
//! serially and with one creator thread per host CPU (`bench::lifecycle`).

use std::time::Duration;

fn main() {
    let kvm = hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("this bench boots guests and needs /dev/kvm: {e}"));
    // `cargo bench` passes `--bench`; a number among the arguments is the seconds per row.
    let secs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .unwrap_or(3.0);
    let cpus = hv::limits::allowed_cpus().unwrap_or_else(|_| vec![0]);
    let rows = bench::lifecycle::table(&kvm, &cpus, Duration::from_secs_f64(secs));
    print!("{}", bench::lifecycle::render(&rows));
}
