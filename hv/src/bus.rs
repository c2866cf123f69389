//! PIO and MMIO address spaces.
//!
//! A bus is built before the partition starts and is immutable afterwards, so vCPU threads look
//! devices up without any lock. Each device sits behind its own mutex.
//!
//! Lock order: a vCPU holds at most one device lock at a time, and device code never takes a
//! bus, partition or counter lock while holding its own. Device workers (synthetic devices) take
//! only their own device's state.

use std::sync::{Arc, Mutex};

use crate::error::HvError;

/// What a device asks the vCPU loop to do after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: resume the guest.
    None,
    /// End the run with this guest exit status (the exit port).
    Exit(u32),
    /// A phase marker with this raw value (the phase port).
    Phase(u32),
    /// The guest asked for a system reset (i8042 pulse, reset control register): hv ends the
    /// run with `RunStatus::GuestReset`.
    Reset,
}

/// A device on a bus, addressed by offset within its range. Defaults do nothing (reads return
/// zeros), so a device implements only what it decodes.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }

    /// A write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let _ = (offset, data);
        DeviceAction::None
    }
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    name: String,
    device: SharedDevice,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{:#x}+{:#x}", self.name, self.base, self.len)
    }
}

/// One address space (PIO or MMIO), sorted by base address.
#[derive(Debug, Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

/// A device found for an address.
#[derive(Clone, Copy)]
pub struct Hit<'a> {
    /// Stable index of the device on this bus (counter slot).
    pub slot: usize,
    pub offset: u64,
    device: &'a SharedDevice,
}

impl std::fmt::Debug for Hit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("slot", &self.slot)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Hit<'_> {
    /// Reads through the device. A poisoned lock (a device panicked earlier) still yields the
    /// state: a device panic must not take every later access down with it.
    pub fn read(&self, data: &mut [u8]) {
        let mut d = self.device.lock().unwrap_or_else(|p| p.into_inner());
        d.read(self.offset, data);
    }

    /// Writes through the device.
    pub fn write(&self, data: &[u8]) -> DeviceAction {
        let mut d = self.device.lock().unwrap_or_else(|p| p.into_inner());
        d.write(self.offset, data)
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Adds `device` at `[base, base + len)` under `name`; returns its slot.
    ///
    /// Slots are assigned in insertion order and never change, so counters indexed by slot
    /// stay valid. Overlaps are refused.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<usize, HvError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or_else(|| {
            HvError::Config(format!("device `{name}` has an empty or wrapping range"))
        })?;
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(HvError::BusOverlap {
                new: name.to_string(),
                existing: e.name.clone(),
                base,
                len,
            });
        }
        self.entries.push(Entry {
            base,
            len,
            name: name.to_string(),
            device,
        });
        Ok(self.entries.len() - 1)
    }

    /// Finds the device covering `addr`. Linear in the handful of devices a partition has,
    /// which beats a tree at these sizes and takes no lock.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<Hit<'_>> {
        self.entries.iter().enumerate().find_map(|(slot, e)| {
            let offset = addr.wrapping_sub(e.base);
            (offset < e.len).then_some(Hit {
                slot,
                offset,
                device: &e.device,
            })
        })
    }

    /// Device names by slot.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no device is attached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
            self.0 = data[0];
            DeviceAction::Exit(u32::from(data[0]))
        }
    }

    fn dev() -> SharedDevice {
        Arc::new(Mutex::new(Echo::default()))
    }

    #[test]
    fn lookup_finds_device_and_offset() {
        let mut bus = Bus::new();
        bus.insert("a", 0x10, 4, dev()).unwrap();
        let b = bus.insert("b", 0x20, 8, dev()).unwrap();
        let hit = bus.lookup(0x23).unwrap();
        assert_eq!((hit.slot, hit.offset), (b, 3));
        assert_eq!(hit.write(&[7]), DeviceAction::Exit(7));
        let mut d = [0u8; 2];
        hit.read(&mut d);
        assert_eq!(d, [10, 10]);
        assert!(bus.lookup(0x14).is_none());
        assert!(bus.lookup(0x0f).is_none());
        assert!(bus.lookup(u64::MAX).is_none());
    }

    #[test]
    fn insert_overlapping_range_is_refused() {
        let mut bus = Bus::new();
        bus.insert("a", 0x10, 0x10, dev()).unwrap();
        let err = bus.insert("b", 0x1f, 2, dev()).unwrap_err();
        assert!(matches!(err, HvError::BusOverlap { .. }), "{err}");
        assert!(bus.insert("c", 0x20, 1, dev()).is_ok());
        assert!(bus.insert("d", u64::MAX, 2, dev()).is_err());
        assert!(bus.insert("e", 0x100, 0, dev()).is_err());
    }
}
