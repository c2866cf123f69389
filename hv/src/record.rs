//! The results schema: one [`RunRecord`] per run and phase, one JSON object per
//! line in `runs.jsonl`. Everything downstream (analysis, reports, comparisons between hosts)
//! reads only this, so fields are added, never renamed; `schema` bumps when meaning changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this schema written into every record.
pub const SCHEMA_VERSION: u32 = 1;

/// Outcome of one run (all phases of a run share it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum RecordStatus {
    /// The guest exited with status 0 and reported this phase.
    #[default]
    Ok,
    /// The variant was not run; the reason says why (for example a capability this host lacks).
    Skipped(String),
    /// The run was attempted and ended badly; the reason is the run's status.
    Failed(String),
}

impl RecordStatus {
    /// True for [`RecordStatus::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, RecordStatus::Ok)
    }
}

/// What the host is, as probed at the start of a run or suite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Online host CPUs.
    pub cores: u32,
    /// `hardware-vmx`, `hardware-svm`, `nested-pvm`, `emulated` or `unknown` (see `hv caps`).
    pub kvm_flavour: String,
    /// Capability probe results by name (true = usable here).
    pub caps: BTreeMap<String, bool>,
}

/// Per-operation latency summary. Values are nanoseconds when the guest TSC frequency is known,
/// otherwise TSC cycles (see `unit`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// `ns` or `tsc`.
    pub unit: String,
    /// Number of operations recorded.
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    /// The histogram, hdrhistogram V2 deflate serialization, base64 (standard alphabet).
    pub hdr: String,
}

/// Host CPU time spent during the phase, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTime {
    /// Sum over the partition's vCPU threads.
    pub vcpu_ns: u64,
    /// Sum over the partition's device worker threads.
    pub worker_ns: u64,
}

/// One run and phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: u32,
    /// Shared by every record of one `hv run` / `hv suite` invocation.
    pub run_id: String,
    /// RFC 3339, UTC, when the run started.
    pub timestamp: String,
    pub git_rev: String,
    pub hv_version: String,
    pub host: HostInfo,
    /// Experiment (spec) name; `adhoc` for `hv run`.
    pub experiment: String,
    /// Which VMM ran the guest: `hv` or `qemu` (peer column).
    pub vmm: String,
    pub workload: String,
    /// Workload arguments as given on the guest command line.
    pub params: BTreeMap<String, String>,
    /// Device variant: `none`, `emulated` or `synthetic` (plus options such as `synthetic+poll`).
    pub device: String,
    /// Enabled enlightenments, sorted; empty = `none`.
    pub enlightenments: Vec<String>,
    /// Human label that names the variant in tables: device + enlightenment set.
    pub variant: String,
    pub vcpus: u32,
    /// Partitions run at once in this run, and which one this record describes (0-based).
    pub partitions: u32,
    pub partition: u32,
    pub repetition: u32,
    /// Phase name as reported by the guest; `run` for a record of a run that reported no phase.
    pub phase: String,
    pub phase_id: u32,
    pub status: RecordStatus,
    /// Operations the guest performed in the phase.
    pub ops: u64,
    /// Host wall time between the begin and end markers.
    pub wall_ns: u64,
    /// Guest TSC cycles between begin and end, as the guest measured them.
    pub guest_tsc: u64,
    /// Guest TSC frequency (KVM_GET_TSC_KHZ), 0 if unknown.
    pub tsc_khz: u64,
    /// hv's own userspace exit counts in the phase, by reason (`io_out`, `io_in`, `mmio_read`,
    /// `mmio_write`, `hlt`, `msr_read`, `msr_write`, `intr`, `shutdown`, ... and `total`).
    pub exits: BTreeMap<String, u64>,
    /// hv's userspace exit counts by device (bus slot name, e.g. `serial`, `hv-test-port`,
    /// `unmapped-pio`).
    pub exits_by_device: BTreeMap<String, u64>,
    /// KVM binary stats deltas, summed over the partition's vCPUs, named as KVM names them;
    /// VM-wide stats carry a `vm.` prefix.
    pub kvm_stats: BTreeMap<String, i64>,
    /// `kvm:*` tracepoint counts in the phase (empty when tracepoints are unavailable; the
    /// reason is in `notes`).
    pub tracepoints: BTreeMap<String, u64>,
    pub cpu: CpuTime,
    pub latency: Option<Latency>,
    /// Workload-specific metrics reported by the guest (`ipis`, `invlpg`, `bytes`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Free-form remarks: counters unavailable and why, warnings.
    pub notes: Vec<String>,
    /// Suite runs: the matrix point this record belongs to (stable across resumes and shards).
    #[serde(default)]
    pub run_key: String,
    /// Suite runs: how many records the run wrote, so a resume can tell a whole run from one
    /// cut short.
    #[serde(default)]
    pub run_records: u32,
    /// How the run ended, as a short stable label for grouping (`RunStatus::label`: `ok`,
    /// `guest-exit-3`, `triple-fault`, `timeout`, ...; `skipped`, `hv-error`, or
    /// `neighbour-corrupted`); empty in records written before the field existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_label: String,
    /// `neighbour` for the records of a neighbour partition (`RunRequest::neighbour`), empty
    /// for the run's own partitions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// What the run's partitions cost the host (memory, fds, threads per partition; build,
    /// start and teardown times), `crate::scale`; absent for QEMU rows and older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cost: Option<crate::scale::HostCost>,
}

