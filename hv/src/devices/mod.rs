//! Devices a partition can have. `hv_ports` are hv's own protocol ports; `emulated/` devices are
//! driven register by register (every access traps); `synthetic/` devices use shared-memory
//! rings and doorbells.

pub mod emulated;
pub mod hv_ports;
