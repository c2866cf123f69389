//! The synthetic interrupt controller (`hv-synic`), served by hv: per VP the SCONTROL,
//! SVERSION, SIEFP, SIMP, EOM and SINT0-15 MSRs, message slots in the SIMP page with the
//! pending/redelivery protocol, and event flags in the SIEFP page.
//!
//! MSR semantics (TLFS): SCONTROL bit 0 enables the SynIC, bits 63:1 reserved. SVERSION reads
//! 1 and is read-only. SIEFP and SIMP: bit 0 enable, bits 11:1 reserved, 63:12 the page's GPA;
//! enabling clears the page (as KVM does) and a page outside guest RAM (the MMIO window
//! included: it is not RAM) is refused. EOM reads 0; a write asks hv to redeliver queued
//! messages. SINTn: vector 7:0, masked 16, auto-EOI 17, polling 18, the rest reserved; reset
//! value masked; an unmasked vector below 16 is refused. Every refusal is a #GP through the
//! existing MSR error path ([`Gp`]).
//!
//! Slot protocol: a message goes into slot `sint` (256 bytes at SIMP + 256 * sint) only when the
//! slot's type is HVMSG_NONE; otherwise hv sets the slot's MessagePending flag and the sender
//! sees "busy". The guest, after consuming a message whose MessagePending flag was set, writes
//! EOM; hv then retries what it queued. hv queues at most one message per SINT (its own
//! senders: timer expiries); a guest HvCallPostMessage into a busy slot gets
//! HV_STATUS_INSUFFICIENT_BUFFERS and retries itself, so nothing grows with guest data.
//!
//! Delivery: the SINT's vector as a fixed-mode MSI to the VP's local APIC (KVM_SIGNAL_MSI, done
//! by the caller with each returned [`Irq`]). Auto-EOI cannot be honoured with an in-kernel
//! LAPIC fed by MSIs (KVM implements it only for its own SynIC): the bit is stored and read back,
//! the guest must EOI the LAPIC, and CPUID recommends against relying on auto-EOI
//! ([`tlfs::REC_DEPRECATING_AEOI`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hvlab_protocol::hyperv as tlfs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

use super::messages::{Message, Ports, SINTS};
use super::msr::Gp;

const SCONTROL_ENABLE: u64 = 1;
const SCONTROL_RESERVED: u64 = !SCONTROL_ENABLE;
const PAGE_RESERVED: u64 = 0xffe;
/// SINT bits other than vector, masked, auto-EOI and polling.
const SINT_RESERVED: u64 = !(0xff | tlfs::SINT_MASKED | tlfs::SINT_AUTO_EOI | tlfs::SINT_POLLING);
const SVERSION: u64 = 1;

/// An interrupt to raise: `vector` on VP `vp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Irq {
    pub vp: u32,
    pub vector: u32,
}

/// Why a message or event was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotDelivered {
    /// The slot holds an unconsumed message (its MessagePending flag is now set).
    Busy,
    /// The target's SynIC, or its SIMP/SIEFP page, is disabled.
    NotReady,
}

/// What [`Synic::queue`] did with an hv-internal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Written into the slot; raise this interrupt (if any: a masked SINT gets none).
    Delivered(Option<Irq>),
    /// Kept for redelivery on EOM (one per SINT).
    Waiting,
    /// A message already waits for this SINT: this one is dropped (the sender counts it).
    Dropped,
}

#[derive(Debug, Clone)]
struct Vp {
    scontrol: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; SINTS as usize],
    /// hv-internal messages waiting for their slot, one per SINT.
    queued: [Option<Message>; SINTS as usize],
}

impl Default for Vp {
    fn default() -> Self {
        Vp {
            scontrol: 0,
            siefp: 0,
            simp: 0,
            sint: [tlfs::SINT_MASKED; SINTS as usize],
            queued: Default::default(),
        }
    }
}

impl Vp {
    fn irq(&self, vp: u32, sint: u32) -> Option<Irq> {
        let s = *self.sint.get(sint as usize)?;
        (self.scontrol & SCONTROL_ENABLE != 0 && s & tlfs::SINT_MASKED == 0).then_some(Irq {
            vp,
            vector: (s & 0xff) as u32,
        })
    }

