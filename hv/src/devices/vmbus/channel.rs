//! A partition's VMBus-style channels, provider side: the channel table, the management
//! protocol (offers, open, hv's close notice) carried in SynIC messages, and serving an open
//! channel's rings (`hvlab_protocol::vmbus` has the wire constants).
//!
//! A guest signal only marks its channel ([`Vmbus::signal`], on the vCPU thread) and wakes the
//! worker; the worker serves the rings ([`Vmbus::serve`]), at most
//! [`MAX_PACKETS_PER_ROUND`] packets per channel before it looks at the others. A ring error
//! (bad index, oversized packet, bad descriptor) closes the channel: hv tells the guest with a
//! CHANNEL_CLOSED message, later signals get HV_STATUS_INVALID_PORT_ID until the guest opens it
//! again; nothing else is affected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use hvlab_protocol::vmbus as proto;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::ChannelDevice;
use super::echo::Echo;
use super::ring::{CONTROL, Ring, RingError, Signal};

/// Packets one round serves per channel at most (then the worker looks at other channels and
/// comes back).
pub const MAX_PACKETS_PER_ROUND: usize = 64;
/// Channels one partition has at most (ids 1..=MAX_CHANNELS).
pub const MAX_CHANNELS: usize = 16;
/// A packet descriptor's bytes.
const DESC: usize = 16;

/// What one round on a channel did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Packets taken from the guest's ring.
    pub packets: u64,
    /// Replies written to the guest's ring.
    pub replies: u64,
    /// Whether to raise the guest's channel interrupt.
    pub signal_guest: bool,
    /// Replies that needed no interrupt (the guest was still draining, or masked).
    pub suppressed: u64,
    /// Packets left in the guest's ring because the reply ring was full (hv asked the guest,
    /// through pending send size, to signal once it has room).
    pub deferred: bool,
    /// Packets left because the round's limit was reached.
    pub more: bool,
}

/// Why a signal or a round was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// No such channel, or not open.
    NotOpen,
    /// The guest broke the ring protocol; the channel is now closed.
    Ring(RingError),
}

/// The CHANNEL_CLOSED reason code of a ring error.
pub fn closed_reason(e: RingError) -> u32 {
    match e {
        RingError::BadIndex { .. } => proto::CLOSED_BAD_INDEX,
        RingError::Oversized { .. } => proto::CLOSED_OVERSIZED,
        RingError::BadDescriptor { .. } => proto::CLOSED_BAD_DESCRIPTOR,
        RingError::BadPlacement { .. } | RingError::OutsideRam { .. } | RingError::Memory => {
            proto::CLOSED_MEMORY
        }
    }
}

/// One channel.
#[derive(Debug)]
struct Channel {
    id: u32,
    class: u32,
    /// The guest -> hv ring and the hv -> guest ring, while open.
    rings: Mutex<Option<(Ring, Ring)>>,
    device: Mutex<Box<dyn ChannelDevice>>,
    /// The guest signalled since the worker last looked.
    pending: AtomicBool,
}

/// The channels of one partition.
#[derive(Debug)]
pub struct Vmbus {
    channels: Mutex<Vec<Arc<Channel>>>,
    /// Wakes the worker (set once it runs; without one, [`Self::serve`] is called directly).
    doorbell: OnceLock<EventFd>,
}

