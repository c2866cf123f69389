//! virtio-net on a [`Switch`](crate::devices::switch::Switch) port: queue 0 receives (device
//! to driver), queue 1 transmits; no control queue and no offloads (the guest computes its
//! checksums). The MAC is in the configuration space (VIRTIO_NET_F_MAC), and so is the link
//! status (VIRTIO_NET_F_STATUS: up while the port is on a switch).
//!
//! Every buffer starts with the 12-byte `virtio_net_hdr` of virtio 1.x (`num_buffers`
//! included). Transmit: the worker reads the chain's readable bytes (at most one header plus
//! [`MAX_FRAME`] + 1, so an oversized chain is never read whole), drops a frame too short or
//! too long (counted, and completed: a broken frame is the guest's problem, not a broken ring)
//! and hands the rest to the switch, which copies it to the destination port. Receive: the
//! worker takes chains only while the port's inbox has frames ([`VirtioBackend::wants`]), and
//! the switch wakes the worker when one arrives; a receive buffer smaller than header plus
//! frame gets the frame dropped and counted. A receive ring the driver never refills leaves
//! frames in the inbox, whose bound drops the rest (counted by the switch).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::chain::{self, Chain};
use super::{Served, VirtioBackend};
use crate::devices::NoteSink;
use crate::devices::switch::{MAX_FRAME, MIN_FRAME, Port, Switch, Waker};

/// virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// VIRTIO_NET_F_MAC: the configuration space holds the MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS: the configuration space holds the link status.
pub const F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP.
pub const S_LINK_UP: u16 = 1;
/// `virtio_net_hdr` with `num_buffers` (virtio 1.x).
pub const HDR_LEN: usize = 12;
/// Receive queue index.
pub const RX: usize = 0;
/// Transmit queue index.
pub const TX: usize = 1;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Transmitted chains shorter than a header plus an Ethernet header.
    pub tx_short: u64,
    /// Transmitted chains longer than a header plus [`MAX_FRAME`].
    pub tx_long: u64,
    /// Frames the switch did not queue anywhere (no such MAC, inboxes full).
    pub tx_undelivered: u64,
    /// Frames dropped because the receive buffer was too small for them.
    pub rx_small_buffer: u64,
    /// Service passes that found frames waiting and no receive buffer posted.
    pub rx_starved: u64,
}

/// The virtio-net backend of one partition.
#[derive(Debug)]
pub struct Net {
    switch: Arc<Switch>,
    port: Arc<Port>,
    notes: NoteSink,
    pub stats: NetStats,
    scratch: Vec<u8>,
}

impl Net {
    /// A NIC on `port` of `switch`.
    pub fn new(switch: Arc<Switch>, port: Arc<Port>, notes: NoteSink) -> Net {
        Net {
            switch,
            port,
            notes,
            stats: NetStats::default(),
            scratch: Vec::with_capacity(HDR_LEN + MAX_FRAME + 1),
        }
    }

    fn receive(&mut self, mem: &GuestMemoryMmap, c: &Chain) -> Served {
        let Some(frame) = self.port.take() else {
            return Served::Used(0); // not wanted without frames; nothing to write
        };
        let need = (HDR_LEN + frame.len()) as u64;
        if c.writable_len() < need {
            self.stats.rx_small_buffer += 1;
            self.notes.note(format!(
                "virtio-net: receive buffer of {} bytes for a {}-byte frame; dropped",
                c.writable_len(),
                frame.len()
            ));
            return Served::Used(0);
        }
        self.scratch.clear();
        let mut hdr = [0u8; HDR_LEN];
        hdr[10] = 1; // num_buffers: the frame fits one buffer
        self.scratch.extend_from_slice(&hdr);
        self.scratch.extend_from_slice(&frame);
        match chain::write_writable(mem, c, &self.scratch) {
            Ok(n) => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame.len() as u64;
                Served::Used(n as u32)
            }
            Err(e) => Served::Broken(e),
        }
    }

    fn transmit(&mut self, mem: &GuestMemoryMmap, c: &Chain) -> Served {
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        let limit = (HDR_LEN + MAX_FRAME + 1) as u64;
        if let Err(e) = chain::read_readable(mem, c, 0, &mut data, limit) {
            self.scratch = data;
            return Served::Broken(e);
        }
        let len = data.len().saturating_sub(HDR_LEN);
        if len < MIN_FRAME {
            self.stats.tx_short += 1;
            self.notes.note(format!(
                "virtio-net: transmit of {} bytes (header included) dropped: shorter than a header and an Ethernet header",
                data.len()
            ));
        } else if len > MAX_FRAME {
            self.stats.tx_long += 1;
            self.notes.note(format!(
                "virtio-net: transmit longer than {MAX_FRAME} bytes dropped"
            ));
        } else {
            match self.switch.send(self.port.index(), &data[HDR_LEN..]) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len as u64;
                }
                Err(_) => self.stats.tx_undelivered += 1,
            }
        }
        self.scratch = data;
        Served::Used(0)
    }
}

