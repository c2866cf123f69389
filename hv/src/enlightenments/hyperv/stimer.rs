//! Synthetic timers (`hv-stimer`, `hv-stimer-direct`): STIMER0-3 CONFIG/COUNT per VP, on the
//! partition reference time of `hv-time` (100 ns units).
//!
//! CONFIG (TLFS): enable 0, periodic 1, lazy 2, auto-enable 3, APIC vector 11:4, direct mode 12,
//! SINT 19:16; bits 15:13 and 63:20 reserved (#GP), direct mode without `hv-stimer-direct`
//! #GPs too. A message-mode timer with SINT 0 cannot be enabled (the enable bit is cleared, as
//! KVM does). COUNT: for a one-shot timer the absolute expiry time, for a periodic one the
//! period. Writing COUNT 0 disables the timer; a non-zero COUNT sets enable when auto-enable is
//! set. An enabled timer is (re)armed on every write: one-shot at COUNT (already past: it
//! expires at once), periodic at now + period.
//!
//! Expiry: a one-shot timer clears its enable bit; a periodic one re-arms at the next multiple
//! of its period and, when it fell more than one period behind (a busy host), at now + period:
//! missed periods are counted, not replayed. Direct mode raises the timer's vector; message
//! mode posts HVMSG_TIMER_EXPIRED into the SINT, and a busy slot keeps the expiry waiting for
//! EOM (one per SINT; see `synic`).
//!
//! Bounded by construction: 4 timers per VP, periods shorter than [`MIN_PERIOD`] (100 us) are
//! raised to it, and expiries are found by one host thread per partition that sleeps until the
//! earliest deadline (or [`MAX_SLEEP`], to see the run end) and kicks the owning vCPU, which
//! delivers before it re-enters the guest (`enlightenments::host`). A guest cannot make hv
//! spin: the thread wakes at most once per [`MIN_PERIOD`] per timer.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use hvlab_protocol::hyperv as tlfs;

use super::msr::Gp;

/// Timers per VP.
pub(crate) const TIMERS: u32 = 4;
/// Shortest period hv honours, 100 ns units (100 us).
pub(crate) const MIN_PERIOD: u64 = 1_000;
/// Longest the timer thread sleeps before checking whether the run ended.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(10);
const CONFIG_RESERVED: u64 = !0xf_1fff;

/// One expiry to deliver on the owning VP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expiry {
    pub timer: u32,
    /// Direct mode: this vector; else a message into `sint`.
    pub direct: Option<u32>,
    pub sint: u32,
    /// When it was due (reference time).
    pub expiration: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Timer {
    config: u64,
    count: u64,
    deadline: Option<u64>,
}

impl Timer {
    fn enabled(&self) -> bool {
        self.config & tlfs::STIMER_ENABLE != 0
    }
    fn periodic(&self) -> bool {
        self.config & tlfs::STIMER_PERIODIC != 0
    }
    fn direct(&self) -> bool {
        self.config & tlfs::STIMER_DIRECT != 0
    }
    fn sint(&self) -> u32 {
        ((self.config >> 16) & 0xf) as u32
    }
    fn vector(&self) -> u32 {
        ((self.config >> 4) & 0xff) as u32
    }

    fn arm(&mut self, now: u64) {
        if !self.direct() && self.sint() == 0 {
            self.config &= !tlfs::STIMER_ENABLE;
        }
        self.deadline = if !self.enabled() || self.count == 0 {
            None
        } else if self.periodic() {
            Some(now.saturating_add(self.count.max(MIN_PERIOD)))
        } else {
            Some(self.count)
        };
    }
}

/// The synthetic timers of one partition.
#[derive(Debug)]
pub(crate) struct Stimers {
    vps: Box<[Mutex<[Timer; TIMERS as usize]>]>,
    direct_allowed: bool,
    /// Bumped on every arm, so the timer thread re-reads the earliest deadline.
    generation: Mutex<u64>,
    wake: Condvar,
}