impl Default for Vmbus {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn word(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Little-endian bytes of `w`.
pub fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Vmbus {
    /// The channel table with the echo channel (id 1).
    pub fn new() -> Self {
        let v = Vmbus {
            channels: Mutex::new(Vec::new()),
            doorbell: OnceLock::new(),
        };
        let _ = v.add(Box::new(Echo::default()));
        v
    }

    /// Offers `device` on the next channel id; `None` when [`MAX_CHANNELS`] are there.
    pub fn add(&self, device: Box<dyn ChannelDevice>) -> Option<u32> {
        let mut ch = lock(&self.channels);
        if ch.len() >= MAX_CHANNELS {
            return None;
        }
        let id = ch.len() as u32 + 1;
        ch.push(Arc::new(Channel {
            id,
            class: device.class(),
            rings: Mutex::new(None),
            device: Mutex::new(device),
            pending: AtomicBool::new(false),
        }));
        Some(id)
    }

    /// The worker's doorbell: [`Self::signal`] writes it.
    pub fn set_doorbell(&self, fd: EventFd) {
        let _ = self.doorbell.set(fd);
    }

    fn channel(&self, id: u32) -> Option<Arc<Channel>> {
        lock(&self.channels)
            .get((id as usize).checked_sub(1)?)
            .cloned()
    }

    /// Ids of the channels the guest signalled since the worker last looked (cleared here).
    pub fn take_pending(&self) -> Vec<u32> {
        lock(&self.channels)
            .iter()
            .filter(|c| c.pending.swap(false, Ordering::AcqRel))
            .map(|c| c.id)
            .collect()
    }

    /// Marks `id` pending again (a round left work behind).
    pub fn repend(&self, id: u32) {
        if let Some(c) = self.channel(id) {
            c.pending.store(true, Ordering::Release);
        }
    }

    /// The devices' counters for the run's notes.
    pub fn stats(&self) -> Vec<String> {
        lock(&self.channels)
            .iter()
            .map(|c| {
                let d = lock(&c.device);
                format!("{} (channel {}): {}", d.name(), c.id, d.stats())
            })
            .collect()
    }

    /// A management message (its payload); the reply's payload, or `None` for an unknown
    /// kind (dropped: nothing to answer).
    pub fn on_message(&self, mem: &GuestMemoryMmap, payload: &[u8]) -> Option<Vec<u8>> {
        match word(payload, 0) {
            proto::REQUEST_OFFERS => {
                let ch = lock(&self.channels);
                let mut w = vec![proto::OFFERS, ch.len() as u32];
                for c in ch.iter() {
                    w.extend([c.id, c.class]);
                }
                Some(words_to_bytes(&w))
            }
            proto::OPEN => {
                let channel = word(payload, 4);
                let gpa = u64::from(word(payload, 8)) | u64::from(word(payload, 12)) << 32;
                let (out_pages, in_pages) = (word(payload, 16), word(payload, 20));
                let status = self.open(mem, channel, gpa, out_pages, in_pages);
                Some(words_to_bytes(&[proto::OPEN_RESULT, channel, status]))
            }
            _ => None,
        }
    }

    fn open(
        &self,
        mem: &GuestMemoryMmap,
        channel: u32,
        gpa: u64,
        out_pages: u32,
        in_pages: u32,
    ) -> u32 {
        let Some(c) = self.channel(channel) else {
            return proto::OPEN_UNKNOWN_CHANNEL;
        };
        let out_len = u64::from(out_pages) * CONTROL;
        let rings = gpa.checked_add(out_len).and_then(|in_gpa| {
            let out = Ring::new(mem, gpa, out_len).ok()?;
            let inr = Ring::new(mem, in_gpa, u64::from(in_pages) * CONTROL).ok()?;
            Some((out, inr))
        });
        let ok = rings.is_some();
        *lock(&c.rings) = rings;
        if ok {
            proto::OPEN_OK
        } else {
            proto::OPEN_BAD_RING
        }
    }

    /// The guest signalled `channel` (from its vCPU thread): mark it and wake the worker.
    pub fn signal(&self, channel: u32) -> Result<(), ChannelError> {
        let c = self.channel(channel).ok_or(ChannelError::NotOpen)?;
        if lock(&c.rings).is_none() {
            return Err(ChannelError::NotOpen);
        }
        // A channel already pending has a wake-up on its way: no second eventfd write.
        if !c.pending.swap(true, Ordering::AcqRel) {
            if let Some(fd) = self.doorbell.get() {
                let _ = fd.write(1);
            }
        }
        Ok(())
    }

    /// Serves one round of `channel`: its device answers what the guest's ring holds, bounded.
    /// A ring error closes the channel.
    pub fn serve(&self, mem: &GuestMemoryMmap, channel: u32) -> Result<Served, ChannelError> {
        let c = self.channel(channel).ok_or(ChannelError::NotOpen)?;
        let Some((out, inr)) = *lock(&c.rings) else {
            return Err(ChannelError::NotOpen);
        };
        let mut dev = lock(&c.device);
        let r = serve(mem, &out, &inr, dev.as_mut());
        drop(dev);
        if r.is_err() {
            *lock(&c.rings) = None;
        }
        r.map_err(ChannelError::Ring)
    }
}

fn serve(
    mem: &GuestMemoryMmap,
    out: &Ring,
    inr: &Ring,
    dev: &mut dyn ChannelDevice,
) -> Result<Served, RingError> {
    let mut s = Served::default();
    for _ in 0..MAX_PACKETS_PER_ROUND {
        let Some(len) = out.next_len(mem)? else {
            inr.set_pending_send_size(mem, 0)?;
            return Ok(s);
        };
        // Room for the largest reply first, so no packet is taken that cannot be answered;
        // else ask the guest to signal once that much is free, and stop.
        // `fits` takes the length without the trailer and wants it strictly below the free
        // space; the guest's read signals once free space reaches the pending size.
        // `len` counts the descriptor: the payload is at most what follows it.
        let room = (DESC + dev.max_reply(len.saturating_sub(DESC))).div_ceil(8) * 8;
        if !inr.fits(mem, room)? {
            inr.set_pending_send_size(mem, room as u32 + 16)?;
            // The guest may have drained between the check and the request: look once more.
            if !inr.fits(mem, room)? {
                s.deferred = true;
                return Ok(s);
            }
        }
        let Some((p, Signal(writer_wants))) = out.read(mem)? else {
            return Ok(s);
        };
        s.packets += 1;
        s.signal_guest |= writer_wants;
        let Some(reply) = dev.on_packet(mem, &p) else {
            continue;
        };
        match inr.write(mem, &reply)? {
            Some(Signal(true)) => s.signal_guest = true,
            Some(Signal(false)) => s.suppressed += 1,
            // `fits` said there was room; only a guest moving its indices meanwhile gets here.
            None => {
                s.deferred = true;
                return Ok(s);
            }
        }
        s.replies += 1;
    }
    s.more = out.next_len(mem)?.is_some();
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::ring::Packet;
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const MEM: usize = 1 << 20;
    const RINGS: u64 = 0x20000;

    fn open_msg(channel: u32, gpa: u64, out: u32, inp: u32) -> Vec<u8> {
        words_to_bytes(&[
            proto::OPEN,
            channel,
            gpa as u32,
            (gpa >> 32) as u32,
            out,
            inp,
        ])
    }

    fn setup() -> (GuestMemoryMmap, Vmbus, Ring, Ring) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let v = Vmbus::new();
        let reply = v.on_message(&mem, &open_msg(1, RINGS, 2, 2)).unwrap();
        assert_eq!(
            reply,
            words_to_bytes(&[proto::OPEN_RESULT, 1, proto::OPEN_OK])
        );
        let out = Ring::new(&mem, RINGS, 2 * CONTROL).unwrap();
        let inr = Ring::new(&mem, RINGS + 2 * CONTROL, 2 * CONTROL).unwrap();
        (mem, v, out, inr)
    }

    fn data(t: u64) -> Packet {
        Packet {
            kind: proto::PACKET_DATA,
            flags: 0,
            transaction: t,
            payload: vec![t as u8; 24],
        }
    }

    #[test]
    fn offers_and_open_checks() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let v = Vmbus::new();
        let offers = v
            .on_message(&mem, &words_to_bytes(&[proto::REQUEST_OFFERS]))
            .unwrap();
        assert_eq!(
            offers,
            words_to_bytes(&[proto::OFFERS, 1, 1, proto::DEVICE_ECHO])
        );
        assert_eq!(v.on_message(&mem, &words_to_bytes(&[99])), None);
        assert_eq!(v.on_message(&mem, &[]), None);
        let status = |m: Vec<u8>| word(&v.on_message(&mem, &m).unwrap(), 8);
        assert_eq!(
            status(open_msg(7, RINGS, 2, 2)),
            proto::OPEN_UNKNOWN_CHANNEL
        );
        assert_eq!(
            status(open_msg(0, RINGS, 2, 2)),
            proto::OPEN_UNKNOWN_CHANNEL
        );
        // Rings outside RAM, in the MMIO window, unaligned, too small, wrapping.
        assert_eq!(
            status(open_msg(1, MEM as u64 - 0x2000, 2, 2)),
            proto::OPEN_BAD_RING
        );
        assert_eq!(status(open_msg(1, 0xd000_0000, 2, 2)), proto::OPEN_BAD_RING);
        assert_eq!(status(open_msg(1, RINGS + 8, 2, 2)), proto::OPEN_BAD_RING);
        assert_eq!(status(open_msg(1, RINGS, 1, 2)), proto::OPEN_BAD_RING);
        assert_eq!(
            status(open_msg(1, u64::MAX - 0xfff, 2, 2)),
            proto::OPEN_BAD_RING
        );
        assert_eq!(v.signal(1), Err(ChannelError::NotOpen));
        assert_eq!(v.signal(2), Err(ChannelError::NotOpen));
        assert_eq!(v.serve(&mem, 1), Err(ChannelError::NotOpen));
    }

