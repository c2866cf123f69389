//! End statuses and device errors per experiment: for experiments whose runs end in something
//! other than ok (the chaos experiment above all), how many runs ended how, by partition role
//! (the run's own partitions, or a neighbour) and device variant, and the device errors the
//! guests counted (their phase metrics).
//!
//! A run is counted once per partition however many phase records it wrote.

use std::collections::{BTreeMap, BTreeSet};

use hv::record::RunRecord;

use crate::doc::Block;

/// Guest metrics that count device errors (chaos reports these; the host adds
/// `host_mismatches` to a mem-pattern neighbour's records).
pub const DEVICE_ERROR_METRICS: &[&str] = &[
    "virtio_needs_reset",
    "virtio_refused",
    "ata_err",
    "ata_timeouts",
    "unmapped_reads",
    "host_mismatches",
];

/// End labels that mean the isolation failed whatever the workload intended: a run that hv
/// had to time out, hv's own errors, a neighbour whose memory changed.
pub const ALARM_LABELS: &[&str] = &[
    "timeout",
    "vcpu-thread-panicked",
    "hv-error",
    "neighbour-corrupted",
];

/// One experiment's table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndTable {
    pub experiment: String,
    /// (role, device, end label) -> partitions' runs that ended so. Role is `run` for the
    /// run's own partitions and `neighbour` for neighbour partitions.
    pub ends: BTreeMap<(String, String, String), usize>,
    /// (device, metric) -> (sum over runs, runs where it was non-zero).
    pub device_errors: BTreeMap<(String, String), (f64, usize)>,
    /// Runs (partitions) counted.
    pub runs: usize,
    /// Of them, ending with an [`ALARM_LABELS`] label, or neighbours not ending ok.
    pub alarms: usize,
}

/// Identity of one partition's run: records of the same run share it.
fn run_identity(r: &RunRecord) -> (String, String, u32, u32, String, String) {
    let params = r
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (
        r.run_id.clone(),
        r.run_key.clone(),
        r.partition,
        r.repetition,
        r.variant.clone(),
        if r.run_key.is_empty() {
            params
        } else {
            String::new()
        },
    )
}

fn role(r: &RunRecord) -> &str {
    if r.role.is_empty() { "run" } else { &r.role }
}

/// Tables for the experiments that have any run ending neither ok nor skipped, in experiment
/// order.
pub fn end_tables(records: &[RunRecord]) -> Vec<EndTable> {
    let flagged: BTreeSet<&str> = records
        .iter()
        .filter(|r| !matches!(r.end_label(), "ok" | "skipped"))
        .map(|r| r.experiment.as_str())
        .collect();
    let mut tables: BTreeMap<&str, EndTable> = BTreeMap::new();
    // Per run: its label and the maxima of its device-error metrics over its records (each
    // phase record of a run repeats the same run; metrics live on one phase).
    let mut runs: BTreeMap<(&str, _), (&RunRecord, BTreeMap<&str, f64>)> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| flagged.contains(r.experiment.as_str()))
    {
        let e = runs
            .entry((r.experiment.as_str(), run_identity(r)))
            .or_insert_with(|| (r, BTreeMap::new()));
        // A run's worst record decides its label (a neighbour's host check marks all alike).
        if e.0.end_label() == "ok" && r.end_label() != "ok" {
            e.0 = r;
        }
        for m in DEVICE_ERROR_METRICS {
            if let Some(&v) = r.metrics.get(*m) {
                let slot = e.1.entry(m).or_insert(0.0);
                *slot = slot.max(v);
            }
        }
    }
    for ((exp, _), (r, metrics)) in runs {
        let t = tables.entry(exp).or_insert_with(|| EndTable {
            experiment: exp.to_string(),
            ..EndTable::default()
        });
        let label = r.end_label().to_string();
        let role = role(r).to_string();
        t.runs += 1;
        if ALARM_LABELS.contains(&label.as_str()) || (role != "run" && label != "ok") {
            t.alarms += 1;
        }
        *t.ends.entry((role, r.device.clone(), label)).or_default() += 1;
        for (m, v) in metrics {
            let slot = t
                .device_errors
                .entry((r.device.clone(), m.to_string()))
                .or_insert((0.0, 0));
            slot.0 += v;
            slot.1 += usize::from(v > 0.0);
        }
    }
    tables.into_values().collect()
}

