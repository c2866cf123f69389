//! What a seccomp filter adds to one system call: a thread with each kind's filter and one
//! without make the same cheap allowed call (`gettid` through syscall(2)) many times; the
//! difference in thread CPU time per call is the filter's BPF run on syscall entry.
//!
//! `cargo run --release -p hv --example seccomp_cost [CALLS]`. A vCPU exit costs one KVM_RUN
//! (one filtered call); `scripts/seccomp-ab.py` measures whole workloads with and without.

use std::time::Duration;

use hv::isolation::seccomp::{self, Monitor, ThreadKind};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// ns of thread CPU per `gettid` call, on a fresh thread with `kind`'s filter (or none).
fn per_call(kind: Option<ThreadKind>, calls: u64) -> f64 {
    let monitor = Monitor::new(kind.is_some());
    let target = seccomp::Target::new(&monitor, "bench");
    let ns = std::thread::spawn(move || {
        if let Some(k) = kind {
            seccomp::install(k, &target);
        }
        let t = thread_cpu();
        for _ in 0..calls {
            // SAFETY: gettid has no preconditions.
            std::hint::black_box(unsafe { libc::syscall(libc::SYS_gettid) });
        }
        (thread_cpu() - t).as_nanos() as f64 / calls as f64
    })
    .join()
    .expect("bench thread");
    assert_eq!(monitor.violation(), None, "gettid is allowed");
    ns
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    for (kind, name) in [(ThreadKind::Vcpu, "vcpu"), (ThreadKind::Worker, "worker")] {
        let filter = seccomp::compile(kind).map(|p| p.len()).unwrap_or(0);
        // Alternate to share the host's load fairly; keep the best of five of each.
        let (mut off, mut on) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            off = off.min(per_call(None, calls));
            on = on.min(per_call(Some(kind), calls));
        }
        println!(
            "{name:6} filter ({filter} BPF instructions): {on:.1} ns/call vs {off:.1} unfiltered \
             (+{:.1} ns per system call)",
            on - off
        );
    }
}
