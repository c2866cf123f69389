//! Command-line arguments and their small parsers.

use std::path::PathBuf;

use clap::Args;

/// `hv run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workload to run (`hv list` shows them).
    pub workload: String,
    /// vCPUs per partition.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest RAM per partition (e.g. 32M, 1G).
    #[arg(long, default_value = "32M")]
    pub mem: String,
    /// Partitions to run at once, each with its own memory and vCPUs.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Host CPUs for the vCPU threads, e.g. `0,1` or `0-3`; vCPUs of all partitions are spread
    /// over them round-robin (fewer CPUs than vCPUs = overcommit).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Wall-clock limit for the run, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Print run records as JSON lines (one per phase; results/README.md has the fields) instead
    /// of a table.
    #[arg(long)]
    pub json: bool,
    /// Device variant for the workload's device classes: none, emulated (registers that
    /// trap), synthetic (virtio), vmbus (VMBus-style channels over the SynIC; turns on
    /// hv-synic), or a comma list run back to back and compared (`both` = emulated,synthetic;
    /// `all` = emulated,synthetic,vmbus).
    #[arg(long, default_value = "none")]
    pub device: String,
    /// Raw disk image for the block device (created when missing); default: in memory.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Size of a created (or in-memory) disk, e.g. 64M.
    #[arg(long)]
    pub disk_size: Option<String>,
    /// Open the disk image read-only (a shared lock: other read-only users may have it open
    /// too). The devices refuse writes: virtio-blk offers VIRTIO_BLK_F_RO and fails writes with
    /// IOERR, ATA aborts them. Without it an image is locked for one read-write user.
    #[arg(long)]
    pub disk_readonly: bool,
    /// Inject a disk fault, `KIND@OP:WHEN` (repeatable). KIND: eio, enospc, short (a write
    /// stores its first half, then fails). OP: read, write, flush. WHEN: N (the Nth), N+ (the
    /// Nth and later), every=N, sectors=A-B (every access touching them). Counted per disk in
    /// device order: one operation per virtio-blk request, one per ATA DRQ block. The guest
    /// sees virtio-blk IOERR or ATA ERR (ABRT; UNC for reads). E.g. `--disk-fault eio@write:3`.
    #[arg(long, value_name = "SPEC")]
    pub disk_fault: Vec<hv::devices::disk::FaultSpec>,
    /// Block workloads: requests in flight (workload argument `qd`).
    #[arg(long)]
    pub qd: Option<u32>,
    /// Block workloads: bytes per I/O, e.g. 4K (workload argument `bs`).
    #[arg(long)]
    pub bs: Option<String>,
    /// Block workloads: seq or rand (workload argument `pattern`).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Block workloads: read, write or mixed (workload argument `rw`).
    #[arg(long)]
    pub rw: Option<String>,
    /// Synthetic devices: the worker polls the rings and the driver polls for completions.
    /// VMBus-style block device: the driver masks the channel's interrupt (hv raises no
    /// event) and polls for completions.
    #[arg(long)]
    pub polling: bool,
    /// Synthetic devices: do not offer VIRTIO_F_EVENT_IDX.
    #[arg(long)]
    pub no_event_idx: bool,
    /// Network workloads: what joins the NICs. `switch`: hv's in-process switch between the
    /// run's partitions; `tap`: one partition, its server a responder behind a tap device in a
    /// network namespace hv creates (root or CAP_NET_ADMIN).
    #[arg(long, default_value = "switch")]
    pub backend: String,
    /// Enlightenments: `none`, `all` (those this host lacks are dropped with a note), or a comma
    /// list such as `kvm-clock,x2apic`. `hv caps` lists them with what this host supports.
    /// `none` includes x2APIC: the guest then drives the APIC through xAPIC MMIO.
    #[arg(long, default_value = "none")]
    pub enlighten: String,
    /// Who serves the Hyper-V (`hv-*`) enlightenments: `user` (hv, in userspace: any KVM host)
    /// or `kernel` (KVM's Hyper-V emulation; refused with the reason where KVM lacks it).
    #[arg(long, default_value = "user")]
    pub hyperv_backend: String,
    /// Echo the guest console to stderr.
    #[arg(long)]
    pub console: bool,
    /// End the run on an access to an address no device claims (default: ignore, read ones).
    #[arg(long)]
    pub unmapped_fatal: bool,
    /// End the run after this many userspace exits per vCPU.
    #[arg(long)]
    pub max_exits: Option<u64>,
    /// Do not open kvm:* tracepoint counters.
    #[arg(long)]
    pub no_tracepoints: bool,
    /// Run the vCPU and device worker threads without their seccomp filters. By default each
    /// of those threads allows only the system calls it needs (`hv caps` shows whether this
    /// kernel has seccomp); a call outside its list ends the run with status
    /// `seccomp-violation`, naming the thread and the call.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Run one more partition beside the workload, on partition 0's host CPUs:
    /// `WORKLOAD[:key=value,...]`, e.g. `mem-pattern:size=16k` (its records are marked
    /// `neighbour`; a mem-pattern neighbour's memory is also checked from the host).
    #[arg(long)]
    pub neighbour: Option<String>,
    /// Boot this guest ELF instead of the built-in image.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Workload arguments, `key=value` (after `--`).
    #[arg(last = true)]
    pub workload_args: Vec<String>,
}
