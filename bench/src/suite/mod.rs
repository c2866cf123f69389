//! `hv suite`: run experiment matrices from spec files into a results directory.
//!
//! The suite never needs polars: it writes `runs.jsonl` and `manifest.json`; report
//! generation (the `analysis` crate) reads them afterwards.

pub mod matrix;
pub mod results;
pub mod slurm;
pub mod spec;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_ioctls::Kvm;

use self::matrix::{PlannedRun, Shard};
use self::results::RunsWriter;
use self::spec::Spec;
use hv::enlightenments::EnlightenmentSet;
use hv::error::HvError;
use hv::record::{Manifest, RecordStatus, RunRecord, SCHEMA_VERSION};
use hv::run::{RecordContext, RunRequest};

/// How to run a suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub out_dir: PathBuf,
    pub shard: Option<Shard>,
    /// Continue `out_dir`, skipping runs already recorded whole.
    pub resume: bool,
}

/// What happened, for the progress display.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The matrix: runs this invocation will do, and runs already done (resume).
    Planned { todo: usize, already_done: usize },
    /// A run starts.
    Started(&'a PlannedRun),
    /// A run ended with these records written.
    Finished(&'a PlannedRun, &'a [RunRecord]),
}

/// Totals of one invocation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SuiteSummary {
    pub runs: usize,
    pub ok: usize,
    pub skipped: usize,
    pub failed: usize,
    pub already_done: usize,
    /// True when a stop request ended the suite early.
    pub interrupted: bool,
}

/// Device labels (`emulated`, `synthetic-poll`, …) are the hypervisor's vocabulary.
pub use hv::devices::device_options;

/// The run request for a planned run.
pub fn request_for(run: &PlannedRun) -> Result<RunRequest, HvError> {
    let e = &run.experiment;
    let enlightenments =
        EnlightenmentSet::parse(&run.enlighten).map_err(|err| HvError::Config(err.to_string()))?;
    let mem_bytes = match &e.mem {
        Some(m) => hv::units::parse_size(m)?,
        None => RunRequest::default().mem_bytes,
    };
    let cpus = e
        .cpus
        .as_deref()
        .map(hv::units::parse_cpu_list)
        .transpose()?;
    Ok(RunRequest {
        workload: e.workload.clone(),
        args: run.args.clone(),
        vcpus: run.vcpus,
        mem_bytes,
        partitions: run.partitions,
        cpus,
        timeout: Duration::from_secs_f64(run.timeout_s),
        devices: device_options(&run.device),
        enlightenments,
        tracepoints: e.tracepoints,
        seccomp: run.seccomp,
        neighbour: e
            .neighbour
            .as_deref()
            .map(hv::neighbour::Neighbour::parse)
            .transpose()?,
        ..RunRequest::default()
    })
}

