//! hvlab's no_std guest kernel runtime.
//!
//! Boot: PVH 32-bit entry (`entry`) → long mode → [`rt_bsp_main`]: console, IDT, APIC, command
//! line, APs, then the workload the command line names (`hvlab_workload_main`, provided by the
//! image). The workload's result decides the exit status written to the exit port.
//!
//! Build note: every instruction here may run in KVM's instruction emulator (nested hosts), so
//! the runtime avoids loops over large tables at boot and never uses SSE, popcnt, cmpxchg16b,
//! xsave or int3.
#![no_std]

pub mod apic;
pub mod args;
pub mod console;
pub mod cpu;
pub mod drivers;
pub mod entry;
pub mod fixup;
pub mod hv;
pub mod idt;
pub mod multiboot;
pub mod net;
pub mod phase;
pub mod pv;
pub mod smp;
pub mod user;

use core::fmt;

pub use args::Args;
use hvlab_protocol::status;

/// Why a workload failed; each maps to an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// A result check failed.
    Check(&'static str),
    /// Argument `0` is malformed.
    BadArg(&'static str),
    /// The command line names no known workload.
    UnknownWorkload,
    /// The VMM or host lacks something the workload needs.
    Unsupported(&'static str),
}

impl Fail {
    /// Exit status for this failure.
    pub fn status(self) -> u32 {
        match self {
            Fail::Check(_) => status::WORKLOAD_FAILED,
            Fail::BadArg(_) | Fail::UnknownWorkload => status::BAD_ARGS,
            Fail::Unsupported(_) => status::UNSUPPORTED,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Check(what) => write!(f, "check failed: {what}"),
            Fail::BadArg(key) => write!(f, "bad argument: {key}"),
            Fail::UnknownWorkload => write!(f, "unknown workload"),
            Fail::Unsupported(what) => write!(f, "unsupported here: {what}"),
        }
    }
}

/// What a workload gets.
#[derive(Debug)]
pub struct Ctx {
    pub args: Args,
    /// CPUs online (BSP included).
    pub cpus: u32,
    pub apic: apic::Mode,
    pub hypervisor: hv::Hypervisor,
}

/// Signature of a workload entry point.
pub type WorkloadFn = fn(&mut Ctx) -> Result<(), Fail>;

unsafe extern "Rust" {
    /// Provided by the image: runs the workload named on the command line.
    fn hvlab_workload_main(ctx: &mut Ctx) -> Result<(), Fail>;
}

static mut CMDLINE: [u8; args::MAX_CMDLINE] = [0; args::MAX_CMDLINE];

/// Copies the command line out of the PVH start info (bounded, NUL-terminated, UTF-8 checked).
fn read_cmdline(start_info: u32) -> Result<&'static str, Fail> {
    const PVH_MAGIC: u32 = 0x336e_c578;
    if multiboot::entered() {
        return copy_cmdline(multiboot::cmdline_addr(start_info)?).map(multiboot::kernel_args);
    }
    let base = u64::from(start_info);
    if base == 0 || base >= hvlab_protocol::MAX_GUEST_RAM {
        return Err(Fail::BadArg("start_info"));
    }
    // SAFETY: `base` is below the MMIO window, inside the identity map; the VMM wrote the start
    // info there. Reads are volatile because the compiler knows nothing about who wrote it.
    let (magic, cmdline) = unsafe {
        (
            core::ptr::read_volatile(base as *const u32),
            core::ptr::read_volatile((base + 24) as *const u64),
        )
    };
    if magic != PVH_MAGIC {
        return Err(Fail::BadArg("start_info magic"));
    }
    copy_cmdline(cmdline)
}

/// Copies the NUL-terminated command line at `cmdline` (0 = none) into [`CMDLINE`].
fn copy_cmdline(cmdline: u64) -> Result<&'static str, Fail> {
    if cmdline == 0 {
        return Ok("");
    }
    if cmdline >= hvlab_protocol::MAX_GUEST_RAM - args::MAX_CMDLINE as u64 {
        return Err(Fail::BadArg("cmdline address"));
    }
    // SAFETY: CMDLINE is written once, here, on the BSP before anything else reads it.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(CMDLINE) };
    let mut len = 0;
    while len < buf.len() - 1 {
        // SAFETY: bounded read inside RAM (checked above).
        let b = unsafe { core::ptr::read_volatile((cmdline + len as u64) as *const u8) };
        if b == 0 {
            break;
        }
        buf[len] = b;
        len += 1;
    }
    core::str::from_utf8(&buf[..len]).map_err(|_| Fail::BadArg("cmdline is not UTF-8"))
}

#[unsafe(no_mangle)]
extern "C" fn rt_bsp_main(start_info: u32) -> ! {
    console::init();
    idt::init();
    let line = match read_cmdline(start_info) {
        Ok(l) => l,
        Err(e) => {
            println!("hvlab guest: {e}");
            hv::exit(e.status());
        }
    };
    let args = Args::new(line);
    let prefer_x2 = args.str_or("apic", "x2apic") != "xapic";
    let apic = apic::init_bsp(prefer_x2);
    let hypervisor = hv::Hypervisor::detect();
    // Paravirtual features: detect what is exposed, register this CPU's areas (APs do the
    // same in smp::rt_ap_main).
    pv::init_bsp();
    pv::init_cpu(0);
    let wanted = match args.u64_or("cpus", 1) {
        Ok(n) if n >= 1 => n as u32,
        _ => {
            println!("hvlab guest: bad argument: cpus");
            hv::exit(status::BAD_ARGS);
        }
    };
    if let Err(e) = smp::start_aps(wanted) {
        println!("hvlab guest: starting CPUs: {e}");
        hv::exit(e.status());
    }
    println!(
        "HVLAB rec=info workload={} cpus={} apic={} hypervisor={} kvm_features={:#x} hv_features={:#x}",
        args.workload(),
        smp::online(),
        apic.name(),
        hypervisor.signature_str(),
        hypervisor.kvm_features,
        hypervisor.hv_features.unwrap_or(0),
    );
    let mut ctx = Ctx {
        args,
        cpus: smp::online(),
        apic,
        hypervisor,
    };
    // SAFETY: the image defines this symbol with exactly this signature (see `workload_main!`).
    let result = unsafe { hvlab_workload_main(&mut ctx) };
    match result {
        Ok(()) => hv::exit(status::OK),
        Err(e) => {
            println!("hvlab guest: {}: {e}", args.workload());
            hv::exit(e.status());
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("hvlab guest panic: {info}");
    hv::exit(status::PANIC)
}
