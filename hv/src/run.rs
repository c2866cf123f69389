//! One run: a workload request → partitions → run records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hvlab_workloads::WorkloadInfo;
use kvm_ioctls::Kvm;

use crate::devices::{self, DeviceOptions, DeviceVariant};
use crate::enlightenments::EnlightenmentSet;
use crate::error::HvError;
use crate::guest_output::{self, GuestReport};
use crate::limits::{self, LimitError, MAX_RECORDS_PER_RUN, ResourceAsk};
use crate::partition::{
    IrqChip, Partition, PartitionConfig, PartitionOutcome, ReadyPartition, RunningPartition,
};
use crate::record::{HostInfo, RecordStatus, RunRecord, SCHEMA_VERSION};
use crate::status::RunStatus;
use crate::vcpu::UnmappedPolicy;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub workload: String,
    /// Workload arguments (`key=value` on the guest command line); checked against the
    /// workload's declared parameters.
    pub args: BTreeMap<String, String>,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// Partitions run at once, each with its own memory and vCPUs.
    pub partitions: u32,
    /// Host CPUs for vCPU threads (round-robin over all partitions' vCPUs).
    pub cpus: Option<Vec<usize>>,
    pub timeout: Duration,
    pub unmapped: UnmappedPolicy,
    pub max_exits: Option<u64>,
    pub echo_console: bool,
    pub tracepoints: bool,
    pub devices: DeviceOptions,
    /// Enlightenments enabled (`none` = none, x2APIC included: the guest then uses xAPIC).
    pub enlightenments: EnlightenmentSet,
    /// Guest image; `None` = the embedded one.
    pub image: Option<Vec<u8>>,
    /// seccomp filters on vCPU and device worker threads (`PartitionConfig::seccomp`).
    pub seccomp: bool,
    /// One more partition running this workload on partition 0's host CPUs (isolation
    /// checks: `--neighbour mem-pattern`); its records carry `role = "neighbour"`.
    pub neighbour: Option<crate::neighbour::Neighbour>,
}

impl Default for RunRequest {
    fn default() -> Self {
        RunRequest {
            workload: String::new(),
            args: BTreeMap::new(),
            vcpus: 1,
            mem_bytes: 32 << 20,
            partitions: 1,
            cpus: None,
            timeout: Duration::from_secs(60),
            unmapped: UnmappedPolicy::Ignore,
            max_exits: None,
            echo_console: false,
            tracepoints: true,
            devices: DeviceOptions::default(),
            enlightenments: EnlightenmentSet::NONE,
            image: None,
            seccomp: true,
            neighbour: None,
        }
    }
}

impl RunRequest {
    /// The label that names this variant in tables: device, then enlightenments.
    pub fn variant_label(&self) -> String {
        let mut dev = self.devices.variant.name().to_string();
        if self.devices.variant == DeviceVariant::Synthetic {
            if self.devices.polling {
                dev.push_str("-poll");
            } else if !self.devices.event_idx {
                dev.push_str("-noevidx");
            }
        }
        if self.devices.variant == DeviceVariant::Vmbus && self.devices.polling {
            dev.push_str("-poll");
        }
        let enl = self.enlightenments.names().join("+");
        let label = match (self.devices.variant, self.enlightenments.is_empty()) {
            (DeviceVariant::None, true) => "none".into(),
            (DeviceVariant::None, false) => enl,
            (_, true) => dev,
            (_, false) => format!("{dev}+{enl}"),
        };
        if self.seccomp {
            label
        } else {
            format!("{label}+no-seccomp")
        }
    }
}

/// Facts shared by every record of one invocation.
#[derive(Debug, Clone, Default)]
pub struct RecordContext {
    pub run_id: String,
    pub timestamp: String,
    pub git_rev: String,
    pub hv_version: String,
    pub host: HostInfo,
    pub experiment: String,
    pub repetition: u32,
}

impl RecordContext {
    /// Context for a one-off `hv run`.
    pub fn adhoc() -> RecordContext {
        RecordContext {
            run_id: new_run_id(),
            timestamp: rfc3339_now(),
            git_rev: GIT_REV.to_string(),
            hv_version: env!("CARGO_PKG_VERSION").to_string(),
            host: crate::host::host_info(),
            experiment: "adhoc".into(),
            repetition: 0,
        }
    }
}

