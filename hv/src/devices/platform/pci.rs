//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF) with one device: the host bridge at
//! 00:00.0, identified as QEMU's `pc` identifies it (Intel 440FX, 8086:1237, class 06/00), so
//! software written against QEMU finds the same IDs. Its configuration space is read-only (hv
//! models no PAM or SMRAM registers); every other bus/device/function reads all ones, as an
//! empty slot does, and writes to them go nowhere.
//!
//! 0xCF8 is the address register for 32-bit accesses only (PCI Local Bus 3.0, 3.2.2.3.2);
//! the byte at 0xCF9 is the PIIX reset control register, which the FADT names as the reset
//! register: a write with bit 2 (RST_CPU) set resets the system.

use crate::bus::{BusDevice, DeviceAction};

/// First port (the address register); the device decodes 8 ports.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORTS: u16 = 8;
/// Host bridge IDs (i440FX, as QEMU's `pc`).
pub const HOST_VENDOR: u16 = 0x8086;
pub const HOST_DEVICE: u16 = 0x1237;

const ENABLE: u32 = 1 << 31;
/// Reset control register bit: reset the CPU(s).
const RCR_RST_CPU: u8 = 1 << 2;

/// The host bridge's configuration space.
fn host_bridge_config() -> [u8; 256] {
    let mut c = [0u8; 256];
    c[0..2].copy_from_slice(&HOST_VENDOR.to_le_bytes());
    c[2..4].copy_from_slice(&HOST_DEVICE.to_le_bytes());
    c[4..6].copy_from_slice(&0x0006u16.to_le_bytes()); // command: memory + bus master
    c[8] = 0x02; // revision
    c[0xa] = 0x00; // subclass: host bridge
    c[0xb] = 0x06; // class: bridge
    c[0xe] = 0x00; // header type 0, single function
    c[0x2c..0x2e].copy_from_slice(&0x1af4u16.to_le_bytes()); // subsystem vendor (as QEMU)
    c[0x2e..0x30].copy_from_slice(&0x1100u16.to_le_bytes()); // subsystem ID (as QEMU)
    c
}

/// The configuration ports and the reset control register.
#[derive(Debug)]
pub struct PciHost {
    address: u32,
    reset_control: u8,
    bridge: [u8; 256],
}

impl Default for PciHost {
    fn default() -> Self {
        PciHost::new()
    }
}

impl PciHost {
    pub fn new() -> PciHost {
        PciHost {
            address: 0,
            reset_control: 0,
            bridge: host_bridge_config(),
        }
    }

    /// The byte at `offset` within the dword the address register selects.
    fn config_byte(&self, offset: u64) -> u8 {
        let a = self.address;
        let (bus, dev, func) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7);
        if a & ENABLE == 0 || (bus, dev, func) != (0, 0, 0) {
            return 0xff;
        }
        let reg = (a & 0xfc) as usize + (offset as usize & 3);
        self.bridge[reg]
    }
}

impl BusDevice for PciHost {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            1 if data.len() == 1 => data[0] = self.reset_control,
            4..=7 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.config_byte(offset - 4 + i as u64);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        match (offset, data.len()) {
            (0, 4) => {
                let mut a = [0u8; 4];
                a.copy_from_slice(data);
                self.address = u32::from_le_bytes(a) & 0x80ff_fffc;
            }
            (1, 1) => {
                let old = self.reset_control;
                self.reset_control = data[0] & 0x0e;
                if data[0] & RCR_RST_CPU != 0 && old & RCR_RST_CPU == 0 {
                    return DeviceAction::Reset;
                }
            }
            // Configuration writes: the host bridge is read-only, absent devices take nothing.
            _ => {}
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_config(p: &mut PciHost, bdf: u32, reg: u32) -> u32 {
        p.write(0, &(ENABLE | bdf << 8 | reg).to_le_bytes());
        let mut d = [0u8; 4];
        p.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn host_bridge_answers_at_00_00_0_and_absent_devices_read_all_ones() {
        let mut p = PciHost::new();
        assert_eq!(read_config(&mut p, 0, 0), 0x1237_8086);
        assert_eq!(read_config(&mut p, 0, 8) >> 8, 0x06_00_00, "class 06/00/00");
        assert_eq!(
            (read_config(&mut p, 0, 0xc) >> 16) & 0xff,
            0,
            "header type 0"
        );
        assert_eq!(read_config(&mut p, 1 << 3, 0), 0xffff_ffff, "00:01.0");
        assert_eq!(read_config(&mut p, 1, 0), 0xffff_ffff, "00:00.1");
        assert_eq!(read_config(&mut p, 1 << 8, 0), 0xffff_ffff, "01:00.0");
        // Without the enable bit nothing answers.
        p.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn address_register_reads_back_and_narrow_data_reads_pick_their_bytes() {
        let mut p = PciHost::new();
        p.write(0, &(ENABLE | 0x0b).to_le_bytes());
        let mut a = [0u8; 4];
        p.read(0, &mut a);
        assert_eq!(
            u32::from_le_bytes(a),
            ENABLE | 0x08,
            "low two bits are not stored"
        );
        p.write(0, &ENABLE.to_le_bytes());
        let mut w = [0u8; 2];
        p.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), HOST_DEVICE);
        let mut b = [0u8; 1];
        p.read(5, &mut b);
        assert_eq!(b[0], 0x80);
        // A narrow write to 0xCF8 does not latch an address.
        p.write(0, &[0]);
        p.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), ENABLE);
    }

    #[test]
    fn host_bridge_is_read_only() {
        let mut p = PciHost::new();
        p.write(0, &(ENABLE | 4).to_le_bytes());
        p.write(4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read_config(&mut p, 0, 4) & 0xffff, 0x0006);
    }

    #[test]
    fn reset_control_register_resets_on_rst_cpu() {
        let mut p = PciHost::new();
        assert_eq!(
            p.write(1, &[0x02]),
            DeviceAction::None,
            "SYS_RST alone does nothing"
        );
        let mut b = [0u8; 1];
        p.read(1, &mut b);
        assert_eq!(b[0], 0x02);
        assert_eq!(p.write(1, &[0x06]), DeviceAction::Reset);
    }
}
