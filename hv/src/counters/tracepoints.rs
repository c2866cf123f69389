//! Per-thread counts of `kvm:*` tracepoints through `perf_event_open` (perf-event2).
//!
//! One counter per tracepoint, attached to one thread (pid = tid, cpu = -1), counting kernel
//! events (perf-event2 excludes the kernel by default, which would make every count 0). The
//! tracepoint ids come from tracefs (`/sys/kernel/tracing`, or the old debugfs path), not from
//! `Tracepoint::with_name`, which only looks under `/sys/kernel/debug/tracing`.
//!
//! Which tracepoints count depends on the KVM flavour: under kvm_pvm `kvm_exit`/`kvm_entry`
//! never fire. Names this kernel does not have are skipped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use perf_event::events::Tracepoint;
use perf_event::{Builder, Counter};

/// The kvm:* tracepoints hvlab counts, in report order.
pub const KVM_TRACEPOINTS: &[&str] = &[
    "kvm_exit",
    "kvm_entry",
    "kvm_userspace_exit",
    "kvm_pio",
    "kvm_mmio",
    "kvm_fast_mmio",
    "kvm_emulate_insn",
    "kvm_cpuid",
    "kvm_msr",
    "kvm_cr",
    "kvm_apic",
    "kvm_apic_ipi",
    "kvm_apic_accept_irq",
    "kvm_eoi",
    "kvm_pv_eoi",
    "kvm_vcpu_wakeup",
    "kvm_hypercall",
    "kvm_pv_tlb_flush",
    "kvm_inj_virq",
    "kvm_inj_exception",
    "kvm_page_fault",
    "kvm_halt_poll_ns",
    "kvm_set_irq",
    "kvm_msi_set_irq",
    "kvm_ioapic_set_irq",
];

/// Where tracefs may be mounted, newest convention first.
const TRACEFS_ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors from opening or reading tracepoint counters.
#[derive(Debug, thiserror::Error)]
pub enum TracepointError {
    /// Tracepoint counting cannot work on this host; the reason says what to change.
    #[error("kvm tracepoints unavailable: {0}")]
    Unavailable(String),
    /// `perf_event_open` failed for one tracepoint.
    #[error("perf_event_open for kvm:{name} failed: {source}{hint}")]
    Open {
        name: &'static str,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    /// Reading a counter failed.
    #[error("reading the kvm:{name} counter failed: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The `events/kvm` directory of the mounted tracefs, if any.
fn kvm_events_dir() -> Option<PathBuf> {
    TRACEFS_ROOTS
        .iter()
        .map(|r| Path::new(r).join("events/kvm"))
        .find(|p| p.is_dir())
}

/// Reads `events/kvm/<name>/id`. `Ok(None)` if this kernel has no such tracepoint.
fn tracepoint_id(dir: &Path, name: &str) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(dir.join(name).join("id")) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}/id: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names of [`KVM_TRACEPOINTS`] that exist on this kernel (empty if tracefs is missing).
pub fn present_tracepoints() -> Vec<&'static str> {
    let Some(dir) = kvm_events_dir() else {
        return Vec::new();
    };
    KVM_TRACEPOINTS
        .iter()
        .copied()
        .filter(|n| matches!(tracepoint_id(&dir, n), Ok(Some(_))))
        .collect()
}

fn paranoid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

const PERMISSION_HINT: &str =
    " (run as root, or set kernel.perf_event_paranoid<=-1 and make tracefs readable)";

fn hint_for(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => PERMISSION_HINT,
        _ => "",
    }
}

/// Builds and enables a counter for tracepoint `id` on thread `tid` (0 = the calling thread).
fn open_counter(id: u64, tid: libc::pid_t) -> io::Result<Counter> {
    let mut b = Builder::new(Tracepoint::with_id(id));
    if tid == 0 {
        b.observe_self();
    } else {
        b.observe_pid(tid);
    }
    let mut c = b.any_cpu().include_kernel().build()?;
    c.enable()?;
    Ok(c)
}

/// Whether a tracefs is mounted at one of [`TRACEFS_ROOTS`].
fn tracefs_mounted() -> bool {
    TRACEFS_ROOTS
        .iter()
        .any(|r| Path::new(r).join("events").is_dir())
}

