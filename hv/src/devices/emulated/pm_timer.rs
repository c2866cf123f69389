//! ACPI PM timer: a free-running 24-bit counter at 3.579545 MHz, read with a 32-bit `in` from
//! one port (QEMU's PIIX4/ICH9 put it at 0x608). Every read is a userspace exit, which is the
//! cost the `clock` workload measures against TSC and kvm-clock. Writes are ignored.

use std::time::Instant;

use crate::bus::BusDevice;

/// Where hv puts the timer (QEMU's q35 PM base 0x600 + 8).
pub const PM_TIMER_PORT: u16 = 0x608;
/// Counter frequency, Hz (ACPI spec).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The counter is 24 bits wide (TMR_VAL_EXT = 0).
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// The timer: counts from zero at creation.
#[derive(Debug)]
pub struct PmTimer {
    start: Instant,
}

impl Default for PmTimer {
    fn default() -> Self {
        PmTimer::new()
    }
}

impl PmTimer {
    /// A timer at zero now.
    pub fn new() -> PmTimer {
        PmTimer {
            start: Instant::now(),
        }
    }

    /// Current counter value (24 bits).
    pub fn value(&self) -> u32 {
        let ns = self.start.elapsed().as_nanos();
        let ticks = ns * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks & u128::from(PM_TIMER_MASK)) as u32
    }
}

impl BusDevice for PmTimer {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.value().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_the_acpi_rate_in_24_bits() {
        let mut t = PmTimer::new();
        let mut a = [0u8; 4];
        t.read(0, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut b = [0u8; 4];
        t.read(0, &mut b);
        let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
        assert_eq!(b & !PM_TIMER_MASK, 0);
        let d = b.wrapping_sub(a) & PM_TIMER_MASK;
        // 20 ms is ~71_590 ticks; allow for a slow, busy host.
        assert!((71_000..3_000_000).contains(&d), "{d}");
    }

    #[test]
    fn odd_reads_do_not_panic() {
        let mut t = PmTimer::new();
        let mut big = [0xaau8; 8];
        t.read(2, &mut big);
        assert_eq!(&big[2..], &[0; 6]);
    }
}
