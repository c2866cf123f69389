//! Snapshots of every counter source at phase markers, and the per-phase deltas.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::cputime::ThreadClock;
use super::exits::{ExitReason, VcpuExitCounters};
use super::kvm_stats::KvmStatsReader;
use super::tracepoints::ThreadTracepoints;
use crate::record::CpuTime;

// The guest controls the markers, so hv bounds what it keeps (caps in `crate::limits`).
use crate::limits::{BoundedNotes, MAX_NOTES, MAX_OPEN_PHASES, MAX_PHASES};

/// Counter deltas of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseDelta {
    pub id: u32,
    pub wall_ns: u64,
    pub exits: BTreeMap<String, u64>,
    pub exits_by_device: BTreeMap<String, u64>,
    pub kvm_stats: BTreeMap<String, i64>,
    pub tracepoints: BTreeMap<String, u64>,
    pub cpu: CpuTime,
}

#[derive(Debug, Clone, Copy)]
enum Edge {
    Begin,
    End,
}

/// Counters kept outside the exit path (e.g. hv's enlightenment runtime), snapshotted at every
/// marker with the rest and reported in `PhaseDelta::exits_by_device` under their names.
pub trait CounterSource: Send + Sync + std::fmt::Debug {
    /// One name per value `read` appends.
    fn names(&self) -> &[&'static str];
    /// Appends the current values.
    fn read(&self, out: &mut Vec<u64>);
}

#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    exits: Vec<u64>,
    kvm_vcpu: Vec<u64>,
    kvm_vm: Vec<u64>,
    tracepoints: Vec<u64>,
    cpu: CpuTime,
    extra: Vec<u64>,
}

#[derive(Debug, Default)]
struct Threads {
    vcpu_clocks: Vec<ThreadClock>,
    worker_clocks: Vec<ThreadClock>,
    tracepoints: Vec<ThreadTracepoints>,
}

#[derive(Debug, Default)]
struct Book {
    open: HashMap<u32, Snapshot>,
    done: Vec<PhaseDelta>,
}

