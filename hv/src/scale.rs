//! What partitions cost the host: hv's memory (RSS, PSS), KVM's kernel memory, file
//! descriptors, threads and memory mappings per partition, and the wall time to build, start,
//! run and tear them down.
//!
//! `run::run` samples the process and the host at three points: before the first partition is
//! built, when every partition is up (built, its vCPU threads set up and waiting for the go:
//! `Partition::prepare`), and after every guest has ended and its VM is closed. At the "up"
//! point each partition holds everything it will hold, so `(up - before) / partitions` is the
//! cost of one; the guest pages touched so far (`mincore` on each guest mapping: guest memory
//! is mapped `MAP_NORESERVE` and only touched pages are resident) are subtracted, giving the
//! host's cost *beyond* guest memory. A sampler thread keeps the peak of RSS plus kernel
//! memory while the guests run. Once the records are made `run::run` unmaps each guest's
//! memory and checks, with `mincore`, that the range is gone.
//!
//! Kernel memory is the sum of `/proc/meminfo`'s KernelStack, PageTables, SecPageTables and
//! SUnreclaim (KVM's VM and vCPU structures, its MMU pages, the vCPU threads' kernel stacks):
//! host-wide counters, so other processes' activity is noise in it (small against a
//! thousand partitions, not against one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

const PAGE: u64 = 4096;

/// One look at this process and the host's kernel memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident and proportional set size (`/proc/self/smaps_rollup`), bytes.
    pub rss: u64,
    pub pss: u64,
    /// Kernel memory host-wide (see the module comment), bytes.
    pub kernel: u64,
    pub fds: u64,
    pub threads: u64,
    /// Lines of `/proc/self/maps`.
    pub maps: u64,
}

impl ProcSample {
    /// Reads the sample now (fields that cannot be read stay 0).
    pub fn now() -> ProcSample {
        let (rss, pss) = std::fs::read_to_string("/proc/self/smaps_rollup")
            .map(|t| (kib_field(&t, "Rss:"), kib_field(&t, "Pss:")))
            .unwrap_or((0, 0));
        ProcSample {
            rss,
            pss,
            kernel: kernel_memory(),
            fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            threads: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("Threads:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0),
            maps: std::fs::read_to_string("/proc/self/maps")
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0),
        }
    }
}

/// `key    123 kB` in a /proc file, as bytes (0 when absent).
pub fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k.saturating_mul(1024))
}

/// The `/proc/meminfo` fields that hold KVM's and the vCPU threads' kernel memory.
pub const KERNEL_FIELDS: &[&str] = &[
    "KernelStack:",
    "PageTables:",
    "SecPageTables:",
    "SUnreclaim:",
];

/// Sum of [`KERNEL_FIELDS`] in meminfo text, bytes.
pub fn kernel_from_meminfo(meminfo: &str) -> u64 {
    KERNEL_FIELDS.iter().map(|k| kib_field(meminfo, k)).sum()
}

fn kernel_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| kernel_from_meminfo(&t))
        .unwrap_or(0)
}

/// RSS from `/proc/self/statm` (cheap enough to poll), bytes.
fn statm_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

/// Where a guest's memory is mapped in hv (start, length), per region.
pub fn mapped_ranges(mem: &GuestMemoryMmap) -> Vec<(usize, usize)> {
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some((host as usize, r.len() as usize))
        })
        .collect()
}

/// Resident bytes of a mapped range (`mincore`); `None` when the range is not (wholly) mapped.
pub fn resident_bytes(start: usize, len: usize) -> Option<u64> {
    if len == 0 || start % PAGE as usize != 0 {
        return None;
    }
    let pages = len.div_ceil(PAGE as usize);
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore reads no memory of the range; it writes one byte per page of it into
    // `vec`, which has exactly that many. An unmapped range fails with ENOMEM.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE)
}

/// Resident guest bytes over all `mems`.
pub fn touched_guest_bytes<'a>(mems: impl Iterator<Item = &'a GuestMemoryMmap>) -> u64 {
    mems.flat_map(mapped_ranges)
        .filter_map(|(s, l)| resident_bytes(s, l))
        .sum()
}

