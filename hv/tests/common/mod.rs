//! Helpers shared by the integration tests (each test binary uses its own subset).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use hv::run::RunRequest;

/// /dev/kvm, or a failed test: for tests that exist to boot guests.
pub fn kvm() -> kvm_ioctls::Kvm {
    hv::error::open_kvm().expect("these tests need read/write access to /dev/kvm")
}

/// /dev/kvm, or `None` (with the reason on stderr) so that the test skips and passes on a host
/// without KVM access.
pub fn kvm_or_skip() -> Option<kvm_ioctls::Kvm> {
    match hv::error::open_kvm() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
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
