//! Enlightenments: paravirtual interfaces hv can expose, one file each, switchable per run.
//!
//! Each enlightenment says what it is (CLI name, description), how it works (its
//! [`Mechanism`]s), what hv does on the host side, and whether this host can run it
//! ([`Enlightenment::probe`]). A run picks an [`EnlightenmentSet`] (`none`, `all`, or a comma
//! list); [`EnlightenmentSet::apply`] turns it into what `Partition::new` needs:
//!
//! 1. VM-level setup before any vCPU exists (KVM_CAP_X86_DISABLE_EXITS must precede vCPU
//!    creation; KVM_CAP_X86_USER_SPACE_MSR + KVM_X86_SET_MSR_FILTER for the Hyper-V MSRs);
//! 2. CPUID edits per vCPU (KVM's 0x40000001 EAX bits, hv's own leaves at
//!    [`hvlab_protocol::HV_CPUID_BASE`]);
//! 3. extra guest command-line words (`apic=xapic` when `x2apic` is off);
//! 4. the runtime ([`host::EnlightenmentHost`]) that serves the Hyper-V hypercalls on the vCPU
//!    threads and flushes TLBs before a vCPU re-enters the guest.
//!
//! Adding one: a file with a unit struct implementing [`Enlightenment`], and one line in
//! `REGISTRY` below.

mod host;
pub mod hyperv;
mod probe;

mod hv_frequencies;
mod hv_ipi;
mod hv_relaxed;
mod hv_spinlocks;
mod hv_stimer;
mod hv_stimer_direct;
mod hv_synic;
mod hv_time;
mod hv_tlbflush;
mod hv_tlbflush_ext;
mod hv_vpindex;
mod idle_no_exit;
mod kvm_clock;
mod poll_control;
mod pv_eoi;
mod pv_ipi;
mod pv_sched_yield;
mod pv_tlb_flush;
mod pv_unhalt;
mod steal_time;
mod x2apic;

use std::fmt;

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;
use thiserror::Error;

pub use host::{EnlightenmentCounters, EnlightenmentHost};
pub use probe::hypercalls_work;

/// How an enlightenment reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// A CPUID bit tells the guest it may use the feature.
    CpuidBit,
    /// The guest enables or uses it through an MSR KVM implements.
    Msr,
    /// hv enables a KVM capability on the VM.
    KvmCapability,
    /// The guest uses a hypercall instruction (vmcall / vmmcall).
    Hypercall,
    /// The Hyper-V TLFS interface served by hv in userspace: CPUID leaves, synthetic MSRs,
    /// hypercalls through the hypercall page hv fills.
    HypervTlfs,
}

impl Mechanism {
    /// Spelling in `hv caps` and records.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::CpuidBit => "cpuid-bit",
            Mechanism::Msr => "msr",
            Mechanism::KvmCapability => "kvm-capability",
            Mechanism::Hypercall => "hypercall",
            Mechanism::HypervTlfs => "hyperv-tlfs",
        }
    }
}

