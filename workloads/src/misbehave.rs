//! misbehave: guests that go wrong on purpose, so tests can check that each way of going wrong
//! ends its run with a clear status and leaves hv and other partitions running.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "misbehave",
    summary: "hostile or broken guest behaviour for robustness tests",
    params: &[
        Param {
            key: "how",
            default: "ud",
            help: "ud | pf | gp | triple | spin-cli | hlt-cli | port-flood | mmio-flood | exit=N | panic | note-flood | out=PORT",
        },
        Param {
            key: "count",
            default: "2000",
            help: "note-flood: unmatched phase ends, one-op phases and skip lines (each)",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

#[cfg(target_os = "none")]
pub fn run(ctx: &mut hvlab_guest_rt::Ctx) -> Result<(), hvlab_guest_rt::Fail> {
    use core::arch::asm;
    use hvlab_guest_rt::{Fail, cpu, hv};
    let how = ctx.args.str_or("how", "ud");
    match how {
        // SAFETY (all arms below): deliberately faulting or spinning is the point of this
        // workload; each fault goes to the runtime's exception handler or ends the VM.
        "ud" => unsafe { asm!("ud2") },
        "pf" => {
            // Above the 4 GiB identity map: not present.
            // SAFETY: see above.
            unsafe { core::ptr::read_volatile(0x10_0000_0000 as *const u64) };
        }
        "gp" => {
            // SAFETY: see above (non-canonical address).
            unsafe { core::ptr::read_volatile(0x8000_0000_0000_0000u64 as *const u64) };
        }
        "triple" => {
            #[repr(C, packed)]
            struct Empty {
                limit: u16,
                base: u64,
            }
            let e = Empty { limit: 0, base: 0 };
            // SAFETY: see above: with an empty IDT, #UD escalates to a triple fault.
            unsafe { asm!("lidt [{}]", "ud2", in(reg) &e) };
        }
        "spin-cli" => {
            cpu::cli();
            #[allow(clippy::empty_loop)]
            loop {
                core::hint::spin_loop();
            }
        }
        "hlt-cli" => loop {
            cpu::cli();
            cpu::hlt();
        },
        "port-flood" => loop {
            cpu::outb(0x80, 0);
        },
        "mmio-flood" => loop {
            cpu::mmio_write32(0xe000_0000, 0);
        },
        "panic" => panic!("misbehave asked for a panic"),
        "note-flood" => {
            // Everything a guest can make hv remember: one unmapped-port note per port (all
            // 65,536 read once; reads, so the exit port cannot end the run), unmatched phase
            // ends, many one-op phases and skip lines. hv must keep all of it bounded.
            let count = ctx.args.u64_or("count", 2000)?;
            for port in 0..=u16::MAX {
                let _ = cpu::inb(port);
            }
            for i in 0..count {
                hv::phase_end(0x10_0000 + i as u32);
            }
            for _ in 0..count {
                let p = hvlab_guest_rt::phase::begin("one-op");
                p.end(1).report(&[], None);
            }
            for i in 0..count {
                hvlab_guest_rt::println!("HVLAB rec=skip name=s{i} reason=flood");
            }
            return Ok(());
        }
        other => {
            if let Some(code) = other.strip_prefix("exit=") {
                let code = hvlab_guest_rt::args::parse_u64(code).ok_or(Fail::BadArg("how"))?;
                hv::exit(code as u32);
            }
            if let Some(port) = other.strip_prefix("out=") {
                // One byte to PORT, then a clean exit (tests attach a device there).
                let port = hvlab_guest_rt::args::parse_u64(port)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or(Fail::BadArg("how"))?;
                cpu::outb(port, 0);
                return Ok(());
            }
            return Err(Fail::BadArg("how"));
        }
    }
    Err(Fail::Check("misbehaviour did not stop the guest"))
}
