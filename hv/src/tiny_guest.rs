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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{Partition, PartitionConfig};

    #[test]
    fn tiny_pio_loop_runs_under_hv_with_exact_counts() {
        let kvm = crate::error::open_kvm().unwrap();
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
