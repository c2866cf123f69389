//! platform: checks the PC platform a VMM presents, the way firmware and kernels find it.
//!
//! One phase per piece, each ending the run with a failed check on a mismatch (the console
//! line says which value was wrong):
//!
//! - `fw-cfg`: QEMU's fw_cfg at ports 0x510 (selector) / 0x511 (data): signature "QEMU", the
//!   traditional interface in the ID, NB_CPUS = CPUs online, MAX_CPUS >= NB_CPUS, RAM_SIZE > 0,
//!   and the file directory (0x19) names `etc/e820`, whose first entry has an E820 type.
//! - `acpi` (one op: the whole walk): the RSDP found the standard way (EBDA, then 0xE0000-0xFFFFF on 16-byte
//!   boundaries) with valid checksums; the RSDT (and the XSDT when the RSDP is revision 2)
//!   with valid checksums and the same tables; a MADT with one enabled local APIC per CPU
//!   online (their APIC IDs those of the CPUs), an IOAPIC at 0xFEC00000 and the override
//!   IRQ0 -> GSI2; a FADT whose PM timer block (4 bytes) counts, whose DSDT and FACS carry
//!   their signatures (the DSDT a valid checksum).
//! - `pic`: the 8259 pair: the masks it starts with (reported), then a full ICW1-4
//!   initialisation of both chips, mask patterns read back through OCW1, ISR read through OCW3
//!   (nothing in service), and the pair left as firmware leaves it (master 0xfb, slave 0xff).
//! - `pci`: configuration mechanism 1: the address register reads back, the host bridge at
//!   00:00.0 is a host bridge (class 06/00, header type 0) with the expected ID (i440FX,
//!   8086:1237), and an absent device (00:1f.0) reads all ones.
//! - `legacy`: a POST code to port 0x80, the i8042 status (the system flag must be set: the
//!   controller passed its self-test), and QEMU's pc-testdev scratch register at 0xe0
//!   (`testdev=1` when it reads back what was written; reported, not required: QEMU has it
//!   only with `-device pc-testdev`).
//! - `smp`: every AP started (by INIT/SIPI at boot) runs a job posted to it.
//!
//! `reset=i8042|cf9` then asks for a system reset through the i8042 (command 0xFE) or the
//! reset control register (0xCF9 = 6, the FADT's reset register); a VMM that ignores it fails
//! the run. hv ends the run with the `guest-reset` status; QEMU with `-no-reboot` exits.
//!
//! It runs under hv (`host_features`: the `pc-platform` devices and tables) and under QEMU's
//! `-M pc` with SeaBIOS, so the two platforms are checked by the same code.

use crate::{Param, WorkloadInfo};

pub const INFO: WorkloadInfo = WorkloadInfo {
    name: "platform",
    summary: "checks the PC platform: fw_cfg, ACPI (RSDP/RSDT/XSDT/MADT/FADT), 8259 PIC, PCI host bridge, SMP",
    params: &[Param {
        key: "reset",
        default: "none",
        help: "after the checks, ask for a system reset: none, i8042 (command 0xfe to port 0x64) or cf9 (reset control register); the run fails if the VMM ignores it",
    }],
    min_vcpus: 1,
    devices: &[],
    host_features: &["full-irqchip", "pit", "pm-timer", "pc-platform"],
};

/// The phases, in order.
pub const PHASES: &[&str] = &["fw-cfg", "acpi", "pic", "pci", "legacy", "smp"];

