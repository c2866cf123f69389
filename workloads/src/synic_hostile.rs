//! synic-hostile: a guest abusing the Hyper-V SynIC on purpose, to show what hv bounds and what
//! it never does. One vCPU; SIMP/SIEFP enabled, every SINT it uses unmasked on a vector whose
//! handler counts but (unless said) never consumes. Phases (`phases=`):
//!
//! - `unknown`: HvCallPostMessage and HvCallSignalEvent to connection ids that name nothing in
//!   this partition (ids of VPs it does not have, far ids, an event connection for a post and
//!   a message connection for a signal): every call must return
//!   HV_STATUS_INVALID_CONNECTION_ID, and afterwards no slot of the SIMP page holds a message,
//!   no event flag is set and no SynIC interrupt arrived (`delivered`);
//! - `flood`: `iters` posts into its own SINT 5 and `iters` signals of one event flag there,
//!   never drained: one message lands, every other post is HV_STATUS_INSUFFICIENT_BUFFERS, the
//!   flag is set once; after consume + EOM a post succeeds again;
//! - `timers`: all four STIMERs periodic at a 100 ns period (hv raises it to 100 us) in message
//!   mode into SINT 6, which nobody drains, for 10 ms: one message lands, one waits for EOM,
//!   the rest are missed; after the timers stop, consume + EOM brings the waiting one in;
//! - `direct` (with hv-stimer-direct): the four timers in direct mode at the same period, each
//!   its own vector, for 10 ms: the guest keeps making progress and the interrupts it takes
//!   are bounded by the elapsed time.
//!
//! Every wait is bounded (reference time or [`crate::common::WAIT_LIMIT`]). Reports per phase
//! the statuses seen and what was delivered, for the host to compare with hv's counters.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "synic-hostile",
    summary: "Hyper-V SynIC abuse: posts/signals to unknown connections, floods into undrained slots, four tiny-period timers (message and direct mode)",
    params: &[
        Param {
            key: "iters",
            default: "200",
            help: "posts and signals in the flood phase",
        },
        Param {
            key: "phases",
            default: "unknown,flood,timers,direct",
            help: "which phases to run",
        },
    ],
    min_vcpus: 1,
    devices: &[],
    host_features: &[],
};

