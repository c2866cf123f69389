//! Where the time goes: for each device variant and phase run by hv, the guest's time per
//! operation next to what the exit counts explain of it, priced with the exit costs that
//! exit-floor measured in the same results, and the host CPU hv's threads spent per operation.
//!
//! Every input is in the run records, so a reader can check each cell by hand:
//! - exit costs: per exit-floor micro-test, median ns/op of hv, no enlightenments, one
//!   partition, minus the `nop` loop's median ns/op (what one exit adds to a loop iteration).
//!   Userspace exits are priced by reason (`io_out` at `pio-out`, `io_in` at `pio-in`,
//!   `mmio_write`/`mmio_read` at the MMIO tests, `hlt` at `hlt`); in-kernel exits at
//!   `pio-kernel` (an ioeventfd write KVM completes without leaving the kernel);
//! - userspace exits per op: hv's own counts (`exits`); in-kernel exits per op:
//!   [`RunRecord::in_kernel_exits`] (KVM's count less hv's), or "not measured" with the reason
//!   where the host cannot count them (nested KVM);
//! - interrupts per op and kicks per op: the guest's metrics; interrupts are priced at
//!   exit-floor's `hlt` (a halt woken by an interrupt);
//! - host CPU per op: the phase's vCPU and device-worker thread CPU time over its operations.
//!
//! "explained" is the priced part over the guest time; the rest is guest instructions and
//! waiting on the device (for synthetic devices, the worker's time shows beside it).

use std::collections::BTreeMap;

use hv::record::RunRecord;

use crate::doc::Block;

/// The exit-floor micro-test that prices one userspace exit of `reason`.
fn test_for_reason(reason: &str) -> Option<&'static str> {
    match reason {
        "io_out" => Some("pio-out"),
        "io_in" => Some("pio-in"),
        "mmio_write" => Some("mmio-write"),
        "mmio_read" => Some("mmio-read"),
        "hlt" => Some("hlt"),
        _ => None,
    }
}

/// The micro-test that prices one in-kernel exit, and one interrupt.
const IN_KERNEL_TEST: &str = "pio-kernel";
const INTERRUPT_TEST: &str = "hlt";

/// Median of the finite values.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    crate::stats::median(&v)
}

/// Exit costs measured by exit-floor in these results: ns per exit by micro-test, and how many
/// records each median came from.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExitCosts {
    pub ns: BTreeMap<String, f64>,
    pub records: usize,
}

impl ExitCosts {
    /// Medians over exit-floor records of hv with no enlightenments and one partition.
    pub fn from_records(records: &[RunRecord]) -> ExitCosts {
        let mut by_test: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut n = 0;
        for r in records.iter().filter(|r| {
            r.workload == "exit-floor"
                && r.vmm == "hv"
                && r.status.is_ok()
                && r.enlightenments.is_empty()
                && r.partitions == 1
        }) {
            if let Some(ns) = r.ns_per_op() {
                by_test.entry(r.phase.as_str()).or_default().push(ns);
                n += 1;
            }
        }
        let nop = by_test.get("nop").cloned().and_then(median);
        let mut ns = BTreeMap::new();
        if let Some(nop) = nop {
            for (test, v) in by_test {
                if test != "nop"
                    && let Some(m) = median(v)
                {
                    ns.insert(test.to_string(), (m - nop).max(0.0));
                }
            }
        }
        ExitCosts { ns, records: n }
    }

    fn of(&self, test: &str) -> Option<f64> {
        self.ns.get(test).copied()
    }
}

/// One breakdown row: medians over the records of one experiment, workload, phase, variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub experiment: String,
    pub workload: String,
    pub phase: String,
    pub variant: String,
    pub guest_ns: Option<f64>,
    pub user_exits: Option<f64>,
    /// Userspace exits priced by reason; `None` when some reason has no measured price.
    pub user_ns: Option<f64>,
    pub kernel_exits: Result<f64, String>,
    pub kernel_ns: Option<f64>,
    pub interrupts: Option<f64>,
    pub interrupt_ns: Option<f64>,
    pub kicks: Option<f64>,
    pub vcpu_ns: Option<f64>,
    pub worker_ns: Option<f64>,
}

