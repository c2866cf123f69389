//! Measured phases and the result lines that report them (protocol: `HVLAB rec=phase ...`).
//!
//! A phase is bracketed by marker writes; the guest reads the TSC just inside the markers and
//! prints its record only after the end marker, so console output never counts in a phase.

use core::sync::atomic::{AtomicU32, Ordering};

use hvlab_protocol::{HIST_BUCKETS, hist_bucket};

use crate::cpu::rdtsc;
use crate::hv::{phase_begin, phase_end};

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// An open phase; end it with [`Phase::end`].
#[derive(Debug)]
#[must_use = "a phase that is never ended reports nothing"]
pub struct Phase {
    id: u32,
    name: &'static str,
    start: u64,
}

/// A finished phase, ready to report.
#[derive(Debug)]
pub struct Finished {
    pub id: u32,
    pub name: &'static str,
    pub ops: u64,
    pub tsc: u64,
}

/// Opens phase `name` (ids are assigned in order, starting at 1).
pub fn begin(name: &'static str) -> Phase {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    phase_begin(id);
    Phase {
        id,
        name,
        start: rdtsc(),
    }
}

impl Phase {
    /// Closes the phase after `ops` operations.
    pub fn end(self, ops: u64) -> Finished {
        let end = rdtsc();
        phase_end(self.id);
        Finished {
            id: self.id,
            name: self.name,
            ops,
            tsc: end.wrapping_sub(self.start),
        }
    }
}

impl Finished {
    /// Prints the phase record with extra `metrics`, and its histogram if given.
    pub fn report(&self, metrics: &[(&str, u64)], hist: Option<&Histogram>) {
        {
            use core::fmt::Write as _;
            let mut c = crate::console::Console::lock();
            let _ = write!(
                c,
                "HVLAB rec=phase id={} name={} ops={} tsc={}",
                self.id, self.name, self.ops, self.tsc
            );
            for (k, v) in metrics {
                let _ = write!(c, " {k}={v}");
            }
            let _ = c.write_str("\n");
        }
        if let Some(h) = hist {
            h.report(self.id);
        }
    }
}

/// Reports a micro-test that could not run here, with a reason (one word, underscores).
pub fn skip(name: &str, reason: &str) {
    crate::println!("HVLAB rec=skip name={name} reason={reason}");
}

/// Per-operation latency histogram in the protocol's log-linear buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [u32; HIST_BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; HIST_BUCKETS],
        }
    }
}

impl Histogram {
    /// Records one value (TSC cycles).
    #[inline]
    pub fn record(&mut self, v: u64) {
        let b = &mut self.buckets[hist_bucket(v)];
        *b = b.saturating_add(1);
    }

    /// Prints the non-empty buckets for phase `id`.
    pub fn report(&self, id: u32) {
        use core::fmt::Write as _;
        let mut c = crate::console::Console::lock();
        let _ = write!(c, "HVLAB rec=hist id={id} unit=tsc b=");
        let mut first = true;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n != 0 {
                let _ = write!(c, "{}{i}:{n}", if first { "" } else { "," });
                first = false;
            }
        }
        let _ = c.write_str("\n");
    }
}
