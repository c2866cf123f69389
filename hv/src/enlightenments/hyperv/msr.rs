//! The synthetic MSRs, as the TLFS defines them, served from the MSR exits hv filters to
//! userspace. One instance per partition; per-vCPU MSRs are indexed by VP index.
//!
//! Present only with their enlightenment (else #GP, as on a host without it): GUEST_OS_ID,
//! HYPERCALL and VP_ASSIST_PAGE with any Hyper-V enlightenment; VP_INDEX with hv-vpindex;
//! TIME_REF_COUNT and REFERENCE_TSC with hv-time; TSC_FREQUENCY and APIC_FREQUENCY with
//! hv-frequencies. Read-only MSRs #GP on writes; reserved bits set in a write #GP; a page whose
//! GPA is outside guest memory #GPs. Until GUEST_OS_ID is non-zero a write enabling the
//! hypercall page is dropped (the page stays disabled, as KVM does), and writing 0 to
//! GUEST_OS_ID disables the page. A locked HYPERCALL MSR ignores writes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hvlab_protocol::hyperv as tlfs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Features, page, tsc_page};

/// APIC timer frequency KVM's local APIC runs at (1 ns bus cycle).
pub(crate) const APIC_HZ: u64 = 1_000_000_000;
/// HYPERCALL bits 11:2, REFERENCE_TSC and VP_ASSIST_PAGE bits 11:1: reserved.
const HYPERCALL_RESERVED: u64 = 0xffc;
const PAGE_MSR_RESERVED: u64 = 0xffe;

/// The partition's clock, for TIME_REF_COUNT, REFERENCE_TSC and TSC_FREQUENCY: the guest TSC
/// rate and one (guest TSC, host TSC) pair read together when vCPU 0 was created, which is
/// the reference time's origin (TIME_REF_COUNT counts from partition creation).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub tsc_khz: u32,
    pub guest_tsc: u64,
    pub host_tsc: u64,
}

impl Clock {
    /// TSC page scale and offset: reference time 0 at the origin.
    pub(crate) fn page(&self) -> Option<(u64, i64)> {
        let scale = tsc_page::scale(self.tsc_khz)?;
        let at_origin = tlfs::tsc_page_time(self.guest_tsc, scale, 0);
        Some((scale, (at_origin as i64).wrapping_neg()))
    }

    /// Partition reference time now (100 ns units), as the TSC page gives it.
    pub(crate) fn reference_time(&self) -> Option<u64> {
        let (scale, offset) = self.page()?;
        Some(tlfs::tsc_page_time(self.guest_tsc_now(), scale, offset))
    }

    /// The guest's TSC now, from the host's (same rate: hv does not scale the guest TSC).
    pub(crate) fn guest_tsc_now(&self) -> u64 {
        tsc_page::host_tsc()
            .wrapping_sub(self.host_tsc)
            .wrapping_add(self.guest_tsc)
    }
}

/// MSR state of one partition.
#[derive(Debug)]
pub(crate) struct Msrs {
    features: Features,
    guest_os_id: AtomicU64,
    hypercall: AtomicU64,
    /// MSR value and page sequence, updated together.
    reference_tsc: Mutex<(u64, u32)>,
    vp_assist: Box<[AtomicU64]>,
    clock: Option<Clock>,
}

/// A refused access: the vCPU gets a #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gp;

impl Msrs {
    pub(crate) fn new(features: Features, vcpus: u32, clock: Option<Clock>) -> Self {
        Msrs {
            features,
            guest_os_id: AtomicU64::new(0),
            hypercall: AtomicU64::new(0),
            reference_tsc: Mutex::new((0, 0)),
            vp_assist: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            clock,
        }
    }

    /// True when `msr` is one of the Hyper-V MSRs hv filters (served or refused here).
    pub(crate) fn filtered(msr: u32) -> bool {
        matches!(
            msr,
            tlfs::MSR_GUEST_OS_ID
                | tlfs::MSR_HYPERCALL
                | tlfs::MSR_VP_INDEX
                | tlfs::MSR_TIME_REF_COUNT
                | tlfs::MSR_REFERENCE_TSC
                | tlfs::MSR_TSC_FREQUENCY
                | tlfs::MSR_APIC_FREQUENCY
                | tlfs::MSR_VP_ASSIST_PAGE
        )
    }