/// One switchable enlightenment.
pub trait Enlightenment: Sync + fmt::Debug {
    /// CLI spelling.
    fn name(&self) -> &'static str;
    /// One line for `hv caps`.
    fn description(&self) -> &'static str;
    /// How it works, most important first.
    fn mechanisms(&self) -> &'static [Mechanism];
    /// What hv does on the host side when it is enabled.
    fn host_side(&self) -> &'static str;
    /// `Ok` when this host can run it, else the reason.
    fn probe(&self, kvm: &Kvm) -> Result<(), String>;
    /// KVM feature bits (CPUID 0x40000001 EAX) exposed when enabled.
    fn kvm_pv_bits(&self) -> u32 {
        0
    }
    /// Hyper-V features (`hyperv::Features` bits) exposed when enabled.
    fn hyperv_bits(&self) -> u32 {
        0
    }
    /// Names of the enlightenments this one needs (checked as QEMU checks its `hv-*` flags).
    fn requires(&self) -> &'static [&'static str] {
        &[]
    }
    /// KVM_X86_DISABLE_EXITS_* flags enabled on the VM.
    fn disable_exits(&self) -> u32 {
        0
    }
    /// Guest command-line words added when this enlightenment is *off* (in a chosen set).
    fn cmdline_when_off(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Every enlightenment, in `hv caps` order. One line per enlightenment.
static REGISTRY: &[&dyn Enlightenment] = &[
    &kvm_clock::KvmClock,
    &steal_time::StealTime,
    &pv_eoi::PvEoi,
    &pv_unhalt::PvUnhalt,
    &pv_tlb_flush::PvTlbFlush,
    &pv_ipi::PvIpi,
    &pv_sched_yield::PvSchedYield,
    &poll_control::PollControl,
    &x2apic::X2apic,
    &idle_no_exit::IdleNoExit,
    &hv_vpindex::HvVpindex,
    &hv_time::HvTime,
    &hv_frequencies::HvFrequencies,
    &hv_tlbflush::HvTlbflush,
    &hv_tlbflush_ext::HvTlbflushExt,
    &hv_ipi::HvIpi,
    &hv_spinlocks::HvSpinlocks,
    &hv_relaxed::HvRelaxed,
    &hv_synic::HvSynic,
    &hv_stimer::HvStimer,
    &hv_stimer_direct::HvStimerDirect,
];

/// The names of hv's earlier private hypercall interface, kept as aliases of the Hyper-V
/// (TLFS) enlightenments that replace them. [`EnlightenmentSet::parse`] resolves them, so
/// records and labels carry the `hv-*` names. (The old `long-spin-notify` parked a waiter until
/// the lock was released; `hv-spinlocks` yields the host thread instead, as the TLFS says.)
pub const ALIASES: &[(&str, &[&str])] = &[
    ("long-spin-notify", &["hv-spinlocks"]),
    ("tlb-flush-hypercall", &["hv-vpindex", "hv-tlbflush"]),
    ("ipi-hypercall", &["hv-vpindex", "hv-ipi"]),
];

/// The `hv-*` names an alias stands for, or `None` when `name` is no alias.
pub fn alias(name: &str) -> Option<&'static [&'static str]> {
    ALIASES.iter().find(|(a, _)| *a == name).map(|(_, to)| *to)
}

/// Every enlightenment hv knows.
pub fn registry() -> &'static [&'static dyn Enlightenment] {
    REGISTRY
}

/// Looks an enlightenment up by its CLI name.
pub fn find(name: &str) -> Option<&'static dyn Enlightenment> {
    REGISTRY.iter().copied().find(|e| e.name() == name)
}

/// One row of `hv caps`.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub name: &'static str,
    pub description: &'static str,
    /// Mechanism names joined with `+`.
    pub mechanism: String,
    pub host_side: &'static str,
    /// `Ok` = supported here; `Err(reason)` = not.
    pub result: Result<(), String>,
}

/// Probes every enlightenment on this host (for `hv caps`).
pub fn probe_all(kvm: &Kvm) -> Vec<ProbeResult> {
    REGISTRY
        .iter()
        .map(|e| ProbeResult {
            name: e.name(),
            description: e.description(),
            mechanism: mechanism_string(e.mechanisms()),
            host_side: e.host_side(),
            result: e.probe(kvm),
        })
        .collect()
}

fn mechanism_string(m: &[Mechanism]) -> String {
    m.iter().map(|m| m.name()).collect::<Vec<_>>().join("+")
}

/// Errors in choosing an enlightenment set.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EnlightenmentError {
    /// A name in the list is not an enlightenment.
    #[error("unknown enlightenment `{name}`; valid: none, all, or a comma list of: {valid}")]
    Unknown { name: String, valid: String },
    /// The list has an empty item (`a,,b`) or is empty.
    #[error("empty enlightenment name in `{list}`; valid: none, all, or a comma list of: {valid}")]
    Empty { list: String, valid: String },
    /// `none` or `all` combined with names.
    #[error("`{word}` cannot be combined with other names in `{list}`")]
    Mixed { word: String, list: String },
    /// A member needs another that is not in the set (as QEMU refuses `hv-tlbflush` without
    /// `hv-vpindex`).
    #[error("enlightenment `{name}` needs `{needs}`; add it to the list")]
    MissingDependency { name: String, needs: String },
    /// An enlightenment this host cannot run was asked for explicitly.
    #[error("enlightenment `{name}` is not supported on this host: {reason}")]
    Unsupported { name: String, reason: String },
}

fn valid_names() -> String {
    let names = REGISTRY.iter().map(|e| e.name()).collect::<Vec<_>>();
    let aliases = ALIASES
        .iter()
        .map(|(a, to)| format!("{a} (= {})", to.join(",")))
        .collect::<Vec<_>>();
    format!("{}; aliases: {}", names.join(", "), aliases.join(", "))
}

