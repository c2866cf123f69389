//! The hypercalls: input checks in TLFS order and the decoding of each call's parameters
//! into what hv must do ([`Action`]). Executing the action (kicks, MSIs, yields) is the
//! host's job (`enlightenments::host`); everything here is pure over guest memory, so every
//! hostile input is unit-tested.
//!
//! Checks, in order: CPL (a call from CPL > 0 is HV_STATUS_ACCESS_DENIED: the TLFS injects
//! #UD, which hv cannot do without KVM_SET_VCPU_EVENTS on the vCPU thread; with hv's page a
//! CPL3 caller already takes a #GP at the `wrmsr`), reserved input bits, the call code and
//! whether its enlightenment is on (HV_STATUS_INVALID_HYPERCALL_CODE otherwise, as for an
//! unknown code), rep count/start for the call's kind, the variable header size, the fast bit
//! (only calls whose input fits RDX and R8: no XMM fast calls are offered), parameter list
//! alignment and page crossing (HV_STATUS_INVALID_ALIGNMENT), readability of the list
//! (HV_STATUS_INVALID_HYPERCALL_INPUT, as KVM answers a GPA outside guest memory), then the
//! call's own parameters (HV_STATUS_INVALID_PARAMETER). VP numbers beyond the partition's
//! vCPUs in a mask or VP set are ignored (they name no vCPU), as KVM does.

use hvlab_protocol::hyperv as tlfs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Features;
use super::hypercall::{self, Input, Kind, PAGE};

/// What the host must do for a successful call.
// A PostMessage carries its 240-byte payload: the value lives on the stack for one call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Flush the TLBs of the vCPUs in the mask (bit = VP index) before they next run.
    Flush(u64),
    /// Send `vector` to the vCPUs in the mask.
    Ipi { vector: u32, mask: u64 },
    /// Yield the caller's host thread.
    Yield,
    /// HvCallPostMessage (`hv-synic`): deliver into the connection's message slot.
    PostMessage(super::messages::Post),
    /// HvCallSignalEvent (`hv-synic`): set event flag `flag` of the connection's port.
    SignalEvent { connection: u32, flag: u32 },
}

/// A call's result: status, reps completed, and the action on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: u16,
    pub reps: u16,
    pub action: Option<Action>,
}

impl Outcome {
    fn fail(status: u16) -> Outcome {
        Outcome {
            status,
            reps: 0,
            action: None,
        }
    }
    fn ok(reps: u16, action: Action) -> Outcome {
        Outcome {
            status: tlfs::STATUS_SUCCESS,
            reps,
            action: Some(action),
        }
    }
    /// The value for RAX.
    pub(crate) fn rax(&self) -> u64 {
        hypercall::result(self.status, self.reps)
    }
}

/// Registers of one call, as hv's page hands them over (RCX in R9, RDX in R10, R8).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regs {
    pub input: u64,
    /// Input GPA, or fast parameter 1.
    pub rdx: u64,
    /// Output GPA, or fast parameter 2.
    pub r8: u64,
}

/// Runs the checks and decodes one call from a vCPU at `cpl` of a partition with `vcpus`
/// vCPUs and `features`.
pub(crate) fn decode(
    features: Features,
    vcpus: u32,
    cpl: u8,
    regs: Regs,
    mem: &GuestMemoryMmap,
) -> Outcome {
    match decode_inner(features, vcpus, cpl, regs, mem) {
        Ok(o) => o,
        Err(status) => Outcome::fail(status),
    }
}

fn all_vcpus(vcpus: u32) -> u64 {
    if vcpus >= 64 {
        u64::MAX
    } else {
        (1u64 << vcpus) - 1
    }
}