    /// True when the hypercall page is enabled (calls through the transport are accepted).
    pub(crate) fn hypercall_enabled(&self) -> bool {
        self.hypercall.load(Ordering::SeqCst) & tlfs::MSR_ENABLE != 0
    }

    /// Partition reference time now (100 ns units), from the same formula as the TSC page.
    pub(crate) fn reference_time(&self) -> Option<u64> {
        let c = self.clock?;
        let (scale, offset) = c.page()?;
        Some(tlfs::tsc_page_time(c.guest_tsc_now(), scale, offset))
    }

    /// RDMSR `msr` on VP `vp`.
    pub(crate) fn read(&self, vp: u32, msr: u32) -> Result<u64, Gp> {
        let f = self.features;
        match msr {
            tlfs::MSR_GUEST_OS_ID => Ok(self.guest_os_id.load(Ordering::SeqCst)),
            tlfs::MSR_HYPERCALL => Ok(self.hypercall.load(Ordering::SeqCst)),
            tlfs::MSR_VP_INDEX if f.has(Features::VPINDEX) => Ok(u64::from(vp)),
            tlfs::MSR_TIME_REF_COUNT if f.has(Features::TIME) => self.reference_time().ok_or(Gp),
            tlfs::MSR_REFERENCE_TSC if f.has(Features::TIME) => {
                Ok(super::lock(&self.reference_tsc).0)
            }
            tlfs::MSR_TSC_FREQUENCY if f.has(Features::FREQUENCIES) => {
                self.clock.map(|c| u64::from(c.tsc_khz) * 1000).ok_or(Gp)
            }
            tlfs::MSR_APIC_FREQUENCY if f.has(Features::FREQUENCIES) => Ok(APIC_HZ),
            tlfs::MSR_VP_ASSIST_PAGE => self
                .vp_assist
                .get(vp as usize)
                .map(|v| v.load(Ordering::SeqCst))
                .ok_or(Gp),
            _ => Err(Gp),
        }
    }