impl Stimers {
    pub(crate) fn new(vcpus: u32, direct_allowed: bool) -> Self {
        Stimers {
            vps: (0..vcpus).map(|_| Mutex::new(Default::default())).collect(),
            direct_allowed,
            generation: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    /// True when `msr` is an STIMER MSR.
    pub(crate) fn handles(msr: u32) -> bool {
        (tlfs::MSR_STIMER0_CONFIG..tlfs::MSR_STIMER0_CONFIG + 2 * TIMERS).contains(&msr)
    }

    fn slot(msr: u32) -> (usize, bool) {
        let off = msr - tlfs::MSR_STIMER0_CONFIG;
        ((off / 2) as usize, off % 2 == 1)
    }

    /// RDMSR on VP `vp`.
    pub(crate) fn read(&self, vp: u32, msr: u32) -> Result<u64, Gp> {
        if !Self::handles(msr) {
            return Err(Gp);
        }
        let g = super::lock(self.vps.get(vp as usize).ok_or(Gp)?);
        let (i, count) = Self::slot(msr);
        Ok(if count { g[i].count } else { g[i].config })
    }

    /// WRMSR on VP `vp` at reference time `now`.
    pub(crate) fn write(&self, vp: u32, msr: u32, value: u64, now: u64) -> Result<(), Gp> {
        if !Self::handles(msr) {
            return Err(Gp);
        }
        let (i, is_count) = Self::slot(msr);
        {
            let mut g = super::lock(self.vps.get(vp as usize).ok_or(Gp)?);
            let t = &mut g[i];
            if is_count {
                t.count = value;
                if value == 0 {
                    t.config &= !tlfs::STIMER_ENABLE;
                } else if t.config & tlfs::STIMER_AUTO_ENABLE != 0 {
                    t.config |= tlfs::STIMER_ENABLE;
                }
            } else {
                if value & CONFIG_RESERVED != 0 {
                    return Err(Gp);
                }
                if value & tlfs::STIMER_DIRECT != 0 && !self.direct_allowed {
                    return Err(Gp);
                }
                t.config = value;
            }
            t.arm(now);
        }
        *super::lock(&self.generation) += 1;
        self.wake.notify_all();
        Ok(())
    }

    /// Takes the expiries of VP `vp` due at `now`, re-arming periodic timers; returns how many
    /// periods were skipped (fell behind by more than one) beside them.
    pub(crate) fn due(&self, vp: u32, now: u64) -> (Vec<Expiry>, u64) {
        let mut out = Vec::new();
        let mut skipped = 0;
        let Some(m) = self.vps.get(vp as usize) else {
            return (out, 0);
        };
        let mut g = super::lock(m);
        for (i, t) in g.iter_mut().enumerate() {
            let Some(d) = t.deadline.filter(|d| *d <= now) else {
                continue;
            };
            out.push(Expiry {
                timer: i as u32,
                direct: t.direct().then(|| t.vector()),
                sint: t.sint(),
                expiration: d,
            });
            if t.periodic() {
                let period = t.count.max(MIN_PERIOD);
                let next = d.saturating_add(period);
                t.deadline = Some(if next <= now {
                    skipped += (now - d) / period;
                    now.saturating_add(period)
                } else {
                    next
                });
            } else {
                t.config &= !tlfs::STIMER_ENABLE;
                t.deadline = None;
            }
        }
        (out, skipped)
    }

    /// The earliest armed deadline and the VPs due at `now`.
    pub(crate) fn scan(&self, now: u64) -> (Option<u64>, Vec<u32>) {
        let mut earliest: Option<u64> = None;
        let mut due = Vec::new();
        for (vp, m) in self.vps.iter().enumerate() {
            let g = super::lock(m);
            for d in g.iter().filter_map(|t| t.deadline) {
                if d <= now {
                    if !due.contains(&(vp as u32)) {
                        due.push(vp as u32);
                    }
                } else {
                    earliest = Some(earliest.map_or(d, |e| e.min(d)));
                }
            }
        }
        (earliest, due)
    }

    /// Sleeps up to `limit` or until a timer is (re)armed.
    pub(crate) fn sleep(&self, limit: Duration) {
        let g = super::lock(&self.generation);
        let seen = *g;
        let _ = self
            .wake
            .wait_timeout_while(g, limit, |g| *g == seen)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// The timer thread of a partition: until `stopping`, finds the VPs with a due timer and
/// `kick`s each (the caller makes repeated kicks of a VP that has not yet delivered cheap and
/// idempotent), then sleeps until the earliest deadline, a re-arm, or [`MAX_SLEEP`]. While a
/// kicked VP has not delivered yet it looks again after [`MIN_PERIOD`], so it never spins.
/// Returns when the reference time is unknown (`now` gives `None`).
pub(crate) fn run_thread(
    timers: &Stimers,
    now: impl Fn() -> Option<u64>,
    stopping: impl Fn() -> bool,
    kick: impl Fn(u32),
) {
    while !stopping() {
        let Some(n) = now() else { return };
        let (earliest, due) = timers.scan(n);
        for &vp in &due {
            kick(vp);
        }
        let wait = if due.is_empty() {
            earliest.map_or(MAX_SLEEP, |e| sleep_for(e - n))
        } else {
            sleep_for(MIN_PERIOD)
        };
        timers.sleep(wait);
    }
}

/// 100 ns units to a sleep, capped at [`MAX_SLEEP`].
pub(crate) fn sleep_for(units: u64) -> Duration {
    Duration::from_nanos(units.saturating_mul(100)).min(MAX_SLEEP)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG0: u32 = tlfs::MSR_STIMER0_CONFIG;
    const COUNT0: u32 = tlfs::MSR_STIMER0_CONFIG + 1;

    fn config(sint: u64, flags: u64) -> u64 {
        sint << 16 | flags
    }

    /// The timer thread sleeps until a deadline, kicks a due VP, re-looks no more often than
    /// every MIN_PERIOD while that VP has not delivered, and ends when told to stop.
    #[test]
    fn timer_thread_is_bounded_and_stops() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::time::Instant;
        let s = Stimers::new(2, false);
        // Due at reference time 0: always due, never delivered (nobody calls `due`).
        s.write(1, COUNT0, 1, 0).unwrap();
        s.write(1, CONFIG0, config(2, tlfs::STIMER_ENABLE), 0)
            .unwrap();
        let kicks = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                run_thread(
                    &s,
                    || Some(start.elapsed().as_nanos() as u64 / 100),
                    || stop.load(Ordering::SeqCst),
                    |vp| {
                        assert_eq!(vp, 1);
                        kicks.fetch_add(1, Ordering::SeqCst);
                    },
                )
            });
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::SeqCst);
        });
        let k = kicks.load(Ordering::SeqCst);
        // At most one look per 100 us over 50 ms (plus slack for a slow host), at least one.
        assert!((1..=600).contains(&k), "{k} kicks");
        assert!(start.elapsed() < Duration::from_secs(2), "stopped promptly");
        // Nothing armed: the thread sleeps MAX_SLEEP at a time and ends on stop.
        let idle = Stimers::new(1, false);
        let looks = AtomicU64::new(0);
        let t0 = Instant::now();
        run_thread(
            &idle,
            || {
                looks.fetch_add(1, Ordering::SeqCst);
                Some(0)
            },
            || t0.elapsed() > Duration::from_millis(30),
            |_| panic!("nothing is due"),
        );
        assert!(looks.load(Ordering::SeqCst) <= 6, "{looks:?}");
        // No reference time: the thread returns at once.
        run_thread(&idle, || None, || false, |_| {});
    }

    #[test]
    fn reserved_bits_direct_mode_and_sint0() {
        let s = Stimers::new(2, false);
        for bad in [1 << 13, 1 << 15, 1 << 20, 1 << 63] {
            assert_eq!(
                s.write(0, CONFIG0, config(2, 1) | bad, 0),
                Err(Gp),
                "{bad:#x}"
            );
        }
        assert_eq!(
            s.write(0, CONFIG0, tlfs::STIMER_DIRECT | 0x400 | 1, 0),
            Err(Gp)
        );
        assert_eq!(s.read(0, tlfs::MSR_STIMER0_CONFIG + 8), Err(Gp));
        assert_eq!(s.write(2, CONFIG0, 0, 0), Err(Gp), "no VP 2");
        // Message mode with SINT 0: enable is cleared.
        s.write(0, CONFIG0, config(0, tlfs::STIMER_ENABLE), 0)
            .unwrap();
        assert_eq!(s.read(0, CONFIG0), Ok(0));
        let d = Stimers::new(1, true);
        let v = tlfs::STIMER_DIRECT | 0x50 << 4 | tlfs::STIMER_ENABLE;
        d.write(0, CONFIG0, v, 0).unwrap();
        assert_eq!(d.read(0, CONFIG0), Ok(v), "direct mode needs no SINT");
    }

    #[test]
    fn one_shot_fires_once_at_its_absolute_time() {
        let s = Stimers::new(1, false);
        s.write(0, CONFIG0, config(3, tlfs::STIMER_ENABLE), 100)
            .unwrap();
        assert_eq!(s.scan(100), (None, vec![]), "COUNT 0: not armed");
        s.write(0, COUNT0, 5_000, 100).unwrap();
        assert_eq!(s.scan(100), (Some(5_000), vec![]));
        assert_eq!(s.due(0, 4_999).0, vec![]);
        let (e, skipped) = s.due(0, 5_010);
        assert_eq!(skipped, 0);
        assert_eq!(
            e,
            vec![Expiry {
                timer: 0,
                direct: None,
                sint: 3,
                expiration: 5_000
            }]
        );
        assert_eq!(s.read(0, CONFIG0).unwrap() & tlfs::STIMER_ENABLE, 0);
        assert_eq!(s.due(0, 9_999).0, vec![], "once");
        // A deadline already past expires at the next check.
        s.write(0, CONFIG0, config(3, tlfs::STIMER_ENABLE), 20_000)
            .unwrap();
        assert_eq!(s.scan(20_000).1, vec![0]);
        // COUNT 0 disables.
        s.write(0, COUNT0, 0, 20_000).unwrap();
        assert_eq!(s.scan(20_000), (None, vec![]));
    }

    #[test]
    fn periodic_and_auto_enable_and_missed_periods() {
        let s = Stimers::new(2, true);
        let timer1 = tlfs::MSR_STIMER0_CONFIG + 2;
        let c = config(
            0,
            tlfs::STIMER_PERIODIC | tlfs::STIMER_AUTO_ENABLE | tlfs::STIMER_DIRECT,
        ) | 0x61 << 4;
        s.write(1, timer1, c, 0).unwrap();
        assert_eq!(s.scan(0), (None, vec![]), "not enabled yet");
        s.write(1, timer1 + 1, 2_000, 1_000).unwrap();
        assert_ne!(
            s.read(1, timer1).unwrap() & tlfs::STIMER_ENABLE,
            0,
            "auto-enabled"
        );
        assert_eq!(s.scan(1_000), (Some(3_000), vec![]));
        let mut fired = 0;
        for now in (1_000..=11_000).step_by(500) {
            let (e, skipped) = s.due(1, now);
            assert_eq!(skipped, 0);
            for x in e {
                assert_eq!(x.direct, Some(0x61));
                assert_eq!(x.timer, 1);
                fired += 1;
            }
        }
        assert_eq!(fired, 5, "expiries at 3k, 5k, 7k, 9k, 11k");
        // Far behind: one expiry, missed periods counted, re-armed from now.
        let (e, skipped) = s.due(1, 30_000);
        assert_eq!(e.len(), 1);
        assert_eq!(skipped, 8);
        assert_eq!(s.scan(30_000).0, Some(32_000));
        // Periods below the minimum are raised to it.
        s.write(0, COUNT0, 1, 0).unwrap();
        s.write(
            0,
            CONFIG0,
            config(2, tlfs::STIMER_PERIODIC | tlfs::STIMER_ENABLE),
            0,
        )
        .unwrap();
        assert_eq!(s.scan(0).0, Some(MIN_PERIOD));
        assert_eq!(sleep_for(10), Duration::from_micros(1));
        assert_eq!(sleep_for(u64::MAX), MAX_SLEEP);
    }
}
