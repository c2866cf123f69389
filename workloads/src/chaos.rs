//! chaos: a seeded, reproducible hostile guest. Each of `ops` operations, drawn from the seed,
//! abuses one thing hv exposes: random reads and writes of every port and MMIO region of every
//! device present and of unmapped ones; virtio-mmio register sequences (re-ready, reset
//! mid-flight, QUEUE_NUM changes, renegotiation after DRIVER_OK, rings at the end of RAM, over
//! the MMIO window, overlapping each other) with random descriptor tables and ring indices;
//! ATA command and register sequences; protocol-port abuse (phase ids out of order, unmatched
//! ends, floods of result lines, huge histograms); interrupt storms (self-IPIs, the APIC timer
//! at a tiny period); and sessions at CPL3 that do MMIO and memory chaos there.
//!
//! With the Hyper-V SynIC exposed (`hv-synic`; detected by CPUID as the `synic` workload does)
//! two more kinds join `all`: `synic` (random reads and writes of the SynIC and STIMER MSRs:
//! SCONTROL, SVERSION, SIMP/SIEFP pages in the DMA area, past RAM, in the MMIO window or with
//! reserved bits, SINT0-15 with random vectors, mask, auto-EOI and polling bits, EOM, STIMER0-3
//! with tiny periods, one-shot, direct mode and random SINTs; HvCallPostMessage and
//! HvCallSignalEvent, fast and slow, with random connection ids, message types, sizes and input
//! addresses) and `vmbus` (hv's VMBus-style channel: offers, opens with random ring places and
//! page counts, random bytes in ring control pages and data areas, packets, signals to random
//! channels). A refused MSR access (#GP) comes back as an error through the runtime's
//! `fixup::wrmsr_safe`/`rdmsr_safe` and is counted (`msr_refused`); no status hv returns is
//! judged. Without the SynIC they get no weight and the phase reports `synic_absent=1`.
//! Storms stay bounded so the guest always progresses: every SINT vector and direct-mode timer
//! vector is one chaos handles (or the SINT is masked), armed timers are stopped after a few
//! operations, and at the end all timers stop and all SINTs are masked.
//!
//! What it must never do is hang: every wait on hv is a bounded poll. Its own ends are defined
//! exit statuses ([`END_STATUSES`]): 0 after all operations, [`EARLY_EXIT`] when a random port
//! write hit the exit port (with probability `exit` per million port operations), or, for
//! `fault` percent of seeds, a deliberate #UD / #PF (status 3) or triple fault after reporting.
//!
//! CPL3 cannot do port I/O here (the runtime's TSS has no I/O bitmap and IOPL is 0), so CPL3
//! sessions do MMIO (on the window pages the runtime makes user-accessible) and memory chaos.
//!
//! Device DMA is confined by construction: every address the guest gives a device (rings,
//! buffers, indirect tables) is in the top [`DMA_BYTES`] of RAM, the first page, past the end of
//! RAM, in the MMIO window or above 4 GiB, never in the image, so a device doing what the guest
//! asked cannot make the guest corrupt (and hang) itself. The same holds for what hv writes:
//! SIMP/SIEFP pages and VMBus rings are only ever placed in the DMA area (or the first page, for
//! the SynIC pages) or outside RAM, and hypercall input that hv reads is built in a page of the
//! image that devices are never pointed at.
//!
//! Metrics of the `chaos` phase count what was done and the device errors seen
//! (`virtio_needs_reset`, `ata_err`, `ata_timeouts`, `unmapped_reads`, ...).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "chaos",
    summary: "seeded random abuse of every port, MMIO region, virtio queue, ATA register and protocol port, from CPL0 and CPL3; SynIC MSRs, hypercalls and the VMBus channel with hv-synic",
    params: &[
        Param {
            key: "seed",
            default: "1",
            help: "random seed (the whole run follows from it)",
        },
        Param {
            key: "ops",
            default: "1000",
            help: "operations to perform",
        },
        Param {
            key: "mix",
            default: "all",
            help: "all, or a comma list of: port, mmio, virtio, ata, proto, irq, mem, user, synic, vmbus (the last two need hv-synic)",
        },
        Param {
            key: "fault",
            default: "5",
            help: "percent of seeds that end in a deliberate #UD, #PF or triple fault",
        },
        Param {
            key: "exit",
            default: "250",
            help: "per million port operations that write the exit port, ending the run early (250: ~5% of 1000-op seeds)",
        },
    ],
    min_vcpus: 1,
    devices: &["block", "console"],
    // The full irqchip puts the PIC and IOAPIC in reach; pm-timer and rtc add hv's ports.
    host_features: &["full-irqchip", "pm-timer", "rtc"],
};

/// Exit status chaos writes when a random port operation hits the exit port.
pub const EARLY_EXIT: u32 = 7;

/// Guest exit statuses a chaos run may end with (besides a triple fault, which ends a
/// `fault` seed without a status): ok, deliberate exception, early exit.
pub const END_STATUSES: &[u32] = &[
    hvlab_protocol::status::OK,
    hvlab_protocol::status::EXCEPTION,
    EARLY_EXIT,
];

/// Bytes at the top of RAM that devices may be pointed at.
pub const DMA_BYTES: u64 = 256 * 1024;

/// Operation kinds, in `mix` spelling.
pub const KINDS: &[&str] = &[
    "port", "mmio", "virtio", "ata", "proto", "irq", "mem", "user", "synic", "vmbus",
];

/// The deliberate end of a `fault` seed (host and guest agree: the seed decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// Run every operation and exit 0 (unless the exit port is hit).
    Finish,
    /// After `at` operations: report, then #UD.
    Ud { at: u64 },
    /// After `at` operations: report, then #PF.
    Pf { at: u64 },
    /// After `at` operations: report, then a triple fault.
    Triple { at: u64 },
}

