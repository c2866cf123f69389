//! Queue service: taking chains off the available rings, validating them, handing them to the
//! backend, putting them on the used rings and deciding whether to interrupt.
//!
//! Bounded by construction. One [`DeviceState::serve_pass`] runs each queue's loop at most
//! `queue size + NOTIFY_RETRIES + 1` times (so at most queue-size chains per queue per pass;
//! the worker's passes take fewer, [`DeviceState::serve_pass_limited`]),
//! whatever the guest wrote; the worker holds the state lock for one pass at a time and checks
//! for stop between passes. Guest data that would make a loop spin without progress is a
//! broken ring instead: an available index that says there is work while the ring entry cannot
//! be read (virtio-queue's iterator then yields nothing without advancing), or notifications
//! that cannot be re-enabled, put the device into DEVICE_NEEDS_RESET with one note.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::chain;
use super::{DeviceState, QUEUE_MAX, Served, feature};

/// Times one pass re-checks a queue after re-enabling notifications found new work (a driver
/// that published while the device was about to sleep). More than this and the pass ends with
/// `more` set: the worker comes back after it has checked for stop.
pub const NOTIFY_RETRIES: usize = 2;

/// Passes [`DeviceState::serve_all`] makes at most before it returns.
pub const MAX_PASSES: usize = 64;

/// What one pass over the queues did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Chains completed.
    pub served: u64,
    /// Work may remain (the pass served something, which may have made another queue
    /// serviceable, or a queue reached its per-pass limit): run another pass.
    pub more: bool,
}

/// How one queue's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The available ring is empty (notifications re-enabled unless polling), the queue is not
    /// ready or not wanted, or the device broke.
    Idle,
    /// The per-pass limit was reached with work left.
    Limit,
}

impl DeviceState {
    /// One bounded pass over every queue: at most queue-size chains from each.
    pub fn serve_pass(&mut self) -> Pass {
        self.serve_pass_limited(QUEUE_MAX)
    }

    /// One bounded pass over every queue: at most `limit` chains (and at most queue-size
    /// chains) from each. The worker uses a smaller limit than the queue size so that it
    /// checks for stop and lets vCPUs in more often when requests are large.
    pub fn serve_pass_limited(&mut self, limit: u16) -> Pass {
        if !self.live() {
            return Pass::default();
        }
        self.stats.passes += 1;
        let mut pass = Pass::default();
        for qi in 0..self.queues.len() {
            let (n, end) = self.serve_queue(qi, limit);
            pass.served += n;
            pass.more |= end == End::Limit;
            if !self.live() {
                return Pass {
                    served: pass.served,
                    more: false,
                };
            }
        }
        pass.more |= pass.served > 0;
        if pass.served == 0 {
            for qi in 0..self.queues.len() {
                let q = &self.queues[qi];
                let empty = q
                    .avail_idx(&self.mem, Ordering::Acquire)
                    .is_ok_and(|idx| idx == Wrapping(q.next_avail()));
                if q.ready() && self.backend.wants(qi) && empty {
                    self.backend.starved(qi);
                }
            }
        }
        pass
    }

    /// Serves passes until one finds nothing more to do, at most [`MAX_PASSES`]; returns the
    /// chains completed. Benches and tests drive the device this way; the worker runs passes
    /// itself so that it can check for stop and release the lock between them.
    pub fn serve_all(&mut self) -> u64 {
        let mut total = 0;
        for _ in 0..MAX_PASSES {
            let p = self.serve_pass();
            total += p.served;
            if !p.more {
                break;
            }
        }
        total
    }