    #[test]
    fn channels_are_bounded_and_offered_in_order() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let v = Vmbus::new();
        for i in 2..=MAX_CHANNELS as u32 {
            assert_eq!(v.add(Box::new(Echo::default())), Some(i));
        }
        assert_eq!(v.add(Box::new(Echo::default())), None);
        let offers = v
            .on_message(&mem, &words_to_bytes(&[proto::REQUEST_OFFERS]))
            .unwrap();
        assert_eq!(word(&offers, 4), MAX_CHANNELS as u32);
        assert_eq!(word(&offers, 8 + 8 * 15), MAX_CHANNELS as u32);
    }

    #[test]
    fn signals_mark_channels_once_until_taken() {
        let (_mem, v, _, _) = setup();
        let bell = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        v.set_doorbell(bell.try_clone().unwrap());
        v.signal(1).unwrap();
        v.signal(1).unwrap();
        // Two signals, one wake-up: the second found the channel pending.
        assert_eq!(bell.read().unwrap(), 1);
        assert_eq!(v.take_pending(), vec![1]);
        assert_eq!(v.take_pending(), Vec::<u32>::new());
        v.signal(1).unwrap();
        assert_eq!(bell.read().unwrap(), 1);
    }

    #[test]
    fn echo_with_signal_suppression() {
        let (mem, v, out, inr) = setup();
        assert_eq!(v.serve(&mem, 1), Ok(Served::default()), "empty ring");
        for t in 0..3 {
            out.write(&mem, &data(t)).unwrap().unwrap();
        }
        // Three echoes: the first finds the reply ring empty (interrupt), the others do not.
        let s = v.serve(&mem, 1).unwrap();
        assert_eq!(
            s,
            Served {
                packets: 3,
                replies: 3,
                signal_guest: true,
                suppressed: 2,
                deferred: false,
                more: false,
            }
        );
        for t in 0..3 {
            let (p, _) = inr.read(&mem).unwrap().unwrap();
            assert_eq!((p.transaction, p.payload), (t, vec![t as u8; 24]));
        }
        // The guest masks its interrupt (it is polling): no signal at all.
        inr.set_interrupt_mask(&mem, true).unwrap();
        out.write(&mem, &data(9)).unwrap().unwrap();
        let s = v.serve(&mem, 1).unwrap();
        assert_eq!((s.packets, s.signal_guest, s.suppressed), (1, false, 1));
    }

    #[test]
    fn full_reply_ring_defers_asks_for_room_and_bad_rings_close_the_channel() {
        let (mem, v, out, inr) = setup();
        // Fill the reply ring until it refuses.
        let mut n = 0;
        while inr.write(&mem, &data(100)).unwrap().is_some() {
            n += 1;
        }
        assert!(n > 0);
        out.write(&mem, &data(1)).unwrap().unwrap();
        let s = v.serve(&mem, 1).unwrap();
        assert!(s.deferred);
        assert_eq!(s.packets, 0, "nothing taken that cannot be answered");
        // hv asked the guest to signal once a reply fits: reading one packet crosses that.
        let (_, Signal(wants)) = inr.read(&mem).unwrap().unwrap();
        assert!(wants, "the guest's read must tell it to signal hv");
        assert_eq!(v.serve(&mem, 1).unwrap().packets, 1);
        // A hostile write index: the channel closes, and stays closed until reopened.
        mem.write_obj(12u32, GuestAddress(RINGS)).unwrap();
        assert!(matches!(v.serve(&mem, 1), Err(ChannelError::Ring(_))));
        assert_eq!(v.serve(&mem, 1), Err(ChannelError::NotOpen));
        assert_eq!(v.signal(1), Err(ChannelError::NotOpen));
        mem.write_obj(0u32, GuestAddress(RINGS)).unwrap();
        mem.write_obj(0u32, GuestAddress(RINGS + 4)).unwrap();
        v.on_message(&mem, &open_msg(1, RINGS, 2, 2)).unwrap();
        assert!(v.serve(&mem, 1).is_ok());
    }

    #[test]
    fn one_round_serves_a_bounded_number_of_packets() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let v = Vmbus::new();
        // Big rings: 32 data pages each.
        let reply = v.on_message(&mem, &open_msg(1, RINGS, 33, 33)).unwrap();
        assert_eq!(word(&reply, 8), proto::OPEN_OK);
        let out = Ring::new(&mem, RINGS, 33 * CONTROL).unwrap();
        for t in 0..100 {
            out.write(&mem, &data(t)).unwrap().unwrap();
        }
        let first = v.serve(&mem, 1).unwrap();
        assert_eq!(first.packets, MAX_PACKETS_PER_ROUND as u64);
        assert!(first.more);
        let second = v.serve(&mem, 1).unwrap();
        assert_eq!((second.packets, second.more), (36, false));
    }

    #[test]
    fn closed_reasons_name_the_error() {
        assert_eq!(
            closed_reason(RingError::BadIndex { index: 3, size: 8 }),
            proto::CLOSED_BAD_INDEX
        );
        assert_eq!(
            closed_reason(RingError::Oversized { len: 1, avail: 0 }),
            proto::CLOSED_OVERSIZED
        );
        assert_eq!(
            closed_reason(RingError::BadDescriptor { offset: 0, len: 0 }),
            proto::CLOSED_BAD_DESCRIPTOR
        );
        assert_eq!(closed_reason(RingError::Memory), proto::CLOSED_MEMORY);
    }
}
