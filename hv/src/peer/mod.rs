//! Peer VMMs that run the same guest image, for side-by-side columns.

use crate::record::{RecordStatus, RunRecord};
use crate::run::{RecordContext, RunRequest};

/// Runs `req` under the peer VMM. Placeholder until the QEMU runner lands: every run is
/// recorded as skipped with that reason, never as numbers.
pub fn run_peer(req: &RunRequest, ctx: &RecordContext) -> Vec<RunRecord> {
    vec![RunRecord {
        run_id: ctx.run_id.clone(),
        experiment: ctx.experiment.clone(),
        workload: req.workload.clone(),
        variant: req.variant_label(),
        vmm: "qemu".into(),
        phase: "run".into(),
        status: RecordStatus::Skipped("the QEMU peer runner is not in this build".into()),
        ..RunRecord::default()
    }]
}
