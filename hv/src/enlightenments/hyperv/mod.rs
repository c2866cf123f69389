//! The Hyper-V partition interface (a TLFS subset), served by hv in userspace so that it runs
//! on any KVM host: CPUID leaves from hv ([`cpuid`]), synthetic MSRs through the MSR filter and
//! KVM_CAP_X86_USER_SPACE_MSR ([`msr`]), a hypercall page hv fills ([`page`]), hypercall
//! decoding and status codes ([`hypercall`], [`calls`]) and the reference TSC page
//! ([`tsc_page`]). `enlightenments::host` executes what a call asks for (flushes, MSIs, yields).
//!
//! Each QEMU `hv-*` flag is a registry entry of its own (`hv_vpindex.rs` ... `hv_relaxed.rs`)
//! that contributes a [`Features`] bit; dependencies are checked as QEMU checks them.

pub(crate) mod calls;
pub mod cpuid;
pub(crate) mod hypercall;
pub mod kernel;
pub(crate) mod messages;
pub mod msr;
pub(crate) mod page;
pub(crate) mod stimer;
pub(crate) mod synic;
pub(crate) mod tsc_page;

use std::sync::{Mutex, MutexGuard};

use kvm_ioctls::Kvm;

pub use msr::Clock;
pub(crate) use tsc_page::{host_tsc, read_origin};

/// Hyper-V enlightenments switched on, one bit per `hv-*` registry entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(pub u32);

impl Features {
    pub const VPINDEX: u32 = 1 << 0;
    pub const TIME: u32 = 1 << 1;
    pub const FREQUENCIES: u32 = 1 << 2;
    pub const TLBFLUSH: u32 = 1 << 3;
    pub const TLBFLUSH_EXT: u32 = 1 << 4;
    pub const IPI: u32 = 1 << 5;
    pub const SPINLOCKS: u32 = 1 << 6;
    pub const RELAXED: u32 = 1 << 7;
    pub const SYNIC: u32 = 1 << 8;
    pub const STIMER: u32 = 1 << 9;
    pub const STIMER_DIRECT: u32 = 1 << 10;
    /// Every enlightenment of the TLFS base interface (no SynIC or timers): what the in-kernel
    /// backend also serves.
    pub const BASE: u32 = Self::VPINDEX
        | Self::TIME
        | Self::FREQUENCIES
        | Self::TLBFLUSH
        | Self::TLBFLUSH_EXT
        | Self::IPI
        | Self::SPINLOCKS
        | Self::RELAXED;

    /// True when every bit of `bits` is on.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// True when any Hyper-V enlightenment is on (then the leaves and MSRs are shown).
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which backend serves the interface: `hyperv-backend=user|kernel` in an enlightenment list,
/// or `hv run --hyperv-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// hv in userspace (MSR filter + hv's hypercall page): works on any KVM host.
    #[default]
    User,
    /// KVM's in-kernel Hyper-V emulation (KVM_CAP_HYPERV*).
    Kernel,
}

impl Backend {
    /// The list token that selects the kernel backend (the user backend is the default).
    pub const KERNEL_TOKEN: &'static str = "hyperv-backend=kernel";

    /// Parses `user` or `kernel`.
    pub fn parse(s: &str) -> Result<Backend, String> {
        match s {
            "user" => Ok(Backend::User),
            "kernel" => Ok(Backend::Kernel),
            other => Err(format!(
                "unknown Hyper-V backend `{other}`; valid: user, kernel"
            )),
        }
    }

    /// `Ok` when this host can run the backend for `features`, else the reason (a variant is
    /// skipped with it). The kernel backend checks the capabilities each flag needs and the
    /// Hyper-V CPUID bits KVM reports ([`kernel::probe`]).
    pub fn probe(self, kvm: &Kvm, features: Features) -> Result<(), String> {
        match self {
            Backend::User => super::probe::hv_interface(kvm),
            Backend::Kernel => kernel::probe(kvm, features, 1),
        }
    }
}

/// The KVM capabilities of in-kernel Hyper-V emulation (what the kernel backend and QEMU's
/// `hv-*` flags need) that this host's KVM lacks; empty when it has them all.
pub fn kernel_caps_missing(kvm: &Kvm) -> Vec<&'static str> {
    use kvm_bindings as kb;
    let needs = [
        (kb::KVM_CAP_HYPERV, "KVM_CAP_HYPERV"),
        (kb::KVM_CAP_HYPERV_VP_INDEX, "KVM_CAP_HYPERV_VP_INDEX"),
        (kb::KVM_CAP_HYPERV_TIME, "KVM_CAP_HYPERV_TIME"),
        (kb::KVM_CAP_HYPERV_TLBFLUSH, "KVM_CAP_HYPERV_TLBFLUSH"),
        (kb::KVM_CAP_HYPERV_SEND_IPI, "KVM_CAP_HYPERV_SEND_IPI"),
    ];
    needs
        .iter()
        .filter(|(c, _)| kvm.check_extension_raw(libc::c_ulong::from(*c)) <= 0)
        .map(|(_, n)| *n)
        .collect()
}

/// One `hv-*` registry entry: its QEMU name, what it does, its [`Features`] bit and what it
/// needs.
macro_rules! hyperv_enlightenment {
    ($ty:ident, $name:literal, $bit:expr, [$($dep:literal),*], $desc:literal, $host:literal) => {
        #[doc = concat!("`", $name, "`: ", $desc)]
        #[derive(Debug)]
        pub struct $ty;

        impl $crate::enlightenments::Enlightenment for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn description(&self) -> &'static str {
                $desc
            }
            fn mechanisms(&self) -> &'static [$crate::enlightenments::Mechanism] {
                &[$crate::enlightenments::Mechanism::HypervTlfs]
            }
            fn host_side(&self) -> &'static str {
                $host
            }
            fn probe(&self, kvm: &kvm_ioctls::Kvm) -> Result<(), String> {
                $crate::enlightenments::hyperv::Backend::User
                    .probe(kvm, $crate::enlightenments::hyperv::Features($bit))
            }
            fn hyperv_bits(&self) -> u32 {
                $bit
            }
            fn requires(&self) -> &'static [&'static str] {
                &[$($dep),*]
            }
        }
    };
}
pub(crate) use hyperv_enlightenment;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_and_kernel_probe_reason() {
        assert_eq!(Backend::parse("user"), Ok(Backend::User));
        assert_eq!(Backend::parse("kernel"), Ok(Backend::Kernel));
        assert!(Backend::parse("qemu").unwrap_err().contains("user, kernel"));
        // Needs /dev/kvm; without it there is nothing to probe.
        let kvm = crate::error::kvm_for_tests();
        let f = Features(Features::VPINDEX);
        match Backend::Kernel.probe(&kvm, f) {
            Ok(()) => assert!(kernel_caps_missing(&kvm).is_empty()),
            Err(why) => assert!(why.contains("KVM"), "{why}"),
        }
    }
}