#[cfg(target_os = "none")]
pub use guest::run;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU32, Ordering};

    use hvlab_guest_rt::cpu::{inb, inl, inw, outb, outl};
    use hvlab_guest_rt::drivers::fw_cfg;
    use hvlab_guest_rt::{Ctx, Fail, phase, println, smp};

    const PCI_ADDRESS: u16 = 0xcf8;
    const PCI_DATA: u16 = 0xcfc;
    const IOAPIC_BASE: u32 = 0xfec0_0000;
    /// Highest address a table may reach (RAM below the MMIO window, identity-mapped).
    const RAM_LIMIT: u64 = hvlab_protocol::MAX_GUEST_RAM;
    const MAX_TABLE: u32 = 64 * 1024;

    /// A check: on mismatch prints what was expected and seen, and fails the run.
    fn expect(what: &'static str, ok: bool, seen: u64) -> Result<(), Fail> {
        if ok {
            Ok(())
        } else {
            println!("platform: {what}: unexpected value {seen:#x}");
            Err(Fail::Check(what))
        }
    }

    pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
        fw_cfg(ctx)?;
        acpi(ctx)?;
        pic()?;
        pci()?;
        legacy()?;
        smp_check(ctx)?;
        match ctx.args.str_or("reset", "none") {
            "none" => return Ok(()),
            "i8042" => outb(0x64, 0xfe),
            "cf9" => outb(0xcf9, 0x06),
            _ => return Err(Fail::BadArg("reset")),
        }
        // A reset takes effect at once; give a slow VMM a moment before calling it ignored.
        for _ in 0..1000 {
            hvlab_guest_rt::cpu::pause();
        }
        Err(Fail::Check("the reset request was ignored"))
    }

    // ---- fw_cfg ----

    fn fw_cfg(ctx: &Ctx) -> Result<(), Fail> {
        let p = phase::begin("fw-cfg");
        let sig = fw_cfg::read::<4>(0x00);
        let id = u32::from_le_bytes(fw_cfg::read::<4>(0x01));
        let ram = u64::from_le_bytes(fw_cfg::read::<8>(0x03));
        let nb = u16::from_le_bytes(fw_cfg::read::<2>(0x05));
        let max = u16::from_le_bytes(fw_cfg::read::<2>(0x0f));
        // File directory: big-endian count, then 64-byte entries.
        let count = u32::from_be_bytes(fw_cfg::read::<4>(0x19));
        let mut e820_key = None;
        let mut reads = 4 + 4 + 8 + 2 + 2 + 4;
        for _ in 0..count.min(256) {
            let mut e = [0u8; 64];
            fw_cfg::read_bytes(&mut e);
            reads += 64;
            let name = &e[8..];
            let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if &name[..len] == b"etc/e820" {
                e820_key = Some((
                    u16::from_be_bytes([e[4], e[5]]),
                    u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                ));
            }
        }
        let mut first = [0u8; 20];
        if let Some((key, _)) = e820_key {
            fw_cfg::select(key);
            fw_cfg::read_bytes(&mut first);
            reads += 20;
        }
        let f = p.end(reads);
        expect(
            "fw_cfg signature QEMU",
            &sig == b"QEMU",
            u64::from(u32::from_le_bytes(sig)),
        )?;
        expect("fw_cfg id: traditional interface", id & 1 == 1, id.into())?;
        expect(
            "fw_cfg NB_CPUS = CPUs online",
            u32::from(nb) == ctx.cpus,
            nb.into(),
        )?;
        expect("fw_cfg MAX_CPUS >= NB_CPUS", max >= nb, max.into())?;
        expect("fw_cfg RAM_SIZE > 0", ram > 0, ram)?;
        let Some((_, e820_size)) = e820_key else {
            return expect("fw_cfg file directory names etc/e820", false, count.into());
        };
        let kind = u32::from_le_bytes(first[16..20].try_into().unwrap_or_default());
        expect(
            "fw_cfg etc/e820 holds whole entries",
            e820_size >= 20 && e820_size % 20 == 0,
            e820_size.into(),
        )?;
        expect(
            "fw_cfg etc/e820 entry type is an E820 type",
            (1..=5).contains(&kind),
            kind.into(),
        )?;
        f.report(
            &[
                ("nb_cpus", nb.into()),
                ("max_cpus", max.into()),
                ("ram_mib", ram >> 20),
                ("files", count.into()),
                ("e820_entries", (e820_size / 20).into()),
            ],
            None,
        );
        Ok(())
    }

    // ---- ACPI ----

    fn rd8(a: u64) -> u8 {
        // SAFETY: callers pass addresses below RAM_LIMIT (identity-mapped, checked before use);
        // firmware tables are plain memory, read volatile because the VMM wrote them.
        unsafe { core::ptr::read_volatile(a as *const u8) }
    }
    fn rd16(a: u64) -> u16 {
        u16::from(rd8(a)) | u16::from(rd8(a + 1)) << 8
    }
    fn rd32(a: u64) -> u32 {
        u32::from(rd16(a)) | u32::from(rd16(a + 2)) << 16
    }
    fn rd64(a: u64) -> u64 {
        u64::from(rd32(a)) | u64::from(rd32(a + 4)) << 32
    }
    fn sum(a: u64, len: u64) -> u8 {
        (0..len).fold(0u8, |s, i| s.wrapping_add(rd8(a + i)))
    }
    fn sig_at(a: u64, sig: &[u8; 4]) -> bool {
        (0..4).all(|i| rd8(a + i as u64) == sig[i])
    }

    fn find_rsdp() -> Option<u64> {
        let ebda = u64::from(rd16(0x40e)) << 4;
        let ranges = [(ebda, ebda + 1024), (0xe0000, 0x100000)];
        for (start, end) in ranges {
            if start == 0 || end > 0x100000 {
                continue;
            }
            let mut a = start & !15;
            while a + 20 <= end {
                if sig_at(a, b"RSD ") && sig_at(a + 4, b"PTR ") && sum(a, 20) == 0 {
                    return Some(a);
                }
                a += 16;
            }
        }
        None
    }

    /// A system description table at `a` with signature `sig` (any if `None`): its length
    /// after the header and checksum checks.
    fn table(a: u64, what: &'static str) -> Result<u32, Fail> {
        expect(what, a != 0 && a < RAM_LIMIT - u64::from(MAX_TABLE), a)?;
        let len = rd32(a + 4);
        expect(what, (36..=MAX_TABLE).contains(&len), len.into())?;
        expect(what, sum(a, len.into()) == 0, a)?;
        Ok(len)
    }

    struct Madt {
        lapics: u32,
        lapic_ids: u64,
        ioapic: bool,
        irq0_gsi2: bool,
        entries: u32,
    }

    fn parse_madt(a: u64, len: u32) -> Madt {
        let mut m = Madt {
            lapics: 0,
            lapic_ids: 0,
            ioapic: false,
            irq0_gsi2: false,
            entries: 0,
        };
        let mut p = a + 44;
        let end = a + u64::from(len);
        while p + 2 <= end {
            let (kind, elen) = (rd8(p), u64::from(rd8(p + 1)));
            if elen < 2 || p + elen > end {
                break;
            }
            m.entries += 1;
            match kind {
                0 if elen >= 8 && rd32(p + 4) & 1 == 1 => {
                    m.lapics += 1;
                    m.lapic_ids |= 1 << (rd8(p + 3) % 64);
                }
                1 if elen >= 12 => m.ioapic |= rd32(p + 4) == IOAPIC_BASE,
                2 if elen >= 10 => {
                    m.irq0_gsi2 |= rd8(p + 2) == 0 && rd8(p + 3) == 0 && rd32(p + 4) == 2
                }
                _ => {}
            }
            p += elen;
        }
        m
    }

    fn acpi(ctx: &Ctx) -> Result<(), Fail> {
        let p = phase::begin("acpi");
        let Some(rsdp) = find_rsdp() else {
            return expect("ACPI RSDP in the BIOS area", false, 0);
        };
        let rev = rd8(rsdp + 15);
        if rev >= 2 {
            let len = rd32(rsdp + 20);
            expect("RSDP v2 length", (36..=1024).contains(&len), len.into())?;
            expect("RSDP extended checksum", sum(rsdp, len.into()) == 0, rsdp)?;
        }
        let rsdt = u64::from(rd32(rsdp + 16));
        let rsdt_len = table(rsdt, "RSDT")?;
        expect("RSDT signature", sig_at(rsdt, b"RSDT"), rsdt)?;
        let n = (rsdt_len - 36) / 4;
        let mut madt = 0;
        let mut fadt = 0;
        for i in 0..u64::from(n) {
            let t = u64::from(rd32(rsdt + 36 + 4 * i));
            table(t, "table listed in the RSDT")?;
            if sig_at(t, b"APIC") {
                madt = t;
            } else if sig_at(t, b"FACP") {
                fadt = t;
            }
        }
        let mut xsdt_tables = 0;
        if rev >= 2 {
            let xsdt = rd64(rsdp + 24);
            let xlen = table(xsdt, "XSDT")?;
            expect("XSDT signature", sig_at(xsdt, b"XSDT"), xsdt)?;
            xsdt_tables = (xlen - 36) / 8;
            expect(
                "XSDT lists as many tables as the RSDT",
                xsdt_tables == n,
                xsdt_tables.into(),
            )?;
            for i in 0..u64::from(xsdt_tables) {
                let t = rd64(xsdt + 36 + 8 * i);
                expect(
                    "XSDT entry = RSDT entry",
                    t == u64::from(rd32(rsdt + 36 + 4 * i)),
                    t,
                )?;
            }
        }
        expect("MADT listed", madt != 0, 0)?;
        let m = parse_madt(madt, table(madt, "MADT")?);
        expect(
            "MADT: one enabled local APIC per CPU",
            m.lapics == ctx.cpus,
            m.lapics.into(),
        )?;
        for i in 0..ctx.cpus {
            let id = smp::apic_id(i);
            expect(
                "MADT lists the APIC ID of every CPU",
                m.lapic_ids & 1 << (id % 64) != 0,
                id.into(),
            )?;
        }
        expect("MADT: IOAPIC at 0xfec00000", m.ioapic, madt)?;
        expect("MADT: override IRQ0 -> GSI2", m.irq0_gsi2, madt)?;
        expect("FADT listed", fadt != 0, 0)?;
        let fadt_len = table(fadt, "FADT")?;
        expect(
            "FADT long enough for the PM timer",
            fadt_len >= 116,
            fadt_len.into(),
        )?;
        let pm_port = rd32(fadt + 76);
        let pm_len = rd8(fadt + 91);
        expect(
            "FADT PM timer block",
            pm_port != 0 && pm_port < 0x10000 && pm_len == 4,
            pm_port.into(),
        )?;
        let t0 = inl(pm_port as u16) & 0x00ff_ffff;
        let mut changed = false;
        let mut pm_reads = 1;
        for _ in 0..1000 {
            pm_reads += 1;
            if inl(pm_port as u16) & 0x00ff_ffff != t0 {
                changed = true;
                break;
            }
        }
        expect("PM timer counts", changed, t0.into())?;
        let dsdt = u64::from(rd32(fadt + 40));
        table(dsdt, "DSDT")?;
        expect("DSDT signature", sig_at(dsdt, b"DSDT"), dsdt)?;
        let facs = u64::from(rd32(fadt + 36));
        expect("FACS address", facs != 0 && facs < RAM_LIMIT - 64, facs)?;
        expect(
            "FACS signature and length",
            sig_at(facs, b"FACS") && rd32(facs + 4) >= 64,
            facs,
        )?;
        let reset = if fadt_len >= 129 && rd32(fadt + 112) & (1 << 10) != 0 {
            rd64(fadt + 120)
        } else {
            0
        };
        let f = p.end(1);
        f.report(
            &[
                ("rsdp", rsdp),
                ("rsdp_rev", rev.into()),
                ("tables", n.into()),
                ("xsdt_tables", xsdt_tables.into()),
                ("lapics", m.lapics.into()),
                ("madt_entries", m.entries.into()),
                ("pm_timer_port", pm_port.into()),
                ("reset_port", reset),
                ("pm_reads", pm_reads),
            ],
            None,
        );
        Ok(())
    }

    // ---- 8259 PIC ----

    const PIC1: u16 = 0x20;
    const PIC2: u16 = 0xa0;

    fn pic() -> Result<(), Fail> {
        let p = phase::begin("pic");
        let start = (inb(PIC1 + 1), inb(PIC2 + 1));
        // ICW1: edge, cascade, ICW4 needed; ICW2: vector bases; ICW3: slave on IR2 / id 2;
        // ICW4: 8086 mode.
        for (port, base, icw3) in [(PIC1, 0x20, 0x04), (PIC2, 0x28, 0x02)] {
            outb(port, 0x11);
            outb(port + 1, base);
            outb(port + 1, icw3);
            outb(port + 1, 0x01);
        }
        let mut seen = [0u8; 4];
        for (i, (m1, m2)) in [(0xa5u8, 0x5au8), (0x5a, 0xa5)].into_iter().enumerate() {
            outb(PIC1 + 1, m1);
            outb(PIC2 + 1, m2);
            seen[2 * i] = inb(PIC1 + 1) ^ m1;
            seen[2 * i + 1] = inb(PIC2 + 1) ^ m2;
        }
        // OCW3: read ISR next.
        outb(PIC1, 0x0b);
        outb(PIC2, 0x0b);
        let isr = (inb(PIC1), inb(PIC2));
        outb(PIC1, 0x0a); // back to IRR reads
        outb(PIC2, 0x0a);
        outb(PIC1 + 1, 0xfb);
        outb(PIC2 + 1, 0xff);
        let end = (inb(PIC1 + 1), inb(PIC2 + 1));
        let f = p.end(28); // port accesses
        expect(
            "PIC masks read back",
            seen == [0; 4],
            u64::from(u32::from_le_bytes(seen)),
        )?;
        expect(
            "PIC: nothing in service",
            isr == (0, 0),
            u64::from(isr.0) | u64::from(isr.1) << 8,
        )?;
        expect(
            "PIC left masked (0xfb/0xff)",
            end == (0xfb, 0xff),
            u64::from(end.0) | u64::from(end.1) << 8,
        )?;
        f.report(
            &[
                ("mask1_start", start.0.into()),
                ("mask2_start", start.1.into()),
            ],
            None,
        );
        Ok(())
    }

    // ---- PCI ----

    fn pci_read(bdf: u32, reg: u32) -> u32 {
        outl(PCI_ADDRESS, 0x8000_0000 | bdf << 8 | (reg & 0xfc));
        inl(PCI_DATA)
    }

    fn pci() -> Result<(), Fail> {
        let p = phase::begin("pci");
        let id = pci_read(0, 0);
        let back = inl(PCI_ADDRESS);
        let device_word = inw(PCI_DATA + 2);
        let class = pci_read(0, 8);
        let header = pci_read(0, 0xc);
        let absent = pci_read(0x1f << 3, 0);
        outl(PCI_ADDRESS, 0);
        let f = p.end(11); // port accesses
        expect(
            "PCI address register reads back",
            back == 0x8000_0000,
            back.into(),
        )?;
        expect(
            "PCI 00:00.0 is the i440FX host bridge (8086:1237)",
            id == 0x1237_8086,
            id.into(),
        )?;
        expect(
            "PCI 16-bit read of the device ID",
            device_word == 0x1237,
            device_word.into(),
        )?;
        expect(
            "PCI 00:00.0 class: host bridge",
            class >> 16 == 0x0600,
            class.into(),
        )?;
        expect(
            "PCI 00:00.0 header type 0",
            (header >> 16) & 0x7f == 0,
            header.into(),
        )?;
        expect(
            "PCI absent device reads all ones",
            absent == 0xffff_ffff,
            absent.into(),
        )?;
        f.report(
            &[("host_bridge", id.into()), ("class", (class >> 8).into())],
            None,
        );
        Ok(())
    }

    // ---- port 0x80, i8042, pc-testdev ----

    fn legacy() -> Result<(), Fail> {
        let p = phase::begin("legacy");
        outb(0x80, 0x42);
        let kbd = inb(0x64);
        outl(0xe0, 0x5a5a_a5a5);
        let testdev = inl(0xe0) == 0x5a5a_a5a5;
        let f = p.end(4);
        expect("i8042 status: system flag", kbd & 0x04 != 0, kbd.into())?;
        f.report(
            &[("kbd_status", kbd.into()), ("testdev", testdev.into())],
            None,
        );
        Ok(())
    }

    // ---- SMP ----

    static RAN: AtomicU32 = AtomicU32::new(0);

    fn job(_: u32, _: usize) {
        RAN.fetch_add(1, Ordering::AcqRel);
    }

    fn smp_check(ctx: &Ctx) -> Result<(), Fail> {
        let wanted = ctx.args.u64_or("cpus", 1)? as u32;
        let p = phase::begin("smp");
        smp::run_on_aps(job, 0);
        let f = p.end(u64::from(ctx.cpus.saturating_sub(1)));
        expect(
            "every CPU asked for is online",
            ctx.cpus == wanted,
            ctx.cpus.into(),
        )?;
        let ran = RAN.load(Ordering::Acquire);
        expect("every AP ran its job", ran == ctx.cpus - 1, ran.into())?;
        f.report(&[("cpus", ctx.cpus.into()), ("aps_ran", ran.into())], None);
        Ok(())
    }
}
