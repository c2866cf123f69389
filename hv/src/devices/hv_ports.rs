//! hv's protocol devices (see `hvlab_protocol`): the exit port, the phase-marker port, and the
//! test port / test MMIO page that exit-floor uses to measure a bare userspace exit.

use hvlab_protocol::TEST_PORT_READ_VALUE;

use crate::bus::{BusDevice, DeviceAction};

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// Port 0xf4: a write ends the run with the written status.
#[derive(Debug, Default)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        DeviceAction::Exit(le_u32(data))
    }
}

/// The phase-marker port: the vCPU loop snapshots counters on each write.
#[derive(Debug, Default)]
pub struct PhasePort;

impl BusDevice for PhasePort {
    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        DeviceAction::Phase(le_u32(data))
    }
}

/// A register that answers every read with [`TEST_PORT_READ_VALUE`] and ignores writes: the
/// cheapest possible userspace exit, on either bus.
#[derive(Debug, Default)]
pub struct TestRegister;

impl BusDevice for TestRegister {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = TEST_PORT_READ_VALUE.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v[(offset as usize + i) % 4];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_port_decodes_partial_writes() {
        assert_eq!(ExitPort.write(0, &[3]), DeviceAction::Exit(3));
        assert_eq!(ExitPort.write(0, &[1, 2, 0, 0]), DeviceAction::Exit(0x201));
        assert_eq!(ExitPort.write(0, &[]), DeviceAction::Exit(0));
    }

    #[test]
    fn test_register_reads_the_protocol_value() {
        let mut d = [0u8; 4];
        TestRegister.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), TEST_PORT_READ_VALUE);
    }
}