/// A record standing for a whole run that produced no phase records.
fn run_record(
    run: &PlannedRun,
    ctx: &RecordContext,
    req: Option<&RunRequest>,
    status: RecordStatus,
) -> RunRecord {
    RunRecord {
        schema: SCHEMA_VERSION,
        run_id: ctx.run_id.clone(),
        timestamp: hv::run::rfc3339_now(),
        git_rev: ctx.git_rev.clone(),
        hv_version: ctx.hv_version.clone(),
        host: ctx.host.clone(),
        experiment: run.experiment.name.clone(),
        vmm: run.vmm.clone(),
        workload: run.experiment.workload.clone(),
        params: run.args.clone(),
        device: req.map_or_else(
            || run.device.clone(),
            |r| r.devices.variant.name().to_string(),
        ),
        enlightenments: req
            .map(|r| {
                r.enlightenments
                    .names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .unwrap_or_default(),
        variant: req.map_or_else(|| run.device.clone(), RunRequest::variant_label),
        vcpus: run.vcpus,
        partitions: run.partitions,
        repetition: run.repetition,
        phase: "run".into(),
        status,
        ..RunRecord::default()
    }
}

/// Why this host cannot run `req` at all, if it cannot (unsupported enlightenments).
fn unsupported_reason(kvm: &Kvm, req: &RunRequest) -> Option<String> {
    match req.enlightenments.resolve(kvm) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Runs one planned run; every outcome becomes records (never an error that stops the suite).
fn execute(kvm: &Kvm, run: &PlannedRun, base: &RecordContext) -> Vec<RunRecord> {
    let ctx = RecordContext {
        experiment: run.experiment.name.clone(),
        repetition: run.repetition,
        timestamp: hv::run::rfc3339_now(),
        ..base.clone()
    };
    let req = match request_for(run) {
        Ok(r) => r,
        Err(e) => {
            return vec![run_record(
                run,
                &ctx,
                None,
                RecordStatus::Failed(e.to_string()),
            )];
        }
    };
    let mut records = if run.experiment.workload == crate::kut::WORKLOAD {
        crate::kut::records(kvm, &run.vmm, &req, &ctx)
    } else if crate::peer::qemu::PEER_VMMS.contains(&run.vmm.as_str()) {
        match crate::peer::qemu::run_qemu_as(&run.vmm, &req, &ctx) {
            Ok(r) => r,
            Err(e) => vec![run_record(
                run,
                &ctx,
                Some(&req),
                RecordStatus::Failed(e.to_string()),
            )],
        }
    } else if let Some(why) = unsupported_reason(kvm, &req) {
        vec![run_record(
            run,
            &ctx,
            Some(&req),
            RecordStatus::Skipped(why),
        )]
    } else {
        match hv::run::run(kvm, &req, &ctx) {
            Ok(r) => r.records,
            Err(e) => vec![run_record(
                run,
                &ctx,
                Some(&req),
                RecordStatus::Failed(e.to_string()),
            )],
        }
    };
    // Arguments that vary within the experiment are part of what tells variants apart
    // (QD1 vs QD32), so they join the variant label that tables group by.
    let varying: Vec<String> = run
        .experiment
        .args
        .iter()
        .filter(|(_, v)| matches!(v, spec::OneOrMany::Many(list) if list.len() > 1))
        .filter_map(|(k, _)| run.args.get(k).map(|v| format!("{k}={v}")))
        .collect();
    // Every record of a run carries the run's identity, whichever VMM or error path made it.
    for r in &mut records {
        if !varying.is_empty() && !r.variant.contains(&varying[0]) {
            r.variant = format!("{} {}", r.variant, varying.join(" "));
        }
        r.vmm = run.vmm.clone();
        r.run_id = ctx.run_id.clone();
        r.git_rev = ctx.git_rev.clone();
        r.hv_version = ctx.hv_version.clone();
        r.host = ctx.host.clone();
        r.experiment = ctx.experiment.clone();
        r.repetition = run.repetition;
        r.vcpus = run.vcpus;
        r.partitions = run.partitions;
        if r.timestamp.is_empty() {
            r.timestamp = ctx.timestamp.clone();
        }
        if r.params.is_empty() {
            r.params = run.args.clone();
        }
    }
    records
}

/// Runs `specs` into `opts.out_dir`. `stop` ends the suite after the run in progress.
pub fn run_suite(
    kvm: &Kvm,
    specs: &[Spec],
    opts: &SuiteOptions,
    manifest: &mut Manifest,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<SuiteSummary, crate::BenchError> {
    let mut planned = matrix::plan(specs);
    if let Some(s) = opts.shard {
        planned = s.select(planned);
    }
    let (mut writer, recovered) = RunsWriter::open(&opts.out_dir, opts.resume)?;
    manifest.schema = SCHEMA_VERSION;
    manifest.planned_runs = planned.len() as u64;
    manifest.shard = opts.shard.map(|s| s.to_string());
    for spec in specs {
        for e in &spec.experiment {
            if let Some(b) = &e.baseline {
                manifest.baselines.insert(e.name.clone(), b.clone());
            }
        }
    }
    results::write_manifest(&opts.out_dir, manifest)?;

    let todo: Vec<&PlannedRun> = planned
        .iter()
        .filter(|r| !recovered.done.contains(&r.key))
        .collect();
    let mut summary = SuiteSummary {
        already_done: planned.len() - todo.len(),
        ..SuiteSummary::default()
    };
    progress(Progress::Planned {
        todo: todo.len(),
        already_done: summary.already_done,
    });
    let base = RecordContext {
        run_id: manifest.run_id.clone(),
        timestamp: manifest.started.clone(),
        git_rev: manifest.git_rev.clone(),
        hv_version: manifest.hv_version.clone(),
        host: manifest.host.clone(),
        experiment: String::new(),
        repetition: 0,
    };
    for run in todo {
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        progress(Progress::Started(run));
        let mut records = execute(kvm, run, &base);
        writer.append_run(&run.key, &mut records)?;
        summary.runs += 1;
        if records.iter().all(|r| r.status.is_ok()) {
            summary.ok += 1;
        } else if records
            .iter()
            .any(|r| matches!(r.status, RecordStatus::Failed(_)))
        {
            summary.failed += 1;
        } else {
            summary.skipped += 1;
        }
        progress(Progress::Finished(run, &records));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv::devices::DeviceVariant;

    #[test]
    fn device_labels_map_to_options() {
        let p = device_options("synthetic-poll");
        assert_eq!(
            (p.variant, p.polling, p.event_idx),
            (DeviceVariant::Synthetic, true, true)
        );
        let n = device_options("synthetic-noevidx");
        assert!(!n.event_idx);
        assert_eq!(device_options("emulated").variant, DeviceVariant::Emulated);
    }
}