/// Git revision hv was built from (build.rs), `unknown` outside a checkout.
pub const GIT_REV: &str = env!("HVLAB_GIT_REV");
/// `rustc --version` of the toolchain that built hv.
pub const TOOLCHAIN: &str = env!("HVLAB_RUSTC_VERSION");

/// A run id that sorts by time: `YYYYMMDD-HHMMSS-<pid>`.
pub fn new_run_id() -> String {
    let (y, mo, d, h, mi, s) = civil_now();
    format!(
        "{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{:x}",
        std::process::id()
    )
}

/// Current UTC time as RFC 3339.
pub fn rfc3339_now() -> String {
    let (y, mo, d, h, mi, s) = civil_now();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn civil_now() -> (i64, u32, u32, u32, u32, u32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    civil_from_unix(secs)
}

/// Days-to-civil conversion (H. Hinnant's algorithm), UTC.
pub(crate) fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Checks the workload name and its arguments.
pub fn validate(req: &RunRequest) -> Result<&'static WorkloadInfo, HvError> {
    let info = hvlab_workloads::find(&req.workload).ok_or_else(|| HvError::UnknownWorkload {
        name: req.workload.clone(),
        valid: hvlab_workloads::ALL
            .iter()
            .map(|w| w.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    for (k, v) in &req.args {
        if !info.params.iter().any(|p| p.key == k) {
            return Err(HvError::UnknownArgument {
                workload: info.name.into(),
                key: k.clone(),
                valid: info
                    .params
                    .iter()
                    .map(|p| p.key)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '\0') {
            return Err(HvError::Config(format!(
                "argument {k}={v:?}: values must be one non-empty word"
            )));
        }
    }
    if let Some(why) = devices::unsupported(req.devices.variant, info.devices) {
        return Err(HvError::Config(format!("{}: {why}", info.name)));
    }
    if req.vcpus < info.min_vcpus {
        return Err(HvError::Config(format!(
            "{} needs at least {} vCPUs",
            info.name, info.min_vcpus
        )));
    }
    if req.partitions == 0 {
        return Err(HvError::Limit(LimitError::Partitions {
            asked: req.partitions,
        }));
    }
    if let Some(cpus) = &req.cpus {
        let allowed = limits::allowed_cpus().map_err(|e| {
            HvError::Config(format!("cannot read this process's CPU affinity: {e}"))
        })?;
        limits::check_cpus(cpus, &allowed).map_err(|e| HvError::Config(format!("--cpus: {e}")))?;
    }
    if let Some(n) = &req.neighbour {
        validate(&n.request(req))?;
    }
    Ok(info)
}

/// Sets what the workload declares it needs from the host side (`WorkloadInfo::host_features`).
pub fn apply_host_features(info: &WorkloadInfo, cfg: &mut PartitionConfig) {
    cfg.irqchip = if info.host_features.contains(&"full-irqchip") {
        IrqChip::Full
    } else {
        IrqChip::Split
    };
    cfg.kernel_port = info.host_features.contains(&"kernel-port");
    cfg.pit = info.host_features.contains(&"pit");
    cfg.pm_timer = info.host_features.contains(&"pm-timer");
    cfg.rtc = info.host_features.contains(&"rtc");
    cfg.platform = info.host_features.contains(&"pc-platform");
    if cfg.pit {
        cfg.irqchip = IrqChip::Full;
    }
}

/// The effective arguments: declared defaults overlaid with the request's.
pub fn effective_args(info: &WorkloadInfo, req: &RunRequest) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = info
        .params
        .iter()
        .map(|p| (p.key.to_string(), p.default.to_string()))
        .collect();
    a.extend(req.args.clone());
    a
}

/// The guest command line for partition `index`.
pub fn guest_cmdline(req: &RunRequest, index: u32, extra: &[String]) -> String {
    let mut line = format!("{} cpus={} part={}", req.workload, req.vcpus, index);
    for (k, v) in &req.args {
        line.push_str(&format!(" {k}={v}"));
    }
    for w in extra {
        line.push(' ');
        line.push_str(w);
    }
    line
}

/// One partition's outcome with what its guest reported.
#[derive(Debug)]
pub struct PartitionResult {
    pub outcome: PartitionOutcome,
    pub report: GuestReport,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunResult {
    pub partitions: Vec<PartitionResult>,
    pub records: Vec<RunRecord>,
    /// What the run's partitions cost the host (also in every record's `host_cost`).
    pub host_cost: crate::scale::HostCost,
}

impl RunResult {
    /// True when every partition's guest exited with status 0.
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.outcome.status.is_ok())
    }
}

/// Runs the request: builds every partition, starts them together, waits for all.
pub fn run(kvm: &Kvm, req: &RunRequest, ctx: &RecordContext) -> Result<RunResult, HvError> {
    let info = validate(req)?;
    let mut ask = ResourceAsk {
        // The neighbour is one more partition of the same size (one vCPU).
        partitions: req.partitions + u32::from(req.neighbour.is_some()),
        vcpus: req.vcpus,
        mem_bytes: req.mem_bytes,
        tracepoints: req.tracepoints,
    };
    // Tracepoint counters are optional columns: when their fds are what does not fit, the run
    // goes on without them and every record says why.
    let mut host_note = None;
    match limits::ensure_host_resources(kvm, &ask) {
        Err(e @ LimitError::Fds { .. }) if ask.tracepoints => {
            ask.tracepoints = false;
            limits::ensure_host_resources(kvm, &ask).map_err(|_| e.clone())?;
            host_note = Some(format!("kvm:* tracepoints not counted: {e}"));
        }
        r => r?,
    }
    let image: &[u8] = req.image.as_deref().unwrap_or(crate::GUEST_IMAGE);
    let without_tracepoints;
    let req = if ask.tracepoints == req.tracepoints {
        req
    } else {
        without_tracepoints = RunRequest {
            tracepoints: false,
            image: None,
            ..req.clone()
        };
        &without_tracepoints
    };
    let mut samples = crate::scale::Samples {
        before: crate::scale::ProcSample::now(),
        ..Default::default()
    };
    let t_build = Instant::now();
    // One wire joins the NICs of this run's partitions (and the tap, when asked for).
    let switch = devices::switch::Switch::new();
    let _tap = devices::tap_backend(&req.devices, info.devices, req.partitions, &switch)?;
    let (mut built, build_threads) = build_all(kvm, req, info, image, &switch)?;
    let neighbour = req.neighbour.as_ref().map(|n| n.request(req));
    if let Some(nreq) = &neighbour {
        let t = Instant::now();
        built.push((crate::neighbour::build(kvm, req, nreq, image)?, t.elapsed()));
    }
    samples.build = t_build.elapsed();
    samples.build_threads = build_threads;
    samples.partitions = built.len() as u32;
    let t_start = Instant::now();
    let (ready, startup) = prepare_all(built)?;
    samples.start = t_start.elapsed();
    samples.up = crate::scale::ProcSample::now();
    samples.touched_up = crate::scale::touched_guest_bytes(ready.iter().map(|r| r.memory()));
    let t_run = Instant::now();
    let sampler = crate::scale::PeakSampler::start(Duration::from_millis(20));
    let running: Vec<RunningPartition> = ready.into_iter().map(ReadyPartition::go).collect();
    let deadline = Instant::now() + req.timeout;
    let mut partitions = Vec::with_capacity(running.len());
    for r in running {
        let outcome = r.wait(deadline, req.timeout);
        let report = guest_output::parse(&outcome.console);
        partitions.push(PartitionResult { outcome, report });
    }
    samples.peak = sampler.finish();
    samples.run = t_run.elapsed();
    samples.touched_end =
        crate::scale::touched_guest_bytes(partitions.iter().map(|p| &p.outcome.memory));
    let params = effective_args(info, req);
    let records = cap_records(
        partitions
            .iter()
            .flat_map(|p| match &neighbour {
                Some(nreq) if p.outcome.index == req.partitions => {
                    crate::neighbour::records(req, nreq, ctx, p)
                }
                _ => records_for(req, ctx, &params, p),
            })
            .collect(),
    );
    // Teardown, last step: unmap every guest's memory (the records are made) and check that
    // each mapping is gone.
    let t_release = Instant::now();
    let mut ranges = Vec::new();
    for p in &mut partitions {
        ranges.extend(crate::scale::mapped_ranges(&p.outcome.memory));
        drop(std::mem::take(&mut p.outcome.memory));
    }
    samples.release = t_release.elapsed();
    samples.released = ranges
        .iter()
        .filter(|(start, len)| crate::scale::resident_bytes(*start, *len).is_none())
        .count() as u32;
    let mut records = records;
    let mut cost = samples.cost();
    cost.limit_note = host_note.clone();
    for r in &mut records {
        let mut c = cost.clone();
        if let Some(p) = partitions.iter().find(|p| p.outcome.index == r.partition) {
            c.teardown_ns = u64::try_from(p.outcome.teardown.as_nanos()).unwrap_or(u64::MAX);
        }
        c.startup_ns = startup
            .get(r.partition as usize)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        r.host_cost = Some(c);
        if let Some(n) = &host_note {
            r.notes.push(n.clone());
        }
    }
    Ok(RunResult {
        partitions,
        records,
        host_cost: cost,
    })
}

/// Builds the request's partitions, on several threads when there are many (KVM_CREATE_VM,
/// memory, vCPUs, devices and the image load of one partition do not depend on another's);
/// each with how long it took to build. Returns them in index order, and the threads used.
fn build_all(
    kvm: &Kvm,
    req: &RunRequest,
    info: &'static WorkloadInfo,
    image: &[u8],
    switch: &Arc<devices::switch::Switch>,
) -> Result<(Vec<(Partition, Duration)>, u32), HvError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below a few dozen partitions a thread costs more than it saves.
    let threads = cpus.min((req.partitions as usize).div_ceil(32)).max(1);
    let build = |index: u32| -> Result<(Partition, Duration), HvError> {
        let t = Instant::now();
        let p = build_one(kvm, req, info, image, index, switch)?;
        Ok((p, t.elapsed()))
    };
    if threads == 1 {
        let all = (0..req.partitions).map(build).collect::<Result<_, _>>()?;
        return Ok((all, 1));
    }
    let chunks: Vec<Result<Vec<(Partition, Duration)>, HvError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let build = &build;
                // Interleaved: thread t builds t, t + threads, ...
                std::thread::Builder::new()
                    .name(format!("hv-build{t}"))
                    .spawn_scoped(s, move || {
                        (t as u32..req.partitions)
                            .step_by(threads)
                            .map(build)
                            .collect::<Result<Vec<_>, _>>()
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(HvError::Thread("a build thread panicked".into()))),
                Err(e) => Err(HvError::Thread(format!("cannot start a build thread: {e}"))),
            })
            .collect()
    });
    let mut per_thread = Vec::with_capacity(threads);
    for c in chunks {
        per_thread.push(c?.into_iter());
    }
    let mut all = Vec::with_capacity(req.partitions as usize);
    for i in 0..req.partitions as usize {
        if let Some(p) = per_thread[i % threads].next() {
            all.push(p);
        }
    }
    Ok((all, threads as u32))
}