/// What to do about tracefs before counting tracepoints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TracefsPlan {
    /// Mounted: use it.
    Use,
    /// Not mounted and hv runs as root: mount it (a fresh host has it unmounted, and the
    /// tracepoint columns would silently disappear).
    Mount,
    /// Not mounted and hv cannot mount it: the reason, with the command that fixes it.
    Explain(String),
}

fn tracefs_plan(mounted: bool, root: bool) -> TracefsPlan {
    match (mounted, root) {
        (true, _) => TracefsPlan::Use,
        (false, true) => TracefsPlan::Mount,
        (false, false) => TracefsPlan::Explain(
            "tracefs is not mounted and hv is not root: as root, run \
             `mount -t tracefs nodev /sys/kernel/tracing` (or run hv as root, which mounts it)"
                .to_owned(),
        ),
    }
}

/// What hv did about tracefs, once per process: `Some(what)` when it mounted it or failed to.
static TRACEFS_NOTE: OnceLock<Option<String>> = OnceLock::new();

/// What hv did about tracefs in this process (mounted it, or failed to), for the user.
pub fn tracefs_note() -> Option<String> {
    TRACEFS_NOTE.get().cloned().flatten()
}

/// Mounts tracefs at [`TRACEFS_ROOTS`]`[0]` where the plan says so.
fn ensure_tracefs() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match tracefs_plan(tracefs_mounted(), root) {
        TracefsPlan::Use => Ok(()),
        TracefsPlan::Explain(why) => Err(why),
        TracefsPlan::Mount => {
            let target = TRACEFS_ROOTS[0];
            let (src, dst, fs) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
            debug_assert_eq!(dst.to_str().ok(), Some(target));
            // SAFETY: all three are valid NUL-terminated strings; flags 0 and no data are a
            // plain mount, which changes no memory of this process.
            let rc = unsafe {
                libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null())
            };
            if rc == 0 || tracefs_mounted() {
                let _ = TRACEFS_NOTE.set(Some(format!(
                    "tracefs was not mounted: hv mounted it at {target} for the kvm tracepoint counts"
                )));
                Ok(())
            } else {
                let e = io::Error::last_os_error();
                let why = format!(
                    "tracefs is not mounted and mounting it at {target} failed: {e} \
                     (try `mount -t tracefs nodev {target}` as root)"
                );
                let _ = TRACEFS_NOTE.set(Some(why.clone()));
                Err(why)
            }
        }
    }
}

fn probe_availability() -> Result<(), String> {
    ensure_tracefs()?;
    let Some(dir) = kvm_events_dir() else {
        return Err(
            "no /sys/kernel/tracing/events/kvm: the kvm module is not loaded or has no \
             tracepoints"
                .to_owned(),
        );
    };
    let mut first = None;
    for name in KVM_TRACEPOINTS {
        match tracepoint_id(&dir, name) {
            Ok(Some(id)) => {
                first = Some((*name, id));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(format!(
                    "cannot read {}: {e}{}",
                    dir.join(name).join("id").display(),
                    hint_for(&e)
                ));
            }
        }
    }
    let Some((name, id)) = first else {
        return Err(format!(
            "none of hvlab's kvm tracepoints exist under {}",
            dir.display()
        ));
    };
    match open_counter(id, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => format!(
                "perf_event_open denied (kernel.perf_event_paranoid = {}): run as root or set \
                 kernel.perf_event_paranoid<=-1",
                paranoid()
            ),
            Some(libc::ENOSYS) => "perf_event_open is not supported by this kernel".to_owned(),
            _ => format!("perf_event_open for kvm:{name} failed: {e}"),
        }),
    }
}

/// Whether kvm:* tracepoints can be counted here. Probed once per process; as root, the probe
/// mounts tracefs when it is missing ([`tracefs_note`] says so).
pub fn availability() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE.get_or_init(probe_availability).clone()
}

/// Counters of every present kvm:* tracepoint for ONE thread.
pub struct ThreadTracepoints {
    counters: Vec<(&'static str, Counter)>,
}

impl std::fmt::Debug for ThreadTracepoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadTracepoints")
            .field("names", &self.names())
            .finish()
    }
}

