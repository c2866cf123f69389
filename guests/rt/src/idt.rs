//! Interrupt descriptor table: the 32 exception vectors report and end the run; interrupt
//! vectors are installed on demand (installing all 256 would cost ~2.5 ms of emulated
//! instructions per boot on nested hosts). An interrupt on a vector nobody registered arrives
//! as #NP, which the exception report names.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::entry::stub_address;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);

// SAFETY: entries are written only through `set_gate`, by one CPU at a time during setup (the
// BSP before it starts APs, or a workload before it enables the vector); the CPU reads them.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

/// A registered interrupt handler, called with the vector; the runtime sends the EOI.
pub type Handler = fn(u8);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Vector of the APIC spurious interrupt (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

fn set_gate(vector: u8, handler: u64) {
    let lo = (handler & 0xffff)
        | (0x08 << 16)                       // kernel code selector
        | (0x8e << 40)                       // present, DPL 0, 64-bit interrupt gate
        | ((handler >> 16) & 0xffff) << 48;
    let hi = handler >> 32;
    let i = usize::from(vector) * 2;
    // SAFETY: `i + 1 < 512` for any u8 vector; see the Sync impl for why writes don't race.
    unsafe {
        let idt = &mut *IDT.0.get();
        core::ptr::write_volatile(&mut idt[i], lo);
        core::ptr::write_volatile(&mut idt[i + 1], hi);
    }
}

/// Installs the exception vectors and the spurious vector, and loads the IDT on this CPU.
pub fn init() {
    for v in 0..32u8 {
        set_gate(v, stub_address(v));
    }
    set_gate(SPURIOUS_VECTOR, stub_address(SPURIOUS_VECTOR));
    load();
}

/// Loads the (shared) IDT on the calling CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer {
        limit: 256 * 16 - 1,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the table is static and its gates point at the runtime's stubs.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags))
    }
}

/// Points `vector` straight at `stub` (a DPL 0 interrupt gate), bypassing the common handler:
/// for the `user` module's kick, which must see the interrupted frame.
pub fn set_raw_gate(vector: u8, stub: u64) {
    set_gate(vector, stub);
}

/// Routes interrupts on `vector` (32..=254) to `handler`.
pub fn register(vector: u8, handler: Handler) {
    assert!(
        (32..SPURIOUS_VECTOR).contains(&vector),
        "vector {vector} is not an interrupt vector"
    );
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
    set_gate(vector, stub_address(vector));
}

#[unsafe(no_mangle)]
extern "C" fn rt_interrupt(vector: u64) {
    let vector = vector as u8;
    if vector == SPURIOUS_VECTOR {
        return;
    }
    let h = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `register` stores here, and it stores a `Handler`.
        let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(vector);
    }
    // PV EOI when KVM allows it for this interrupt, else the APIC's EOI register.
    crate::pv::eoi::eoi();
}

/// Register state saved by the exception stub.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const NAMES: [&str; 32] = [
    "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "CSO", "TS", "NP", "SS", "GP", "PF",
    "R15", "MF", "AC", "MC", "XM", "VE", "CP", "R22", "R23", "R24", "R25", "R26", "R27", "HV",
    "VC", "SX", "R31",
];

#[unsafe(no_mangle)]
extern "C" fn rt_exception(frame: &ExceptionFrame) -> ! {
    // A #GP on `fixup::wrmsr_safe`/`rdmsr_safe` returns to its caller as an error.
    crate::fixup::resume_if_fixup(frame);
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    crate::println!(
        "HVLAB rec=fault vector={} name={} error={:#x} rip={:#x} cs={:#x} rsp={:#x} cr2={:#x}",
        frame.vector,
        name,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rsp,
        crate::cpu::cr2()
    );
    crate::hv::exit(hvlab_protocol::status::EXCEPTION)
}
