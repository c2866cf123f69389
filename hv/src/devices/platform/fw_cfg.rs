//! QEMU's firmware configuration device (fw_cfg), the traditional I/O interface: a 16-bit
//! selector written to port 0x510 picks an item, then each 8-bit read of port 0x511 returns its
//! next byte (0 past the end). Items follow QEMU's docs/specs/fw_cfg.rst: signature "QEMU",
//! interface ID (bit 0: traditional interface; no DMA, so bit 1 stays clear), RAM size, boot
//! and maximum CPU counts, and the file directory (key 0x19: a big-endian count, then
//! big-endian {size, select, reserved} and a 56-byte name per file), holding `etc/e820`.
//!
//! Keys hv does not know read as an empty item (all zeros), as under QEMU; kvm-unit-tests reads
//! its FW_CFG_MAX_RAM (0x11) that way and takes 0 as "no limit". The data port ignores writes
//! (QEMU deprecated them).

use std::collections::BTreeMap;

use crate::bus::{BusDevice, DeviceAction};

/// Selector port (16-bit writes); the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports the device decodes: selector (0x510) and data (0x511).
pub const FW_CFG_PORTS: u16 = 2;

pub const KEY_SIGNATURE: u16 = 0x00;
pub const KEY_ID: u16 = 0x01;
pub const KEY_UUID: u16 = 0x02;
pub const KEY_RAM_SIZE: u16 = 0x03;
pub const KEY_NB_CPUS: u16 = 0x05;
pub const KEY_MAX_CPUS: u16 = 0x0f;
pub const KEY_FILE_DIR: u16 = 0x19;
/// First selector of a named file.
pub const KEY_FILE_FIRST: u16 = 0x20;
/// Bytes of a file name in a directory entry, NUL included.
const FILE_NAME_LEN: usize = 56;

/// One E820 entry of `etc/e820` (QEMU's layout: u64 address, u64 length, u32 type, LE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820 {
    pub addr: u64,
    pub len: u64,
    pub kind: u32,
}

/// E820 usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 reserved.
pub const E820_RESERVED: u32 = 2;

/// What the platform tells firmware and kernels.
#[derive(Debug, Clone)]
pub struct FwCfgInfo {
    pub ram_bytes: u64,
    pub cpus: u16,
    pub max_cpus: u16,
    pub e820: Vec<E820>,
}

/// The device: items by key, the selected one and the read offset.
#[derive(Debug)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    /// Builds the items from `info`.
    pub fn new(info: &FwCfgInfo) -> FwCfg {
        let mut items = BTreeMap::new();
        items.insert(KEY_SIGNATURE, b"QEMU".to_vec());
        items.insert(KEY_ID, 1u32.to_le_bytes().to_vec());
        items.insert(KEY_UUID, vec![0; 16]);
        items.insert(KEY_RAM_SIZE, info.ram_bytes.to_le_bytes().to_vec());
        items.insert(KEY_NB_CPUS, info.cpus.to_le_bytes().to_vec());
        items.insert(KEY_MAX_CPUS, info.max_cpus.to_le_bytes().to_vec());
        let e820: Vec<u8> = info
            .e820
            .iter()
            .flat_map(|e| {
                let mut b = e.addr.to_le_bytes().to_vec();
                b.extend_from_slice(&e.len.to_le_bytes());
                b.extend_from_slice(&e.kind.to_le_bytes());
                b
            })
            .collect();
        let files: [(&str, Vec<u8>); 1] = [("etc/e820", e820)];
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (i, (name, data)) in files.into_iter().enumerate() {
            let key = KEY_FILE_FIRST + i as u16;
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
            items.insert(key, data);
        }
        items.insert(KEY_FILE_DIR, dir);
        FwCfg {
            items,
            selected: KEY_SIGNATURE,
            offset: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|d| d.get(self.offset))
            .copied()
            .unwrap_or(0);
        // Bounded: the offset stops one past the longest item.
        if self
            .items
            .get(&self.selected)
            .is_some_and(|d| self.offset < d.len())
        {
            self.offset += 1;
        }
        b
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // The data port: each byte of the access is the next item byte.
            1 => data.iter_mut().for_each(|b| *b = self.next_byte()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == 0 {
            let mut k = [0u8; 2];
            for (d, s) in k.iter_mut().zip(data) {
                *d = *s;
            }
            self.selected = u16::from_le_bytes(k);
            self.offset = 0;
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> FwCfg {
        FwCfg::new(&FwCfgInfo {
            ram_bytes: 64 << 20,
            cpus: 3,
            max_cpus: 3,
            e820: vec![
                E820 {
                    addr: 0,
                    len: 0x9fc00,
                    kind: E820_RAM,
                },
                E820 {
                    addr: 0x10_0000,
                    len: (64 << 20) - 0x10_0000,
                    kind: E820_RAM,
                },
            ],
        })
    }

    fn read(d: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        d.write(0, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                d.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn items_read_byte_by_byte_after_a_select() {
        let mut d = dev();
        assert_eq!(read(&mut d, KEY_SIGNATURE, 4), b"QEMU");
        assert_eq!(read(&mut d, KEY_ID, 4), [1, 0, 0, 0], "traditional, no DMA");
        assert_eq!(read(&mut d, KEY_RAM_SIZE, 8), (64u64 << 20).to_le_bytes());
        assert_eq!(read(&mut d, KEY_NB_CPUS, 2), [3, 0]);
        assert_eq!(read(&mut d, KEY_MAX_CPUS, 2), [3, 0]);
        // Past the end and unknown keys read zeros; a new select rewinds.
        assert_eq!(read(&mut d, KEY_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read(&mut d, 0x11, 8), [0; 8]);
        assert_eq!(read(&mut d, KEY_SIGNATURE, 2), b"QE");
        let mut sel = [0xaau8; 2];
        d.read(0, &mut sel);
        assert_eq!(sel, [0, 0], "the selector reads as zero");
    }

    #[test]
    fn file_directory_is_big_endian_and_names_etc_e820() {
        let mut d = dev();
        let dir = read(&mut d, KEY_FILE_DIR, 4 + 64);
        assert_eq!(u32::from_be_bytes(dir[..4].try_into().unwrap()), 1);
        let size = u32::from_be_bytes(dir[4..8].try_into().unwrap());
        let key = u16::from_be_bytes(dir[8..10].try_into().unwrap());
        assert_eq!((size, key), (40, KEY_FILE_FIRST));
        assert_eq!(&dir[12..20], b"etc/e820");
        assert!(dir[20..].iter().all(|&b| b == 0));
        let e820 = read(&mut d, key, 40);
        assert_eq!(u64::from_le_bytes(e820[..8].try_into().unwrap()), 0);
        assert_eq!(u64::from_le_bytes(e820[8..16].try_into().unwrap()), 0x9fc00);
        assert_eq!(
            u32::from_le_bytes(e820[16..20].try_into().unwrap()),
            E820_RAM
        );
        assert_eq!(
            u64::from_le_bytes(e820[20..28].try_into().unwrap()),
            0x10_0000
        );
    }

    #[test]
    fn wide_data_reads_advance_per_byte_and_data_writes_are_ignored() {
        let mut d = dev();
        d.write(0, &KEY_SIGNATURE.to_le_bytes());
        assert_eq!(d.write(1, &[0x55]), DeviceAction::None);
        let mut w = [0u8; 2];
        d.read(1, &mut w);
        assert_eq!(&w, b"QE");
        d.read(1, &mut w);
        assert_eq!(&w, b"MU");
    }
}