impl ThreadTracepoints {
    /// Opens and enables a counter for each of [`KVM_TRACEPOINTS`] that this kernel has, on
    /// thread `tid` (a thread id, as from `gettid`).
    pub fn open(tid: libc::pid_t) -> Result<Self, TracepointError> {
        availability().map_err(TracepointError::Unavailable)?;
        let dir = kvm_events_dir().ok_or_else(|| {
            TracepointError::Unavailable("tracefs disappeared after the probe".to_owned())
        })?;
        let mut counters = Vec::new();
        for &name in KVM_TRACEPOINTS {
            let id = match tracepoint_id(&dir, name) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    let hint = hint_for(&e);
                    return Err(TracepointError::Open {
                        name,
                        source: e,
                        hint,
                    });
                }
            };
            let c = open_counter(id, tid).map_err(|e| {
                let hint = hint_for(&e);
                TracepointError::Open {
                    name,
                    source: e,
                    hint,
                }
            })?;
            counters.push((name, c));
        }
        Ok(ThreadTracepoints { counters })
    }

    /// The tracepoints counted, in [`Self::read`] order.
    pub fn names(&self) -> Vec<&'static str> {
        self.counters.iter().map(|(n, _)| *n).collect()
    }

    /// Refills `out` with the current counts, in [`Self::names`] order.
    pub fn read(&mut self, out: &mut Vec<u64>) -> Result<(), TracepointError> {
        out.clear();
        for (name, c) in &mut self.counters {
            out.push(
                c.read()
                    .map_err(|source| TracepointError::Read { name, source })?,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn thread_tracepoints_is_send() {
        fn check<T: Send>() {}
        check::<ThreadTracepoints>();
    }

    #[test]
    fn without_tracefs_root_mounts_it_and_others_are_told_how() {
        assert_eq!(tracefs_plan(true, false), TracefsPlan::Use);
        assert_eq!(tracefs_plan(true, true), TracefsPlan::Use);
        assert_eq!(tracefs_plan(false, true), TracefsPlan::Mount);
        let TracefsPlan::Explain(why) = tracefs_plan(false, false) else {
            panic!("a non-root user cannot mount tracefs");
        };
        assert!(
            why.contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{why}"
        );
    }

    /// As root on a host without tracefs mounted, the probe mounts it and says so.
    #[test]
    fn as_root_the_probe_leaves_tracefs_mounted() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: tracefs is left as it is");
            return;
        }
        let _ = availability();
        assert!(
            tracefs_mounted(),
            "tracefs not mounted after the probe (mount note: {:?})",
            tracefs_note()
        );
    }

    #[test]
    fn missing_tracepoint_reads_as_none() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            tracepoint_id(&dir, "hv_no_such_tracepoint"),
            Ok(None)
        ));
    }

    /// Real KVM: N `out`s in a guest's phase show up as >= N kvm_pio and kvm_userspace_exit.
    #[test]
    fn pio_guest_moves_pio_and_userspace_exit_tracepoints() {
        if let Err(reason) = availability() {
            eprintln!("skipped: {reason}");
            return;
        }
        let kvm = crate::error::kvm_for_tests();
        const N: u32 = 100;
        // Through the partition code, which opens the counters on each vCPU thread.
        let cfg = crate::partition::PartitionConfig {
            tracepoints: true,
            kvm_stats: false,
            ..Default::default()
        };
        let image = crate::tiny_guest::elf(&crate::tiny_guest::pio_loop(N));
        let p = crate::partition::Partition::new(&kvm, cfg, &image).unwrap();
        let o = p.start().unwrap().wait(
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(10),
        );
        assert!(o.status.is_ok(), "{}", o.status);
        assert_eq!(o.phases.len(), 1);
        let tp = &o.phases[0].tracepoints;
        assert!(!tp.is_empty(), "no tracepoints counted: {:?}", o.notes);
        let moved: Vec<String> = tp
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| format!("{n}={c}"))
            .collect();
        eprintln!("tracepoints that moved for {N} outs: {}", moved.join(" "));
        assert!(tp["kvm_pio"] >= u64::from(N));
        assert!(tp["kvm_userspace_exit"] >= u64::from(N));
    }
}