    /// Writes `msg` into slot `sint` if it is free.
    fn post(
        &self,
        mem: &GuestMemoryMmap,
        vp: u32,
        sint: u32,
        msg: &Message,
    ) -> Result<Option<Irq>, NotDelivered> {
        if self.scontrol & SCONTROL_ENABLE == 0 || self.simp & tlfs::MSR_ENABLE == 0 {
            return Err(NotDelivered::NotReady);
        }
        let slot = (self.simp & !0xfff) + u64::from(sint) * tlfs::MSG_SLOT_SIZE;
        let kind: u32 = mem
            .read_obj(GuestAddress(slot))
            .map_err(|_| NotDelivered::NotReady)?;
        if kind != tlfs::HVMSG_NONE {
            let flags_at = GuestAddress(slot + 5);
            let flags: u8 = mem.read_obj(flags_at).map_err(|_| NotDelivered::NotReady)?;
            let _ = mem.write_obj(flags | tlfs::MSG_FLAG_PENDING, flags_at);
            // The guest may have consumed the slot (and read a clear pending flag, so it will
            // not EOM) between our two accesses: look again, or the message could wait for an
            // EOM that never comes.
            let again: u32 = mem
                .read_obj(GuestAddress(slot))
                .map_err(|_| NotDelivered::NotReady)?;
            if again != tlfs::HVMSG_NONE {
                return Err(NotDelivered::Busy);
            }
        }
        let bytes = msg.slot_bytes();
        // Everything but the type first, the type last: the slot becomes "full" only once its
        // contents are in place.
        mem.write_slice(&bytes[4..], GuestAddress(slot + 4))
            .map_err(|_| NotDelivered::NotReady)?;
        mem.write_obj(msg.kind, GuestAddress(slot))
            .map_err(|_| NotDelivered::NotReady)?;
        Ok(self.irq(vp, sint))
    }

    /// Retries queued messages; returns the interrupts to raise.
    fn redeliver(&mut self, mem: &GuestMemoryMmap, vp: u32, out: &mut Vec<Irq>) {
        for sint in 0..SINTS {
            let Some(msg) = self.queued[sint as usize].take() else {
                continue;
            };
            match self.post(mem, vp, sint, &msg) {
                Ok(irq) => out.extend(irq),
                Err(_) => self.queued[sint as usize] = Some(msg),
            }
        }
    }
}

/// The SynIC of one partition.
#[derive(Debug)]
pub(crate) struct Synic {
    vps: Box<[Mutex<Vp>]>,
    pub(crate) ports: Ports,
}

impl Synic {
    pub(crate) fn new(vcpus: u32) -> Self {
        Synic {
            vps: (0..vcpus).map(|_| Mutex::new(Vp::default())).collect(),
            ports: Ports::new(vcpus),
        }
    }

    /// True when `msr` is a SynIC MSR.
    pub(crate) fn handles(msr: u32) -> bool {
        (tlfs::MSR_SCONTROL..=tlfs::MSR_EOM).contains(&msr)
            || (tlfs::MSR_SINT0..tlfs::MSR_SINT0 + SINTS).contains(&msr)
    }

