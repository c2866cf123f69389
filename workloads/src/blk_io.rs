//! blk-io: sequential or random reads and writes of `bs` bytes at queue depth `qd` through the
//! block device hv attached (ATA PIO, virtio-blk, or hv's VMBus-style block channel, named by
//! the `blk=` word hv adds), with
//! every byte verified. Each sector carries a header (seed, LBA) and a fill word derived from
//! both, so a later run (even through the other device kind) can verify what an earlier one
//! wrote (`prep=0`). One latency sample per operation (submit to completion seen).
//!
//! Phases: `blk-prep` (writes what a read phase will read, unless `prep=0`), the measured
//! `blk-read` / `blk-write` / `blk-mixed`, which hold the I/O and nothing else, and
//! `blk-verify`, which checks every byte: the data the measured reads left in memory when they
//! all fit in the buffer arena (`reread=0`, no I/O), else what it reads back (`reread=1`,
//! always after writes). Checking or filling 4 KiB is hundreds of guest instructions, which
//! an emulating host runs one by one, so inside the measured phase it would outweigh the I/O:
//! write buffers are filled before the phase too, when they all fit in the arena (else
//! `filled_in_phase=1`).
//! Metrics: bytes, interrupts, kicks (guest notifications), sectors. `how=` runs a
//! hostile-guest case instead.
//!
//! virtio-blk is where hv's `blk_mmio=`/`blk_irq=` words say, else the first block device
//! named by a `virtio_mmio.device=` word (QEMU's microvm); such a transport's interrupts are
//! acknowledged in the handler (`irq_ack=1` on the measured phase).
//!
//! I/O errors (virtio-blk IOERR/UNSUPP, ATA ERR) fail the run at once by default. With
//! `errors=count` the run goes on: each phase reports `io_errors=N`, the blocks of failed
//! requests are remembered and never checked (reads of them, and the verify phase, skip them:
//! `skipped=N`), and a failed FLUSH is `flush_errors=1` on the verify phase. The first errors
//! are printed as `blk-io: io error ...` lines with what the device returned. `hold=1` prints
//! `blk-io: flushed` after the final FLUSH completed and then halts until hv ends the run (a
//! crash test kills hv at that line).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "blk-io",
    summary: "block I/O through ATA PIO, virtio-blk or a VMBus-style channel: seq/rand, read/write/mixed, bs, qd; verified",
    params: &[
        Param {
            key: "rw",
            default: "read",
            help: "read | write | mixed",
        },
        Param {
            key: "pattern",
            default: "seq",
            help: "seq | rand",
        },
        Param {
            key: "bs",
            default: "4096",
            help: "bytes per I/O (multiple of 512)",
        },
        Param {
            key: "qd",
            default: "1",
            help: "requests in flight (virtio, vmbus; ATA is always 1)",
        },
        Param {
            key: "count",
            default: "32",
            help: "I/Os in the measured phase",
        },
        Param {
            key: "seed",
            default: "1",
            help: "data pattern and random-offset seed",
        },
        Param {
            key: "prep",
            default: "1",
            help: "write the blocks a read phase reads first",
        },
        Param {
            key: "flush",
            default: "1",
            help: "FLUSH after the write phase",
        },
        Param {
            key: "span",
            default: "8m",
            help: "bytes of the disk the I/Os fall in",
        },
        Param {
            key: "pio",
            default: "rep",
            help: "ATA data transfer: rep (string I/O) | loop (one access per word)",
        },
        Param {
            key: "width",
            default: "16",
            help: "ATA data register access width: 16 | 32",
        },
        Param {
            key: "multiple",
            default: "0",
            help: "ATA: sectors per DRQ block via READ/WRITE MULTIPLE (0: off)",
        },
        Param {
            key: "lba48",
            default: "0",
            help: "ATA: always use the EXT (LBA48) commands",
        },
        Param {
            key: "errors",
            default: "fail",
            help: "fail (at the first I/O error) | count (io_errors= per phase; verify skips failed blocks)",
        },
        Param {
            key: "hold",
            default: "0",
            help: "after the final FLUSH print `blk-io: flushed` and halt (crash tests)",
        },
        Param {
            key: "ram",
            default: "32m",
            help: "guest RAM bytes, for the hostile cases that aim just past it",
        },
        Param {
            key: "how",
            default: "normal",
            help: "normal | virtio: desc-index, loop, long, oob-addr, len-overflow, avail-idx, reready-end-of-ram (ram=RAM bytes, default 32m), reready-overlap, renegotiate | ata: past-end, out-of-order | vmbus: oob-buffer, bad-request, bad-index, oversized, bad-open, signal-storm (ram= as for virtio)",
        },
    ],
    min_vcpus: 1,
    devices: &["block"],
    // virtio completions arrive on IOAPIC pins, which only the full in-kernel irqchip has.
    host_features: &["full-irqchip"],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    use hvlab_guest_rt::drivers::ata::{self, Ata, AtaError, PioMode};
    use hvlab_guest_rt::drivers::ioapic;
    use hvlab_guest_rt::drivers::virtio::{
        self, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, F_EVENT_IDX, F_INDIRECT_DESC,
        F_VERSION_1, Mmio, RingMem, S_NEEDS_RESET, VirtQueue, blk,
    };
    use hvlab_guest_rt::phase::{self, Histogram};
    use hvlab_guest_rt::pv::{synic, vmbus};
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, println};
    use hvlab_protocol::hyperv as tlfs;
    use hvlab_protocol::vmbus::{self as vb, blk as vblk};

    const ARENA_BYTES: usize = 512 * 1024;
    const MAX_SLOTS: usize = 64;
    const VECTOR: u8 = 0x40;
    const MAGIC: u64 = 0x4856_4c42_0000_0000;

    #[repr(C, align(4096))]
    struct Arena([u8; ARENA_BYTES]);
    static mut ARENA: Arena = Arena([0; ARENA_BYTES]);
    static mut RING: RingMem = RingMem::new();
    static mut HDR: [[u64; 2]; MAX_SLOTS] = [[0; 2]; MAX_SLOTS];
    static mut STATUS: [u8; MAX_SLOTS] = [0; MAX_SLOTS];
    static mut INDIRECT: [[u64; 2]; 32] = [[0; 2]; 32];
    static IRQS: AtomicU64 = AtomicU64::new(0);
    /// I/O errors printed so far (the rest are only counted).
    static PRINTED: AtomicU64 = AtomicU64::new(0);
    const MAX_PRINTED: u64 = 16;
    /// Blocks (of `bs` bytes) a request failed on, with `errors=count`: never checked.
    const MAX_TRACKED_BLOCKS: u64 = 64 * 1024;
    static mut FAILED: [u64; (MAX_TRACKED_BLOCKS / 64) as usize] =
        [0; (MAX_TRACKED_BLOCKS / 64) as usize];

    fn mark_failed(block: u64) {
        if block < MAX_TRACKED_BLOCKS {
            // SAFETY: one vCPU runs the workload; the index is in bounds (checked above).
            unsafe {
                (*core::ptr::addr_of_mut!(FAILED))[(block / 64) as usize] |= 1 << (block % 64)
            };
        }
    }

    fn failed(block: u64) -> bool {
        block < MAX_TRACKED_BLOCKS
            // SAFETY: as for `mark_failed`, read-only.
            && unsafe { (*core::ptr::addr_of!(FAILED))[(block / 64) as usize] } & (1 << (block % 64)) != 0
    }

    fn ata_error_name(error: u8) -> &'static str {
        if error & ata::ERR_UNC != 0 {
            "UNC"
        } else if error & ata::ERR_ABRT != 0 {
            "ABRT"
        } else if error & ata::ERR_IDNF != 0 {
            "IDNF"
        } else {
            "other"
        }
    }

    /// Prints one I/O error (the first MAX_PRINTED of the run).
    fn print_error(args: core::fmt::Arguments) {
        if PRINTED.fetch_add(1, Ordering::Relaxed) < MAX_PRINTED {
            println!("blk-io: io error: {args}");
        }
    }

    /// Completion interrupts so far: the device's own vector, or the VMBus channel's SINT.
    fn irqs() -> u64 {
        IRQS.load(Ordering::Relaxed) + vmbus::channel_irqs()
    }

    /// A transport found on the command line holds its line until acknowledged; 0 = none.
    static ACK_BASE: AtomicU64 = AtomicU64::new(0);

    fn on_irq(_: u8) {
        IRQS.fetch_add(1, Ordering::Relaxed);
        let base = ACK_BASE.load(Ordering::Relaxed);
        if base != 0 {
            virtio::ack_interrupt(Mmio(base));
        }
    }

    fn arena(off: usize) -> *mut u8 {
        // SAFETY: only the address is taken; callers stay within ARENA_BYTES.
        unsafe { (core::ptr::addr_of_mut!(ARENA) as *mut u8).add(off) }
    }

    fn fill_word(lba: u64, seed: u64) -> u64 {
        (lba ^ (seed << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
    }

    /// Writes the pattern of `sectors` sectors starting at `lba` into `buf`.
    fn stamp(buf: *mut u8, lba: u64, sectors: u64, seed: u64) {
        for k in 0..sectors {
            // SAFETY: `buf` holds `sectors` sectors (arena slot).
            unsafe {
                let p = buf.add(k as usize * 512) as *mut u64;
                p.write(MAGIC ^ seed);
                p.add(1).write(lba + k);
                asm!("rep stosq", inout("rdi") p.add(2) => _, inout("rcx") 62u64 => _,
                     in("rax") fill_word(lba + k, seed), options(nostack, preserves_flags));
            }
        }
    }

    /// Checks the pattern; returns the first bad sector's LBA.
    fn check(buf: *const u8, lba: u64, sectors: u64, seed: u64) -> Result<(), u64> {
        for k in 0..sectors {
            let ok: u8;
            // SAFETY: as for `stamp`, read-only.
            unsafe {
                let p = buf.add(k as usize * 512) as *const u64;
                if p.read() != MAGIC ^ seed || p.add(1).read() != lba + k {
                    return Err(lba + k);
                }
                asm!("repe scasq", "sete {ok}", ok = out(reg_byte) ok,
                     inout("rdi") p.add(2) => _, inout("rcx") 62u64 => _,
                     in("rax") fill_word(lba + k, seed), options(nostack, readonly));
            }
            if ok == 0 {
                return Err(lba + k);
            }
        }
        Ok(())
    }

    #[derive(Clone, Copy)]
    struct Op {
        write: bool,
        lba: u64,
    }

    /// The measured phase's operations, generated before it begins (up to this many; a longer
    /// phase generates each batch as it goes, `planned=0`).
    const MAX_PLANNED: usize = 4096;
    static mut PLAN: [Op; MAX_PLANNED] = [Op {
        write: false,
        lba: 0,
    }; MAX_PLANNED];

    struct VBlk {
        dev: Mmio,
        q: VirtQueue,
        sectors: u64,
        poll: bool,
        kicks: u64,
        /// FLUSH negotiated (else the device writes through and T_FLUSH is not sent).
        flush: bool,
    }

    impl VBlk {
        fn open(ctx: &Ctx, queue: u16, indirect: bool) -> Result<VBlk, Fail> {
            let evidx = ctx.args.bool_or("evidx", true)?;
            let poll = ctx.args.bool_or("poll", false)?;
            let (dev, irq, ack) = match ctx.args.u64_or("blk_mmio", 0)? {
                0 => match virtio::find_on_cmdline(ctx.args.line(), blk::DEVICE_ID) {
                    Some((dev, irq)) => (dev, u64::from(irq), true),
                    None => {
                        return Err(Fail::Unsupported(
                            "virtio-blk: no blk_mmio= and no block device among virtio_mmio.device=",
                        ));
                    }
                },
                base => (Mmio(base), ctx.args.u64_or("blk_irq", 0)?, false),
            };
            if irq >= u64::from(ioapic::PINS) {
                return Err(Fail::Unsupported("virtio-blk IRQ beyond the IOAPIC's pins"));
            }
            ACK_BASE.store(if ack { dev.0 } else { 0 }, Ordering::Relaxed);
            // SAFETY: one driver instance per run owns the ring memory.
            let ring = unsafe { &mut *core::ptr::addr_of_mut!(RING) };
            let mut q = VirtQueue::new(0, queue, ring, false);
            let mut wanted = F_VERSION_1 | blk::F_FLUSH;
            if evidx {
                wanted |= F_EVENT_IDX;
            }
            if indirect {
                wanted |= F_INDIRECT_DESC;
            }
            let features = virtio::init(dev, blk::DEVICE_ID, wanted, &[&q])
                .map_err(|_| Fail::Unsupported("virtio-blk setup"))?;
            q.event_idx = features & F_EVENT_IDX != 0;
            let sectors = u64::from(dev.read(virtio::REG_CONFIG))
                | u64::from(dev.read(virtio::REG_CONFIG + 4)) << 32;
            idt::register(VECTOR, on_irq);
            ioapic::mask_pic();
            ioapic::route(irq as u8, VECTOR, apic::id());
            if poll {
                cpu::cli();
                if q.event_idx {
                    q.set_used_event(q.last_used.wrapping_add(0x7fff));
                } else {
                    q.set_no_interrupt(true);
                }
            }
            Ok(VBlk {
                dev,
                q,
                sectors,
                poll,
                kicks: 0,
                flush: features & blk::F_FLUSH != 0,
            })
        }

        fn submit(&mut self, slot: usize, kind: u32, sector: u64, buf: u64, len: u32) {
            let s = slot as u16 * 3;
            // SAFETY: slot < MAX_SLOTS; the device reads these only after `publish`.
            let (hdr, st) = unsafe {
                let h = &mut (*core::ptr::addr_of_mut!(HDR))[slot];
                h[0] = u64::from(kind);
                h[1] = sector;
                let st = &mut (*core::ptr::addr_of_mut!(STATUS))[slot];
                *st = 0xff;
                (h.as_ptr() as u64, st as *mut u8 as u64)
            };
            self.q.set_desc(s, hdr, 16, DESC_F_NEXT, s + 1);
            if len == 0 {
                self.q.set_desc(s + 1, st, 1, DESC_F_WRITE, 0);
            } else {
                let f = if kind == blk::T_IN { DESC_F_WRITE } else { 0 };
                self.q.set_desc(s + 1, buf, len, f | DESC_F_NEXT, s + 2);
                self.q.set_desc(s + 2, st, 1, DESC_F_WRITE, 0);
            }
            self.q.push(s);
        }

        fn kick(&mut self) {
            if self.q.kick(self.dev) {
                self.kicks += 1;
            }
        }

        /// Asks for one interrupt when `n` more requests have completed (EVENT_IDX); call
        /// before the kick so a fast device cannot complete before the driver asked.
        fn expect(&mut self, n: usize) {
            if !self.poll && self.q.event_idx {
                self.q
                    .set_used_event(self.q.last_used.wrapping_add(n as u16 - 1));
            }
        }

        /// Waits for `n` completions, recording each one's latency from `t0`. Returns the
        /// slots that completed with an error status (bit i: slot i).
        fn wait(&mut self, n: usize, t0: u64, hist: &mut Histogram) -> Result<u64, Fail> {
            let mut failed = 0u64;
            let mut got = 0;
            let mut idle = 0u64;
            while got < n {
                while let Some((id, _)) = self.q.pop_used() {
                    hist.record(cpu::rdtsc().wrapping_sub(t0));
                    let slot = id as usize / 3;
                    // SAFETY: the device wrote the status byte before the used entry.
                    let st = unsafe {
                        core::ptr::read_volatile(core::ptr::addr_of!(STATUS[slot % MAX_SLOTS]))
                    };
                    if st != blk::S_OK {
                        let what = match st {
                            blk::S_IOERR => "IOERR",
                            blk::S_UNSUPP => "UNSUPP",
                            _ => "unknown",
                        };
                        // SAFETY: slot < MAX_SLOTS; the header is ours again once used.
                        let sector = unsafe { (*core::ptr::addr_of!(HDR))[slot % MAX_SLOTS][1] };
                        print_error(format_args!(
                            "virtio-blk status={st} ({what}) sector={sector}"
                        ));
                        failed |= 1 << (slot % MAX_SLOTS);
                    }
                    got += 1;
                }
                if got == n {
                    break;
                }
                idle += 1;
                if self.poll {
                    cpu::pause();
                    if idle > 50_000_000 {
                        return Err(Fail::Check("virtio-blk: no completion (polling)"));
                    }
                } else {
                    cpu::cli();
                    if !self.q.has_used() {
                        cpu::sti_hlt();
                    } else {
                        cpu::sti();
                    }
                    if idle % 64 == 0 && self.dev.status() & S_NEEDS_RESET != 0 {
                        return Err(Fail::Check("virtio-blk: device needs reset"));
                    }
                }
            }
            Ok(failed)
        }
    }

    /// hv's VMBus-style block device (`hvlab_protocol::vmbus::blk`): one request packet per
    /// I/O (transaction id = its slot), one completion each; the doorbell is
    /// HvCallSignalEvent, the completion interrupt the channel's SynIC event.
    struct VmbBlk {
        ch: vmbus::Channel,
        sectors: u64,
        /// `poll=1`: the guest masks the channel's interrupt (hv then raises no event) and
        /// spins for completions.
        poll: bool,
    }

    /// The channel's rings: 3 pages guest -> hv, 3 pages hv -> guest.
    static VMB_RINGS: vmbus::RingPages<6> = vmbus::RingPages::new();
    /// How long a request may take before the run fails (TSC ticks).
    const VMB_LIMIT: u64 = 1 << 36;

    /// The little-endian u64 at the start of `b` (0 when shorter): one load.
    fn le64(b: &[u8]) -> u64 {
        b.get(..8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    }

    fn vmb_request(op: u32, sectors: u32, lba: u64, gpa: u64) -> [u8; vblk::REQUEST_BYTES] {
        let mut r = [0u8; vblk::REQUEST_BYTES];
        r[0..4].copy_from_slice(&op.to_le_bytes());
        r[4..8].copy_from_slice(&sectors.to_le_bytes());
        r[8..16].copy_from_slice(&lba.to_le_bytes());
        r[16..24].copy_from_slice(&gpa.to_le_bytes());
        r
    }

    impl VmbBlk {
        fn open(poll: bool) -> Result<VmbBlk, Fail> {
            let client = vmbus::Client::connect()
                .map_err(|_| Fail::Unsupported("vmbus block: the SynIC is not shown (hv-synic)"))?;
            let id = client
                .find(vb::DEVICE_BLOCK)
                .map_err(|_| Fail::Unsupported("vmbus block: no block channel offered"))?;
            // SAFETY: the static's pages belong to this channel from now on.
            let ch = unsafe { client.open(id, VMB_RINGS.as_ptr(), 3, 3) }
                .map_err(|_| Fail::Check("vmbus block: open refused"))?;
            ch.inr.set_interrupt_mask(poll);
            let mut d = VmbBlk {
                ch,
                sectors: 0,
                poll,
            };
            let mut h = Histogram::default();
            let info = d.submit_wait(1, |_| vmb_request(vblk::OP_INFO, 0, 0, 0), &mut h)?;
            if info.0 != 0 {
                return Err(Fail::Check("vmbus block: INFO failed"));
            }
            d.sectors = info.1;
            Ok(d)
        }

        /// Sends `n` requests, request `i` made by `req(i)` (transaction = i), then waits for
        /// all their completions, one latency sample each from the first send. Returns (failed
        /// mask, the last completion's value). Requests are made one at a time, into the ring:
        /// no array of them to fill (guest code is emulated instruction by instruction here).
        fn submit_wait(
            &mut self,
            n: usize,
            req: impl Fn(usize) -> [u8; vblk::REQUEST_BYTES],
            hist: &mut Histogram,
        ) -> Result<(u64, u64), Fail> {
            let t0 = cpu::rdtsc();
            for i in 0..n {
                if !self.ch.queue(
                    vb::PACKET_DATA,
                    vb::FLAG_COMPLETION_REQUESTED,
                    i as u64,
                    &req(i),
                ) {
                    return Err(Fail::Check("vmbus block: request ring full"));
                }
            }
            self.ch
                .kick()
                .map_err(|_| Fail::Check("vmbus block: hv refused the signal"))?;
            let (mut failed, mut value, mut got) = (0u64, 0u64, 0);
            let mut buf = [0u8; vblk::COMPLETION_BYTES];
            while got < n {
                let Some((kind, t, n)) = self.ch.recv(&mut buf) else {
                    if self.ch.closed() {
                        return Err(Fail::Check("vmbus block: hv closed the channel"));
                    }
                    let came = if self.poll {
                        self.ch.poll(VMB_LIMIT)
                    } else {
                        self.ch.wait(VMB_LIMIT)
                    };
                    if !came {
                        return Err(Fail::Check("vmbus block: no completion"));
                    }
                    continue;
                };
                hist.record(cpu::rdtsc().wrapping_sub(t0));
                got += 1;
                let status = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                if kind != vb::PACKET_COMPLETION || n < vblk::COMPLETION_BYTES || t >= 64 {
                    return Err(Fail::Check("vmbus block: malformed completion"));
                }
                value = le64(&buf[8..16]);
                if status != vblk::STATUS_OK {
                    let sector = le64(&req(t as usize)[8..16]);
                    print_error(format_args!("vmbus-blk status={status} sector={sector}"));
                    failed |= 1 << t;
                }
            }
            Ok((failed, value))
        }
    }

    enum Dev {
        Ata(Ata),
        Virtio(VBlk),
        Vmbus(VmbBlk),
    }

    impl Dev {
        fn sectors(&self) -> u64 {
            match self {
                Dev::Ata(a) => a.sectors,
                Dev::Virtio(v) => v.sectors,
                Dev::Vmbus(v) => v.sectors,
            }
        }

        fn kicks(&self) -> u64 {
            match self {
                Dev::Ata(_) => 0,
                Dev::Virtio(v) => v.kicks,
                Dev::Vmbus(v) => v.ch.signals,
            }
        }

        /// Runs `ops` (each `bs` bytes, buffer i at arena offset i*bs) as one batch. Returns
        /// the ops the device failed (bit i: ops[i]); errors of the transport are `Err`.
        fn batch(
            &mut self,
            ops: &[Op],
            bs: u64,
            slot0: usize,
            hist: &mut Histogram,
        ) -> Result<u64, Fail> {
            let n = bs / 512;
            match self {
                Dev::Ata(a) => {
                    let mut failed = 0u64;
                    for (i, op) in ops.iter().enumerate() {
                        let buf = arena((slot0 + i) * bs as usize);
                        let t0 = cpu::rdtsc();
                        // SAFETY: each op's slot in the arena holds `bs` bytes = `n` sectors.
                        let r = unsafe {
                            if op.write {
                                a.write(op.lba, n as u32, buf)
                            } else {
                                a.read(op.lba, n as u32, buf)
                            }
                        };
                        hist.record(cpu::rdtsc().wrapping_sub(t0));
                        match r {
                            Ok(()) => {}
                            Err(AtaError::Device { status, error }) => {
                                let what = ata_error_name(error);
                                let op_name = if op.write { "write" } else { "read" };
                                print_error(format_args!(
                                    "ATA {op_name} lba={} status={status:#x} error={error:#x} ({what})",
                                    op.lba
                                ));
                                failed |= 1 << (i % MAX_SLOTS);
                            }
                            Err(e) => {
                                println!("blk-io: ATA error {e:?} at lba {}", op.lba);
                                return Err(Fail::Check("ATA command failed"));
                            }
                        }
                    }
                    Ok(failed)
                }
                Dev::Vmbus(v) => {
                    let req = |i: usize| {
                        let op = &ops[i % ops.len()];
                        let kind = if op.write {
                            vblk::OP_WRITE
                        } else {
                            vblk::OP_READ
                        };
                        let buf = arena((slot0 + i) * bs as usize) as u64;
                        vmb_request(kind, n as u32, op.lba, buf)
                    };
                    v.submit_wait(ops.len(), req, hist).map(|r| r.0)
                }
                Dev::Virtio(v) => {
                    let t0 = cpu::rdtsc();
                    for (i, op) in ops.iter().enumerate() {
                        let kind = if op.write { blk::T_OUT } else { blk::T_IN };
                        let buf = arena((slot0 + i) * bs as usize) as u64;
                        v.submit(i, kind, op.lba, buf, bs as u32);
                    }
                    v.expect(ops.len());
                    v.kick();
                    v.wait(ops.len(), t0, hist)
                }
            }
        }

        /// FLUSH; `Ok(false)` when the device reported an error.
        fn flush(&mut self) -> Result<bool, Fail> {
            match self {
                Dev::Ata(a) => match a.flush() {
                    Ok(()) => Ok(true),
                    Err(AtaError::Device { status, error }) => {
                        print_error(format_args!(
                            "ATA flush status={status:#x} error={error:#x} ({})",
                            ata_error_name(error)
                        ));
                        Ok(false)
                    }
                    Err(_) => Err(Fail::Check("ATA flush failed")),
                },
                Dev::Vmbus(v) => {
                    let mut h = Histogram::default();
                    let r = v.submit_wait(1, |_| vmb_request(vblk::OP_FLUSH, 0, 0, 0), &mut h)?;
                    Ok(r.0 == 0)
                }
                // Without FLUSH negotiated the device made every write stable already.
                Dev::Virtio(v) if !v.flush => Ok(true),
                Dev::Virtio(v) => {
                    v.submit(0, blk::T_FLUSH, 0, 0, 0);
                    v.expect(1);
                    v.kick();
                    let mut h = Histogram::default();
                    Ok(v.wait(1, cpu::rdtsc(), &mut h)? == 0)
                }
            }
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    fn open(ctx: &Ctx) -> Result<Dev, Fail> {
        match ctx.args.str_or("blk", "none") {
            "ata" => {
                let wide = match ctx.args.u64_or("width", 16)? {
                    16 => false,
                    32 => true,
                    _ => return Err(Fail::BadArg("width")),
                };
                let rep = match ctx.args.str_or("pio", "rep") {
                    "rep" => true,
                    "loop" => false,
                    _ => return Err(Fail::BadArg("pio")),
                };
                let mut a = Ata::probe(PioMode { wide, rep })
                    .map_err(|_| Fail::Unsupported("no ATA disk"))?;
                let m = ctx.args.u64_or("multiple", 0)?;
                if m != 0 {
                    a.set_multiple(m as u16)
                        .map_err(|_| Fail::BadArg("multiple"))?;
                }
                a.force_ext = ctx.args.bool_or("lba48", false)?;
                Ok(Dev::Ata(a))
            }
            "virtio" => Ok(Dev::Virtio(VBlk::open(ctx, 128, false)?)),
            "vmbus" => Ok(Dev::Vmbus(VmbBlk::open(ctx.args.bool_or("poll", false)?)?)),
            _ => Err(Fail::Unsupported(
                "no block device (hv adds blk=ata|virtio|vmbus)",
            )),
        }
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let how = ctx.args.str_or("how", "normal");
        if how != "normal" {
            return hostile(ctx, how);
        }
        let bs = ctx.args.u64_or("bs", 4096)?;
        let qd = ctx.args.u64_or("qd", 1)?.max(1) as usize;
        let count = ctx.args.u64_or("count", 32)? as usize;
        let seed = ctx.args.u64_or("seed", 1)?;
        let prep = ctx.args.bool_or("prep", true)?;
        let flush = ctx.args.bool_or("flush", true)?;
        let span = ctx.args.u64_or("span", 8 << 20)?;
        let rw = ctx.args.str_or("rw", "read");
        let rand = match ctx.args.str_or("pattern", "seq") {
            "seq" => false,
            "rand" => true,
            _ => return Err(Fail::BadArg("pattern")),
        };
        if bs == 0 || bs % 512 != 0 || bs > 64 * 1024 {
            return Err(Fail::BadArg("bs"));
        }
        if qd > MAX_SLOTS.min(42) || qd as u64 * bs > ARENA_BYTES as u64 {
            return Err(Fail::BadArg("qd"));
        }
        if !matches!(rw, "read" | "write" | "mixed") {
            return Err(Fail::BadArg("rw"));
        }
        let count_errors = match ctx.args.str_or("errors", "fail") {
            "fail" => false,
            "count" => true,
            _ => return Err(Fail::BadArg("errors")),
        };
        let hold = ctx.args.bool_or("hold", false)?;
        let mut dev = open(ctx)?;
        // ATA PIO has no queue: one command at a time. The phase reports the qd it ran, and hv
        // records that instead of the requested one.
        let qd = if matches!(dev, Dev::Ata(_)) {
            if qd > 1 {
                println!("blk-io: ATA PIO has no queue: qd={qd} runs at qd=1");
            }
            1
        } else {
            qd
        };
        let per = bs / 512;
        let blocks = (span / 512).min(dev.sectors()) / per;
        if blocks == 0 || (count_errors && blocks > MAX_TRACKED_BLOCKS) {
            return Err(Fail::BadArg("span"));
        }
        // Notes the ops of a batch the device failed: their blocks are never checked again.
        // Without errors=count the first failure ends the run.
        let settle = |ops: &[Op], mask: u64, errors: &mut u64| -> Result<(), Fail> {
            if mask == 0 {
                return Ok(());
            }
            if !count_errors {
                return Err(Fail::Check(
                    "block I/O request failed (errors=count counts instead)",
                ));
            }
            for (i, op) in ops.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    *errors += 1;
                    mark_failed(op.lba / per);
                }
            }
            Ok(())
        };
        // The phase's metrics, plus the error counts with errors=count.
        let report = |f: phase::Finished,
                      base: &[(&'static str, u64)],
                      errs: &[(&'static str, u64)],
                      hist: Option<&Histogram>| {
            let mut all = [("", 0u64); 12];
            let errs = if count_errors { errs } else { &[] };
            for (slot, m) in all.iter_mut().zip(base.iter().chain(errs)) {
                *slot = *m;
            }
            f.report(&all[..(base.len() + errs.len()).min(12)], hist);
        };
        let rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mixed = Rng(seed ^ 0x5555_5555_5555_5555 | 1);
        let op_at = |i: usize, rng: &mut Rng, mixed: &mut Rng| Op {
            write: match rw {
                "write" => true,
                "mixed" => mixed.next() & 1 == 1,
                _ => false,
            },
            lba: if rand {
                rng.next() % blocks
            } else {
                i as u64 % blocks
            } * per,
        };
        // Each phase regenerates the same op list from the seed (nothing is stored): batch `b`
        // is its ops and how many there are.
        let batches = count.div_ceil(qd);
        let batch_ops = |b: usize, r: &mut Rng, m: &mut Rng| {
            let n = qd.min(count - b * qd);
            let mut ops = [Op {
                write: false,
                lba: 0,
            }; MAX_SLOTS];
            for (i, op) in ops.iter_mut().enumerate().take(n) {
                *op = op_at(b * qd + i, r, m);
            }
            (ops, n)
        };
        let mut hist = Histogram::default();

        if prep && rw != "write" {
            let (mut r, mut m) = (Rng(rng.0), Rng(mixed.0));
            let p = phase::begin("blk-prep");
            let mut errors = 0;
            for b in 0..batches {
                let (mut ops, n) = batch_ops(b, &mut r, &mut m);
                for (i, op) in ops.iter_mut().enumerate().take(n) {
                    op.write = true;
                    stamp(arena(i * bs as usize), op.lba, per, seed);
                }
                let mask = dev.batch(&ops[..n], bs, 0, &mut Histogram::default())?;
                settle(&ops[..n], mask, &mut errors)?;
            }
            report(
                p.end(count as u64),
                &[("bytes", count as u64 * bs)],
                &[("io_errors", errors)],
                None,
            );
        }

        let name = match rw {
            "read" => "blk-read",
            "write" => "blk-write",
            _ => "blk-mixed",
        };
        // When the whole phase fits in the arena, op k uses slot k: write buffers are filled
        // before the phase and reads keep their data for blk-verify to check in place. When
        // it does not, batches reuse the first slots, writes are filled just before they are
        // sent (inside the phase: `filled_in_phase=1`) and blk-verify reads back.
        let fits = count <= ARENA_BYTES / bs as usize;
        let in_place = rw == "read" && fits;
        if fits && rw != "read" {
            let (mut r, mut m) = (Rng(rng.0), Rng(mixed.0));
            for b in 0..batches {
                let (ops, n) = batch_ops(b, &mut r, &mut m);
                for (i, op) in ops.iter().enumerate().take(n) {
                    if op.write {
                        stamp(arena((b * qd + i) * bs as usize), op.lba, per, seed);
                    }
                }
            }
        }
        // Generating the operations is guest work too: done before the phase when it fits.
        let planned = count <= MAX_PLANNED;
        // SAFETY: one vCPU runs the workload and only this function uses PLAN.
        let plan = unsafe { &mut *core::ptr::addr_of_mut!(PLAN) };
        let (mut r, mut m) = (Rng(rng.0), Rng(mixed.0));
        if planned {
            for b in 0..batches {
                let (ops, n) = batch_ops(b, &mut r, &mut m);
                plan[b * qd..b * qd + n].copy_from_slice(&ops[..n]);
            }
        }
        let irq0 = irqs();
        let kick0 = dev.kicks();
        let (mut r, mut m) = (Rng(rng.0), Rng(mixed.0));
        let mut made;
        let p = phase::begin(name);
        let mut errors = 0;
        for b in 0..batches {
            let n = qd.min(count - b * qd);
            let ops: &[Op] = if planned {
                &plan[b * qd..b * qd + n]
            } else {
                made = batch_ops(b, &mut r, &mut m).0;
                &made[..n]
            };
            let slot0 = if fits { b * qd } else { 0 };
            if !fits {
                for (i, op) in ops.iter().enumerate() {
                    if op.write {
                        stamp(arena(i * bs as usize), op.lba, per, seed);
                    }
                }
            }
            let mask = dev.batch(ops, bs, slot0, &mut hist)?;
            settle(ops, mask, &mut errors)?;
        }
        let f = p.end(count as u64);
        let irqs = irqs() - irq0;
        report(
            f,
            &[
                ("bytes", count as u64 * bs),
                ("sectors", count as u64 * per),
                ("interrupts", irqs),
                ("kicks", dev.kicks() - kick0),
                ("qd", qd as u64),
                ("irq_ack", u64::from(ACK_BASE.load(Ordering::Relaxed) != 0)),
                ("filled_in_phase", u64::from(!fits && rw != "read")),
                ("planned", u64::from(planned)),
            ],
            &[("io_errors", errors)],
            Some(&hist),
        );

        let flushed = rw == "read" || !flush || dev.flush()?;
        if !flushed && !count_errors {
            return Err(Fail::Check("FLUSH failed (errors=count counts instead)"));
        }
        if hold && rw != "read" {
            // Everything written so far is stable: a crash test may kill hv now.
            println!("blk-io: flushed={}", u8::from(flushed));
            loop {
                cpu::cli();
                cpu::hlt();
            }
        }
        let (mut r, mut m) = (Rng(rng.0), Rng(mixed.0));
        let p = phase::begin("blk-verify");
        let mut verified = 0u64;
        let (mut errors, mut skipped) = (0, 0);
        for b in 0..batches {
            let (mut ops, n) = batch_ops(b, &mut r, &mut m);
            let slot0 = if in_place { b * qd } else { 0 };
            if !in_place {
                for op in ops.iter_mut().take(n) {
                    op.write = false;
                }
                let mask = dev.batch(&ops[..n], bs, 0, &mut Histogram::default())?;
                // A read that fails here counts, and its block is not checked.
                settle(&ops[..n], mask, &mut errors)?;
            }
            for (i, op) in ops.iter().enumerate().take(n) {
                if failed(op.lba / per) {
                    skipped += 1;
                    continue;
                }
                // Mixed: blocks never written hold the prep pattern (same seed) too.
                if let Err(bad) = check(arena((slot0 + i) * bs as usize), op.lba, per, seed) {
                    if in_place {
                        println!("blk-io: data mismatch at sector {bad}");
                        return Err(Fail::Check("read data does not match what was written"));
                    }
                    println!("blk-io: verify mismatch at sector {bad}");
                    return Err(Fail::Check("written data did not read back"));
                }
                verified += 1;
            }
        }
        report(
            p.end(verified),
            &[("bytes", verified * bs), ("reread", u64::from(!in_place))],
            &[
                ("io_errors", errors),
                ("skipped", skipped),
                ("flush_errors", u64::from(!flushed)),
            ],
            None,
        );
        Ok(())
    }

    fn report_hostile(how: &str, what: &str, value: u64, ok: bool) -> Result<(), Fail> {
        println!(
            "HVLAB rec=info hostile={how} {what}={value:#x} detected={}",
            u8::from(ok)
        );
        if ok {
            Ok(())
        } else {
            Err(Fail::Check("device did not report the hostile request"))
        }
    }

    /// Halts until hv's CHANNEL_CLOSED notice for `ch` came (bounded).
    fn wait_closed(ch: &vmbus::Channel) -> bool {
        let start = cpu::rdtsc();
        while !ch.closed() {
            if cpu::rdtsc().wrapping_sub(start) > VMB_LIMIT {
                return false;
            }
            cpu::cli();
            if !ch.closed() {
                cpu::sti_hlt();
            }
            cpu::sti();
        }
        true
    }

    /// Hostile guests against the VMBus-style block channel. Each case checks that hv refused
    /// what it must and that the device (reopened where hv closed the channel) still works.
    fn hostile_vmbus(ctx: &Ctx, how: &str) -> Result<(), Fail> {
        let ram = ctx.args.u64_or("ram", 32 << 20)?;
        let mut d = VmbBlk::open(false)?;
        let mut h = Histogram::default();
        let works = |d: &mut VmbBlk, h: &mut Histogram| -> Result<bool, Fail> {
            let r = d.submit_wait(1, |_| vmb_request(vblk::OP_READ, 1, 0, arena(0) as u64), h)?;
            Ok(r.0 == 0)
        };
        let reopen = |d: &mut VmbBlk| -> Result<(), Fail> {
            let client = vmbus::Client;
            // SAFETY: the same pages, which the closed channel no longer uses.
            d.ch = unsafe { client.open(d.ch.id, VMB_RINGS.as_ptr(), 3, 3) }
                .map_err(|_| Fail::Check("vmbus block: reopen refused"))?;
            Ok(())
        };
        match how {
            // Buffers past RAM, straddling its end, in the MMIO window, above 4 GiB: each is
            // BAD_REQUEST alone, the channel stays open.
            "oob-buffer" => {
                let bad = [ram, ram - 256, 0xd000_0000, 1 << 40, u64::MAX - 100];
                let mut refused = 0;
                for (i, gpa) in bad.iter().enumerate() {
                    let r = d.submit_wait(
                        1,
                        |_| vmb_request(vblk::OP_READ, 1, i as u64, *gpa),
                        &mut h,
                    )?;
                    refused += u64::from(r.0 != 0);
                }
                let ok = refused == bad.len() as u64 && works(&mut d, &mut h)?;
                report_hostile(how, "refused", refused, ok)
            }
            // Garbage in the request fields: unknown op, 0 and huge transfers, a short packet.
            "bad-request" => {
                let reqs = [
                    vmb_request(99, 1, 0, arena(0) as u64),
                    vmb_request(vblk::OP_READ, 0, 0, arena(0) as u64),
                    vmb_request(vblk::OP_WRITE, u32::MAX, 0, arena(0) as u64),
                    vmb_request(vblk::OP_READ, 1, u64::MAX, arena(0) as u64),
                ];
                let r = d.submit_wait(reqs.len(), |i| reqs[i % reqs.len()], &mut h)?;
                d.ch.send(
                    vb::PACKET_DATA,
                    vb::FLAG_COMPLETION_REQUESTED,
                    9,
                    &[1, 2, 3],
                )
                .map_err(|_| Fail::Check("signal refused"))?;
                let mut buf = [0u8; vblk::COMPLETION_BYTES];
                let short = d.ch.wait(VMB_LIMIT)
                    && matches!(d.ch.recv(&mut buf), Some((vb::PACKET_COMPLETION, 9, _)))
                    && buf[0] == vblk::STATUS_BAD_REQUEST as u8;
                let ok = r.0 == 0b1111 && short && works(&mut d, &mut h)?;
                report_hostile(how, "failed", r.0, ok)
            }
            // A write index that is not a packet boundary, and a descriptor claiming more than
            // the ring holds: hv closes the channel, says so, refuses its signals, and a fresh
            // open brings it back.
            "bad-index" | "oversized" => {
                if how == "bad-index" {
                    d.ch.out.set_write_index_raw(12);
                } else {
                    d.ch.out
                        .write_raw(u64::from(vb::PACKET_DATA) | 2 << 16 | 0xffff << 32, 24);
                }
                let first = synic::signal_event(vb::CONN_CHANNEL_BASE + d.ch.id, 0);
                let noticed = wait_closed(&d.ch);
                let after = synic::signal_event(vb::CONN_CHANNEL_BASE + d.ch.id, 0);
                reopen(&mut d)?;
                let ok = first == 0
                    && noticed
                    && after == tlfs::STATUS_INVALID_PORT_ID
                    && works(&mut d, &mut h)?;
                report_hostile(how, "after", u64::from(after), ok)
            }
            // Rings outside RAM or in the MMIO window, and unknown channels, are refused at
            // open; signals to channels that do not exist are refused; the device still works.
            "bad-open" => {
                let client = vmbus::Client;
                let outside = [ram, ram - 4096, 0xd000_0000, 1 << 40];
                let mut refused = 0;
                for gpa in outside {
                    let r = client.open_raw(d.ch.id, gpa, 3, 3);
                    refused += u64::from(r == Err(vmbus::VmbusError::Open(vb::OPEN_BAD_RING)));
                }
                let unknown = client.open_raw(77, VMB_RINGS.as_ptr() as u64, 3, 3)
                    == Err(vmbus::VmbusError::Open(vb::OPEN_UNKNOWN_CHANNEL));
                let signal = synic::signal_event(vb::CONN_CHANNEL_BASE + 77, 0);
                // The refused opens closed the channel (its old rings are gone): open it again.
                reopen(&mut d)?;
                let ok = refused == outside.len() as u64
                    && unknown
                    && signal == tlfs::STATUS_INVALID_PORT_ID
                    && works(&mut d, &mut h)?;
                report_hostile(how, "refused", refused, ok)
            }
            // A signal storm on an empty ring: every signal succeeds, hv's worker finds nothing
            // to do, and the device still works.
            "signal-storm" => {
                let mut refused = 0;
                for _ in 0..2000 {
                    refused +=
                        u64::from(synic::signal_event(vb::CONN_CHANNEL_BASE + d.ch.id, 0) != 0);
                }
                let ok = refused == 0 && works(&mut d, &mut h)?;
                report_hostile(how, "refused", refused, ok)
            }
            _ => Err(Fail::BadArg("how")),
        }
    }

    fn hostile(ctx: &mut Ctx, how: &str) -> Result<(), Fail> {
        match ctx.args.str_or("blk", "none") {
            "vmbus" => hostile_vmbus(ctx, how),
            "ata" => {
                let a = Ata::probe(PioMode {
                    wide: false,
                    rep: true,
                })
                .map_err(|_| Fail::Unsupported("no ATA disk"))?;
                match how {
                    "past-end" => {
                        // SAFETY: the arena holds far more than two sectors.
                        let r = unsafe { a.read(a.sectors - 1, 2, arena(0)) };
                        let ok = matches!(r, Err(AtaError::Device { error, .. }) if error & ata::ERR_IDNF != 0);
                        report_hostile(how, "error", u64::from(ata::error()), ok)
                    }
                    "out-of-order" => {
                        ata::issue(ata::CMD_READ, 0, 2, false);
                        let s = ata::status();
                        if s & ata::ST_DRQ == 0 {
                            return Err(Fail::Check("READ did not raise DRQ"));
                        }
                        ata::issue(ata::CMD_WRITE, 0, 1, false);
                        let s = ata::status();
                        let e = ata::error();
                        let ok = s & ata::ST_ERR != 0 && e & ata::ERR_ABRT != 0;
                        // The device recovers: a normal read works afterwards.
                        // SAFETY: the arena holds far more than one sector.
                        unsafe { a.read(0, 1, arena(0)) }
                            .map_err(|_| Fail::Check("ATA did not recover"))?;
                        report_hostile(how, "error", u64::from(e), ok)
                    }
                    _ => Err(Fail::BadArg("how")),
                }
            }
            "virtio" => {
                let long = how == "long";
                let mut v = VBlk::open(ctx, if long { 16 } else { 128 }, long)?;
                let buf = arena(0) as u64;
                let size = v.q.size;
                match how {
                    "desc-index" => {
                        v.q.push(size + 5);
                        v.q.kick(v.dev);
                    }
                    "loop" => {
                        v.q.set_desc(0, buf, 16, DESC_F_NEXT, 1);
                        v.q.set_desc(1, buf + 512, 512, DESC_F_NEXT | DESC_F_WRITE, 0);
                        v.q.push(0);
                        v.q.kick(v.dev);
                    }
                    "long" => {
                        // An indirect table with one descriptor more than the queue has.
                        // SAFETY: the table is this run's; the device reads it after publish.
                        let t = unsafe { &mut *core::ptr::addr_of_mut!(INDIRECT) };
                        let n = usize::from(size) + 1;
                        for (i, d) in t.iter_mut().enumerate().take(n) {
                            d[0] = buf;
                            d[1] = 16 | u64::from(DESC_F_NEXT) << 32 | (i as u64 + 1) << 48;
                        }
                        v.q.set_desc(0, t.as_ptr() as u64, (n * 16) as u32, DESC_F_INDIRECT, 0);
                        v.q.push(0);
                        v.q.kick(v.dev);
                    }
                    "oob-addr" => {
                        v.q.set_desc(0, buf, 16, DESC_F_NEXT, 1);
                        v.q.set_desc(1, 0xf000_0000, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
                        v.q.set_desc(2, buf + 16, 1, DESC_F_WRITE, 0);
                        v.q.push(0);
                        v.q.kick(v.dev);
                    }
                    "len-overflow" => {
                        v.q.set_desc(0, buf, 16, DESC_F_NEXT, 1);
                        v.q.set_desc(
                            1,
                            0xffff_ffff_ffff_f000,
                            0x2000,
                            DESC_F_NEXT | DESC_F_WRITE,
                            2,
                        );
                        v.q.set_desc(2, buf + 16, 1, DESC_F_WRITE, 0);
                        v.q.push(0);
                        v.q.kick(v.dev);
                    }
                    "avail-idx" => {
                        v.q.publish_raw(size.wrapping_add(10));
                        v.dev.write(virtio::REG_QUEUE_NOTIFY, 0);
                    }
                    "reready-end-of-ram" => {
                        // After DRIVER_OK: queue 0 not ready, its available ring moved to the
                        // last 4 bytes of RAM (flags and index fit, the entries do not), ready
                        // again, one entry published. `ram=` is the guest's RAM size.
                        let ram = ctx.args.u64_or("ram", 32 << 20)?;
                        if !(8..hvlab_protocol::MAX_GUEST_RAM).contains(&ram) {
                            return Err(Fail::BadArg("ram"));
                        }
                        let avail = ram - 4;
                        v.dev.write(virtio::REG_QUEUE_SEL, 0);
                        v.dev.write(virtio::REG_QUEUE_READY, 0);
                        v.dev.write(virtio::REG_QUEUE_DRIVER_LOW, avail as u32);
                        v.dev
                            .write(virtio::REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
                        v.dev.write(virtio::REG_QUEUE_READY, 1);
                        // SAFETY: the last bytes of RAM, inside the identity map; nothing else
                        // of this run lives there.
                        unsafe { core::ptr::write_volatile((avail + 2) as *mut u16, 1) };
                        v.dev.write(virtio::REG_QUEUE_NOTIFY, 0);
                    }
                    "reready-overlap" => {
                        // Queue 0 readied again with its available ring on its descriptor
                        // table, which starts the ring memory (repr(C): the array is at 0).
                        let desc = core::ptr::addr_of!(RING) as u64;
                        v.dev.write(virtio::REG_QUEUE_SEL, 0);
                        v.dev.write(virtio::REG_QUEUE_READY, 0);
                        v.dev.write(virtio::REG_QUEUE_DRIVER_LOW, desc as u32);
                        v.dev
                            .write(virtio::REG_QUEUE_DRIVER_HIGH, (desc >> 32) as u32);
                        v.dev.write(virtio::REG_QUEUE_READY, 1);
                    }
                    "renegotiate" => {
                        // Back to ACKNOWLEDGE | DRIVER after DRIVER_OK, without a reset.
                        v.dev
                            .write(virtio::REG_STATUS, virtio::S_ACKNOWLEDGE | virtio::S_DRIVER);
                    }
                    _ => return Err(Fail::BadArg("how")),
                }
                let mut st = 0;
                for _ in 0..5000 {
                    st = v.dev.status();
                    if st & S_NEEDS_RESET != 0 {
                        break;
                    }
                    cpu::pause();
                }
                let ok = st & S_NEEDS_RESET != 0;
                v.dev.write(virtio::REG_STATUS, 0); // reset, as a driver would
                report_hostile(how, "device_status", u64::from(st), ok)
            }
            _ => Err(Fail::Unsupported("no block device")),
        }
    }
}
