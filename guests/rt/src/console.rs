//! Console on the 16550 UART at COM1. Writes poll the line status once per 16 bytes (the FIFO
//! depth) rather than before every byte, which halves the exits a line costs on a VMM that
//! traps every port access, while still being correct on a real 16550.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use hvlab_protocol::CONSOLE_PORT;

use crate::cpu::{inb, outb};

const THR: u16 = CONSOLE_PORT;
const IER: u16 = CONSOLE_PORT + 1;
const FCR: u16 = CONSOLE_PORT + 2;
const LCR: u16 = CONSOLE_PORT + 3;
const LSR: u16 = CONSOLE_PORT + 5;
const LSR_THR_EMPTY: u8 = 0x20;
const FIFO_DEPTH: usize = 16;
/// Bounded wait for the transmitter: a UART that never drains must not hang the guest.
const MAX_POLLS: u32 = 10_000;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Programs 8N1, FIFO on, no interrupts.
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x03);
    outb(FCR, 0x07);
}

/// Console writer; take it with [`Console::lock`] so lines from several CPUs don't interleave.
#[derive(Debug)]
pub struct Console {
    in_fifo: usize,
}

impl Console {
    /// Takes the console lock (spins; holders never block).
    pub fn lock() -> Console {
        while LOCK.swap(true, Ordering::Acquire) {
            crate::cpu::pause();
        }
        Console {
            in_fifo: FIFO_DEPTH,
        }
    }

    fn put(&mut self, b: u8) {
        if self.in_fifo >= FIFO_DEPTH {
            let mut polls = 0;
            while inb(LSR) & LSR_THR_EMPTY == 0 && polls < MAX_POLLS {
                polls += 1;
            }
            self.in_fifo = 0;
        }
        outb(THR, b);
        self.in_fifo += 1;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::console::Console::lock(), $($arg)*);
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut c = $crate::console::Console::lock();
        let _ = write!(c, $($arg)*);
        let _ = c.write_str("\n");
    }};
}