/// Members a set chosen as `all` dropped on this host: (name, probe's reason).
pub type Dropped = Vec<(&'static str, String)>;

/// A set of enlightenments (by registry position).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EnlightenmentSet {
    bits: u32,
    /// Chosen as `all`: members this host cannot run are dropped (with a note), not refused.
    all: bool,
    /// Who serves the Hyper-V members (`hyperv-backend=kernel` in the list; user by default).
    backend: hyperv::Backend,
}

impl fmt::Debug for EnlightenmentSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnlightenmentSet({self})")
    }
}

impl fmt::Display for EnlightenmentSet {
    /// `none`, or the names in registry order joined with commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("none");
        }
        f.write_str(&self.names().join(","))
    }
}

impl std::str::FromStr for EnlightenmentSet {
    type Err = EnlightenmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnlightenmentSet::parse(s)
    }
}

impl EnlightenmentSet {
    /// No enlightenment.
    pub const NONE: EnlightenmentSet = EnlightenmentSet {
        bits: 0,
        all: false,
        backend: hyperv::Backend::User,
    };

    /// Every enlightenment (those this host lacks are dropped when applied, with a note).
    pub fn all() -> EnlightenmentSet {
        EnlightenmentSet {
            bits: (1u32 << REGISTRY.len()) - 1,
            all: true,
            backend: hyperv::Backend::User,
        }
    }

    /// Parses `none`, `all`, or a comma list of names (spaces around names are ignored).
    pub fn parse(s: &str) -> Result<EnlightenmentSet, EnlightenmentError> {
        let list = s.trim();
        match list {
            "none" => return Ok(EnlightenmentSet::NONE),
            "all" => return Ok(EnlightenmentSet::all()),
            _ => {}
        }
        let mut set = EnlightenmentSet::NONE;
        for item in list.split(',') {
            let name = item.trim();
            if name.is_empty() {
                return Err(EnlightenmentError::Empty {
                    list: s.to_string(),
                    valid: valid_names(),
                });
            }
            if let Some(b) = name.strip_prefix("hyperv-backend=") {
                set.backend =
                    hyperv::Backend::parse(b).map_err(|_| EnlightenmentError::Unknown {
                        name: name.to_string(),
                        valid: valid_names(),
                    })?;
                continue;
            }
            if name == "none" || name == "all" {
                return Err(EnlightenmentError::Mixed {
                    word: name.to_string(),
                    list: s.to_string(),
                });
            }
            let names = alias(name).unwrap_or(std::slice::from_ref(&name));
            for &name in names {
                let Some(i) = REGISTRY.iter().position(|e| e.name() == name) else {
                    return Err(EnlightenmentError::Unknown {
                        name: name.to_string(),
                        valid: valid_names(),
                    });
                };
                set.bits |= 1 << i;
            }
        }
        set.check_dependencies()?;
        Ok(set)
    }

