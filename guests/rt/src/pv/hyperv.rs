//! The Hyper-V (TLFS) interface, guest side, as Linux and Windows use it: detection by CPUID
//! ("Microsoft Hv", "Hv#1"), GUEST_OS_ID, the hypercall page the hypervisor fills, calls
//! through that page (RCX input value, RDX input GPA or fast parameter, R8 output GPA or fast
//! parameter, status in RAX), and time from the reference TSC page.
//!
//! At boot ([`init`], from `pv::init_bsp`) the runtime does what Linux's `hyperv_init` does
//! when the leaves are there: GUEST_OS_ID, then the hypercall page, then (with the reference
//! TSC privilege) the TSC page, so workloads only call. [`reference_time`] is the one clock
//! API: the TSC page while it is valid, TIME_REF_COUNT when it is not.
//!
//! The runtime identity-maps RAM, so a static's address is its GPA.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use hvlab_protocol::hyperv as tlfs;

use crate::cpu::{cpuid, cpuid_signature, rdmsr, rdtsc, wrmsr};

/// GUEST_OS_ID hvlab's runtime reports: the TLFS "open source" layout (bit 63), OS type 0x7f
/// ("other"), version 1.
pub const GUEST_OS_ID: u64 = (1 << 63) | (0x7f << 56) | (1 << 16);

/// A 4 KiB page the hypervisor writes into.
#[repr(C, align(4096))]
pub struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: the guest never writes these pages (only the hypervisor does, via the MSRs); it only
// executes the hypercall page and reads the TSC page with volatile loads.
unsafe impl Sync for Page {}

/// The hypercall page (executed).
pub static HYPERCALL_PAGE: Page = Page(UnsafeCell::new([0; 4096]));
/// The reference TSC page (read).
pub static TSC_PAGE: Page = Page(UnsafeCell::new([0; 4096]));

impl Page {
    /// GPA (= virtual address) of the page.
    pub fn gpa(&self) -> u64 {
        self.0.get() as u64
    }
}

/// What CPUID says about Hyper-V.
#[derive(Debug, Clone, Copy, Default)]
pub struct Info {
    pub max_leaf: u32,
    /// Leaf 0x40000003 EAX (privileges) and EDX (features).
    pub privileges: u32,
    pub features_edx: u32,
    /// Leaf 0x40000004 EAX (recommendations) and EBX (spinlock retries).
    pub recommendations: u32,
    pub spin_retries: u32,
    /// Leaf 0x40000005 EAX.
    pub max_vps: u32,
}

/// Detects Hyper-V as Linux's `ms_hyperv_platform` does: hypervisor bit, "Microsoft Hv" at
/// 0x40000000 with max leaf >= 0x40000005, "Hv#1" at 0x40000001.
pub fn detect() -> Option<Info> {
    if cpuid(1, 0).ecx & (1 << 31) == 0 {
        return None;
    }
    let (sig, max_leaf) = cpuid_signature(tlfs::CPUID_VENDOR);
    if sig != tlfs::VENDOR
        || max_leaf < tlfs::CPUID_LIMITS
        || cpuid(tlfs::CPUID_INTERFACE, 0).eax != tlfs::INTERFACE_HV1
    {
        return None;
    }
    let f = cpuid(tlfs::CPUID_FEATURES, 0);
    let r = cpuid(tlfs::CPUID_RECOMMENDATIONS, 0);
    Some(Info {
        max_leaf,
        privileges: f.eax,
        features_edx: f.edx,
        recommendations: r.eax,
        spin_retries: r.ebx,
        max_vps: cpuid(tlfs::CPUID_LIMITS, 0).eax,
    })
}

/// Leaf 0x40000003 EAX seen by [`init`] (0: no Hyper-V, or `init` not run).
static PRIVILEGES: AtomicU32 = AtomicU32::new(0);

/// Boot-time setup (BSP, once): with the Hyper-V leaves present, sets GUEST_OS_ID and enables
/// the hypercall page when the hypercall MSRs are offered, and enables the TSC page when the
/// reference TSC is. Returns what [`detect`] found.
pub fn init() -> Option<Info> {
    let info = detect()?;
    PRIVILEGES.store(info.privileges, Ordering::Relaxed);
    if info.privileges & tlfs::PRIV_HYPERCALL_MSRS != 0 {
        enable_hypercalls();
    }
    if info.privileges & tlfs::PRIV_REFERENCE_TSC != 0 {
        enable_tsc_page();
    }
    Some(info)
}

