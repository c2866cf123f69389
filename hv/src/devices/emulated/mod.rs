//! Emulated devices: every guest register access is a userspace exit handled here.

pub mod ata;
pub mod pm_timer;
pub mod rtc;
pub mod serial;
