//! Every bound hv puts on what a guest (or a request) can make it keep, in one place, and the
//! checks of a request against what the host has.
//!
//! A guest controls its ports, MMIO accesses, phase markers and console, so everything hv keeps
//! because of them has a cap here; past a cap hv drops the rest and says so (a note, a counter),
//! and hv's memory does not grow with what a guest does.
//!
//! | what | cap | past it |
//! | --- | --- | --- |
//! | notes a partition's meter keeps ([`MAX_NOTES`]) | 64 distinct | one final "N more notes suppressed" note |
//! | notes a partition's devices keep ([`MAX_DEVICE_NOTES`]) | 32 distinct | counted in the same final note |
//! | bytes of one note ([`MAX_NOTE_BYTES`]) | 256 | cut at a character boundary, `...` appended |
//! | unmapped MMIO addresses noted ([`MMIO_LOG_LIMIT`]) | 64 | later addresses counted, not noted (every PIO port is tracked in an 8 KiB bitmap) |
//! | phases open at once ([`MAX_OPEN_PHASES`]) | 64 | begin marker ignored, noted |
//! | phases measured per partition ([`MAX_PHASES`]) | 4096 | later phases dropped, noted; also the most `rec=phase` and `rec=hist` lines parsed |
//! | `rec=skip` lines kept ([`MAX_SKIPS`]) | 256 | counted, one note |
//! | `rec=info` keys kept ([`MAX_INFO_KEYS`]) | 256 | later keys ignored |
//! | metrics on one `rec=phase` line ([`MAX_METRICS_PER_PHASE`]) | 64 | later ones ignored |
//! | entries on one `rec=hist` line ([`MAX_HIST_ENTRIES`]) | `HIST_BUCKETS` (256) | the line is malformed |
//! | console bytes captured per partition ([`CONSOLE_CAPTURE_BYTES`]) | 4 MiB | dropped and counted |
//! | run records of one run ([`MAX_RECORDS_PER_RUN`]) | 8192 | later records dropped; the last one kept says how many |
//! | partitions per run ([`MAX_PARTITIONS`]) | 64 | the request is refused |
//! | grace for vCPU threads, then for device workers, after a run ends ([`VCPU_EXIT_GRACE`]) | 2 s each | left behind, status `device-stuck` (`DeviceStuck` / `WorkerStuck`) |
//!
//! With these caps one partition's records hold at most about
//! `(MAX_PHASES + MAX_SKIPS) * (MAX_NOTES + MAX_DEVICE_NOTES + 1) * MAX_NOTE_BYTES` bytes of
//! notes (about 125 MiB with allocation overhead in the very worst case, a few KiB for real
//! workloads; measured: a guest that reads all 65,536 ports, ends 2,000 phases it never began
//! and reports 2,000 one-op phases and 2,000 skips peaks at 61 MiB in a debug test process;
//! before the caps the same guest with 300 of each reached 3.9 GiB, and the issue measured
//! 13.3 GB with 2,000).
//!
//! Host resources are checked before any partition is built ([`check_host_resources`]):
//! the total guest memory of all partitions against `MemAvailable` (guest memory is mapped
//! `MAP_NORESERVE` by vm-memory, so an over-large request would not fail at mmap but the host's
//! OOM killer would end hv mid-run), the vCPUs of one partition against KVM_CAP_MAX_VCPUS, and
//! the file descriptors of all partitions against RLIMIT_NOFILE (the soft limit is raised to the
//! hard limit when that is enough).

use std::collections::HashSet;
use std::time::Duration;

