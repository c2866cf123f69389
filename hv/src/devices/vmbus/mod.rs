//! A VMBus-style transport (a simplified VMBus, not Microsoft's wire format; constants in
//! `hvlab_protocol::vmbus`), built in layers:
//!
//! - [`ring`]: one ring buffer in guest memory with VMBus's layout, packet framing and signal
//!   suppression (interrupt mask, pending send size), provider side, unit-tested against
//!   hostile indices and placements;
//! - [`channel`]: the management protocol (offers, open) carried in SynIC messages and the
//!   provider of an open channel (one echo device today).
//!
//! `enlightenments::host` attaches it with `hv-synic`: management messages are
//! HvCallPostMessage to connection 4 (replies in VP 0's SINT 2), a channel's signal is
//! HvCallSignalEvent to `CONN_CHANNEL_BASE + channel`, hv's signal is event flag `channel`
//! of VP 0's SINT 3. The provider runs on the signalling vCPU's thread (seccomp-filtered like
//! every vCPU); a device worker thread, block and console devices over the channel and
//! `--device vmbus` are not there yet.

pub mod channel;
pub mod ring;
