//! The hypercall input value (RCX) and result value (RAX) of the TLFS, and the checks every
//! call's input goes through before hv looks at its parameters.
//!
//! Input value: bits 15:0 call code, 16 fast, 26:17 variable header size (8-byte units),
//! 30:27 reserved (zero), 31 nested (hv does not nest: must be zero), 43:32 rep count, 47:44
//! reserved, 59:48 rep start index, 63:60 reserved. Result: bits 15:0 status, 43:32 reps
//! completed, the rest zero.

use hvlab_protocol::hyperv as tlfs;

/// Bits of the input value that must be zero (30:27, 31 nested, 47:44, 63:60).
const RESERVED: u64 = (0xf << 27) | (1 << 31) | (0xf << 44) | (0xf << 60);
/// Page size; input and output parameter lists may not cross a page.
pub(crate) const PAGE: u64 = 4096;

/// A decoded hypercall input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Input {
    pub code: u16,
    pub fast: bool,
    /// Variable header size in 8-byte units.
    pub var_hdr: u16,
    pub rep_count: u16,
    pub rep_start: u16,
}

/// What a call code is, for the input checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A simple call: rep count and start must be zero.
    Simple,
    /// A rep call: 0 <= rep start < rep count.
    Rep,
}

/// Decodes `rcx`; `Err(status)` when a reserved bit is set.
pub(crate) fn decode(rcx: u64) -> Result<Input, u16> {
    if rcx & RESERVED != 0 {
        return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }
    Ok(Input {
        code: rcx as u16,
        fast: rcx & tlfs::INPUT_FAST != 0,
        var_hdr: ((rcx >> 17) & 0x3ff) as u16,
        rep_count: ((rcx >> 32) & 0xfff) as u16,
        rep_start: ((rcx >> 48) & 0xfff) as u16,
    })
}

/// Checks the rep fields against the call's kind.
pub(crate) fn check_reps(input: &Input, kind: Kind) -> Result<(), u16> {
    let ok = match kind {
        Kind::Simple => input.rep_count == 0 && input.rep_start == 0,
        Kind::Rep => input.rep_count > 0 && input.rep_start < input.rep_count,
    };
    if ok {
        Ok(())
    } else {
        Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT)
    }
}

/// Checks a memory (non-fast) call's parameter list at `gpa` of `len` bytes: 8-byte aligned
/// and not crossing a page (TLFS: HV_STATUS_INVALID_ALIGNMENT otherwise).
pub(crate) fn check_list(gpa: u64, len: u64) -> Result<(), u16> {
    if gpa % 8 != 0 {
        return Err(tlfs::STATUS_INVALID_ALIGNMENT);
    }
    let last = gpa
        .checked_add(len.max(1) - 1)
        .ok_or(tlfs::STATUS_INVALID_ALIGNMENT)?;
    if gpa / PAGE != last / PAGE {
        return Err(tlfs::STATUS_INVALID_ALIGNMENT);
    }
    Ok(())
}

/// The result value for RAX.
pub(crate) fn result(status: u16, reps_completed: u16) -> u64 {
    u64::from(status) | (u64::from(reps_completed & 0xfff) << 32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_field_and_roundtrips_the_protocol_encoder() {
        let rcx = tlfs::input(0x14, true, 3, 0xfff, 0x7ff);
        let i = decode(rcx).unwrap();
        assert_eq!(
            i,
            Input {
                code: 0x14,
                fast: true,
                var_hdr: 3,
                rep_count: 0xfff,
                rep_start: 0x7ff
            }
        );
        assert_eq!(decode(0).unwrap().code, 0);
        assert_eq!(decode(0xffff).unwrap().code, 0xffff);
    }

    #[test]
    fn every_reserved_bit_is_invalid_input() {
        for bit in (27..32).chain(44..48).chain(60..64) {
            assert_eq!(
                decode(tlfs::input(2, false, 0, 0, 0) | 1 << bit),
                Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT),
                "bit {bit}"
            );
        }
        // And no other bit is.
        for bit in (0..27).chain(32..44).chain(48..60) {
            assert!(decode(1 << bit).is_ok(), "bit {bit}");
        }
    }

    #[test]
    fn rep_fields_follow_the_kind() {
        let d = |reps, start| decode(tlfs::input(3, false, 0, reps, start)).unwrap();
        assert!(check_reps(&d(0, 0), Kind::Simple).is_ok());
        let bad = Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
        assert_eq!(check_reps(&d(1, 0), Kind::Simple), bad);
        assert_eq!(check_reps(&d(0, 1), Kind::Simple), bad);
        assert!(check_reps(&d(1, 0), Kind::Rep).is_ok());
        assert!(check_reps(&d(5, 4), Kind::Rep).is_ok());
        assert_eq!(check_reps(&d(0, 0), Kind::Rep), bad);
        assert_eq!(check_reps(&d(4, 4), Kind::Rep), bad);
        assert_eq!(check_reps(&d(4, 0xfff), Kind::Rep), bad);
    }

    #[test]
    fn parameter_lists_must_be_aligned_and_within_a_page() {
        assert!(check_list(0x1000, 24).is_ok());
        assert!(check_list(0x1fe8, 24).is_ok());
        let bad = Err(tlfs::STATUS_INVALID_ALIGNMENT);
        assert_eq!(check_list(0x1004, 24), bad);
        assert_eq!(check_list(0x1ff0, 24), bad);
        assert_eq!(check_list(u64::MAX - 7, 24), bad);
        assert!(check_list(0x1000, 4096).is_ok());
        assert_eq!(check_list(0x1000, 4097), bad);
    }

    #[test]
    fn result_packs_status_and_reps() {
        assert_eq!(result(tlfs::STATUS_SUCCESS, 0), 0);
        let r = result(tlfs::STATUS_INVALID_ALIGNMENT, 7);
        assert_eq!(tlfs::status(r), tlfs::STATUS_INVALID_ALIGNMENT);
        assert_eq!(tlfs::reps_completed(r), 7);
        assert_eq!(r >> 44, 0);
    }
}
