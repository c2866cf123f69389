//! QEMU's `pc-testdev`, the ISA test device kvm-unit-tests drives (its `x86/run` adds it to
//! every QEMU command line): a 32-bit scratch register at port 0xe0 (byte-granular, reads back
//! what was written), a "flush page" port at 0xe4 (QEMU changes the host mapping of a guest
//! page there; hv has no such host-side state, so writes are taken and have no effect), and 24
//! IRQ lines at ports 0x2000-0x2017: a write of v to 0x2000 + n sets ISA/IOAPIC line n to
//! level `v != 0` through KVM_IRQ_LINE (KVM routes it to the in-kernel PIC and IOAPIC, as
//! QEMU's ISA IRQs). The 64 KiB MMIO scratch area QEMU maps at 0xff000000 is not modelled.

use std::sync::Arc;

use kvm_ioctls::VmFd;

use crate::bus::{BusDevice, DeviceAction};

/// The scratch register.
pub const IOPORT: u16 = 0xe0;
/// The flush-page port.
pub const FLUSH_PORT: u16 = 0xe4;
/// First IRQ line port.
pub const IRQ_PORT: u16 = 0x2000;
/// IRQ lines (IOAPIC pins).
pub const IRQ_LINES: u16 = 24;

/// Ports 0xe0-0xe7: the scratch register and the flush-page port.
#[derive(Debug, Default)]
pub struct TestPorts {
    data: u32,
}

impl BusDevice for TestPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.data.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset as usize + i {
                o @ 0..4 => v[o],
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut v = self.data.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = v.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
        self.data = u32::from_le_bytes(v);
        DeviceAction::None
    }
}

/// Ports 0x2000-0x2017: one IRQ line each.
pub struct IrqLines {
    vm: Arc<VmFd>,
}

impl std::fmt::Debug for IrqLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IrqLines")
    }
}

impl IrqLines {
    pub fn new(vm: Arc<VmFd>) -> IrqLines {
        IrqLines { vm }
    }
}

impl BusDevice for IrqLines {
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let level = data.iter().any(|&b| b != 0);
        // KVM_IRQ_LINE fails only without an in-kernel irqchip, which the platform requires;
        // the line is < 24 by the bus range.
        let _ = self.vm.set_irq_line(offset as u32, level);
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{KVM_IRQCHIP_PIC_MASTER, kvm_irqchip};

    #[test]
    fn scratch_register_reads_back_byte_by_byte() {
        let mut t = TestPorts::default();
        t.write(0, &0x1234_5678u32.to_le_bytes());
        t.write(1, &[0xab]);
        let mut d = [0u8; 4];
        t.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_ab78);
        let mut w = [0u8; 2];
        t.read(2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1234);
        t.write(4, &[0xff; 4]); // flush page: no effect on the register
        t.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_ab78);
        t.read(4, &mut d);
        assert_eq!(d, [0; 4]);
    }

    fn master_pic(vm: &VmFd) -> kvm_bindings::kvm_pic_state {
        let mut ic = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        vm.get_irqchip(&mut ic).expect("KVM_GET_IRQCHIP");
        // SAFETY: PIC chip id: KVM filled the `pic` member, plain bytes.
        unsafe { ic.chip.pic }
    }

    #[test]
    fn irq_line_writes_drive_the_in_kernel_pic() {
        let kvm = crate::error::kvm_for_tests();
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let mut lines = IrqLines::new(vm.clone());
        lines.write(5, &[1]);
        let p = master_pic(&vm);
        assert_eq!(
            (p.irr & 1 << 5, p.last_irr & 1 << 5),
            (1 << 5, 1 << 5),
            "line 5 high"
        );
        lines.write(5, &[0]);
        assert_eq!(master_pic(&vm).last_irr & 1 << 5, 0, "line 5 low");
    }
}
