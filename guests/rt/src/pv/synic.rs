//! The Hyper-V SynIC and synthetic timers, guest side (`hv-synic`, `hv-stimer`): per-CPU
//! message and event-flag pages, SINT setup, HvCallPostMessage / HvCallSignalEvent through the
//! hypercall page, message slots with the TLFS consume-then-EOM protocol, and STIMER setup.
//!
//! Each CPU owns one [`SynicPages`] (two 4 KiB pages); the runtime identity-maps RAM, so a
//! static's address is its GPA.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use hvlab_protocol::hyperv as tlfs;

use super::hyperv;
use crate::cpu::wrmsr;

/// The SIMP (messages) and SIEFP (event flags) pages of one CPU.
#[repr(C, align(4096))]
pub struct SynicPages(UnsafeCell<[[u8; 4096]; 2]>);

// SAFETY: each CPU touches only its own pages, with volatile and atomic accesses; the
// hypervisor writes them between those accesses as hardware would.
unsafe impl Sync for SynicPages {}

impl SynicPages {
    pub const fn new() -> Self {
        SynicPages(UnsafeCell::new([[0; 4096]; 2]))
    }
    fn simp(&self) -> *mut u8 {
        self.0.get() as *mut u8
    }
    fn siefp(&self) -> *mut u8 {
        // SAFETY: the second page of the pair.
        unsafe { self.simp().add(4096) }
    }

    /// Enables this CPU's SynIC with these pages (SIMP, SIEFP, then SCONTROL).
    pub fn enable(&self) {
        wrmsr(tlfs::MSR_SIMP, self.simp() as u64 | tlfs::MSR_ENABLE);
        wrmsr(tlfs::MSR_SIEFP, self.siefp() as u64 | tlfs::MSR_ENABLE);
        wrmsr(tlfs::MSR_SCONTROL, 1);
    }

    /// The message in slot `sint`: (type, payload size, pending flag), type 0 = empty.
    pub fn slot(&self, sint: u32) -> (u32, u8, bool) {
        let at = self.slot_ptr(sint);
        // SAFETY: inside this CPU's SIMP page (sint < 16), naturally aligned.
        unsafe {
            (
                core::ptr::read_volatile(at as *const u32),
                core::ptr::read_volatile(at.add(4)),
                core::ptr::read_volatile(at.add(5)) & tlfs::MSG_FLAG_PENDING != 0,
            )
        }
    }

    /// Payload word `i` (u64) of slot `sint`.
    pub fn payload_word(&self, sint: u32, i: usize) -> u64 {
        // SAFETY: inside the slot (i < 30), aligned.
        unsafe {
            core::ptr::read_volatile(self.slot_ptr(sint).add(16 + 8 * (i % 30)) as *const u64)
        }
    }

    /// Consumes slot `sint` as the TLFS asks: type = HVMSG_NONE, then EOM when the hypervisor
    /// marked another message pending. Returns (type, pending) of what was there.
    pub fn consume(&self, sint: u32) -> (u32, bool) {
        let (kind, _, pending) = self.slot(sint);
        if kind == tlfs::HVMSG_NONE {
            return (kind, false);
        }
        // SAFETY: as in `slot`.
        unsafe { core::ptr::write_volatile(self.slot_ptr(sint) as *mut u32, tlfs::HVMSG_NONE) };
        core::sync::atomic::fence(Ordering::SeqCst);
        if pending {
            wrmsr(tlfs::MSR_EOM, 0);
        }
        (kind, pending)
    }

    /// Takes (reads and clears) the first 64 event flags of `sint`.
    pub fn take_events(&self, sint: u32) -> u64 {
        // SAFETY: inside this CPU's SIEFP page, 8-aligned; the hypervisor sets bits atomically.
        let word = unsafe { &*(self.siefp().add(sint as usize % 16 * 256) as *const AtomicU64) };
        word.swap(0, Ordering::AcqRel)
    }

    fn slot_ptr(&self, sint: u32) -> *mut u8 {
        // SAFETY: slot `sint % 16` of the SIMP page.
        unsafe {
            self.simp()
                .add((sint as usize % 16) * tlfs::MSG_SLOT_SIZE as usize)
        }
    }
}

