//! The 8259 PIC pair. KVM's in-kernel irqchip (KVM_CREATE_IRQCHIP, hv's `IrqChip::Full`)
//! already emulates both chips with their ICW/OCW handling, the ELCR and the cascade, so hv
//! writes no userspace PIC; the platform needs the full irqchip (the split one has no PIC) and
//! only sets the state firmware leaves before it starts a kernel: both chips initialised (ICW4
//! expected, vector bases 0x08 and 0x70 as the BIOS programs them), every line masked but the
//! cascade (master IMR 0xfb, slave 0xff), nothing requested or in service.

use kvm_bindings::{KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_irqchip, kvm_pic_state};
use kvm_ioctls::VmFd;

use crate::error::HvError;

/// Interrupt masks firmware leaves: master all but IRQ2 (the cascade), slave all.
pub const MASTER_IMR: u8 = 0xfb;
pub const SLAVE_IMR: u8 = 0xff;
/// Vector bases of the BIOS's initialisation.
pub const MASTER_BASE: u8 = 0x08;
pub const SLAVE_BASE: u8 = 0x70;

/// `state` as firmware leaves it (vector `base`, mask `imr`); ELCR settings are kept.
pub fn firmware_state(mut state: kvm_pic_state, base: u8, imr: u8) -> kvm_pic_state {
    state.irq_base = base;
    state.imr = imr;
    state.irr = 0;
    state.last_irr = 0;
    state.isr = 0;
    state.init_state = 0;
    state.init4 = 1;
    state.read_reg_select = 0;
    state.poll = 0;
    state.auto_eoi = 0;
    state
}

/// Puts KVM's two in-kernel PICs into the firmware state. Needs `KVM_CREATE_IRQCHIP` first.
pub fn set_firmware_state(vm: &VmFd) -> Result<(), HvError> {
    for (chip, base, imr) in [
        (KVM_IRQCHIP_PIC_MASTER, MASTER_BASE, MASTER_IMR),
        (KVM_IRQCHIP_PIC_SLAVE, SLAVE_BASE, SLAVE_IMR),
    ] {
        let mut ic = kvm_irqchip {
            chip_id: chip,
            ..Default::default()
        };
        vm.get_irqchip(&mut ic)
            .map_err(HvError::kvm("KVM_GET_IRQCHIP"))?;
        // SAFETY: for a PIC chip_id KVM fills the union's `pic` member; kvm_pic_state is plain
        // bytes, valid for any bit pattern.
        let pic = unsafe { ic.chip.pic };
        ic.chip.pic = firmware_state(pic, base, imr);
        vm.set_irqchip(&ic)
            .map_err(HvError::kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_state_masks_and_keeps_elcr() {
        let s = kvm_pic_state {
            imr: 0,
            irr: 0x01,
            init_state: 2,
            elcr: 0x20,
            elcr_mask: 0xf8,
            ..Default::default()
        };
        let f = firmware_state(s, MASTER_BASE, MASTER_IMR);
        assert_eq!(
            (f.imr, f.irq_base, f.irr, f.init_state, f.init4),
            (0xfb, 8, 0, 0, 1)
        );
        assert_eq!((f.elcr, f.elcr_mask), (0x20, 0xf8));
    }

    #[test]
    fn in_kernel_pics_take_the_firmware_state() {
        let kvm = crate::error::kvm_for_tests();
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        set_firmware_state(&vm).expect("set");
        for (chip, base, imr) in [
            (KVM_IRQCHIP_PIC_MASTER, MASTER_BASE, MASTER_IMR),
            (KVM_IRQCHIP_PIC_SLAVE, SLAVE_BASE, SLAVE_IMR),
        ] {
            let mut ic = kvm_irqchip {
                chip_id: chip,
                ..Default::default()
            };
            vm.get_irqchip(&mut ic).expect("get");
            // SAFETY: PIC chip id, see `set_firmware_state`.
            let p = unsafe { ic.chip.pic };
            assert_eq!((p.irq_base, p.imr, p.init4), (base, imr, 1), "chip {chip}");
        }
    }
}