    /// `Err` naming the first member whose dependency is missing.
    pub fn check_dependencies(&self) -> Result<(), EnlightenmentError> {
        for e in self.iter() {
            for &dep in e.requires() {
                if !self.contains(dep) {
                    return Err(EnlightenmentError::MissingDependency {
                        name: e.name().to_string(),
                        needs: dep.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds `name` (which must be a registry name).
    pub fn with(mut self, name: &str) -> Result<EnlightenmentSet, EnlightenmentError> {
        let i = REGISTRY
            .iter()
            .position(|e| e.name() == name)
            .ok_or_else(|| EnlightenmentError::Unknown {
                name: name.to_string(),
                valid: valid_names(),
            })?;
        self.bits |= 1 << i;
        Ok(self)
    }

    /// True when `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|e| e.name() == name)
    }

    /// True for the empty set.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Members in registry order.
    pub fn iter(&self) -> impl Iterator<Item = &'static dyn Enlightenment> + '_ {
        REGISTRY
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, e)| *e)
    }

    /// Member names in registry order (what run records store), then
    /// `hyperv-backend=kernel` when the kernel backend is chosen.
    pub fn names(&self) -> Vec<&'static str> {
        let mut n: Vec<_> = self.iter().map(|e| e.name()).collect();
        if self.backend == hyperv::Backend::Kernel && self.hyperv_features().any() {
            n.push(hyperv::Backend::KERNEL_TOKEN);
        }
        n
    }

    /// The Hyper-V backend.
    pub fn hyperv_backend(&self) -> hyperv::Backend {
        self.backend
    }

    /// The same set served by `backend`.
    pub fn with_hyperv_backend(mut self, backend: hyperv::Backend) -> EnlightenmentSet {
        self.backend = backend;
        self
    }

    /// KVM feature bits (CPUID 0x40000001 EAX) the set exposes.
    pub fn kvm_pv_bits(&self) -> u32 {
        self.iter().fold(0, |b, e| b | e.kvm_pv_bits())
    }

    /// Hyper-V features the set exposes (none: no Hyper-V leaves, KVM's stay at 0x40000000).
    pub fn hyperv_features(&self) -> hyperv::Features {
        hyperv::Features(self.iter().fold(0, |b, e| b | e.hyperv_bits()))
    }

    /// KVM_X86_DISABLE_EXITS_* flags the set enables.
    pub fn disable_exits(&self) -> u32 {
        self.iter().fold(0, |b, e| b | e.disable_exits())
    }

    /// Guest command-line words for this set (from enlightenments that are off).
    pub fn cmdline_words(&self) -> Vec<&'static str> {
        REGISTRY
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) == 0)
            .flat_map(|(_, e)| e.cmdline_when_off().iter().copied())
            .collect()
    }

    /// Probes the members on `kvm`. A set chosen as `all` drops what this host lacks and returns
    /// the dropped names with reasons; an explicit list fails on the first unsupported member.
    pub fn resolve(&self, kvm: &Kvm) -> Result<(EnlightenmentSet, Dropped), EnlightenmentError> {
        if self.backend == hyperv::Backend::Kernel && self.hyperv_features().any() {
            // The kernel backend serves every Hyper-V member or none: refused as a whole.
            let features = self.hyperv_features();
            hyperv::Backend::Kernel
                .probe(kvm, features)
                .map_err(|reason| EnlightenmentError::Unsupported {
                    name: hyperv::Backend::KERNEL_TOKEN.to_string(),
                    reason,
                })?;
        }
        let mut kept = *self;
        let mut dropped = Vec::new();
        for (i, e) in REGISTRY.iter().enumerate() {
            if self.bits & (1 << i) == 0 {
                continue;
            }
            if let Err(reason) = e.probe(kvm) {
                if !self.all {
                    return Err(EnlightenmentError::Unsupported {
                        name: e.name().to_string(),
                        reason,
                    });
                }
                kept.bits &= !(1 << i);
                dropped.push((e.name(), reason));
            }
        }
        // An `all` set that dropped a member drops what needs it too.
        loop {
            let before = kept.bits;
            for (i, e) in REGISTRY.iter().enumerate() {
                if kept.bits & (1 << i) != 0 {
                    if let Some(dep) = e.requires().iter().find(|d| !kept.contains(d)) {
                        kept.bits &= !(1 << i);
                        dropped.push((e.name(), format!("needs {dep}, which was dropped")));
                    }
                }
            }
            if kept.bits == before {
                break;
            }
        }
        Ok((kept, dropped))
    }

    /// VM-level setup, before any vCPU exists: KVM_CAP_X86_DISABLE_EXITS (KVM refuses it once
    /// vCPUs exist) and, when a Hyper-V enlightenment is on, MSR exits to userspace for the
    /// Hyper-V MSRs (KVM_CAP_X86_USER_SPACE_MSR for filtered MSRs + a filter denying only them).
    pub fn setup_vm(&self, vm: &kvm_ioctls::VmFd) -> Result<(), String> {
        use kvm_bindings::{
            KVM_CAP_X86_DISABLE_EXITS, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
            kvm_enable_cap,
        };
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        let exits = self.disable_exits();
        if exits != 0 {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_X86_DISABLE_EXITS,
                args: [u64::from(exits), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(|e| format!("enabling KVM_CAP_X86_DISABLE_EXITS ({exits:#x}): {e}"))?;
        }
        // With the kernel backend KVM serves the Hyper-V MSRs itself: no filter.
        let hyperv = self.hyperv_features().any() && self.backend == hyperv::Backend::User;
        if hyperv {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_X86_USER_SPACE_MSR,
                args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(|e| format!("enabling KVM_CAP_X86_USER_SPACE_MSR: {e}"))?;
            // A 0 bit denies the access, which (with the capability) exits to userspace: the
            // transport MSR of hv's hypercall page and the synthetic MSR ranges
            // (0x40000000-03, 0x40000020-23, 0x40000073).
            let deny = [0u8; 8]; // one u64 of 0 bits: up to 64 MSRs per range
            let range = |base: u32, msr_count: u32| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count,
                bitmap: &deny,
            };
            use hvlab_protocol::hyperv as tlfs;
            let ranges = [
                range(tlfs::MSR_HV_HYPERCALL_TRANSPORT, 1),
                range(tlfs::MSR_GUEST_OS_ID, 4),
                range(tlfs::MSR_TIME_REF_COUNT, 4),
                range(tlfs::MSR_VP_ASSIST_PAGE, 1),
                // SynIC (0x40000080-84, SINT0-15) and synthetic timers (0x400000b0-b7).
                range(tlfs::MSR_SCONTROL, 5),
                range(tlfs::MSR_SINT0, 16),
                range(tlfs::MSR_STIMER0_CONFIG, 8),
            ];
            vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
                .map_err(|e| format!("KVM_X86_SET_MSR_FILTER for hv's synthetic MSRs: {e}"))?;
        }
        Ok(())
    }

    /// vCPU-level setup after KVM_SET_CPUID2: with the kernel Hyper-V backend, what KVM needs
    /// per vCPU ([`hyperv::kernel::setup_vcpu`]: enforce-CPUID, VP_INDEX); nothing otherwise.
    pub fn setup_vcpu(&self, kvm: &Kvm, fd: &kvm_ioctls::VcpuFd, index: u32) -> Result<(), String> {
        if self.backend == hyperv::Backend::Kernel && self.hyperv_features().any() {
            hyperv::kernel::setup_vcpu(kvm, fd, index)?;
        }
        Ok(())
    }

    /// Edits one vCPU's CPUID: KVM's 0x40000001 EAX keeps only what KVM offers *and* the set
    /// exposes (`extra_kvm_bits` are kept too: `PartitionConfig::kvm_pv_features`); hv's leaves
    /// at `HV_CPUID_BASE` carry hv's signature and, at base + 1, what hv serves (see
    /// [`hv_leaf`]; no private hypercall: hv's hypercalls are Hyper-V's).
    ///
    /// With a Hyper-V enlightenment on, the Hyper-V leaves take 0x40000000-0x40000005, KVM's
    /// move to 0x40000100 (as QEMU does) and hv's private leaves to 0x40000200 (the guest
    /// finds both by signature).
    pub fn edit_cpuid(
        &self,
        cpuid: &mut CpuId,
        extra_kvm_bits: u32,
        vcpus: u32,
    ) -> Result<(), String> {
        let hyperv = self.hyperv_features();
        let hv_base = if hyperv.any() {
            hvlab_protocol::hyperv::HV_CPUID_BASE_BEHIND_HYPERV
        } else {
            hvlab_protocol::HV_CPUID_BASE
        };
        let own = hv_leaf(hyperv, self.backend);
        edit_cpuid(cpuid, self.kvm_pv_bits() | extra_kvm_bits, hv_base, own)?;
        if hyperv.any() {
            hyperv::cpuid::move_kvm_leaves(cpuid.as_mut_slice())?;
            for e in hyperv::cpuid::leaves(hyperv, vcpus) {
                cpuid
                    .push(e)
                    .map_err(|e| format!("cannot add the Hyper-V CPUID leaves: {e:?}"))?;
            }
        }
        Ok(())
    }
}