impl Row {
    /// Share of the guest time the priced exits and interrupts account for.
    pub fn explained(&self) -> Option<f64> {
        let priced =
            self.user_ns? + self.kernel_ns.unwrap_or(0.0) + self.interrupt_ns.unwrap_or(0.0);
        let g = self.guest_ns?;
        (g > 0.0).then(|| priced / g)
    }
}

/// Per-op values of one record (None where not measured).
struct PerOp {
    guest: Option<f64>,
    user: Option<f64>,
    user_ns: Option<f64>,
    kernel: Result<f64, String>,
    interrupts: Option<f64>,
    kicks: Option<f64>,
    vcpu: Option<f64>,
    worker: Option<f64>,
}

fn per_op(r: &RunRecord, costs: &ExitCosts) -> PerOp {
    let ops = r.ops as f64;
    let user_ns = r.exits_per_op("total").and_then(|_| {
        r.exits
            .iter()
            .filter(|(k, n)| k.as_str() != "total" && **n > 0)
            .map(|(k, &n)| Some(n as f64 / ops * costs.of(test_for_reason(k)?)?))
            // A float sum starts at -0.0; no exits cost +0.
            .try_fold(0.0, |acc, x| x.map(|x| acc + x))
    });
    let cpu = |ns: u64| (r.ops > 0 && !r.exits.is_empty()).then(|| ns as f64 / ops);
    PerOp {
        guest: r.ns_per_op(),
        user: r.exits_per_op("total"),
        user_ns,
        kernel: r
            .in_kernel_exits()
            .map(|n| n as f64 / ops)
            .map_err(str::to_string),
        interrupts: r.metrics.get("interrupts").map(|n| n / ops),
        kicks: r.metrics.get("kicks").map(|n| n / ops),
        vcpu: cpu(r.cpu.vcpu_ns),
        worker: cpu(r.cpu.worker_ns),
    }
}

/// Breakdown rows for the device phases hv ran (device variant other than `none`).
pub fn rows(records: &[RunRecord], costs: &ExitCosts) -> Vec<Row> {
    type Key = (String, String, String, String);
    let mut groups: BTreeMap<Key, Vec<PerOp>> = BTreeMap::new();
    for r in records.iter().filter(|r| {
        r.vmm == "hv" && r.status.is_ok() && r.device != "none" && r.ops > 0 && r.role.is_empty()
    }) {
        groups
            .entry((
                r.experiment.clone(),
                r.workload.clone(),
                r.phase.clone(),
                r.variant.clone(),
            ))
            .or_default()
            .push(per_op(r, costs));
    }
    groups
        .into_iter()
        .map(|((experiment, workload, phase, variant), v)| {
            let m = |f: &dyn Fn(&PerOp) -> Option<f64>| median(v.iter().filter_map(f).collect());
            let kernel_exits = match v.iter().find_map(|p| p.kernel.as_ref().err()) {
                Some(why) => Err(why.clone()),
                None => m(&|p| p.kernel.as_ref().ok().copied()).ok_or_else(|| "no records".into()),
            };
            let kernel_ns = kernel_exits
                .as_ref()
                .ok()
                .and_then(|k| Some(k * costs.of(IN_KERNEL_TEST)?));
            let interrupts = m(&|p| p.interrupts);
            Row {
                experiment,
                workload,
                phase,
                variant,
                guest_ns: m(&|p| p.guest),
                user_exits: m(&|p| p.user),
                user_ns: m(&|p| p.user_ns),
                kernel_exits,
                kernel_ns,
                interrupt_ns: interrupts.and_then(|i| Some(i * costs.of(INTERRUPT_TEST)?)),
                interrupts,
                kicks: m(&|p| p.kicks),
                vcpu_ns: m(&|p| p.vcpu),
                worker_ns: m(&|p| p.worker),
            }
        })
        .collect()
}

