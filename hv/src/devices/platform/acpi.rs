//! ACPI tables, built in guest memory the way firmware leaves them: the RSDP on a 16-byte
//! boundary in the BIOS area (where an OS scans for it, 0xE0000-0xFFFFF), pointing to an RSDT
//! and (revision 2) an XSDT, which list the FADT and the MADT; the FADT points to the FACS and
//! a minimal DSDT. Layouts follow the ACPI specification (6.x, table revisions as QEMU's `pc`
//! uses them where both exist).
//!
//! - MADT: one enabled Processor Local APIC per vCPU (APIC ID = vCPU index, as hv's vCPUs
//!   have), the IOAPIC (KVM's in-kernel one at 0xFEC00000, GSI base 0), the interrupt source
//!   overrides ISA IRQ0 -> GSI2 (the PIT on IOAPIC pin 2, as on real boards and QEMU) and IRQ9
//!   level/active-high (the SCI), and the LINT1 NMI of every processor.
//! - FADT (revision 3, 244 bytes): SCI on IRQ 9, the PM1a event block at 0x600, PM1a control at
//!   0x604, the PM timer at 0x608 (hv's `pm_timer` device; QEMU's PIIX4 PM uses the same
//!   base), the reset register (I/O port 0xCF9, value 6: the PCI host's reset control), no SMI
//!   command port (the platform is always in ACPI mode), 32-bit and X_ addresses.
//! - DSDT: the header only (a valid, empty definition block; no devices, no sleep states).
//! - FACS: 64 bytes, 64-byte aligned.
//!
//! Everything fits in the first 4 KiB of the BIOS area; the guest image (1 MiB up), hv's boot
//! data (0x6000-0x8fff) and the MMIO window (3-4 GiB) are elsewhere.

use std::ops::Range;

/// Where the tables go: the BIOS area below 1 MiB that OSes scan for the RSDP.
pub const ACPI_REGION: Range<u64> = 0xe_0000..0x10_0000;
/// The RSDP's address (the region's first 16-byte boundary).
pub const RSDP_ADDR: u64 = ACPI_REGION.start;

/// The in-kernel IOAPIC's MMIO base (KVM's default, as QEMU's).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' default MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// PM1a event block (status + enable, 2 bytes each).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a control block (2 bytes).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u8 = 9;
/// Reset register port and value (the PCI host's reset control register, as QEMU's `pc`).
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;

const OEM_ID: &[u8; 6] = b"HVLAB ";
const OEM_TABLE_ID: &[u8; 8] = b"HVLABPC ";

/// The built tables: bytes to copy to guest-physical `base`.
#[derive(Debug, Clone)]
pub struct Tables {
    pub base: u64,
    pub bytes: Vec<u8>,
}

/// The sum of `bytes` is zero with this byte in the checksum field.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)))
}