/// hv's leaf at its base + 1 (EAX, EBX): EAX = the Hyper-V enlightenments switched on
/// ([`hyperv::Features`] bits: 0 hv-vpindex, 1 hv-time, 2 hv-frequencies, 3 hv-tlbflush,
/// 4 hv-tlbflush-ext, 5 hv-ipi, 6 hv-spinlocks, 7 hv-relaxed, 8 hv-synic, 9 hv-stimer,
/// 10 hv-stimer-direct), EBX = the MSR that hv's hypercall
/// page writes when hv serves the interface in userspace (0 when no Hyper-V enlightenment is on
/// or KVM serves it). A guest (or a person reading a CPUID dump) sees who answers its calls.
pub fn hv_leaf(features: hyperv::Features, backend: hyperv::Backend) -> (u32, u32) {
    let transport = if features.any() && backend == hyperv::Backend::User {
        hvlab_protocol::hyperv::MSR_HV_HYPERCALL_TRANSPORT
    } else {
        0
    };
    (features.0, transport)
}

/// See [`EnlightenmentSet::edit_cpuid`]: hv's private leaves go to `hv_base`, `own` = base + 1
/// (EAX, EBX) from [`hv_leaf`].
fn edit_cpuid(
    cpuid: &mut CpuId,
    kvm_bits: u32,
    hv_base: u32,
    own: (u32, u32),
) -> Result<(), String> {
    use hvlab_protocol::HV_CPUID_SIGNATURE;
    use kvm_bindings::kvm_cpuid_entry2;
    let mut base_seen = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x4000_0001 => e.eax &= kvm_bits,
            f if f == hv_base || f == hv_base + 1 => base_seen = true,
            _ => {}
        }
    }
    if base_seen {
        return Err("CPUID already has entries at hv's leaves".into());
    }
    let sig = |i: usize| {
        u32::from_le_bytes([
            HV_CPUID_SIGNATURE[i],
            HV_CPUID_SIGNATURE[i + 1],
            HV_CPUID_SIGNATURE[i + 2],
            HV_CPUID_SIGNATURE[i + 3],
        ])
    };
    let entries = [
        kvm_cpuid_entry2 {
            function: hv_base,
            eax: hv_base + 1,
            ebx: sig(0),
            ecx: sig(4),
            edx: sig(8),
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: hv_base + 1,
            eax: own.0,
            ebx: own.1,
            ..Default::default()
        },
    ];
    for e in entries {
        cpuid
            .push(e)
            .map_err(|e| format!("cannot add hv's CPUID leaves: {e:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hvlab_protocol::{HV_CPUID_BASE, kvm_pv};
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn registry_names_are_unique_and_fit_the_bitset() {
        let names: Vec<_> = registry().iter().map(|e| e.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.len() < 32);
        for n in [
            "kvm-clock",
            "steal-time",
            "pv-eoi",
            "pv-unhalt",
            "pv-tlb-flush",
            "pv-ipi",
            "pv-sched-yield",
            "poll-control",
            "x2apic",
            "idle-no-exit",
            "hv-vpindex",
            "hv-tlbflush",
            "hv-ipi",
            "hv-spinlocks",
        ] {
            assert!(find(n).is_some(), "{n} missing");
        }
    }

    #[test]
    fn parse_none_all_and_lists() {
        assert!(EnlightenmentSet::parse("none").unwrap().is_empty());
        assert_eq!(
            EnlightenmentSet::parse("all").unwrap().names().len(),
            registry().len()
        );
        let s = EnlightenmentSet::parse(" steal-time , kvm-clock").unwrap();
        assert_eq!(s.names(), vec!["kvm-clock", "steal-time"]);
        assert_eq!(s.to_string(), "kvm-clock,steal-time");
        assert_eq!(EnlightenmentSet::NONE.to_string(), "none");
        assert_eq!(s, s.to_string().parse().unwrap());
    }

    #[test]
    fn parse_unknown_name_lists_valid_names() {
        let e = EnlightenmentSet::parse("kvm-clock,warp-drive").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("warp-drive"), "{msg}");
        assert!(msg.contains("tlb-flush-hypercall"), "{msg}");
        assert!(matches!(
            EnlightenmentSet::parse("kvm-clock,,x2apic"),
            Err(EnlightenmentError::Empty { .. })
        ));
        assert!(matches!(
            EnlightenmentSet::parse("none,x2apic"),
            Err(EnlightenmentError::Mixed { .. })
        ));
        assert!(matches!(
            EnlightenmentSet::parse(""),
            Err(EnlightenmentError::Empty { .. })
        ));
    }

    #[test]
    fn old_private_names_are_aliases_of_the_hyperv_ones() {
        for (old, new) in [
            ("tlb-flush-hypercall", "hv-vpindex,hv-tlbflush"),
            ("ipi-hypercall", "hv-vpindex,hv-ipi"),
            ("long-spin-notify", "hv-spinlocks"),
        ] {
            let s = EnlightenmentSet::parse(old).unwrap();
            assert_eq!(s, EnlightenmentSet::parse(new).unwrap(), "{old}");
            // Records and labels carry the hv-* names, never the alias.
            assert_eq!(s.to_string(), new, "{old}");
            assert!(find(old).is_none(), "{old} is no registry entry");
        }
        // An alias combines with the names it stands for without duplicates.
        let s = EnlightenmentSet::parse("ipi-hypercall,hv-vpindex,tlb-flush-hypercall").unwrap();
        assert_eq!(s.to_string(), "hv-vpindex,hv-tlbflush,hv-ipi");
        let all = EnlightenmentSet::parse("all").unwrap();
        assert!(all.names().iter().all(|n| alias(n).is_none()));
    }

    #[test]
    fn kvm_bits_follow_the_set() {
        let s = EnlightenmentSet::parse("kvm-clock,pv-tlb-flush,hv-vpindex,hv-tlbflush").unwrap();
        let b = s.kvm_pv_bits();
        assert_ne!(b & kvm_pv::bit(kvm_pv::FEATURE_CLOCKSOURCE2), 0);
        assert_ne!(b & kvm_pv::bit(kvm_pv::FEATURE_PV_TLB_FLUSH), 0);
        assert_eq!(b & kvm_pv::bit(kvm_pv::FEATURE_PV_SEND_IPI), 0);
        assert!(s.hyperv_features().any());
        assert_eq!(EnlightenmentSet::NONE.kvm_pv_bits(), 0);
        assert_eq!(
            EnlightenmentSet::parse("idle-no-exit")
                .unwrap()
                .disable_exits(),
            kvm_bindings::KVM_X86_DISABLE_EXITS_HLT | kvm_bindings::KVM_X86_DISABLE_EXITS_PAUSE
        );
    }

    #[test]
    fn x2apic_off_tells_the_guest_xapic() {
        assert_eq!(EnlightenmentSet::NONE.cmdline_words(), vec!["apic=xapic"]);
        assert!(
            EnlightenmentSet::parse("x2apic")
                .unwrap()
                .cmdline_words()
                .is_empty()
        );
    }

    fn leaf(c: &CpuId, f: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice().iter().find(|e| e.function == f).copied()
    }

    #[test]
    fn cpuid_edit_masks_kvm_leaf_and_adds_hv_leaves() {
        let mut c = CpuId::new(1).unwrap();
        c.as_mut_slice()[0] = kvm_cpuid_entry2 {
            function: 0x4000_0001,
            eax: 0xffff_ffff,
            ..Default::default()
        };
        let s = EnlightenmentSet::parse("steal-time").unwrap();
        s.edit_cpuid(&mut c, 0, 1).unwrap();
        assert_eq!(
            leaf(&c, 0x4000_0001).unwrap().eax,
            kvm_pv::bit(kvm_pv::FEATURE_STEAL_TIME)
        );
        let base = leaf(&c, HV_CPUID_BASE).unwrap();
        assert_eq!(&base.ebx.to_le_bytes(), b"hvla");
        assert_eq!(base.eax, HV_CPUID_BASE + 1);
        // hv's leaves stay (the guest finds hv by them); no Hyper-V member, so hv serves
        // nothing there (no private hypercall).
        let feat = leaf(&c, HV_CPUID_BASE + 1).unwrap();
        assert_eq!((feat.eax, feat.ebx), (0, 0));
        // A second edit refuses rather than duplicating leaves.
        assert!(s.edit_cpuid(&mut c, 0, 1).is_err());
    }

    #[test]
    fn hyperv_names_and_dependencies_as_qemu_checks_them() {
        for n in [
            "hv-vpindex",
            "hv-time",
            "hv-frequencies",
            "hv-tlbflush",
            "hv-tlbflush-ext",
            "hv-ipi",
            "hv-spinlocks",
            "hv-relaxed",
        ] {
            assert!(find(n).is_some(), "{n} missing");
        }
        let missing = |list: &str| match EnlightenmentSet::parse(list) {
            Err(EnlightenmentError::MissingDependency { name, needs }) => Some((name, needs)),
            _ => None,
        };
        assert_eq!(
            missing("hv-tlbflush"),
            Some(("hv-tlbflush".into(), "hv-vpindex".into()))
        );
        assert_eq!(
            missing("hv-ipi"),
            Some(("hv-ipi".into(), "hv-vpindex".into()))
        );
        assert_eq!(
            missing("hv-vpindex,hv-tlbflush-ext"),
            Some(("hv-tlbflush-ext".into(), "hv-tlbflush".into()))
        );
        let msg = EnlightenmentSet::parse("hv-ipi").unwrap_err().to_string();
        assert!(msg.contains("needs `hv-vpindex`"), "{msg}");
        let s = EnlightenmentSet::parse("hv-vpindex,hv-tlbflush,hv-tlbflush-ext,hv-ipi").unwrap();
        let f = s.hyperv_features();
        assert!(f.has(hyperv::Features::VPINDEX | hyperv::Features::TLBFLUSH_EXT));
        assert!(!f.has(hyperv::Features::TIME));
        assert!(
            !EnlightenmentSet::parse("kvm-clock")
                .unwrap()
                .hyperv_features()
                .any()
        );
        for ok in ["hv-time", "hv-spinlocks,hv-relaxed", "hv-frequencies"] {
            assert!(EnlightenmentSet::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hyperv_backend_token_parses_roundtrips_and_is_refused_here() {
        let s = EnlightenmentSet::parse("hv-vpindex,hyperv-backend=kernel").unwrap();
        assert_eq!(s.hyperv_backend(), hyperv::Backend::Kernel);
        assert_eq!(s.to_string(), "hv-vpindex,hyperv-backend=kernel");
        assert_eq!(s, s.to_string().parse().unwrap());
        let u = EnlightenmentSet::parse("hv-vpindex,hyperv-backend=user").unwrap();
        assert_eq!(u.to_string(), "hv-vpindex");
        assert_eq!(u.with_hyperv_backend(hyperv::Backend::Kernel), s);
        assert!(matches!(
            EnlightenmentSet::parse("hv-vpindex,hyperv-backend=qemu"),
            Err(EnlightenmentError::Unknown { .. })
        ));
        // Needs /dev/kvm.
        let kvm = crate::error::kvm_for_tests();
        match s.resolve(&kvm) {
            Err(EnlightenmentError::Unsupported { name, reason }) => {
                assert_eq!(name, "hyperv-backend=kernel");
                assert!(!reason.is_empty());
            }
            other => panic!("kernel backend is not wired, so never runs: {other:?}"),
        }
        assert!(u.resolve(&kvm).is_ok());
    }

    #[test]
    fn hyperv_cpuid_moves_kvm_and_hv_leaves() {
        use hvlab_protocol::hyperv as tlfs;
        let mut c = CpuId::new(2).unwrap();
        c.as_mut_slice()[0] = kvm_cpuid_entry2 {
            function: 0x4000_0000,
            eax: 0x4000_0001,
            ebx: u32::from_le_bytes(*b"KVMK"),
            ..Default::default()
        };
        c.as_mut_slice()[1] = kvm_cpuid_entry2 {
            function: 0x4000_0001,
            eax: 0xffff_ffff,
            ..Default::default()
        };
        let s = EnlightenmentSet::parse("steal-time,hv-vpindex,hv-tlbflush").unwrap();
        s.edit_cpuid(&mut c, 0, 4).unwrap();
        let hv = leaf(&c, 0x4000_0000).unwrap();
        assert_eq!(&hv.ebx.to_le_bytes(), b"Micr");
        assert_eq!(leaf(&c, 0x4000_0001).unwrap().eax, tlfs::INTERFACE_HV1);
        assert_eq!(leaf(&c, 0x4000_0005).unwrap().eax, 4);
        let kvm = leaf(&c, 0x4000_0100).unwrap();
        assert_eq!(&kvm.ebx.to_le_bytes(), b"KVMK");
        assert_eq!(kvm.eax, 0x4000_0101);
        assert_eq!(
            leaf(&c, 0x4000_0101).unwrap().eax,
            kvm_pv::bit(kvm_pv::FEATURE_STEAL_TIME)
        );
        let own = leaf(&c, tlfs::HV_CPUID_BASE_BEHIND_HYPERV).unwrap();
        assert_eq!(&own.ebx.to_le_bytes(), b"hvla");
        // hv's leaf says which Hyper-V enlightenments it serves and through which MSR.
        let what = leaf(&c, tlfs::HV_CPUID_BASE_BEHIND_HYPERV + 1).unwrap();
        assert_eq!(
            (what.eax, what.ebx),
            (
                hyperv::Features::VPINDEX | hyperv::Features::TLBFLUSH,
                tlfs::MSR_HV_HYPERCALL_TRANSPORT
            )
        );
        // With the kernel backend KVM answers: no hv transport.
        assert_eq!(
            hv_leaf(s.hyperv_features(), hyperv::Backend::Kernel),
            (hyperv::Features::VPINDEX | hyperv::Features::TLBFLUSH, 0)
        );
    }

    #[test]
    fn explicit_unsupported_member_fails_but_all_drops_it() {
        // Probing needs /dev/kvm; without it there is nothing to check here.
        let kvm = crate::error::kvm_for_tests();
        let all = EnlightenmentSet::all();
        let (kept, dropped) = all.resolve(&kvm).unwrap();
        for (name, reason) in &dropped {
            assert!(!kept.contains(name));
            assert!(!reason.is_empty());
            let one = EnlightenmentSet::parse(name).unwrap();
            assert!(matches!(
                one.resolve(&kvm),
                Err(EnlightenmentError::Unsupported { .. })
            ));
        }
    }
}
