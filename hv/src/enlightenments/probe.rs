//! Host probes shared by the enlightenments: what KVM offers in CPUID, which capabilities it
//! has, and whether a hypercall instruction completes at all (run in a throw-away VM, once).

use std::sync::OnceLock;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_regs};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// CPUID `leaf` as KVM supports it, or `None`.
pub(crate) fn supported_leaf(kvm: &Kvm, leaf: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    static CACHE: OnceLock<Option<Vec<kvm_bindings::kvm_cpuid_entry2>>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .ok()
            .map(|c| c.as_slice().to_vec())
    });
    all.as_ref()?
        .iter()
        .find(|e| e.function == leaf && e.index == 0)
        .copied()
}

/// `Ok` when KVM offers every feature bit in `bits` (CPUID 0x40000001 EAX).
pub(crate) fn kvm_pv_bits(kvm: &Kvm, bits: u32, what: &str) -> Result<(), String> {
    let have = supported_leaf(kvm, 0x4000_0001).map_or(0, |e| e.eax);
    let missing = bits & !have;
    if missing == 0 {
        Ok(())
    } else {
        Err(format!(
            "KVM does not offer {what} (CPUID 0x40000001 EAX bits {missing:#x} missing; offered {have:#x})"
        ))
    }
}

/// `Ok` when KVM has capability `cap`.
pub(crate) fn cap(kvm: &Kvm, cap: Cap, what: &str) -> Result<(), String> {
    if kvm.check_extension(cap) {
        Ok(())
    } else {
        Err(format!("KVM lacks {what}"))
    }
}

