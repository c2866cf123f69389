//! A tiny network layer for the guests: the [`Nic`] trait the drivers (NE2000, virtio-net)
//! implement, and the Ethernet/ARP/IPv4/UDP wire format from the protocol crate
//! ([`hvlab_protocol::net`]), re-exported here. Every frame received is checked (lengths, IP
//! header checksum, UDP checksum) before a workload sees its payload; malformed frames are
//! counted and dropped, never trusted.

pub use hvlab_protocol::net::*;

/// A network card as the stack needs it.
pub trait Nic {
    /// The card's MAC.
    fn mac(&self) -> [u8; 6];
    /// Transmits `frame` (copied; 14..=1514 bytes, shorter frames are padded to 60).
    fn send(&mut self, frame: &[u8]) -> Result<(), NicError>;
    /// Takes one received frame into `out`; its length, or None when none is waiting.
    fn recv(&mut self, out: &mut [u8]) -> Result<Option<usize>, NicError>;
    /// Waits until a frame may have arrived: halts until the card's interrupt, or spins
    /// briefly when polling.
    fn wait(&mut self) -> Result<(), NicError>;
    /// Driver-side counters: (notifications or doorbell writes, frames the card dropped).
    fn counters(&self) -> NicCounters;
}

/// Counters every driver keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Device notifications (virtio kicks, NE2000 transmit commands).
    pub kicks: u64,
    /// Frames the card reported dropping (NE2000 overflow, missed-packet counter).
    pub dropped: u64,
}

/// Why a card failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicError {
    /// The device reported a broken state (virtio DEVICE_NEEDS_RESET).
    Broken(&'static str),
    /// The frame cannot be sent (too long, too short).
    BadFrame,
    /// Nothing happened for too long.
    Timeout,
}
