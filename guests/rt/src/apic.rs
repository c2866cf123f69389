//! Local APIC in x2APIC (MSR) or xAPIC (MMIO) mode. The mode is chosen once at boot: x2APIC
//! when CPUID offers it and the command line does not say `apic=xapic`.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{cpuid, mmio_read32, mmio_write32, rdmsr, wrmsr};

const IA32_APIC_BASE: u32 = 0x1b;
const XAPIC_BASE: u64 = 0xfee0_0000;
const X2APIC_MSR_BASE: u32 = 0x800;

const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LO: u32 = 0x300;
const REG_ICR_HI: u32 = 0x310;
const REG_SELF_IPI: u32 = 0x3f0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_DIV: u32 = 0x3e0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_TIMER_TSC_DEADLINE: u32 = 2 << 17;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Divide configuration "divide by 1".
const TIMER_DIV_1: u32 = 0xb;

const ICR_INIT: u32 = 0x500;
const ICR_STARTUP: u32 = 0x600;
const ICR_LEVEL_ASSERT: u32 = 0x4000;
const ICR_PENDING: u32 = 0x1000;
const ICR_ALL_BUT_SELF: u32 = 0xc_0000;

static X2APIC: AtomicBool = AtomicBool::new(false);

/// Which interface the APIC is driven through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    X2apic,
    Xapic,
}

impl Mode {
    /// Name as printed in info lines.
    pub fn name(self) -> &'static str {
        match self {
            Mode::X2apic => "x2apic",
            Mode::Xapic => "xapic",
        }
    }
}

/// True when CPUID offers x2APIC.
pub fn x2apic_available() -> bool {
    cpuid(1, 0).ecx & (1 << 21) != 0
}

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        rdmsr(X2APIC_MSR_BASE + (reg >> 4)) as u32
    } else {
        mmio_read32(XAPIC_BASE + u64::from(reg))
    }
}

fn write(reg: u32, v: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(X2APIC_MSR_BASE + (reg >> 4), u64::from(v));
    } else {
        mmio_write32(XAPIC_BASE + u64::from(reg), v);
    }
}

/// Enables this CPU's APIC in the chosen mode (BSP chooses; APs follow).
pub fn init_bsp(prefer_x2apic: bool) -> Mode {
    let x2 = prefer_x2apic && x2apic_available();
    X2APIC.store(x2, Ordering::Relaxed);
    init_this_cpu()
}

/// Enables the calling CPU's APIC in the mode the BSP chose.
pub fn init_this_cpu() -> Mode {
    let base = rdmsr(IA32_APIC_BASE);
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(IA32_APIC_BASE, base | (1 << 11) | (1 << 10));
    } else if base & (1 << 11) == 0 {
        wrmsr(IA32_APIC_BASE, base | (1 << 11));
    }
    write(REG_TPR, 0);
    write(REG_SVR, 0x100 | u32::from(crate::idt::SPURIOUS_VECTOR));
    mode()
}

/// The mode in use.
pub fn mode() -> Mode {
    if X2APIC.load(Ordering::Relaxed) {
        Mode::X2apic
    } else {
        Mode::Xapic
    }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send_icr(dest: u32, low: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(
            X2APIC_MSR_BASE + (REG_ICR_LO >> 4),
            (u64::from(dest) << 32) | u64::from(low),
        );
    } else {
        write(REG_ICR_HI, dest << 24);
        write(REG_ICR_LO, low);
        // xAPIC: wait for delivery so the next ICR write does not clobber this one.
        let mut spins = 0;
        while read(REG_ICR_LO) & ICR_PENDING != 0 && spins < 1000 {
            spins += 1;
        }
    }
}

/// Sends a fixed interrupt `vector` to the CPU with APIC ID `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send_icr(dest, u32::from(vector) | ICR_LEVEL_ASSERT);
}

/// Sends a fixed interrupt `vector` to every other CPU (one ICR write).
pub fn send_ipi_all_but_self(vector: u8) {
    send_icr(0, u32::from(vector) | ICR_LEVEL_ASSERT | ICR_ALL_BUT_SELF);
}

/// Sends `vector` to the calling CPU.
pub fn self_ipi(vector: u8) {
    if X2APIC.load(Ordering::Relaxed) {
        wrmsr(X2APIC_MSR_BASE + (REG_SELF_IPI >> 4), u64::from(vector));
    } else {
        send_icr(0, u32::from(vector) | ICR_LEVEL_ASSERT | 0x4_0000);
    }
}

/// Starts this CPU's APIC timer in periodic mode: `vector` every `count` bus clocks (divide by
/// 1; KVM's APIC bus runs at 1 GHz unless the VMM changed it, and KVM clamps short periods).
pub fn timer_periodic(vector: u8, count: u32) {
    write(REG_TIMER_DIV, TIMER_DIV_1);
    write(REG_LVT_TIMER, u32::from(vector) | LVT_TIMER_PERIODIC);
    write(REG_TIMER_INIT, count);
}

/// True when CPUID offers the APIC timer's TSC-deadline mode.
pub fn tsc_deadline_available() -> bool {
    cpuid(1, 0).ecx & (1 << 24) != 0
}

/// Puts this CPU's APIC timer in TSC-deadline mode on `vector`, disarmed; arm it with
/// [`timer_set_deadline`]. Only when [`tsc_deadline_available`].
pub fn timer_deadline_mode(vector: u8) {
    write(REG_LVT_TIMER, u32::from(vector) | LVT_TIMER_TSC_DEADLINE);
    // The SDM asks for a fence between the LVT write (MMIO in xAPIC mode) and the first
    // IA32_TSC_DEADLINE write.
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Arms the TSC-deadline timer: one interrupt once the TSC reaches `tsc` (0 disarms).
pub fn timer_set_deadline(tsc: u64) {
    wrmsr(IA32_TSC_DEADLINE, tsc);
}

/// Masks this CPU's local interrupt pins: LINT0 (the 8259 PIC's ExtINT path, which KVM leaves
/// open on the BSP at reset) and LINT1 (NMI), so whatever a guest programs into the PIC
/// cannot interrupt it (chaos writes the PIC's ports at random).
pub fn mask_lint() {
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
}

/// Stops and masks this CPU's APIC timer.
pub fn timer_stop() {
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INIT, 0);
}

/// INIT then two STARTUPs to every other CPU, starting them at `page * 4096` in real mode.
pub fn start_all_aps(page: u8) {
    send_icr(0, ICR_INIT | ICR_LEVEL_ASSERT | ICR_ALL_BUT_SELF);
    for _ in 0..2 {
        send_icr(0, ICR_STARTUP | ICR_ALL_BUT_SELF | u32::from(page));
    }
}