/// Microseconds with three significant digits; "not measured" for `None`.
fn us(ns: Option<f64>) -> String {
    match ns {
        None => "not measured".into(),
        Some(v) => {
            let u = v / 1e3;
            match u.abs() {
                a if a >= 100.0 => format!("{u:.0}"),
                a if a >= 10.0 => format!("{u:.1}"),
                a if a >= 1.0 => format!("{u:.2}"),
                _ => format!("{u:.3}"),
            }
        }
    }
}

fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured".into(), |v| format!("{v:.2}"))
}

/// The report section: the exit costs used, then one row per device variant and phase.
pub fn blocks(records: &[RunRecord]) -> Vec<Block> {
    let costs = ExitCosts::from_records(records);
    let rows = rows(records, &costs);
    if rows.is_empty() {
        return Vec::new();
    }
    let mut b = vec![Block::Heading(2, "Where the time goes".into())];
    if costs.ns.is_empty() {
        b.push(Block::Para(
            "No exit-floor records of hv (no enlightenments, one partition) with a `nop` phase in these results: exit costs are not measured, so exits are counted but not priced.".into(),
        ));
    } else {
        b.push(Block::Para(format!(
            "Exit costs from exit-floor in these results ({} records of hv, no enlightenments, one partition): median ns/op of each micro-test less the `nop` loop's. Userspace exits are priced by reason, in-kernel exits at `{IN_KERNEL_TEST}`, interrupts at `{INTERRUPT_TEST}` (a halt woken by an interrupt). \"explained\" = priced time / guest time; the rest is guest instructions and waiting on the device. Host CPU is hv's vCPU and device-worker threads per op.",
            costs.records
        )));
        b.push(Block::Table {
            head: vec!["exit-floor test".into(), "µs per exit".into()],
            rows: costs
                .ns
                .iter()
                .map(|(t, ns)| vec![t.clone(), us(Some(*ns))])
                .collect(),
        });
    }
    let why: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.kernel_exits.as_ref().err().map(String::as_str))
        .collect();
    if !why.is_empty() {
        b.push(Block::Para(format!(
            "In-kernel exits not measured: {}.",
            why.into_iter().collect::<Vec<_>>().join("; ")
        )));
    }
    let head = [
        "experiment / phase",
        "variant",
        "guest µs/op",
        "userspace exits/op",
        "× cost = µs/op",
        "in-kernel exits/op",
        "× cost = µs/op",
        "kicks/op",
        "interrupts/op",
        "× cost = µs/op",
        "explained",
        "vCPU CPU µs/op",
        "worker CPU µs/op",
    ];
    b.push(Block::Table {
        head: head.iter().map(|s| s.to_string()).collect(),
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    format!("{} / {}", r.experiment, r.phase),
                    r.variant.clone(),
                    us(r.guest_ns),
                    count(r.user_exits),
                    us(r.user_ns),
                    match &r.kernel_exits {
                        Ok(k) => format!("{k:.2}"),
                        Err(_) => "not measured".into(),
                    },
                    us(r.kernel_ns),
                    count(r.kicks),
                    count(r.interrupts),
                    us(r.interrupt_ns),
                    r.explained()
                        .map_or_else(|| "–".into(), |e| format!("{:.0}%", e * 100.0)),
                    us(r.vcpu_ns),
                    us(r.worker_ns),
                ]
            })
            .collect(),
    });
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phase record of hv: `ns_op` guest ns per op over `ops` (TSC at 1 GHz).
    fn rec(workload: &str, phase: &str, device: &str, ops: u64, ns_op: u64) -> RunRecord {
        let mut r = RunRecord {
            vmm: "hv".into(),
            experiment: "e".into(),
            workload: workload.into(),
            phase: phase.into(),
            device: device.into(),
            variant: device.into(),
            partitions: 1,
            ops,
            guest_tsc: ns_op * ops,
            tsc_khz: 1_000_000,
            ..Default::default()
        };
        r.exits.insert("total".into(), 0);
        r
    }

    fn exit_floor() -> Vec<RunRecord> {
        let mut v = Vec::new();
        for (phase, ns) in [
            ("nop", 1_000),
            ("pio-out", 11_000),
            ("pio-kernel", 2_000),
            ("hlt", 41_000),
        ] {
            // Three repetitions; the median is the middle one.
            for d in [0, 500, 9_000] {
                v.push(rec("exit-floor", phase, "none", 100, ns + d));
            }
        }
        v
    }

    #[test]
    fn exit_costs_are_exit_floor_medians_less_the_nop_loop() {
        let c = ExitCosts::from_records(&exit_floor());
        assert_eq!(c.records, 12);
        assert_eq!(c.of("pio-out"), Some(10_000.0));
        assert_eq!(c.of("pio-kernel"), Some(1_000.0));
        assert_eq!(c.of("hlt"), Some(40_000.0));
        assert_eq!(c.of("nop"), None);
        // QEMU and enlightened exit-floor records are not hv's plain exit costs.
        let mut q = exit_floor();
        for r in &mut q {
            r.vmm = "qemu".into();
        }
        assert!(ExitCosts::from_records(&q).ns.is_empty());
    }

    #[test]
    fn a_device_phase_is_priced_from_its_counts() {
        let mut recs = exit_floor();
        // 10 ops of 100 µs: 3 io_out exits per op (30 µs), 1 interrupt per op (40 µs),
        // 2 in-kernel exits per op (KVM counted 10*3 + 20 + the marker), 50 µs vCPU CPU/op.
        let mut r = rec("blk-io", "blk-read", "emulated", 10, 100_000);
        r.exits.insert("total".into(), 30);
        r.exits.insert("io_out".into(), 30);
        r.kvm_stats.insert("exits".into(), 51);
        r.metrics.insert("interrupts".into(), 10.0);
        r.cpu.vcpu_ns = 500_000;
        recs.push(r.clone());
        let all = rows(&recs, &ExitCosts::from_records(&recs));
        assert_eq!(all.len(), 1, "exit-floor itself (device none) is not a row");
        let row = &all[0];
        assert_eq!(row.guest_ns, Some(100_000.0));
        assert_eq!((row.user_exits, row.user_ns), (Some(3.0), Some(30_000.0)));
        assert_eq!(row.kernel_exits, Ok(2.0));
        assert_eq!(row.kernel_ns, Some(2_000.0));
        assert_eq!(row.interrupt_ns, Some(40_000.0));
        assert_eq!(row.vcpu_ns, Some(50_000.0));
        assert_eq!(row.explained(), Some(0.72));
        // An exit reason exit-floor does not price leaves the userspace time unpriced.
        r.exits.insert("msr_write".into(), 5);
        r.host.kvm_flavour = "nested-pvm".into();
        let mut recs = exit_floor();
        recs.push(r);
        let row = &rows(&recs, &ExitCosts::from_records(&recs))[0];
        assert_eq!(row.user_ns, None);
        assert!(
            row.kernel_exits
                .as_ref()
                .is_err_and(|e| e.contains("kvm_pvm"))
        );
        assert_eq!(row.explained(), None);
    }

    #[test]
    fn the_section_says_not_measured_instead_of_zero() {
        let mut r = rec("console-io", "con-write", "synthetic", 4, 10_000);
        r.host.kvm_flavour = "nested-pvm".into();
        let b = blocks(&[r]);
        let text = crate::doc::markdown("t", &b);
        assert!(text.contains("exit costs are not measured"), "{text}");
        assert!(
            text.contains("In-kernel exits not measured: nested KVM"),
            "{text}"
        );
        assert!(!text.contains("-0.000"), "{text}");
        assert!(
            blocks(&exit_floor()).is_empty(),
            "no device phases, no section"
        );
    }
}
