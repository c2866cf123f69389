//! QEMU's fw_cfg, the traditional I/O interface: a 16-bit selector at port 0x510 and a byte-wide
//! data port at 0x511. hv's PC platform serves it for `hv boot` kernels and the `platform`
//! workload; QEMU serves it on `pc` and `microvm`.

use crate::cpu::{inb, outw};

pub const SELECTOR: u16 = 0x510;
pub const DATA: u16 = 0x511;
/// "QEMU" at key 0.
pub const KEY_SIGNATURE: u16 = 0x00;
/// Length of the kernel command line QEMU holds (microvm appends its `virtio_mmio.device=`
/// words there), and the line itself.
pub const KEY_CMDLINE_SIZE: u16 = 0x14;
pub const KEY_CMDLINE_DATA: u16 = 0x15;

/// Selects `key`; the data port then reads its bytes from the start.
pub fn select(key: u16) {
    outw(SELECTOR, key);
}

/// Reads the next `buf.len()` bytes of the selected item (zeros past its end).
pub fn read_bytes(buf: &mut [u8]) {
    for b in buf {
        *b = inb(DATA);
    }
}

/// Selects `key` and reads its first `N` bytes.
pub fn read<const N: usize>(key: u16) -> [u8; N] {
    select(key);
    let mut b = [0u8; N];
    read_bytes(&mut b);
    b
}

/// Whether fw_cfg answers at its ports. Only call this where a port nobody serves costs nothing
/// but a counted exit (hv notes unmapped ports once).
pub fn present() -> bool {
    read::<4>(KEY_SIGNATURE) == *b"QEMU"
}
