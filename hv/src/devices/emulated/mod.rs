//! Emulated devices: every guest register access is a userspace exit handled here.

pub mod ata;
pub mod ne2000;
pub mod pm_timer;
pub mod rtc;
pub mod serial;