/// Polls RSS plus kernel memory until stopped; the peak.
#[derive(Debug)]
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakSampler {
    /// Starts polling every `every` (no sampler when the thread cannot start: peak 0).
    pub fn start(every: Duration) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hv-scale-sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(statm_rss() + kernel_memory());
                    std::thread::sleep(every);
                }
                peak.max(statm_rss() + kernel_memory())
            })
            .ok();
        PeakSampler { stop, thread }
    }

    /// Stops polling; the highest RSS + kernel memory seen, bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// What a run's partitions cost the host; the same in every record of the run except
/// `startup_ns` and `teardown_ns`, which are the record's own partition's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostCost {
    /// Partitions in the run (the neighbour, if any, counts).
    pub partitions: u32,
    /// Wall time of the whole run, and of its stages: build (VMs, memory, vCPUs, devices,
    /// image), start (vCPU threads set up), run (go until every guest ended and its VM is
    /// closed), release (guest memory unmapped).
    pub wall_ns: u64,
    pub build_ns: u64,
    pub start_ns: u64,
    pub run_ns: u64,
    pub release_ns: u64,
    /// Threads that built partitions at once.
    pub build_threads: u32,
    /// Per partition, when all were up: hv's RSS and PSS growth, host kernel memory growth,
    /// guest pages touched by then, and what is left of RSS + kernel beyond those guest pages.
    pub rss_bytes: f64,
    pub pss_bytes: f64,
    pub kernel_bytes: f64,
    pub guest_touched_bytes: f64,
    pub beyond_guest_bytes: f64,
    /// Per partition: peak RSS + kernel growth while the guests ran, and guest pages touched
    /// by the end.
    pub peak_bytes: f64,
    pub guest_touched_end_bytes: f64,
    /// Per partition, when all were up: file descriptors, threads and memory mappings added.
    pub fds: f64,
    pub threads: f64,
    pub maps: f64,
    /// Partitions whose guest memory was unmapped at release (should be all).
    pub released: u32,
    /// This record's partition: build + start, and teardown (`PartitionOutcome::teardown`).
    pub startup_ns: u64,
    pub teardown_ns: u64,
    /// What the host's limits made hv leave out of this run (tracepoint counters), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_note: Option<String>,
}

/// Growth from `a` to `b` per partition.
fn per(a: u64, b: u64, n: u32) -> f64 {
    (b as f64 - a as f64) / f64::from(n.max(1))
}

/// The measurements of one run, as `run::run` collects them.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub partitions: u32,
    pub before: ProcSample,
    pub up: ProcSample,
    pub touched_up: u64,
    pub touched_end: u64,
    pub peak: u64,
    pub build: Duration,
    pub start: Duration,
    pub run: Duration,
    pub release: Duration,
    pub build_threads: u32,
    pub released: u32,
}

impl Samples {
    /// The run-wide cost (per-partition fields `startup_ns`, `teardown_ns` left 0).
    pub fn cost(&self) -> HostCost {
        let n = self.partitions;
        let b = &self.before;
        let u = &self.up;
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let touched = self.touched_up as f64 / f64::from(n.max(1));
        let rss = per(b.rss, u.rss, n);
        let kernel = per(b.kernel, u.kernel, n);
        HostCost {
            partitions: n,
            wall_ns: ns(self.build + self.start + self.run + self.release),
            build_ns: ns(self.build),
            start_ns: ns(self.start),
            run_ns: ns(self.run),
            release_ns: ns(self.release),
            build_threads: self.build_threads,
            rss_bytes: rss,
            pss_bytes: per(b.pss, u.pss, n),
            kernel_bytes: kernel,
            guest_touched_bytes: touched,
            beyond_guest_bytes: rss + kernel - touched,
            peak_bytes: per(b.rss + b.kernel, self.peak, n),
            guest_touched_end_bytes: self.touched_end as f64 / f64::from(n.max(1)),
            fds: per(b.fds, u.fds, n),
            threads: per(b.threads, u.threads, n),
            maps: per(b.maps, u.maps, n),
            released: self.released,
            startup_ns: 0,
            teardown_ns: 0,
            limit_note: None,
        }
    }
}