/// Everything a partition counts, shared by its vCPU and worker threads.
#[derive(Debug)]
pub struct Meter {
    exits: Vec<Arc<VcpuExitCounters>>,
    /// Names of the flattened exit-counter vector: reasons, then `pio:` and `mmio:` devices.
    exit_names: Vec<String>,
    reasons: usize,
    kvm_vcpu: Vec<KvmStatsReader>,
    kvm_vm: Option<KvmStatsReader>,
    threads: Mutex<Threads>,
    book: Mutex<Book>,
    notes: Mutex<BoundedNotes>,
    sources: Mutex<Vec<std::sync::Arc<dyn CounterSource>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Meter {
    /// A meter over `exits` (one per vCPU, all for the same buses), with device names by slot.
    pub fn new(
        exits: Vec<Arc<VcpuExitCounters>>,
        pio_names: &[String],
        mmio_names: &[String],
        kvm_vcpu: Vec<KvmStatsReader>,
        kvm_vm: Option<KvmStatsReader>,
    ) -> Meter {
        let mut exit_names: Vec<String> = ExitReason::ALL
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        let reasons = exit_names.len();
        exit_names.extend(pio_names.iter().map(|n| format!("pio:{n}")));
        exit_names.push("pio:unmapped".into());
        exit_names.extend(mmio_names.iter().map(|n| format!("mmio:{n}")));
        exit_names.push("mmio:unmapped".into());
        Meter {
            exits,
            exit_names,
            reasons,
            kvm_vcpu,
            kvm_vm,
            threads: Mutex::default(),
            book: Mutex::default(),
            notes: Mutex::new(BoundedNotes::new(MAX_NOTES)),
            sources: Mutex::default(),
        }
    }

    /// Registers the calling thread as a vCPU thread (CPU time, tracepoints if `tracepoints`).
    pub fn register_vcpu_thread(&self, tracepoints: bool) {
        let clock = ThreadClock::current();
        let tp = if tracepoints {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            match ThreadTracepoints::open(tid) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.note(format!("tracepoints unavailable: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let mut t = lock(&self.threads);
        t.vcpu_clocks.extend(clock);
        t.tracepoints.extend(tp);
    }

    /// Counts `clock` (a device worker thread's) as worker CPU time.
    pub fn add_worker_clock(&self, clock: ThreadClock) {
        lock(&self.threads).worker_clocks.push(clock);
    }

    /// Adds counters kept outside the exit path; add them before the guest starts.
    pub fn add_source(&self, source: Arc<dyn CounterSource>) {
        lock(&self.sources).push(source);
    }

    /// Adds a remark to the run's records (deduplicated; at most `limits::MAX_NOTES`, the rest
    /// counted).
    pub fn note(&self, msg: String) {
        lock(&self.notes).add(msg);
    }

    /// The remarks so far, without the "more suppressed" line (see `bounded_notes`).
    pub fn notes(&self) -> Vec<String> {
        lock(&self.notes).kept().to_vec()
    }

    /// The remarks so far with their suppressed count.
    pub fn bounded_notes(&self) -> BoundedNotes {
        lock(&self.notes).clone()
    }

    /// This vCPU's exit counters.
    pub fn vcpu_exits(&self, index: usize) -> Option<&Arc<VcpuExitCounters>> {
        self.exits.get(index)
    }

    /// Reads every source. `at` is taken after the reads at a phase begin and before them at
    /// a phase end, so a phase's wall time excludes hv's own snapshot work.
    fn snapshot(&self, edge: Edge) -> Snapshot {
        let early = Instant::now();
        let width = self.exits.first().map_or(0, |e| e.width());
        let mut exits = vec![0u64; width];
        let mut scratch = Vec::with_capacity(width);
        for e in &self.exits {
            scratch.clear();
            e.read_into(&mut scratch);
            for (sum, v) in exits.iter_mut().zip(&scratch) {
                *sum += v;
            }
        }
        let mut kvm_vcpu = Vec::new();
        for r in &self.kvm_vcpu {
            scratch.clear();
            if let Err(e) = r.read(&mut scratch) {
                self.note(format!("KVM vCPU stats read failed: {e}"));
                continue;
            }
            if kvm_vcpu.is_empty() {
                kvm_vcpu = vec![0; scratch.len()];
            }
            for (sum, v) in kvm_vcpu.iter_mut().zip(&scratch) {
                *sum += v;
            }
        }
        let mut kvm_vm = Vec::new();
        if let Some(r) = &self.kvm_vm {
            if let Err(e) = r.read(&mut kvm_vm) {
                self.note(format!("KVM VM stats read failed: {e}"));
            }
        }
        let mut threads = lock(&self.threads);
        let mut tracepoints = Vec::new();
        for t in threads.tracepoints.iter_mut() {
            scratch.clear();
            if let Err(e) = t.read(&mut scratch) {
                self.note(format!("tracepoint read failed: {e}"));
                continue;
            }
            if tracepoints.is_empty() {
                tracepoints = vec![0; scratch.len()];
            }
            for (sum, v) in tracepoints.iter_mut().zip(&scratch) {
                *sum += v;
            }
        }
        let cpu = CpuTime {
            vcpu_ns: threads.vcpu_clocks.iter().map(|c| c.read_ns()).sum(),
            worker_ns: threads.worker_clocks.iter().map(|c| c.read_ns()).sum(),
        };
        let at = match edge {
            Edge::Begin => Instant::now(),
            Edge::End => early,
        };
        drop(threads);
        let mut extra = Vec::new();
        for s in lock(&self.sources).iter() {
            s.read(&mut extra);
        }
        Snapshot {
            at,
            exits,
            kvm_vcpu,
            kvm_vm,
            tracepoints,
            cpu,
            extra,
        }
    }

    /// Phase `id` begins: snapshot now.
    pub fn phase_begin(&self, id: u32) {
        let snap = self.snapshot(Edge::Begin);
        let mut book = lock(&self.book);
        if book.open.len() >= MAX_OPEN_PHASES {
            drop(book);
            self.note(format!(
                "more than {MAX_OPEN_PHASES} phases open at once; marker ignored"
            ));
            return;
        }
        book.open.insert(id, snap);
    }

    /// Phase `id` ends: snapshot now and keep the difference.
    pub fn phase_end(&self, id: u32) {
        let end = self.snapshot(Edge::End);
        let mut book = lock(&self.book);
        let Some(begin) = book.open.remove(&id) else {
            drop(book);
            self.note(format!("phase {id} ended without a begin marker; ignored"));
            return;
        };
        if book.done.len() >= MAX_PHASES {
            drop(book);
            self.note(format!("more than {MAX_PHASES} phases; later ones dropped"));
            return;
        }
        let delta = self.delta(id, &begin, &end);
        book.done.push(delta);
    }

    /// Finished phases, in completion order.
    pub fn phases(&self) -> Vec<PhaseDelta> {
        lock(&self.book).done.clone()
    }

    /// Total counts since the partition started (a delta from zero), for runs without phases.
    pub fn totals(&self) -> PhaseDelta {
        let end = self.snapshot(Edge::End);
        let zero = Snapshot {
            at: end.at,
            exits: vec![0; end.exits.len()],
            kvm_vcpu: vec![0; end.kvm_vcpu.len()],
            kvm_vm: vec![0; end.kvm_vm.len()],
            tracepoints: vec![0; end.tracepoints.len()],
            cpu: CpuTime::default(),
            extra: vec![0; end.extra.len()],
        };
        self.delta(0, &zero, &end)
    }

    fn delta(&self, id: u32, a: &Snapshot, b: &Snapshot) -> PhaseDelta {
        let mut d = PhaseDelta {
            id,
            wall_ns: u64::try_from(b.at.duration_since(a.at).as_nanos()).unwrap_or(u64::MAX),
            cpu: CpuTime {
                vcpu_ns: b.cpu.vcpu_ns.saturating_sub(a.cpu.vcpu_ns),
                worker_ns: b.cpu.worker_ns.saturating_sub(a.cpu.worker_ns),
            },
            ..PhaseDelta::default()
        };
        let mut total = 0;
        for (i, (x, y)) in a.exits.iter().zip(&b.exits).enumerate() {
            let v = y.saturating_sub(*x);
            if i < self.reasons {
                total += v;
                if v > 0 {
                    d.exits.insert(self.exit_names[i].clone(), v);
                }
            } else if v > 0 {
                d.exits_by_device.insert(self.exit_names[i].clone(), v);
            }
        }
        d.exits.insert("total".into(), total);
        let sources = lock(&self.sources);
        let names = sources.iter().flat_map(|s| s.names().iter());
        for ((name, x), y) in names.zip(&a.extra).zip(&b.extra) {
            d.exits_by_device
                .insert((*name).to_string(), y.saturating_sub(*x));
        }
        drop(sources);
        if let Some(r) = self.kvm_vcpu.first() {
            for ((name, x), y) in r.names().iter().zip(&a.kvm_vcpu).zip(&b.kvm_vcpu) {
                d.kvm_stats.insert(name.clone(), *y as i64 - *x as i64);
            }
        }
        if let Some(r) = &self.kvm_vm {
            for ((name, x), y) in r.names().iter().zip(&a.kvm_vm).zip(&b.kvm_vm) {
                d.kvm_stats
                    .insert(format!("vm.{name}"), *y as i64 - *x as i64);
            }
        }
        let threads = lock(&self.threads);
        if let Some(t) = threads.tracepoints.first() {
            for ((name, x), y) in t.names().iter().zip(&a.tracepoints).zip(&b.tracepoints) {
                d.tracepoints
                    .insert((*name).to_string(), y.saturating_sub(*x));
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::exits::BusKind;

    #[test]
    fn phase_delta_counts_only_exits_between_markers() {
        let c = Arc::new(VcpuExitCounters::new(1, 0));
        let m = Meter::new(vec![c.clone()], &["dev".into()], &[], vec![], None);
        c.count_bus(ExitReason::IoOut, BusKind::Pio, Some(0)); // before: not counted
        m.phase_begin(7);
        for _ in 0..5 {
            c.count_bus(ExitReason::IoOut, BusKind::Pio, Some(0));
        }
        c.count_bus(ExitReason::MmioRead, BusKind::Mmio, None);
        m.phase_end(7);
        c.count_bus(ExitReason::IoOut, BusKind::Pio, Some(0)); // after: not counted
        let p = m.phases();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, 7);
        assert_eq!(p[0].exits["io_out"], 5);
        assert_eq!(p[0].exits["mmio_read"], 1);
        assert_eq!(p[0].exits["total"], 6);
        assert_eq!(p[0].exits_by_device["pio:dev"], 5);
        assert_eq!(p[0].exits_by_device["mmio:unmapped"], 1);
    }

    /// Whole-run totals are read after the vCPU and worker threads have ended.
    #[test]
    fn totals_keep_cpu_time_of_threads_that_ended() {
        let m = Arc::new(Meter::new(vec![], &[], &[], vec![], None));
        let mv = m.clone();
        std::thread::spawn(move || {
            mv.register_vcpu_thread(false);
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            mv.add_worker_clock(ThreadClock::current().unwrap());
            x
        })
        .join()
        .unwrap();
        let t = m.totals();
        assert!(t.cpu.vcpu_ns > 0, "vCPU CPU time {} ns", t.cpu.vcpu_ns);
        assert!(
            t.cpu.worker_ns > 0,
            "worker CPU time {} ns",
            t.cpu.worker_ns
        );
    }

    #[test]
    fn end_without_begin_is_noted_not_fatal() {
        let m = Meter::new(
            vec![Arc::new(VcpuExitCounters::new(0, 0))],
            &[],
            &[],
            vec![],
            None,
        );
        m.phase_end(3);
        assert!(m.phases().is_empty());
        assert_eq!(m.notes().len(), 1);
    }

    fn bare_meter() -> Meter {
        Meter::new(
            vec![Arc::new(VcpuExitCounters::new(0, 0))],
            &[],
            &[],
            vec![],
            None,
        )
    }

    #[test]
    fn notes_from_unmatched_ends_are_capped() {
        let m = bare_meter();
        for id in 0..10_000 {
            m.phase_end(id);
        }
        let n = m.bounded_notes();
        assert_eq!(n.kept().len(), MAX_NOTES);
        assert_eq!(n.suppressed(), 10_000 - MAX_NOTES as u64);
    }

    #[test]
    fn open_and_total_phases_are_capped() {
        let m = bare_meter();
        for id in 0..(MAX_OPEN_PHASES as u32 + 10) {
            m.phase_begin(id);
        }
        assert_eq!(lock(&m.book).open.len(), MAX_OPEN_PHASES);
        let m = bare_meter();
        for id in 0..(MAX_PHASES as u32 + 10) {
            m.phase_begin(id);
            m.phase_end(id);
        }
        assert_eq!(m.phases().len(), MAX_PHASES);
        assert!(m.notes().iter().any(|n| n.contains("later ones dropped")));
    }
}
