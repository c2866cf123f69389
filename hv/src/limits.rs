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
//! | partitions per run | the host's: memory, vCPUs, file descriptors, threads, memory mappings ([`check_host_resources`]) | the request is refused naming the limit |
//! | grace for vCPU threads, then for device workers, after a run ends ([`VCPU_EXIT_GRACE`]) | 2 s each | left behind, status `device-stuck` (`DeviceStuck` / `WorkerStuck`) |
//! | more grace for a vCPU thread that is runnable, not blocked (CPU overcommit) ([`RUNNABLE_EXIT_GRACE`]) | 30 s | as above |
//!
//! With these caps one partition's records hold at most about
//! `(MAX_PHASES + MAX_SKIPS) * (MAX_NOTES + MAX_DEVICE_NOTES + 1) * MAX_NOTE_BYTES` bytes of
//! notes (about 125 MiB with allocation overhead in the very worst case, a few KiB for real
//! workloads; measured: a guest that reads all 65,536 ports, ends 2,000 phases it never began
//! and reports 2,000 one-op phases and 2,000 skips peaks at 61 MiB in a debug test process;
//! before the caps the same guest with 300 of each reached 3.9 GiB, and the issue measured
//! 13.3 GB with 2,000).
//!
//! Host resources are checked before any partition is built ([`check_host_resources`]); there
//! is no fixed partition count, the host's limits decide:
//! - memory: all partitions' guest memory plus hv's own cost per partition
//!   ([`HOST_BYTES_PER_PARTITION`]) against `MemAvailable`. Guest memory is mapped
//!   `MAP_NORESERVE` by vm-memory and only the pages a guest touches cost anything, so an
//!   over-large request would not fail at mmap; but any guest may touch all of its memory, and
//!   then the host's OOM killer would end hv mid-run. The check is for that worst case.
//! - the vCPUs of one partition against KVM_CAP_MAX_VCPUS;
//! - file descriptors of all partitions against RLIMIT_NOFILE: the soft limit is raised to the
//!   hard limit when that is enough, and an hv with CAP_SYS_RESOURCE raises the hard limit up
//!   to `fs.nr_open` too; when tracepoint counters (16 fds per vCPU) are what does not fit,
//!   `run::run` runs without them and says so in every record;
//! - threads (one per vCPU plus device workers) against RLIMIT_NPROC (enforced for unprivileged
//!   users only), `kernel.threads-max` and `kernel.pid_max`, counting the threads that exist;
//! - memory mappings (guest memory, thread stacks and their guard pages) against
//!   `vm.max_map_count`.

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
/// hv's own host memory per partition beyond the guest's memory, for the up-front memory
/// check: measured at about 0.2-0.6 MiB (user space plus KVM's kernel memory, `hv run
/// --partitions 1000`, see `crate::scale`); 1 MiB leaves room.
pub const HOST_BYTES_PER_PARTITION: u64 = 1 << 20;
/// How long a partition's vCPU threads get to leave once its run has ended (deadline, guest
/// exit, stop) before they are given up as stuck (`RunStatus::DeviceStuck`), and then how
/// long its device workers get to stop (`RunStatus::WorkerStuck`).
pub const VCPU_EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a vCPU thread that is past [`VCPU_EXIT_GRACE`] may still take to leave while it is
/// runnable ([`threads_runnable`]) or hv is CPU-overcommitted ([`overcommitted`]). With
/// hundreds of vCPU threads sharing a few host CPUs the first partition to end may wait
/// seconds for a CPU, or for a lock (glibc's thread-stack cache, say) whose holder waits for
/// one; without overcommit a thread blocked in a device is not given this time.
pub const RUNNABLE_EXIT_GRACE: Duration = Duration::from_secs(30);

/// True when any thread of this process named one of `names` is runnable (state `R` in
/// `/proc/self/task/*/stat`). Names are compared as the kernel keeps them (15 bytes).
pub fn threads_runnable(names: &[String]) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    dir.flatten().any(|t| {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        task_runnable_named(&stat, names)
    })
}

/// True when more of this process's threads are runnable than there are CPUs to run them:
/// then a thread blocked on a lock may be waiting behind a holder that waits for a CPU.
pub fn overcommitted() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let runnable = dir
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                st.rfind(')')
                    .and_then(|i| st[i + 1..].trim_start().chars().next())
                    == Some('R')
            })
        })
        .count();
    runnable > cpus
}

