//! net-io: UDP between partitions on one wire (hv's switch), through the NIC hv attached
//! (virtio-net, or the NE2000, named by the `net=` word hv adds). Partition 0 is the client,
//! partition 1 the server (`part=` on the command line); partitions 2 and up play the hostile
//! role `how=` names, beside them on the same wire. With hv's tap backend the server is a UDP
//! responder behind a tap device in a network namespace, and partition 0 runs alone.
//!
//! - `mode=pingpong`: the client resolves the server's MAC (ARP), then sends `count` pings of
//!   `size` bytes (Ethernet frame, no FCS) one at a time; the server echoes each. One RTT
//!   sample per ping into the histogram. The phase's ops are the frames through the client's
//!   NIC (2 per round trip), so exits per op are exits per packet.
//! - `mode=stream`: the client sends `count` frames of `size` bytes in bursts of `window`;
//!   the server acknowledges each burst's last frame. Ops are frames sent; the time per op
//!   gives packets/s and, with `size`, bytes/s.
//!
//! Both ends check every frame: IP and UDP checksums, then a payload pattern derived from the
//! sequence number (`bad=` counts frames that fail, `foreign=` frames for others). At the end
//! the client sends DONE and the server answers with the data frames it got: `lost=` is what
//! the client sent and the server never saw. Metrics: `interrupts`, `kicks`, `bytes`, `bad`,
//! `foreign`, `lost`, `dropped` (the card's own drop counter).
//!
//! Hostile roles (`how=`, partitions 2 and up): `flood` (`flood=` frames: valid, malformed and
//! corrupted, unicast to partitions 0 and 1 and broadcast), `undrained` (posts receive buffers
//! once and never takes a frame; sends broadcasts), `oversize` (virtio: transmit descriptors
//! longer than any frame), `oob` (virtio: a transmit descriptor outside guest memory; the
//! device must stop with DEVICE_NEEDS_RESET, which the guest checks), `idle` (exits at once).

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "net-io",
    summary: "UDP ping-pong (RTT) and stream (packets/s) between partitions: NE2000 or virtio-net on hv's switch",
    params: &[
        Param {
            key: "mode",
            default: "pingpong",
            help: "pingpong | stream",
        },
        Param {
            key: "size",
            default: "64",
            help: "frame bytes without FCS (60..=1514)",
        },
        Param {
            key: "count",
            default: "32",
            help: "pings, or frames streamed",
        },
        Param {
            key: "window",
            default: "16",
            help: "stream: frames per acknowledged burst (1..=32)",
        },
        Param {
            key: "pio",
            default: "loop",
            help: "NE2000 data port: loop (one in/out per word) | rep (rep insw/outsw)",
        },
        Param {
            key: "how",
            default: "idle",
            help: "partitions 2 and up: idle | flood | undrained | oversize | oob",
        },
        Param {
            key: "flood",
            default: "2000",
            help: "frames a flooding partition sends",
        },
    ],
    min_vcpus: 1,
    devices: &["net"],
    host_features: &["full-irqchip"],
};