/// Distinct notes a partition's meter keeps (vCPU threads and hv's own remarks).
pub const MAX_NOTES: usize = 64;
/// Distinct notes a partition's devices keep (`devices::NoteSink`).
pub const MAX_DEVICE_NOTES: usize = 32;
/// Longest note kept, in bytes.
pub const MAX_NOTE_BYTES: usize = 256;
/// Distinct unmapped MMIO addresses noted per partition (PIO ports use a full bitmap).
pub const MMIO_LOG_LIMIT: usize = 64;
/// Phases a guest may have open at once.
pub const MAX_OPEN_PHASES: usize = 64;
/// Phases measured (meter) and parsed (`rec=phase`, `rec=hist`) per partition.
pub const MAX_PHASES: usize = 4096;
/// `rec=skip` lines kept per partition.
pub const MAX_SKIPS: usize = 256;
/// `rec=info` keys kept per partition.
pub const MAX_INFO_KEYS: usize = 256;
/// Extra `key=value` metrics kept from one `rec=phase` line.
pub const MAX_METRICS_PER_PHASE: usize = 64;
/// Entries accepted on one `rec=hist` line: one per protocol bucket.
pub const MAX_HIST_ENTRIES: usize = hvlab_protocol::HIST_BUCKETS;
/// Console bytes captured per partition (hv's 16550 and virtio-console, and the QEMU peer).
pub const CONSOLE_CAPTURE_BYTES: usize = 4 << 20;
/// Run records one run produces, over all its partitions.
pub const MAX_RECORDS_PER_RUN: usize = 8192;
/// Partitions one run may have.
pub const MAX_PARTITIONS: u32 = 64;
/// How long a partition's vCPU threads get to leave once its run has ended (deadline, guest
/// exit, stop) before they are given up as stuck (`RunStatus::DeviceStuck`), and then how
/// long its device workers get to stop (`RunStatus::WorkerStuck`).
pub const VCPU_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Cuts `msg` to [`MAX_NOTE_BYTES`] at a character boundary.
pub fn clip_note(mut msg: String) -> String {
    if msg.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - 3;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str("...");
    }
    msg
}

/// A set of remarks in arrival order: each distinct message once (hash dedup, not a scan), at
/// most `cap` of them, later distinct ones only counted.
#[derive(Debug, Clone)]
pub struct BoundedNotes {
    cap: usize,
    order: Vec<String>,
    seen: HashSet<String>,
    suppressed: u64,
}

impl BoundedNotes {
    /// An empty set that keeps up to `cap` notes.
    pub fn new(cap: usize) -> BoundedNotes {
        BoundedNotes {
            cap,
            order: Vec::new(),
            seen: HashSet::new(),
            suppressed: 0,
        }
    }

    /// Adds `msg` (clipped) unless it is there already; past the cap it is only counted.
    pub fn add(&mut self, msg: String) {
        let msg = clip_note(msg);
        if self.seen.contains(&msg) {
            return;
        }
        if self.order.len() >= self.cap {
            self.suppressed += 1;
            return;
        }
        self.seen.insert(msg.clone());
        self.order.push(msg);
    }

    /// The notes kept, in arrival order.
    pub fn kept(&self) -> &[String] {
        &self.order
    }

    /// Distinct notes dropped past the cap (a repeat of a dropped note may count again).
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Joins note lists (each already bounded) and ends with one "N more notes suppressed" note
/// when any list dropped some.
pub fn merge_notes(lists: &[&BoundedNotes], extra: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut suppressed = 0;
    for l in lists {
        for n in l.kept() {
            if seen.insert(n.as_str()) {
                out.push(n.clone());
            }
        }
        suppressed += l.suppressed();
    }
    out.extend(extra.into_iter().map(clip_note));
    if suppressed > 0 {
        out.push(format!(
            "{suppressed} more notes suppressed (hv keeps at most {MAX_NOTES} + {MAX_DEVICE_NOTES} per partition)"
        ));
    }
    out
}

/// What [`check_host_resources`] needs to know about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAsk {
    pub partitions: u32,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// Tracepoint counters per vCPU thread (perf fds).
    pub tracepoints: bool,
}

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    /// `MemAvailable` from /proc/meminfo, bytes (`None` when unreadable: not checked).
    pub mem_available: Option<u64>,
    /// KVM_CAP_MAX_VCPUS.
    pub max_vcpus: u32,
    /// RLIMIT_NOFILE soft and hard limits.
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// File descriptors this process has open now.
    pub fds_open: u64,
}

/// A request the host cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "{partitions} partition(s) x {per_mib} MiB = {total_mib} MiB of guest memory, but the host has only {avail_mib} MiB available (MemAvailable); ask for less with --mem or --partitions"
    )]
    Memory {
        partitions: u32,
        per_mib: u64,
        total_mib: u64,
        avail_mib: u64,
    },
    #[error(
        "{vcpus} vCPUs per partition, but this host's KVM allows at most {max} (KVM_CAP_MAX_VCPUS)"
    )]
    Vcpus { vcpus: u32, max: u32 },
    #[error(
        "the run needs about {needed} file descriptors ({open} open now + {per_partition} per partition), but RLIMIT_NOFILE allows {hard} (hard limit); raise it (ulimit -Hn) or run fewer partitions/vCPUs"
    )]
    Fds {
        needed: u64,
        open: u64,
        per_partition: u64,
        hard: u64,
    },
    #[error("--partitions must be 1..={max}, not {asked} (limit: hv::limits::MAX_PARTITIONS)")]
    Partitions { asked: u32, max: u32 },
}