/// Whether a `/proc/.../stat` line names one of `names` (cut to 15 bytes) in state `R`.
pub fn task_runnable_named(stat: &str, names: &[String]) -> bool {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    state == Some('R')
        && names.iter().any(|n| {
            let mut end = n.len().min(15);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            &n[..end] == comm
        })
}

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
    /// How far this process may raise the hard RLIMIT_NOFILE: `fs.nr_open` with
    /// CAP_SYS_RESOURCE, else the hard limit itself.
    pub nofile_ceiling: u64,
    /// File descriptors this process has open now.
    pub fds_open: u64,
    /// Threads the kernel allows in all (the smaller of `kernel.threads-max` and
    /// `kernel.pid_max`) and how many exist now (`/proc/loadavg`); `None`: not checked.
    pub threads: Option<Headroom>,
    /// RLIMIT_NPROC for this user and the user's threads now; `None` when not enforced
    /// (unlimited, or CAP_SYS_RESOURCE) or unreadable.
    pub nproc: Option<Headroom>,
    /// `vm.max_map_count` and this process's mappings now; `None`: not checked.
    pub maps: Option<Headroom>,
}

/// A limit and how much of it is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub limit: u64,
    pub used: u64,
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
        "the run needs about {needed} file descriptors ({open} open now + {per_partition} per partition), but RLIMIT_NOFILE allows {hard} (hard limit, which this process cannot raise further); raise it (ulimit -Hn, as root) or run fewer partitions/vCPUs, or pass --no-tracepoints (16 fds per vCPU)"
    )]
    Fds {
        needed: u64,
        open: u64,
        per_partition: u64,
        hard: u64,
    },
    #[error("--partitions must be at least 1, not {asked}")]
    Partitions { asked: u32 },
    #[error(
        "{partitions} partition(s) need about {needed} threads ({per_partition} each: vCPUs and device workers) beside the {used} that exist, but {limit} allows {max}; run fewer partitions/vCPUs"
    )]
    Threads {
        partitions: u32,
        per_partition: u64,
        needed: u64,
        used: u64,
        max: u64,
        limit: &'static str,
    },
    #[error(
        "{partitions} partition(s) need about {needed} memory mappings ({per_partition} each: guest memory, thread stacks and guards) beside the {used} this process has, but vm.max_map_count is {max}; raise it (sysctl vm.max_map_count) or run fewer partitions"
    )]
    Maps {
        partitions: u32,
        per_partition: u64,
        needed: u64,
        used: u64,
        max: u64,
    },
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

/// Threads one partition runs: one per vCPU, up to two device workers (the synthetic block
/// and console devices) and the short-lived thread that releases its devices at the end.
pub fn threads_per_partition(vcpus: u32) -> u64 {
    u64::from(vcpus) + 3
}

/// Memory mappings one partition adds: its guest memory, and per thread a stack and its
/// guard page; two to spare (allocator arenas).
pub fn maps_per_partition(vcpus: u32) -> u64 {
    1 + 2 * threads_per_partition(vcpus) + 2
}

fn check_headroom(
    partitions: u32,
    per_partition: u64,
    room: Option<Headroom>,
) -> Option<(u64, Headroom)> {
    let room = room?;
    let needed = u64::from(partitions).saturating_mul(per_partition);
    (room.used.saturating_add(needed) > room.limit).then_some((needed, room))
}