/// Builds partition `index` of the request with its devices.
fn build_one(
    kvm: &Kvm,
    req: &RunRequest,
    info: &'static WorkloadInfo,
    image: &[u8],
    index: u32,
    switch: &Arc<devices::switch::Switch>,
) -> Result<Partition, HvError> {
    // Pin round-robin across all partitions' vCPUs, so `--partitions 2 --cpus 0,1` shares
    // the same two host CPUs between both partitions.
    let pin = req.cpus.as_ref().map(|cpus| {
        (0..req.vcpus)
            .map(|v| cpus[((index * req.vcpus + v) as usize) % cpus.len()])
            .collect::<Vec<_>>()
    });
    let mut cfg = PartitionConfig {
        index,
        vcpus: req.vcpus,
        mem_bytes: req.mem_bytes,
        cmdline: String::new(),
        pin,
        unmapped: req.unmapped,
        tracepoints: req.tracepoints,
        kvm_stats: true,
        max_exits: req.max_exits,
        echo_console: req.echo_console,
        kvm_pv_features: 0,
        enlightenments: Some(devices::with_required_enlightenments(
            &req.devices,
            info.devices,
            req.enlightenments,
        )),
        seccomp: req.seccomp,
        ..PartitionConfig::default()
    };
    apply_host_features(info, &mut cfg);
    // The guest learns its devices from command-line words, which depend only on the
    // options, so the line is complete before the partition (and its start info) exists.
    let device_words = devices::cmdline_words(&req.devices, info.devices);
    cfg.cmdline = guest_cmdline(req, index, &device_words);
    let mut p = Partition::new(kvm, cfg, image)?;
    devices::attach(&mut p, &req.devices, info.devices)?;
    devices::attach_net(&mut p, &req.devices, info.devices, switch)?;
    Ok(p)
}