/// Kernel tracepoints hv opens per vCPU thread (one perf fd each); see counters::tracepoints.
const TRACEPOINT_FDS_PER_VCPU: u64 = 16;

/// File descriptors one partition holds while it runs: the VM fd, its stats fd, an eventfd
/// pair per synthetic device (ioeventfd + irqfd, two devices) plus a disk image; and per vCPU
/// its fd, its stats fd and (with tracepoints) its perf fds. A generous estimate: being wrong
/// high only raises the soft limit sooner.
pub fn fds_per_partition(vcpus: u32, tracepoints: bool) -> u64 {
    let per_vcpu = 2 + if tracepoints {
        TRACEPOINT_FDS_PER_VCPU
    } else {
        0
    };
    let per_vm = 1 + 1 + 2 * 3 + 1 + 4;
    per_vm + u64::from(vcpus) * per_vcpu
}

/// What to do about file descriptors: nothing, raise the soft limit to `Some(n)`.
pub fn check_host_resources(
    ask: &ResourceAsk,
    host: &HostResources,
) -> Result<Option<u64>, LimitError> {
    if ask.partitions == 0 || ask.partitions > MAX_PARTITIONS {
        return Err(LimitError::Partitions {
            asked: ask.partitions,
            max: MAX_PARTITIONS,
        });
    }
    if ask.vcpus > host.max_vcpus {
        return Err(LimitError::Vcpus {
            vcpus: ask.vcpus,
            max: host.max_vcpus,
        });
    }
    let total = u64::from(ask.partitions).saturating_mul(ask.mem_bytes);
    if let Some(avail) = host.mem_available {
        if total > avail {
            return Err(LimitError::Memory {
                partitions: ask.partitions,
                per_mib: ask.mem_bytes >> 20,
                total_mib: total >> 20,
                avail_mib: avail >> 20,
            });
        }
    }
    let per_partition = fds_per_partition(ask.vcpus, ask.tracepoints);
    let needed = host.fds_open + u64::from(ask.partitions) * per_partition;
    if needed <= host.nofile_soft {
        Ok(None)
    } else if needed <= host.nofile_hard {
        Ok(Some(host.nofile_hard))
    } else {
        Err(LimitError::Fds {
            needed,
            open: host.fds_open,
            per_partition,
            hard: host.nofile_hard,
        })
    }
}

/// `MemAvailable` in bytes from /proc/meminfo text.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line.split_ascii_whitespace().skip(1);
    let kib: u64 = it.next()?.parse().ok()?;
    (it.next() == Some("kB")).then_some(kib.saturating_mul(1024))
}

/// Reads this host's resources (KVM's vCPU limit from `kvm`).
pub fn host_resources(kvm: &kvm_ioctls::Kvm) -> HostResources {
    let mem_available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_available(&t));
    let (nofile_soft, nofile_hard) = nofile_limits();
    let fds_open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    HostResources {
        mem_available,
        max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
        nofile_soft,
        nofile_hard,
        fds_open,
    }
}

