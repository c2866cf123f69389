//! Starting application processors and handing them work.
//!
//! APs idle in `sti; hlt` (a spinning AP would burn a host CPU in the instruction emulator on
//! nested hosts) and are woken by an IPI on [`WAKE_VECTOR`] when a job is posted. Idle checks
//! run with interrupts off, so a wake-up that lands between the check and the halt stays pending
//! and ends the halt at once.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::entry::{MAX_CPUS, TRAMPOLINE_ADDR, trampoline};
use crate::{Fail, apic, cpu, idt};

/// Vector that wakes an idle AP.
pub const WAKE_VECTOR: u8 = 0xf1;

/// A job run on an AP: `(cpu index, argument)`.
pub type Job = fn(u32, usize);

struct Slot {
    job: AtomicUsize,
    arg: AtomicUsize,
    /// Incremented by the poster; the AP copies it to `done` when the job returns.
    posted: AtomicU32,
    done: AtomicU32,
    apic_id: AtomicU32,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        job: AtomicUsize::new(0),
        arg: AtomicUsize::new(0),
        posted: AtomicU32::new(0),
        done: AtomicU32::new(0),
        apic_id: AtomicU32::new(u32::MAX),
    }
}; MAX_CPUS];

static ONLINE: AtomicU32 = AtomicU32::new(1);

/// CPUs online, the BSP included.
pub fn online() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// APIC ID of CPU `index` (0 = BSP).
pub fn apic_id(index: u32) -> u32 {
    SLOTS[index as usize].apic_id.load(Ordering::Relaxed)
}

fn wake(_: u8) {}

/// Starts every other CPU and waits until `cpus` in total are online.
pub fn start_aps(cpus: u32) -> Result<(), Fail> {
    SLOTS[0].apic_id.store(apic::id(), Ordering::Relaxed);
    if cpus <= 1 {
        return Ok(());
    }
    if cpus as usize > MAX_CPUS {
        return Err(Fail::BadArg("cpus"));
    }
    idt::register(WAKE_VECTOR, wake);
    let code = trampoline();
    // SAFETY: the trampoline page lies in guest RAM below the image, which nothing else uses;
    // the copy is the code's exact length.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE_ADDR as *mut u8, code.len());
    }
    apic::start_all_aps((TRAMPOLINE_ADDR >> 12) as u8);
    let start = cpu::rdtsc();
    // Generous bound (tens of seconds at any plausible TSC rate) so a VMM that never starts
    // the APs ends in a clear failure rather than a hang.
    while online() < cpus {
        if cpu::rdtsc().wrapping_sub(start) > 1 << 37 {
            return Err(Fail::Check("application processors did not come online"));
        }
        cpu::pause();
    }
    Ok(())
}

#[unsafe(no_mangle)]
extern "C" fn rt_ap_main(index: u32) -> ! {
    idt::load();
    apic::init_this_cpu();
    crate::pv::init_cpu(index);
    let slot = &SLOTS[index as usize];
    slot.apic_id.store(apic::id(), Ordering::Relaxed);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    loop {
        cpu::cli();
        let posted = slot.posted.load(Ordering::Acquire);
        if posted != slot.done.load(Ordering::Relaxed) {
            let job = slot.job.load(Ordering::Relaxed);
            let arg = slot.arg.load(Ordering::Relaxed);
            // SAFETY: `post` stores only `Job` function pointers in `job`.
            let f: Job = unsafe { core::mem::transmute::<usize, Job>(job) };
            f(index, arg);
            slot.done.store(posted, Ordering::Release);
        } else {
            cpu::sti_hlt();
        }
    }
}

/// Posts `job(cpu, arg)` to AP `index` and wakes it.
pub fn post(index: u32, job: Job, arg: usize) {
    let slot = &SLOTS[index as usize];
    slot.job.store(job as usize, Ordering::Relaxed);
    slot.arg.store(arg, Ordering::Relaxed);
    slot.posted.fetch_add(1, Ordering::Release);
    apic::send_ipi(slot.apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
}

/// True once AP `index` has finished every job posted to it.
pub fn idle(index: u32) -> bool {
    let slot = &SLOTS[index as usize];
    slot.done.load(Ordering::Acquire) == slot.posted.load(Ordering::Acquire)
}

/// Waits (halting between checks) until AP `index` finished its jobs.
pub fn wait(index: u32) {
    while !idle(index) {
        cpu::pause();
    }
}

/// Posts `job(cpu, arg)` to every AP and wakes them, without waiting.
pub fn post_aps(job: Job, arg: usize) {
    for i in 1..online() {
        post(i, job, arg);
    }
}

/// Waits until every AP finished its jobs.
pub fn wait_aps() {
    for i in 1..online() {
        wait(i);
    }
}

/// Runs `job` on every AP and waits for all of them.
pub fn run_on_aps(job: Job, arg: usize) {
    post_aps(job, arg);
    wait_aps();
}

/// The APs' APIC IDs as a mask (bit `id % 64`), the target set hv's calls take.
pub fn ap_apic_mask() -> u64 {
    (1..online()).fold(0, |mask, i| mask | 1 << (apic_id(i) % 64))
}
