//! COM1: a 16550 UART (vm-superio) whose output is captured for the run's result parsing.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use crate::bus::{BusDevice, DeviceAction};

/// Console bytes kept per partition; beyond this a flooding guest's output is dropped (and
/// counted) rather than growing hv's memory without bound. The cap lives in `crate::limits`.
pub use crate::limits::CONSOLE_CAPTURE_BYTES as CONSOLE_CAPTURE_LIMIT;

/// Where console output goes: a bounded in-memory capture, optionally echoed to stderr with a
/// per-partition prefix.
#[derive(Debug, Default)]
pub struct ConsoleCapture {
    pub bytes: Vec<u8>,
    pub dropped: u64,
    echo_prefix: Option<String>,
    at_line_start: bool,
    /// Also copy every byte to stdout as is (`hv boot`'s console).
    echo_stdout: bool,
}

impl ConsoleCapture {
    /// A capture that also echoes to stderr, each line prefixed, when `echo_prefix` is set.
    pub fn new(echo_prefix: Option<String>) -> ConsoleCapture {
        ConsoleCapture {
            bytes: Vec::new(),
            dropped: 0,
            echo_prefix,
            at_line_start: true,
            echo_stdout: false,
        }
    }

    /// Copies every byte the guest writes to stdout from now on (a line at a time).
    pub fn echo_to_stdout(&mut self) {
        self.echo_stdout = true;
    }

    /// The captured text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn push(&mut self, buf: &[u8]) {
        let room = CONSOLE_CAPTURE_LIMIT.saturating_sub(self.bytes.len());
        let take = room.min(buf.len());
        self.bytes.extend_from_slice(&buf[..take]);
        self.dropped += (buf.len() - take) as u64;
        if self.echo_stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(buf);
            if buf.contains(&b'\n') {
                let _ = out.flush();
            }
        }
        if let Some(prefix) = &self.echo_prefix {
            let mut err = io::stderr().lock();
            for &b in buf {
                if self.at_line_start {
                    let _ = err.write_all(prefix.as_bytes());
                }
                if b != b'\r' {
                    let _ = err.write_all(&[b]);
                }
                self.at_line_start = b == b'\n';
            }
        }
    }
}

/// Shared handle so the partition can read what the guest printed after the run.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSink(pub Arc<Mutex<ConsoleCapture>>);

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART raises no interrupt in hvlab's guests (they poll), so its trigger does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The 16550 on the PIO bus (8 registers).
pub struct SerialDevice {
    uart: Serial<NoIrq, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// A UART writing into `sink`.
    pub fn new(sink: ConsoleSink) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(NoIrq, sink),
        }
    }

    /// Bytes for the guest to read (host loopback input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are byte-wide; a wider access reads the register at the offset and zeros.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // The only error is the sink failing, which ConsoleSink never does.
            let _ = self.uart.write(off, v);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_are_captured() {
        let sink = ConsoleSink::default();
        let mut s = SerialDevice::new(sink.clone());
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().text(), "hi\n");
        let mut lsr = [0u8; 1];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter always ready");
    }

    #[test]
    fn capture_is_bounded() {
        let mut c = ConsoleCapture::new(None);
        c.push(&vec![b'x'; CONSOLE_CAPTURE_LIMIT + 10]);
        assert_eq!(c.bytes.len(), CONSOLE_CAPTURE_LIMIT);
        assert_eq!(c.dropped, 10);
    }
}