/// The line the server (partition 1) prints once its NIC is up and receiving.
pub const SERVER_READY: &str = "net-io: server listening";

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::Ordering;

    use hvlab_guest_rt::drivers::ne2000::{self, Ne2000};
    use hvlab_guest_rt::drivers::virtio_net::{self, VirtioNet};
    use hvlab_guest_rt::drivers::{ioapic, virtio};
    use hvlab_guest_rt::net::{
        self, BROADCAST, Endpoint, Frame, HDRS, MAX_FRAME, MIN_FRAME, Nic, NicCounters, NicError,
    };
    use hvlab_guest_rt::phase::{self, Histogram};
    use hvlab_guest_rt::{Ctx, Fail, cpu, println};

    use super::SERVER_READY;

    use hvlab_protocol::net::netio::{
        F_LAST, K_ACK, K_DATA, K_DONE, K_DONE_ACK, K_PING, K_PONG, MAGIC, PHDR, PORT,
    };

    static mut TX: [u8; MAX_FRAME] = [0; MAX_FRAME];
    static mut RX: [u8; MAX_FRAME] = [0; MAX_FRAME];

    fn tx() -> &'static mut [u8; MAX_FRAME] {
        // SAFETY: one vCPU runs the workload and takes this buffer one frame at a time.
        unsafe { &mut *core::ptr::addr_of_mut!(TX) }
    }

    fn rx() -> &'static mut [u8; MAX_FRAME] {
        // SAFETY: as for `tx`.
        unsafe { &mut *core::ptr::addr_of_mut!(RX) }
    }

    fn ip_of(part: u64) -> [u8; 4] {
        [10, 0, 0, (part + 1) as u8]
    }

    fn nic_fail(e: NicError) -> Fail {
        match e {
            NicError::Broken(w) => Fail::Check(w),
            NicError::BadFrame => Fail::Check("net-io: frame refused by the driver"),
            NicError::Timeout => Fail::Check("net-io: NIC timed out"),
        }
    }

    fn word(seq: u32, k: usize) -> u64 {
        ((u64::from(seq) << 32) | k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Fills `p` (the payload after its header) with the pattern of `seq`.
    fn fill(p: &mut [u8], seq: u32) {
        let mut words = p.chunks_exact_mut(8);
        let mut k = 0;
        for w in &mut words {
            w.copy_from_slice(&word(seq, k).to_le_bytes());
            k += 1;
        }
        let r = words.into_remainder();
        let last = word(seq, k).to_le_bytes();
        let n = r.len();
        r.copy_from_slice(&last[..n]);
    }

    fn pattern_ok(p: &[u8], seq: u32) -> bool {
        let mut words = p.chunks_exact(8);
        let mut k = 0;
        for w in &mut words {
            if w != word(seq, k).to_le_bytes() {
                return false;
            }
            k += 1;
        }
        let r = words.remainder();
        r == &word(seq, k).to_le_bytes()[..r.len()]
    }

    /// One end: its NIC, addresses and counters.
    struct Host<'a> {
        nic: &'a mut dyn Nic,
        me: Endpoint,
        bad: u64,
        foreign: u64,
        ip_id: u16,
        /// The last ARP reply for us: (IP, MAC).
        arp_seen: Option<([u8; 4], [u8; 6])>,
    }

    /// A datagram for us, checked.
    struct Msg {
        from: Endpoint,
        kind: u8,
        flags: u8,
        seq: u32,
        aux: u32,
        /// Bytes of the whole frame.
        len: usize,
    }

    impl Host<'_> {
        /// Sends a datagram of kind `kind` to `to`, padded with the pattern to a `size`-byte
        /// frame.
        fn send(
            &mut self,
            to: Endpoint,
            kind: u8,
            flags: u8,
            seq: u32,
            aux: u32,
            size: usize,
        ) -> Result<(), Fail> {
            let f = tx();
            let payload = size.max(MIN_FRAME).min(MAX_FRAME) - HDRS;
            let p = &mut f[HDRS..HDRS + payload];
            p[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            p[4] = kind;
            p[5] = flags;
            p[6] = 0;
            p[7] = 0;
            p[8..12].copy_from_slice(&seq.to_le_bytes());
            p[12..16].copy_from_slice(&aux.to_le_bytes());
            fill(&mut p[PHDR..], seq);
            self.ip_id = self.ip_id.wrapping_add(1);
            let n = net::build_udp(f, self.me, to, payload, self.ip_id);
            self.nic.send(&f[..n]).map_err(nic_fail)
        }

        /// Receives one frame (waiting for it): answers ARP requests for our address,
        /// remembers ARP replies in `arp_seen`, counts frames that fail a check or are for
        /// others, and returns a checked datagram for our port.
        fn poll_one(&mut self) -> Result<Option<Msg>, Fail> {
            let f = rx();
            let mut spins = 0u64;
            let n = loop {
                if let Some(n) = self.nic.recv(f).map_err(nic_fail)? {
                    break n;
                }
                self.nic.wait().map_err(nic_fail)?;
                spins += 1;
                if spins > 200_000_000 {
                    return Err(Fail::Check("net-io: nothing received"));
                }
            };
            match net::parse(&f[..n], self.me.mac, self.me.ip) {
                Frame::Arp {
                    op,
                    sender,
                    target_ip,
                } => {
                    if op == 1 && target_ip == self.me.ip {
                        let t = tx();
                        let m = net::build_arp(t, 2, (self.me.mac, self.me.ip), sender);
                        self.nic.send(&t[..m]).map_err(nic_fail)?;
                    } else if op == 2 && target_ip == self.me.ip {
                        self.arp_seen = Some((sender.1, sender.0));
                    }
                    Ok(None)
                }
                Frame::Udp {
                    from,
                    dst_port,
                    payload: (a, b),
                } => {
                    let p = &f[a..b];
                    if dst_port != PORT || p.len() < PHDR || p[0..4] != MAGIC.to_le_bytes() {
                        self.bad += 1;
                        return Ok(None);
                    }
                    let seq = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
                    if !pattern_ok(&p[PHDR..], seq) {
                        self.bad += 1;
                        return Ok(None);
                    }
                    Ok(Some(Msg {
                        from,
                        kind: p[4],
                        flags: p[5],
                        seq,
                        aux: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
                        len: n,
                    }))
                }
                Frame::Foreign => {
                    self.foreign += 1;
                    Ok(None)
                }
                Frame::Bad(_) => {
                    self.bad += 1;
                    Ok(None)
                }
            }
        }

        /// The next checked datagram for our port.
        fn next(&mut self) -> Result<Msg, Fail> {
            loop {
                if let Some(m) = self.poll_one()? {
                    return Ok(m);
                }
            }
        }

        /// The MAC of `ip`, by ARP.
        fn resolve(&mut self, ip: [u8; 4]) -> Result<[u8; 6], Fail> {
            let f = tx();
            let n = net::build_arp(f, 1, (self.me.mac, self.me.ip), ([0; 6], ip));
            self.nic.send(&f[..n]).map_err(nic_fail)?;
            for _ in 0..1_000_000 {
                if let Some((from, mac)) = self.arp_seen {
                    if from == ip {
                        return Ok(mac);
                    }
                }
                // Datagrams before the reply are not expected (the peer has not been asked).
                if self.poll_one()?.is_some() {
                    self.foreign += 1;
                }
            }
            Err(Fail::Check("net-io: no ARP reply"))
        }
    }

    /// The NIC hv attached.
    enum Card {
        Virtio(VirtioNet),
        Ne(Ne2000),
    }

    impl Nic for Card {
        fn mac(&self) -> [u8; 6] {
            match self {
                Card::Virtio(c) => c.mac(),
                Card::Ne(c) => c.mac(),
            }
        }
        fn send(&mut self, frame: &[u8]) -> Result<(), NicError> {
            match self {
                Card::Virtio(c) => c.send(frame),
                Card::Ne(c) => c.send(frame),
            }
        }
        fn recv(&mut self, out: &mut [u8]) -> Result<Option<usize>, NicError> {
            match self {
                Card::Virtio(c) => c.recv(out),
                Card::Ne(c) => c.recv(out),
            }
        }
        fn wait(&mut self) -> Result<(), NicError> {
            match self {
                Card::Virtio(c) => c.wait(),
                Card::Ne(c) => c.wait(),
            }
        }
        fn counters(&self) -> NicCounters {
            match self {
                Card::Virtio(c) => c.counters(),
                Card::Ne(c) => c.counters(),
            }
        }
    }

    fn open(ctx: &Ctx) -> Result<Card, Fail> {
        match ctx.args.str_or("net", "none") {
            "virtio" => {
                // hv names the transport (`net_mmio=`); QEMU's microvm lists its transports
                // as `virtio_mmio.device=` words, and those hold the line until acknowledged.
                let (base, irq, ack) = match ctx.args.u64_or("net_mmio", 0)? {
                    0 => match virtio::find_on_cmdline(ctx.args.line(), virtio_net::DEVICE_ID) {
                        Some((dev, irq)) => (dev.0, u64::from(irq), true),
                        None => {
                            return Err(Fail::Unsupported(
                                "virtio-net: no net_mmio= and no network device among virtio_mmio.device=",
                            ));
                        }
                    },
                    base => (base, ctx.args.u64_or("net_irq", 0)?, false),
                };
                if irq >= u64::from(ioapic::PINS) {
                    return Err(Fail::Unsupported("virtio-net IRQ beyond the IOAPIC's pins"));
                }
                let evidx = ctx.args.bool_or("evidx", true)?;
                let poll = ctx.args.bool_or("poll", false)?;
                VirtioNet::open(base, irq as u8, evidx, poll, ack)
                    .map(Card::Virtio)
                    .map_err(nic_fail)
            }
            "ne2k" => {
                let irq = ctx.args.u64_or("net_irq", 9)?;
                let rep = match ctx.args.str_or("pio", "loop") {
                    "rep" => true,
                    "loop" => false,
                    _ => return Err(Fail::BadArg("pio")),
                };
                Ne2000::open(Some(irq as u8), rep)
                    .map(Card::Ne)
                    .map_err(nic_fail)
            }
            _ => Err(Fail::Unsupported("no NIC (hv adds net=ne2k|virtio)")),
        }
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let part = ctx.args.u64_or("part", 0)?;
        let size = ctx.args.u64_or("size", 64)? as usize;
        let count = ctx.args.u64_or("count", 32)? as u32;
        let window = ctx.args.u64_or("window", 16)? as u32;
        let mode = ctx.args.str_or("mode", "pingpong");
        let how = ctx.args.str_or("how", "idle");
        if !(MIN_FRAME..=MAX_FRAME).contains(&size) {
            return Err(Fail::BadArg("size"));
        }
        if !(1..=32).contains(&window) {
            return Err(Fail::BadArg("window"));
        }
        if !matches!(mode, "pingpong" | "stream") {
            return Err(Fail::BadArg("mode"));
        }
        if part >= 2 && how == "idle" {
            println!("net-io: partition {part} idle");
            return Ok(());
        }
        let mut card = open(ctx)?;
        let me = Endpoint {
            mac: card.mac(),
            ip: ip_of(part),
            port: PORT,
        };
        if part >= 2 {
            return hostile(ctx, &mut card, me, how);
        }
        let mut host = Host {
            nic: &mut card,
            me,
            bad: 0,
            foreign: 0,
            ip_id: 0,
            arp_seen: None,
        };
        if part == 1 {
            // A peer VMM that starts the client only once the server can receive waits for
            // this line (hv's switch needs no such gate).
            println!("{SERVER_READY}");
            return serve(&mut host, window);
        }
        client(&mut host, mode, size, count, window)
    }

    fn irqs() -> u64 {
        virtio_net::IRQS.load(Ordering::Relaxed) + ne2000::IRQS.load(Ordering::Relaxed)
    }

    fn client(h: &mut Host, mode: &str, size: usize, count: u32, window: u32) -> Result<(), Fail> {
        let peer_mac = h.resolve(ip_of(1))?;
        let peer = Endpoint {
            mac: peer_mac,
            ip: ip_of(1),
            port: PORT,
        };
        // Two warm-up round trips outside the phase (first wake-ups of both workers).
        for seq in 0..2 {
            h.send(peer, K_PING, 0, u32::MAX - seq, 0, size)?;
            let m = h.next()?;
            if m.kind != K_PONG {
                return Err(Fail::Check("net-io: warm-up reply is not a pong"));
            }
        }
        let (irq0, kick0, drop0) = (irqs(), h.nic.counters().kicks, h.nic.counters().dropped);
        let (bad0, foreign0) = (h.bad, h.foreign);
        let mut hist = Histogram::default();
        let name = if mode == "stream" {
            "net-stream"
        } else {
            "net-pingpong"
        };
        let p = phase::begin(name);
        let mut frames = 0u64;
        let mut wrong = 0u64;
        if mode == "pingpong" {
            for seq in 0..count {
                let t0 = cpu::rdtsc();
                h.send(peer, K_PING, 0, seq, 0, size)?;
                loop {
                    let m = h.next()?;
                    if m.kind == K_PONG && m.seq == seq && m.len >= size.min(MAX_FRAME) {
                        break;
                    }
                    wrong += 1;
                }
                hist.record(cpu::rdtsc().wrapping_sub(t0));
                frames += 2;
            }
        } else {
            let mut seq = 0;
            while seq < count {
                let t0 = cpu::rdtsc();
                let end = (seq + window).min(count);
                for s in seq..end {
                    let flags = if s + 1 == end { F_LAST } else { 0 };
                    h.send(peer, K_DATA, flags, s, 0, size)?;
                }
                loop {
                    let m = h.next()?;
                    if m.kind == K_ACK && m.seq == end - 1 {
                        break;
                    }
                    wrong += 1;
                }
                hist.record(cpu::rdtsc().wrapping_sub(t0));
                frames += u64::from(end - seq);
                seq = end;
            }
        }
        let f = p.end(frames);
        let (irq1, c) = (irqs(), h.nic.counters());
        // DONE carries what was sent; the server answers with what it got.
        h.send(peer, K_DONE, 0, 0, count, MIN_FRAME)?;
        let got = loop {
            let m = h.next()?;
            if m.kind == K_DONE_ACK {
                break m.aux;
            }
        };
        let lost = if mode == "stream" {
            u64::from(count.saturating_sub(got))
        } else {
            0
        };
        f.report(
            &[
                ("size", size as u64),
                ("bytes", frames * size as u64),
                ("interrupts", irq1 - irq0),
                ("kicks", c.kicks - kick0),
                ("dropped", c.dropped - drop0),
                ("bad", h.bad - bad0),
                ("foreign", h.foreign - foreign0),
                ("wrong", wrong),
                ("lost", lost),
            ],
            Some(&hist),
        );
        if lost != 0 || wrong != 0 {
            println!("net-io: lost={lost} wrong={wrong}");
        }
        Ok(())
    }

    fn serve(h: &mut Host, window: u32) -> Result<(), Fail> {
        let _ = window;
        let irq0 = irqs();
        let p = phase::begin("net-serve");
        let mut frames = 0u64;
        let mut data = 0u32;
        loop {
            let m = h.next()?;
            frames += 1;
            match m.kind {
                K_PING => {
                    h.send(m.from, K_PONG, 0, m.seq, 0, m.len)?;
                    frames += 1;
                }
                K_DATA => {
                    data += 1;
                    if m.flags & F_LAST != 0 {
                        h.send(m.from, K_ACK, 0, m.seq, data, MIN_FRAME)?;
                        frames += 1;
                    }
                }
                K_DONE => {
                    h.send(m.from, K_DONE_ACK, 0, 0, data, MIN_FRAME)?;
                    frames += 1;
                    break;
                }
                _ => h.bad += 1,
            }
        }
        let f = p.end(frames);
        let c = h.nic.counters();
        f.report(
            &[
                ("interrupts", irqs() - irq0),
                ("kicks", c.kicks),
                ("dropped", c.dropped),
                ("bad", h.bad),
                ("foreign", h.foreign),
                ("data", u64::from(data)),
            ],
            None,
        );
        Ok(())
    }

    /// A hostile neighbour on the wire.
    fn hostile(ctx: &Ctx, card: &mut Card, me: Endpoint, how: &str) -> Result<(), Fail> {
        let flood = ctx.args.u64_or("flood", 2000)?;
        // hv's switch numbers MACs by partition (last byte = index + 1).
        let peer = |i: u8| {
            let mut m = me.mac;
            m[5] = i + 1;
            m
        };
        let targets = [peer(0), peer(1), BROADCAST];
        let p = phase::begin("net-hostile");
        let mut sent = 0u64;
        match how {
            "flood" => {
                let f = tx();
                for i in 0..flood {
                    let to = Endpoint {
                        mac: targets[(i % 3) as usize],
                        ip: ip_of(i % 2),
                        port: PORT,
                    };
                    let len = match i % 5 {
                        0 => {
                            // A well-formed datagram with a payload that fails the pattern.
                            f[HDRS..HDRS + 64].fill(0xee);
                            f[HDRS..HDRS + 4].copy_from_slice(&MAGIC.to_le_bytes());
                            net::build_udp(f, me, to, 64, i as u16)
                        }
                        1 => {
                            let n = net::build_udp(f, me, to, 200, i as u16);
                            f[HDRS + 10] ^= 0x5a; // UDP checksum now wrong
                            n
                        }
                        2 => {
                            let n = net::build_udp(f, me, to, 100, i as u16);
                            f[net::ETH_HDR + 2] = 0xff; // IP length (and checksum) wrong
                            n
                        }
                        3 => {
                            f[..6].copy_from_slice(&to.mac);
                            f[6..12].copy_from_slice(&me.mac);
                            f[12..].fill((i & 0xff) as u8);
                            MAX_FRAME
                        }
                        _ => {
                            f[..6].copy_from_slice(&to.mac);
                            14
                        }
                    };
                    card.send(&f[..len]).map_err(nic_fail)?;
                    sent += 1;
                }
            }
            "undrained" => {
                // Frames pile up in this partition's inbox; only the switch's bound holds them.
                let f = tx();
                for i in 0..flood.min(64) {
                    let n = net::build_arp(f, 1, (me.mac, me.ip), ([0; 6], ip_of(i % 2)));
                    card.send(&f[..n]).map_err(nic_fail)?;
                    sent += 1;
                }
                for _ in 0..200_000 {
                    cpu::pause();
                }
            }
            "oversize" => {
                for _ in 0..flood.min(64) {
                    match card {
                        Card::Virtio(c) => c.send_raw(0, 0x10_0000).map_err(nic_fail)?,
                        Card::Ne(c) => c.transmit_raw(0x7f, 0xffff),
                    }
                    sent += 1;
                }
            }
            "oob" => {
                sent += 1;
                match card {
                    Card::Virtio(c) => {
                        c.send_raw(0xfff0_0000_0000, 1500).map_err(nic_fail)?;
                        let mut broken = false;
                        for _ in 0..100_000 {
                            if c.needs_reset() {
                                broken = true;
                                break;
                            }
                            cpu::pause();
                        }
                        if !broken {
                            return Err(Fail::Check(
                                "net-io: oob descriptor did not break the device",
                            ));
                        }
                        println!("net-io: device needs reset after an out-of-memory descriptor");
                    }
                    Card::Ne(c) => {
                        // Remote DMA past the card's memory, then a transmit from past it.
                        c.dma_raw(0x9000, 64);
                        c.transmit_raw(0xff, 1514);
                        if c.isr() & 0x08 == 0 {
                            return Err(Fail::Check(
                                "net-io: transmit past the card's RAM not refused",
                            ));
                        }
                        println!("net-io: out-of-memory DMA and transmit refused (TXE)");
                    }
                }
            }
            _ => return Err(Fail::BadArg("how")),
        }
        let f = p.end(sent);
        f.report(&[("sent", sent)], None);
        Ok(())
    }
}
