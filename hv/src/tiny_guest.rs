//! Tiny guests written as machine code, wrapped in a minimal PVH ELF so that hv boots them
//! exactly like the real guest image. Benches and tests use them to run the same instructions
//! under hv and under a raw kvm-ioctls loop.
//!
//! The code runs in 32-bit protected mode, paging off (the PVH entry state), from
//! [`LOAD_ADDR`].

use hvlab_protocol::{EXIT_PORT, IMAGE_BASE, PHASE_END, PHASE_PORT, TEST_PORT};

/// Where the code is loaded and entered.
pub const LOAD_ADDR: u64 = IMAGE_BASE;

/// Wraps 32-bit `code` in an ELF64 with one PT_LOAD at [`LOAD_ADDR`] and a PVH entry note.
pub fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut e = vec![0u8; code_off];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    e[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    e[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |ty: u32, flags: u32, off: usize, addr: u64, size: usize, align: u64| {
        let mut p = Vec::with_capacity(PHDR);
        p.extend_from_slice(&ty.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&(off as u64).to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&(size as u64).to_le_bytes());
        p.extend_from_slice(&(size as u64).to_le_bytes());
        p.extend_from_slice(&align.to_le_bytes());
        p
    };
    e[EHDR..EHDR + PHDR].copy_from_slice(&phdr(1, 7, code_off, LOAD_ADDR, code.len(), 16));
    e[EHDR + PHDR..EHDR + 2 * PHDR].copy_from_slice(&phdr(4, 4, note_off, 0, note.len(), 4));
    e[note_off..note_off + note.len()].copy_from_slice(&note);
    e.extend_from_slice(code);
    e
}

fn mov_dx(c: &mut Vec<u8>, port: u16) {
    c.extend_from_slice(&[0x66, 0xba]);
    c.extend_from_slice(&port.to_le_bytes());
}

fn mov_eax(c: &mut Vec<u8>, v: u32) {
    c.push(0xb8);
    c.extend_from_slice(&v.to_le_bytes());
}

/// `out dx, eax` of `value` to `port`.
fn out32(c: &mut Vec<u8>, port: u16, value: u32) {
    mov_dx(c, port);
    mov_eax(c, value);
    c.push(0xef);
}

/// Phase 1 around `n` (>= 1) one-byte `out`s to the test port, then exit status 0.
pub fn pio_loop(n: u32) -> Vec<u8> {
    let mut c = Vec::new();
    out32(&mut c, PHASE_PORT, 1);
    c.push(0xb9); // mov ecx, n
    c.extend_from_slice(&n.max(1).to_le_bytes());
    mov_dx(&mut c, TEST_PORT);
    c.extend_from_slice(&[0xee, 0x49, 0x75, 0xfc]); // 1: out dx, al; dec ecx; jnz 1b
    out32(&mut c, PHASE_PORT, 1 | PHASE_END);
    exit_now_into(&mut c, 0);
    c
}

fn exit_now_into(c: &mut Vec<u8>, status: u32) {
    out32(c, EXIT_PORT, status);
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
}

/// Exits with `status` as the very first instruction sequence.
pub fn exit_now(status: u32) -> Vec<u8> {
    let mut c = Vec::new();
    exit_now_into(&mut c, status);
    c
}

/// Port where a [`real_mode_probe`] guest reports a value (`out dx, eax`, see
/// [`report_eax`]). Outside the guest protocol's ports; only the host probes
/// (`hv::host_probe`) attach a device here.
pub const REPORT_PORT: u16 = 0x7f0;
/// Port where a [`real_mode_probe`] guest's exception handlers write the vector number
/// (0xffff for vectors 32 and up).
pub const EXCEPTION_PORT: u16 = 0x7f1;
/// Exit status of a [`real_mode_probe`] guest after an exception (the guest protocol's
/// "exception").
pub const EXCEPTION_STATUS: u32 = 3;
/// Exit status of a [`real_mode_probe`] guest whose body ran past its end without exiting.
pub const FELL_THROUGH_STATUS: u32 = 4;

/// Where a [`real_mode_probe`] guest's body starts (`0:0x1000`, = its guest-physical address).
pub const REAL_MODE_CODE_AT: u16 = 0x1000;
/// Its stack top (`0:0xf000`).
pub const REAL_MODE_STACK_TOP: u16 = 0xf000;
/// Where its exception handlers live.
const REAL_MODE_STUBS_AT: u16 = 0x0800;
/// Exception vectors with a handler of their own.
const REAL_MODE_VECTORS: u16 = 32;

/// A real-mode probe guest: the pieces of guest memory to write, as (guest-physical address,
/// bytes). The vCPU starts at `0:REAL_MODE_CODE_AT` with all segment bases 0 and the stack at
/// [`REAL_MODE_STACK_TOP`] (`hv::host_probe` sets that state). The IVT at 0 sends each
/// exception vector to a handler that writes the vector to [`EXCEPTION_PORT`] and exits with
/// [`EXCEPTION_STATUS`], so a probe can tell #UD from #GP from a hang. `body` (16-bit code)
/// must end the run itself ([`exit_with`]); one that runs past its end exits with
/// [`FELL_THROUGH_STATUS`].
///
/// Real mode, not the PVH entry's protected mode, because what a hypercall instruction does
/// depends on the mode on some hosts (`kvm_pvm`: in real mode `vmmcall` raises #UD, in
/// protected mode it hangs like `vmcall`), and hv's probes have always asked in real mode.
pub fn real_mode_probe(body: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut stubs = Vec::new();
    let mut ivt = Vec::with_capacity(256 * 4);
    let mut stub_at = Vec::new();
    for v in (0..REAL_MODE_VECTORS).chain([0xffff]) {
        stub_at.push(REAL_MODE_STUBS_AT + stubs.len() as u16);
        stubs.push(0xb8); // mov ax, v
        stubs.extend_from_slice(&v.to_le_bytes());
        stubs.push(0xba); // mov dx, EXCEPTION_PORT
        stubs.extend_from_slice(&EXCEPTION_PORT.to_le_bytes());
        stubs.push(0xef); // out dx, ax
        exit16(&mut stubs, EXCEPTION_STATUS);
    }
    for v in 0..256usize {
        let at = stub_at[v.min(usize::from(REAL_MODE_VECTORS))];
        ivt.extend_from_slice(&at.to_le_bytes()); // offset
        ivt.extend_from_slice(&0u16.to_le_bytes()); // segment
    }
    let mut code = body.to_vec();
    exit16(&mut code, FELL_THROUGH_STATUS);
    vec![
        (0, ivt),
        (u64::from(REAL_MODE_STUBS_AT), stubs),
        (u64::from(REAL_MODE_CODE_AT), code),
    ]
}

/// 16-bit: `mov dx, port; mov eax, value; out dx, eax`.
fn out32_16(c: &mut Vec<u8>, port: u16, value: u32) {
    c.push(0xba);
    c.extend_from_slice(&port.to_le_bytes());
    set_eax(c, value);
    c.extend_from_slice(&[0x66, 0xef]);
}

/// 16-bit: exit with `status`, then spin (the run ends at the exit-port write).
fn exit16(c: &mut Vec<u8>, status: u32) {
    out32_16(c, EXIT_PORT, status);
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
}

/// Real-mode probe body piece: `out REPORT_PORT, eax` (eax unchanged; dx clobbered).
pub fn report_eax(c: &mut Vec<u8>) {
    c.push(0xba);
    c.extend_from_slice(&REPORT_PORT.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xef]);
}

