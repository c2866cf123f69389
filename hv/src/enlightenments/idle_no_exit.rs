//! `idle-no-exit`: idle without exits: HLT and PAUSE stay in the guest (KVM_CAP_X86_DISABLE_EXITS); a halted vCPU keeps its host CPU

use kvm_ioctls::Kvm;

use super::{Enlightenment, Mechanism};
#[allow(unused_imports)]
use hvlab_protocol::kvm_pv;

/// See the module documentation.
#[derive(Debug)]
pub struct IdleNoExit;

impl Enlightenment for IdleNoExit {
    fn name(&self) -> &'static str {
        "idle-no-exit"
    }
    fn description(&self) -> &'static str {
        "idle without exits: HLT and PAUSE stay in the guest (KVM_CAP_X86_DISABLE_EXITS); a halted vCPU keeps its host CPU"
    }
    fn mechanisms(&self) -> &'static [Mechanism] {
        &[Mechanism::KvmCapability]
    }
    fn host_side(&self) -> &'static str {
        "enables KVM_CAP_X86_DISABLE_EXITS with HLT|PAUSE on the VM before creating vCPUs"
    }
    fn probe(&self, kvm: &Kvm) -> Result<(), String> {
        let have = kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_X86_DISABLE_EXITS));
        let want = self.disable_exits() as i32;
        if have & want == want {
            Ok(())
        } else {
            Err(format!(
                "KVM_CAP_X86_DISABLE_EXITS offers {have:#x}, not HLT|PAUSE ({want:#x})"
            ))
        }
    }
    fn disable_exits(&self) -> u32 {
        kvm_bindings::KVM_X86_DISABLE_EXITS_HLT | kvm_bindings::KVM_X86_DISABLE_EXITS_PAUSE
    }
}
