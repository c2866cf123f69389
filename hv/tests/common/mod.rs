//! Helpers shared by the integration tests (each test binary uses its own subset).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use hv::counters::meter::PhaseDelta;
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

/// Boots `cmdline` (a workload and its arguments) on `vcpus` vCPUs with the enlightenment set
/// `set` and waits up to 60 s for the outcome.
pub fn boot_enlightened(
    kvm: &kvm_ioctls::Kvm,
    cmdline: &str,
    vcpus: u32,
    set: &str,
) -> PartitionOutcome {
    let cfg = hv::partition::PartitionConfig {
        cmdline: format!("{cmdline} cpus={vcpus}"),
        vcpus,
        enlightenments: Some(hv::enlightenments::EnlightenmentSet::parse(set).expect("valid set")),
        ..Default::default()
    };
    let p = hv::partition::Partition::new(kvm, cfg, hv::GUEST_IMAGE).expect("partition builds");
    let r = p.start().expect("starts");
    r.wait(
        std::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    )
}

/// The host's counters for the phase the guest named `name` (ids from its `rec=phase` line).
pub fn named_phase<'a>(o: &'a PartitionOutcome, name: &str) -> &'a PhaseDelta {
    let id = field(o, &format!("name={name} "), "id").unwrap_or_else(|| {
        panic!("no phase {name}:\n{}", o.console);
    }) as u32;
    o.phases
        .iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("no host counters for phase {name}"))
}

/// Exits of `reason` in the phase.
pub fn exits(p: &PhaseDelta, reason: &str) -> u64 {
    p.exits.get(reason).copied().unwrap_or(0)
}

/// The enlightenment host's counter `name` in the phase.
pub fn enl(p: &PhaseDelta, name: &str) -> u64 {
    p.exits_by_device
        .get(&format!("hv-enl:{name}"))
        .copied()
        .unwrap_or(0)
}

/// Fails, with the status, console and notes, unless the guest ended with status 0.
pub fn assert_ok(o: &PartitionOutcome) {
    assert!(
        o.status.is_ok(),
        "status {}\nconsole:\n{}\nnotes: {:?}",
        o.status,
        o.console,
        o.notes
    );
}

/// Fails unless the guest ended as unsupported because `reason` (e.g. `hv-synic_not_exposed`).
pub fn assert_unsupported(o: &PartitionOutcome, reason: &str) {
    assert_eq!(
        o.status,
        hv::RunStatus::GuestExit(hvlab_protocol::status::UNSUPPORTED),
        "{}",
        o.console
    );
    assert!(o.console.contains(reason), "{}", o.console);
}
