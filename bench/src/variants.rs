//! The key comparisons of hvlab as criterion can time them: one workload, two or three
//! variants (device class or enlightenment set), each run through `hv::run::run` and measured
//! by the guest (TSC delta of one phase, converted with KVM's TSC frequency). A variant this
//! host cannot run is reported as skipped with the reason; it is never replaced by another.

use std::collections::BTreeMap;
use std::time::Duration;

use hv::enlightenments::EnlightenmentSet;
use hv::record::RunRecord;
use hv::run::{RecordContext, RunRequest};
use kvm_ioctls::Kvm;

/// How the operation count of a run reaches the guest.
#[derive(Debug, Clone, Copy)]
pub enum OpsArg {
    /// `key=N`.
    Count(&'static str),
    /// console-io: `bytes=N*line` with the given line length, one op per line.
    Lines(u64),
}

/// One variant of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Label in criterion's output and in the summary.
    pub label: &'static str,
    /// Device variant for `crate::suite::device_options` (`none`, `emulated`, `synthetic`).
    pub device: &'static str,
    /// Enlightenment set for `EnlightenmentSet::parse`.
    pub enlighten: &'static str,
}

/// A workload measured under two or more variants; the first is the baseline of the ratios.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    /// criterion group name.
    pub group: &'static str,
    pub workload: &'static str,
    /// The phase whose guest time is the measurement.
    pub phase: &'static str,
    pub vcpus: u32,
    /// Host CPUs the vCPUs are pinned to (round-robin).
    pub cpus: Option<&'static [usize]>,
    /// Arguments besides the operation count.
    pub args: &'static [(&'static str, &'static str)],
    pub ops: OpsArg,
    pub variants: &'static [Variant],
}

const fn dev(label: &'static str) -> Variant {
    Variant {
        label,
        device: label,
        enlighten: "none",
    }
}

const fn enl(label: &'static str) -> Variant {
    Variant {
        label,
        device: "none",
        enlighten: label,
    }
}

/// The comparisons, in report order.
pub const COMPARISONS: &[Comparison] = &[
    Comparison {
        group: "blk_read_4k",
        workload: "blk-io",
        phase: "blk-read",
        vcpus: 1,
        cpus: None,
        args: &[("rw", "read"), ("bs", "4k"), ("qd", "1")],
        ops: OpsArg::Count("count"),
        variants: &[dev("emulated"), dev("synthetic")],
    },
    Comparison {
        group: "console_write",
        workload: "console-io",
        phase: "con-write",
        vcpus: 1,
        cpus: None,
        args: &[("line", "64"), ("readback", "0")],
        ops: OpsArg::Lines(64),
        variants: &[dev("emulated"), dev("synthetic")],
    },
    Comparison {
        group: "tlb_shootdown",
        workload: "tlb-shootdown",
        phase: "shootdown",
        vcpus: 4,
        cpus: None,
        args: &[],
        ops: OpsArg::Count("iters"),
        variants: &[enl("none"), enl("hv-vpindex,hv-tlbflush")],
    },
    Comparison {
        group: "ipi_multicast",
        workload: "ipi",
        phase: "ipi-multicast",
        vcpus: 4,
        cpus: None,
        args: &[("phases", "multicast")],
        ops: OpsArg::Count("iters"),
        variants: &[enl("none"), enl("x2apic"), enl("hv-vpindex,hv-ipi")],
    },
    Comparison {
        group: "spinlock",
        workload: "spinlock",
        phase: "acquire",
        vcpus: 4,
        cpus: Some(&[0, 1]),
        args: &[("hold", "200"), ("spins", "16")],
        ops: OpsArg::Count("iters"),
        variants: &[enl("none"), enl("hv-spinlocks")],
    },
];

/// Smallest and largest operation counts one run does: below a few ops the guest's clock
/// reads dominate; above, a sample costs more than it tells.
pub const MIN_OPS: u64 = 8;
pub const MAX_OPS: u64 = 64;

