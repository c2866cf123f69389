//! The device transports side by side: for an experiment that runs a device class over
//! VMBus-style channels beside virtio (and usually the emulated device), one table and one plot
//! of what each request costs on the way in (the doorbell: how it reaches hv, how many per
//! request, the userspace exits they make) and on the way out (the completion interrupts, the
//! signals the ring protocol suppressed), with latency and the device worker's CPU.

use std::path::Path;

use crate::AnalysisError;
use crate::doc::Block;
use crate::model::Row;
use crate::plots::{Bars, Palette, Plot, render, slug};
use crate::report::{est, latency, measured, opt, phase_categories};

/// The paragraph above the table.
pub const INTRO: &str = "Device transports per request: the doorbell (emulated registers trap \
    on every access; virtio's notification is an ioeventfd KVM completes in the kernel; a \
    VMBus-style signal is HvCallSignalEvent, one MSR exit to hv), the guest's doorbells and \
    completion interrupts, hv's VMBus signals suppressed by the ring protocol, latency and \
    the device worker's host CPU:";

/// How a device variant's doorbell reaches hv.
fn doorbell(device: &str) -> &'static str {
    match device {
        "emulated" => "register access (trap)",
        "synthetic" => "ioeventfd (in KVM)",
        "vmbus" => "HvCallSignalEvent (MSR exit)",
        _ => "–",
    }
}

/// Rows of phases with I/O (the guest counted doorbells or interrupts) of an experiment that
/// has a VMBus-style row, hv's only (QEMU has no such device).
fn io_rows<'a>(rows: &[&'a Row]) -> Vec<&'a Row> {
    if !rows.iter().any(|r| r.device == "vmbus") {
        return Vec::new();
    }
    rows.iter()
        .filter(|r| r.key.vmm == "hv")
        .filter(|r| r.doorbells_per_op.is_some() || r.guest_irqs_per_op.is_some())
        .copied()
        .collect()
}

/// The table, when the experiment has a VMBus-style row.
pub fn table(rows: &[&Row]) -> Option<Block> {
    let rows = io_rows(rows);
    if rows.is_empty() {
        return None;
    }
    let unit = rows
        .iter()
        .find(|r| !r.lat_unit.is_empty())
        .map_or("ns", |r| r.lat_unit.as_str())
        .to_string();
    let head = [
        "phase",
        "variant",
        "doorbell",
        "doorbells/op",
        "userspace exits/op",
        "top exits/op",
        "guest irqs/op",
        "signals suppressed/op",
        "p50",
        "p99",
        "worker host time/op",
        "time vs baseline [95% CI]",
    ]
    .map(String::from)
    .to_vec();
    let body = rows
        .iter()
        .map(|r| {
            vec![
                r.key.phase.clone(),
                r.variant.clone(),
                doorbell(&r.device).into(),
                // Emulated devices have no doorbell: every register access is one.
                if r.device == "emulated" {
                    "–".into()
                } else {
                    opt(r.doorbells_per_op)
                },
                measured(r.exits_per_op),
                r.top_exits
                    .iter()
                    .map(|(k, v)| format!("{k} {}", crate::report::num(*v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                opt(r.guest_irqs_per_op),
                if r.device == "vmbus" {
                    measured(r.suppressed_per_op)
                } else {
                    "–".into()
                },
                latency(r.lat_p50, &unit),
                latency(r.lat_p99, &unit),
                r.worker_us_per_op
                    .map_or_else(|| "not measured".into(), |us| crate::report::time(us * 1e3)),
                if r.is_baseline {
                    "baseline".into()
                } else {
                    est(r.vs_baseline)
                },
            ]
        })
        .collect();
    Some(Block::Table { head, rows: body })
}

/// The plot: per phase and variant, userspace exits, doorbells and guest interrupts per op.
pub fn plot(
    exp: &str,
    w: &str,
    rows: &[&Row],
    palette: &Palette,
    dir: &Path,
) -> Result<Option<Plot>, AnalysisError> {
    let rows = io_rows(rows);
    if rows.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&&Row> = rows.iter().collect();
    let title = format!("{exp} / {w}: per request, by transport");
    let chart = Bars {
        title: title.clone(),
        x_label: "per op (median)".into(),
        categories: phase_categories(&refs),
        category_colors: rows.iter().map(|r| palette.of(&r.variant)).collect(),
        series: vec![
            (
                "userspace exits".into(),
                rows.iter().map(|r| r.exits_per_op).collect(),
            ),
            (
                "doorbells".into(),
                rows.iter()
                    .map(|r| r.doorbells_per_op.filter(|_| r.device != "emulated"))
                    .collect(),
            ),
            (
                "guest interrupts".into(),
                rows.iter().map(|r| r.guest_irqs_per_op).collect(),
            ),
        ],
    };
    render(&chart, dir, &slug(&format!("transports_{exp}_{w}")), &title).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_names_its_doorbell() {
        assert_eq!(doorbell("vmbus"), "HvCallSignalEvent (MSR exit)");
        assert_eq!(doorbell("synthetic"), "ioeventfd (in KVM)");
        assert_eq!(doorbell("emulated"), "register access (trap)");
        assert_eq!(doorbell("none"), "–");
    }
}