    fn serve_queue(&mut self, qi: usize, limit: u16) -> (u64, End) {
        let mem = self.mem.clone();
        let indirect = self.negotiated(feature::INDIRECT_DESC);
        let size = self.queues[qi].size();
        let limit = size.min(limit);
        let mut done = 0u64;
        let mut retries = 0;
        let mut end = End::Limit;
        for _ in 0..usize::from(limit) + NOTIFY_RETRIES + 1 {
            self.stats.steps += 1;
            if done >= u64::from(limit) {
                break; // the per-pass limit: at most `limit` (<= queue size) chains
            }
            if !self.queues[qi].ready() || !self.backend.wants(qi) {
                end = End::Idle;
                break;
            }
            let q = &mut self.queues[qi];
            let table = GuestAddress(q.desc_table());
            let _ = q.disable_notification(&mem);
            // The index the driver published, read once: the iterator below must yield a
            // chain whenever it differs from ours.
            let avail = match q.avail_idx(&mem, Ordering::Acquire) {
                Ok(idx) => idx,
                Err(e) => {
                    self.broken(format!("queue {qi}: available index: {e}"));
                    return (done, End::Idle);
                }
            };
            if avail == Wrapping(q.next_avail()) {
                // Nothing left: re-enable notifications (unless polling) and re-check.
                if self.tuning.polling {
                    end = End::Idle;
                    break;
                }
                match q.enable_notification(&mem) {
                    Ok(false) => {
                        end = End::Idle;
                        break;
                    }
                    Ok(true) if retries < NOTIFY_RETRIES => {
                        retries += 1;
                        continue;
                    }
                    Ok(true) => break, // End::Limit: the worker comes back
                    Err(e) => {
                        self.broken(format!("queue {qi}: enabling notifications: {e}"));
                        return (done, End::Idle);
                    }
                }
            }
            let next = q.next_avail();
            let head = match q.iter(&mem) {
                Ok(mut it) => it.next().map(|c| c.head_index()),
                Err(e) => {
                    self.broken(format!("queue {qi}: {e}"));
                    return (done, End::Idle);
                }
            };
            let Some(head) = head else {
                // The index says there is work but the entry cannot be read (the ring lies at
                // the end of memory), or the driver moved the index back: the iterator yields
                // nothing and never advances, so this is a broken ring, not an empty one.
                let slot = u64::from(next % size.max(1));
                self.broken(format!(
                    "queue {qi}: available ring entry {slot} at {:#x} cannot be read \
                     (available index {}, next {next})",
                    self.queues[qi].avail_ring().wrapping_add(4 + 2 * slot),
                    avail.0
                ));
                return (done, End::Idle);
            };
            let chain = match chain::walk(&mem, table, size, head, indirect) {
                Ok(c) => c,
                Err(e) => {
                    self.broken(format!("queue {qi}, chain at descriptor {head}: {e}"));
                    return (done, End::Idle);
                }
            };
            self.stats.chains += 1;
            match self.backend.serve(qi, &mem, &chain) {
                Served::Used(len) => {
                    if let Err(e) = self.queues[qi].add_used(&mem, head, len) {
                        self.broken(format!("queue {qi}: used ring: {e}"));
                        return (done, End::Idle);
                    }
                    done += 1;
                }
                Served::Broken(e) => {
                    self.broken(format!("queue {qi}, request at descriptor {head}: {e}"));
                    return (done, End::Idle);
                }
            }
        }
        if done > 0 {
            let q = &mut self.queues[qi];
            let needed = q.needs_notification(&mem).unwrap_or(true);
            let q = &self.queues[qi];
            let suppressed = !q.event_idx_enabled() && self.interrupt_suppressed(q.avail_ring());
            if needed && !suppressed {
                self.interrupt(1);
            } else {
                self.stats.suppressed += 1;
            }
        }
        (done, end)
    }

    /// Reads the driver's avail flags (VRING_AVAIL_F_NO_INTERRUPT), which virtio-queue does not
    /// honour itself.
    fn interrupt_suppressed(&self, avail_ring: u64) -> bool {
        self.mem
            .read_obj::<u16>(GuestAddress(avail_ring))
            .is_ok_and(|f| f & 1 != 0)
    }

    /// True when the device is live and some ready queue has available chains the worker has
    /// not taken.
    pub fn pending(&self) -> bool {
        self.live()
            && self.queues.iter().enumerate().any(|(i, q)| {
                q.ready()
                    && self.backend.wants(i)
                    && q.avail_idx(&self.mem, Ordering::Acquire)
                        .is_ok_and(|idx| idx != Wrapping(q.next_avail()))
            })
    }

    /// Leaves polling: lets the driver notify again. Returns true if work the backend wants
    /// arrived meanwhile.
    pub(super) fn stop_polling(&mut self) -> bool {
        if !self.live() {
            return false;
        }
        let mut more = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() {
                let work = q.enable_notification(&self.mem).unwrap_or(false);
                more |= work && self.backend.wants(i);
            }
        }
        more
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{blk_state, drive_to_ready_with, put_read_request};
    use super::super::{reg, status};
    use super::*;

    const MEM: u64 = 1 << 20;

