//! The ACPI PM1a event and control blocks the FADT names (ports 0x600-0x603 and 0x604-0x605),
//! so an OS that reads them finds registers rather than an empty port. PM1_STS bits are
//! write-one-to-clear and nothing sets them (hv raises no fixed events); PM1_EN holds what is
//! written; PM1_CNT always reads with SCI_EN set (the platform has no SMI command port and is
//! always in ACPI mode) and stores the rest. The DSDT offers no sleep states, so SLP_EN is
//! stored and has no effect.

use crate::bus::{BusDevice, DeviceAction};

/// PM1a event block (status, enable: 2 bytes each).
#[derive(Debug, Default)]
pub struct Pm1Event {
    status: u16,
    enable: u16,
}

/// PM1a control block (2 bytes).
#[derive(Debug, Default)]
pub struct Pm1Control {
    value: u16,
}

const SCI_EN: u16 = 1;

fn le(data: &[u8]) -> u16 {
    u16::from(data.first().copied().unwrap_or(0))
        | u16::from(data.get(1).copied().unwrap_or(0)) << 8
}

/// Reads `data.len()` bytes of the 4-byte little-endian image `regs` from `offset`.
fn read_bytes(regs: [u8; 4], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = regs.get(offset as usize + i).copied().unwrap_or(0);
    }
}

impl BusDevice for Pm1Event {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let s = self.status.to_le_bytes();
        let e = self.enable.to_le_bytes();
        read_bytes([s[0], s[1], e[0], e[1]], offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        match (offset, data.len()) {
            (0, 4) => {
                self.status &= !le(data);
                self.enable = le(&data[2..]);
            }
            (0, _) => self.status &= !le(data),
            (2, _) => self.enable = le(data),
            _ => {}
        }
        DeviceAction::None
    }
}

impl BusDevice for Pm1Control {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = (self.value | SCI_EN).to_le_bytes();
        read_bytes([v[0], v[1], 0, 0], offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == 0 {
            self.value = le(data);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_reads_sci_enabled_and_keeps_writes() {
        let mut c = Pm1Control::default();
        let mut v = [0u8; 2];
        c.read(0, &mut v);
        assert_eq!(u16::from_le_bytes(v), SCI_EN);
        c.write(0, &0x1c00u16.to_le_bytes());
        c.read(0, &mut v);
        assert_eq!(u16::from_le_bytes(v), 0x1c00 | SCI_EN);
    }

    #[test]
    fn event_enable_holds_and_status_is_write_one_to_clear() {
        let mut e = Pm1Event {
            status: 0x0101,
            enable: 0,
        };
        e.write(2, &0x0120u16.to_le_bytes());
        e.write(0, &0x0001u16.to_le_bytes());
        let mut v = [0u8; 4];
        e.read(0, &mut v);
        assert_eq!(v, [0x00, 0x01, 0x20, 0x01]);
        e.write(0, &[0, 1, 0, 0]);
        e.read(0, &mut v);
        assert_eq!(
            v,
            [0, 0, 0, 0],
            "dword write: status cleared, enable replaced"
        );
    }
}