/// Readies every partition (vCPU threads set up, guests not yet running), adding each one's
/// setup time to its build time; when one fails, the ready ones are cancelled (their threads
/// end without running a guest instruction) before the error is returned.
fn prepare_all(
    built: Vec<(Partition, Duration)>,
) -> Result<(Vec<ReadyPartition>, Vec<Duration>), HvError> {
    let mut ready: Vec<ReadyPartition> = Vec::with_capacity(built.len());
    let mut startup = Vec::with_capacity(built.len());
    let mut rest = built.into_iter();
    for (p, build_time) in rest.by_ref() {
        let index = p.config().index;
        let t = Instant::now();
        match p.prepare() {
            Ok(r) => {
                ready.push(r);
                startup.push(build_time + t.elapsed());
            }
            Err(e) => {
                drop(rest);
                let why = format!("partition {index} failed to start: {e}");
                for r in ready {
                    let _ = r.cancel(&why);
                }
                return Err(e);
            }
        }
    }
    Ok((ready, startup))
}

/// Starts every partition; when one fails to start, the ones already running are stopped and
/// waited for (they end as `stopped`) before the error is returned, so no guest outlives a
/// failed run.
pub fn start_all(built: Vec<Partition>) -> Result<Vec<RunningPartition>, HvError> {
    let mut running: Vec<RunningPartition> = Vec::with_capacity(built.len());
    let mut rest = built.into_iter();
    for p in rest.by_ref() {
        let index = p.config().index;
        match p.start() {
            Ok(r) => running.push(r),
            Err(e) => {
                drop(rest);
                let why = format!("partition {index} failed to start: {e}");
                for r in &running {
                    r.stop(&why);
                }
                let now = Instant::now();
                for r in running {
                    let _ = r.wait(now, Duration::ZERO);
                }
                return Err(e);
            }
        }
    }
    Ok(running)
}

