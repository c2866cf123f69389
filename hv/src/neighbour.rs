//! A neighbour partition: one more partition, running its own workload on the same host CPUs as
//! the run's partition 0, whose records show whether the run disturbed it. `hv run chaos
//! --neighbour mem-pattern` is the isolation check the chaos workload is for: mem-pattern
//! verifies its own memory (exit 1 on a mismatch), and after the run hv checks the neighbour's
//! memory from the host against [`hvlab_workloads::mem_pattern::pattern_word`] as well.

use std::collections::BTreeMap;
use std::fmt;

use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::DeviceOptions;
use crate::enlightenments::EnlightenmentSet;
use crate::error::HvError;
use crate::partition::{Partition, PartitionConfig, PartitionOutcome};
use crate::record::{RecordStatus, RunRecord};
use crate::run::{self, PartitionResult, RecordContext, RunRequest};

/// `RunRecord::role` of a neighbour partition's records.
pub const ROLE: &str = "neighbour";

/// Most words the host compares after a run (a 4 MiB pattern): the check stays cheap and
/// bounded whatever size the arguments name.
const MAX_CHECK_WORDS: u64 = 1 << 19;

/// The neighbour's workload and arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Neighbour {
    pub workload: String,
    pub args: BTreeMap<String, String>,
}

impl Neighbour {
    /// Parses `WORKLOAD[:key=value,...]`, e.g. `mem-pattern:seed=7,size=16k`.
    pub fn parse(s: &str) -> Result<Neighbour, HvError> {
        let (workload, rest) = s.split_once(':').unwrap_or((s, ""));
        if workload.is_empty() {
            return Err(HvError::Config(format!(
                "neighbour `{s}`: expected WORKLOAD[:key=value,...], e.g. mem-pattern:size=16k"
            )));
        }
        let mut args = BTreeMap::new();
        for kv in rest.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                HvError::Config(format!("neighbour `{s}`: argument `{kv}` is not key=value"))
            })?;
            args.insert(k.to_string(), v.to_string());
        }
        let n = Neighbour {
            workload: workload.to_string(),
            args,
        };
        crate::run::validate(&n.request(&RunRequest::default()))?;
        Ok(n)
    }

    /// The neighbour's own request: one vCPU, the main request's memory, timeout and
    /// tracepoint choice, no devices, no enlightenments.
    pub fn request(&self, main: &RunRequest) -> RunRequest {
        RunRequest {
            workload: self.workload.clone(),
            args: self.args.clone(),
            vcpus: 1,
            partitions: 1,
            devices: DeviceOptions::default(),
            enlightenments: EnlightenmentSet::NONE,
            neighbour: None,
            ..main.clone()
        }
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.workload)?;
        for (i, (k, v)) in self.args.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

/// Builds the neighbour's partition (index = the main request's partition count, so its
/// `part=` differs from every main partition's).
pub fn build(
    kvm: &Kvm,
    main: &RunRequest,
    nreq: &RunRequest,
    image: &[u8],
) -> Result<Partition, HvError> {
    let info = run::validate(nreq)?;
    let mut cfg = PartitionConfig {
        index: main.partitions,
        vcpus: nreq.vcpus,
        mem_bytes: nreq.mem_bytes,
        pin: pin(main, nreq.vcpus),
        unmapped: nreq.unmapped,
        tracepoints: nreq.tracepoints,
        kvm_stats: true,
        max_exits: nreq.max_exits,
        echo_console: nreq.echo_console,
        enlightenments: Some(EnlightenmentSet::NONE),
        seccomp: main.seccomp,
        ..PartitionConfig::default()
    };
    run::apply_host_features(info, &mut cfg);
    cfg.cmdline = run::guest_cmdline(nreq, main.partitions, &[]);
    Partition::new(kvm, cfg, image)
}

/// The neighbour's records: its own workload and arguments, marked with [`ROLE`], with the
/// host's memory check (mem-pattern) folded in.
pub fn records(
    main: &RunRequest,
    nreq: &RunRequest,
    ctx: &RecordContext,
    p: &PartitionResult,
) -> Vec<RunRecord> {
    let params = match run::validate(nreq) {
        Ok(info) => run::effective_args(info, nreq),
        Err(_) => nreq.args.clone(),
    };
    let mut out = run::records_for(nreq, ctx, &params, p);
    let check = (nreq.workload == hvlab_workloads::mem_pattern::INFO.name)
        .then(|| host_mismatches(&params, &p.outcome))
        .flatten();
    annotate(&mut out, check);
    for r in &mut out {
        r.partitions = main.partitions;
    }
    out
}

