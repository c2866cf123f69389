//! A VMBus-style transport (issue item 4), built up in layers. Present so far: [`ring`], one
//! ring buffer in guest memory with VMBus's layout, packet framing and signal suppression
//! (interrupt mask, pending send size), provider side, unit-tested against hostile indices
//! and placements. Not yet present: channel offer/open through SynIC messages, the device
//! worker that serves a channel, and devices over it; nothing attaches this module to a
//! partition yet.

pub mod channel;
pub mod ring;