/// SplitMix64: seeds the generator so that nearby seeds give unrelated streams.
pub const fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How seed `seed` with `ops` operations and `fault` percent ends (computed from the seed
/// alone, so the host can predict it).
pub const fn planned_end(seed: u64, ops: u64, fault: u64) -> Planned {
    let h = splitmix(seed ^ 0x6661_756c_7421);
    if h % 100 >= fault {
        return Planned::Finish;
    }
    let at = if ops == 0 {
        0
    } else {
        ops / 2 + (h >> 8) % (ops - ops / 2)
    };
    match (h >> 40) % 3 {
        0 => Planned::Ud { at },
        1 => Planned::Pf { at },
        _ => Planned::Triple { at },
    }
}

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::cell::UnsafeCell;
    use core::ptr::{read_volatile, write_volatile};
    use core::sync::atomic::{AtomicU64, Ordering};

    use hvlab_guest_rt::drivers::virtio::{
        self, REG_CONFIG, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL, REG_DRIVER_FEATURES,
        REG_DRIVER_FEATURES_SEL, REG_QUEUE_DESC_LOW, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_LOW,
        REG_QUEUE_NOTIFY, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL,
        REG_STATUS, S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET,
    };
    use hvlab_guest_rt::entry::allow_user_mmio;
    use hvlab_guest_rt::pv::hyperv;
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, fixup, hv, idt, phase, println, user};
    use hvlab_protocol::hyperv as tlfs;
    use hvlab_protocol::vmbus as vb;
    use hvlab_protocol::{
        CONSOLE_PORT, EXIT_PORT, KERNEL_PORT, MMIO_WINDOW_BASE, PHASE_END, PHASE_PORT,
        START_INFO_ADDR, TEST_MMIO_BASE, TEST_PORT,
    };

    use super::{DMA_BYTES, EARLY_EXIT, KINDS, Planned, planned_end, splitmix};

    /// Interrupt vectors chaos registers (and aims self-IPIs, timers at): below the runtime's
    /// own (SMP wake 0xf1, user kick 0xf3, spurious 0xff), so every one it sends is handled.
    const FIRST_VECTOR: u8 = 0x20;
    const LAST_VECTOR: u8 = 0xef;
    /// Bounded polls: status reads per ATA wait, used-index reads per virtio wait.
    const ATA_POLLS: u32 = 32;
    const USED_POLLS: u32 = 64;
    /// APIC bus clocks a CPL3 session may run before the timer kicks it back (1 ms at 1 GHz).
    const USER_SLICE: u32 = 1_000_000;

    // Counters, as statics so interrupt handlers and CPL3 code can add to them.
    macro_rules! counters {
        ($($name:ident),* $(,)?) => {
            #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
            #[derive(Clone, Copy)]
            #[repr(usize)]
            enum C { $($name),* }
            const NAMES: &[&str] = &[$(stringify!($name)),*];
        };
    }
    counters!(
        port_ops,
        mmio_ops,
        virtio_ops,
        ata_ops,
        proto_ops,
        irq_ops,
        mem_ops,
        user_ops,
        user_sessions,
        unmapped_reads,
        virtio_inits,
        virtio_refused,
        virtio_needs_reset,
        virtio_used,
        virtio_notifies,
        ata_commands,
        ata_err,
        ata_timeouts,
        ata_drq_words,
        interrupts,
        self_ipis,
        timer_bursts,
        markers,
        fake_lines,
        synic_ops,
        vmbus_ops,
        msr_writes,
        msr_reads,
        msr_refused,
        stimer_arms,
        hv_calls,
        hv_call_errors,
        vmbus_replies,
        vmbus_offers,
        vmbus_opens,
        vmbus_pokes,
        vmbus_packets,
    );
    static COUNTS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

    fn add(c: C, n: u64) {
        COUNTS[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn on_irq(_: u8) {
        add(C::interrupts, 1);
    }

    /// xorshift64*: a few instructions per number, no multiply-high, no floating point.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(splitmix(seed) | 1)
        }
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform-enough in `0..n` (`n` > 0).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// True with probability `per_mille`/1000.
        fn chance(&mut self, per_mille: u64) -> bool {
            self.below(1000) < per_mille
        }
        /// True with probability `ppm`/1,000,000.
        fn chance_ppm(&mut self, ppm: u64) -> bool {
            self.below(1_000_000) < ppm
        }
        fn width(&mut self) -> u32 {
            [1, 2, 4, 4, 8][self.below(5) as usize]
        }
    }

    /// What this partition has, learned from the command line and the start info.
    #[derive(Clone, Copy)]
    struct Env {
        ram_end: u64,
        dma: u64,
        ata: bool,
        blk: Option<u64>,
        con: Option<u64>,
    }

    impl Env {
        /// Addresses a device may be told to use (see the module doc): never the image.
        fn target(&self, r: &mut Rng) -> u64 {
            match r.below(10) {
                0..=3 => self.dma + r.below(DMA_BYTES),
                // The last bytes of RAM: a ring there has its header in RAM and its entries
                // past the end (0x1fffffc in a 32 MiB guest, issue 8's hang).
                4 => self.ram_end - [4, 2, 8, 1 + r.below(64)][r.below(4) as usize],
                5 => r.below(0x1000), // page 0
                6 => self.ram_end + r.below((MMIO_WINDOW_BASE - self.ram_end).max(1)), // no RAM
                7 => [
                    TEST_MMIO_BASE,
                    0xd000_1000,
                    0xd000_2000,
                    0xfee0_0000,
                    0xfec0_0000,
                ][r.below(5) as usize]
                    .wrapping_add(r.below(0x1000)),
                8 => (1 << 32) + r.below(1 << 40),
                _ => u64::MAX - r.below(0x10000), // wraps when a length is added
            }
        }

        /// A place in the DMA area with room for `len` bytes.
        fn dma_slot(&self, r: &mut Rng, len: u64) -> u64 {
            self.dma + r.below(DMA_BYTES - len)
        }

        /// True when the guest may store `len` bytes at `addr` itself: the DMA area or page 0.
        fn writable(&self, addr: u64, len: u64) -> bool {
            let end = addr.wrapping_add(len);
            end >= addr && ((addr >= self.dma && end <= self.ram_end) || end <= 0x1000)
        }

        /// True when a load of `len` bytes at `addr` cannot fault: RAM or the MMIO window.
        fn readable(&self, addr: u64, len: u64) -> bool {
            addr.checked_add(len).is_some_and(|end| end <= 1 << 32)
        }
    }

    fn store(env: &Env, addr: u64, width: u32, v: u64) {
        if env.writable(addr, u64::from(width)) {
            raw_write(addr, width, v);
        }
    }

    fn load(env: &Env, addr: u64, width: u32) -> Option<u64> {
        env.readable(addr, u64::from(width))
            .then(|| raw_read(addr, width))
    }

    fn raw_read(addr: u64, width: u32) -> u64 {
        // SAFETY: callers pass addresses below 4 GiB (identity-mapped: RAM, or the MMIO window,
        // where a load is an exit to hv or KVM); a volatile load of that width has no other
        // effect on Rust-visible memory.
        unsafe {
            match width {
                1 => u64::from(read_volatile(addr as *const u8)),
                2 => u64::from(read_volatile(addr as *const u16)),
                4 => u64::from(read_volatile(addr as *const u32)),
                _ => read_volatile(addr as *const u64),
            }
        }
    }

    fn raw_write(addr: u64, width: u32, v: u64) {
        // SAFETY: callers pass either the DMA area / page 0 (RAM no Rust object lives in) or
        // an MMIO address below 4 GiB, where a store is an exit.
        unsafe {
            match width {
                1 => write_volatile(addr as *mut u8, v as u8),
                2 => write_volatile(addr as *mut u16, v as u16),
                4 => write_volatile(addr as *mut u32, v as u32),
                _ => write_volatile(addr as *mut u64, v),
            }
        }
    }

    /// Random MMIO register access in the `len` bytes at `base`. A write to a virtio queue
    /// address register (0x80-0xa7) stores a [`Env::target`] address, so the device is only
    /// ever pointed at DMA-safe places.
    fn mmio_poke(env: &Env, r: &mut Rng, base: u64, len: u64, virtio_regs: bool) {
        let off = r.below(len);
        let width = r.width();
        let addr = (base + off) & !(u64::from(width) - 1);
        if r.chance(500) {
            if raw_read(addr, width) == u64::MAX >> (64 - 8 * width) {
                add(C::unmapped_reads, 1);
            }
            return;
        }
        let rel = addr - base;
        if virtio_regs && (0x80..0xa8).contains(&rel) {
            let t = env.target(r);
            let reg = rel & !0x7;
            raw_write(base + reg, 4, t);
            raw_write(base + reg + 4, 4, t >> 32);
        } else {
            raw_write(addr, width, r.next());
        }
    }

    /// One MMIO operation anywhere: device windows, the test page, unmapped window pages and
    /// the hole between the end of RAM and the window. Never the APIC or IOAPIC pages (writes
    /// there could INIT the vCPU into wait-for-SIPI, a guest-made hang, not an hv test).
    fn mmio_op(env: &Env, r: &mut Rng) {
        match r.below(6) {
            0 => mmio_poke(env, r, TEST_MMIO_BASE, 0x1000, false),
            1 => match env.blk {
                Some(b) => mmio_poke(env, r, b, 0x1000, true),
                None => mmio_poke(env, r, 0xd000_1000, 0x1000, true),
            },
            2 => match env.con {
                Some(b) => mmio_poke(env, r, b, 0x1000, true),
                None => mmio_poke(env, r, 0xd000_2000, 0x1000, true),
            },
            3 => mmio_poke(env, r, 0xd000_3000, 0x1f_d000, false),
            4 => {
                let base = MMIO_WINDOW_BASE + (r.below(0x3ec0_0000 / 4096)) * 4096;
                // A device window found this way still only gets DMA-safe ring addresses.
                let virtio = (0xd000_1000..0xd000_3000).contains(&base);
                mmio_poke(env, r, base, 0x1000, virtio);
            }
            _ => {
                let pages = ((MMIO_WINDOW_BASE - env.ram_end) / 4096).max(1);
                let base = env.ram_end + r.below(pages) * 4096;
                mmio_poke(env, r, base, 0x1000, false);
            }
        }
        add(C::mmio_ops, 1);
    }

    /// One memory operation: a load anywhere in RAM or the hole above it, or a store into the
    /// DMA area (bytes or whole aligned words, so no store can turn an address the guest wrote
    /// into one inside the image).
    fn mem_op(env: &Env, r: &mut Rng) {
        match r.below(3) {
            0 => {
                let a = r.below(env.ram_end - 8);
                let _ = load(env, a, r.width());
            }
            1 => {
                let a = env.dma_slot(r, 8) & !7;
                store(env, a, 8, r.next());
            }
            _ => {
                let a = env.dma_slot(r, 1);
                store(env, a, 1, r.next());
            }
        }
        add(C::mem_ops, 1);
    }

    // ---- CPL3 sessions ----

    static USER_SEED: AtomicU64 = AtomicU64::new(0);
    static USER_OPS: AtomicU64 = AtomicU64::new(0);
    static USER_ENV: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

    /// Runs at CPL3: MMIO and memory chaos (no port I/O, no printing), then parks until the
    /// APIC timer's kick takes the CPU back to CPL0.
    extern "C" fn user_side(_: u64) -> ! {
        let env = Env {
            ram_end: USER_ENV[0].load(Ordering::Acquire),
            dma: USER_ENV[1].load(Ordering::Acquire),
            ata: false,
            blk: Some(USER_ENV[2].load(Ordering::Acquire)).filter(|&b| b != 0),
            con: Some(USER_ENV[3].load(Ordering::Acquire)).filter(|&b| b != 0),
        };
        let mut r = Rng::new(USER_SEED.load(Ordering::Acquire));
        let n = USER_OPS.load(Ordering::Acquire);
        for _ in 0..n {
            // Only the window page made user-accessible (test page and device windows) and
            // RAM: anything else would be a #PF at CPL3.
            match r.below(4) {
                0 => mmio_poke(&env, &mut r, TEST_MMIO_BASE, 0x1000, false),
                1 => mmio_poke(&env, &mut r, env.blk.unwrap_or(0xd000_1000), 0x1000, true),
                2 => mmio_poke(&env, &mut r, env.con.unwrap_or(0xd000_2000), 0x1000, true),
                _ => mem_op(&env, &mut r),
            }
            add(C::user_ops, 1);
        }
        user::park()
    }

    fn user_session(env: &Env, r: &mut Rng) {
        USER_SEED.store(r.next(), Ordering::Release);
        USER_OPS.store(1 + r.below(48), Ordering::Release);
        for (slot, v) in USER_ENV.iter().zip([
            env.ram_end,
            env.dma,
            env.blk.unwrap_or(0),
            env.con.unwrap_or(0),
            0,
        ]) {
            slot.store(v, Ordering::Release);
        }
        // The kick is the only way back; the timer sends it even if user code never parks.
        apic::timer_periodic(user::KICK_VECTOR, USER_SLICE);
        user::enter(0, user_side, 0);
        apic::timer_stop();
        add(C::user_sessions, 1);
    }

    // ---- ports ----

    /// Ports of devices that may be present (hv's, KVM's in-kernel PIC/ELCR).
    const DEVICE_PORTS: &[(u16, u16)] = &[
        (CONSOLE_PORT, 8),
        (0x1f0, 8),
        (0x3f6, 1),
        (0x70, 2),
        (0x608, 4),
        (TEST_PORT, 1),
        (KERNEL_PORT, 1),
        (0x20, 2),
        (0xa0, 2),
        (0x4d0, 2),
    ];

    fn port_op(r: &mut Rng, exit_ppm: u64) {
        add(C::port_ops, 1);
        if r.chance_ppm(exit_ppm) {
            // Any width decodes to the same status.
            match r.below(3) {
                0 => cpu::outb(EXIT_PORT, EARLY_EXIT as u8),
                1 => cpu::outw(EXIT_PORT, EARLY_EXIT as u16),
                _ => cpu::outl(EXIT_PORT, EARLY_EXIT),
            }
        }
        let port = if r.chance(600) {
            let (base, n) = DEVICE_PORTS[r.below(DEVICE_PORTS.len() as u64) as usize];
            base + r.below(u64::from(n)) as u16
        } else {
            let p = r.next() as u16;
            // The exit and phase ports have their own operations.
            if (EXIT_PORT..EXIT_PORT + 4).contains(&p) || (PHASE_PORT..PHASE_PORT + 2).contains(&p)
            {
                return;
            }
            p
        };
        let v = r.next();
        match (r.below(2), r.below(3)) {
            (0, 0) => {
                if cpu::inb(port) == 0xff {
                    add(C::unmapped_reads, 1);
                }
            }
            (0, 1) => {
                let _ = cpu::inw(port);
            }
            (0, _) => {
                let _ = cpu::inl(port);
            }
            (_, 0) => cpu::outb(port, v as u8),
            (_, 1) => cpu::outw(port, v as u16),
            _ => cpu::outl(port, v as u32),
        }
    }

    /// Puts the UART back to 8N1, no loopback, no divisor latch, so the report reaches hv.
    fn restore_uart() {
        cpu::outb(CONSOLE_PORT + 4, 0x03); // MCR: DTR, RTS, loopback off
        hvlab_guest_rt::console::init();
    }

    // ---- ATA ----

    const ATA_COMMANDS: &[u8] = &[
        0x20, 0x24, 0x29, 0x30, 0x34, 0x39, 0xc4, 0xc5, 0xc6, 0xe7, 0xea, 0xec, 0x00, 0x08, 0x90,
        0xef, 0xf8,
    ];

    /// Bounded wait for BSY to clear; the status then, or `None` (counted) if it never did.
    fn ata_wait() -> Option<u8> {
        for _ in 0..ATA_POLLS {
            let s = cpu::inb(0x1f7);
            if s & 0x80 == 0 {
                return Some(s);
            }
        }
        add(C::ata_timeouts, 1);
        None
    }

    fn ata_op(r: &mut Rng) {
        add(C::ata_ops, 1);
        match r.below(4) {
            0 | 1 => {
                // A command with random registers, then a random amount of data.
                for reg in 0x1f1..=0x1f6u16 {
                    if r.chance(800) {
                        let v = if reg == 0x1f6 && r.chance(700) {
                            0xe0 | (r.next() as u8 & 0x0f)
                        } else {
                            r.next() as u8
                        };
                        cpu::outb(reg, v);
                    }
                }
                let cmd = if r.chance(850) {
                    ATA_COMMANDS[r.below(ATA_COMMANDS.len() as u64) as usize]
                } else {
                    r.next() as u8
                };
                cpu::outb(0x1f7, cmd);
                add(C::ata_commands, 1);
                let Some(s) = ata_wait() else { return };
                if s & 0x01 != 0 {
                    add(C::ata_err, 1);
                    let _ = cpu::inb(0x1f1);
                    return;
                }
                if s & 0x08 == 0 {
                    return; // no data phase
                }
                let words = r.below(600);
                let write = r.chance(500);
                for _ in 0..words {
                    if write {
                        cpu::outw(0x1f0, r.next() as u16);
                    } else {
                        let _ = cpu::inw(0x1f0);
                    }
                }
                add(C::ata_drq_words, words);
                if let Some(s) = ata_wait() {
                    if s & 0x01 != 0 {
                        add(C::ata_err, 1);
                    }
                }
            }
            2 => {
                // Software reset (or any control value), then wait for BSY to clear.
                let v = if r.chance(700) { 0x04 } else { r.next() as u8 };
                cpu::outb(0x3f6, v);
                cpu::outb(0x3f6, if r.chance(700) { 0x02 } else { r.next() as u8 });
                let _ = ata_wait();
            }
            _ => {
                // Data-register traffic with no command, in random widths.
                for _ in 0..r.below(64) {
                    match r.below(4) {
                        0 => cpu::outw(0x1f0, r.next() as u16),
                        1 => cpu::outl(0x1f0, r.next() as u32),
                        2 => {
                            let _ = cpu::inw(0x1f0);
                        }
                        _ => {
                            let _ = cpu::inl(0x1f0);
                        }
                    }
                }
            }
        }
    }

    // ---- virtio ----

    /// Where the guest last put a queue's rings, and its indices.
    #[derive(Clone, Copy, Default)]
    struct Q {
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        avail_idx: u16,
        used_seen: u16,
    }

    #[derive(Clone, Copy)]
    struct VDev {
        base: u64,
        blk: bool,
        q: [Q; 2],
    }

    impl VDev {
        fn read(&self, off: u64) -> u32 {
            cpu::mmio_read32(self.base + off)
        }
        fn write(&self, off: u64, v: u32) {
            cpu::mmio_write32(self.base + off, v)
        }
        fn write_addr(&self, reg: u64, a: u64) {
            self.write(reg, a as u32);
            self.write(reg + 4, (a >> 32) as u32);
        }

        /// Picks ring places (overlapping each other sometimes) and a size, and tells the
        /// device, then sets the queue ready (or not).
        fn place(&mut self, env: &Env, r: &mut Rng, qi: usize) {
            self.write(REG_QUEUE_SEL, qi as u32);
            let max = self.read(REG_QUEUE_NUM_MAX);
            let size = match r.below(8) {
                0 => 0,
                1 => max.wrapping_add(1),
                2 => r.next() as u32,
                3 => 3,
                _ => 1 << r.below(9),
            };
            let q = &mut self.q[qi % 2];
            q.size = size as u16;
            q.desc = env.target(r);
            q.avail = if r.chance(200) {
                q.desc + r.below(64)
            } else {
                env.target(r)
            };
            q.used = if r.chance(200) {
                q.avail + r.below(64)
            } else {
                env.target(r)
            };
            q.avail_idx = 0;
            q.used_seen = 0;
            let q = *q;
            self.write(REG_QUEUE_NUM, size);
            self.write_addr(REG_QUEUE_DESC_LOW, q.desc);
            self.write_addr(REG_QUEUE_DRIVER_LOW, q.avail);
            self.write_addr(REG_QUEUE_DEVICE_LOW, q.used);
            if r.chance(850) {
                self.write(REG_QUEUE_READY, 1);
            }
        }

        /// Reset, negotiation (sometimes refused, sometimes out of order), queue placement and
        /// DRIVER_OK (usually).
        fn init(&mut self, env: &Env, r: &mut Rng) {
            add(C::virtio_inits, 1);
            self.write(REG_STATUS, 0);
            self.write(REG_STATUS, S_ACKNOWLEDGE);
            self.write(REG_STATUS, S_ACKNOWLEDGE | S_DRIVER);
            self.write(REG_DEVICE_FEATURES_SEL, 0);
            let lo = self.read(REG_DEVICE_FEATURES);
            self.write(REG_DEVICE_FEATURES_SEL, 1);
            let hi = self.read(REG_DEVICE_FEATURES);
            let mut want = (u64::from(hi) << 32 | u64::from(lo)) & r.next();
            if r.chance(800) {
                want |= virtio::F_VERSION_1;
            }
            if r.chance(100) {
                want = r.next();
            }
            self.write(REG_DRIVER_FEATURES_SEL, 0);
            self.write(REG_DRIVER_FEATURES, want as u32);
            self.write(REG_DRIVER_FEATURES_SEL, 1);
            self.write(REG_DRIVER_FEATURES, (want >> 32) as u32);
            let s = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK;
            self.write(REG_STATUS, s);
            if self.read(REG_STATUS) & S_FEATURES_OK == 0 {
                add(C::virtio_refused, 1);
                if r.chance(700) {
                    return;
                }
            }
            let queues = if self.blk { 1 } else { 2 };
            for qi in 0..queues {
                self.place(env, r, qi);
            }
            if r.chance(900) {
                self.write(REG_STATUS, s | S_DRIVER_OK);
            }
        }

        /// Writes `n` random descriptors (mostly well-formed chains with a virtio-blk header),
        /// random avail entries, bumps the avail index (sometimes far), and notifies.
        fn submit(&mut self, env: &Env, r: &mut Rng, qi: usize) {
            let q = self.q[qi % 2];
            let size = u64::from(q.size.max(1));
            let n = 1 + r.below(8);
            let mut head = r.below(size) as u16;
            for _ in 0..n {
                let chain = 1 + r.below(4);
                let first = head;
                for k in 0..chain {
                    let i = head as u64 % size;
                    let last = k + 1 == chain;
                    let (addr, len, mut flags) = if k == 0 && self.blk {
                        let hdr = env.dma_slot(r, 16);
                        let t = [0u32, 1, 4, 8, r.next() as u32][r.below(5) as usize];
                        store(env, hdr, 4, u64::from(t));
                        store(env, hdr + 4, 4, 0);
                        let sector = match r.below(3) {
                            0 => r.below(64),
                            1 => r.next(),
                            _ => u64::MAX - r.below(4),
                        };
                        store(env, hdr + 8, 8, sector);
                        (hdr, 16, 0u16)
                    } else {
                        let a = env.target(r);
                        let len = match r.below(6) {
                            0 => 0,
                            1 => 1,
                            2 => 512,
                            3 => u64::from(u32::MAX),
                            4 => r.below(0x10000),
                            _ if a >= env.dma && a < env.ram_end => env.ram_end - a,
                            _ => 4096,
                        };
                        (a, len as u32, virtio::DESC_F_WRITE * r.below(2) as u16)
                    };
                    if !last {
                        flags |= virtio::DESC_F_NEXT;
                    }
                    if r.chance(100) {
                        flags = r.next() as u16 & 7;
                    }
                    let next = if r.chance(100) {
                        r.next() as u16
                    } else {
                        head.wrapping_add(1) % size as u16
                    };
                    let d = q.desc.wrapping_add(16 * i);
                    store(env, d, 8, addr);
                    store(env, d + 8, 4, u64::from(len));
                    store(env, d + 12, 2, u64::from(flags));
                    store(env, d + 14, 2, u64::from(next));
                    head = next;
                }
                let slot = q
                    .avail
                    .wrapping_add(4 + 2 * (u64::from(q.avail_idx) % size));
                let h = if r.chance(50) { r.next() as u16 } else { first };
                store(env, slot, 2, u64::from(h));
                self.q[qi % 2].avail_idx = self.q[qi % 2].avail_idx.wrapping_add(1);
            }
            let idx = if r.chance(100) {
                r.next() as u16
            } else {
                self.q[qi % 2].avail_idx
            };
            store(env, q.avail.wrapping_add(2), 2, u64::from(idx));
            self.notify(r, qi);
        }

        fn notify(&self, r: &mut Rng, qi: usize) {
            let v = if r.chance(50) {
                r.next() as u32
            } else {
                qi as u32
            };
            self.write(REG_QUEUE_NOTIFY, v);
            add(C::virtio_notifies, 1);
        }

        /// Bounded wait for used entries; then a look at NEEDS_RESET.
        fn poll(&mut self, env: &Env, qi: usize) {
            let q = &mut self.q[qi % 2];
            if let Some(used) = q.used.checked_add(2).filter(|&a| env.writable(a, 2)) {
                for _ in 0..USED_POLLS {
                    let idx = raw_read(used, 2) as u16;
                    if idx != q.used_seen {
                        // Counts moves of the index, not entries: a hostile ring's index
                        // jumps anywhere.
                        add(C::virtio_used, 1);
                        q.used_seen = idx;
                        break;
                    }
                    cpu::pause();
                }
            }
            if self.read(REG_STATUS) & S_NEEDS_RESET != 0 {
                add(C::virtio_needs_reset, 1);
            }
        }
    }

    fn virtio_op(env: &Env, r: &mut Rng, devs: &mut [Option<VDev>; 2]) {
        let mut pick = r.below(2) as usize;
        if devs[pick].is_none() {
            pick = 1 - pick;
        }
        let Some(d) = devs[pick].as_mut() else {
            return;
        };
        add(C::virtio_ops, 1);
        let qi = if d.blk { 0 } else { r.below(2) as usize };
        match r.below(10) {
            0 => d.init(env, r),
            1 => {
                // Re-ready: not ready, new rings (often at the end of RAM), ready, more work.
                d.write(REG_QUEUE_SEL, qi as u32);
                d.write(REG_QUEUE_READY, 0);
                d.place(env, r, qi);
                d.submit(env, r, qi);
                d.poll(env, qi);
            }
            2 => {
                // Reset mid-flight.
                d.submit(env, r, qi);
                d.write(REG_STATUS, 0);
                d.poll(env, qi);
            }
            3 => {
                // QUEUE_NUM change while the queue runs.
                d.write(REG_QUEUE_SEL, qi as u32);
                d.write(REG_QUEUE_NUM, r.next() as u32 & 0x3ff);
                d.notify(r, qi);
                d.poll(env, qi);
            }
            4 => {
                // Renegotiation after DRIVER_OK.
                d.write(REG_DRIVER_FEATURES_SEL, r.below(3) as u32);
                d.write(REG_DRIVER_FEATURES, r.next() as u32);
                let s = d.read(REG_STATUS);
                d.write(REG_STATUS, s | S_FEATURES_OK);
                if r.chance(300) {
                    d.write(REG_STATUS, r.next() as u32 & 0xff);
                }
            }
            5 => mmio_poke(env, r, d.base, 0x200, true),
            6 => {
                // Device config space, any width.
                let off = REG_CONFIG + r.below(0x100);
                if r.chance(500) {
                    let _ = raw_read(d.base + off, 1);
                } else {
                    raw_write(d.base + off, 1, r.next());
                }
            }
            _ => {
                d.submit(env, r, qi);
                d.poll(env, qi);
            }
        }
    }

    // ---- protocol ports ----

    fn proto_op(r: &mut Rng) {
        add(C::proto_ops, 1);
        match r.below(4) {
            0 | 1 => {
                // Phase markers out of order, unmatched ends, nested begins (never phase 1,
                // chaos's own).
                // Markers are costly for hv (a counter snapshot each): a few per operation.
                for _ in 0..1 + r.below(4) {
                    let id = match r.below(3) {
                        0 => 2 + r.below(30) as u32,
                        1 => r.next() as u32 & !PHASE_END,
                        _ => 2 + r.below(4) as u32,
                    };
                    let v = if r.chance(500) { id | PHASE_END } else { id };
                    cpu::outl(PHASE_PORT, v);
                    add(C::markers, 1);
                }
            }
            2 => {
                // A few result lines (occasionally a flood): fake phases, skips, malformed.
                let n = if r.chance(10) {
                    20 + r.below(40)
                } else {
                    1 + r.below(3)
                };
                restore_uart();
                for _ in 0..n {
                    fake_line(r);
                }
                add(C::fake_lines, n);
            }
            _ => {
                // A huge histogram for a phase id that may or may not exist.
                restore_uart();
                let id = 1 + r.below(8);
                let buckets = if r.chance(100) { 256 } else { 1 + r.below(24) };
                let mut c = hvlab_guest_rt::console::Console::lock();
                use core::fmt::Write as _;
                let _ = write!(c, "HVLAB rec=hist id={id} unit=tsc b=");
                for b in 0..buckets {
                    let count = if r.chance(500) {
                        u64::from(u32::MAX)
                    } else {
                        r.next() >> r.below(64)
                    };
                    let sep = if b == 0 { "" } else { "," };
                    let _ = write!(c, "{sep}{}:{count}", r.below(300));
                }
                let _ = c.write_str("\n");
                add(C::fake_lines, 1);
            }
        }
    }

    fn fake_line(r: &mut Rng) {
        let id = r.next() as u32;
        match r.below(6) {
            0 => println!(
                "HVLAB rec=phase id={} name=chaos-fake ops={} tsc={}",
                id % 64,
                r.next(),
                r.next()
            ),
            1 => println!("HVLAB rec=skip name=chaos-fake-{} reason=chaos", id % 16),
            2 => println!("HVLAB rec=info chaos={id}"),
            3 => println!("HVLAB rec=phase id=x name= ops=-1 tsc=?"),
            4 => println!("HVLAB rec={id:x} ={id}= =="),
            _ => println!("HVLAB"),
        }
    }

    // ---- interrupts ----

    fn irq_op(r: &mut Rng, timer_left: &mut u64) {
        add(C::irq_ops, 1);
        let vector = FIRST_VECTOR + r.below(u64::from(LAST_VECTOR - FIRST_VECTOR) + 1) as u8;
        if r.chance(300) {
            // The APIC timer at a tiny period for the next few operations (KVM clamps it).
            apic::timer_periodic(vector, 1 + r.below(2000) as u32);
            *timer_left = 1 + r.below(32);
            add(C::timer_bursts, 1);
        } else {
            let n = 1 + r.below(32);
            for _ in 0..n {
                apic::self_ipi(vector);
            }
            add(C::self_ipis, n);
        }
    }

    // ---- SynIC, synthetic timers and the VMBus-style channel ----

    /// Reads of a reply slot before giving up on it (hv may answer from another thread).
    const REPLY_POLLS: u32 = 64;
    /// Channel ids remembered from an OFFERS reply.
    const MAX_CHANNELS: usize = 8;
    /// The SIMP slot of management replies and the SIEFP flags of channel signals.
    const SINT_MGMT: u32 = vb::SINT_MANAGEMENT;
    const SINT_CHAN: u32 = vb::SINT_CHANNEL;

    /// A page in the image that hv reads hypercall input from: never a device target, so
    /// nothing but chaos's own stores changes it between building the input and the call.
    #[repr(C, align(4096))]
    struct InputPage(UnsafeCell<[u64; 512]>);
    // SAFETY: only the BSP's chaos loop touches these pages (volatile stores), hv reads them.
    unsafe impl Sync for InputPage {}
    static INPUT: InputPage = InputPage(UnsafeCell::new([0; 512]));
    /// Input at an unaligned address lands in this page of 0xa5 bytes (connection 0xa5a5a5a5).
    static JUNK: InputPage = InputPage(UnsafeCell::new([0xa5a5_a5a5_a5a5_a5a5; 512]));

    fn input_set(words: &[u64]) {
        let base = INPUT.0.get() as *mut u64;
        for (i, w) in words.iter().take(512).enumerate() {
            // SAFETY: inside the static page (i < 512); see the Sync impl.
            unsafe { write_volatile(base.add(i), *w) };
        }
    }

    /// What chaos knows about the SynIC and the channel it abuses.
    struct Syn {
        stimer: bool,
        direct: bool,
        /// The enabled SIMP / SIEFP page chaos last set where it may read and write (the DMA
        /// area or page 0), for polling replies; `None` when elsewhere or disabled.
        simp: Option<u64>,
        siefp: Option<u64>,
        channels: [u32; MAX_CHANNELS],
        offered: usize,
        /// The last ring pair chaos opened in the DMA area: GPA, out pages, in pages.
        ring: Option<(u64, u64, u64)>,
        /// Operations until armed timers are stopped (0: none armed).
        timer_left: u64,
    }

    fn msr_write(msr: u32, v: u64) -> bool {
        add(C::msr_writes, 1);
        let ok = fixup::wrmsr_safe(msr, v).is_ok();
        if !ok {
            add(C::msr_refused, 1);
        }
        ok
    }

    fn msr_read(msr: u32) -> Option<u64> {
        add(C::msr_reads, 1);
        let v = fixup::rdmsr_safe(msr).ok();
        if v.is_none() {
            add(C::msr_refused, 1);
        }
        v
    }

    /// A vector chaos has a handler for (so a SINT or direct timer never hits an exception
    /// gate or an unregistered vector).
    fn safe_vector(r: &mut Rng) -> u64 {
        u64::from(FIRST_VECTOR) + r.below(u64::from(LAST_VECTOR - FIRST_VECTOR) + 1)
    }

    /// Where a SynIC page may go: the DMA area (mostly), page 0, past RAM, the MMIO window,
    /// above 4 GiB. Never the image (enabling a page makes hv clear it).
    fn page_target(env: &Env, r: &mut Rng) -> u64 {
        match r.below(8) {
            0..=3 => env.dma + r.below(DMA_BYTES / 4096) * 4096,
            4 => 0,
            5 => env.ram_end + r.below(((MMIO_WINDOW_BASE - env.ram_end) / 4096).max(1)) * 4096,
            6 => MMIO_WINDOW_BASE + r.below(0x4000_0000 / 4096) * 4096,
            _ => ((1 << 32) + r.below(1 << 40)) & !0xfff,
        }
    }

    /// Where a ring pair may go: the DMA area (any page counts: a pair that does not fit ends
    /// past RAM, which hv refuses), sometimes unaligned, or outside RAM. Never page 0 or the
    /// image.
    fn ring_target(env: &Env, r: &mut Rng) -> (u64, u64, u64) {
        let pages = |r: &mut Rng| match r.below(8) {
            0 => 0,
            1 => 1,
            2 => r.next() & 0xffff_ffff,
            3 => 3 + r.below(8),
            _ => 2,
        };
        let (out, inp) = (pages(r), pages(r));
        let gpa = match r.below(10) {
            0..=5 => {
                let total = (out + inp).min(DMA_BYTES / 4096);
                let mut g = env.dma + r.below(DMA_BYTES / 4096 - total + 1) * 4096;
                if r.chance(100) {
                    g += 8 * r.below(512);
                }
                g
            }
            6 => env.ram_end - 4096 * (1 + r.below(3)),
            7 => env.ram_end + r.below(0x10_0000) * 4096,
            8 => MMIO_WINDOW_BASE + r.below(0x4000_0000 / 4096) * 4096,
            _ => u64::MAX - r.below(0x10_0000),
        };
        (gpa, out, inp)
    }

    /// A channel id: one hv offered (mostly, once known), a small one, or any.
    fn channel(r: &mut Rng, s: &Syn) -> u32 {
        if s.offered > 0 && r.chance(700) {
            s.channels[r.below(s.offered as u64) as usize]
        } else if r.chance(900) {
            r.below(8) as u32
        } else {
            r.next() as u32 & 0xffff
        }
    }

    /// A connection id: the management connection, hv's loopback message and event
    /// connections (for VPs that exist and do not), channels, and nonsense.
    fn connection(r: &mut Rng, s: &Syn) -> u32 {
        match r.below(8) {
            0 => vb::CONN_MANAGEMENT,
            1 => tlfs::CONN_MSG_BASE + r.below(32) as u32,
            2 => tlfs::CONN_EVENT_BASE + r.below(32) as u32,
            3 => vb::CONN_CHANNEL_BASE + channel(r, s),
            4 => vb::CONN_CHANNEL_BASE + 0x1_0000 + r.below(16) as u32,
            5 => r.below(8) as u32,
            6 => tlfs::CONN_MSG_BASE + r.next() as u32 % 0x3_0000,
            _ => r.next() as u32,
        }
    }

    /// The GPA of a slow call's input: the input page (mostly), an unaligned address in the
    /// junk page, across the end of RAM, past RAM, the MMIO window, above 4 GiB, wrapping.
    fn input_gpa(env: &Env, r: &mut Rng) -> u64 {
        match r.below(16) {
            0 => JUNK.0.get() as u64 + 1 + r.below(7),
            1 => env.ram_end - 1 - r.below(255),
            2 => env.ram_end + r.below(0x10_0000),
            3 => MMIO_WINDOW_BASE + r.below(0x4000_0000),
            4 => (1 << 32) + r.below(1 << 40),
            5 => u64::MAX - r.below(0x1000),
            _ => INPUT.0.get() as u64,
        }
    }

    /// One hypercall (sometimes with rep count or variable header bits set); its status.
    fn hv_call(r: &mut Rng, code: u16, fast: bool, p1: u64, p2: u64) -> u16 {
        let (var, reps) = if r.chance(30) {
            (r.below(4) as u16, r.below(4) as u16)
        } else {
            (0, 0)
        };
        let input = tlfs::input(code, fast, var, reps, 0);
        let rax = if fast {
            hyperv::hypercall_fast(input, p1, p2)
        } else {
            hyperv::hypercall(input, p1, p2)
        };
        add(C::hv_calls, 1);
        let status = tlfs::status(rax);
        if status != tlfs::STATUS_SUCCESS {
            add(C::hv_call_errors, 1);
        }
        status
    }

    /// A payload word that hv may take for an address, a page number or a length, whatever a
    /// channel's protocol makes of it: a DMA address, a number below 64, or any value with bit
    /// 31 of both halves set. Neither it nor either half, as an address or as a page number,
    /// lands in the image.
    fn payload_word(env: &Env, r: &mut Rng) -> u64 {
        match r.below(3) {
            0 => env.dma + r.below(DMA_BYTES),
            1 => r.below(64),
            _ => r.next() | 0x8000_0000_8000_0000,
        }
    }

    /// HvCallPostMessage with a message built in the input page (header: connection, type,
    /// size; then 240 payload bytes). A management OPEN always names a [`ring_target`].
    fn post(env: &Env, r: &mut Rng, conn: u32, kind: u32, size: u32, payload: &[u64]) -> u16 {
        let mut w = [0u64; 32];
        w[0] = u64::from(conn);
        if r.chance(30) {
            w[0] |= r.next() << 32; // reserved half
        }
        w[1] = u64::from(kind) | u64::from(size) << 32;
        for (i, slot) in w[2..].iter_mut().enumerate() {
            *slot = payload
                .get(i)
                .copied()
                .unwrap_or_else(|| payload_word(env, r));
        }
        if w[2] as u32 == vb::OPEN {
            let (gpa, out, inp) = ring_target(env, r);
            w[3] = gpa;
            w[4] = out & 0xffff_ffff | (inp & 0xffff_ffff) << 32;
        }
        input_set(&w);
        let fast = r.chance(30);
        if fast {
            hv_call(r, tlfs::CALL_POST_MESSAGE, true, w[0], w[1])
        } else {
            let gpa = input_gpa(env, r);
            let out = env.target(r) * u64::from(r.chance(100));
            hv_call(r, tlfs::CALL_POST_MESSAGE, false, gpa, out)
        }
    }

    fn signal(env: &Env, r: &mut Rng, conn: u32) -> u16 {
        let flag = if r.chance(800) {
            r.below(4)
        } else {
            r.next() & 0xffff
        };
        let mut w = u64::from(conn) | flag << 32;
        if r.chance(30) {
            w |= r.next() << 48; // reserved bits
        }
        if r.chance(800) {
            hv_call(r, tlfs::CALL_SIGNAL_EVENT, true, w, 0)
        } else {
            input_set(&[w]);
            let gpa = input_gpa(env, r);
            hv_call(r, tlfs::CALL_SIGNAL_EVENT, false, gpa, 0)
        }
    }

    /// Bounded wait for a message in slot `sint` of chaos's SIMP page; consumes it (type
    /// NONE, then EOM when hv marked another pending) and returns its first payload words.
    fn take_message(s: &Syn, sint: u32) -> Option<[u64; MAX_CHANNELS + 1]> {
        let slot = s.simp? + u64::from(sint) * tlfs::MSG_SLOT_SIZE;
        for _ in 0..REPLY_POLLS {
            if raw_read(slot, 4) != 0 {
                let words = core::array::from_fn(|i| raw_read(slot + 16 + 8 * i as u64, 8));
                let pending = raw_read(slot + 5, 1) as u8 & tlfs::MSG_FLAG_PENDING != 0;
                raw_write(slot, 4, 0);
                if pending {
                    msr_write(tlfs::MSR_EOM, 0);
                }
                add(C::vmbus_replies, 1);
                return Some(words);
            }
            cpu::pause();
        }
        None
    }

    /// Stops every timer and masks every SINT: the end of a session, and of the run.
    fn synic_quiesce(s: &mut Syn) {
        for n in 0..4 {
            msr_write(tlfs::MSR_STIMER0_CONFIG + 2 * n, 0);
        }
        for n in 0..16 {
            msr_write(tlfs::MSR_SINT0 + n, tlfs::SINT_MASKED);
        }
        s.timer_left = 0;
    }

    /// A sane starting point (no random numbers drawn): SIMP and SIEFP in the first DMA
    /// pages, SynIC on, the management and channel SINTs unmasked.
    fn synic_setup(env: &Env, s: &mut Syn) {
        hyperv::enable_hypercalls();
        if msr_write(tlfs::MSR_SIMP, env.dma | tlfs::MSR_ENABLE) {
            s.simp = Some(env.dma);
        }
        if msr_write(tlfs::MSR_SIEFP, (env.dma + 0x1000) | tlfs::MSR_ENABLE) {
            s.siefp = Some(env.dma + 0x1000);
        }
        msr_write(tlfs::MSR_SCONTROL, 1);
        msr_write(tlfs::MSR_SINT0 + SINT_MGMT, u64::from(FIRST_VECTOR) + 0x30);
        msr_write(tlfs::MSR_SINT0 + SINT_CHAN, u64::from(FIRST_VECTOR) + 0x31);
    }

    fn synic_op(env: &Env, r: &mut Rng, s: &mut Syn) {
        add(C::synic_ops, 1);
        match r.below(12) {
            0 => {
                // SIMP or SIEFP: a page anywhere allowed, usually enabled, sometimes with
                // reserved bits (refused).
                let simp = r.chance(500);
                let mut v = page_target(env, r);
                if r.chance(900) {
                    v |= tlfs::MSR_ENABLE;
                }
                if r.chance(100) {
                    v |= (r.next() & 0xffe) | 2;
                }
                let msr = if simp {
                    tlfs::MSR_SIMP
                } else {
                    tlfs::MSR_SIEFP
                };
                if msr_write(msr, v) {
                    let page = v & !0xfff;
                    let known =
                        (v & tlfs::MSR_ENABLE != 0 && env.writable(page, 4096)).then_some(page);
                    if simp {
                        s.simp = known;
                    } else {
                        s.siefp = known;
                    }
                }
            }
            1 => {
                let v = match r.below(4) {
                    0 => 0,
                    1 | 2 => 1,
                    _ => r.next(),
                };
                msr_write(tlfs::MSR_SCONTROL, v);
            }
            2 | 3 => {
                // A SINT: handled vector, mask / auto-EOI / polling bits; sometimes reserved
                // bits or a vector below 16 unmasked (both refused), or a low vector masked.
                let mut v = safe_vector(r);
                if r.chance(300) {
                    v |= tlfs::SINT_MASKED;
                }
                if r.chance(200) {
                    v |= tlfs::SINT_AUTO_EOI;
                }
                if r.chance(50) {
                    v |= tlfs::SINT_POLLING;
                }
                match r.below(20) {
                    0 => v |= 1 << (19 + r.below(45)),
                    1 => v = r.below(16),
                    2 => v = r.below(32) | tlfs::SINT_MASKED,
                    _ => {}
                }
                msr_write(tlfs::MSR_SINT0 + r.below(16) as u32, v);
            }
            4 => {
                // EOM, sometimes after consuming a slot (or pretending to).
                if let (Some(simp), true) = (s.simp, r.chance(500)) {
                    store(env, simp + r.below(16) * tlfs::MSG_SLOT_SIZE, 4, 0);
                }
                msr_write(tlfs::MSR_EOM, r.next() * u64::from(r.chance(100)));
            }
            5 => {
                // Reads of every index in the SynIC/STIMER block (some do not exist); writes
                // only to the ones that do not (refused).
                let msr = tlfs::MSR_SCONTROL + r.below(0x40) as u32;
                let unhandled = (0x4000_0085..0x4000_0090).contains(&msr)
                    || (0x4000_00a0..0x4000_00b0).contains(&msr)
                    || msr >= 0x4000_00b8;
                if unhandled && r.chance(300) {
                    msr_write(msr, r.next());
                } else {
                    let _ = msr_read(msr);
                }
                if r.chance(100) {
                    msr_write(tlfs::MSR_SVERSION, r.next());
                }
            }
            6 | 7 => stimer_op(r, s),
            8 | 9 => {
                let conn = connection(r, s);
                let kind = match r.below(6) {
                    0 => 0,
                    1 | 2 => vb::MSG_TYPE,
                    3 => 0x8000_0000 | r.below(0x20) as u32,
                    4 => r.next() as u32,
                    _ => 2,
                };
                let size = match r.below(5) {
                    0 => 0,
                    1 => tlfs::MSG_PAYLOAD_MAX as u32,
                    2 => tlfs::MSG_PAYLOAD_MAX as u32 + 1 + r.below(32) as u32,
                    3 => r.next() as u32,
                    _ => r.below(tlfs::MSG_PAYLOAD_MAX as u64 + 1) as u32,
                };
                post(env, r, conn, kind, size, &[]);
                if r.chance(300) {
                    let sint = r.below(16) as u32;
                    let _ = take_message(s, sint);
                }
            }
            _ => {
                let conn = connection(r, s);
                signal(env, r, conn);
                if let (Some(siefp), true) = (s.siefp, r.chance(300)) {
                    // Take some flags, as a handler would.
                    store(env, siefp + r.below(16) * 256 + 8 * r.below(32), 8, 0);
                }
            }
        }
    }

    /// STIMER n: COUNT and CONFIG in either order, tiny periods, one-shot times near now or
    /// past, direct mode with a handled vector or message mode into any SINT; sometimes
    /// reserved bits. The timers stop again within a few operations.
    fn stimer_op(r: &mut Rng, s: &mut Syn) {
        // Without hv-stimer the MSRs are refused: try now and then.
        if !s.stimer && r.chance(800) {
            return;
        }
        let n = r.below(4) as u32;
        let config = tlfs::MSR_STIMER0_CONFIG + 2 * n;
        let now = hyperv::reference_time().unwrap_or(0);
        let count = match r.below(7) {
            0 => 0,
            1..=3 => 1 + r.below(2000),
            4 => now + r.below(2000),
            5 => now.saturating_sub(r.below(100_000)),
            _ => r.next(),
        };
        let mut c = 0;
        for (bit, per_mille) in [
            (tlfs::STIMER_ENABLE, 900),
            (tlfs::STIMER_PERIODIC, 600),
            (tlfs::STIMER_LAZY, 100),
            (tlfs::STIMER_AUTO_ENABLE, 300),
        ] {
            if r.chance(per_mille) {
                c |= bit;
            }
        }
        // Direct mode also when the host does not offer it (refused then).
        if r.chance(if s.direct { 400 } else { 50 }) {
            c |= tlfs::STIMER_DIRECT | safe_vector(r) << 4;
        } else {
            c |= r.below(16) << 16;
        }
        if r.chance(50) {
            c |= 1 << (20 + r.below(44));
        }
        if r.chance(500) {
            msr_write(config + 1, count);
            msr_write(config, c);
        } else {
            msr_write(config, c);
            msr_write(config + 1, count);
        }
        if r.chance(200) {
            let _ = msr_read(config + r.below(2) as u32);
        }
        add(C::stimer_arms, 1);
        s.timer_left = s.timer_left.max(1 + r.below(8));
    }

    fn vmbus_op(env: &Env, r: &mut Rng, s: &mut Syn) {
        add(C::vmbus_ops, 1);
        match r.below(9) {
            0 => {
                // Offers; remember the channel ids hv names (never judged).
                let size = if r.chance(900) { 4 } else { r.below(64) as u32 };
                post(
                    env,
                    r,
                    vb::CONN_MANAGEMENT,
                    vb::MSG_TYPE,
                    size,
                    &[u64::from(vb::REQUEST_OFFERS)],
                );
                if let Some(w) = take_message(s, SINT_MGMT) {
                    if w[0] as u32 == vb::OFFERS {
                        let count = ((w[0] >> 32) as usize).min(MAX_CHANNELS);
                        for i in 0..count {
                            s.channels[i] = w[1 + i] as u32;
                        }
                        s.offered = s.offered.max(count);
                        add(C::vmbus_offers, 1);
                    }
                }
            }
            1 | 2 => {
                // Open a channel (post() puts the rings at a ring_target).
                let ch = channel(r, s);
                let size = if r.chance(900) {
                    24
                } else {
                    r.below(64) as u32
                };
                let kind = u64::from(vb::OPEN) | u64::from(ch) << 32;
                post(env, r, vb::CONN_MANAGEMENT, vb::MSG_TYPE, size, &[kind]);
                let w = INPUT.0.get() as *const u64;
                // SAFETY: inside the static input page; post() just wrote it.
                let (gpa, pages) = unsafe { (read_volatile(w.add(3)), read_volatile(w.add(4))) };
                let (out, inp) = (pages & 0xffff_ffff, pages >> 32);
                if gpa >= env.dma && gpa < env.ram_end && out > 0 {
                    s.ring = Some((gpa & !0xfff, out, inp));
                }
                add(C::vmbus_opens, 1);
                let _ = take_message(s, SINT_MGMT);
            }
            3 | 4 => ring_poke(env, r, s),
            5 => ring_packets(env, r, s),
            6 | 7 => {
                let ch = channel(r, s);
                signal(env, r, vb::CONN_CHANNEL_BASE + ch);
            }
            _ => {
                // Any management message: unknown kinds, short and long sizes, odd types.
                let kind = match r.below(4) {
                    0 => r.below(16),
                    1 => u64::from(vb::REQUEST_OFFERS),
                    _ => r.next() & 0xffff_ffff,
                } | r.next() << 32;
                let size = r.below(260) as u32;
                let ty = if r.chance(800) {
                    vb::MSG_TYPE
                } else {
                    r.next() as u32
                };
                post(env, r, vb::CONN_MANAGEMENT, ty, size, &[kind]);
                let _ = take_message(s, SINT_MGMT);
            }
        }
    }

    /// The (GPA, pages) of one ring of the last DMA pair: the guest's (out) or hv's (in).
    fn pick_ring(r: &mut Rng, s: &Syn) -> Option<(u64, u64)> {
        let (gpa, out, inp) = s.ring?;
        Some(if r.chance(500) {
            (gpa, out)
        } else {
            (gpa + out * 4096, inp)
        })
    }

    /// Random values in a ring's control page (indices, interrupt mask, pending send size)
    /// and data area. Stores outside the DMA area are dropped by `store`.
    fn ring_poke(env: &Env, r: &mut Rng, s: &Syn) {
        let Some((ring, pages)) = pick_ring(r, s) else {
            return;
        };
        let data = pages.saturating_sub(1) * 4096;
        for _ in 0..1 + r.below(8) {
            if r.chance(600) {
                let v = match r.below(5) {
                    0 => 0,
                    1 => data,
                    2 => data.wrapping_sub(8),
                    3 => 8 * r.below(512) + r.below(2) * 4,
                    _ => r.next(),
                };
                store(env, ring + 4 * r.below(4), 4, v);
            } else {
                let at = ring + 4096 + r.below(data.max(8)) & !7;
                store(env, at, 8, payload_word(env, r));
            }
            add(C::vmbus_pokes, 1);
        }
        if r.chance(500) {
            let ch = channel(r, s);
            signal(env, r, vb::CONN_CHANNEL_BASE + ch);
        }
    }

    /// Packets written at the guest ring's write index (mostly well framed, sometimes with a
    /// bad offset or length), the write index advanced (sometimes wrongly), then a signal.
    fn ring_packets(env: &Env, r: &mut Rng, s: &Syn) {
        let Some((gpa, out, _)) = s.ring else { return };
        let size = out.saturating_sub(1) * 4096;
        if size == 0 || !env.writable(gpa, 4096) {
            return;
        }
        let mut w = raw_read(gpa, 4);
        for _ in 0..1 + r.below(4) {
            let words = 1 + r.below(8);
            let len = 16 + 8 * words;
            let kind = if r.chance(900) {
                u64::from(vb::PACKET_DATA)
            } else {
                r.next() & 0xffff
            };
            let offset8 = if r.chance(900) { 2 } else { r.next() & 0xffff };
            let len8 = if r.chance(900) {
                len / 8
            } else {
                r.next() & 0xffff
            };
            let at = |k: u64| gpa + 4096 + (w + k) % size;
            store(env, at(0), 8, kind | offset8 << 16 | len8 << 32);
            store(env, at(8), 8, r.next());
            for k in 0..words {
                store(env, at(16 + 8 * k), 8, payload_word(env, r));
            }
            store(env, at(len), 8, w << 32);
            w = (w + len + 8) % size;
            add(C::vmbus_packets, 1);
        }
        if r.chance(100) {
            w = r.next() & 0xffff_ffff;
        }
        store(env, gpa, 4, w);
        let ch = channel(r, s);
        signal(env, r, vb::CONN_CHANNEL_BASE + ch);
        if r.chance(300) {
            let _ = take_message(s, SINT_MGMT);
        }
    }

    // ---- setup and the main loop ----

    /// RAM size from the PVH memory map hv writes (entry 0 at START_INFO_ADDR + 0x100).
    fn ram_end() -> Option<u64> {
        // SAFETY: the start info page is RAM below the image; hv wrote it and nothing reuses
        // it. Reads only.
        let (magic, map, entries) = unsafe {
            (
                read_volatile(START_INFO_ADDR as *const u32),
                read_volatile((START_INFO_ADDR + 40) as *const u64),
                read_volatile((START_INFO_ADDR + 48) as *const u32),
            )
        };
        if magic != 0x336e_c578 || entries == 0 || map == 0 || map > 0x10_0000 {
            return None;
        }
        // SAFETY: `map` is below 1 MiB (checked), in RAM; entry 0 is {addr, size, type}.
        let (addr, size) = unsafe {
            (
                read_volatile(map as *const u64),
                read_volatile((map + 8) as *const u64),
            )
        };
        (addr == 0 && size <= MMIO_WINDOW_BASE).then_some(size)
    }

    fn parse_mix(s: &str) -> Result<u32, Fail> {
        if s == "all" {
            return Ok(u32::MAX);
        }
        let mut mask = 0;
        for w in s.split([',', '+']) {
            let i = KINDS
                .iter()
                .position(|k| *k == w)
                .ok_or(Fail::BadArg("mix"))?;
            mask |= 1 << i;
        }
        Ok(mask)
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let seed = ctx.args.u64_or("seed", 1)?;
        let ops = ctx.args.u64_or("ops", 1000)?;
        let fault = ctx.args.u64_or("fault", 5)?;
        let exit_ppm = ctx.args.u64_or("exit", 250)?;
        let mask = parse_mix(ctx.args.str_or("mix", "all"))?;
        let ram_end = ram_end().ok_or(Fail::Unsupported("no PVH memory map (hv only)"))?;
        if ram_end < 16 << 20 {
            return Err(Fail::Unsupported("chaos needs at least 16 MiB of RAM"));
        }
        let env = Env {
            ram_end,
            dma: ram_end - DMA_BYTES,
            ata: ctx.args.str_or("blk", "none") == "ata",
            blk: (ctx.args.str_or("blk", "none") == "virtio")
                .then(|| ctx.args.u64_or("blk_mmio", 0))
                .transpose()?
                .filter(|&b| b != 0),
            con: (ctx.args.str_or("con", "none") == "virtio")
                .then(|| ctx.args.u64_or("con_mmio", 0))
                .transpose()?
                .filter(|&b| b != 0),
        };
        let mut devs = [
            env.blk.map(|base| VDev {
                base,
                blk: true,
                q: [Q::default(); 2],
            }),
            env.con.map(|base| VDev {
                base,
                blk: false,
                q: [Q::default(); 2],
            }),
        ];
        // Weights per kind (port, mmio, virtio, ata, proto, irq, mem, user, synic, vmbus);
        // absent devices and kinds outside `mix` get none. Without the SynIC its kinds get
        // none either, so the other kinds' streams stay what they were.
        let mut weights = [20u64, 15, 25, 15, 3, 5, 12, 5, 15, 12];
        if devs.iter().all(Option::is_none) {
            weights[2] = 0;
        }
        let hvinfo = hyperv::detect().unwrap_or_default();
        let synic = hvinfo.privileges & tlfs::PRIV_SYNIC_MSRS != 0;
        if !synic {
            weights[8] = 0;
            weights[9] = 0;
        }
        if !env.ata {
            weights[3] = 0;
        }
        for (i, w) in weights.iter_mut().enumerate() {
            if mask & (1 << i) == 0 {
                *w = 0;
            }
        }
        let total: u64 = weights.iter().sum();
        for v in FIRST_VECTOR..=LAST_VECTOR {
            idt::register(v, on_irq);
        }
        // The PIC's ports get random writes (vector bases, masks); its output must not reach
        // the CPU, where a vector below 32 would look like an exception.
        apic::mask_lint();
        // After the registrations: init_this_cpu installs the kick gate.
        user::init_this_cpu(0);
        for page in [TEST_MMIO_BASE, env.blk.unwrap_or(0), env.con.unwrap_or(0)] {
            allow_user_mmio(page);
        }
        cpu::flush_tlb();
        let planned = planned_end(seed, ops, fault);
        let stop_at = match planned {
            Planned::Finish => ops,
            Planned::Ud { at } | Planned::Pf { at } | Planned::Triple { at } => at,
        };
        let mut r = Rng::new(seed);
        let mut timer_left = 0u64;
        let mut syn = Syn {
            stimer: hvinfo.privileges & tlfs::PRIV_SYNTIMER_MSRS != 0,
            direct: hvinfo.features_edx & tlfs::FEAT_STIMER_DIRECT != 0,
            simp: None,
            siefp: None,
            channels: [0; MAX_CHANNELS],
            offered: 0,
            ring: None,
            timer_left: 0,
        };
        let synic_used = synic && (weights[8] != 0 || weights[9] != 0);
        if synic_used {
            synic_setup(&env, &mut syn);
        }
        cpu::sti();
        let p = phase::begin("chaos");
        let mut done = 0;
        while done < stop_at {
            done += 1;
            if timer_left > 0 {
                timer_left -= 1;
                if timer_left == 0 {
                    apic::timer_stop();
                }
            }
            if syn.timer_left > 0 {
                syn.timer_left -= 1;
                if syn.timer_left == 0 {
                    for n in 0..4 {
                        msr_write(tlfs::MSR_STIMER0_CONFIG + 2 * n, 0);
                    }
                }
            }
            if total == 0 {
                continue;
            }
            let mut pick = r.below(total);
            let mut kind = 0;
            while pick >= weights[kind] {
                pick -= weights[kind];
                kind += 1;
            }
            match kind {
                0 => port_op(&mut r, exit_ppm),
                1 => mmio_op(&env, &mut r),
                2 => virtio_op(&env, &mut r, &mut devs),
                3 => ata_op(&mut r),
                4 => proto_op(&mut r),
                5 => irq_op(&mut r, &mut timer_left),
                6 => mem_op(&env, &mut r),
                8 => synic_op(&env, &mut r, &mut syn),
                9 => vmbus_op(&env, &mut r, &mut syn),
                _ => {
                    if timer_left > 0 {
                        timer_left = 0;
                    }
                    user_session(&env, &mut r);
                }
            }
        }
        apic::timer_stop();
        if synic_used {
            synic_quiesce(&mut syn);
        }
        let f = p.end(done);
        restore_uart();
        let mut metrics = [("", 0u64); NAMES.len() + 3];
        metrics[0] = ("seed", seed);
        metrics[1] = ("planned_fault", u64::from(planned != Planned::Finish));
        for (i, name) in NAMES.iter().enumerate() {
            metrics[i + 2] = (*name, COUNTS[i].load(Ordering::Relaxed));
        }
        // Asked for (by `all` or by name) but not there: counted, not faked.
        metrics[NAMES.len() + 2] = ("synic_absent", u64::from(!synic && mask & (3 << 8) != 0));
        f.report(&metrics, None);
        match planned {
            Planned::Finish => Ok(()),
            Planned::Ud { .. } => {
                // SAFETY: a deliberate #UD, reported by the runtime's handler (status 3).
                unsafe { core::arch::asm!("ud2") };
                Err(Fail::Check("ud2 did not fault"))
            }
            Planned::Pf { .. } => {
                // SAFETY: above the 4 GiB identity map and the test window: not present, so
                // this is a deliberate #PF (status 3).
                unsafe { read_volatile(0x10_0000_0000 as *const u64) };
                Err(Fail::Check("the load did not fault"))
            }
            Planned::Triple { .. } => {
                #[repr(C, packed)]
                struct Empty {
                    limit: u16,
                    base: u64,
                }
                let e = Empty { limit: 0, base: 0 };
                cpu::cli();
                // SAFETY: with an empty IDT, #UD escalates to a triple fault, which ends the
                // VM: deliberate.
                unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &e) };
                hv::exit(hvlab_protocol::status::EXCEPTION)
            }
        }
    }
}
