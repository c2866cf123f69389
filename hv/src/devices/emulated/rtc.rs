//! A minimal MC146818 CMOS RTC on ports 0x70 (index) / 0x71 (data): the time-of-day and date
//! registers answer the host's UTC time in BCD, 24-hour mode; status A reports no update in
//! progress, status D a valid battery. No alarms, no interrupts, no NVRAM beyond zeros. Each
//! read is two userspace exits (index write, data read), the cost the `clock` workload shows.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, DeviceAction};

/// Index port; the data port follows it.
pub const RTC_PORT: u16 = 0x70;

/// The RTC: only the selected index is state.
#[derive(Debug, Default)]
pub struct Rtc {
    index: u8,
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    ((v / 10) << 4 | (v % 10)) as u8
}

impl Rtc {
    /// A new RTC (index 0).
    pub fn new() -> Rtc {
        Rtc::default()
    }

    /// Register `index` at UNIX time `secs`.
    pub fn register(index: u8, secs: i64) -> u8 {
        let (y, mo, d, h, mi, s) = crate::run::civil_from_unix(secs);
        // 1970-01-01 was a Thursday (day of week 5, Sunday = 1).
        let dow = (secs.div_euclid(86_400) + 4).rem_euclid(7) as u32 + 1;
        match index {
            0x00 => bcd(s),
            0x02 => bcd(mi),
            0x04 => bcd(h),
            0x06 => bcd(dow),
            0x07 => bcd(d),
            0x08 => bcd(mo),
            0x09 => bcd((y.rem_euclid(100)) as u32),
            0x0a => 0x26, // UIP clear, 32.768 kHz base, 1024 Hz rate
            0x0b => 0x02, // 24-hour, BCD, no interrupts
            0x0d => 0x80, // valid RAM and time
            0x32 => bcd((y / 100) as u32),
            _ => 0,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 1 {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            Rtc::register(self.index, secs)
        } else {
            self.index
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == 0 {
            // Bit 7 is the NMI mask on real hardware; the index is the low 7 bits.
            self.index = data.first().copied().unwrap_or(0) & 0x7f;
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_bcd_utc() {
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        let t = 951_782_400 + 12 * 3600 + 34 * 60 + 56;
        assert_eq!(Rtc::register(0, t), 0x56);
        assert_eq!(Rtc::register(2, t), 0x34);
        assert_eq!(Rtc::register(4, t), 0x12);
        assert_eq!(Rtc::register(6, t), 0x03);
        assert_eq!(Rtc::register(7, t), 0x29);
        assert_eq!(Rtc::register(8, t), 0x02);
        assert_eq!(Rtc::register(9, t), 0x00);
        assert_eq!(Rtc::register(0x32, t), 0x20);
        assert_eq!(Rtc::register(0x0a, t) & 0x80, 0, "no update in progress");
    }

    #[test]
    fn index_then_data() {
        let mut r = Rtc::new();
        r.write(0, &[0x8b]);
        let mut b = [0u8; 1];
        r.read(1, &mut b);
        assert_eq!(b[0], 0x02);
        r.read(0, &mut b);
        assert_eq!(b[0], 0x0b);
        r.read(1, &mut []);
    }
}
