//! hv's own exit counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why KVM_RUN returned to userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitReason {
    IoOut,
    IoIn,
    MmioRead,
    MmioWrite,
    MsrRead,
    MsrWrite,
    Hlt,
    Intr,
    IrqWindow,
    Hypercall,
    Shutdown,
    SystemEvent,
    InternalError,
    FailEntry,
    Other,
}

impl ExitReason {
    /// Every reason, in counter order.
    pub const ALL: [ExitReason; 15] = [
        ExitReason::IoOut,
        ExitReason::IoIn,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::MsrRead,
        ExitReason::MsrWrite,
        ExitReason::Hlt,
        ExitReason::Intr,
        ExitReason::IrqWindow,
        ExitReason::Hypercall,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::InternalError,
        ExitReason::FailEntry,
        ExitReason::Other,
    ];

    /// Name used in run records.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoOut => "io_out",
            ExitReason::IoIn => "io_in",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::MsrRead => "msr_read",
            ExitReason::MsrWrite => "msr_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Intr => "intr",
            ExitReason::IrqWindow => "irq_window",
            ExitReason::Hypercall => "hypercall",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system_event",
            ExitReason::InternalError => "internal_error",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::Other => "other",
        }
    }
}

/// Which bus an exit went to, for the per-device count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Pio,
    Mmio,
}

/// One vCPU's counters. Written only by that vCPU's thread; read by any thread at a marker.
#[derive(Debug)]
pub struct VcpuExitCounters {
    by_reason: [AtomicU64; ExitReason::ALL.len()],
    /// One per PIO bus slot, then one for "no device".
    pio: Box<[AtomicU64]>,
    /// One per MMIO bus slot, then one for "no device".
    mmio: Box<[AtomicU64]>,
}

/// Single-writer increment: the owning vCPU is the only writer, so a relaxed load and store
/// are exact and avoid a locked read-modify-write on the exit path.
#[inline(always)]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl VcpuExitCounters {
    /// Counters for buses with `pio_slots` and `mmio_slots` devices.
    pub fn new(pio_slots: usize, mmio_slots: usize) -> VcpuExitCounters {
        let zeros = |n: usize| (0..=n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        VcpuExitCounters {
            by_reason: std::array::from_fn(|_| AtomicU64::new(0)),
            pio: zeros(pio_slots),
            mmio: zeros(mmio_slots),
        }
    }

    /// Counts one exit of `reason`.
    #[inline(always)]
    pub fn count(&self, reason: ExitReason) {
        bump(&self.by_reason[reason as usize]);
    }

    /// Counts one exit of `reason` that went to bus `kind`, slot `slot` (`None` = no device).
    #[inline(always)]
    pub fn count_bus(&self, reason: ExitReason, kind: BusKind, slot: Option<usize>) {
        bump(&self.by_reason[reason as usize]);
        let table = match kind {
            BusKind::Pio => &self.pio,
            BusKind::Mmio => &self.mmio,
        };
        // The last entry is "unmapped"; slots come from the bus, so they are in range.
        let i = slot.unwrap_or(table.len() - 1).min(table.len() - 1);
        bump(&table[i]);
    }

    /// Appends every counter (reasons, then PIO slots, then MMIO slots) to `out`.
    pub fn read_into(&self, out: &mut Vec<u64>) {
        let all = self
            .by_reason
            .iter()
            .chain(self.pio.iter())
            .chain(self.mmio.iter());
        out.extend(all.map(|c| c.load(Ordering::Relaxed)));
    }

    /// Number of values `read_into` appends.
    pub fn width(&self) -> usize {
        self.by_reason.len() + self.pio.len() + self.mmio.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_reason_and_slot() {
        let c = VcpuExitCounters::new(2, 1);
        c.count_bus(ExitReason::IoOut, BusKind::Pio, Some(1));
        c.count_bus(ExitReason::IoIn, BusKind::Pio, None);
        c.count_bus(ExitReason::MmioRead, BusKind::Mmio, Some(0));
        c.count(ExitReason::Intr);
        let mut v = Vec::new();
        c.read_into(&mut v);
        assert_eq!(v.len(), c.width());
        let n = ExitReason::ALL.len();
        assert_eq!(v[ExitReason::IoOut as usize], 1);
        assert_eq!(v[ExitReason::Intr as usize], 1);
        assert_eq!(&v[n..n + 3], &[0, 1, 1]); // pio slot 1, then unmapped
        assert_eq!(&v[n + 3..], &[1, 0]);
    }
}
