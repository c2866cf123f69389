//! Port 0x80, the POST diagnostic port: firmware and kernels write progress codes there (Linux
//! also uses it as an I/O delay). A sink: writes are taken (one userspace exit each, counted
//! like any device access) and reads return 0xff, as QEMU's.

use crate::bus::{BusDevice, DeviceAction};

pub const POST_PORT: u16 = 0x80;

/// The sink.
#[derive(Debug, Default)]
pub struct PostPort;

impl BusDevice for PostPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> DeviceAction {
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_writes_and_reads_all_ones() {
        let mut p = PostPort;
        assert_eq!(p.write(0, &[0x55]), DeviceAction::None);
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }
}
