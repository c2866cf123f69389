//! console-io: writes `bytes` bytes in lines of `line` bytes to the console device hv attached
//! (the 16550 on COM1, virtio-console, or hv's VMBus-style console channel, named by the `con=`
//! word hv adds), one latency sample per line, then reads them back through a loopback and
//! verifies them: the 16550's own loopback mode (MCR.LOOP, emulated by hv), hv's
//! virtio-console loopback (what the driver transmits comes back on the receive queue), or the
//! channel's loopback flag (the line comes back as a packet).
//!
//! virtio-console is where hv's `con_mmio=`/`con_irq=` words say, else the first console
//! device named by a `virtio_mmio.device=` word (QEMU's microvm with `virtio-serial-device`
//! and a `virtconsole` on port 0); such a transport's interrupts are acknowledged in the
//! handler (`irq_ack=1`). `readback=0` skips the read-back phase (QEMU's virtconsole has no
//! loopback).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "console-io",
    summary: "console output in lines, and read-back through a loopback: 16550 UART, virtio-console or a VMBus-style channel",
    params: &[
        Param {
            key: "bytes",
            default: "1024",
            help: "bytes to write (whole lines)",
        },
        Param {
            key: "line",
            default: "64",
            help: "bytes per line, newline included (2..=1024)",
        },
        Param {
            key: "readback",
            default: "1",
            help: "read the lines back through the loopback",
        },
    ],
    min_vcpus: 1,
    devices: &["console"],
    host_features: &["full-irqchip"],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};

    use hvlab_guest_rt::drivers::ioapic;
    use hvlab_guest_rt::drivers::virtio::{
        self, CONSOLE_DEVICE_ID, DESC_F_WRITE, F_EVENT_IDX, F_VERSION_1, Mmio, RingMem,
        S_NEEDS_RESET, VirtQueue,
    };
    use hvlab_guest_rt::phase::{self, Histogram};
    use hvlab_guest_rt::pv::vmbus;
    use hvlab_guest_rt::{Ctx, Fail, apic, cpu, idt, println};
    use hvlab_protocol::vmbus::{self as vb, console as vcon};

    const COM1: u16 = hvlab_protocol::CONSOLE_PORT;
    const MCR: u16 = COM1 + 4;
    const LSR: u16 = COM1 + 5;
    const MCR_LOOP: u8 = 0x10;
    const MCR_DEFAULT: u8 = 0x08;
    const VECTOR: u8 = 0x41;
    const MAX_LINE: usize = 1024;

    static mut RX_RING: RingMem = RingMem::new();
    static mut TX_RING: RingMem = RingMem::new();
    static mut TXBUF: [u8; MAX_LINE] = [0; MAX_LINE];
    static mut RXBUF: [u8; MAX_LINE] = [0; MAX_LINE];
    static IRQS: AtomicU64 = AtomicU64::new(0);

    /// A transport found on the command line holds its line until acknowledged; 0 = none.
    static ACK_BASE: AtomicU64 = AtomicU64::new(0);

    fn on_irq(_: u8) {
        IRQS.fetch_add(1, Ordering::Relaxed);
        let base = ACK_BASE.load(Ordering::Relaxed);
        if base != 0 {
            virtio::ack_interrupt(Mmio(base));
        }
    }

    fn line_byte(line: usize, i: usize, len: usize) -> u8 {
        if i + 1 == len {
            b'\n'
        } else {
            b'a' + ((line + i) % 26) as u8
        }
    }

    struct VCon {
        dev: Mmio,
        rx: VirtQueue,
        tx: VirtQueue,
        poll: bool,
        kicks: u64,
    }

    impl VCon {
        fn open(ctx: &Ctx) -> Result<VCon, Fail> {
            let evidx = ctx.args.bool_or("evidx", true)?;
            let poll = ctx.args.bool_or("poll", false)?;
            let (dev, irq, ack) = match ctx.args.u64_or("con_mmio", 0)? {
                0 => match virtio::find_on_cmdline(ctx.args.line(), CONSOLE_DEVICE_ID) {
                    Some((dev, irq)) => (dev, u64::from(irq), true),
                    None => {
                        return Err(Fail::Unsupported(
                            "virtio-console: no con_mmio= and no console among virtio_mmio.device=",
                        ));
                    }
                },
                base => (Mmio(base), ctx.args.u64_or("con_irq", 0)?, false),
            };
            if irq >= u64::from(ioapic::PINS) {
                return Err(Fail::Unsupported(
                    "virtio-console IRQ beyond the IOAPIC's pins",
                ));
            }
            ACK_BASE.store(if ack { dev.0 } else { 0 }, Ordering::Relaxed);
            // SAFETY: one driver instance per run owns the ring memory.
            let (rxm, txm) = unsafe {
                (
                    &mut *core::ptr::addr_of_mut!(RX_RING),
                    &mut *core::ptr::addr_of_mut!(TX_RING),
                )
            };
            let mut rx = VirtQueue::new(0, 64, rxm, false);
            let mut tx = VirtQueue::new(1, 64, txm, false);
            let wanted = F_VERSION_1 | if evidx { F_EVENT_IDX } else { 0 };
            let f = virtio::init(dev, CONSOLE_DEVICE_ID, wanted, &[&rx, &tx])
                .map_err(|_| Fail::Unsupported("virtio-console setup"))?;
            rx.event_idx = f & F_EVENT_IDX != 0;
            tx.event_idx = rx.event_idx;
            idt::register(VECTOR, on_irq);
            ioapic::mask_pic();
            ioapic::route(irq as u8, VECTOR, apic::id());
            if poll {
                cpu::cli();
                for q in [&rx, &tx] {
                    if q.event_idx {
                        q.set_used_event(q.last_used.wrapping_add(0x7fff));
                    } else {
                        q.set_no_interrupt(true);
                    }
                }
            }
            Ok(VCon {
                dev,
                rx,
                tx,
                poll,
                kicks: 0,
            })
        }

        /// Waits for one used entry on `rx` (else `tx`); returns the bytes the device wrote.
        fn wait(&mut self, on_rx: bool) -> Result<u32, Fail> {
            let poll = self.poll;
            let dev = self.dev;
            let q = if on_rx { &mut self.rx } else { &mut self.tx };
            if !poll && q.event_idx {
                q.set_used_event(q.last_used);
            }
            let mut idle = 0u64;
            loop {
                if let Some((_, len)) = q.pop_used() {
                    return Ok(len);
                }
                idle += 1;
                if poll {
                    cpu::pause();
                    if idle > 50_000_000 {
                        return Err(Fail::Check("virtio-console: no completion"));
                    }
                } else {
                    cpu::cli();
                    if !q.has_used() {
                        cpu::sti_hlt();
                    } else {
                        cpu::sti();
                    }
                    if idle % 64 == 0 && dev.status() & S_NEEDS_RESET != 0 {
                        return Err(Fail::Check("virtio-console: device needs reset"));
                    }
                }
            }
        }

        fn send(&mut self, len: usize) -> Result<(), Fail> {
            let buf = core::ptr::addr_of!(TXBUF) as u64;
            self.tx.set_desc(0, buf, len as u32, 0, 0);
            self.tx.push(0);
            if self.tx.kick(self.dev) {
                self.kicks += 1;
            }
            self.wait(false).map(|_| ())
        }
    }

    /// hv's VMBus-style console (`hvlab_protocol::vmbus::console`): one data packet per line,
    /// answered by a completion (writes) or by the line itself (read-back through hv's
    /// loopback flag).
    struct VmbCon {
        ch: vmbus::Channel,
    }

    /// The channel's rings: 2 pages each way (a line of up to 1 KiB fits).
    static VMB_RINGS: vmbus::RingPages<4> = vmbus::RingPages::new();
    static mut VMB_PACKET: [u8; 8 + MAX_LINE] = [0; 8 + MAX_LINE];
    const VMB_LIMIT: u64 = 1 << 36;

    impl VmbCon {
        fn open() -> Result<VmbCon, Fail> {
            let client = vmbus::Client::connect().map_err(|_| {
                Fail::Unsupported("vmbus console: the SynIC is not shown (hv-synic)")
            })?;
            let id = client
                .find(vb::DEVICE_CONSOLE)
                .map_err(|_| Fail::Unsupported("vmbus console: no console channel offered"))?;
            // SAFETY: the static's pages belong to this channel from now on.
            let ch = unsafe { client.open(id, VMB_RINGS.as_ptr(), 2, 2) }
                .map_err(|_| Fail::Check("vmbus console: open refused"))?;
            Ok(VmbCon { ch })
        }

        /// Sends TXBUF's first `len` bytes with `flags` and waits for hv's answer; with
        /// FLAG_LOOPBACK the bytes that came back are in RXBUF. Returns the byte count hv
        /// reported.
        fn send(&mut self, len: usize, flags: u16) -> Result<usize, Fail> {
            // SAFETY: one vCPU runs the workload; these statics are only used here.
            let (pkt, tx, rx) = unsafe {
                (
                    &mut *core::ptr::addr_of_mut!(VMB_PACKET),
                    &*core::ptr::addr_of!(TXBUF),
                    &mut *core::ptr::addr_of_mut!(RXBUF),
                )
            };
            pkt[..4].copy_from_slice(&(len as u32).to_le_bytes());
            pkt[4..8].fill(0);
            pkt[8..8 + len].copy_from_slice(&tx[..len]);
            match self.ch.send(vb::PACKET_DATA, flags, 0, &pkt[..8 + len]) {
                Ok(true) => {}
                Ok(false) => return Err(Fail::Check("vmbus console: ring full")),
                Err(_) => return Err(Fail::Check("vmbus console: hv refused the signal")),
            }
            loop {
                if let Some((kind, _, n)) = self.ch.recv(&mut pkt[..]) {
                    let said = u32::from_le_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]) as usize;
                    if kind == vb::PACKET_DATA {
                        let got = said.min(n.saturating_sub(8)).min(MAX_LINE);
                        rx[..got].copy_from_slice(&pkt[8..8 + got]);
                        return Ok(got);
                    }
                    return Ok(said);
                }
                if self.ch.closed() {
                    return Err(Fail::Check("vmbus console: hv closed the channel"));
                }
                if !self.ch.wait(VMB_LIMIT) {
                    return Err(Fail::Check("vmbus console: no answer"));
                }
            }
        }
    }

    /// Puts line `l` (`len` bytes) into TXBUF.
    fn fill_line(l: usize, len: usize) {
        // SAFETY: one vCPU runs the workload; the device reads TXBUF only after a send.
        let buf = unsafe { &mut *core::ptr::addr_of_mut!(TXBUF) };
        for (i, b) in buf.iter_mut().enumerate().take(len) {
            *b = line_byte(l, i, len);
        }
    }

    /// Bytes of line `l` that did not come back into RXBUF (`got` bytes came), plus one when
    /// the length is wrong.
    fn mismatches(l: usize, len: usize, got: usize) -> u64 {
        // SAFETY: the device (or the VMBus client) wrote `got` bytes before answering.
        let rx = unsafe { &*core::ptr::addr_of!(RXBUF) };
        let wrong = rx
            .iter()
            .enumerate()
            .take(got.min(len))
            .filter(|&(i, &b)| b != line_byte(l, i, len))
            .count() as u64;
        wrong + u64::from(got != len)
    }

    fn uart_put(b: u8, in_fifo: &mut usize) {
        if *in_fifo >= 16 {
            let mut polls = 0;
            while cpu::inb(LSR) & 0x20 == 0 && polls < 10_000 {
                polls += 1;
            }
            *in_fifo = 0;
        }
        cpu::outb(COM1, b);
        *in_fifo += 1;
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let bytes = ctx.args.u64_or("bytes", 1024)? as usize;
        let len = ctx.args.u64_or("line", 64)? as usize;
        let readback = ctx.args.bool_or("readback", true)?;
        if !(2..=MAX_LINE).contains(&len) {
            return Err(Fail::BadArg("line"));
        }
        let lines = (bytes / len).max(1);
        let mut hist = Histogram::default();
        let (mut vcon, mut vmb) = match ctx.args.str_or("con", "none") {
            "uart" => (None, None),
            "virtio" => (Some(VCon::open(ctx)?), None),
            "vmbus" => (None, Some(VmbCon::open()?)),
            _ => {
                return Err(Fail::Unsupported(
                    "no console device (hv adds con=uart|virtio|vmbus)",
                ));
            }
        };
        let irqs = || IRQS.load(Ordering::Relaxed) + vmbus::channel_irqs();
        let kicks = |vcon: &Option<VCon>, vmb: &Option<VmbCon>| {
            vcon.as_ref().map_or(0, |v| v.kicks) + vmb.as_ref().map_or(0, |v| v.ch.signals)
        };
        let irq0 = irqs();
        let kick0 = kicks(&vcon, &vmb);
        let p = phase::begin("con-write");
        let mut in_fifo = 16;
        for l in 0..lines {
            let t0 = cpu::rdtsc();
            match vcon.as_mut() {
                None if vmb.is_some() => {
                    fill_line(l, len);
                    if let Some(v) = vmb.as_mut() {
                        v.send(len, vb::FLAG_COMPLETION_REQUESTED)?;
                    }
                }
                None => {
                    for i in 0..len {
                        uart_put(line_byte(l, i, len), &mut in_fifo);
                    }
                }
                Some(v) => {
                    fill_line(l, len);
                    v.send(len)?;
                }
            }
            hist.record(cpu::rdtsc().wrapping_sub(t0));
        }
        let f = p.end(lines as u64);
        f.report(
            &[
                ("bytes", (lines * len) as u64),
                ("interrupts", irqs() - irq0),
                ("kicks", kicks(&vcon, &vmb) - kick0),
                ("irq_ack", u64::from(ACK_BASE.load(Ordering::Relaxed) != 0)),
            ],
            Some(&hist),
        );
        if !readback {
            return Ok(());
        }
        let mut hist = Histogram::default();
        let irq0 = irqs();
        let kick0 = kicks(&vcon, &vmb);
        let uart = vcon.is_none() && vmb.is_none();
        if uart {
            cpu::outb(MCR, MCR_LOOP | MCR_DEFAULT);
        }
        let p = phase::begin("con-readback");
        let mut bad = 0u64;
        for l in 0..lines {
            let t0 = cpu::rdtsc();
            match vcon.as_mut() {
                None if vmb.is_some() => {
                    fill_line(l, len);
                    let got = match vmb.as_mut() {
                        Some(v) => v.send(len, vcon::FLAG_LOOPBACK)?,
                        None => 0,
                    };
                    bad += mismatches(l, len, got);
                }
                None => {
                    for i in 0..len {
                        let want = line_byte(l, i, len);
                        cpu::outb(COM1, want);
                        let mut polls = 0;
                        while cpu::inb(LSR) & 1 == 0 && polls < 10_000 {
                            polls += 1;
                        }
                        if cpu::inb(COM1) != want {
                            bad += 1;
                        }
                    }
                }
                Some(v) => {
                    let rxbuf = core::ptr::addr_of_mut!(RXBUF) as u64;
                    v.rx.set_desc(0, rxbuf, len as u32, DESC_F_WRITE, 0);
                    v.rx.push(0);
                    if v.rx.kick(v.dev) {
                        v.kicks += 1;
                    }
                    fill_line(l, len);
                    v.send(len)?;
                    let got = v.wait(true)? as usize;
                    bad += mismatches(l, len, got);
                }
            }
            hist.record(cpu::rdtsc().wrapping_sub(t0));
        }
        let f = p.end(lines as u64);
        if uart {
            cpu::outb(MCR, MCR_DEFAULT);
        }
        f.report(
            &[
                ("bytes", (lines * len) as u64),
                ("interrupts", irqs() - irq0),
                ("kicks", kicks(&vcon, &vmb) - kick0),
                ("mismatches", bad),
            ],
            Some(&hist),
        );
        if bad != 0 {
            println!("console-io: {bad} bytes did not read back");
            return Err(Fail::Check("loopback data mismatch"));
        }
        Ok(())
    }
}
