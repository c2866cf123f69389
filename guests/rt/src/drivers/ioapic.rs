//! The IOAPIC (at its standard address) and the legacy PIC, for device interrupts.

use crate::cpu::{mmio_read32, mmio_write32, outb};

const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Redirection entries (pins) of the IOAPIC this driver programs (82093AA: 24).
pub const PINS: u8 = 24;
const IOREGSEL: u64 = IOAPIC_BASE;
const IOWIN: u64 = IOAPIC_BASE + 0x10;

fn write(reg: u32, v: u32) {
    mmio_write32(IOREGSEL, reg);
    mmio_write32(IOWIN, v);
}

/// Reads an IOAPIC register.
pub fn read(reg: u32) -> u32 {
    mmio_write32(IOREGSEL, reg);
    mmio_read32(IOWIN)
}

/// Masks every line of both legacy PICs, so an IRQ routed to the IOAPIC is not also
/// delivered through the PIC (whose vectors would be exceptions).
pub fn mask_pic() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Routes IOAPIC pin `pin` to `vector` on the CPU with APIC ID `dest`: fixed delivery,
/// physical destination, edge-triggered, active high, unmasked.
pub fn route(pin: u8, vector: u8, dest: u32) {
    let reg = 0x10 + 2 * u32::from(pin);
    write(reg + 1, dest << 24);
    write(reg, u32::from(vector));
}

/// Masks IOAPIC pin `pin`.
pub fn mask(pin: u8) {
    write(0x10 + 2 * u32::from(pin), 1 << 16);
}