fn fmt_count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// Report blocks: per experiment a summary line, the end-status table and the device-error
/// table.
pub fn blocks(tables: &[EndTable]) -> Vec<Block> {
    let mut b = vec![Block::Heading(2, "End statuses".into())];
    if tables.is_empty() {
        b.push(Block::Para("Every run ended ok (or was skipped).".into()));
        return b;
    }
    for t in tables {
        b.push(Block::Heading(3, t.experiment.clone()));
        b.push(Block::Para(format!(
            "{} partition runs; {} alarming ({}, or a neighbour not ending ok).",
            t.runs,
            t.alarms,
            ALARM_LABELS.join(", ")
        )));
        b.push(Block::Table {
            head: ["partition", "device", "end status", "runs"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rows: t
                .ends
                .iter()
                .map(|((role, dev, label), n)| {
                    vec![role.clone(), dev.clone(), label.clone(), n.to_string()]
                })
                .collect(),
        });
        if t.device_errors.is_empty() {
            b.push(Block::Para("No device-error counters reported.".into()));
        } else {
            b.push(Block::Table {
                head: ["device", "error counter", "total", "runs with any"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                rows: t
                    .device_errors
                    .iter()
                    .map(|((dev, m), (sum, runs))| {
                        vec![dev.clone(), m.clone(), fmt_count(*sum), runs.to_string()]
                    })
                    .collect(),
            });
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rec;
    use hv::record::RecordStatus;

    fn chaos_run(key: &str, device: &str, label: &str, needs_reset: f64) -> Vec<RunRecord> {
        let mut r = rec("chaos", "chaos", "chaos", device, 0, 100.0);
        r.device = device.into();
        r.run_key = key.into();
        r.status_label = label.into();
        if label != "ok" {
            r.status = RecordStatus::Failed(format!("{label} at rip 0x{}", key.len()));
        }
        r.metrics.insert("virtio_needs_reset".into(), needs_reset);
        r.metrics.insert("ata_err".into(), 0.0);
        // A second (fake) phase of the same run must not count the run twice.
        let mut fake = r.clone();
        fake.phase = "chaos-fake".into();
        fake.metrics.clear();
        let mut n = rec("chaos", "mem-pattern", "verify", device, 0, 10.0);
        n.device = "none".into();
        n.run_key = key.into();
        n.partition = 1;
        n.role = "neighbour".into();
        n.status_label = "ok".into();
        n.metrics.insert("host_mismatches".into(), 0.0);
        vec![r, fake, n]
    }

    #[test]
    fn tabulates_end_statuses_by_kind_and_device_errors() {
        let mut recs = Vec::new();
        recs.extend(chaos_run("s1", "synthetic", "ok", 2.0));
        recs.extend(chaos_run("s2", "synthetic", "guest-exit-3", 0.0));
        recs.extend(chaos_run("s3", "synthetic", "ok", 1.0));
        recs.extend(chaos_run("s4", "emulated", "triple-fault", 0.0));
        recs.extend(chaos_run("s5", "emulated", "timeout", 0.0));
        // An experiment where everything is ok gets no table.
        recs.push(rec("exit-floor", "exit-floor", "nop", "none", 0, 5.0));
        let t = end_tables(&recs);
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(t.experiment, "chaos");
        assert_eq!(
            t.runs, 10,
            "5 runs x (chaos + neighbour), fake phases not double-counted"
        );
        assert_eq!(t.alarms, 1, "the timeout");
        let key = |r: &str, d: &str, l: &str| (r.to_string(), d.to_string(), l.to_string());
        assert_eq!(t.ends[&key("run", "synthetic", "ok")], 2);
        assert_eq!(t.ends[&key("run", "synthetic", "guest-exit-3")], 1);
        assert_eq!(t.ends[&key("run", "emulated", "triple-fault")], 1);
        assert_eq!(t.ends[&key("run", "emulated", "timeout")], 1);
        assert_eq!(t.ends[&key("neighbour", "none", "ok")], 5);
        let nr = t.device_errors[&("synthetic".to_string(), "virtio_needs_reset".to_string())];
        assert_eq!(nr, (3.0, 2));
        let ae = t.device_errors[&("emulated".to_string(), "ata_err".to_string())];
        assert_eq!(ae, (0.0, 0));
        let hm = t.device_errors[&("none".to_string(), "host_mismatches".to_string())];
        assert_eq!(hm, (0.0, 0));

        let md = crate::doc::markdown("t", &blocks(std::slice::from_ref(t)));
        assert!(md.contains("End statuses"), "{md}");
        assert!(md.contains("| run | emulated | triple-fault | 1 |"), "{md}");
        assert!(
            md.contains("| synthetic | virtio_needs_reset | 3 | 2 |"),
            "{md}"
        );
        assert!(md.contains("1 alarming"), "{md}");
    }

    #[test]
    fn a_corrupted_neighbour_is_an_alarm_and_old_records_still_group() {
        let mut recs = chaos_run("s1", "synthetic", "ok", 0.0);
        recs[2].status_label = "neighbour-corrupted".into();
        recs[2].status = RecordStatus::Failed("neighbour memory corrupted".into());
        // A record from before `status_label` existed: grouped as `failed`.
        let mut old = rec("chaos", "chaos", "run", "emulated", 0, 1.0);
        old.device = "emulated".into();
        old.run_key = "s9".into();
        old.status = RecordStatus::Failed("guest exited with status 3".into());
        recs.push(old);
        let t = &end_tables(&recs)[0];
        assert_eq!(t.alarms, 1);
        let key = |r: &str, d: &str, l: &str| (r.to_string(), d.to_string(), l.to_string());
        assert_eq!(t.ends[&key("neighbour", "none", "neighbour-corrupted")], 1);
        assert_eq!(t.ends[&key("run", "emulated", "failed")], 1);
        assert!(end_tables(&[]).is_empty());
        let md = crate::doc::markdown("t", &blocks(&[]));
        assert!(md.contains("Every run ended ok"), "{md}");
    }
}