/// `results/<run-id>/manifest.json`: what produced a results directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub run_id: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub git_rev: String,
    pub hv_version: String,
    /// `rustc --version` of the toolchain that built hv, when known.
    pub toolchain: String,
    pub host: HostInfo,
    /// The full `hv caps --json` document of the host, kept verbatim for the report.
    pub caps: serde_json::Value,
    /// The command line that produced the directory.
    pub command: Vec<String>,
    /// Experiment specs as run (TOML text parsed to JSON), in order.
    pub specs: Vec<serde_json::Value>,
    /// Per experiment: the variant label that ratios are computed against.
    pub baselines: BTreeMap<String, String>,
    /// `K/N` when this directory holds one shard of a matrix.
    pub shard: Option<String>,
    /// Runs the matrix has in total (this shard's share), for progress and resume checks.
    pub planned_runs: u64,
}

impl RunRecord {
    /// The end-status label: [`RunRecord::status_label`] when set, else derived from
    /// [`RunRecord::status`] (`ok`, `skipped`, `failed`).
    pub fn end_label(&self) -> &str {
        if !self.status_label.is_empty() {
            return &self.status_label;
        }
        match self.status {
            RecordStatus::Ok => "ok",
            RecordStatus::Skipped(_) => "skipped",
            RecordStatus::Failed(_) => "failed",
        }
    }

    /// Exits of `reason` per operation, or `None` when the phase did no operations.
    pub fn exits_per_op(&self, reason: &str) -> Option<f64> {
        // No exit counts at all means they were not measured (QEMU peer rows, a run without
        // phase markers): not measured is `None`, never 0. hv always writes `total`.
        (self.ops > 0 && !self.exits.is_empty())
            .then(|| self.exits.get(reason).copied().unwrap_or(0) as f64 / self.ops as f64)
    }

    /// Time-breakdown input: exits KVM handled without a userspace exit in this phase, or why
    /// this record cannot say. KVM's `kvm_exit` tracepoint or `exits` statistic counts every
    /// exit on hardware hosts and hv's `total` the userspace ones; KVM's count also holds the
    /// phase's closing marker (+1). On nested KVM (`kvm_pvm`) KVM counts only userspace exits,
    /// so the difference would read 0 where it is unknown.
    pub fn in_kernel_exits(&self) -> Result<u64, &'static str> {
        let Some(&user) = self.exits.get("total") else {
            return Err("no exit counts (not measured under this VMM)");
        };
        if self.host.kvm_flavour == "nested-pvm" {
            return Err("nested KVM (kvm_pvm) counts only userspace exits");
        }
        let kvm = match (
            self.tracepoints.get("kvm_exit"),
            self.kvm_stats.get("exits"),
        ) {
            (Some(&t), _) if t > 0 => t,
            (_, Some(&s)) if s > 0 => s as u64,
            _ => return Err("KVM's exit count was not read"),
        };
        Ok(kvm.saturating_sub(user + 1))
    }

    /// Guest-measured time per operation in nanoseconds, when the TSC frequency is known.
    pub fn ns_per_op(&self) -> Option<f64> {
        (self.ops > 0 && self.tsc_khz > 0)
            .then(|| self.guest_tsc as f64 * 1e6 / self.tsc_khz as f64 / self.ops as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrips_through_json() {
        let mut r = RunRecord {
            schema: SCHEMA_VERSION,
            workload: "exit-floor".into(),
            phase: "pio-out".into(),
            status: RecordStatus::Skipped("no hypercalls".into()),
            ops: 10,
            ..Default::default()
        };
        r.exits.insert("io_out".into(), 10);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""status":{"kind":"skipped","reason":"no hypercalls"}"#));
        let back: RunRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.exits_per_op("io_out"), Some(1.0));
        assert_eq!(back.exits_per_op("io_in"), Some(0.0));
    }

    /// QEMU rows have no exit counts: per-op exits are not measured (None), never 0.
    #[test]
    fn exits_per_op_of_a_record_without_exit_counts_is_not_measured() {
        let r = RunRecord {
            vmm: "qemu".into(),
            ops: 100,
            ..Default::default()
        };
        assert_eq!(r.exits_per_op("total"), None);
    }

    #[test]
    fn in_kernel_exits_are_kvms_count_less_hvs_and_the_marker_or_a_reason() {
        let mut r = RunRecord::default();
        assert!(
            r.in_kernel_exits()
                .is_err_and(|e| e.contains("not measured"))
        );
        r.exits.insert("total".into(), 10);
        assert!(r.in_kernel_exits().is_err_and(|e| e.contains("not read")));
        r.kvm_stats.insert("exits".into(), 31);
        assert_eq!(r.in_kernel_exits(), Ok(20));
        r.tracepoints.insert("kvm_exit".into(), 41);
        assert_eq!(
            r.in_kernel_exits(),
            Ok(30),
            "the tracepoint wins when it moved"
        );
        r.host.kvm_flavour = "nested-pvm".into();
        assert!(r.in_kernel_exits().is_err_and(|e| e.contains("kvm_pvm")));
    }

    #[test]
    fn ns_per_op_uses_tsc_khz() {
        let r = RunRecord {
            ops: 4,
            guest_tsc: 8_000,
            tsc_khz: 2_000_000,
            ..Default::default()
        };
        // 8000 cycles at 2 GHz = 4000 ns over 4 ops.
        assert_eq!(r.ns_per_op(), Some(1000.0));
    }
}
