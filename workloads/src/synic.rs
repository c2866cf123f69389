//! synic: the Hyper-V SynIC and synthetic timers, in the spirit of kvm-unit-tests'
//! hyperv_connections, hyperv_synic and hyperv_stimer. Each CPU enables its SynIC (SIMP and
//! SIEFP pages, SINT2 messages, SINT3 events, SINT4 timer messages, each SINT its own vector per
//! CPU); the BSP then, per phase (`phases=`):
//!
//! - `msg`: posts `iters` messages (HvCallPostMessage, hv's loopback connections) to itself
//!   and, with cpus>=2, to CPU 1, waiting for each handler to consume it;
//! - `event`: signals `iters` event flags (HvCallSignalEvent, fast) to itself and CPU 1;
//! - `status`: the busy-slot protocol (a second post into an unconsumed slot is
//!   HV_STATUS_INSUFFICIENT_BUFFERS and marks the slot MessagePending; after consume + EOM a
//!   post succeeds) and the status codes of an unknown connection and an oversized payload;
//! - `redelivery`: a one-shot timer expires into a slot the guest keeps full: hv marks it
//!   pending, and the guest's EOM after consuming brings HVMSG_TIMER_EXPIRED in;
//! - `oneshot`: `iters` one-shot timers (message mode), each 200 us ahead;
//! - `periodic`: a 1 ms periodic timer in message mode (and one in direct mode with
//!   hv-stimer-direct) until `iters` expiries; checks that expiries never come faster than the
//!   period.
//!
//! - `storm` (not in the default list): a periodic timer asking for a 100 ns period (hv raises
//!   it to 100 us) for 20 ms, and 50 posts into a masked SINT nobody drains: expiries stay
//!   within 20 ms / 100 us, every post after the first is HV_STATUS_INSUFFICIENT_BUFFERS.
//!
//! - `vmbus`: hv's VMBus-style echo channel: offers and open through management messages,
//!   then `iters` requests one at a time (`vmbus-echo`: write, signal, wait for the channel
//!   event, read the echo) and `iters` bursts of 8 (`vmbus-echo-burst`: 8 writes, one signal,
//!   one event, 8 reads), counting the signals the ring protocol asked for; then
//!   `vmbus-hostile`: an unaligned write index closes the channel (the signal succeeds, hv's
//!   channel worker finds the index and posts CHANNEL_CLOSED with reason BAD_INDEX, the next
//!   signal returns HV_STATUS_INVALID_PORT_ID), and after a fresh open the echo works again.
//!
//! Reports per phase `ops`, `delivered` (handler runs that consumed something), `failed`
//! (calls with an unexpected status) and, for timers, `expiries` and `elapsed_100ns`.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "synic",
    summary: "Hyper-V SynIC messages/events to self and another vCPU, busy slots and EOM redelivery, synthetic timers (one-shot, periodic, direct)",
    params: &[
        Param {
            key: "iters",
            default: "20",
            help: "messages, events, one-shot timers and periodic expiries per phase",
        },
        Param {
            key: "fault",
            default: "none",
            help: "none, or one bad MSR write that must #GP: sint-vector (unmasked vector 15), sint-reserved, simp-reserved, simp-mmio (page in the MMIO window), sversion (read-only), stimer-reserved",
        },
        Param {
            key: "phases",
            default: "msg,event,status,redelivery,oneshot,periodic,vmbus",
            help: "which phases to run (also: storm)",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use hvlab_guest_rt::phase;
    use hvlab_guest_rt::pv::hyperv;
    use hvlab_guest_rt::pv::synic::{self, PostInput, SynicPages};
    use hvlab_guest_rt::{Ctx, Fail, cpu, idt, smp};
    use hvlab_protocol::hyperv as tlfs;

    use crate::common::{WAIT_LIMIT, halt_until, not_exposed, wait_count};

    const SINT_MSG: u32 = 2;
    const SINT_EVT: u32 = 3;
    const SINT_TMR: u32 = 4;
    /// Direct-mode timer vector offset (not a SINT).
    const DIRECT: u8 = 8;
    /// Vector of `slot` on CPU `cpu` (0 or 1): 0xa0 + 16 * cpu + slot.
    const fn vector(cpu: usize, slot: u8) -> u8 {
        0xa0 + 0x10 * cpu as u8 + slot
    }

    static PAGES: [SynicPages; 2] = [SynicPages::new(), SynicPages::new()];
    static INPUT: PostInput = PostInput::new();
    static MSGS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
    static EVENTS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
    static TIMER_MSGS: AtomicU32 = AtomicU32::new(0);
    static DIRECT_HITS: AtomicU32 = AtomicU32::new(0);
    static READY: AtomicU32 = AtomicU32::new(0);
    static HALTS: AtomicU64 = AtomicU64::new(0);
    static QUIT: AtomicBool = AtomicBool::new(false);
    /// The first payload words of the last message CPU 0 consumed on SINT 2.
    static LAST_MSG: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

    /// The VMBus channel's two rings: 2 pages guest -> hv, then 2 pages hv -> guest.
    #[repr(C, align(4096))]
    struct RingPages(core::cell::UnsafeCell<[u8; 4 * 4096]>);
    // SAFETY: only the BSP touches the rings, inside `vmbus_echo`.
    unsafe impl Sync for RingPages {}
    static RINGS: RingPages = RingPages(core::cell::UnsafeCell::new([0; 4 * 4096]));

    fn on_sint(v: u8) {
        let cpu = usize::from((v - 0xa0) >> 4) & 1;
        let slot = v & 0xf;
        let pages = &PAGES[cpu];
        match u32::from(slot) {
            SINT_MSG => {
                if cpu == 0 {
                    for (i, w) in LAST_MSG.iter().enumerate() {
                        w.store(pages.payload_word(SINT_MSG, i), Ordering::Release);
                    }
                }
                if pages.consume(SINT_MSG).0 != tlfs::HVMSG_NONE {
                    MSGS[cpu].fetch_add(1, Ordering::AcqRel);
                }
            }
            SINT_EVT => {
                EVENTS[cpu].fetch_add(pages.take_events(SINT_EVT).count_ones(), Ordering::AcqRel);
            }
            SINT_TMR => {
                if pages.consume(SINT_TMR).0 == tlfs::HVMSG_TIMER_EXPIRED {
                    TIMER_MSGS.fetch_add(1, Ordering::AcqRel);
                }
            }
            _ => {
                DIRECT_HITS.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn setup_this_cpu(cpu: usize) {
        for s in [SINT_MSG as u8, SINT_EVT as u8, SINT_TMR as u8, DIRECT] {
            idt::register(vector(cpu, s), on_sint);
        }
        PAGES[cpu].enable();
        for s in [SINT_MSG, SINT_EVT, SINT_TMR] {
            synic::set_sint(s, vector(cpu, s as u8));
        }
    }

    fn ap_job(_cpu: u32, _: usize) {
        setup_this_cpu(1);
        READY.fetch_add(1, Ordering::AcqRel);
        halt_until(&QUIT, &HALTS);
    }

    /// Halts until `c` reaches `target` (interrupts wake it); bounded by [`WAIT_LIMIT`].
    fn halt_for(c: &AtomicU32, target: u32, what: &'static str) -> Result<(), Fail> {
        let start = cpu::rdtsc();
        loop {
            cpu::cli();
            if c.load(Ordering::Acquire) >= target {
                cpu::sti();
                return Ok(());
            }
            if cpu::rdtsc().wrapping_sub(start) > WAIT_LIMIT {
                cpu::sti();
                return Err(Fail::Check(what));
            }
            cpu::sti_hlt();
        }
    }

    fn now() -> Result<u64, Fail> {
        hyperv::reference_time().ok_or(Fail::Unsupported("hv-stimer needs hv-time"))
    }

    fn conn_msg(vp: u32, sint: u32) -> u32 {
        tlfs::CONN_MSG_BASE + vp * 16 + sint
    }
    fn conn_evt(vp: u32, sint: u32) -> u32 {
        tlfs::CONN_EVENT_BASE + vp * 16 + sint
    }

    fn messages(iters: u64, target: usize) -> Result<(), Fail> {
        let name = if target == 0 {
            "synic-msg-self"
        } else {
            "synic-msg-other"
        };
        let c = &MSGS[target];
        let start = c.load(Ordering::Acquire);
        let mut expect = start;
        let mut failed = 0;
        let p = phase::begin(name);
        for i in 0..iters {
            if synic::post_message(&INPUT, conn_msg(target as u32, SINT_MSG), 1, 16, &[i, !i]) != 0
            {
                failed += 1;
                continue;
            }
            expect += 1;
            if target == 0 {
                halt_for(c, expect, "a message to self was never handled")?;
            } else {
                wait_count(c, expect, "a message to CPU 1 was never handled")?;
            }
        }
        let f = p.end(iters);
        f.report(
            &[("delivered", u64::from(expect - start)), ("failed", failed)],
            None,
        );
        if failed != 0 {
            return Err(Fail::Check("HvCallPostMessage failed"));
        }
        Ok(())
    }

    fn events(iters: u64, target: usize) -> Result<(), Fail> {
        let name = if target == 0 {
            "synic-event-self"
        } else {
            "synic-event-other"
        };
        let c = &EVENTS[target];
        let start = c.load(Ordering::Acquire);
        let mut expect = start;
        let mut failed = 0;
        let p = phase::begin(name);
        for i in 0..iters {
            if synic::signal_event(conn_evt(target as u32, SINT_EVT), (i % 64) as u16) != 0 {
                failed += 1;
                continue;
            }
            expect += 1;
            if target == 0 {
                halt_for(c, expect, "an event to self was never handled")?;
            } else {
                wait_count(c, expect, "an event to CPU 1 was never handled")?;
            }
        }
        let f = p.end(iters);
        f.report(
            &[("delivered", u64::from(expect - start)), ("failed", failed)],
            None,
        );
        if failed != 0 {
            return Err(Fail::Check("HvCallSignalEvent failed"));
        }
        Ok(())
    }

    /// Busy slot, consume + EOM, and the status codes of bad ids and sizes.
    fn status() -> Result<(), Fail> {
        let me = conn_msg(0, SINT_MSG);
        let p = phase::begin("synic-status");
        cpu::cli();
        let first = synic::post_message(&INPUT, me, 1, 8, &[1]);
        let busy = synic::post_message(&INPUT, me, 1, 8, &[2]);
        let (kind, _, pending) = PAGES[0].slot(SINT_MSG);
        let consumed = PAGES[0].consume(SINT_MSG);
        let after_eom = synic::post_message(&INPUT, me, 1, 8, &[3]);
        let unknown = synic::post_message(&INPUT, 0x7777, 1, 8, &[0]);
        let too_big = synic::post_message(&INPUT, me, 1, 241, &[0]);
        let bad_event = synic::signal_event(0x7777, 0);
        cpu::sti();
        let f = p.end(6);
        f.report(
            &[
                ("first", u64::from(first)),
                ("busy", u64::from(busy)),
                ("pending_flag", u64::from(pending)),
                ("after_eom", u64::from(after_eom)),
                ("unknown_connection", u64::from(unknown)),
                ("too_big", u64::from(too_big)),
                ("unknown_event_connection", u64::from(bad_event)),
            ],
            None,
        );
        let ok = first == 0
            && busy == tlfs::STATUS_INSUFFICIENT_BUFFERS
            && kind == 1
            && pending
            && consumed == (1, true)
            && after_eom == 0
            && unknown == tlfs::STATUS_INVALID_CONNECTION_ID
            && too_big == tlfs::STATUS_INVALID_PARAMETER
            && bad_event == tlfs::STATUS_INVALID_CONNECTION_ID;
        if !ok {
            return Err(Fail::Check("SynIC busy-slot protocol or status codes"));
        }
        Ok(())
    }

    /// A timer expiry into a full slot waits for EOM.
    fn redelivery() -> Result<(), Fail> {
        let p = phase::begin("stimer-redelivery");
        cpu::cli();
        let filled = synic::post_message(&INPUT, conn_msg(0, SINT_TMR), 0x77, 8, &[0]);
        let t0 = now()?;
        synic::stimer_start(0, synic::stimer_config(false, None, SINT_TMR), t0 + 5_000);
        // Wait (interrupts off) until hv found the slot full and marked it pending.
        let start = cpu::rdtsc();
        let mut pending = false;
        while !pending && cpu::rdtsc().wrapping_sub(start) < WAIT_LIMIT {
            pending = PAGES[0].slot(SINT_TMR).2;
            cpu::pause();
        }
        let waited = now()?.saturating_sub(t0);
        let before = PAGES[0].slot(SINT_TMR).0;
        // Consume the guest's message; EOM (pending was set) brings the timer's in.
        let consumed = PAGES[0].consume(SINT_TMR);
        let (kind, size, _) = PAGES[0].slot(SINT_TMR);
        let timer_index = PAGES[0].payload_word(SINT_TMR, 0) as u32;
        let expiration = PAGES[0].payload_word(SINT_TMR, 1);
        let msgs0 = TIMER_MSGS.load(Ordering::Acquire);
        cpu::sti();
        halt_for(
            &TIMER_MSGS,
            msgs0 + 1,
            "the redelivered timer message was never handled",
        )?;
        let f = p.end(1);
        f.report(
            &[
                ("pending_flag", u64::from(pending)),
                ("waited_100ns", waited),
                ("redelivered_type", u64::from(kind)),
                ("payload_size", u64::from(size)),
            ],
            None,
        );
        let ok = filled == 0
            && pending
            && before == 0x77
            && consumed == (0x77, true)
            && kind == tlfs::HVMSG_TIMER_EXPIRED
            && size == 24
            && timer_index == 0
            && expiration == t0 + 5_000;
        if !ok {
            return Err(Fail::Check("timer message redelivery on EOM"));
        }
        Ok(())
    }

    fn oneshot(iters: u64) -> Result<(), Fail> {
        let c0 = TIMER_MSGS.load(Ordering::Acquire);
        let p = phase::begin("stimer-oneshot");
        let t0 = now()?;
        for i in 0..iters as u32 {
            let at = now()? + 2_000;
            synic::stimer_start(0, synic::stimer_config(false, None, SINT_TMR), at);
            halt_for(&TIMER_MSGS, c0 + i + 1, "a one-shot timer never expired")?;
        }
        let elapsed = now()? - t0;
        let f = p.end(iters);
        let got = TIMER_MSGS.load(Ordering::Acquire) - c0;
        f.report(
            &[("expiries", u64::from(got)), ("elapsed_100ns", elapsed)],
            None,
        );
        // Each waited at least its 200 us.
        if u64::from(got) != iters || elapsed < iters * 2_000 {
            return Err(Fail::Check("one-shot timer count or early expiry"));
        }
        Ok(())
    }

    fn periodic(iters: u64, direct: bool) -> Result<(), Fail> {
        const PERIOD: u64 = 10_000; // 1 ms
        let (name, counter, timer, config) = if direct {
            let c = synic::stimer_config(true, Some(vector(0, DIRECT)), 0);
            ("stimer-periodic-direct", &DIRECT_HITS, 1, c)
        } else {
            let c = synic::stimer_config(true, None, SINT_TMR);
            ("stimer-periodic", &TIMER_MSGS, 0, c)
        };
        let c0 = counter.load(Ordering::Acquire);
        let p = phase::begin(name);
        let t0 = now()?;
        synic::stimer_start(timer, config, PERIOD);
        halt_for(
            counter,
            c0 + iters as u32,
            "a periodic timer stopped expiring",
        )?;
        let elapsed = now()? - t0;
        synic::stimer_stop(timer);
        let f = p.end(iters);
        f.report(&[("expiries", iters), ("elapsed_100ns", elapsed)], None);
        // n expiries of a periodic timer armed at t0 take at least n periods.
        if elapsed < iters * PERIOD {
            return Err(Fail::Check("periodic timer expired faster than its period"));
        }
        Ok(())
    }

    /// Posts a VMBus management message and waits for hv's reply; its first payload words.
    fn vmbus_request(words: &[u64], size: u32) -> Result<[u64; 4], Fail> {
        use hvlab_protocol::vmbus as vb;
        let m0 = MSGS[0].load(Ordering::Acquire);
        if synic::post_message(&INPUT, vb::CONN_MANAGEMENT, vb::MSG_TYPE, size, words) != 0 {
            return Err(Fail::Check("VMBus management message refused"));
        }
        halt_for(&MSGS[0], m0 + 1, "no VMBus management reply")?;
        Ok(core::array::from_fn(|i| {
            LAST_MSG[i].load(Ordering::Acquire)
        }))
    }

    fn vmbus_echo(iters: u64) -> Result<(), Fail> {
        use hvlab_guest_rt::pv::vmbus::Ring;
        use hvlab_protocol::vmbus as vb;
        let offers = vmbus_request(&[u64::from(vb::REQUEST_OFFERS)], 4)?;
        let (kind, count) = (offers[0] as u32, (offers[0] >> 32) as u32);
        let (channel, device) = (offers[1] as u32, (offers[1] >> 32) as u32);
        if kind != vb::OFFERS || count == 0 || device != vb::DEVICE_ECHO {
            return Err(Fail::Check("VMBus offers"));
        }
        let base = RINGS.0.get() as *mut u8;
        // SAFETY: the static's four pages belong to these two rings.
        let (out, inr) = unsafe { (Ring::new(base, 2), Ring::new(base.add(2 * 4096), 2)) };
        let open = [
            u64::from(vb::OPEN) | u64::from(channel) << 32,
            base as u64,
            2 | 2 << 32,
        ];
        let r = vmbus_request(&open, 24)?;
        if r[0] as u32 != vb::OPEN_RESULT || r[1] as u32 != vb::OPEN_OK {
            return Err(Fail::Check("VMBus open"));
        }
        let conn = vb::CONN_CHANNEL_BASE + channel;
        let mut buf = [0u8; 64];
        for burst in [1u64, 8] {
            let name = if burst == 1 {
                "vmbus-echo"
            } else {
                "vmbus-echo-burst"
            };
            let (mut signals, mut bad) = (0u64, 0u64);
            let p = phase::begin(name);
            for i in 0..iters {
                let ev0 = EVENTS[0].load(Ordering::Acquire);
                let mut signal = false;
                for j in 0..burst {
                    let t = i * burst + j;
                    let payload = [t as u8; 64];
                    match out.write(vb::PACKET_DATA, t, &payload) {
                        Some(s) => signal |= s,
                        None => return Err(Fail::Check("VMBus ring full")),
                    }
                }
                if signal {
                    signals += 1;
                    if synic::signal_event(conn, 0) != 0 {
                        return Err(Fail::Check("VMBus channel signal refused"));
                    }
                }
                halt_for(&EVENTS[0], ev0 + 1, "no VMBus channel event")?;
                for j in 0..burst {
                    let t = i * burst + j;
                    match inr.read(&mut buf) {
                        Some((_, got, n)) if got == t && n == 64 && buf == [t as u8; 64] => {}
                        _ => bad += 1,
                    }
                }
            }
            let f = p.end(iters * burst);
            f.report(
                &[
                    ("requests", iters * burst),
                    ("signals", signals),
                    ("bad", bad),
                ],
                None,
            );
            if bad != 0 {
                return Err(Fail::Check("VMBus echo mismatch"));
            }
        }
        // Hostile: a broken write index closes the channel (hv's worker finds it after the
        // signal, which succeeds, and says so in a CHANNEL_CLOSED message); later signals are
        // refused; reopening brings it back.
        let p = phase::begin("vmbus-hostile");
        out.set_write_index_raw(12);
        let m0 = MSGS[0].load(Ordering::Acquire);
        let broken = synic::signal_event(conn, 0);
        halt_for(&MSGS[0], m0 + 1, "no VMBus CHANNEL_CLOSED notice")?;
        let notice = LAST_MSG[0].load(Ordering::Acquire);
        let reason = LAST_MSG[1].load(Ordering::Acquire) as u32;
        let closed = synic::signal_event(conn, 0);
        // SAFETY: as above; the rings start over.
        let (out, inr) = unsafe { (Ring::new(base, 2), Ring::new(base.add(2 * 4096), 2)) };
        let r = vmbus_request(&open, 24)?;
        let ev0 = EVENTS[0].load(Ordering::Acquire);
        let again = match out.write(vb::PACKET_DATA, 7, &[7; 64]) {
            Some(true) => synic::signal_event(conn, 0),
            _ => 0xffff,
        };
        if again == 0 {
            halt_for(&EVENTS[0], ev0 + 1, "no VMBus channel event after reopen")?;
        }
        let echoed = matches!(inr.read(&mut buf), Some((_, 7, 64)));
        let f = p.end(1);
        f.report(
            &[
                ("broken", u64::from(broken)),
                ("reason", u64::from(reason)),
                ("closed", u64::from(closed)),
                ("reopen", r[1] & 0xffff_ffff),
                ("echoed", u64::from(echoed)),
            ],
            None,
        );
        let ok = broken == tlfs::STATUS_SUCCESS
            && notice == u64::from(vb::CHANNEL_CLOSED) | u64::from(channel) << 32
            && reason == vb::CLOSED_BAD_INDEX
            && closed == tlfs::STATUS_INVALID_PORT_ID
            && r[1] as u32 == vb::OPEN_OK
            && again == 0
            && echoed;
        if !ok {
            return Err(Fail::Check(
                "VMBus channel did not close on a bad index or reopen",
            ));
        }
        Ok(())
    }

    /// A guest trying to flood itself: hv's minimum period and the one-slot-per-SINT rule
    /// bound what it gets.
    fn storm(direct: bool) -> Result<(), Fail> {
        const SPAN: u64 = 200_000; // 20 ms
        let p = phase::begin("synic-storm");
        let (counter, config) = if direct {
            (
                &DIRECT_HITS,
                synic::stimer_config(true, Some(vector(0, DIRECT)), 0),
            )
        } else {
            (&TIMER_MSGS, synic::stimer_config(true, None, SINT_TMR))
        };
        let c0 = counter.load(Ordering::Acquire);
        let t0 = now()?;
        synic::stimer_start(2, config, 1);
        while now()? < t0 + SPAN {
            cpu::sti_hlt();
        }
        synic::stimer_stop(2);
        let elapsed = now()? - t0;
        let hits = u64::from(counter.load(Ordering::Acquire) - c0);
        // SINT 5 stays masked: nobody consumes, so one message fits and the rest are refused.
        let mut busy = 0;
        let first = synic::post_message(&INPUT, conn_msg(0, 5), 1, 8, &[0]);
        for _ in 0..50 {
            if synic::post_message(&INPUT, conn_msg(0, 5), 1, 8, &[0])
                == tlfs::STATUS_INSUFFICIENT_BUFFERS
            {
                busy += 1;
            }
        }
        let f = p.end(hits);
        f.report(
            &[
                ("expiries", hits),
                ("elapsed_100ns", elapsed),
                ("busy", busy),
            ],
            None,
        );
        let bound = elapsed / 1_000 + 2;
        if hits == 0 || hits > bound || first != 0 || busy != 50 {
            return Err(Fail::Check(
                "timer or message storm not bounded as documented",
            ));
        }
        Ok(())
    }

    /// One MSR write the TLFS (and hv) refuses: the runtime reports the #GP and ends the run
    /// with status 3; returning is the failure.
    fn bad_write(fault: &str) -> Result<(), Fail> {
        let (msr, value) = match fault {
            "sint-vector" => (tlfs::MSR_SINT0, 0x0f),
            "sint-reserved" => (tlfs::MSR_SINT0 + 1, 0x40 | 1 << 8),
            "simp-reserved" => (tlfs::MSR_SIMP, 0x1000 | 1 << 1 | 1),
            "simp-mmio" => (tlfs::MSR_SIMP, 0xd000_0000 | 1),
            "sversion" => (tlfs::MSR_SVERSION, 1),
            "stimer-reserved" => (tlfs::MSR_STIMER0_CONFIG, 1 << 20),
            _ => return Err(Fail::BadArg("fault")),
        };
        hvlab_guest_rt::println!("HVLAB rec=info expect_fault=gp msr={msr:#x}");
        cpu::wrmsr(msr, value);
        Err(Fail::Check("a refused SynIC/STIMER MSR write did not #GP"))
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 20)?.clamp(1, 1000);
        let info = hyperv::detect().unwrap_or_default();
        if info.privileges & tlfs::PRIV_SYNIC_MSRS == 0 {
            return Err(not_exposed!("synic", "hv-synic"));
        }
        let stimer = info.privileges & tlfs::PRIV_SYNTIMER_MSRS != 0;
        let direct = info.features_edx & tlfs::FEAT_STIMER_DIRECT != 0;
        hyperv::enable_hypercalls();
        let fault = ctx.args.str_or("fault", "none");
        if fault != "none" {
            return bad_write(fault);
        }
        let phases = ctx.args.str_or(
            "phases",
            "msg,event,status,redelivery,oneshot,periodic,vmbus",
        );
        let two = ctx.cpus >= 2;
        setup_this_cpu(0);
        if two {
            smp::post(1, ap_job, 0);
            wait_count(&READY, 1, "CPU 1 did not start")?;
        }
        let mut result = Ok(());
        for w in phases.split(',') {
            let timer = matches!(w, "redelivery" | "oneshot" | "periodic" | "storm");
            if timer && !stimer {
                phase::skip(w, "hv-stimer_not_exposed");
                continue;
            }
            result = match w {
                "msg" => {
                    messages(iters, 0).and_then(|()| if two { messages(iters, 1) } else { Ok(()) })
                }
                "event" => {
                    events(iters, 0).and_then(|()| if two { events(iters, 1) } else { Ok(()) })
                }
                "status" => status(),
                "storm" => storm(direct),
                "vmbus" => vmbus_echo(iters),
                "redelivery" => redelivery(),
                "oneshot" => oneshot(iters),
                "periodic" => periodic(iters, false).and_then(|()| {
                    if direct {
                        periodic(iters, true)
                    } else {
                        Ok(())
                    }
                }),
                _ => Err(Fail::BadArg("phases")),
            };
            if result.is_err() {
                break;
            }
        }
        if two {
            QUIT.store(true, Ordering::Release);
            hvlab_guest_rt::apic::send_ipi(smp::apic_id(1), vector(1, SINT_MSG as u8));
            smp::wait(1);
        }
        result
    }
}