/// Bytes as KiB or MiB with one decimal.
pub fn human_bytes(b: f64) -> String {
    if b.abs() >= f64::from(1u32 << 20) {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

impl HostCost {
    /// The summary `hv run` prints after its tables.
    pub fn summary(&self, ok: usize) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "host cost: {n} partitions, {ok} ok · wall {wall:.0} ms (build {b:.0} ms on {bt} threads, start {s:.0} ms, run+teardown {r:.0} ms, unmap {u:.0} ms)\n\
             per partition: {beyond} host memory beyond the {touched} of guest memory touched (hv RSS {rss}, PSS {pss}, kernel {kern}); peak {peak} incl. guest · {fds:.1} fds · {thr:.1} threads · {maps:.1} mappings\n\
             guest memory unmapped at teardown: {rel} of {n} partitions\n",
            n = self.partitions,
            wall = ms(self.wall_ns),
            b = ms(self.build_ns),
            bt = self.build_threads,
            s = ms(self.start_ns),
            r = ms(self.run_ns),
            u = ms(self.release_ns),
            beyond = human_bytes(self.beyond_guest_bytes),
            touched = human_bytes(self.guest_touched_bytes),
            rss = human_bytes(self.rss_bytes),
            pss = human_bytes(self.pss_bytes),
            kern = human_bytes(self.kernel_bytes),
            peak = human_bytes(self.peak_bytes),
            fds = self.fds,
            thr = self.threads,
            maps = self.maps,
            rel = self.released,
        ) + &self
            .limit_note
            .as_ref()
            .map_or(String::new(), |n| format!("note: {n}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn meminfo_kernel_fields_are_summed() {
        let t = "MemTotal: 100 kB\nKernelStack:  8 kB\nPageTables: 4 kB\nSUnreclaim:  2 kB\nSlab: 50 kB\n";
        assert_eq!(kernel_from_meminfo(t), 14 * 1024);
        assert_eq!(kib_field(t, "Nope:"), 0);
    }

    #[test]
    fn touched_guest_pages_are_counted_and_unmapped_ranges_seen() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let before = touched_guest_bytes(std::iter::once(&mem));
        mem.write_obj(1u64, GuestAddress(0)).unwrap();
        mem.write_obj(1u64, GuestAddress(8 * PAGE)).unwrap();
        let after = touched_guest_bytes(std::iter::once(&mem));
        assert_eq!(after - before, 2 * PAGE, "{before} -> {after}");
        let ranges = mapped_ranges(&mem);
        assert_eq!(ranges.len(), 1);
        drop(mem);
        assert_eq!(resident_bytes(ranges[0].0, ranges[0].1), None);
    }

    #[test]
    fn this_process_is_sampled() {
        let s = ProcSample::now();
        assert!(
            s.rss > 0 && s.fds > 0 && s.threads > 0 && s.maps > 0,
            "{s:?}"
        );
    }

    #[test]
    fn cost_is_per_partition_and_beyond_touched_guest_memory() {
        let s = Samples {
            partitions: 4,
            before: ProcSample {
                rss: 1 << 20,
                kernel: 1 << 20,
                fds: 10,
                threads: 2,
                ..Default::default()
            },
            up: ProcSample {
                rss: 1 << 22,
                kernel: 1 << 21,
                fds: 90,
                threads: 6,
                ..Default::default()
            },
            touched_up: 1 << 20,
            ..Default::default()
        };
        let c = s.cost();
        assert_eq!(c.rss_bytes, (3 << 20) as f64 / 4.0);
        assert_eq!(c.kernel_bytes, (1 << 20) as f64 / 4.0);
        assert_eq!(c.beyond_guest_bytes, (3 << 20) as f64 / 4.0);
        assert_eq!((c.fds, c.threads), (20.0, 1.0));
        assert!(c.summary(4).contains("4 partitions, 4 ok"));
    }
}