    /// WRMSR `msr` = `value` on VP `vp`; pages are written into `mem`.
    pub(crate) fn write(
        &self,
        vp: u32,
        msr: u32,
        value: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<(), Gp> {
        let f = self.features;
        let gpa = GuestAddress(value & !0xfff);
        match msr {
            tlfs::MSR_GUEST_OS_ID => {
                self.guest_os_id.store(value, Ordering::SeqCst);
                if value == 0 {
                    self.hypercall
                        .fetch_and(!tlfs::MSR_ENABLE, Ordering::SeqCst);
                }
                Ok(())
            }
            tlfs::MSR_HYPERCALL => {
                if value & HYPERCALL_RESERVED != 0 {
                    return Err(Gp);
                }
                let old = self.hypercall.load(Ordering::SeqCst);
                if old & tlfs::HYPERCALL_LOCKED != 0 {
                    return Ok(()); // locked: writes are ignored
                }
                if self.guest_os_id.load(Ordering::SeqCst) == 0 {
                    return Ok(()); // no guest OS ID yet: the page stays disabled
                }
                if value & tlfs::MSR_ENABLE != 0 {
                    mem.write_slice(&page::page(), gpa).map_err(|_| Gp)?;
                }
                self.hypercall.store(value, Ordering::SeqCst);
                Ok(())
            }
            tlfs::MSR_REFERENCE_TSC if f.has(Features::TIME) => {
                if value & PAGE_MSR_RESERVED != 0 {
                    return Err(Gp);
                }
                let mut g = super::lock(&self.reference_tsc);
                if value & tlfs::MSR_ENABLE != 0 {
                    let page = self.clock.and_then(|c| c.page());
                    // Without a known TSC rate the page says "invalid" (sequence 0): the guest
                    // falls back to TIME_REF_COUNT, as the TLFS prescribes.
                    let seq = if page.is_some() {
                        tsc_page::next_sequence(g.1)
                    } else {
                        0
                    };
                    let (scale, offset) = page.unwrap_or((0, 0));
                    let bytes = tsc_page::page_bytes(seq, scale, offset);
                    mem.write_slice(&bytes, gpa).map_err(|_| Gp)?;
                    g.1 = seq;
                }
                g.0 = value;
                Ok(())
            }
            tlfs::MSR_VP_ASSIST_PAGE => {
                let slot = self.vp_assist.get(vp as usize).ok_or(Gp)?;
                if value & PAGE_MSR_RESERVED != 0 {
                    return Err(Gp);
                }
                if value & tlfs::MSR_ENABLE != 0 {
                    // Accepted and cleared (nothing in it is used: no lazy EOI here).
                    mem.write_slice(&[0u8; 4096], gpa).map_err(|_| Gp)?;
                }
                slot.store(value, Ordering::SeqCst);
                Ok(())
            }
            // VP_INDEX, TIME_REF_COUNT, the frequencies: read-only. Unknown: absent.
            _ => Err(Gp),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MEM: usize = 1 << 20;

    fn setup(features: Features) -> (Msrs, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        // A guest TSC far ahead of the host's (as on nested hosts), read "now".
        let clock = Clock {
            tsc_khz: 2_000_000,
            guest_tsc: 1 << 44,
            host_tsc: tsc_page::host_tsc(),
        };
        (Msrs::new(features, 2, Some(clock)), mem)
    }

    fn all() -> Features {
        Features(Features::VPINDEX | Features::TIME | Features::FREQUENCIES)
    }

    #[test]
    fn hypercall_page_needs_guest_os_id_and_is_written_on_enable() {
        let (m, mem) = setup(all());
        assert_eq!(m.read(0, tlfs::MSR_GUEST_OS_ID), Ok(0));
        // Before GUEST_OS_ID: the enable is dropped, the page stays unwritten.
        m.write(0, tlfs::MSR_HYPERCALL, 0x5000 | 1, &mem).unwrap();
        assert_eq!(m.read(0, tlfs::MSR_HYPERCALL), Ok(0));
        assert!(!m.hypercall_enabled());
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 0);
        m.write(0, tlfs::MSR_GUEST_OS_ID, 0x8100_0000_0000_0001, &mem)
            .unwrap();
        m.write(1, tlfs::MSR_HYPERCALL, 0x5000 | 1, &mem).unwrap();
        assert!(m.hypercall_enabled());
        assert_eq!(m.read(0, tlfs::MSR_HYPERCALL), Ok(0x5001));
        let mut code = vec![0u8; page::code().len()];
        mem.read_slice(&mut code, GuestAddress(0x5000)).unwrap();
        assert_eq!(code, page::code());
        // Clearing GUEST_OS_ID disables the page.
        m.write(0, tlfs::MSR_GUEST_OS_ID, 0, &mem).unwrap();
        assert!(!m.hypercall_enabled());
    }

    #[test]
    fn hypercall_msr_reserved_bits_outside_memory_and_lock() {
        let (m, mem) = setup(all());
        m.write(0, tlfs::MSR_GUEST_OS_ID, 1, &mem).unwrap();
        for bit in 2..12 {
            assert_eq!(
                m.write(0, tlfs::MSR_HYPERCALL, 0x5001 | 1 << bit, &mem),
                Err(Gp),
                "bit {bit}"
            );
        }
        assert_eq!(
            m.write(0, tlfs::MSR_HYPERCALL, MEM as u64 | 1, &mem),
            Err(Gp)
        );
        assert_eq!(m.write(0, tlfs::MSR_HYPERCALL, !0xffe, &mem), Err(Gp));
        assert!(!m.hypercall_enabled());
        m.write(0, tlfs::MSR_HYPERCALL, 0x5000 | 3, &mem).unwrap();
        m.write(0, tlfs::MSR_HYPERCALL, 0, &mem).unwrap();
        assert_eq!(m.read(0, tlfs::MSR_HYPERCALL), Ok(0x5003), "locked");
    }

    #[test]
    fn read_only_msrs_and_absent_msrs_gp() {
        let (m, mem) = setup(all());
        assert_eq!(m.read(1, tlfs::MSR_VP_INDEX), Ok(1));
        assert_eq!(m.read(0, tlfs::MSR_TSC_FREQUENCY), Ok(2_000_000_000));
        assert_eq!(m.read(0, tlfs::MSR_APIC_FREQUENCY), Ok(APIC_HZ));
        for msr in [
            tlfs::MSR_VP_INDEX,
            tlfs::MSR_TIME_REF_COUNT,
            tlfs::MSR_TSC_FREQUENCY,
            tlfs::MSR_APIC_FREQUENCY,
            0x4000_0010,
        ] {
            assert_eq!(m.write(0, msr, 0, &mem), Err(Gp), "{msr:#x}");
        }
        assert_eq!(m.read(0, 0x4000_0010), Err(Gp));
        // Without the enlightenments, their MSRs are absent.
        let (none, mem) = setup(Features(0));
        for msr in [
            tlfs::MSR_VP_INDEX,
            tlfs::MSR_TIME_REF_COUNT,
            tlfs::MSR_REFERENCE_TSC,
            tlfs::MSR_TSC_FREQUENCY,
        ] {
            assert_eq!(none.read(0, msr), Err(Gp), "{msr:#x}");
        }
        assert_eq!(
            none.write(0, tlfs::MSR_REFERENCE_TSC, 0x6001, &mem),
            Err(Gp)
        );
        // VP assist page: accepted per VP, reserved bits and other VPs refused.
        assert_eq!(
            none.write(1, tlfs::MSR_VP_ASSIST_PAGE, 0x7001, &mem),
            Ok(())
        );
        assert_eq!(none.read(1, tlfs::MSR_VP_ASSIST_PAGE), Ok(0x7001));
        assert_eq!(none.read(0, tlfs::MSR_VP_ASSIST_PAGE), Ok(0));
        assert_eq!(
            none.write(0, tlfs::MSR_VP_ASSIST_PAGE, 0x7003, &mem),
            Err(Gp)
        );
        assert_eq!(
            none.write(9, tlfs::MSR_VP_ASSIST_PAGE, 0x7001, &mem),
            Err(Gp)
        );
    }

    #[test]
    fn reference_tsc_page_and_counter_agree() {
        let (m, mem) = setup(all());
        assert_eq!(m.write(0, tlfs::MSR_REFERENCE_TSC, 0x6003, &mem), Err(Gp));
        m.write(0, tlfs::MSR_REFERENCE_TSC, 0x6001, &mem).unwrap();
        assert_eq!(m.read(1, tlfs::MSR_REFERENCE_TSC), Ok(0x6001));
        let seq = mem.read_obj::<u32>(GuestAddress(0x6000)).unwrap();
        let scale = mem.read_obj::<u64>(GuestAddress(0x6008)).unwrap();
        let offset = mem.read_obj::<i64>(GuestAddress(0x6010)).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(scale, tsc_page::scale(2_000_000).unwrap());
        // Reference time 0 at the origin: (2^44 ticks at 2 GHz) in 100 ns units.
        let at_origin = ((1u64 << 44) as u128 * 10_000 / 2_000_000) as i64;
        assert!((offset + at_origin).abs() <= 1, "{offset} vs -{at_origin}");
        // Re-enabling bumps the sequence.
        m.write(0, tlfs::MSR_REFERENCE_TSC, 0x6001, &mem).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x6000)).unwrap(), 2);
        let a = m.read(0, tlfs::MSR_TIME_REF_COUNT).unwrap();
        // The page, read with the guest TSC at this moment, agrees with the MSR.
        let c = m.clock.unwrap();
        let page_now = tlfs::tsc_page_time(c.guest_tsc_now(), scale, offset);
        let b = m.read(1, tlfs::MSR_TIME_REF_COUNT).unwrap();
        assert!(a <= page_now && page_now <= b, "{a} {page_now} {b}");
        // Counted from the origin: well under a minute here.
        assert!(b < 600_000_000, "{b}");
        // Outside memory: #GP and the MSR keeps its value.
        assert_eq!(
            m.write(0, tlfs::MSR_REFERENCE_TSC, (MEM as u64) | 1, &mem),
            Err(Gp)
        );
        assert_eq!(m.read(0, tlfs::MSR_REFERENCE_TSC), Ok(0x6001));
        // Without a known TSC rate the page is marked invalid.
        let m = Msrs::new(all(), 1, None);
        m.write(0, tlfs::MSR_REFERENCE_TSC, 0x6001, &mem).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x6000)).unwrap(), 0);
        assert_eq!(m.read(0, tlfs::MSR_TIME_REF_COUNT), Err(Gp));
    }
}
