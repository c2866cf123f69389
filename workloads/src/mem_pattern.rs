//! mem-pattern: writes a seed-derived pattern over a range of guest RAM and verifies it, so a
//! host can check afterwards that each partition saw only its own memory.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "mem-pattern",
    summary: "write and verify a seeded pattern in guest RAM (partition isolation checks)",
    params: &[
        Param {
            key: "seed",
            default: "1",
            help: "pattern seed",
        },
        Param {
            key: "base",
            default: "0x400000",
            help: "guest-physical start (8-byte aligned)",
        },
        Param {
            key: "size",
            default: "64k",
            help: "bytes to write",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

/// The 64-bit word stored at guest-physical `addr` for `seed` (the host computes the same).
pub const fn pattern_word(seed: u64, addr: u64) -> u64 {
    (addr ^ seed.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

#[cfg(target_os = "none")]
pub fn run(ctx: &mut hvlab_guest_rt::Ctx) -> Result<(), hvlab_guest_rt::Fail> {
    use hvlab_guest_rt::{Fail, phase};
    let seed = ctx.args.u64_or("seed", 1)?;
    let base = ctx.args.u64_or("base", 0x40_0000)?;
    let size = ctx.args.u64_or("size", 64 * 1024)?;
    let end = base.checked_add(size).ok_or(Fail::BadArg("size"))?;
    if base % 8 != 0 || base < 0x20_0000 || end > hvlab_protocol::MAX_GUEST_RAM {
        return Err(Fail::BadArg("base"));
    }
    let words = size / 8;
    let p = phase::begin("write");
    for i in 0..words {
        let a = base + i * 8;
        // SAFETY: [base, end) is below the MMIO window and above the image (checked above);
        // the host sized RAM to hold it.
        unsafe { core::ptr::write_volatile(a as *mut u64, pattern_word(seed, a)) };
    }
    p.end(words).report(&[], None);
    let p = phase::begin("verify");
    let mut bad = 0u64;
    for i in 0..words {
        let a = base + i * 8;
        // SAFETY: as above.
        bad += u64::from(
            unsafe { core::ptr::read_volatile(a as *const u64) } != pattern_word(seed, a),
        );
    }
    p.end(words).report(&[("mismatches", bad)], None);
    if bad != 0 {
        Err(Fail::Check("pattern mismatch"))
    } else {
        Ok(())
    }
}