impl Comparison {
    /// The run request for `v` doing `ops` operations, or why this host cannot run it.
    pub fn request(&self, kvm: &Kvm, v: &Variant, ops: u64) -> Result<RunRequest, String> {
        let set = EnlightenmentSet::parse(v.enlighten).map_err(|e| e.to_string())?;
        set.resolve(kvm).map_err(|e| e.to_string())?;
        let mut args: BTreeMap<String, String> = self
            .args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self.ops {
            OpsArg::Count(key) => args.insert(key.into(), ops.to_string()),
            OpsArg::Lines(line) => args.insert("bytes".into(), (ops * line).to_string()),
        };
        Ok(RunRequest {
            workload: self.workload.into(),
            args,
            vcpus: self.vcpus,
            cpus: self.cpus.map(<[usize]>::to_vec),
            timeout: Duration::from_secs(60),
            tracepoints: false,
            devices: crate::suite::device_options(v.device),
            enlightenments: set,
            ..RunRequest::default()
        })
    }

    /// Runs `v` once with `ops` operations: the measured phase's record (partition 0), or why
    /// there is none. A phase the guest skipped (a mode this host lacks) is an error here.
    pub fn run(&self, kvm: &Kvm, v: &Variant, ops: u64) -> Result<RunRecord, String> {
        let req = self.request(kvm, v, ops)?;
        let res = hv::run::run(kvm, &req, &RecordContext::adhoc()).map_err(|e| e.to_string())?;
        let rec = res
            .records
            .into_iter()
            .find(|r| r.partition == 0 && r.phase == self.phase)
            .ok_or_else(|| format!("no `{}` phase in the run", self.phase))?;
        if !rec.status.is_ok() {
            return Err(format!("{}: {:?}", self.phase, rec.status));
        }
        if rec.ns_per_op().is_none() {
            return Err(format!(
                "{}: no guest time (ops {}, tsc_khz {})",
                self.phase, rec.ops, rec.tsc_khz
            ));
        }
        Ok(rec)
    }

    /// Guest-measured time of `iters` operations, for criterion's `iter_custom`: one run of
    /// `iters` clamped to [`MIN_OPS`]..=[`MAX_OPS`], its time per op scaled back to `iters`.
    pub fn guest_time(&self, kvm: &Kvm, v: &Variant, iters: u64) -> Duration {
        let rec = match self.run(kvm, v, iters.clamp(MIN_OPS, MAX_OPS)) {
            Ok(r) => r,
            Err(e) => panic!("{}/{}: {e}", self.group, v.label),
        };
        let per_op = rec.ns_per_op().unwrap_or(f64::NAN);
        Duration::from_nanos((per_op * iters as f64).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm() -> Kvm {
        hv::error::open_kvm()
            .unwrap_or_else(|e| panic!("this test boots guests and needs /dev/kvm: {e}"))
    }

    fn comparison(group: &str) -> &'static Comparison {
        COMPARISONS
            .iter()
            .find(|c| c.group == group)
            .expect("comparison")
    }

    /// Runs every variant of `group` once with `ops` operations; a variant this host cannot
    /// run is printed and left out.
    fn run_all(kvm: &Kvm, group: &str, ops: u64) -> BTreeMap<&'static str, RunRecord> {
        let c = comparison(group);
        let mut out = BTreeMap::new();
        for v in c.variants {
            if let Err(why) = c.request(kvm, v, ops) {
                println!("{group}/{}: skipped: {why}", v.label);
                continue;
            }
            let rec = c
                .run(kvm, v, ops)
                .unwrap_or_else(|e| panic!("{group}/{}: {e}", v.label));
            println!(
                "{group}/{}: ops {} ns/op {:.0} exits {:?}",
                v.label,
                rec.ops,
                rec.ns_per_op().unwrap_or(f64::NAN),
                rec.exits
            );
            assert!(rec.ops > 0, "{group}/{}: no ops", v.label);
            assert!(rec.ns_per_op().is_some_and(|ns| ns > 0.0));
            assert_eq!(rec.variant, rec_label(v), "{group}: variant label");
            out.insert(v.label, rec);
        }
        out
    }

    fn rec_label(v: &Variant) -> String {
        if v.device == "none" {
            // Records join an enlightenment list's names with `+`.
            v.enlighten.replace(',', "+")
        } else {
            v.device.to_string()
        }
    }

    fn exits(r: &RunRecord) -> f64 {
        r.exits_per_op("total").unwrap_or(f64::NAN)
    }

