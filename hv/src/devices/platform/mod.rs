//! The PC platform that firmware-era kernels (multiboot test kernels, kvm-unit-tests, Linux)
//! expect, one device or table per file: QEMU's fw_cfg (`fw_cfg`), ACPI tables (`acpi`), the
//! firmware state of KVM's in-kernel 8259 pair (`pic`), the ACPI PM1 blocks (`pm1`), the POST
//! port (`port80`), the i8042 reset line (`i8042`) and PCI configuration mechanism #1 with a
//! host bridge and the reset control register (`pci`), and QEMU's `pc-testdev` for
//! kvm-unit-tests (`pc_testdev`). The PIT, the IOAPIC and the local APICs
//! are KVM's (full irqchip); the PM timer and the CMOS RTC are hv's `emulated` devices.
//!
//! Off unless asked for (`PartitionConfig::platform`, or the `pc-platform` host feature of a
//! workload): hvlab's own workloads do not see these ports, so their exit counts do not move.
//!
//! Guest-physical layout: the ACPI tables take the first page of the BIOS area at 0xE0000
//! (`acpi::ACPI_REGION`); `fw_cfg`'s `etc/e820` reports RAM below 0x9FC00, that area reserved
//! and RAM from 1 MiB, which is where hvlab and multiboot images load.

pub mod acpi;
pub mod fw_cfg;
pub mod i8042;
pub mod pc_testdev;
pub mod pci;
pub mod pic;
pub mod pm1;
pub mod port80;

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{Bus, SharedDevice};
use crate::error::HvError;

pub use crate::devices::emulated::pm_timer::PM_TIMER_PORT;

/// End of conventional memory below the EBDA, as a PC's BIOS reports it.
pub const LOW_RAM_END: u64 = 0x9_fc00;

/// What the platform is built for.
#[derive(Debug, Clone, Copy)]
pub struct PlatformSpec {
    pub vcpus: u32,
    pub ram_bytes: u64,
    /// hv's PM timer is already on the bus (else the platform adds it: the FADT names it).
    pub has_pm_timer: bool,
}

/// The memory map the platform reports (fw_cfg `etc/e820`).
pub fn e820(ram_bytes: u64) -> Vec<fw_cfg::E820> {
    use fw_cfg::{E820, E820_RAM, E820_RESERVED};
    vec![
        E820 {
            addr: 0,
            len: LOW_RAM_END,
            kind: E820_RAM,
        },
        E820 {
            addr: LOW_RAM_END,
            len: 0x10_0000 - LOW_RAM_END,
            kind: E820_RESERVED,
        },
        E820 {
            addr: 0x10_0000,
            len: ram_bytes.saturating_sub(0x10_0000),
            kind: E820_RAM,
        },
    ]
}

/// Writes the ACPI tables into `mem`, programs the in-kernel PICs and puts the platform's
/// devices on `pio`. The VM must have the full in-kernel irqchip.
pub fn attach(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    pio: &mut Bus,
    spec: PlatformSpec,
) -> Result<(), HvError> {
    let tables = acpi::build(spec.vcpus);
    mem.write_slice(&tables.bytes, GuestAddress(tables.base))
        .map_err(|e| {
            HvError::Memory(format!(
                "writing the ACPI tables at {:#x}: {e}",
                tables.base
            ))
        })?;
    pic::set_firmware_state(vm)?;

    let cpus = u16::try_from(spec.vcpus).unwrap_or(u16::MAX);
    let fw = fw_cfg::FwCfg::new(&fw_cfg::FwCfgInfo {
        ram_bytes: spec.ram_bytes,
        cpus,
        max_cpus: cpus,
        e820: e820(spec.ram_bytes),
    });
    let kbd = i8042::I8042::default();
    let devices: Vec<(&str, u16, u16, SharedDevice)> = vec![
        (
            "fw-cfg",
            fw_cfg::FW_CFG_PORT,
            fw_cfg::FW_CFG_PORTS,
            Arc::new(Mutex::new(fw)),
        ),
        (
            "post",
            port80::POST_PORT,
            1,
            Arc::new(Mutex::new(port80::PostPort)),
        ),
        (
            "i8042-data",
            i8042::DATA_PORT,
            1,
            Arc::new(Mutex::new(i8042::DataPort(kbd.clone()))),
        ),
        (
            "i8042",
            i8042::COMMAND_PORT,
            1,
            Arc::new(Mutex::new(i8042::CommandPort(kbd))),
        ),
        (
            "pci-config",
            pci::PCI_CONFIG_PORT,
            pci::PCI_CONFIG_PORTS,
            Arc::new(Mutex::new(pci::PciHost::new())),
        ),
        (
            "pm1-evt",
            acpi::PM1A_EVT_PORT,
            4,
            Arc::new(Mutex::new(pm1::Pm1Event::default())),
        ),
        (
            "pm1-cnt",
            acpi::PM1A_CNT_PORT,
            2,
            Arc::new(Mutex::new(pm1::Pm1Control::default())),
        ),
        (
            "pc-testdev",
            pc_testdev::IOPORT,
            8,
            Arc::new(Mutex::new(pc_testdev::TestPorts::default())),
        ),
        (
            "pc-testdev-irq",
            pc_testdev::IRQ_PORT,
            pc_testdev::IRQ_LINES,
            Arc::new(Mutex::new(pc_testdev::IrqLines::new(vm.clone()))),
        ),
    ];
    for (name, base, len, d) in devices {
        pio.insert(name, u64::from(base), u64::from(len), d)?;
    }
    if !spec.has_pm_timer {
        pio.insert(
            "pm-timer",
            u64::from(PM_TIMER_PORT),
            4,
            Arc::new(Mutex::new(
                crate::devices::emulated::pm_timer::PmTimer::new(),
            )),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_the_acpi_area_reserved_and_covers_ram() {
        let m = e820(64 << 20);
        let reserved = m.iter().find(|e| e.kind == fw_cfg::E820_RESERVED).unwrap();
        assert!(reserved.addr <= acpi::ACPI_REGION.start);
        assert!(reserved.addr + reserved.len >= acpi::ACPI_REGION.end);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == fw_cfg::E820_RAM)
            .map(|e| e.len)
            .sum();
        assert_eq!(ram, (64 << 20) - (0x10_0000 - LOW_RAM_END));
    }
}