/// Keeps at most `limits::MAX_RECORDS_PER_RUN` records; the last one kept says how many were
/// dropped.
pub fn cap_records(mut records: Vec<RunRecord>) -> Vec<RunRecord> {
    if records.len() > MAX_RECORDS_PER_RUN {
        let dropped = records.len() - MAX_RECORDS_PER_RUN;
        records.truncate(MAX_RECORDS_PER_RUN);
        if let Some(last) = records.last_mut() {
            last.notes.push(format!(
                "{dropped} more records of this run dropped (hv keeps at most {MAX_RECORDS_PER_RUN} per run)"
            ));
        }
    }
    records
}

/// The fields every record of one run shares, whichever VMM ran it.
pub fn base_record(
    req: &RunRequest,
    ctx: &RecordContext,
    params: &BTreeMap<String, String>,
    vmm: &str,
    partition: u32,
) -> RunRecord {
    RunRecord {
        schema: SCHEMA_VERSION,
        run_id: ctx.run_id.clone(),
        timestamp: ctx.timestamp.clone(),
        git_rev: ctx.git_rev.clone(),
        hv_version: ctx.hv_version.clone(),
        host: ctx.host.clone(),
        experiment: ctx.experiment.clone(),
        vmm: vmm.into(),
        workload: req.workload.clone(),
        params: params.clone(),
        device: req.devices.variant.name().into(),
        enlightenments: req
            .enlightenments
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect(),
        variant: req.variant_label(),
        vcpus: req.vcpus,
        partitions: req.partitions,
        partition,
        repetition: ctx.repetition,
        ..RunRecord::default()
    }
}

/// What the VMM measured besides the guest's own report.
pub trait HostCounters {
    /// Fills `r` (a phase record) with the host's counters for phase `r.phase_id`.
    fn phase(&self, r: &mut RunRecord);
    /// Fills `r` (the `run` record of a run without phases) with whole-run counters.
    fn whole_run(&self, r: &mut RunRecord);
}

