//! Lifecycle throughput: partitions created -> booted -> exited -> destroyed per second, by
//! hv and by the raw kvm-ioctls loop, serially and with one creator thread per host CPU.
//!
//! One lifecycle is [`crate::hv_create_run_destroy`] (hv: VM, memory, split irqchip, one vCPU
//! thread, the tiny guest's first exit at the exit port, teardown) or
//! [`crate::raw_create_run_destroy`] (the same guest code, the vCPU run on the creator thread).
//! Creator thread `i` is pinned to the i-th CPU this process may use, and so is the vCPU of
//! every partition it creates, so "per core" means per host CPU doing the work.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hv::tiny_guest;
use kvm_ioctls::Kvm;

/// Which side does the lifecycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Raw,
    Hv,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw kvm-ioctls",
            Side::Hv => "hv",
        }
    }
}

/// Lifecycles done by `threads` creator threads in `secs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub side: Side,
    pub threads: usize,
    pub lifecycles: u64,
    pub secs: f64,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.lifecycles as f64 / self.secs
    }

    /// Per host CPU doing the work (one per creator thread).
    pub fn per_sec_per_core(&self) -> f64 {
        self.per_sec() / self.threads.max(1) as f64
    }
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (cpu < CPU_SETSIZE checked);
    // sched_setaffinity(0, ...) applies to the calling thread.
    unsafe {
        if cpu < libc::CPU_SETSIZE as usize {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Runs lifecycles on `cpus.len()` creator threads (one pinned per CPU) for `dur`, after one
/// untimed warm-up lifecycle per thread.
pub fn measure(kvm: &Kvm, side: Side, cpus: &[usize], dur: Duration) -> Throughput {
    let code = tiny_guest::exit_now(0);
    let elf = tiny_guest::elf(&code);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = std::sync::Barrier::new(cpus.len() + 1);
    let mut secs = 0.0;
    std::thread::scope(|s| {
        for &cpu in cpus {
            let (code, elf, done, stop, start) = (&code, &elf, &done, &stop, &start);
            s.spawn(move || {
                pin(cpu);
                let one = || match side {
                    Side::Raw => crate::raw_create_run_destroy(kvm, code),
                    Side::Hv => {
                        let mut cfg = crate::hv_config();
                        cfg.pin = Some(vec![cpu]);
                        crate::hv_lifecycle(kvm, cfg, elf);
                    }
                };
                one();
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    one();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        start.wait();
        let t = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        secs = t.elapsed().as_secs_f64();
    });
    // Lifecycles still in flight at the stop are counted and finish after it: measure until
    // the last one ended would undercount nothing and overcount by at most one per thread.
    Throughput {
        side,
        threads: cpus.len(),
        lifecycles: done.load(Ordering::Relaxed),
        secs,
    }
}

/// The four measurements of one run: raw and hv, serially (one thread on the first CPU) and
/// with one creator thread per CPU in `cpus`, interleaved so drift hits both sides alike.
pub fn table(kvm: &Kvm, cpus: &[usize], dur: Duration) -> Vec<Throughput> {
    let first = &cpus[..1.min(cpus.len())];
    vec![
        measure(kvm, Side::Raw, first, dur),
        measure(kvm, Side::Hv, first, dur),
        measure(kvm, Side::Raw, cpus, dur),
        measure(kvm, Side::Hv, cpus, dur),
    ]
}

/// The table as text: per row lifecycles/s, per core, and hv / raw.
pub fn render(rows: &[Throughput]) -> String {
    let mut s = String::from(
        "lifecycle throughput (create -> boot -> first exit -> destroy)\n  side            threads  lifecycles     /s  /s/core  hv/raw\n",
    );
    for r in rows {
        let raw = rows
            .iter()
            .find(|o| o.side == Side::Raw && o.threads == r.threads)
            .map(Throughput::per_sec);
        let ratio = match (r.side, raw) {
            (Side::Hv, Some(raw)) if raw > 0.0 => format!("{:.2}", r.per_sec() / raw),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "  {:<15} {:>7} {:>11} {:>6.0} {:>8.0} {:>7}\n",
            r.side.name(),
            r.threads,
            r.lifecycles,
            r.per_sec(),
            r.per_sec_per_core(),
            ratio
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_complete_lifecycles_on_every_thread() {
        let kvm = hv::error::open_kvm().expect("/dev/kvm");
        let cpus = hv::limits::allowed_cpus().unwrap();
        let cpus = &cpus[..cpus.len().min(2)];
        for side in [Side::Raw, Side::Hv] {
            let t = measure(&kvm, side, cpus, Duration::from_millis(200));
            assert!(t.lifecycles > 0, "{t:?}");
            assert_eq!(t.threads, cpus.len());
        }
        let rows = [
            Throughput {
                side: Side::Raw,
                threads: 2,
                lifecycles: 400,
                secs: 1.0,
            },
            Throughput {
                side: Side::Hv,
                threads: 2,
                lifecycles: 300,
                secs: 1.0,
            },
        ];
        let text = render(&rows);
        assert!(text.contains(" 150 ") && text.contains("0.75"), "{text}");
    }
}