/// Sets GUEST_OS_ID and enables the hypercall page (as Linux's `hyperv_init`).
pub fn enable_hypercalls() {
    wrmsr(tlfs::MSR_GUEST_OS_ID, GUEST_OS_ID);
    wrmsr(tlfs::MSR_HYPERCALL, HYPERCALL_PAGE.gpa() | tlfs::MSR_ENABLE);
}

/// True when the hypercall page is enabled.
pub fn hypercalls_enabled() -> bool {
    rdmsr(tlfs::MSR_HYPERCALL) & tlfs::MSR_ENABLE != 0
}

/// A memory hypercall: `input` value, input and output parameter GPAs. Returns RAX (status in
/// bits 15:0, reps completed in 43:32). Only after [`enable_hypercalls`].
pub fn hypercall(input: u64, in_gpa: u64, out_gpa: u64) -> u64 {
    call(input, in_gpa, out_gpa)
}

/// A fast hypercall (`input` must have the fast bit): parameters in RDX and R8.
pub fn hypercall_fast(input: u64, p1: u64, p2: u64) -> u64 {
    call(input | tlfs::INPUT_FAST, p1, p2)
}

fn call(input: u64, rdx: u64, r8: u64) -> u64 {
    let rax: u64;
    // SAFETY: the hypercall page holds the hypervisor's code (enabled by `enable_hypercalls`);
    // like Linux's `hv_do_hypercall` it is called with the TLFS registers and may clobber RCX,
    // RDX and R8-R11 (the page hv writes uses R9, R10 and ECX). The stack holds the return
    // address only; the target has no red zone.
    unsafe {
        core::arch::asm!(
            "call {page}",
            page = in(reg) HYPERCALL_PAGE.gpa(),
            inout("rcx") input => _,
            inout("rdx") rdx => _,
            inout("r8") r8 => _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            lateout("rax") rax,
        );
    }
    rax
}

/// Enables the reference TSC page.
pub fn enable_tsc_page() {
    wrmsr(tlfs::MSR_REFERENCE_TSC, TSC_PAGE.gpa() | tlfs::MSR_ENABLE);
}

/// Reference time (100 ns units) from the TSC page with no exit, or `None` when the page says
/// it is invalid (sequence 0: use [`time_ref_count`]). The sequence loop is the TLFS's.
pub fn tsc_page_time() -> Option<u64> {
    let base = TSC_PAGE.0.get() as *const u8;
    loop {
        // SAFETY: the page is a static 4 KiB page; the fields are naturally aligned.
        let (seq, scale, offset, tsc, again) = unsafe {
            let seq = core::ptr::read_volatile(base as *const u32);
            let scale = core::ptr::read_volatile(base.add(8) as *const u64);
            let offset = core::ptr::read_volatile(base.add(16) as *const i64);
            let tsc = rdtsc();
            (
                seq,
                scale,
                offset,
                tsc,
                core::ptr::read_volatile(base as *const u32),
            )
        };
        if seq == 0 {
            return None;
        }
        if seq == again {
            return Some(tlfs::tsc_page_time(tsc, scale, offset));
        }
    }
}

/// Reference time (100 ns units) as Linux's Hyper-V clocksource reads it: the TSC page (no
/// exit) while its sequence is valid, else TIME_REF_COUNT (one exit). `None` when hv-time is
/// not exposed (no TIME_REF_COUNT privilege seen by [`init`]).
pub fn reference_time() -> Option<u64> {
    let privs = PRIVILEGES.load(Ordering::Relaxed);
    if privs & tlfs::PRIV_TIME_REF_COUNT == 0 {
        return None;
    }
    let page = if privs & tlfs::PRIV_REFERENCE_TSC != 0 {
        tsc_page_time()
    } else {
        None
    };
    Some(page.unwrap_or_else(time_ref_count))
}

/// Reference time from TIME_REF_COUNT (one MSR exit).
pub fn time_ref_count() -> u64 {
    rdmsr(tlfs::MSR_TIME_REF_COUNT)
}