/// A system description table: the 36-byte header (length and checksum filled) + `body`.
fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = (36 + body.len()) as u32;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(sig);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"HVLB"); // creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure for an I/O port block of `bits` accessed `access` bytes wide.
fn gas_io(port: u16, bits: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // System I/O space
    g[1] = bits;
    g[3] = access; // 1 byte, 2 word, 3 dword
    g[4..].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for i in 0..vcpus {
        // Processor Local APIC: UID, APIC ID, flags (enabled).
        b.extend_from_slice(&[0, 8, i as u8, i as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: ID 0, address, GSI base 0.
    b.extend_from_slice(&[1, 12, 0, 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: ISA IRQ0 -> GSI2 (conforming), IRQ9 -> GSI9 level, high.
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (SCI_IRQ, u32::from(SCI_IRQ), 0x000d)] {
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI: all processors (0xff), conforming, LINT1.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 1, &b)
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; 244 - 36];
    let mut put =
        |off: usize, bytes: &[u8]| b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes()); // FIRMWARE_CTRL
    put(40, &(dsdt as u32).to_le_bytes()); // DSDT
    put(46, &u16::from(SCI_IRQ).to_le_bytes()); // SCI_INT
    // SMI_CMD (48) = 0: no SMM, always in ACPI mode.
    put(56, &u32::from(PM1A_EVT_PORT).to_le_bytes()); // PM1a_EVT_BLK
    put(64, &u32::from(PM1A_CNT_PORT).to_le_bytes()); // PM1a_CNT_BLK
    put(76, &u32::from(super::PM_TIMER_PORT).to_le_bytes()); // PM_TMR_BLK
    put(88, &[4, 2, 0, 4]); // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    put(96, &0x0fffu16.to_le_bytes()); // P_LVL2_LAT > 100: no C2
    put(98, &0x0fffu16.to_le_bytes()); // P_LVL3_LAT > 1000: no C3
    put(108, &[0x32]); // CENTURY: CMOS index, as QEMU's
    put(109, &3u16.to_le_bytes()); // IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042
    // Flags: WBINVD (0), PROC_C1 (2), RESET_REG_SUP (10).
    put(112, &(1u32 | 1 << 2 | 1 << 10).to_le_bytes());
    put(116, &gas_io(RESET_PORT, 8, 1)); // RESET_REG
    put(128, &[RESET_VALUE]);
    put(132, &facs.to_le_bytes()); // X_FIRMWARE_CTRL
    put(140, &dsdt.to_le_bytes()); // X_DSDT
    put(148, &gas_io(PM1A_EVT_PORT, 32, 2)); // X_PM1a_EVT_BLK
    put(172, &gas_io(PM1A_CNT_PORT, 16, 2)); // X_PM1a_CNT_BLK
    put(208, &gas_io(super::PM_TIMER_PORT, 32, 3)); // X_PM_TMR_BLK
    sdt(b"FACP", 3, &b)
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 1; // version (ACPI 2.0+ layout)
    f
}

/// Lays tables out one after the other from `base`, each at the alignment it needs.
struct Layout {
    base: u64,
    bytes: Vec<u8>,
}

impl Layout {
    fn place(&mut self, t: &[u8], align: usize) -> u64 {
        let at = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(t);
        self.base + at as u64
    }
}

/// Builds the tables for `vcpus` processors (1..=255: APIC IDs are 8 bits here).
pub fn build(vcpus: u32) -> Tables {
    let vcpus = vcpus.clamp(1, 255);
    let mut l = Layout {
        base: RSDP_ADDR,
        bytes: vec![0; 36], // the RSDP, written last
    };
    let facs_at = l.place(&facs(), 64);
    let dsdt_at = l.place(&sdt(b"DSDT", 2, &[]), 16);
    let fadt_at = l.place(&fadt(facs_at, dsdt_at), 16);
    let madt_at = l.place(&madt(vcpus), 16);
    let tables = [fadt_at, madt_at];
    let rsdt: Vec<u8> = tables
        .iter()
        .flat_map(|&a| (a as u32).to_le_bytes())
        .collect();
    let rsdt_at = l.place(&sdt(b"RSDT", 1, &rsdt), 16);
    let xsdt: Vec<u8> = tables.iter().flat_map(|&a| a.to_le_bytes()).collect();
    let xsdt_at = l.place(&sdt(b"XSDT", 1, &xsdt), 16);

    let mut r = [0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2; // revision: ACPI 2.0+ (XSDT present)
    r[16..20].copy_from_slice(&(rsdt_at as u32).to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt_at.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    l.bytes[..36].copy_from_slice(&r);
    Tables {
        base: l.base,
        bytes: l.bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &Tables, addr: u64) -> &[u8] {
        &t.bytes[(addr - t.base) as usize..]
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }
    /// The table at `addr`, checked: signature, length, checksum.
    fn table<'a>(t: &'a Tables, addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        let b = at(t, addr);
        assert_eq!(&b[..4], sig);
        let len = u32_at(b, 4) as usize;
        assert!(len >= 36);
        assert_eq!(
            sum(&b[..len]),
            0,
            "{} checksum",
            String::from_utf8_lossy(sig)
        );
        &b[..len]
    }

    /// MADT entries as (type, bytes).
    fn entries(m: &[u8]) -> Vec<(u8, &[u8])> {
        let mut v = Vec::new();
        let mut p = 44;
        while p < m.len() {
            let len = m[p + 1] as usize;
            assert!(len >= 2 && p + len <= m.len());
            v.push((m[p], &m[p..p + len]));
            p += len;
        }
        v
    }

    #[test]
    fn rsdp_is_in_the_bios_area_with_both_checksums() {
        let t = build(2);
        assert_eq!(t.base % 16, 0);
        assert!(ACPI_REGION.contains(&t.base));
        assert!(t.base + t.bytes.len() as u64 <= ACPI_REGION.end);
        assert!(t.bytes.len() <= 4096, "fits in one page: {}", t.bytes.len());
        let r = &t.bytes[..36];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!((r[15], u32_at(r, 20)), (2, 36));
    }

    #[test]
    fn rsdt_and_xsdt_list_fadt_and_madt() {
        let t = build(1);
        let rsdt = table(&t, u64::from(u32_at(&t.bytes, 16)), b"RSDT");
        let xsdt = table(&t, u64_at(&t.bytes, 24), b"XSDT");
        assert_eq!((rsdt.len(), xsdt.len()), (36 + 8, 36 + 16));
        let from_rsdt: Vec<u64> = (0..2)
            .map(|i| u64::from(u32_at(rsdt, 36 + 4 * i)))
            .collect();
        let from_xsdt: Vec<u64> = (0..2).map(|i| u64_at(xsdt, 36 + 8 * i)).collect();
        assert_eq!(from_rsdt, from_xsdt);
        table(&t, from_rsdt[0], b"FACP");
        table(&t, from_rsdt[1], b"APIC");
    }

    #[test]
    fn madt_has_one_lapic_per_vcpu_the_ioapic_and_the_irq0_override() {
        for vcpus in [1u32, 2, 4, 64] {
            let t = build(vcpus);
            let rsdt = u64::from(u32_at(&t.bytes, 16));
            let madt_at = u64::from(u32_at(at(&t, rsdt), 40));
            let m = table(&t, madt_at, b"APIC");
            assert_eq!(u32_at(m, 36), LAPIC_ADDR);
            assert_eq!(m.len(), 44 + 8 * vcpus as usize + 12 + 2 * 10 + 6);
            let e = entries(m);
            let lapics: Vec<_> = e.iter().filter(|(k, _)| *k == 0).collect();
            assert_eq!(lapics.len(), vcpus as usize);
            for (i, (_, l)) in lapics.iter().enumerate() {
                assert_eq!(
                    (l[2], l[3], u32_at(l, 4)),
                    (i as u8, i as u8, 1),
                    "LAPIC {i}"
                );
            }
            let io: Vec<_> = e.iter().filter(|(k, _)| *k == 1).collect();
            assert_eq!(io.len(), 1);
            assert_eq!((u32_at(io[0].1, 4), u32_at(io[0].1, 8)), (IOAPIC_ADDR, 0));
            let iso: Vec<(u8, u32, u16)> = e
                .iter()
                .filter(|(k, _)| *k == 2)
                .map(|(_, b)| (b[3], u32_at(b, 4), u16::from_le_bytes([b[8], b[9]])))
                .collect();
            assert_eq!(iso, vec![(0, 2, 0), (9, 9, 0xd)]);
            assert_eq!(e.iter().filter(|(k, _)| *k == 4).count(), 1);
        }
    }

    #[test]
    fn fadt_names_pm_timer_reset_register_facs_and_dsdt() {
        let t = build(1);
        let fadt_at = u64::from(u32_at(at(&t, u64::from(u32_at(&t.bytes, 16))), 36));
        let f = table(&t, fadt_at, b"FACP");
        assert_eq!((f.len(), f[8]), (244, 3));
        assert_eq!(u32_at(f, 76), u32::from(super::super::PM_TIMER_PORT));
        assert_eq!(f[91], 4, "PM_TMR_LEN");
        assert_eq!(u32_at(f, 112) & 1 << 10, 1 << 10, "RESET_REG_SUP");
        assert_eq!(
            &f[116..120],
            &[1, 8, 0, 1],
            "reset register: I/O, 8 bits, byte access"
        );
        assert_eq!(
            (u64_at(f, 120), f[128]),
            (u64::from(RESET_PORT), RESET_VALUE)
        );
        assert_eq!(u64_at(f, 208 + 4), u64::from(super::super::PM_TIMER_PORT));
        let facs = u64::from(u32_at(f, 36));
        let dsdt = u64::from(u32_at(f, 40));
        assert_eq!((u64_at(f, 132), u64_at(f, 140)), (facs, dsdt));
        assert_eq!(facs % 64, 0, "FACS is 64-byte aligned");
        let fa = at(&t, facs);
        assert_eq!((&fa[..4], u32_at(fa, 4)), (&b"FACS"[..], 64));
        assert_eq!(table(&t, dsdt, b"DSDT").len(), 36);
    }
}