fn nofile_limits() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `r` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (u64::MAX, u64::MAX);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft RLIMIT_NOFILE to `to` (at most the hard limit).
pub fn raise_nofile(to: u64) -> std::io::Result<()> {
    let (_, hard) = nofile_limits();
    let r = libc::rlimit {
        rlim_cur: to.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit struct, which `r` is.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Checks `ask` against this host and raises the fd soft limit when that makes it fit.
pub fn ensure_host_resources(kvm: &kvm_ioctls::Kvm, ask: &ResourceAsk) -> Result<(), LimitError> {
    let host = host_resources(kvm);
    if let Some(to) = check_host_resources(ask, &host)? {
        // Failure here leaves the old limit; the run then reports EMFILE where it happens.
        let _ = raise_nofile(to);
    }
    Ok(())
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity(0, ...) fills it for this thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` < CPU_SETSIZE, within the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// `0-3,6` for [0, 1, 2, 3, 6] (the spelling `--cpus` accepts).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Checks that every CPU in `cpus` is one this process may run on.
pub fn check_cpus(cpus: &[usize], allowed: &[usize]) -> Result<(), String> {
    let bad: Vec<String> = cpus
        .iter()
        .filter(|c| !allowed.contains(c))
        .map(|c| c.to_string())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "CPU {} not available to hv; this process may run on CPUs {}",
            bad.join(","),
            format_cpu_list(allowed)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_dedup_cap_and_say_how_many_were_suppressed() {
        let mut n = BoundedNotes::new(3);
        for i in 0..10 {
            n.add(format!("n{i}"));
            n.add(format!("n{i}"));
        }
        assert_eq!(n.kept(), ["n0", "n1", "n2"]);
        // Dropped notes are not remembered (that would be unbounded), so their repeats count.
        assert_eq!(n.suppressed(), 7 * 2);
        n.add("n0".into());
        assert_eq!(n.suppressed(), 14, "a repeat of a kept note is not counted");
        let dev = BoundedNotes::new(2);
        let merged = merge_notes(&[&n, &dev], vec!["x".into()]);
        assert_eq!(merged.len(), 5);
        assert!(
            merged[4].starts_with("14 more notes suppressed"),
            "{merged:?}"
        );
    }

    #[test]
    fn long_notes_are_clipped_at_a_char_boundary() {
        let s = "é".repeat(MAX_NOTE_BYTES);
        let c = clip_note(s);
        assert!(c.len() <= MAX_NOTE_BYTES && c.ends_with("..."));
        assert_eq!(clip_note("short".into()), "short");
    }

    fn host() -> HostResources {
        HostResources {
            mem_available: Some(1 << 30),
            max_vcpus: 8,
            nofile_soft: 64,
            nofile_hard: 1024,
            fds_open: 10,
        }
    }

    fn ask(partitions: u32, vcpus: u32, mem_bytes: u64) -> ResourceAsk {
        ResourceAsk {
            partitions,
            vcpus,
            mem_bytes,
            tracepoints: false,
        }
    }

    #[test]
    fn memory_is_checked_over_all_partitions() {
        assert_eq!(
            check_host_resources(&ask(2, 1, 256 << 20), &host()),
            Ok(None)
        );
        let e = check_host_resources(&ask(5, 1, 256 << 20), &host()).unwrap_err();
        assert!(matches!(
            e,
            LimitError::Memory {
                total_mib: 1280,
                avail_mib: 1024,
                ..
            }
        ));
        assert!(e.to_string().contains("MemAvailable"), "{e}");
        let unknown = HostResources {
            mem_available: None,
            ..host()
        };
        assert!(check_host_resources(&ask(5, 1, 256 << 20), &unknown).is_ok());
    }

    #[test]
    fn vcpus_and_partitions_are_checked() {
        let e = check_host_resources(&ask(1, 9, 16 << 20), &host()).unwrap_err();
        assert_eq!(e, LimitError::Vcpus { vcpus: 9, max: 8 });
        assert!(e.to_string().contains("KVM_CAP_MAX_VCPUS"));
        let e = check_host_resources(&ask(MAX_PARTITIONS + 1, 1, 16 << 20), &host());
        assert!(matches!(e, Err(LimitError::Partitions { .. })));
        assert!(check_host_resources(&ask(0, 1, 16 << 20), &host()).is_err());
    }

    #[test]
    fn fds_raise_the_soft_limit_or_fail_naming_the_hard_one() {
        let per = fds_per_partition(2, false);
        assert_eq!(per, 13 + 2 * 2);
        assert!(fds_per_partition(2, true) > per);
        // 10 + 3 * 17 = 61 <= 64: nothing to do.
        assert_eq!(
            check_host_resources(&ask(3, 2, 16 << 20), &host()),
            Ok(None)
        );
        // 10 + 4 * 17 = 78: raise to the hard limit.
        assert_eq!(
            check_host_resources(&ask(4, 2, 16 << 20), &host()),
            Ok(Some(1024))
        );
        let tight = HostResources {
            nofile_hard: 70,
            ..host()
        };
        let e = check_host_resources(&ask(4, 2, 16 << 20), &tight).unwrap_err();
        assert!(matches!(
            e,
            LimitError::Fds {
                needed: 78,
                hard: 70,
                ..
            }
        ));
        assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
    }

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(t), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn cpus_outside_the_affinity_mask_are_named() {
        assert!(check_cpus(&[0, 1], &[0, 1]).is_ok());
        let e = check_cpus(&[1, 7], &[0, 1]).unwrap_err();
        assert!(e.contains("CPU 7") && e.contains("CPUs 0-1"), "{e}");
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        let mine = allowed_cpus().unwrap();
        assert!(!mine.is_empty());
    }
}
