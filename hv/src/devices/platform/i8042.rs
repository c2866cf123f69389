//! The i8042 keyboard controller's reset line, the oldest way a PC kernel reboots: command
//! 0xFE written to port 0x64 pulses the CPU reset line, and so does clearing bit 0 of the
//! output port (command 0xD1, then the new value on port 0x60). hv models no keyboard: the
//! status register says "no data, input buffer empty, self-test passed" (0x04 = system flag),
//! data reads 0, and other commands are accepted and ignored. A reset ends the run with
//! `RunStatus::GuestReset` (hv does not reboot partitions).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::bus::{BusDevice, DeviceAction};

pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;

const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Last write was a command (status bit 3).
const STATUS_COMMAND: u8 = 0x08;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

/// State the two ports share: whether the next data byte is for the output port.
#[derive(Debug, Default, Clone)]
pub struct I8042 {
    output_port_next: Arc<AtomicBool>,
    last_was_command: Arc<AtomicBool>,
}

/// Port 0x64: status (read) and commands (write).
#[derive(Debug)]
pub struct CommandPort(pub I8042);
/// Port 0x60: data.
#[derive(Debug)]
pub struct DataPort(pub I8042);

impl BusDevice for CommandPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let cmd = if self.0.last_was_command.load(Ordering::Relaxed) {
            STATUS_COMMAND
        } else {
            0
        };
        data.fill(STATUS_SYSTEM_FLAG | cmd);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        let Some(&cmd) = data.first() else {
            return DeviceAction::None;
        };
        self.0.last_was_command.store(true, Ordering::Relaxed);
        self.0
            .output_port_next
            .store(cmd == CMD_WRITE_OUTPUT_PORT, Ordering::Relaxed);
        if cmd == CMD_PULSE_RESET {
            DeviceAction::Reset
        } else {
            DeviceAction::None
        }
    }
}

impl BusDevice for DataPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        self.0.last_was_command.store(false, Ordering::Relaxed);
        let to_output_port = self.0.output_port_next.swap(false, Ordering::Relaxed);
        match data.first() {
            // Output port bit 0 is the (active-low) reset line.
            Some(&v) if to_output_port && v & 1 == 0 => DeviceAction::Reset,
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (CommandPort, DataPort) {
        let s = I8042::default();
        (CommandPort(s.clone()), DataPort(s))
    }

    #[test]
    fn command_fe_resets() {
        let (mut c, _) = pair();
        let mut st = [0u8];
        c.read(0, &mut st);
        assert_eq!(st[0], STATUS_SYSTEM_FLAG, "no data, input buffer empty");
        assert_eq!(
            c.write(0, &[0xae]),
            DeviceAction::None,
            "enable keyboard: ignored"
        );
        c.read(0, &mut st);
        assert_eq!(st[0], STATUS_SYSTEM_FLAG | STATUS_COMMAND);
        assert_eq!(c.write(0, &[0xfe]), DeviceAction::Reset);
    }

    #[test]
    fn output_port_reset_bit_resets_only_after_d1() {
        let (mut c, mut d) = pair();
        assert_eq!(d.write(0, &[0x00]), DeviceAction::None, "plain data byte");
        assert_eq!(c.write(0, &[0xd1]), DeviceAction::None);
        assert_eq!(
            d.write(0, &[0xdf]),
            DeviceAction::None,
            "A20 on, reset line high"
        );
        assert_eq!(
            d.write(0, &[0x00]),
            DeviceAction::None,
            "no longer an output-port write"
        );
        assert_eq!(c.write(0, &[0xd1]), DeviceAction::None);
        assert_eq!(d.write(0, &[0xde]), DeviceAction::Reset);
        let mut v = [0xffu8];
        d.read(0, &mut v);
        assert_eq!(v[0], 0);
    }
}