/// Real-mode probe body piece: `mov eax, v`.
pub fn set_eax(c: &mut Vec<u8>, v: u32) {
    c.extend_from_slice(&[0x66, 0xb8]);
    c.extend_from_slice(&v.to_le_bytes());
}

/// Real-mode probe body piece: begin (`end == false`) or end phase `id`.
pub fn phase_marker(c: &mut Vec<u8>, id: u32, end: bool) {
    out32_16(c, PHASE_PORT, if end { id | PHASE_END } else { id });
}

/// Real-mode probe body piece: exit with `status`.
pub fn exit_with(c: &mut Vec<u8>, status: u32) {
    exit16(c, status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{Partition, PartitionConfig};

    #[test]
    fn tiny_pio_loop_runs_under_hv_with_exact_counts() {
        let kvm = crate::error::kvm_for_tests();
        let cfg = PartitionConfig {
            tracepoints: false,
            ..PartitionConfig::default()
        };
        let p = Partition::new(&kvm, cfg, &elf(&pio_loop(37))).unwrap();
        let o = p.start().unwrap().wait(
            std::time::Instant::now() + std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(10),
        );
        assert!(o.status.is_ok(), "{}", o.status);
        assert_eq!(o.phases.len(), 1);
        assert_eq!(o.phases[0].exits["io_out"], 37);
        assert_eq!(o.phases[0].exits_by_device["pio:test-port"], 37);
    }
}