impl Default for SynicPages {
    fn default() -> Self {
        Self::new()
    }
}

/// Routes SINT `sint` of this CPU to `vector` (unmasked, no auto-EOI: hv recommends against it).
pub fn set_sint(sint: u32, vector: u8) {
    wrmsr(tlfs::MSR_SINT0 + sint % 16, u64::from(vector));
}

/// HvCallPostMessage's input page (256 bytes used).
#[repr(C, align(4096))]
pub struct PostInput(UnsafeCell<[u64; 32]>);

// SAFETY: one owner at a time (the caller passes it to `post_message`).
unsafe impl Sync for PostInput {}

impl PostInput {
    pub const fn new() -> Self {
        PostInput(UnsafeCell::new([0; 32]))
    }
}

impl Default for PostInput {
    fn default() -> Self {
        Self::new()
    }
}

/// HvCallPostMessage to `connection` with `kind` and `size` payload bytes from `payload`
/// (each word little-endian); returns the status. `input` must be used by one CPU at a time.
pub fn post_message(
    input: &PostInput,
    connection: u32,
    kind: u32,
    size: u32,
    payload: &[u64],
) -> u16 {
    let p = input.0.get();
    // SAFETY: the caller owns `input` for the call.
    unsafe {
        let w = &mut *p;
        w[0] = u64::from(connection);
        w[1] = u64::from(kind) | u64::from(size) << 32;
        for (i, x) in w[2..].iter_mut().enumerate() {
            *x = payload.get(i).copied().unwrap_or(0);
        }
    }
    let call = tlfs::input(tlfs::CALL_POST_MESSAGE, false, 0, 0, 0);
    tlfs::status(hyperv::hypercall(call, p as u64, 0))
}

/// HvCallSignalEvent (fast) to `connection`, flag `flag`; returns the status.
pub fn signal_event(connection: u32, flag: u16) -> u16 {
    let call = tlfs::input(tlfs::CALL_SIGNAL_EVENT, true, 0, 0, 0);
    tlfs::status(hyperv::hypercall_fast(
        call,
        u64::from(connection) | u64::from(flag) << 32,
        0,
    ))
}

/// STIMER `n` CONFIG value: message mode into `sint`, or direct mode with `vector`.
pub fn stimer_config(periodic: bool, direct: Option<u8>, sint: u32) -> u64 {
    let mut c = tlfs::STIMER_ENABLE;
    if periodic {
        c |= tlfs::STIMER_PERIODIC;
    }
    match direct {
        Some(v) => c | tlfs::STIMER_DIRECT | u64::from(v) << 4,
        None => c | u64::from(sint & 0xf) << 16,
    }
}

/// Arms STIMER `n`: COUNT first (absolute expiry for one-shot, period for periodic), then
/// CONFIG, which starts it.
pub fn stimer_start(n: u32, config: u64, count: u64) {
    let base = tlfs::MSR_STIMER0_CONFIG + 2 * (n % 4);
    wrmsr(base + 1, count);
    wrmsr(base, config);
}

/// Stops STIMER `n`.
pub fn stimer_stop(n: u32) {
    wrmsr(tlfs::MSR_STIMER0_CONFIG + 2 * (n % 4), 0);
}

/// STIMER CONFIG for a one-shot timer re-armed by COUNT writes alone (as Linux's Hyper-V
/// clockevent does): auto-enable set, enable clear, so the first [`stimer_set_count`] enables
/// it; message mode into `sint`, or direct mode with `vector`.
pub fn stimer_config_auto(direct: Option<u8>, sint: u32) -> u64 {
    (stimer_config(false, direct, sint) & !tlfs::STIMER_ENABLE) | tlfs::STIMER_AUTO_ENABLE
}

/// Writes STIMER `n`'s COUNT only (one MSR write): with [`stimer_config_auto`] in its CONFIG
/// this arms a one-shot timer to expire at `count` (absolute reference time).
pub fn stimer_set_count(n: u32, count: u64) {
    wrmsr(tlfs::MSR_STIMER0_CONFIG + 2 * (n % 4) + 1, count);
}