    fn vp(&self, vp: u32) -> Option<std::sync::MutexGuard<'_, Vp>> {
        self.vps.get(vp as usize).map(super::lock)
    }

    /// RDMSR of a SynIC MSR on VP `vp`.
    pub(crate) fn read(&self, vp: u32, msr: u32) -> Result<u64, Gp> {
        let st = self.vp(vp).ok_or(Gp)?;
        match msr {
            tlfs::MSR_SCONTROL => Ok(st.scontrol),
            tlfs::MSR_SVERSION => Ok(SVERSION),
            tlfs::MSR_SIEFP => Ok(st.siefp),
            tlfs::MSR_SIMP => Ok(st.simp),
            tlfs::MSR_EOM => Ok(0),
            m if (tlfs::MSR_SINT0..tlfs::MSR_SINT0 + SINTS).contains(&m) => {
                Ok(st.sint[(m - tlfs::MSR_SINT0) as usize])
            }
            _ => Err(Gp),
        }
    }

    /// WRMSR of a SynIC MSR on VP `vp`; returns the interrupts of messages it let through.
    pub(crate) fn write(
        &self,
        vp: u32,
        msr: u32,
        value: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<Vec<Irq>, Gp> {
        let mut st = self.vp(vp).ok_or(Gp)?;
        match msr {
            tlfs::MSR_SCONTROL => {
                if value & SCONTROL_RESERVED != 0 {
                    return Err(Gp);
                }
                st.scontrol = value;
            }
            tlfs::MSR_SIEFP | tlfs::MSR_SIMP => {
                if value & PAGE_RESERVED != 0 {
                    return Err(Gp);
                }
                if value & tlfs::MSR_ENABLE != 0 {
                    mem.write_slice(&[0u8; 4096], GuestAddress(value & !0xfff))
                        .map_err(|_| Gp)?;
                }
                if msr == tlfs::MSR_SIEFP {
                    st.siefp = value;
                } else {
                    st.simp = value;
                }
            }
            tlfs::MSR_EOM => {}
            m if (tlfs::MSR_SINT0..tlfs::MSR_SINT0 + SINTS).contains(&m) => {
                if value & SINT_RESERVED != 0 {
                    return Err(Gp);
                }
                if value & tlfs::SINT_MASKED == 0 && value & 0xff < 16 {
                    return Err(Gp);
                }
                st.sint[(m - tlfs::MSR_SINT0) as usize] = value;
            }
            // SVERSION is read-only.
            _ => return Err(Gp),
        }
        // Any change may let a queued message through (EOM above all).
        let mut irqs = Vec::new();
        st.redeliver(mem, vp, &mut irqs);
        Ok(irqs)
    }

    /// Posts `msg` into `sint` of `vp` (a guest's HvCallPostMessage: never queued).
    pub(crate) fn post(
        &self,
        mem: &GuestMemoryMmap,
        vp: u32,
        sint: u32,
        msg: &Message,
    ) -> Result<Option<Irq>, NotDelivered> {
        let st = self.vp(vp).ok_or(NotDelivered::NotReady)?;
        if sint >= SINTS {
            return Err(NotDelivered::NotReady);
        }
        st.post(mem, vp, sint, msg)
    }

    /// An hv-internal message (a timer expiry): delivered, or kept (one per SINT) until EOM.
    pub(crate) fn queue(&self, mem: &GuestMemoryMmap, vp: u32, sint: u32, msg: Message) -> Queued {
        let Some(mut st) = self.vp(vp) else {
            return Queued::Dropped;
        };
        let Some(waiting) = st.queued.get(sint as usize) else {
            return Queued::Dropped;
        };
        if waiting.is_some() {
            return Queued::Dropped;
        }
        match st.post(mem, vp, sint, &msg) {
            Ok(irq) => Queued::Delivered(irq),
            Err(_) => {
                st.queued[sint as usize] = Some(msg);
                Queued::Waiting
            }
        }
    }

    /// Sets event flag `flag` of `sint` of `vp`; an interrupt only when the flag was clear.
    pub(crate) fn signal_event(
        &self,
        mem: &GuestMemoryMmap,
        vp: u32,
        sint: u32,
        flag: u32,
    ) -> Result<Option<Irq>, NotDelivered> {
        let st = self.vp(vp).ok_or(NotDelivered::NotReady)?;
        if st.scontrol & SCONTROL_ENABLE == 0 || st.siefp & tlfs::MSR_ENABLE == 0 {
            return Err(NotDelivered::NotReady);
        }
        if sint >= SINTS || flag >= tlfs::EVENT_FLAGS_PER_SINT {
            return Err(NotDelivered::NotReady);
        }
        let word =
            (st.siefp & !0xfff) + u64::from(sint) * tlfs::MSG_SLOT_SIZE + u64::from(flag / 64) * 8;
        let bit = 1u64 << (flag % 64);
        // The guest clears flags with atomic operations: set ours atomically too.
        let slice = mem
            .get_slice(GuestAddress(word), 8)
            .map_err(|_| NotDelivered::NotReady)?;
        let cell = slice
            .get_atomic_ref::<AtomicU64>(0)
            .map_err(|_| NotDelivered::NotReady)?;
        let old = cell.fetch_or(bit, Ordering::SeqCst);
        Ok(if old & bit == 0 {
            st.irq(vp, sint)
        } else {
            None
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MEM: usize = 1 << 20;
    const SIMP: u64 = 0x8000;
    const SIEFP: u64 = 0x9000;

    fn setup() -> (Synic, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        (Synic::new(2), mem)
    }

    fn enable(s: &Synic, mem: &GuestMemoryMmap, vp: u32, sint: u32, vector: u64) {
        s.write(vp, tlfs::MSR_SIMP, (SIMP + u64::from(vp) * 0x2000) | 1, mem)
            .unwrap();
        s.write(
            vp,
            tlfs::MSR_SIEFP,
            (SIEFP + u64::from(vp) * 0x2000) | 1,
            mem,
        )
        .unwrap();
        s.write(vp, tlfs::MSR_SINT0 + sint, vector, mem).unwrap();
        s.write(vp, tlfs::MSR_SCONTROL, 1, mem).unwrap();
    }

    fn msg(kind: u32) -> Message {
        Message {
            kind,
            port: 0,
            payload: vec![1, 2, 3],
        }
    }

    fn slot(mem: &GuestMemoryMmap, vp: u32, sint: u32) -> (u32, u8, u8) {
        let at = SIMP + u64::from(vp) * 0x2000 + u64::from(sint) * 256;
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
            mem.read_obj(GuestAddress(at + 5)).unwrap(),
        )
    }

    #[test]
    fn msr_reset_values_and_reserved_bits() {
        let (s, mem) = setup();
        assert_eq!(s.read(0, tlfs::MSR_SVERSION), Ok(1));
        assert_eq!(s.read(1, tlfs::MSR_SINT0 + 15), Ok(tlfs::SINT_MASKED));
        assert_eq!(s.read(0, tlfs::MSR_EOM), Ok(0));
        assert_eq!(s.write(0, tlfs::MSR_SVERSION, 1, &mem), Err(Gp));
        assert_eq!(s.write(0, tlfs::MSR_SCONTROL, 2, &mem), Err(Gp));
        for bit in 1..12 {
            assert_eq!(s.write(0, tlfs::MSR_SIMP, SIMP | 1 << bit, &mem), Err(Gp));
            assert_eq!(s.write(0, tlfs::MSR_SIEFP, SIEFP | 1 << bit, &mem), Err(Gp));
        }
        // Pages outside RAM (past its end, in the MMIO window) are refused; the MSR keeps its value.
        assert_eq!(s.write(0, tlfs::MSR_SIMP, MEM as u64 | 1, &mem), Err(Gp));
        assert_eq!(s.write(0, tlfs::MSR_SIEFP, 0xd000_0001, &mem), Err(Gp));
        assert_eq!(s.read(0, tlfs::MSR_SIMP), Ok(0));
        // A disabled page may name any GPA (nothing is written).
        assert_eq!(s.write(0, tlfs::MSR_SIMP, 0xd000_0000, &mem), Ok(vec![]));
        // SINT: reserved bits, and an unmasked vector below 16.
        for bad in [1 << 8, 1 << 15, 1 << 19, 1 << 63] {
            assert_eq!(
                s.write(0, tlfs::MSR_SINT0, 0x40 | bad, &mem),
                Err(Gp),
                "{bad:#x}"
            );
        }
        assert_eq!(s.write(0, tlfs::MSR_SINT0, 0x0f, &mem), Err(Gp));
        assert_eq!(
            s.write(0, tlfs::MSR_SINT0, 0x0f | tlfs::SINT_MASKED, &mem),
            Ok(vec![])
        );
        let v = 0x40 | tlfs::SINT_AUTO_EOI | tlfs::SINT_POLLING;
        s.write(0, tlfs::MSR_SINT0 + 3, v, &mem).unwrap();
        assert_eq!(s.read(0, tlfs::MSR_SINT0 + 3), Ok(v));
        // No such VP or MSR.
        assert_eq!(s.read(2, tlfs::MSR_SCONTROL), Err(Gp));
        assert_eq!(s.read(0, tlfs::MSR_SINT0 + 16), Err(Gp));
        assert!(Synic::handles(tlfs::MSR_SINT0 + 15) && !Synic::handles(tlfs::MSR_SINT0 + 16));
        assert!(!Synic::handles(0x4000_0085));
    }

    /// KVM's own SynIC needs per-vCPU enabling and KVM_EXIT_HYPERV handling the kernel
    /// backend does not do: it refuses these flags instead of exposing a SynIC nobody serves.
    #[test]
    fn kernel_backend_refuses_synic_and_stimer() {
        use super::super::{Features, kernel};
        let kvm = crate::error::kvm_for_tests();
        for f in [Features::SYNIC, Features::STIMER, Features::STIMER_DIRECT] {
            let why = kernel::probe(&kvm, Features(Features::VPINDEX | f), 1).unwrap_err();
            assert!(why.contains("hv-synic"), "{why}");
        }
        // The user backend serves them wherever hv's interface runs.
        assert!(
            super::super::Backend::User
                .probe(&kvm, Features(Features::SYNIC))
                .is_ok()
        );
    }

    #[test]
    fn enabling_a_page_clears_it() {
        let (s, mem) = setup();
        mem.write_obj(0xdead_beefu32, GuestAddress(SIMP + 256))
            .unwrap();
        s.write(0, tlfs::MSR_SIMP, SIMP | 1, &mem).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(SIMP + 256)).unwrap(), 0);
    }

    #[test]
    fn slot_busy_pending_flag_and_redelivery_on_eom() {
        let (s, mem) = setup();
        // Not ready until SCONTROL and SIMP are enabled.
        assert_eq!(s.post(&mem, 1, 2, &msg(5)), Err(NotDelivered::NotReady));
        enable(&s, &mem, 1, 2, 0x50);
        let irq = Irq {
            vp: 1,
            vector: 0x50,
        };
        assert_eq!(s.post(&mem, 1, 2, &msg(5)), Ok(Some(irq)));
        assert_eq!(slot(&mem, 1, 2), (5, 3, 0));
        // Busy: the sender is told, the slot gets MessagePending.
        assert_eq!(s.post(&mem, 1, 2, &msg(6)), Err(NotDelivered::Busy));
        assert_eq!(slot(&mem, 1, 2), (5, 3, tlfs::MSG_FLAG_PENDING));
        // An hv-internal message waits; a second one for the same SINT is dropped.
        assert_eq!(s.queue(&mem, 1, 2, msg(7)), Queued::Waiting);
        assert_eq!(s.queue(&mem, 1, 2, msg(8)), Queued::Dropped);
        // EOM without consuming: still busy, nothing raised.
        assert_eq!(s.write(1, tlfs::MSR_EOM, 0, &mem), Ok(vec![]));
        // The guest consumes (type = NONE), then EOM: the queued message arrives.
        let at = GuestAddress(SIMP + 0x2000 + 2 * 256);
        mem.write_obj(0u32, at).unwrap();
        assert_eq!(s.write(1, tlfs::MSR_EOM, 0, &mem), Ok(vec![irq]));
        assert_eq!(slot(&mem, 1, 2).0, 7);
        // Nothing left queued: the next EOM raises nothing.
        mem.write_obj(0u32, at).unwrap();
        assert_eq!(s.write(1, tlfs::MSR_EOM, 0, &mem), Ok(vec![]));
        // Other SINTs are independent; a masked SINT gets the message but no interrupt.
        assert_eq!(s.post(&mem, 1, 4, &msg(9)), Ok(None));
        assert_eq!(slot(&mem, 1, 4).0, 9);
    }

    #[test]
    fn event_flags_raise_once_until_cleared() {
        let (s, mem) = setup();
        assert_eq!(s.signal_event(&mem, 0, 1, 3), Err(NotDelivered::NotReady));
        enable(&s, &mem, 0, 1, 0x60);
        let irq = Irq {
            vp: 0,
            vector: 0x60,
        };
        assert_eq!(s.signal_event(&mem, 0, 1, 130), Ok(Some(irq)));
        assert_eq!(s.signal_event(&mem, 0, 1, 130), Ok(None), "already set");
        let word = GuestAddress(SIEFP + 256 + 16);
        assert_eq!(mem.read_obj::<u64>(word).unwrap(), 1 << 2);
        mem.write_obj(0u64, word).unwrap();
        assert_eq!(s.signal_event(&mem, 0, 1, 130), Ok(Some(irq)));
        assert_eq!(
            s.signal_event(&mem, 0, 1, 2048),
            Err(NotDelivered::NotReady)
        );
        assert_eq!(s.signal_event(&mem, 0, 16, 0), Err(NotDelivered::NotReady));
        // SynIC disabled: nothing delivered.
        s.write(0, tlfs::MSR_SCONTROL, 0, &mem).unwrap();
        assert_eq!(s.signal_event(&mem, 0, 1, 5), Err(NotDelivered::NotReady));
    }
}