impl VirtioBackend for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn queues(&self) -> usize {
        2
    }

    fn config(&self) -> Vec<u8> {
        let mut c = self.port.mac().to_vec();
        c.extend_from_slice(&S_LINK_UP.to_le_bytes());
        c
    }

    fn wants(&self, queue: usize) -> bool {
        queue == TX || self.port.pending()
    }

    fn serve(&mut self, queue: usize, mem: &GuestMemoryMmap, c: &Chain) -> Served {
        if queue == RX {
            self.receive(mem, c)
        } else {
            self.transmit(mem, c)
        }
    }

    fn starved(&mut self, queue: usize) {
        if queue == RX {
            self.stats.rx_starved += 1;
        }
    }

    fn stats(&self) -> String {
        // Short words: the transport's summary and these share one note (256 bytes).
        let s = self.stats;
        let p = &self.port.stats;
        format!(
            "tx={} rx={} tx_short={} tx_long={} tx_undelivered={} rx_small_buffer={} \
             rx_starved={} sw_rx_dropped={} sw_tx_dropped={} sw_queued={}",
            s.tx_frames,
            s.rx_frames,
            s.tx_short,
            s.tx_long,
            s.tx_undelivered,
            s.rx_small_buffer,
            s.rx_starved,
            p.rx_dropped.load(std::sync::atomic::Ordering::Relaxed),
            p.tx_dropped.load(std::sync::atomic::Ordering::Relaxed),
            self.port.queued()
        )
    }
}

/// What wakes the worker of `dev` (its wake eventfd) when the switch queued a frame for it.
pub fn waker(dev: &std::sync::Mutex<super::VirtioMmio>) -> std::io::Result<Waker> {
    let fd = dev
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .wake
        .try_clone()?;
    Ok(Box::new(move || {
        // Non-blocking; a full counter already means "wake up".
        let _ = fd.write(1);
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::switch::port_mac;
    use crate::devices::synthetic::chain::Segment;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn seg(addr: u64, len: u32, write: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            write,
        }
    }

    fn pair() -> (Net, Net) {
        let sw = Switch::new();
        let a = sw.add_port(port_mac(0)).unwrap();
        let b = sw.add_port(port_mac(1)).unwrap();
        (
            Net::new(sw.clone(), a, NoteSink::default()),
            Net::new(sw, b, NoteSink::default()),
        )
    }

    /// A frame written by one guest arrives byte for byte in the other guest's buffer, after
    /// a 12-byte header with num_buffers = 1.
    #[test]
    fn a_frame_crosses_from_one_guest_memory_to_the_other() {
        let (mut a, mut b) = pair();
        let (ma, mb) = (mem(), mem());
        let mut frame = vec![0u8; HDR_LEN + 1514];
        frame[HDR_LEN..HDR_LEN + 6].copy_from_slice(&port_mac(1));
        for (i, x) in frame[HDR_LEN + 12..].iter_mut().enumerate() {
            *x = i as u8;
        }
        ma.write_slice(&frame, GuestAddress(0x1000)).unwrap();
        // Header and frame in two descriptors, as a driver may post them.
        let tx = Chain {
            head: 0,
            segments: vec![seg(0x1000, 12, false), seg(0x100c, 1514, false)],
        };
        assert!(matches!(a.serve(TX, &ma, &tx), Served::Used(0)));
        assert_eq!(a.stats.tx_frames, 1);
        assert!(b.wants(RX));
        let rx = Chain {
            head: 0,
            segments: vec![seg(0x4000, 2048, true)],
        };
        assert!(matches!(b.serve(RX, &mb, &rx), Served::Used(1526)));
        let mut got = vec![0u8; 1526];
        mb.read_slice(&mut got, GuestAddress(0x4000)).unwrap();
        assert_eq!(got[10], 1);
        assert_eq!(&got[HDR_LEN..], &frame[HDR_LEN..]);
        assert!(!b.wants(RX));
    }

    #[test]
    fn short_long_and_undeliverable_frames_are_counted_not_sent() {
        let (mut a, b) = pair();
        let m = mem();
        let chain = |len| Chain {
            head: 0,
            segments: vec![seg(0x1000, len, false)],
        };
        m.write_slice(&port_mac(1), GuestAddress(0x1000 + 12))
            .unwrap();
        a.serve(TX, &m, &chain(12 + 13));
        a.serve(TX, &m, &chain(12 + 1515));
        a.serve(TX, &m, &chain(0xffff_0000));
        assert_eq!((a.stats.tx_short, a.stats.tx_long), (1, 2));
        assert!(!b.wants(RX));
        m.write_slice(&port_mac(7), GuestAddress(0x1000 + 12))
            .unwrap();
        a.serve(TX, &m, &chain(12 + 60));
        assert_eq!(a.stats.tx_undelivered, 1);
        assert_eq!(a.stats.tx_frames, 0);
    }

    #[test]
    fn a_receive_buffer_too_small_drops_the_frame() {
        let (mut a, mut b) = pair();
        let m = mem();
        m.write_slice(&port_mac(1), GuestAddress(0x1000 + 12))
            .unwrap();
        let tx = Chain {
            head: 0,
            segments: vec![seg(0x1000, 12 + 1000, false)],
        };
        a.serve(TX, &m, &tx);
        let rx = Chain {
            head: 0,
            segments: vec![seg(0x4000, 512, true)],
        };
        assert!(matches!(b.serve(RX, &m, &rx), Served::Used(0)));
        assert_eq!(b.stats.rx_small_buffer, 1);
        assert!(!b.wants(RX));
    }

    #[test]
    fn config_has_the_mac_and_link_up() {
        let (a, b) = pair();
        assert_eq!(&a.config()[..6], &port_mac(0));
        assert_eq!(&b.config()[6..8], &[1, 0]);
        assert_eq!(a.features() & (F_MAC | F_STATUS), F_MAC | F_STATUS);
    }
}