/// Workload arguments a guest may run differently from what was asked, and reports as a phase
/// metric of the same name (blk-io on ATA PIO runs `qd` 1: the device has no queue).
const EFFECTIVE_PARAMS: &[&str] = &["qd"];

/// Makes `r.params` say what the guest ran where it reported running an argument differently,
/// with a note naming both values.
fn record_as_run(r: &mut RunRecord) {
    for key in EFFECTIVE_PARAMS {
        let Some(&ran) = r.metrics.get(*key) else {
            continue;
        };
        let ran = format!("{ran}");
        match r.params.get(*key) {
            Some(asked) if *asked != ran => {
                r.notes.push(format!(
                    "{key}={asked} was requested; the guest ran {key}={ran} (what this record measures)"
                ));
                r.params.insert((*key).to_string(), ran);
            }
            _ => {}
        }
    }
}

/// Records from what the guest reported: one per phase and per skipped micro-test, or one
/// `run` record when it reported none. `status` and `fault` decide ok/failed for all of them.
pub fn guest_records(
    mut base: RunRecord,
    status: &RunStatus,
    report: &GuestReport,
    console_dropped: u64,
    counters: &dyn HostCounters,
) -> Vec<RunRecord> {
    base.status = if status.is_ok() {
        RecordStatus::Ok
    } else {
        let mut why = status.to_string();
        if let Some(f) = &report.fault {
            why.push_str(&format!(" [{f}]"));
        }
        RecordStatus::Failed(why)
    };
    base.status_label = status.label();
    if report.malformed > 0 {
        base.notes.push(format!(
            "{} malformed result lines ignored",
            report.malformed
        ));
    }
    if report.dropped > 0 {
        base.notes.push(format!(
            "{} result lines dropped past hv's caps (hv::limits)",
            report.dropped
        ));
    }
    if console_dropped > 0 {
        base.notes.push(format!(
            "{console_dropped} console bytes dropped past the capture limit"
        ));
    }
    let mut out = Vec::new();
    for gp in &report.phases {
        let mut r = base.clone();
        r.phase = gp.name.clone();
        r.phase_id = gp.id;
        r.ops = gp.ops;
        r.guest_tsc = gp.tsc;
        r.metrics = gp
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        r.latency = crate::latency::summarize(&gp.hist, base.tsc_khz);
        record_as_run(&mut r);
        counters.phase(&mut r);
        out.push(r);
    }
    for (name, reason) in &report.skips {
        let mut r = base.clone();
        r.phase = name.clone();
        r.status = RecordStatus::Skipped(reason.clone());
        out.push(r);
    }
    if out.is_empty() {
        let mut r = base;
        r.phase = "run".into();
        counters.whole_run(&mut r);
        out.push(r);
    }
    out
}

/// hv's counters: the phase deltas its meter took at the guest's markers.
struct HvCounters<'a>(&'a PartitionOutcome);

impl HostCounters for HvCounters<'_> {
    fn phase(&self, r: &mut RunRecord) {
        match self.0.phases.iter().find(|d| d.id == r.phase_id) {
            Some(d) => {
                r.wall_ns = d.wall_ns;
                r.exits = d.exits.clone();
                r.exits_by_device = d.exits_by_device.clone();
                r.kvm_stats = d.kvm_stats.clone();
                r.tracepoints = d.tracepoints.clone();
                r.cpu = d.cpu;
            }
            None => r
                .notes
                .push("no phase markers seen for this phase: host counters missing".into()),
        }
    }

    fn whole_run(&self, r: &mut RunRecord) {
        let t = &self.0.totals;
        r.wall_ns = u64::try_from(self.0.wall.as_nanos()).unwrap_or(u64::MAX);
        r.exits = t.exits.clone();
        r.exits_by_device = t.exits_by_device.clone();
        r.kvm_stats = t.kvm_stats.clone();
        r.tracepoints = t.tracepoints.clone();
        r.cpu = t.cpu;
    }
}

