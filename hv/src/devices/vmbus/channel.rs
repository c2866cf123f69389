//! hv's VMBus-style channels, provider side: the management protocol (offers, open) carried
//! in SynIC messages, and serving an open channel's rings (`hvlab_protocol::vmbus` has the
//! wire constants). One channel today: an echo device (every packet comes back), for measuring
//! the transport itself.
//!
//! The provider runs on the thread of the vCPU whose HvCallSignalEvent names the channel (not
//! yet on a device worker): one signal serves at most [`MAX_PACKETS_PER_SIGNAL`] packets, so a
//! guest keeps hv busy only as long as it keeps calling. A ring error (bad index, oversized
//! packet, bad descriptor) closes the channel: later signals get HV_STATUS_INVALID_PORT_ID
//! until the guest opens it again; nothing else is affected.

use std::sync::Mutex;

use hvlab_protocol::vmbus as proto;
use vm_memory::GuestMemoryMmap;

use super::ring::{CONTROL, Packet, Ring, RingError, Signal};

/// Channels hv offers.
pub const CHANNELS: &[(u32, u32)] = &[(1, proto::DEVICE_ECHO)];
/// Packets one signal serves at most.
pub const MAX_PACKETS_PER_SIGNAL: usize = 64;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { out: Ring, inr: Ring },
}

/// What one signal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Packets taken from the guest's ring (and echoed).
    pub packets: u64,
    /// Whether to raise the guest's channel interrupt.
    pub signal_guest: bool,
    /// Writes that needed no interrupt (the guest was still draining, or masked).
    pub suppressed: u64,
    /// Packets left in the guest's ring because the reply ring was full.
    pub deferred: bool,
}

/// Why a signal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// No such channel, or not open.
    NotOpen,
    /// The guest broke the ring protocol; the channel is now closed.
    Ring(RingError),
}

/// The channels of one partition.
#[derive(Debug)]
pub struct Vmbus {
    state: Mutex<Vec<State>>,
}

impl Default for Vmbus {
    fn default() -> Self {
        Self::new()
    }
}