/// The storm phases last this long (reference time, 100 ns units: 10 ms).
pub const STORM_SPAN: u64 = 100_000;

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, Ordering};

    use hvlab_guest_rt::pv::hyperv;
    use hvlab_guest_rt::pv::synic::{self, PostInput, SynicPages};
    use hvlab_guest_rt::{Ctx, Fail, cpu, idt, phase};
    use hvlab_protocol::hyperv as tlfs;

    use super::STORM_SPAN;
    use crate::common::{WAIT_LIMIT, not_exposed};

    /// SINTs used: 1 is a spy nothing may reach, 5 the flood target, 6 the timers' target.
    const SINT_SPY: u32 = 1;
    const SINT_FLOOD: u32 = 5;
    const SINT_TIMER: u32 = 6;
    /// Vector of SINT n: 0x60 + n; direct-mode timer n: 0x70 + n.
    const SINT_VECTOR_BASE: u8 = 0x60;
    const DIRECT_VECTOR_BASE: u8 = 0x70;

    static PAGES: SynicPages = SynicPages::new();
    static INPUT: PostInput = PostInput::new();
    /// Handler runs per vector 0x60..0x80.
    static HITS: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];

    fn on_irq(v: u8) {
        HITS[usize::from(v - SINT_VECTOR_BASE) % 32].fetch_add(1, Ordering::AcqRel);
    }

    fn hits(v: u8) -> u32 {
        HITS[usize::from(v - SINT_VECTOR_BASE) % 32].load(Ordering::Acquire)
    }

    fn all_hits() -> u32 {
        HITS.iter().map(|h| h.load(Ordering::Acquire)).sum()
    }

    fn now() -> Result<u64, Fail> {
        hyperv::reference_time().ok_or(Fail::Unsupported("hv-stimer needs hv-time"))
    }

    /// Spins with interrupts on until `span` of reference time has passed (bounded also by
    /// [`WAIT_LIMIT`] TSC cycles); returns the elapsed reference time. No `hlt`: once a
    /// storm's slot is full nothing may interrupt the guest again, and a halt would never end.
    fn storm_wait(span: u64) -> Result<u64, Fail> {
        let t0 = now()?;
        let tsc0 = cpu::rdtsc();
        cpu::sti();
        while now()? < t0 + span && cpu::rdtsc().wrapping_sub(tsc0) < WAIT_LIMIT {
            cpu::pause();
        }
        Ok(now()? - t0)
    }

    /// Messages in any slot and event flags set anywhere in this CPU's SynIC pages.
    fn delivered_anywhere() -> u64 {
        let mut n = 0;
        for sint in 0..16 {
            if PAGES.slot(sint).0 != tlfs::HVMSG_NONE {
                n += 1;
            }
            n += u64::from(PAGES.take_events(sint).count_ones());
        }
        n
    }

    fn unknown(vps: u32) -> Result<(), Fail> {
        // Nothing in a partition of `vps` VPs answers to these (VP `vps` and up do not exist;
        // 0x4_0000 and up are past every range hv serves; 5..0xffff are below them and not
        // management).
        let ids = [
            0,
            1,
            5,
            0xffff,
            tlfs::CONN_MSG_BASE + 16 * vps,
            tlfs::CONN_MSG_BASE + 16 * vps + SINT_SPY,
            tlfs::CONN_MSG_BASE + 16 * 63 + 15,
            tlfs::CONN_EVENT_BASE - 1,
            tlfs::CONN_EVENT_BASE + 16 * vps,
            tlfs::CONN_EVENT_BASE + 16 * 4095 + 15,
            0x0004_0000,
            0x8000_0000 | tlfs::CONN_MSG_BASE,
            0xffff_ffff,
        ];
        let p = phase::begin("synic-unknown");
        let hits0 = all_hits();
        let (mut calls, mut unexpected) = (0u64, 0u64);
        for id in ids {
            for st in [
                synic::post_message(&INPUT, id, 1, 16, &[0x5eed, u64::from(id)]),
                synic::signal_event(id, 0),
            ] {
                calls += 1;
                if st != tlfs::STATUS_INVALID_CONNECTION_ID {
                    unexpected += 1;
                }
            }
        }
        // Each of the partition's own connections with the wrong call: a post to an event
        // connection and a signal to a message connection name nothing either.
        for sint in [SINT_SPY, SINT_FLOOD] {
            for st in [
                synic::post_message(&INPUT, tlfs::CONN_EVENT_BASE + sint, 1, 8, &[1]),
                synic::signal_event(tlfs::CONN_MSG_BASE + sint, 0),
            ] {
                calls += 1;
                if st != tlfs::STATUS_INVALID_CONNECTION_ID {
                    unexpected += 1;
                }
            }
        }
        // Interrupts would have arrived by now (the calls returned with interrupts on).
        let delivered = delivered_anywhere() + u64::from(all_hits() - hits0);
        let f = p.end(calls);
        f.report(
            &[
                ("calls", calls),
                ("unexpected_status", unexpected),
                ("delivered", delivered),
            ],
            None,
        );
        if unexpected != 0 || delivered != 0 {
            return Err(Fail::Check(
                "a call to an unknown connection was not refused or was delivered",
            ));
        }
        Ok(())
    }

    fn flood(iters: u64) -> Result<(), Fail> {
        let vector = SINT_VECTOR_BASE + SINT_FLOOD as u8;
        let h0 = hits(vector);
        let p = phase::begin("synic-flood");
        let me = tlfs::CONN_MSG_BASE + SINT_FLOOD;
        let first = synic::post_message(&INPUT, me, 1, 8, &[0]);
        let (mut busy, mut other) = (0u64, 0u64);
        for i in 1..iters {
            match synic::post_message(&INPUT, me, 1, 8, &[i]) {
                tlfs::STATUS_INSUFFICIENT_BUFFERS => busy += 1,
                _ => other += 1,
            }
        }
        let mut signal_errors = 0u64;
        for _ in 0..iters {
            if synic::signal_event(tlfs::CONN_EVENT_BASE + SINT_FLOOD, 7) != tlfs::STATUS_SUCCESS {
                signal_errors += 1;
            }
        }
        let storm_hits = hits(vector) - h0;
        let flags = PAGES.take_events(SINT_FLOOD);
        // Drain: the message is the first one posted (the others never landed), pending set.
        let payload = PAGES.payload_word(SINT_FLOOD, 0);
        let consumed = PAGES.consume(SINT_FLOOD);
        let after = synic::post_message(&INPUT, me, 1, 8, &[0xaf7e]);
        let again = PAGES.payload_word(SINT_FLOOD, 0);
        let _ = PAGES.consume(SINT_FLOOD);
        let f = p.end(2 * iters);
        f.report(
            &[
                ("first", u64::from(first)),
                ("busy", busy),
                ("other", other),
                ("signal_errors", signal_errors),
                ("interrupts", u64::from(storm_hits)),
                ("flags", flags),
                ("after_drain", u64::from(after)),
            ],
            None,
        );
        let ok = first == tlfs::STATUS_SUCCESS
            && busy == iters - 1
            && other == 0
            && signal_errors == 0
            && (1..=2).contains(&storm_hits)
            && flags == 1 << 7
            && payload == 0
            && consumed == (1, true)
            && after == tlfs::STATUS_SUCCESS
            && again == 0xaf7e;
        if !ok {
            return Err(Fail::Check(
                "a flood into an undrained slot was not bounded",
            ));
        }
        Ok(())
    }

    fn stop_timers() {
        for n in 0..4 {
            synic::stimer_stop(n);
        }
    }

    fn timers() -> Result<(), Fail> {
        let vector = SINT_VECTOR_BASE + SINT_TIMER as u8;
        let h0 = hits(vector);
        let p = phase::begin("stimer-flood");
        let config = synic::stimer_config(true, None, SINT_TIMER);
        for n in 0..4 {
            synic::stimer_start(n, config, 1);
        }
        let elapsed = storm_wait(STORM_SPAN)?;
        stop_timers();
        let during = hits(vector) - h0;
        let (kind, _, pending) = PAGES.slot(SINT_TIMER);
        // Consume + EOM: the message that waited comes in (and is consumed in turn).
        cpu::cli();
        let first = PAGES.consume(SINT_TIMER);
        let (kind2, _, _) = PAGES.slot(SINT_TIMER);
        let second = PAGES.consume(SINT_TIMER);
        cpu::sti();
        let left = PAGES.slot(SINT_TIMER).0;
        let f = p.end(1);
        f.report(
            &[
                ("elapsed_100ns", elapsed),
                ("interrupts", u64::from(during)),
                ("pending_flag", u64::from(pending)),
                ("redelivered", u64::from(kind2 == tlfs::HVMSG_TIMER_EXPIRED)),
            ],
            None,
        );
        let ok = during == 1
            && kind == tlfs::HVMSG_TIMER_EXPIRED
            && pending
            && first == (tlfs::HVMSG_TIMER_EXPIRED, true)
            && kind2 == tlfs::HVMSG_TIMER_EXPIRED
            && second.0 == tlfs::HVMSG_TIMER_EXPIRED
            && left == tlfs::HVMSG_NONE;
        if !ok {
            return Err(Fail::Check(
                "timers storming an undrained slot were not held to one message + one waiting",
            ));
        }
        Ok(())
    }

    fn direct() -> Result<(), Fail> {
        let p = phase::begin("stimer-direct-flood");
        let h0: u32 = (0..4).map(|n| hits(DIRECT_VECTOR_BASE + n)).sum();
        for n in 0..4u8 {
            let config = synic::stimer_config(true, Some(DIRECT_VECTOR_BASE + n), 0);
            synic::stimer_start(u32::from(n), config, 1);
        }
        let elapsed = storm_wait(STORM_SPAN)?;
        stop_timers();
        let got = (0..4).map(|n| hits(DIRECT_VECTOR_BASE + n)).sum::<u32>() - h0;
        let f = p.end(u64::from(got));
        f.report(
            &[("elapsed_100ns", elapsed), ("interrupts", u64::from(got))],
            None,
        );
        // Four timers, one expiry each per 100 us at most (plus the edges).
        if got == 0 || u64::from(got) > 4 * (elapsed / 1_000 + 2) {
            return Err(Fail::Check("direct-mode timer storm not bounded"));
        }
        Ok(())
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        let iters = ctx.args.u64_or("iters", 200)?.clamp(2, 10_000);
        let info = hyperv::detect().unwrap_or_default();
        if info.privileges & tlfs::PRIV_SYNIC_MSRS == 0 {
            return Err(not_exposed!("synic-hostile", "hv-synic"));
        }
        let stimer = info.privileges & tlfs::PRIV_SYNTIMER_MSRS != 0;
        let direct_ok = info.features_edx & tlfs::FEAT_STIMER_DIRECT != 0;
        hyperv::enable_hypercalls();
        for v in SINT_VECTOR_BASE..SINT_VECTOR_BASE + 0x20 {
            idt::register(v, on_irq);
        }
        PAGES.enable();
        for sint in [SINT_SPY, SINT_FLOOD, SINT_TIMER] {
            synic::set_sint(sint, SINT_VECTOR_BASE + sint as u8);
        }
        cpu::sti();
        let phases = ctx.args.str_or("phases", "unknown,flood,timers,direct");
        let mut result = Ok(());
        for w in phases.split(',') {
            result = match w {
                "unknown" => unknown(ctx.cpus as u32),
                "flood" => flood(iters),
                "timers" | "direct" if !stimer => {
                    phase::skip(w, "hv-stimer_not_exposed");
                    Ok(())
                }
                "timers" => timers(),
                "direct" if !direct_ok => {
                    phase::skip(w, "hv-stimer-direct_not_exposed");
                    Ok(())
                }
                "direct" => direct(),
                _ => Err(Fail::BadArg("phases")),
            };
            if result.is_err() {
                break;
            }
        }
        stop_timers_if(stimer);
        // The spy SINT never fired: nothing anyone did reached it.
        if hits(SINT_VECTOR_BASE + SINT_SPY as u8) != 0 {
            return Err(Fail::Check("the spy SINT received something"));
        }
        result
    }

    fn stop_timers_if(stimer: bool) {
        if stimer {
            stop_timers();
        }
    }
}