/// Host CPUs for the neighbour's vCPUs: those of the main request's partition 0.
pub fn pin(main: &RunRequest, vcpus: u32) -> Option<Vec<usize>> {
    main.cpus.as_ref().filter(|c| !c.is_empty()).map(|cpus| {
        (0..vcpus)
            .map(|v| cpus[(v % main.vcpus.max(1)) as usize % cpus.len()])
            .collect()
    })
}

/// For a mem-pattern neighbour that exited cleanly: how many of its pattern words differ
/// from what the host computes (`None` for other workloads, or when it did not finish).
pub fn host_mismatches(params: &BTreeMap<String, String>, o: &PartitionOutcome) -> Option<u64> {
    if !o.status.is_ok() {
        return None;
    }
    let num = |k: &str, d: u64| params.get(k).map_or(Some(d), |v| parse_guest_u64(v));
    let (seed, base, size) = (num("seed", 1)?, num("base", 0x40_0000)?, num("size", 0)?);
    let words = (size / 8).min(MAX_CHECK_WORDS);
    let mut bad = 0;
    for i in 0..words {
        let a = base + i * 8;
        let want = hvlab_workloads::mem_pattern::pattern_word(seed, a);
        match o.memory.read_obj::<u64>(GuestAddress(a)) {
            Ok(v) if v == want => {}
            _ => bad += 1,
        }
    }
    Some(bad)
}

/// The guest's number syntax (`64k`, `0x400000`, `16m`), as mem-pattern parses its arguments.
fn parse_guest_u64(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    v.checked_mul(mult)
}

/// Marks a neighbour's records: role, the host check's count as metric `host_mismatches`,
/// and a failed status when the host found words that differ.
pub fn annotate(records: &mut [RunRecord], mismatches: Option<u64>) {
    for r in records {
        r.role = ROLE.to_string();
        if let Some(bad) = mismatches {
            r.metrics.insert("host_mismatches".into(), bad as f64);
            if bad > 0 {
                r.status = RecordStatus::Failed(format!(
                    "neighbour memory corrupted: {bad} words differ from the pattern"
                ));
                r.status_label = "neighbour-corrupted".into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_and_arguments() {
        let n = Neighbour::parse("mem-pattern:seed=7,size=16k").unwrap();
        assert_eq!(n.workload, "mem-pattern");
        assert_eq!(n.args["seed"], "7");
        assert_eq!(n.args["size"], "16k");
        assert_eq!(n.to_string(), "mem-pattern:seed=7,size=16k");
        assert_eq!(Neighbour::parse("mem-pattern").unwrap().args.len(), 0);
        let e = Neighbour::parse("mem-pattern:sede=7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sede") && e.contains("seed"), "{e}");
        assert!(Neighbour::parse("nope").is_err());
        assert!(Neighbour::parse("mem-pattern:seed").is_err());
        assert!(Neighbour::parse(":x=1").is_err());
    }

    #[test]
    fn neighbour_shares_partition_zeros_cpus() {
        let main = RunRequest {
            vcpus: 2,
            cpus: Some(vec![3, 5]),
            ..RunRequest::default()
        };
        assert_eq!(pin(&main, 1), Some(vec![3]));
        assert_eq!(pin(&main, 3), Some(vec![3, 5, 3]));
        assert_eq!(pin(&RunRequest::default(), 1), None);
    }

    #[test]
    fn numbers_parse_like_the_guest() {
        assert_eq!(parse_guest_u64("64k"), Some(65536));
        assert_eq!(parse_guest_u64("0x400000"), Some(0x40_0000));
        assert_eq!(parse_guest_u64("x"), None);
    }

    #[test]
    fn corruption_fails_the_records() {
        let mut r = vec![RunRecord::default()];
        annotate(&mut r, Some(0));
        assert!(r[0].status.is_ok());
        assert_eq!(r[0].role, ROLE);
        annotate(&mut r, Some(3));
        assert!(matches!(&r[0].status, RecordStatus::Failed(w) if w.contains("3 words")));
        assert_eq!(r[0].metrics["host_mismatches"], 3.0);
    }
}