fn word(p: &[u8], at: usize) -> u32 {
    p.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Vmbus {
    pub fn new() -> Self {
        Vmbus {
            state: Mutex::new(vec![State::Closed; CHANNELS.len()]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<State>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(channel: u32) -> Option<usize> {
        CHANNELS.iter().position(|(id, _)| *id == channel)
    }

    /// A management message (its payload); the reply's payload, or `None` for an unknown
    /// kind (dropped: nothing to answer).
    pub fn on_message(&self, mem: &GuestMemoryMmap, payload: &[u8]) -> Option<Vec<u8>> {
        match word(payload, 0) {
            proto::REQUEST_OFFERS => {
                let mut w = vec![proto::OFFERS, CHANNELS.len() as u32];
                for (id, dev) in CHANNELS {
                    w.extend([*id, *dev]);
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
        let Some(i) = Self::slot(channel) else {
            return proto::OPEN_UNKNOWN_CHANNEL;
        };
        let out_len = u64::from(out_pages) * CONTROL;
        let rings = gpa.checked_add(out_len).and_then(|in_gpa| {
            let out = Ring::new(mem, gpa, out_len).ok()?;
            let inr = Ring::new(mem, in_gpa, u64::from(in_pages) * CONTROL).ok()?;
            Some((out, inr))
        });
        let mut st = self.lock();
        match rings {
            Some((out, inr)) => {
                st[i] = State::Open { out, inr };
                proto::OPEN_OK
            }
            None => {
                st[i] = State::Closed;
                proto::OPEN_BAD_RING
            }
        }
    }

    /// The guest signalled `channel`: echo what its ring holds (bounded), and say whether to
    /// interrupt it.
    pub fn on_signal(&self, mem: &GuestMemoryMmap, channel: u32) -> Result<Served, ChannelError> {
        let i = Self::slot(channel).ok_or(ChannelError::NotOpen)?;
        let mut st = self.lock();
        let State::Open { out, inr } = st[i] else {
            return Err(ChannelError::NotOpen);
        };
        let r = serve(mem, &out, &inr);
        if r.is_err() {
            st[i] = State::Closed;
        }
        r.map_err(ChannelError::Ring)
    }
}

fn serve(mem: &GuestMemoryMmap, out: &Ring, inr: &Ring) -> Result<Served, RingError> {
    let mut s = Served::default();
    for _ in 0..MAX_PACKETS_PER_SIGNAL {
        let Some(len) = out.next_len(mem)? else {
            break;
        };
        // Room for the reply first (an echo is as long as the request), so no packet is taken
        // that cannot be answered; the guest signals again once it has drained its ring.
        if !inr.fits(mem, len)? {
            s.deferred = true;
            break;
        }
        let Some((p, Signal(writer_wants))) = out.read(mem)? else {
            break;
        };
        s.packets += 1;
        s.signal_guest |= writer_wants;
        let echo = Packet {
            kind: p.kind,
            flags: 0,
            transaction: p.transaction,
            payload: p.payload,
        };
        match inr.write(mem, &echo)? {
            Some(Signal(true)) => s.signal_guest = true,
            Some(Signal(false)) => s.suppressed += 1,
            None => {
                s.deferred = true;
                break;
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        assert_eq!(v.on_signal(&mem, 1), Err(ChannelError::NotOpen));
        assert_eq!(v.on_signal(&mem, 2), Err(ChannelError::NotOpen));
    }

    #[test]
    fn echo_with_signal_suppression() {
        let (mem, v, out, inr) = setup();
        assert_eq!(v.on_signal(&mem, 1), Ok(Served::default()), "empty ring");
        for t in 0..3 {
            out.write(&mem, &data(t)).unwrap().unwrap();
        }
        // Three echoes: the first finds the reply ring empty (interrupt), the others do not.
        let s = v.on_signal(&mem, 1).unwrap();
        assert_eq!(
            s,
            Served {
                packets: 3,
                signal_guest: true,
                suppressed: 2,
                deferred: false
            }
        );
        for t in 0..3 {
            let (p, _) = inr.read(&mem).unwrap().unwrap();
            assert_eq!((p.transaction, p.payload), (t, vec![t as u8; 24]));
        }
        // The guest masks its interrupt (it is polling): no signal at all.
        inr.set_interrupt_mask(&mem, true).unwrap();
        out.write(&mem, &data(9)).unwrap().unwrap();
        let s = v.on_signal(&mem, 1).unwrap();
        assert_eq!((s.packets, s.signal_guest, s.suppressed), (1, false, 1));
    }

    #[test]
    fn full_reply_ring_defers_and_bad_rings_close_the_channel() {
        let (mem, v, out, inr) = setup();
        // Fill the reply ring until it refuses.
        let mut n = 0;
        while inr.write(&mem, &data(100)).unwrap().is_some() {
            n += 1;
        }
        assert!(n > 0);
        out.write(&mem, &data(1)).unwrap().unwrap();
        let s = v.on_signal(&mem, 1).unwrap();
        assert!(s.deferred);
        // A hostile write index: the channel closes, and stays closed until reopened.
        mem.write_obj(12u32, GuestAddress(RINGS)).unwrap();
        assert!(matches!(v.on_signal(&mem, 1), Err(ChannelError::Ring(_))));
        assert_eq!(v.on_signal(&mem, 1), Err(ChannelError::NotOpen));
        mem.write_obj(0u32, GuestAddress(RINGS)).unwrap();
        mem.write_obj(0u32, GuestAddress(RINGS + 4)).unwrap();
        v.on_message(&mem, &open_msg(1, RINGS, 2, 2)).unwrap();
        assert!(v.on_signal(&mem, 1).is_ok());
    }

    #[test]
    fn one_signal_serves_a_bounded_number_of_packets() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let v = Vmbus::new();
        // Big rings: 32 data pages each.
        let reply = v.on_message(&mem, &open_msg(1, RINGS, 33, 33)).unwrap();
        assert_eq!(word(&reply, 8), proto::OPEN_OK);
        let out = Ring::new(&mem, RINGS, 33 * CONTROL).unwrap();
        for t in 0..100 {
            out.write(&mem, &data(t)).unwrap().unwrap();
        }
        assert_eq!(
            v.on_signal(&mem, 1).unwrap().packets,
            MAX_PACKETS_PER_SIGNAL as u64
        );
        assert_eq!(v.on_signal(&mem, 1).unwrap().packets, 36);
    }
}
