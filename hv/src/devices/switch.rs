//! The in-process Ethernet switch: joins the NICs of the partitions of one run (`--partitions
//! 2` = two hosts on one wire). A NIC hands the switch a frame it read out of its own guest's
//! memory; the switch copies it into the inbox of each port it is for, and wakes that port's
//! device, which copies it into its own guest's memory. Guests never share memory.
//!
//! Bounded by construction: a port's inbox holds at most [`PORT_QUEUE`] frames of at most
//! [`MAX_FRAME`] bytes, and one source may fill at most its share of another port's inbox
//! (`PORT_QUEUE / (ports - 1)`), so a partition that floods cannot crowd out its neighbours'
//! frames to the same port. Frames past either bound are dropped and counted on both the
//! sending and the receiving port; so are frames too short to have an Ethernet header, frames
//! longer than [`MAX_FRAME`], and unicast frames for a MAC no port has.
//!
//! Lock order: a port's inbox lock is a leaf (taken by the sender's device while it holds its
//! own device lock, and by the receiver's device); the port list is taken only while ports
//! are added and for the lookup of a send, never while an inbox is held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Frames waiting in one port's inbox, at most.
pub const PORT_QUEUE: usize = 256;
/// Ports one switch has, at most.
pub const MAX_PORTS: usize = 64;
/// Shortest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Longest frame: a 1500-byte MTU plus the Ethernet header (no FCS, no VLAN tag).
pub const MAX_FRAME: usize = 1514;

/// The MAC of port `index` (a locally administered unicast address: 02:68:76 is "hv").
pub const fn port_mac(index: u32) -> [u8; 6] {
    let i = index.to_be_bytes();
    [0x02, 0x68, 0x76, i[1], i[2], i[3].wrapping_add(1)]
}

/// Called (on the sender's thread) when a frame arrived in a port's inbox.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// Counters of one port, from the port's side.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames this port sent that reached at least one inbox.
    pub tx_frames: AtomicU64,
    /// Frames (or copies of a broadcast) from this port that were dropped: too short, too long,
    /// no such MAC, or the destination's inbox (or this port's share of it) full.
    pub tx_dropped: AtomicU64,
    /// Frames taken out of this port's inbox by its device.
    pub rx_frames: AtomicU64,
    /// Frames for this port dropped because its inbox (or the sender's share) was full.
    pub rx_dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Inbox {
    /// (source port, frame), oldest first.
    frames: VecDeque<(usize, Vec<u8>)>,
    /// Frames waiting per source port.
    per_source: Vec<u16>,
}

