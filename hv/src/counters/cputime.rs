//! CPU time of individual threads, readable from any thread (per-thread CPU clocks), also
//! after the thread has ended.
//!
//! A thread's CPU clock stops answering when the thread exits, yet the meter reads whole-run
//! totals after the vCPU and worker threads are joined. So each thread that hands out its clock
//! keeps a thread-local guard; its destructor (run as the thread exits, before a join returns)
//! stores the clock's final reading, and readers use that once it is there.

use std::cell::OnceCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
struct Inner {
    id: libc::clockid_t,
    final_ns: AtomicU64,
    ended: AtomicBool,
}

impl Inner {
    fn live_ns(&self) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out pointer; a clock id of an ended thread only makes the call
        // fail.
        let rc = unsafe { libc::clock_gettime(self.id, &mut ts) };
        (rc == 0).then(|| {
            (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64)
        })
    }
}

/// Stores the final reading of the owning thread's clock when the thread ends.
struct FinalReading(Arc<Inner>);

impl Drop for FinalReading {
    fn drop(&mut self) {
        let ns = self.0.live_ns().unwrap_or(0);
        self.0.final_ns.store(ns, Ordering::Relaxed);
        self.0.ended.store(true, Ordering::Release);
    }
}

thread_local! {
    static THIS_THREAD: OnceCell<FinalReading> = const { OnceCell::new() };
}

/// A thread's CPU-time clock (cheap to clone; all clones of one thread share its final reading).
#[derive(Debug, Clone)]
pub struct ThreadClock(Arc<Inner>);

impl ThreadClock {
    /// The calling thread's clock (`None` if the thread has no CPU clock or is already ending).
    pub fn current() -> Option<ThreadClock> {
        THIS_THREAD
            .try_with(|cell| {
                if let Some(f) = cell.get() {
                    return Some(ThreadClock(f.0.clone()));
                }
                let mut id: libc::clockid_t = 0;
                // SAFETY: pthread_self() is always a valid thread; `id` is a valid out pointer.
                let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
                if rc != 0 {
                    return None;
                }
                let inner = Arc::new(Inner {
                    id,
                    final_ns: AtomicU64::new(0),
                    ended: AtomicBool::new(false),
                });
                let _ = cell.set(FinalReading(inner.clone()));
                Some(ThreadClock(inner))
            })
            .ok()
            .flatten()
    }

    /// CPU time consumed so far, in nanoseconds; for an ended thread, all it consumed.
    pub fn read_ns(&self) -> u64 {
        if self.0.ended.load(Ordering::Acquire) {
            return self.0.final_ns.load(Ordering::Relaxed);
        }
        match self.0.live_ns() {
            Some(ns) => ns,
            // The thread ended between the two checks: its guard has stored the reading by now
            // (the clock stops answering only after thread-local destructors ran).
            None => {
                let _ = self.0.ended.load(Ordering::Acquire);
                self.0.final_ns.load(Ordering::Relaxed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_thread_clock_advances() {
        let c = ThreadClock::current().unwrap();
        let a = c.read_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(c.read_ns() > a, "{x}");
    }

    fn spin() -> u64 {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        x
    }

    /// The meter reads whole-run totals after the threads were joined: the clock must still
    /// answer with what the thread used.
    #[test]
    fn clock_of_an_ended_thread_keeps_its_final_reading() {
        let t = std::thread::spawn(|| {
            let c = ThreadClock::current().unwrap();
            std::hint::black_box(spin());
            c
        });
        let c = t.join().unwrap();
        let ns = c.read_ns();
        assert!(ns > 0, "an ended thread's clock reads {ns} ns");
        assert_eq!(c.read_ns(), ns, "the final reading is stable");
    }
}