    /// Finding 1 without a VM: re-ready queue 0 after DRIVER_OK with its available ring at the
    /// last 4 bytes of RAM, bump the index. Before the fix `serve_all` never returned.
    #[test]
    fn reready_with_avail_ring_at_end_of_ram_needs_reset_and_returns() {
        let (mut s, notes) = blk_state(MEM);
        drive_to_ready_with(&mut s, 16, 0x1000, 0x2000, 0x3000);
        assert!(s.live());
        s.write_reg(reg::QUEUE_READY, 0);
        s.write_reg(reg::QUEUE_DRIVER_LOW, (MEM - 4) as u32);
        s.write_reg(reg::QUEUE_READY, 1);
        let mem = s.mem.clone();
        mem.write_obj(1u16, GuestAddress(MEM - 2)).unwrap();
        assert_eq!(s.serve_all(), 0);
        assert_ne!(s.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(
            notes
                .snapshot()
                .iter()
                .any(|n| n.contains("re-readied queue 0 rings lie outside guest memory")),
            "{:?}",
            notes.snapshot()
        );
    }

    /// The service loop's own guard, without the ready-time check: rings that were valid when
    /// readied but whose entry cannot be read. Simulated by a queue whose avail index was bumped
    /// past what the iterator can read: we make the queue valid, then move the ring by
    /// resetting the ready check (set the address directly on the queue).
    #[test]
    fn unreadable_avail_entry_is_a_broken_ring_not_a_spin() {
        let (mut s, notes) = blk_state(MEM);
        drive_to_ready_with(&mut s, 16, 0x1000, 0x2000, 0x3000);
        // Bypass the register checks, as a stale validation would.
        s.queues[0].set_avail_ring_address(Some((MEM - 4) as u32), None);
        let mem = s.mem.clone();
        mem.write_obj(1u16, GuestAddress(MEM - 2)).unwrap();
        let before = s.stats.steps;
        assert_eq!(s.serve_all(), 0);
        assert!(
            s.stats.steps - before <= 4,
            "steps {}",
            s.stats.steps - before
        );
        assert!(!s.live());
        assert!(
            notes
                .snapshot()
                .iter()
                .any(|n| n.contains("available ring entry 0") && n.contains("cannot be read")),
            "{:?}",
            notes.snapshot()
        );
    }

    #[test]
    fn a_pass_serves_at_most_queue_size_chains_per_queue() {
        let (mut s, notes) = blk_state(MEM);
        drive_to_ready_with(&mut s, 16, 0x1000, 0x2000, 0x3000);
        let mem = s.mem.clone();
        // 16 chains of one request each, all the same descriptors (heads 0).
        put_read_request(&mem, 0x1000, 0, 0x10000);
        for slot in 0..16u64 {
            mem.write_obj(0u16, GuestAddress(0x2004 + 2 * slot))
                .unwrap();
        }
        mem.write_obj(16u16, GuestAddress(0x2002)).unwrap();
        let p = s.serve_pass();
        assert_eq!(p.served, 16, "{:?}", notes.snapshot());
        assert!(p.more);
        // 16 more published: the next pass serves them, the one after finds nothing.
        mem.write_obj(32u16, GuestAddress(0x2002)).unwrap();
        assert_eq!(s.serve_pass().served, 16);
        // A smaller limit (the worker's) splits a batch over passes.
        mem.write_obj(40u16, GuestAddress(0x2002)).unwrap();
        assert_eq!(
            s.serve_pass_limited(5),
            Pass {
                served: 5,
                more: true
            }
        );
        assert_eq!(s.serve_pass_limited(5).served, 3);
        let p = s.serve_pass();
        assert_eq!(p, Pass::default());
        assert!(s.live(), "{:?}", notes.snapshot());
    }

    #[test]
    fn avail_index_moved_back_is_a_broken_ring() {
        let (mut s, notes) = blk_state(MEM);
        drive_to_ready_with(&mut s, 16, 0x1000, 0x2000, 0x3000);
        let mem = s.mem.clone();
        put_read_request(&mem, 0x1000, 0, 0x10000);
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        assert_eq!(s.serve_all(), 1);
        // Back to 0xffff: 65535 entries "available", more than the queue holds.
        mem.write_obj(0xffffu16, GuestAddress(0x2002)).unwrap();
        assert_eq!(s.serve_all(), 0);
        assert!(!s.live());
        assert!(
            notes.snapshot().iter().any(|n| n.contains("queue 0")),
            "{:?}",
            notes.snapshot()
        );
    }
}