/// The records of one hv partition.
pub fn records_for(
    req: &RunRequest,
    ctx: &RecordContext,
    params: &BTreeMap<String, String>,
    p: &PartitionResult,
) -> Vec<RunRecord> {
    let o = &p.outcome;
    let mut base = base_record(req, ctx, params, "hv", o.index);
    base.tsc_khz = u64::from(o.tsc_khz.unwrap_or(0));
    base.notes = o.notes.clone();
    guest_records(
        base,
        &o.status,
        &p.report,
        o.console_dropped,
        &HvCounters(o),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoCounters;
    impl HostCounters for NoCounters {
        fn phase(&self, _r: &mut RunRecord) {}
        fn whole_run(&self, _r: &mut RunRecord) {}
    }

    /// `blk-io --device both --qd 32`: ATA has no queue, the guest runs it at QD1 and says so;
    /// the record must say what ran, not what was asked.
    #[test]
    fn a_parameter_the_guest_ran_differently_is_recorded_as_run() {
        let mut base = RunRecord::default();
        base.params.insert("qd".into(), "32".into());
        base.params.insert("count".into(), "8".into());
        let report = crate::guest_output::parse(
            "HVLAB rec=phase id=1 name=blk-read ops=8 tsc=1000 qd=1 sectors=64\n",
        );
        let recs = guest_records(base, &RunStatus::GuestExit(0), &report, 0, &NoCounters);
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.params["qd"], "1", "{:?}", r.params);
        assert_eq!(r.params["count"], "8");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("qd=32") && n.contains("qd=1")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(1_795_000_000), (2026, 11, 18, 11, 6, 40));
    }

    #[test]
    fn unknown_workload_lists_valid_ones() {
        let req = RunRequest {
            workload: "nope".into(),
            ..Default::default()
        };
        let e = validate(&req).unwrap_err().to_string();
        assert!(e.contains("exit-floor") && e.contains("mem-pattern"), "{e}");
    }

    #[test]
    fn unknown_argument_is_refused_with_the_valid_ones() {
        let mut req = RunRequest {
            workload: "exit-floor".into(),
            ..Default::default()
        };
        req.args.insert("itres".into(), "5".into());
        let e = validate(&req).unwrap_err().to_string();
        assert!(e.contains("itres") && e.contains("iters"), "{e}");
        req.args.clear();
        req.args.insert("iters".into(), "5 6".into());
        assert!(validate(&req).is_err());
    }

    #[test]
    fn records_per_run_are_capped_with_a_note() {
        let r = cap_records(vec![RunRecord::default(); MAX_RECORDS_PER_RUN + 3]);
        assert_eq!(r.len(), MAX_RECORDS_PER_RUN);
        assert!(r[MAX_RECORDS_PER_RUN - 1].notes[0].starts_with("3 more records"));
        assert_eq!(cap_records(vec![RunRecord::default(); 2]).len(), 2);
    }

    #[test]
    fn partitions_and_cpus_are_checked_against_limits() {
        let mut req = RunRequest {
            workload: "exit-floor".into(),
            partitions: 0,
            ..Default::default()
        };
        let e = validate(&req).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        // No fixed cap: the host's limits are checked when the run starts.
        req.partitions = 1000;
        assert!(validate(&req).is_ok());
        req.partitions = 1;
        let allowed = limits::allowed_cpus().unwrap();
        req.cpus = Some(vec![allowed[0]]);
        assert!(validate(&req).is_ok());
        let outside = (0..4096).find(|c| !allowed.contains(c)).unwrap();
        req.cpus = Some(vec![allowed[0], outside]);
        let e = validate(&req).unwrap_err().to_string();
        assert!(e.contains(&format!("CPU {outside} not available")), "{e}");
        assert!(e.contains(&limits::format_cpu_list(&allowed)), "{e}");
    }

    #[test]
    fn cmdline_and_variant_label() {
        let mut req = RunRequest {
            workload: "exit-floor".into(),
            vcpus: 2,
            ..Default::default()
        };
        req.args.insert("iters".into(), "7".into());
        assert_eq!(
            guest_cmdline(&req, 1, &["blk=ata".into()]),
            "exit-floor cpus=2 part=1 iters=7 blk=ata"
        );
        assert_eq!(req.variant_label(), "none");
        req.enlightenments = EnlightenmentSet::parse("pv-eoi,kvm-clock").unwrap();
        assert_eq!(req.variant_label(), "kvm-clock+pv-eoi");
        req.devices.variant = DeviceVariant::Synthetic;
        req.devices.event_idx = true;
        assert_eq!(req.variant_label(), "synthetic+kvm-clock+pv-eoi");
    }
}