    #[test]
    fn blk_read_synthetic_takes_no_userspace_exit_per_request() {
        let kvm = kvm();
        let r = run_all(&kvm, "blk_read_4k", 4);
        assert_eq!(r["emulated"].ops, 4);
        assert!(exits(&r["emulated"]) >= 1.0, "ATA PIO traps per request");
        assert_eq!(r["synthetic"].ops, 4);
        assert_eq!(exits(&r["synthetic"]), 0.0, "{:?}", r["synthetic"].exits);
    }

    #[test]
    fn console_write_synthetic_takes_no_userspace_exit_per_line() {
        let kvm = kvm();
        let r = run_all(&kvm, "console_write", 2);
        assert_eq!(r["emulated"].ops, 2);
        // One OUT per byte of a 64-byte line, at least.
        assert!(exits(&r["emulated"]) >= 64.0, "{:?}", r["emulated"].exits);
        assert_eq!(exits(&r["synthetic"]), 0.0, "{:?}", r["synthetic"].exits);
    }

    /// Exit reasons other than `total` seen in the phase.
    fn reasons(r: &RunRecord) -> Vec<&str> {
        r.exits
            .iter()
            .filter(|(k, n)| k.as_str() != "total" && **n > 0)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    #[test]
    fn tlb_shootdown_hypercall_exits_to_hv_once_per_shootdown() {
        let kvm = kvm();
        let r = run_all(&kvm, "tlb_shootdown", 2);
        // IPIs through the in-kernel local APIC: nothing reaches hv.
        assert_eq!(exits(&r["none"]), 0.0, "{:?}", r["none"].exits);
        if let Some(h) = r.get("hv-vpindex,hv-tlbflush") {
            assert!(h.exits_per_op("msr_write") >= Some(1.0), "{:?}", h.exits);
        }
    }

    #[test]
    fn ipi_multicast_hypercall_is_one_msr_exit_per_multicast() {
        let kvm = kvm();
        let r = run_all(&kvm, "ipi_multicast", 2);
        assert_eq!(exits(&r["none"]), 0.0, "{:?}", r["none"].exits);
        if let Some(x) = r.get("x2apic") {
            assert_eq!(exits(x), 0.0, "{:?}", x.exits);
        }
        if let Some(h) = r.get("hv-vpindex,hv-ipi") {
            assert_eq!(h.exits_per_op("msr_write"), Some(1.0), "{:?}", h.exits);
        }
    }

    #[test]
    fn spinlock_hv_spinlocks_exits_only_through_msrs() {
        let kvm = kvm();
        // MAX_OPS contended acquisitions: enough that waiters take the slow path (with 8, a
        // run sometimes has none, and then the hv-spinlocks variant measured nothing).
        let r = run_all(&kvm, "spinlock", MAX_OPS);
        assert_eq!(exits(&r["none"]), 0.0, "{:?}", r["none"].exits);
        if let Some(n) = r.get("hv-spinlocks") {
            let slow = n.metrics.get("slow_waits").copied().unwrap_or(0.0) as u64;
            let msrs = n.exits.get("msr_write").copied().unwrap_or(0);
            let hv_count = |k: &str| {
                n.exits_by_device
                    .get(&format!("hv-enl:{k}"))
                    .copied()
                    .unwrap_or(0)
            };
            let (calls, yields) = (
                hv_count("hyperv_hypercalls"),
                hv_count("hyperv_spin_yields"),
            );
            println!(
                "spinlock/hv-spinlocks: {slow} slow waits, {msrs} MSR exits, hv saw {calls} hypercalls and made {yields} yields"
            );
            // Non-empty: `all` alone passes when the notification never happened.
            assert!(slow > 0, "no notification: {:?}", n.exits);
            // Each slow wait is one HvCallNotifyLongSpinWait through the hypercall page: one
            // MSR exit, one host-thread yield.
            assert_eq!((msrs, calls, yields), (slow, slow, slow));
            assert!(
                reasons(n).iter().all(|k| ["msr_write", "intr"].contains(k)),
                "{:?}",
                n.exits
            );
        }
    }

    #[test]
    fn guest_time_scales_per_op_time_to_iters() {
        let kvm = kvm();
        let c = comparison("ipi_multicast");
        let d = c.guest_time(&kvm, &c.variants[0], 1000);
        // 1000 ops at MAX_OPS per run: at least a microsecond each, well under a second.
        assert!(
            d > Duration::from_millis(1) && d < Duration::from_secs(1000),
            "{d:?}"
        );
    }
}
