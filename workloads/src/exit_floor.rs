//! exit-floor: the cost of each kind of exit, one phase per micro-test, in the spirit of
//! kvm-unit-tests' `vmexit`. Every loop body is one instruction (or one instruction pair) so
//! that `nop` is the loop's own baseline.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "exit-floor",
    summary: "cost of each exit kind: nop, cpuid, pio-out/in, mmio-write/read, pio-kernel, rdmsr, wrmsr, hlt",
    params: &[
        Param {
            key: "iters",
            default: "2000",
            help: "operations per micro-test",
        },
        Param {
            key: "tests",
            default: "all",
            help: "comma list of micro-tests to run",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &["kernel-port"],
};

/// Micro-tests in report order.
pub const TESTS: &[&str] = &[
    "nop",
    "cpuid",
    "pio-out",
    "pio-in",
    "mmio-write",
    "mmio-read",
    "pio-kernel",
    "rdmsr",
    "wrmsr",
    "hlt",
];

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use hvlab_guest_rt::cpu::{self, inl, mmio_read32, mmio_write32, outl, rdmsr, wrmsr};
    use hvlab_guest_rt::{Ctx, Fail, apic, idt, phase};
    use hvlab_protocol::{KERNEL_PORT, TEST_MMIO_BASE, TEST_PORT, TEST_PORT_READ_VALUE};

    use super::TESTS;

    /// IA32_SYSENTER_CS: an MSR KVM keeps in the kernel and nothing here uses.
    const TEST_MSR: u32 = 0x174;
    const HLT_VECTOR: u8 = 0xf2;

    fn wanted(filter: &str, name: &str) -> bool {
        filter == "all" || filter.split(',').any(|t| t == name)
    }

    fn on_hlt_wake(_: u8) {}

    fn measure(name: &'static str, iters: u64, mut op: impl FnMut()) {
        let p = phase::begin(name);
        for _ in 0..iters {
            op();
        }
        p.end(iters).report(&[], None);
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 2000)?;
        let filter = ctx.args.str_or("tests", "all");
        for t in filter.split(',') {
            if t != "all" && !TESTS.contains(&t) {
                return Err(Fail::BadArg("tests"));
            }
        }
        if wanted(filter, "nop") {
            // SAFETY: a nop.
            measure("nop", iters, || unsafe {
                core::arch::asm!("nop", options(nomem, nostack))
            });
        }
        if wanted(filter, "cpuid") {
            measure("cpuid", iters, || {
                core::hint::black_box(cpu::cpuid(0, 0));
            });
        }
        if wanted(filter, "pio-out") {
            measure("pio-out", iters, || outl(TEST_PORT, 0));
        }
        if wanted(filter, "pio-in") {
            let mut answered = 0u64;
            let p = phase::begin("pio-in");
            for _ in 0..iters {
                answered += u64::from(inl(TEST_PORT) == TEST_PORT_READ_VALUE);
            }
            p.end(iters).report(&[("answered", answered)], None);
        }
        if wanted(filter, "mmio-write") {
            measure("mmio-write", iters, || mmio_write32(TEST_MMIO_BASE, 0));
        }
        if wanted(filter, "mmio-read") {
            let mut answered = 0u64;
            let p = phase::begin("mmio-read");
            for _ in 0..iters {
                answered += u64::from(mmio_read32(TEST_MMIO_BASE) == TEST_PORT_READ_VALUE);
            }
            p.end(iters).report(&[("answered", answered)], None);
        }
        if wanted(filter, "pio-kernel") {
            measure("pio-kernel", iters, || outl(KERNEL_PORT, 0));
        }
        if wanted(filter, "rdmsr") {
            measure("rdmsr", iters, || {
                core::hint::black_box(rdmsr(TEST_MSR));
            });
        }
        if wanted(filter, "wrmsr") {
            measure("wrmsr", iters, || wrmsr(TEST_MSR, 0));
        }
        if wanted(filter, "hlt") {
            idt::register(HLT_VECTOR, on_hlt_wake);
            // The self-IPI is raised with interrupts off, so it is pending when `sti; hlt`
            // runs: each iteration is one halt ended by one interrupt.
            measure("hlt", iters, || {
                cpu::cli();
                apic::self_ipi(HLT_VECTOR);
                cpu::sti_hlt();
            });
            cpu::cli();
        }
        Ok(())
    }
}