/// One port: its MAC, its inbox and how its device is woken.
pub struct Port {
    index: usize,
    mac: [u8; 6],
    inbox: Mutex<Inbox>,
    waker: Mutex<Option<Waker>>,
    pub stats: PortStats,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("index", &self.index)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Port {
    /// The port's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The port's index on its switch.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Sets what wakes the port's device when a frame arrives.
    pub fn set_waker(&self, w: Waker) {
        *locked(&self.waker) = Some(w);
    }

    /// True when frames wait in the inbox.
    pub fn pending(&self) -> bool {
        !locked(&self.inbox).frames.is_empty()
    }

    /// Frames waiting in the inbox.
    pub fn queued(&self) -> usize {
        locked(&self.inbox).frames.len()
    }

    /// Length of the oldest waiting frame.
    pub fn peek_len(&self) -> Option<usize> {
        locked(&self.inbox).frames.front().map(|(_, f)| f.len())
    }

    /// Takes the oldest waiting frame.
    pub fn take(&self) -> Option<Vec<u8>> {
        let mut inbox = locked(&self.inbox);
        let (src, f) = inbox.frames.pop_front()?;
        if let Some(n) = inbox.per_source.get_mut(src) {
            *n = n.saturating_sub(1);
        }
        drop(inbox);
        self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    /// Drops every waiting frame (counted as received-and-dropped); returns how many.
    pub fn flush(&self) -> usize {
        let mut inbox = locked(&self.inbox);
        let n = inbox.frames.len();
        inbox.frames.clear();
        inbox.per_source.iter_mut().for_each(|c| *c = 0);
        drop(inbox);
        self.stats.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Queues a copy of `frame` from port `src`, whose share of the inbox is `share` frames.
    fn deliver(&self, src: usize, frame: &[u8], share: usize) -> bool {
        let mut inbox = locked(&self.inbox);
        if inbox.per_source.len() <= src {
            inbox.per_source.resize(src + 1, 0);
        }
        let from_src = usize::from(inbox.per_source[src]);
        if inbox.frames.len() >= PORT_QUEUE || from_src >= share {
            drop(inbox);
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        inbox.per_source[src] += 1;
        inbox.frames.push_back((src, frame.to_vec()));
        drop(inbox);
        if let Some(w) = locked(&self.waker).as_ref() {
            w();
        }
        true
    }

    /// `key=value` words of the port's counters.
    pub fn words(&self) -> String {
        let s = &self.stats;
        format!(
            "port={} tx_frames={} tx_dropped={} rx_frames={} rx_dropped={} queued={}",
            self.index,
            s.tx_frames.load(Ordering::Relaxed),
            s.tx_dropped.load(Ordering::Relaxed),
            s.rx_frames.load(Ordering::Relaxed),
            s.rx_dropped.load(Ordering::Relaxed),
            self.queued()
        )
    }
}

/// Why a frame was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    Short(usize),
    #[error("frame of {0} bytes is longer than {MAX_FRAME}")]
    Long(usize),
    #[error("no port has the destination MAC")]
    NoSuchMac,
    #[error("every destination inbox was full")]
    Full,
    #[error("no such source port")]
    NoSuchPort,
}

/// The switch of one run.
#[derive(Debug, Default)]
pub struct Switch {
    ports: Mutex<Vec<Arc<Port>>>,
}

impl Switch {
    pub fn new() -> Arc<Switch> {
        Arc::new(Switch::default())
    }

    /// Adds a port with `mac`; `None` when the switch has [`MAX_PORTS`] ports already.
    pub fn add_port(&self, mac: [u8; 6]) -> Option<Arc<Port>> {
        let mut ports = locked(&self.ports);
        if ports.len() >= MAX_PORTS {
            return None;
        }
        let p = Arc::new(Port {
            index: ports.len(),
            mac,
            inbox: Mutex::new(Inbox::default()),
            waker: Mutex::new(None),
            stats: PortStats::default(),
        });
        ports.push(p.clone());
        Some(p)
    }

    /// Sends `frame` from port `from`: to every other port for a broadcast or multicast
    /// destination, else to the port with that MAC. Ok(n) = copies queued (at least one).
    pub fn send(&self, from: usize, frame: &[u8]) -> Result<usize, SendError> {
        let ports: Vec<Arc<Port>> = locked(&self.ports).clone();
        let src = ports.get(from).ok_or(SendError::NoSuchPort)?;
        let fail = |e| {
            src.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        if frame.len() < MIN_FRAME {
            return fail(SendError::Short(frame.len()));
        }
        if frame.len() > MAX_FRAME {
            return fail(SendError::Long(frame.len()));
        }
        let share = (PORT_QUEUE / ports.len().saturating_sub(1).max(1)).max(1);
        let dst = &frame[..6];
        let group = dst[0] & 1 != 0;
        let mut queued = 0;
        let mut tried = 0;
        for p in ports.iter().filter(|p| p.index != from) {
            if group || p.mac == dst {
                tried += 1;
                if p.deliver(from, frame, share) {
                    queued += 1;
                } else {
                    src.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if tried == 0 {
            return fail(SendError::NoSuchMac);
        }
        if queued == 0 {
            return Err(SendError::Full);
        }
        src.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
        Ok(queued)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    #[test]
    fn unicast_reaches_only_its_port_intact_and_wakes_it() {
        let sw = Switch::new();
        let a = sw.add_port(port_mac(0)).unwrap();
        let b = sw.add_port(port_mac(1)).unwrap();
        let c = sw.add_port(port_mac(2)).unwrap();
        let woken = Arc::new(AtomicU64::new(0));
        let w = woken.clone();
        b.set_waker(Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        let f = frame(b.mac(), a.mac(), 1514, 0xa5);
        assert_eq!(sw.send(a.index(), &f), Ok(1));
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert!(!c.pending());
        assert_eq!(b.take().unwrap(), f);
        assert_eq!(b.take(), None);
        // Broadcast: every port but the sender.
        let bc = frame([0xff; 6], a.mac(), 60, 1);
        assert_eq!(sw.send(a.index(), &bc), Ok(2));
        assert!(!a.pending());
        assert_eq!(c.take().unwrap(), bc);
    }

    #[test]
    fn bad_frames_are_dropped_and_counted_on_the_sender() {
        let sw = Switch::new();
        let a = sw.add_port(port_mac(0)).unwrap();
        let b = sw.add_port(port_mac(1)).unwrap();
        assert_eq!(sw.send(0, &[0; 13]), Err(SendError::Short(13)));
        assert_eq!(
            sw.send(0, &frame(b.mac(), a.mac(), 1515, 0)),
            Err(SendError::Long(1515))
        );
        assert_eq!(
            sw.send(0, &frame(port_mac(9), a.mac(), 60, 0)),
            Err(SendError::NoSuchMac)
        );
        assert_eq!(a.stats.tx_dropped.load(Ordering::Relaxed), 3);
        assert!(!b.pending());
        assert_eq!(sw.send(7, &[0; 60]), Err(SendError::NoSuchPort));
    }

    /// A port nobody drains holds at most PORT_QUEUE frames; a flooding source gets only its
    /// share of a neighbour's inbox, so the other sender's frames still find room.
    #[test]
    fn a_flood_is_bounded_and_leaves_room_for_the_other_sender() {
        let sw = Switch::new();
        let victim = sw.add_port(port_mac(0)).unwrap();
        let peer = sw.add_port(port_mac(1)).unwrap();
        let flooder = sw.add_port(port_mac(2)).unwrap();
        let f = frame(victim.mac(), flooder.mac(), 1514, 7);
        let mut ok = 0;
        for _ in 0..10_000 {
            ok += usize::from(sw.send(flooder.index(), &f).is_ok());
        }
        assert_eq!(ok, PORT_QUEUE / 2);
        assert_eq!(victim.queued(), PORT_QUEUE / 2);
        assert_eq!(
            victim.stats.rx_dropped.load(Ordering::Relaxed),
            (10_000 - PORT_QUEUE / 2) as u64
        );
        assert_eq!(
            flooder.stats.tx_dropped.load(Ordering::Relaxed),
            (10_000 - PORT_QUEUE / 2) as u64
        );
        let g = frame(victim.mac(), peer.mac(), 100, 9);
        assert_eq!(sw.send(peer.index(), &g), Ok(1));
        // Draining the flood frees the flooder's share again.
        for _ in 0..PORT_QUEUE / 2 {
            assert_eq!(victim.take().unwrap(), f);
        }
        assert_eq!(victim.take().unwrap(), g);
        assert_eq!(sw.send(flooder.index(), &f), Ok(1));
    }

    #[test]
    fn ports_are_capped() {
        let sw = Switch::new();
        for i in 0..MAX_PORTS {
            assert!(sw.add_port(port_mac(i as u32)).is_some());
        }
        assert!(sw.add_port(port_mac(999)).is_none());
    }
}
