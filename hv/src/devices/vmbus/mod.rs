//! A VMBus-style transport (a simplified VMBus, not Microsoft's wire format; constants in
//! `hvlab_protocol::vmbus`), the third way hvlab's partitions reach a device beside emulated
//! registers and virtio. Built in layers:
//!
//! - [`ring`]: one ring buffer in guest memory with VMBus's layout, packet framing and signal
//!   suppression (interrupt mask, pending send size), provider side, unit-tested against
//!   hostile indices and placements;
//! - [`channel`]: the channel table of a partition, the management protocol (offers, open,
//!   hv's close notice) carried in SynIC messages, and serving an open channel's rings;
//! - [`worker`]: the device worker thread that serves the channels;
//! - one file per device behind a channel: [`echo`] (every packet comes back, for measuring
//!   the transport itself), [`blk`] (block storage) and [`console`].
//!
//! Signalling, as in Hyper-V: the guest posts management messages with HvCallPostMessage to
//! connection 4 (replies in VP 0's SINT 2) and signals a channel with HvCallSignalEvent to
//! `CONN_CHANNEL_BASE + channel`. That hypercall exits to hv on the calling vCPU, which only
//! marks the channel and wakes the worker (an eventfd write), as an ioeventfd would for virtio.
//! The worker serves the rings and signals the guest by setting event flag `channel` of VP 0's
//! SINT 3 and sending the SINT's interrupt (KVM_SIGNAL_MSI), unless the ring protocol says the
//! guest does not need it (it masked interrupts, or the reply ring was not empty).
//!
//! `enlightenments::host` attaches the channel table with `hv-synic` (the echo channel is
//! always offered then); `devices::attach` adds the block and console channels for
//! `--device vmbus`.

pub mod blk;
pub mod channel;
pub mod console;
pub mod echo;
pub mod ring;
pub mod worker;

use vm_memory::GuestMemoryMmap;

use ring::Packet;

/// A device behind a channel: what the provider does with each packet the guest sends.
pub trait ChannelDevice: Send + std::fmt::Debug {
    /// Device class in the offers (`hvlab_protocol::vmbus::DEVICE_*`).
    fn class(&self) -> u32;
    /// Name in notes.
    fn name(&self) -> &'static str;
    /// Largest reply payload [`Self::on_packet`] can write for a request whose payload is
    /// `request_len` bytes: the provider takes a packet only when that much room is free in
    /// the reply ring, so no request is taken that cannot be answered.
    fn max_reply(&self, request_len: usize) -> usize;
    /// Handles one packet; returns the reply to write, if any. Everything in `p` and in guest
    /// memory is the guest's: errors are answered in the device's protocol, never a panic.
    fn on_packet(&mut self, mem: &GuestMemoryMmap, p: &Packet) -> Option<Packet>;
    /// Counters for the run's notes, as `key=value` words.
    fn stats(&self) -> String;
}
