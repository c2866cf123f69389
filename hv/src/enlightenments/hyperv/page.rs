//! The hypercall page hv writes when the guest enables MSR_HYPERCALL.
//!
//! A guest calls the page with the TLFS registers (RCX input value, RDX input GPA or fast
//! parameter 1, R8 output GPA or fast parameter 2) and reads the result from RAX. No hypercall
//! instruction works on our hosts (`vmcall` leaves the vCPU on the instruction), so the page
//! uses hv's transport: it copies RCX to R9 and RDX to R10 (registers the TLFS ABI lets a
//! hypercall clobber, as Linux's `hv_do_hypercall` declares), then writes
//! `MSR_HV_HYPERCALL_TRANSPORT`, which hv filters to userspace. hv then reads R9/R10/R8 with
//! KVM_GET_REGS, runs the call and writes RAX with KVM_SET_REGS. One userspace exit per call.

use hvlab_protocol::hyperv as tlfs;

/// Name of the transport, for run records.
pub(crate) const TRANSPORT: &str =
    "hypercall page: mov r9,rcx; mov r10,rdx; wrmsr 0x48564c01 (filtered to hv); ret";

/// The page's code (the rest of the page is `ud2`, so that a jump past it faults).
pub(crate) fn code() -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&[0x49, 0x89, 0xc9]); // mov r9, rcx
    c.extend_from_slice(&[0x49, 0x89, 0xd2]); // mov r10, rdx
    c.push(0xb9); // mov ecx, imm32
    c.extend_from_slice(&tlfs::MSR_HV_HYPERCALL_TRANSPORT.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x30]); // wrmsr
    c.push(0xc3); // ret
    c
}

/// The whole 4 KiB page: the code, then `ud2` to the end.
pub(crate) fn page() -> Vec<u8> {
    let mut p = code();
    while p.len() < 4096 {
        p.extend_from_slice(&[0x0f, 0x0b]);
    }
    p.truncate(4096);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_saves_the_input_registers_then_exits_and_returns() {
        let c = code();
        assert_eq!(&c[..6], &[0x49, 0x89, 0xc9, 0x49, 0x89, 0xd2]);
        assert_eq!(c[6], 0xb9);
        assert_eq!(
            u32::from_le_bytes([c[7], c[8], c[9], c[10]]),
            tlfs::MSR_HV_HYPERCALL_TRANSPORT
        );
        assert_eq!(&c[11..], &[0x0f, 0x30, 0xc3]);
        let p = page();
        assert_eq!(p.len(), 4096);
        assert_eq!(&p[..c.len()], &c[..]);
        assert_eq!(&p[c.len()..c.len() + 2], &[0x0f, 0x0b]);
    }
}