/// hv's own MSR interface needs MSR exits to userspace for a filtered MSR.
pub(crate) fn hv_interface(kvm: &Kvm) -> Result<(), String> {
    cap(kvm, Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR")?;
    cap(kvm, Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER")
}

/// True on AMD/Hygon hosts, whose hypercall instruction is `vmmcall`.
pub(crate) fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

/// `Ok` when a hypercall instruction (vmcall or vmmcall, by host vendor) completes in a guest:
/// a throw-away VM runs `mov eax, 0xffff; vmcall; hlt` in real mode and must come back from
/// the HLT with KVM's -ENOSYS in EAX. The answer is cached for the process.
pub fn hypercalls_work(kvm: &Kvm) -> Result<(), String> {
    static CACHE: OnceLock<Result<(), String>> = OnceLock::new();
    CACHE.get_or_init(|| probe_with_watchdog(kvm)).clone()
}

/// Runs the probe on its own thread; if the guest does not come back within a second (on some
/// hosts the instruction never completes), the thread is kicked out of KVM_RUN with hv's vCPU
/// kick signal and the probe reports that.
fn probe_with_watchdog(kvm: &Kvm) -> Result<(), String> {
    use std::os::unix::thread::JoinHandleExt;
    // Installs the kick signal handler, so the signal interrupts KVM_RUN instead of killing us.
    crate::vcpu::RunControl::new().map_err(|e| format!("hypercall probe: {e}"))?;
    let fd = kvm
        .create_vm()
        .map_err(|e| format!("hypercall probe: KVM_CREATE_VM: {e}"))?;
    drop(fd);
    // The probe needs its own Kvm handle on the thread: reopen /dev/kvm.
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name("hypercall-probe".into())
        .spawn(move || {
            let r = match Kvm::new() {
                Ok(k) => probe_hypercall(&k),
                Err(e) => Err(format!("hypercall probe: /dev/kvm: {e}")),
            };
            let _ = tx.send(r);
        })
        .map_err(|e| format!("hypercall probe: thread: {e}"))?;
    let t = h.as_pthread_t();
    let mut result = rx.recv_timeout(std::time::Duration::from_secs(1));
    while result.is_err() {
        // SAFETY: `h` is not joined yet, so `t` names a live or exited-unjoined thread.
        unsafe { libc::pthread_kill(t, crate::vcpu::kick_signal()) };
        result = rx.recv_timeout(std::time::Duration::from_millis(100));
    }
    let _ = h.join();
    result.unwrap_or_else(|_| Err("hypercall probe: no answer".into()))
}

fn probe_hypercall(kvm: &Kvm) -> Result<(), String> {
    const CODE: u64 = 0x1000;
    const TRAP: u64 = 0x500;
    let why = |s: &str, e: &dyn std::fmt::Display| format!("hypercall probe: {s}: {e}");
    // Declared before the VM, so it is unmapped only after the VM is gone.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])
        .map_err(|e| why("guest memory", &e))?;
    let vm = kvm.create_vm().map_err(|e| why("KVM_CREATE_VM", &e))?;
    let host = mem
        .iter()
        .next()
        .ok_or_else(|| why("guest memory", &"no region"))?
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|e| why("guest memory", &e))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is a live mapping owned by `mem`, declared before `vm` and therefore
    // dropped after it.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| why("KVM_SET_USER_MEMORY_REGION", &e))?;
    let insn: [u8; 3] = if host_is_amd() {
        [0x0f, 0x01, 0xd9]
    } else {
        [0x0f, 0x01, 0xc1]
    };
    // mov eax, 0xffff (operand-size prefix in real mode); hypercall; hlt.
    let mut code = vec![0x66, 0xb8, 0xff, 0xff, 0x00, 0x00];
    code.extend_from_slice(&insn);
    code.push(0xf4);
    mem.write_slice(&code, GuestAddress(CODE))
        .map_err(|e| why("writing code", &e))?;
    // Every real-mode interrupt vector points at a HLT at TRAP, so a fault (#UD) ends there.
    mem.write_slice(&[0xf4], GuestAddress(TRAP))
        .map_err(|e| why("writing code", &e))?;
    for v in 0..256u64 {
        mem.write_obj(TRAP as u32, GuestAddress(v * 4))
            .map_err(|e| why("writing IVT", &e))?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(|e| why("KVM_CREATE_VCPU", &e))?;
    if let Ok(c) = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) {
        let _ = vcpu.set_cpuid2(&c);
    }
    let mut sregs = vcpu.get_sregs().map_err(|e| why("KVM_GET_SREGS", &e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| why("KVM_SET_SREGS", &e))?;
    vcpu.set_regs(&kvm_regs {
        rip: CODE,
        rflags: 2,
        rsp: 0x8000,
        ..Default::default()
    })
    .map_err(|e| why("KVM_SET_REGS", &e))?;
    let end = CODE + code.len() as u64;
    {
        let exit = match vcpu.run() {
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Hypercall(_)) => {
                return Err("the hypercall exited to userspace instead of KVM handling it".into());
            }
            Ok(other) => Some(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR => {
                return Err(
                    "a hypercall instruction does not complete on this host (the guest did not return within 1 s)"
                        .into(),
                );
            }
            Err(e) => Some(format!("KVM_RUN failed: {e}")),
        };
        if let Some(what) = exit {
            return Err(format!(
                "a hypercall instruction does not complete on this host (guest exit: {what})"
            ));
        }
        let regs = vcpu.get_regs().map_err(|e| why("KVM_GET_REGS", &e))?;
        if regs.rip == end {
            let expected = hvlab_protocol::kvm_pv::ENOSYS as u64 & 0xffff_ffff;
            return if regs.rax & 0xffff_ffff == expected {
                Ok(())
            } else {
                Err(format!(
                    "a hypercall instruction returned {:#x}, not KVM's -ENOSYS",
                    regs.rax
                ))
            };
        }
        if regs.rip == TRAP + 1 {
            return Err(
                "a hypercall instruction faults on this host (the guest took an exception)".into(),
            );
        }
        Err(format!(
            "a hypercall instruction does not complete on this host (halted at {:#x})",
            regs.rip
        ))
    }
}