/// What to do about file descriptors: nothing, or raise RLIMIT_NOFILE to `Some(n)` (the soft
/// limit, and the hard one too when `n` is above it, which needs privilege).
pub fn check_host_resources(
    ask: &ResourceAsk,
    host: &HostResources,
) -> Result<Option<u64>, LimitError> {
    if ask.partitions == 0 {
        return Err(LimitError::Partitions {
            asked: ask.partitions,
        });
    }
    if ask.vcpus > host.max_vcpus {
        return Err(LimitError::Vcpus {
            vcpus: ask.vcpus,
            max: host.max_vcpus,
        });
    }
    let total = u64::from(ask.partitions)
        .saturating_mul(ask.mem_bytes.saturating_add(HOST_BYTES_PER_PARTITION));
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
    let threads = threads_per_partition(ask.vcpus);
    for (room, limit) in [
        (host.threads, "kernel.threads-max/pid_max"),
        (host.nproc, "RLIMIT_NPROC (ulimit -u)"),
    ] {
        if let Some((needed, room)) = check_headroom(ask.partitions, threads, room) {
            return Err(LimitError::Threads {
                partitions: ask.partitions,
                per_partition: threads,
                needed,
                used: room.used,
                max: room.limit,
                limit,
            });
        }
    }
    let maps = maps_per_partition(ask.vcpus);
    if let Some((needed, room)) = check_headroom(ask.partitions, maps, host.maps) {
        return Err(LimitError::Maps {
            partitions: ask.partitions,
            per_partition: maps,
            needed,
            used: room.used,
            max: room.limit,
        });
    }
    let per_partition = fds_per_partition(ask.vcpus, ask.tracepoints);
    let needed = host.fds_open + u64::from(ask.partitions) * per_partition;
    if needed <= host.nofile_soft {
        Ok(None)
    } else if needed <= host.nofile_hard {
        Ok(Some(host.nofile_hard))
    } else if needed <= host.nofile_ceiling {
        // Some room above what the run needs: the counts are estimates.
        Ok(Some(
            needed.saturating_add(needed / 4).min(host.nofile_ceiling),
        ))
    } else {
        Err(LimitError::Fds {
            needed,
            open: host.fds_open,
            per_partition,
            hard: host.nofile_ceiling.max(host.nofile_hard),
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
    let (nofile_soft, nofile_hard) = rlimit(libc::RLIMIT_NOFILE);
    let fds_open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let privileged = has_sys_resource();
    let nofile_ceiling = if privileged {
        read_sysctl("/proc/sys/fs/nr_open").map_or(nofile_hard, |n| n.max(nofile_hard))
    } else {
        nofile_hard
    };
    let threads = match (
        read_sysctl("/proc/sys/kernel/threads-max"),
        read_sysctl("/proc/sys/kernel/pid_max"),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| parse_loadavg_threads(&t)),
    ) {
        (Some(tm), Some(pm), Some(used)) => Some(Headroom {
            limit: tm.min(pm),
            used,
        }),
        _ => None,
    };
    let (nproc_soft, _) = rlimit(libc::RLIMIT_NPROC);
    let nproc = (!privileged && nproc_soft != libc::RLIM_INFINITY).then(|| Headroom {
        limit: nproc_soft,
        // SAFETY: getuid has no preconditions.
        used: user_threads(unsafe { libc::getuid() }),
    });
    let maps = read_sysctl("/proc/sys/vm/max_map_count").map(|limit| Headroom {
        limit,
        used: std::fs::read_to_string("/proc/self/maps")
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0),
    });
    HostResources {
        mem_available,
        max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
        nofile_soft,
        nofile_hard,
        nofile_ceiling,
        fds_open,
        threads,
        nproc,
        maps,
    }
}

/// CAP_SYS_RESOURCE in this process's effective set (lets it raise hard rlimits and exempts
/// it from RLIMIT_NPROC); root in a container may lack it.
fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            let hex = t
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn read_sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The number of threads that exist, from `/proc/loadavg` (`0.1 0.2 0.3 2/345 678`).
pub fn parse_loadavg_threads(text: &str) -> Option<u64> {
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.1.parse().ok()
}

/// Threads of all processes of real user `uid` (what RLIMIT_NPROC counts).
fn user_threads(uid: libc::uid_t) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_ascii_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            n += field("Threads:").unwrap_or(1);
        }
    }
    n
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `r` is.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return (u64::MAX, u64::MAX);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft RLIMIT_NOFILE to `to`, and the hard limit with it when `to` is above it
/// (which only a privileged process may do).
pub fn raise_nofile(to: u64) -> std::io::Result<()> {
    let (_, hard) = rlimit(libc::RLIMIT_NOFILE);
    let r = libc::rlimit {
        rlim_cur: to,
        rlim_max: hard.max(to),
    };
    // SAFETY: setrlimit reads one rlimit struct, which `r` is.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Checks `ask` against this host and raises the fd limit when that makes it fit.
pub fn ensure_host_resources(kvm: &kvm_ioctls::Kvm, ask: &ResourceAsk) -> Result<(), LimitError> {
    let host = host_resources(kvm);
    if let Some(to) = check_host_resources(ask, &host)? {
        if raise_nofile(to).is_err() && to > host.nofile_hard {
            // The hard limit could not be raised after all (no CAP_SYS_RESOURCE).
            return Err(LimitError::Fds {
                needed: to,
                open: host.fds_open,
                per_partition: fds_per_partition(ask.vcpus, ask.tracepoints),
                hard: host.nofile_hard,
            });
        }
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
            nofile_ceiling: 1024,
            fds_open: 10,
            threads: Some(Headroom {
                limit: 10_000,
                used: 500,
            }),
            nproc: None,
            maps: Some(Headroom {
                limit: 65_530,
                used: 100,
            }),
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
                total_mib: 1285,
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
        assert!(matches!(
            check_host_resources(&ask(0, 1, 16 << 20), &host()),
            Err(LimitError::Partitions { asked: 0 })
        ));
        // No fixed cap: 1,000 partitions fit a host with the room for them.
        let roomy = HostResources {
            nofile_soft: 1 << 20,
            nofile_hard: 1 << 20,
            nofile_ceiling: 1 << 20,
            mem_available: Some(64 << 30),
            ..host()
        };
        assert_eq!(
            check_host_resources(&ask(1000, 1, 8 << 20), &roomy),
            Ok(None)
        );
    }

    #[test]
    fn threads_and_mappings_are_checked_naming_the_limit() {
        let roomy = HostResources {
            nofile_soft: 1 << 20,
            nofile_hard: 1 << 20,
            nofile_ceiling: 1 << 20,
            mem_available: Some(1 << 40),
            ..host()
        };
        // 500 threads exist, 10,000 allowed, 4 per one-vCPU partition: 2,375 fit, 2,376 do not.
        assert_eq!(threads_per_partition(1), 4);
        assert!(check_host_resources(&ask(2375, 1, 4 << 20), &roomy).is_ok());
        let e = check_host_resources(&ask(2376, 1, 4 << 20), &roomy).unwrap_err();
        assert!(
            matches!(
                e,
                LimitError::Threads {
                    max: 10_000,
                    used: 500,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("threads-max"), "{e}");
        let nproc = HostResources {
            nproc: Some(Headroom {
                limit: 600,
                used: 590,
            }),
            ..roomy
        };
        let e = check_host_resources(&ask(3, 1, 4 << 20), &nproc).unwrap_err();
        assert!(e.to_string().contains("RLIMIT_NPROC"), "{e}");
        let maps = HostResources {
            maps: Some(Headroom {
                limit: 1000,
                used: 900,
            }),
            ..roomy
        };
        let e = check_host_resources(&ask(10, 1, 4 << 20), &maps).unwrap_err();
        assert!(matches!(e, LimitError::Maps { .. }), "{e}");
        assert!(e.to_string().contains("vm.max_map_count"), "{e}");
    }

    #[test]
    fn a_privileged_process_may_raise_the_hard_fd_limit() {
        let root = HostResources {
            nofile_ceiling: 1 << 20,
            mem_available: Some(1 << 40),
            ..host()
        };
        // 10 + 100 * 15 = 1510 > 1024 (hard): raised above the hard limit, with room.
        let to = check_host_resources(&ask(100, 1, 4 << 20), &root)
            .unwrap()
            .unwrap();
        assert!((1510..=1 << 20).contains(&to), "{to}");
    }

    #[test]
    fn runnable_threads_are_found_by_name() {
        let names = vec!["p12-vcpu0".to_string()];
        assert!(task_runnable_named("123 (p12-vcpu0) R 1 2 3", &names));
        assert!(!task_runnable_named("123 (p12-vcpu0) S 1 2 3", &names));
        assert!(!task_runnable_named("123 (p12-vcpu1) R 1 2 3", &names));
        // The kernel keeps 15 bytes of a name.
        let long = vec!["p123456-vcpu12345".to_string()];
        assert!(task_runnable_named("9 (p123456-vcpu123) R 0", &long));
        assert!(!task_runnable_named("garbage", &names));
        // This test's own thread is running.
        let me = std::thread::current().name().unwrap_or("").to_string();
        if !me.is_empty() {
            assert!(threads_runnable(&[me]));
        }
    }

    #[test]
    fn loadavg_gives_the_thread_count() {
        assert_eq!(
            parse_loadavg_threads("0.98 1.56 1.61 3/1234 5678\n"),
            Some(1234)
        );
        assert_eq!(parse_loadavg_threads("garbage"), None);
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
            nofile_ceiling: 70,
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
