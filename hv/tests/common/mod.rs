//! Helpers shared by the integration tests (each test binary uses its own subset).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use hv::partition::PartitionOutcome;
use hv::run::RunRequest;

/// /dev/kvm, or a failed test whose message names the fix. Every integration test file that
/// boots guests uses this: without KVM access they fail the same way everywhere instead of
/// some passing silently (there is no skip path).
pub fn kvm() -> kvm_ioctls::Kvm {
    hv::error::open_kvm()
        .unwrap_or_else(|e| panic!("this test boots guests and needs /dev/kvm: {e}"))
}

/// A run of `workload` with `args` and a 30 s timeout, the rest defaults.
pub fn request(workload: &str, args: &[(&str, &str)]) -> RunRequest {
    RunRequest {
        workload: workload.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout: Duration::from_secs(30),
        ..RunRequest::default()
    }
}

/// The number after `key=` (decimal or 0x-hex) on the first guest console line that contains
/// `rec` and `key=`.
pub fn field(o: &PartitionOutcome, rec: &str, key: &str) -> Option<u64> {
    let line = o
        .console
        .lines()
        .find(|l| l.contains(rec) && l.contains(&format!(" {key}=")))?;
    let v = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{key}=")))?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}