/// Reads `n` u64 words at `gpa` (already checked for alignment and page crossing).
fn words(mem: &GuestMemoryMmap, gpa: u64, n: usize) -> Result<Vec<u64>, u16> {
    let mut buf = vec![0u8; n * 8];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(|_| tlfs::STATUS_INVALID_HYPERCALL_INPUT)?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Reads a memory call's input: `fixed` words, `var` variable header words, `reps` rep words.
fn read_input(
    mem: &GuestMemoryMmap,
    gpa: u64,
    fixed: usize,
    var: usize,
    reps: usize,
) -> Result<Vec<u64>, u16> {
    let len = (fixed + var + reps) as u64 * 8;
    if len > PAGE {
        // A list that cannot fit one page: the rep count (or header size) is out of range.
        return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }
    hypercall::check_list(gpa, len)?;
    words(mem, gpa, fixed + var + reps)
}

/// The VP mask of a sparse VP set (format, valid bank mask, banks), checking its size against
/// the variable header.
fn vp_set(format: u64, valid_banks: u64, banks: &[u64], vcpus: u32) -> Result<u64, u16> {
    match format {
        tlfs::VPSET_ALL => Ok(all_vcpus(vcpus)),
        tlfs::VPSET_SPARSE_4K => {
            if banks.len() != valid_banks.count_ones() as usize {
                return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
            }
            // Bank i holds VPs 64i..64i+63; banks appear in the order of their mask bits. Only
            // bank 0 can name vCPUs of an hv partition (at most 64).
            let mask = if valid_banks & 1 != 0 { banks[0] } else { 0 };
            Ok(mask & all_vcpus(vcpus))
        }
        _ => Err(tlfs::STATUS_INVALID_PARAMETER),
    }
}

fn check_flags(flags: u64, features: Features) -> Result<(), u16> {
    let mut known =
        tlfs::FLUSH_ALL_PROCESSORS | tlfs::FLUSH_ALL_SPACES | tlfs::FLUSH_NON_GLOBAL_ONLY;
    if features.has(Features::TLBFLUSH_EXT) {
        known |= tlfs::FLUSH_EXTENDED_RANGES;
    }
    if flags & !known != 0 {
        Err(tlfs::STATUS_INVALID_PARAMETER)
    } else {
        Ok(())
    }
}

fn check_vector(vector: u64) -> Result<u32, u16> {
    // Vector (u32) and a reserved u32 that must be zero; vectors 0x10..=0xff.
    let v = vector as u32;
    if vector >> 32 != 0 || !(0x10..=0xff).contains(&v) {
        return Err(tlfs::STATUS_INVALID_PARAMETER);
    }
    Ok(v)
}

fn decode_inner(
    features: Features,
    vcpus: u32,
    cpl: u8,
    regs: Regs,
    mem: &GuestMemoryMmap,
) -> Result<Outcome, u16> {
    if cpl != 0 {
        return Err(tlfs::STATUS_ACCESS_DENIED);
    }
    let input = hypercall::decode(regs.input)?;
    let code = input.code;
    let (kind, needs, ex) = match code {
        tlfs::CALL_FLUSH_SPACE => (Kind::Simple, Features::TLBFLUSH, false),
        tlfs::CALL_FLUSH_LIST => (Kind::Rep, Features::TLBFLUSH, false),
        tlfs::CALL_FLUSH_SPACE_EX => (Kind::Simple, Features::TLBFLUSH_EXT, true),
        tlfs::CALL_FLUSH_LIST_EX => (Kind::Rep, Features::TLBFLUSH_EXT, true),
        tlfs::CALL_SEND_IPI => (Kind::Simple, Features::IPI, false),
        tlfs::CALL_SEND_IPI_EX => (Kind::Simple, Features::IPI, true),
        tlfs::CALL_NOTIFY_LONG_SPIN_WAIT => (Kind::Simple, Features::SPINLOCKS, false),
        tlfs::CALL_POST_MESSAGE => (Kind::Simple, Features::SYNIC, false),
        tlfs::CALL_SIGNAL_EVENT => (Kind::Simple, Features::SYNIC, false),
        _ => return Err(tlfs::STATUS_INVALID_HYPERCALL_CODE),
    };
    if !features.has(needs) {
        return Err(tlfs::STATUS_INVALID_HYPERCALL_CODE);
    }
    hypercall::check_reps(&input, kind)?;
    if !ex && input.var_hdr != 0 {
        return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }
    match code {
        tlfs::CALL_NOTIFY_LONG_SPIN_WAIT => {
            if !input.fast {
                read_input(mem, regs.rdx, 1, 0, 0)?;
            }
            Ok(Outcome::ok(0, Action::Yield))
        }
        tlfs::CALL_SEND_IPI => {
            let (vector, mask) = if input.fast {
                (regs.rdx, regs.r8)
            } else {
                let w = read_input(mem, regs.rdx, 2, 0, 0)?;
                (w[0], w[1])
            };
            let vector = check_vector(vector)?;
            Ok(Outcome::ok(
                0,
                Action::Ipi {
                    vector,
                    mask: mask & all_vcpus(vcpus),
                },
            ))
        }
        tlfs::CALL_POST_MESSAGE => {
            no_fast(&input)?;
            let w = read_input(mem, regs.rdx, super::messages::POST_WORDS, 0, 0)?;
            Ok(Outcome::ok(
                0,
                Action::PostMessage(super::messages::post_input(&w)?),
            ))
        }
        tlfs::CALL_SIGNAL_EVENT => {
            let w = if input.fast {
                regs.rdx
            } else {
                read_input(mem, regs.rdx, 1, 0, 0)?[0]
            };
            let (connection, flag) = super::messages::signal_input(w)?;
            Ok(Outcome::ok(0, Action::SignalEvent { connection, flag }))
        }
        tlfs::CALL_SEND_IPI_EX => {
            no_fast(&input)?;
            let var = usize::from(input.var_hdr);
            let w = read_input(mem, regs.rdx, 3, var, 0)?;
            let vector = check_vector(w[0])?;
            let mask = vp_set(w[1], w[2], &w[3..], vcpus)?;
            Ok(Outcome::ok(0, Action::Ipi { vector, mask }))
        }
        _ => {
            // The four flushes: [address space, flags] then a mask or a VP set, then GVAs.
            no_fast(&input)?;
            let var = usize::from(input.var_hdr);
            let (fixed, reps) = match (ex, kind) {
                (false, Kind::Simple) => (3, 0),
                (false, Kind::Rep) => (3, usize::from(input.rep_count)),
                (true, Kind::Simple) => (4, 0),
                (true, Kind::Rep) => (4, usize::from(input.rep_count)),
            };
            let w = read_input(mem, regs.rdx, fixed, var, reps)?;
            let flags = w[1];
            check_flags(flags, features)?;
            let mask = if ex {
                vp_set(w[2], w[3], &w[4..4 + var], vcpus)?
            } else {
                w[2] & all_vcpus(vcpus)
            };
            let mask = if flags & tlfs::FLUSH_ALL_PROCESSORS != 0 {
                all_vcpus(vcpus)
            } else {
                mask
            };
            // hv flushes every translation of each target (a superset of any GVA list), so
            // every rep is complete.
            let done = if kind == Kind::Rep {
                input.rep_count
            } else {
                0
            };
            Ok(Outcome::ok(done, Action::Flush(mask)))
        }
    }
}

fn no_fast(input: &Input) -> Result<(), u16> {
    if input.fast {
        Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT)
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MEM: u64 = 1 << 20;
    const IN: u64 = 0x8000;

    fn all() -> Features {
        Features(
            Features::VPINDEX
                | Features::TLBFLUSH
                | Features::TLBFLUSH_EXT
                | Features::IPI
                | Features::SPINLOCKS,
        )
    }

    fn mem_with(words: &[u64]) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        for (i, w) in words.iter().enumerate() {
            mem.write_obj(*w, GuestAddress(IN + 8 * i as u64)).unwrap();
        }
        mem
    }

    fn call(input: u64, rdx: u64, r8: u64, mem: &GuestMemoryMmap) -> Outcome {
        decode(all(), 4, 0, Regs { input, rdx, r8 }, mem)
    }

    fn status(o: Outcome) -> u16 {
        o.status
    }

    #[test]
    fn flush_space_and_list_with_masks() {
        let mem = mem_with(&[0, 0, 0b1010, 0x1000, 0x2000]);
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(0, Action::Flush(0b1010)));
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_LIST, false, 0, 2, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(2, Action::Flush(0b1010)));
        assert_eq!(tlfs::reps_completed(o.rax()), 2);
        // All processors; VPs beyond the partition ignored.
        let mem = mem_with(&[0, tlfs::FLUSH_ALL_PROCESSORS, 0]);
        let o = call(tlfs::input(2, false, 0, 0, 0), IN, 0, &mem);
        assert_eq!(o.action, Some(Action::Flush(0b1111)));
        let mem = mem_with(&[0, 0, u64::MAX]);
        assert_eq!(
            call(tlfs::input(2, false, 0, 0, 0), IN, 0, &mem).action,
            Some(Action::Flush(0b1111))
        );
    }

    #[test]
    fn ex_forms_take_sparse_vp_sets() {
        // format sparse, banks 0 and 1 valid, bank 0 = VPs 0 and 2, bank 1 = VP 64 (absent).
        let mem = mem_with(&[0, 0, tlfs::VPSET_SPARSE_4K, 0b11, 0b101, 1, 0xabc000]);
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 2, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(0, Action::Flush(0b101)));
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 2, 1, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(1, Action::Flush(0b101)));
        // Header size disagrees with the bank mask.
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 1, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(status(o), tlfs::STATUS_INVALID_HYPERCALL_INPUT);
        // Only bank 1: nobody here.
        let mem = mem_with(&[0, 0, tlfs::VPSET_SPARSE_4K, 0b10, 1]);
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 1, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o.action, Some(Action::Flush(0)));
        // All format.
        let mem = mem_with(&[0, 0, tlfs::VPSET_ALL, 0]);
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o.action, Some(Action::Flush(0b1111)));
        // Unknown format.
        let mem = mem_with(&[0, 0, 7, 0]);
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(status(o), tlfs::STATUS_INVALID_PARAMETER);
    }

    #[test]
    fn ipis_fast_and_from_memory() {
        let mem = mem_with(&[0x40, 0b1110, tlfs::VPSET_SPARSE_4K, 1, 0b0110]);
        let o = call(
            tlfs::input(tlfs::CALL_SEND_IPI, true, 0, 0, 0),
            0x41,
            0b0111,
            &mem,
        );
        assert_eq!(
            o,
            Outcome::ok(
                0,
                Action::Ipi {
                    vector: 0x41,
                    mask: 0b0111
                }
            )
        );
        let o = call(
            tlfs::input(tlfs::CALL_SEND_IPI, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(
            o.action,
            Some(Action::Ipi {
                vector: 0x40,
                mask: 0b1110
            })
        );
        let mem = mem_with(&[0x40, tlfs::VPSET_SPARSE_4K, 1, 0b0110]);
        let o = call(
            tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 1, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(
            o.action,
            Some(Action::Ipi {
                vector: 0x40,
                mask: 0b0110
            })
        );
        // Bad vectors and a non-zero reserved half.
        for v in [0u64, 0xf, 0x100, 0x40 | 1 << 32] {
            let o = call(tlfs::input(tlfs::CALL_SEND_IPI, true, 0, 0, 0), v, 1, &mem);
            assert_eq!(status(o), tlfs::STATUS_INVALID_PARAMETER, "{v:#x}");
        }
        // Ex has no fast form here (its input needs XMM registers).
        let o = call(
            tlfs::input(tlfs::CALL_SEND_IPI_EX, true, 0, 0, 0),
            0x40,
            1,
            &mem,
        );
        assert_eq!(status(o), tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }

    #[test]
    fn spin_notify_yields() {
        let mem = mem_with(&[100]);
        let o = call(
            tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, true, 0, 0, 0),
            100,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(0, Action::Yield));
        let o = call(
            tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o.action, Some(Action::Yield));
    }

    #[test]
    fn every_bad_input_gets_its_status() {
        let mem = mem_with(&[0, 0, 1, 0, 0]);
        let space = tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0);
        let list = |reps, start| tlfs::input(tlfs::CALL_FLUSH_LIST, false, 0, reps, start);
        let cases: &[(&str, u64, u64, u16)] = &[
            (
                "unknown code",
                tlfs::input(0x0001, false, 0, 0, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
            (
                "code 0xffff",
                0xffff,
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
            (
                "reserved bit 27",
                space | 1 << 27,
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "nested bit",
                space | 1 << 31,
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "reserved bit 63",
                space | 1 << 63,
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "reps on a simple call",
                tlfs::input(2, false, 0, 1, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "rep start on a simple call",
                tlfs::input(2, false, 0, 0, 1),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "rep call with 0 reps",
                list(0, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "rep start past count",
                list(2, 2),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "rep count past a page",
                list(0xfff, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "var header on a non-Ex call",
                tlfs::input(2, false, 1, 0, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "fast flush",
                tlfs::input(2, true, 0, 0, 0),
                IN,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "misaligned input",
                space,
                IN + 4,
                tlfs::STATUS_INVALID_ALIGNMENT,
            ),
            (
                "input crossing a page",
                space,
                0x8ff0,
                tlfs::STATUS_INVALID_ALIGNMENT,
            ),
            (
                "list crossing a page",
                list(100, 0),
                0x8f00,
                tlfs::STATUS_INVALID_ALIGNMENT,
            ),
            (
                "input outside memory",
                space,
                MEM + 0x1000,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "input at the last GPA",
                space,
                !7,
                tlfs::STATUS_INVALID_ALIGNMENT,
            ),
        ];
        for &(what, input, rdx, want) in cases {
            assert_eq!(status(call(input, rdx, 0, &mem)), want, "{what}");
            assert_eq!(call(input, rdx, 0, &mem).action, None, "{what}");
        }
        // Unknown flush flags.
        let bad = mem_with(&[0, 1 << 9, 1]);
        assert_eq!(
            status(call(space, IN, 0, &bad)),
            tlfs::STATUS_INVALID_PARAMETER
        );
        let ext = mem_with(&[0, tlfs::FLUSH_EXTENDED_RANGES, 1]);
        assert_eq!(status(call(space, IN, 0, &ext)), tlfs::STATUS_SUCCESS);
        // From CPL3.
        let regs = Regs {
            input: space,
            rdx: IN,
            r8: 0,
        };
        assert_eq!(
            decode(all(), 4, 3, regs, &mem).status,
            tlfs::STATUS_ACCESS_DENIED
        );
    }

    /// Every call that reads guest memory, with hostile GPAs: each gets its TLFS status and no
    /// action, whatever the call.
    #[test]
    fn every_memory_call_rejects_hostile_gpas() {
        // Valid contents for every call at IN: flushes read [space, flags 0, format sparse,
        // banks 0b1, bank 0 = VP 0, GVA]; IPIs read [vector 0x40, mask 0] or [vector 0x40,
        // format sparse, no banks].
        let mem = mem_with(&[0x40, 0, tlfs::VPSET_SPARSE_4K, 1, 1, 0x1000]);
        let calls = [
            ("space", tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0)),
            ("list", tlfs::input(tlfs::CALL_FLUSH_LIST, false, 0, 1, 0)),
            (
                "space-ex",
                tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 1, 0, 0),
            ),
            (
                "list-ex",
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 1, 0),
            ),
            ("ipi", tlfs::input(tlfs::CALL_SEND_IPI, false, 0, 0, 0)),
            (
                "ipi-ex",
                tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 0, 0, 0),
            ),
            (
                "spin",
                tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, false, 0, 0, 0),
            ),
        ];
        let gpas = [
            ("misaligned", IN + 1, tlfs::STATUS_INVALID_ALIGNMENT),
            ("misaligned by 4", IN + 4, tlfs::STATUS_INVALID_ALIGNMENT),
            (
                "page crossing",
                IN + 4096 - 8,
                tlfs::STATUS_INVALID_ALIGNMENT,
            ),
            (
                "past the end of RAM",
                MEM,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "in the MMIO window",
                0xc000_0000,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            (
                "beyond the physical address width",
                1 << 52,
                tlfs::STATUS_INVALID_HYPERCALL_INPUT,
            ),
            ("wrapping", u64::MAX - 7, tlfs::STATUS_INVALID_ALIGNMENT),
        ];
        for (call, input) in calls {
            // Sanity: the same call at IN succeeds, so the failures below are the GPA's.
            let ok = call_at(input, IN, &mem);
            assert_eq!(ok.status, tlfs::STATUS_SUCCESS, "{call} at IN");
            for (what, gpa, want) in gpas {
                // The spin notification reads one word: only crossing at the very end counts.
                if call == "spin" && what == "page crossing" {
                    continue;
                }
                // One word from the last aligned GPA does not wrap: it is just not RAM.
                let want = if call == "spin" && what == "wrapping" {
                    tlfs::STATUS_INVALID_HYPERCALL_INPUT
                } else {
                    want
                };
                let o = call_at(input, gpa, &mem);
                assert_eq!(o.status, want, "{call} {what}");
                assert_eq!(o.action, None, "{call} {what}");
                assert_eq!(o.reps, 0, "{call} {what}");
            }
        }
    }

    fn call_at(input: u64, gpa: u64, mem: &GuestMemoryMmap) -> Outcome {
        call(input, gpa, 0, mem)
    }

    /// Header sizes, rep fields and fast bits out of range, per call.
    #[test]
    fn every_call_rejects_bad_sizes_reps_and_forms() {
        let mem = mem_with(&[0x40, 0, tlfs::VPSET_SPARSE_4K, 1, 1, 0x1000]);
        let bad_input = tlfs::STATUS_INVALID_HYPERCALL_INPUT;
        let cases: &[(&str, u64, u16)] = &[
            (
                "list-ex with 0 reps",
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 0, 0),
                bad_input,
            ),
            (
                "list-ex rep start = count",
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 3, 3),
                bad_input,
            ),
            (
                "list-ex reps past a page",
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 0x1ff, 0),
                bad_input,
            ),
            (
                "space-ex header past a page",
                tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, false, 0x3ff, 0, 0),
                bad_input,
            ),
            (
                "ipi-ex header past a page",
                tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 0x3ff, 0, 0),
                bad_input,
            ),
            (
                "ipi-ex header disagrees with the bank mask",
                tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 2, 0, 0),
                bad_input,
            ),
            (
                "ipi with reps",
                tlfs::input(tlfs::CALL_SEND_IPI, false, 0, 1, 0),
                bad_input,
            ),
            (
                "ipi with a header",
                tlfs::input(tlfs::CALL_SEND_IPI, false, 1, 0, 0),
                bad_input,
            ),
            (
                "spin with reps",
                tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, false, 0, 2, 1),
                bad_input,
            ),
            (
                "spin with a header",
                tlfs::input(tlfs::CALL_NOTIFY_LONG_SPIN_WAIT, false, 1, 0, 0),
                bad_input,
            ),
            (
                "fast list",
                tlfs::input(tlfs::CALL_FLUSH_LIST, true, 0, 1, 0),
                bad_input,
            ),
            (
                "fast list-ex",
                tlfs::input(tlfs::CALL_FLUSH_LIST_EX, true, 1, 1, 0),
                bad_input,
            ),
            (
                "fast space-ex",
                tlfs::input(tlfs::CALL_FLUSH_SPACE_EX, true, 1, 0, 0),
                bad_input,
            ),
            (
                "list reps past a page",
                tlfs::input(tlfs::CALL_FLUSH_LIST, false, 0, 0x1fe, 0),
                bad_input,
            ),
            (
                "an extended call code",
                tlfs::input(0x8001, false, 0, 0, 0),
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
            (
                "call code 0",
                tlfs::input(0, false, 0, 0, 0),
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
            (
                "a TLFS call hv does not offer (HvCallPostMessage)",
                tlfs::input(0x005c, false, 0, 0, 0),
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
            ),
        ];
        for &(what, input, want) in cases {
            let o = call(input, IN, 0, &mem);
            assert_eq!(o.status, want, "{what}");
            assert_eq!(o.action, None, "{what}");
        }
        // A rep call resumed at a start index completes all its reps.
        let o = call(
            tlfs::input(tlfs::CALL_FLUSH_LIST_EX, false, 1, 3, 2),
            IN,
            0,
            &mem,
        );
        assert_eq!(o, Outcome::ok(3, Action::Flush(1)));
        // Bad IPI vectors in the Ex form's memory input, and a reserved half.
        for v in [0u64, 0xf, 0x100, 0x40 | 1 << 32] {
            let mem = mem_with(&[v, tlfs::VPSET_SPARSE_4K, 1, 1]);
            let o = call(
                tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 1, 0, 0),
                IN,
                0,
                &mem,
            );
            assert_eq!(o.status, tlfs::STATUS_INVALID_PARAMETER, "{v:#x}");
        }
        // Unknown VP set format in the IPI Ex form.
        let mem = mem_with(&[0x40, 2, 0, 0]);
        let o = call(
            tlfs::input(tlfs::CALL_SEND_IPI_EX, false, 0, 0, 0),
            IN,
            0,
            &mem,
        );
        assert_eq!(o.status, tlfs::STATUS_INVALID_PARAMETER);
        // Every call at CPL 1, 2 and 3 is denied before anything else is looked at (even an
        // unknown code or reserved bits).
        for cpl in 1..=3 {
            for input in [
                tlfs::input(tlfs::CALL_FLUSH_SPACE, false, 0, 0, 0),
                tlfs::input(tlfs::CALL_SEND_IPI, true, 0, 0, 0),
                tlfs::input(0x1234, false, 0, 0, 0) | 1 << 63,
            ] {
                let regs = Regs {
                    input,
                    rdx: IN,
                    r8: 0,
                };
                let o = decode(all(), 4, cpl, regs, &mem);
                assert_eq!(o.status, tlfs::STATUS_ACCESS_DENIED, "cpl {cpl}");
                assert_eq!(o.action, None);
            }
        }
    }

    #[test]
    fn calls_of_enlightenments_that_are_off_are_unknown_codes() {
        let mem = mem_with(&[0, 0, 1, 0]);
        let regs = |code| Regs {
            input: tlfs::input(code, false, 0, 0, 0),
            rdx: IN,
            r8: 0,
        };
        let only_flush = Features(Features::VPINDEX | Features::TLBFLUSH);
        assert_eq!(
            decode(only_flush, 4, 0, regs(2), &mem).status,
            tlfs::STATUS_SUCCESS
        );
        for code in [
            tlfs::CALL_FLUSH_SPACE_EX,
            tlfs::CALL_SEND_IPI,
            tlfs::CALL_NOTIFY_LONG_SPIN_WAIT,
        ] {
            assert_eq!(
                decode(only_flush, 4, 0, regs(code), &mem).status,
                tlfs::STATUS_INVALID_HYPERCALL_CODE,
                "{code:#x}"
            );
        }
        // Extended ranges flag needs hv-tlbflush-ext.
        let ext = mem_with(&[0, tlfs::FLUSH_EXTENDED_RANGES, 1]);
        assert_eq!(
            decode(only_flush, 4, 0, regs(2), &ext).status,
            tlfs::STATUS_INVALID_PARAMETER
        );
    }
}
