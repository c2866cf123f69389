//! QEMU's fw_cfg, the traditional I/O interface: a 16-bit selector at port 0x510 and a byte-wide
//! data port at 0x511. hv's PC platform serves it for `hv boot` kernels and the `platform`
//! workload; QEMU serves it on `pc` and `microvm`.

use crate::cpu::{inb, outw};

pub const SELECTOR: u16 = 0x510;
pub const DATA: u16 = 0x511;

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
