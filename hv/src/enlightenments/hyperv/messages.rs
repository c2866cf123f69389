//! SynIC messages and connections: the 256-byte message slot of the TLFS and hv's port table,
//! which maps the connection ids a guest names in HvCallPostMessage / HvCallSignalEvent to a
//! target (VP, SINT).
//!
//! The port table is hv's (the TLFS leaves creating ports to the parent partition). hv has no
//! parent partition that creates them, so every partition gets *loopback* connections, computed
//! rather than stored so the table never grows: connection id `CONN_MSG_BASE + vp * 16 + sint`
//! is a message port on that VP's SINT, `CONN_EVENT_BASE + vp * 16 + sint` an event port. Any
//! other id is HV_STATUS_INVALID_CONNECTION_ID.

use hvlab_protocol::hyperv as tlfs;
use vm_memory::GuestMemoryMmap;

use super::synic::{Irq, NotDelivered, Synic};

/// HvCallPostMessage's input, decoded (256 bytes: connection id u32, reserved u32, message type
/// u32, payload size u32, payload 240 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Post {
    pub connection: u32,
    pub kind: u32,
    pub size: u8,
    pub payload: [u8; tlfs::MSG_PAYLOAD_MAX],
}

/// Words of HvCallPostMessage's input.
pub(crate) const POST_WORDS: usize = 32;

/// Decodes and checks HvCallPostMessage's input words: reserved field zero, message type
/// neither HVMSG_NONE nor hypervisor-reserved (bit 31), payload at most 240 bytes
/// (HV_STATUS_INVALID_PARAMETER otherwise).
pub(crate) fn post_input(w: &[u64]) -> Result<Post, u16> {
    if w.len() != POST_WORDS {
        return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }
    let (connection, reserved) = (w[0] as u32, (w[0] >> 32) as u32);
    let (kind, size) = (w[1] as u32, (w[1] >> 32) as u32);
    if reserved != 0 || kind == tlfs::HVMSG_NONE || kind & 0x8000_0000 != 0 {
        return Err(tlfs::STATUS_INVALID_PARAMETER);
    }
    if size as usize > tlfs::MSG_PAYLOAD_MAX {
        return Err(tlfs::STATUS_INVALID_PARAMETER);
    }
    let mut payload = [0u8; tlfs::MSG_PAYLOAD_MAX];
    for (chunk, word) in payload.chunks_exact_mut(8).zip(&w[2..]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Ok(Post {
        connection,
        kind,
        size: size as u8,
        payload,
    })
}

/// Decodes HvCallSignalEvent's input (connection id u32, flag number u16, reserved u16):
/// reserved bits set are HV_STATUS_INVALID_HYPERCALL_INPUT, a flag past the port's 2048 flags
/// HV_STATUS_INVALID_PARAMETER.
pub(crate) fn signal_input(w: u64) -> Result<(u32, u32), u16> {
    if w >> 48 != 0 {
        return Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT);
    }
    let flag = ((w >> 32) & 0xffff) as u32;
    if flag >= tlfs::EVENT_FLAGS_PER_SINT {
        return Err(tlfs::STATUS_INVALID_PARAMETER);
    }
    Ok((w as u32, flag))
}

fn status(e: NotDelivered) -> u16 {
    match e {
        NotDelivered::Busy => tlfs::STATUS_INSUFFICIENT_BUFFERS,
        // hv's choice: the port exists but its target (SynIC, SIMP or SIEFP) is disabled.
        NotDelivered::NotReady => tlfs::STATUS_INVALID_PORT_ID,
    }
}

/// Runs a decoded HvCallPostMessage: the connection must be a message port
/// (HV_STATUS_INVALID_CONNECTION_ID), its target ready (HV_STATUS_INVALID_PORT_ID) and its slot
/// free (HV_STATUS_INSUFFICIENT_BUFFERS; the slot's MessagePending flag is set so the receiver
/// EOMs, and the sender retries).
pub(crate) fn post(synic: &Synic, mem: &GuestMemoryMmap, p: &Post) -> Result<Option<Irq>, u16> {
    let Some(Port::Message { vp, sint }) = synic.ports.lookup(p.connection) else {
        return Err(tlfs::STATUS_INVALID_CONNECTION_ID);
    };
    let msg = Message {
        kind: p.kind,
        port: u64::from(p.connection),
        payload: p.payload[..usize::from(p.size)].to_vec(),
    };
    synic.post(mem, vp, sint, &msg).map_err(status)
}

/// Runs a decoded HvCallSignalEvent: the connection must be an event port.
pub(crate) fn signal(
    synic: &Synic,
    mem: &GuestMemoryMmap,
    connection: u32,
    flag: u32,
) -> Result<Option<Irq>, u16> {
    let Some(Port::Event { vp, sint }) = synic.ports.lookup(connection) else {
        return Err(tlfs::STATUS_INVALID_CONNECTION_ID);
    };
    synic.signal_event(mem, vp, sint, flag).map_err(status)
}

/// Number of SINTs per VP.
pub(crate) const SINTS: u32 = 16;

/// A message to deliver into a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub kind: u32,
    /// The port/sender field (u64 at offset 8).
    pub port: u64,
    /// At most [`tlfs::MSG_PAYLOAD_MAX`] bytes (checked by the callers; longer is cut).
    pub payload: Vec<u8>,
}

impl Message {
    /// The 256 bytes of the slot, except the type (written last, see `Synic::post`).
    pub(crate) fn slot_bytes(&self) -> [u8; tlfs::MSG_SLOT_SIZE as usize] {
        let mut b = [0u8; tlfs::MSG_SLOT_SIZE as usize];
        let n = self.payload.len().min(tlfs::MSG_PAYLOAD_MAX);
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4] = n as u8;
        b[8..16].copy_from_slice(&self.port.to_le_bytes());
        b[16..16 + n].copy_from_slice(&self.payload[..n]);
        b
    }

    /// The timer-expired message of synthetic timer `index` (payload: timer index u32,
    /// reserved u32, expiration time u64, delivery time u64; 100 ns units).
    pub(crate) fn timer_expired(index: u32, expiration: u64, delivery: u64) -> Message {
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&index.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&expiration.to_le_bytes());
        payload.extend_from_slice(&delivery.to_le_bytes());
        Message {
            kind: tlfs::HVMSG_TIMER_EXPIRED,
            port: 0,
            payload,
        }
    }
}

/// What a connection id leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// Messages into `sint` of `vp`.
    Message { vp: u32, sint: u32 },
    /// Event flags of `sint` of `vp`.
    Event { vp: u32, sint: u32 },
}

/// The port table of a partition with `vcpus` vCPUs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    vcpus: u32,
}

impl Ports {
    pub(crate) fn new(vcpus: u32) -> Self {
        Ports { vcpus }
    }

    /// The port behind `connection`, or `None` (HV_STATUS_INVALID_CONNECTION_ID).
    pub(crate) fn lookup(&self, connection: u32) -> Option<Port> {
        let split = |base: u32| {
            let off = connection.checked_sub(base)?;
            let (vp, sint) = (off / SINTS, off % SINTS);
            (vp < self.vcpus).then_some((vp, sint))
        };
        if let Some((vp, sint)) =
            split(tlfs::CONN_MSG_BASE).filter(|_| connection < tlfs::CONN_EVENT_BASE)
        {
            return Some(Port::Message { vp, sint });
        }
        split(tlfs::CONN_EVENT_BASE).map(|(vp, sint)| Port::Event { vp, sint })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn post_words(conn: u32, kind: u32, size: u32) -> Vec<u64> {
        let mut w = vec![0u64; POST_WORDS];
        w[0] = u64::from(conn);
        w[1] = u64::from(kind) | u64::from(size) << 32;
        w[2] = 0x0807_0605_0403_0201;
        w
    }

    #[test]
    fn post_message_status_codes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = Synic::new(2);
        let conn = tlfs::CONN_MSG_BASE + 16 + 1; // VP 1, SINT 1
        // Input checks.
        assert_eq!(
            post_input(&post_words(conn, 1, 241)),
            Err(tlfs::STATUS_INVALID_PARAMETER)
        );
        assert_eq!(
            post_input(&post_words(conn, 0, 8)),
            Err(tlfs::STATUS_INVALID_PARAMETER)
        );
        assert_eq!(
            post_input(&post_words(conn, 0x8000_0001, 8)),
            Err(tlfs::STATUS_INVALID_PARAMETER)
        );
        let mut w = post_words(conn, 1, 8);
        w[0] |= 1 << 40;
        assert_eq!(post_input(&w), Err(tlfs::STATUS_INVALID_PARAMETER));
        assert_eq!(
            post_input(&w[..4]),
            Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT)
        );
        let p = post_input(&post_words(conn, 1, 240)).unwrap();
        assert_eq!(p.payload[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        // Unknown connection, an event port named for a message, a disabled target.
        let bad = post_input(&post_words(tlfs::CONN_MSG_BASE + 32, 1, 8)).unwrap();
        assert_eq!(
            post(&s, &mem, &bad),
            Err(tlfs::STATUS_INVALID_CONNECTION_ID)
        );
        let evt = post_input(&post_words(tlfs::CONN_EVENT_BASE, 1, 8)).unwrap();
        assert_eq!(
            post(&s, &mem, &evt),
            Err(tlfs::STATUS_INVALID_CONNECTION_ID)
        );
        assert_eq!(post(&s, &mem, &p), Err(tlfs::STATUS_INVALID_PORT_ID));
        // Enabled: delivered, then the slot is busy.
        s.write(1, tlfs::MSR_SIMP, 0x4001, &mem).unwrap();
        s.write(1, tlfs::MSR_SINT0 + 1, 0x41, &mem).unwrap();
        s.write(1, tlfs::MSR_SCONTROL, 1, &mem).unwrap();
        assert_eq!(
            post(&s, &mem, &p),
            Ok(Some(Irq {
                vp: 1,
                vector: 0x41
            }))
        );
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x4100)).unwrap(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4104)).unwrap(), 240);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x4108)).unwrap(),
            u64::from(conn)
        );
        assert_eq!(post(&s, &mem, &p), Err(tlfs::STATUS_INSUFFICIENT_BUFFERS));
    }

    /// The two calls through the decoder: the feature gate, forms, alignment, page crossing,
    /// memory outside RAM, and the actions they decode to.
    #[test]
    fn decoder_gates_and_forms() {
        use super::super::Features;
        use super::super::calls::{Action, Regs, decode};
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let w = post_words(tlfs::CONN_MSG_BASE, 3, 16);
        for (i, x) in w.iter().enumerate() {
            mem.write_obj(*x, GuestAddress(0x3000 + 8 * i as u64))
                .unwrap();
        }
        mem.write_obj(
            u64::from(tlfs::CONN_EVENT_BASE) | 9 << 32,
            GuestAddress(0x3ff8),
        )
        .unwrap();
        let on = Features(Features::VPINDEX | Features::SYNIC);
        let run =
            |f: Features, input: u64, rdx: u64| decode(f, 2, 0, Regs { input, rdx, r8: 0 }, &mem);
        let post = tlfs::input(tlfs::CALL_POST_MESSAGE, false, 0, 0, 0);
        let sig = tlfs::input(tlfs::CALL_SIGNAL_EVENT, false, 0, 0, 0);
        let fast_sig = tlfs::input(tlfs::CALL_SIGNAL_EVENT, true, 0, 0, 0);
        let o = run(on, post, 0x3000);
        assert_eq!(o.status, tlfs::STATUS_SUCCESS);
        assert!(matches!(o.action, Some(Action::PostMessage(p)) if p.kind == 3 && p.size == 16));
        let evt = u64::from(tlfs::CONN_EVENT_BASE) | 9 << 32;
        let want = Some(Action::SignalEvent {
            connection: tlfs::CONN_EVENT_BASE,
            flag: 9,
        });
        assert_eq!(run(on, fast_sig, evt).action, want);
        assert_eq!(run(on, sig, 0x3ff8).action, want);
        // Off: unknown code. Fast post (needs XMM input): refused. Alignment, page crossing,
        // outside RAM, reps on a simple call.
        let off = Features(Features::VPINDEX);
        assert_eq!(
            run(off, post, 0x3000).status,
            tlfs::STATUS_INVALID_HYPERCALL_CODE
        );
        assert_eq!(
            run(off, fast_sig, evt).status,
            tlfs::STATUS_INVALID_HYPERCALL_CODE
        );
        let fast_post = tlfs::input(tlfs::CALL_POST_MESSAGE, true, 0, 0, 0);
        assert_eq!(
            run(on, fast_post, 0).status,
            tlfs::STATUS_INVALID_HYPERCALL_INPUT
        );
        assert_eq!(run(on, post, 0x3004).status, tlfs::STATUS_INVALID_ALIGNMENT);
        assert_eq!(run(on, post, 0x3f08).status, tlfs::STATUS_INVALID_ALIGNMENT);
        assert_eq!(
            run(on, post, 1 << 20).status,
            tlfs::STATUS_INVALID_HYPERCALL_INPUT
        );
        assert_eq!(
            run(on, sig, 0xd000_0000).status,
            tlfs::STATUS_INVALID_HYPERCALL_INPUT
        );
        let reps = tlfs::input(tlfs::CALL_SIGNAL_EVENT, true, 0, 1, 0);
        assert_eq!(
            run(on, reps, evt).status,
            tlfs::STATUS_INVALID_HYPERCALL_INPUT
        );
        // CPL3.
        let o = decode(
            on,
            2,
            3,
            Regs {
                input: fast_sig,
                rdx: evt,
                r8: 0,
            },
            &mem,
        );
        assert_eq!(o.status, tlfs::STATUS_ACCESS_DENIED);
    }

    #[test]
    fn signal_event_status_codes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = Synic::new(1);
        let conn = tlfs::CONN_EVENT_BASE + 5;
        assert_eq!(
            signal_input(u64::from(conn) | 1 << 48),
            Err(tlfs::STATUS_INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            signal_input(u64::from(conn) | 2048 << 32),
            Err(tlfs::STATUS_INVALID_PARAMETER)
        );
        assert_eq!(signal_input(u64::from(conn) | 7 << 32), Ok((conn, 7)));
        assert_eq!(signal(&s, &mem, conn, 7), Err(tlfs::STATUS_INVALID_PORT_ID));
        assert_eq!(
            signal(&s, &mem, tlfs::CONN_MSG_BASE + 5, 7),
            Err(tlfs::STATUS_INVALID_CONNECTION_ID)
        );
        assert_eq!(
            signal(&s, &mem, 99, 7),
            Err(tlfs::STATUS_INVALID_CONNECTION_ID)
        );
        s.write(0, tlfs::MSR_SIEFP, 0x5001, &mem).unwrap();
        s.write(0, tlfs::MSR_SINT0 + 5, 0x42, &mem).unwrap();
        s.write(0, tlfs::MSR_SCONTROL, 1, &mem).unwrap();
        assert_eq!(
            signal(&s, &mem, conn, 7),
            Ok(Some(Irq {
                vp: 0,
                vector: 0x42
            }))
        );
        assert_eq!(signal(&s, &mem, conn, 7), Ok(None));
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x5000 + 5 * 256)).unwrap(),
            1 << 7
        );
    }

    #[test]
    fn loopback_connections_and_unknown_ids() {
        let p = Ports::new(2);
        assert_eq!(
            p.lookup(tlfs::CONN_MSG_BASE + 16 + 3),
            Some(Port::Message { vp: 1, sint: 3 })
        );
        assert_eq!(
            p.lookup(tlfs::CONN_EVENT_BASE + 15),
            Some(Port::Event { vp: 0, sint: 15 })
        );
        // VP 2 does not exist; ids below and between the bases name nothing.
        assert_eq!(p.lookup(tlfs::CONN_MSG_BASE + 32), None);
        assert_eq!(p.lookup(tlfs::CONN_EVENT_BASE + 32), None);
        assert_eq!(p.lookup(0), None);
        assert_eq!(p.lookup(tlfs::CONN_MSG_BASE - 1), None);
        assert_eq!(p.lookup(u32::MAX), None);
    }

    #[test]
    fn slot_layout() {
        let m = Message {
            kind: 7,
            port: 0x1122,
            payload: vec![0xaa; 300],
        };
        let b = m.slot_bytes();
        assert_eq!(&b[0..4], &7u32.to_le_bytes());
        assert_eq!(b[4], 240, "payload cut to the slot");
        assert_eq!(b[5], 0, "no pending flag");
        assert_eq!(&b[8..10], &[0x22, 0x11]);
        assert!(b[16..].iter().all(|&x| x == 0xaa));
        let t = Message::timer_expired(2, 100, 105);
        assert_eq!(t.kind, tlfs::HVMSG_TIMER_EXPIRED);
        assert_eq!(t.payload.len(), 24);
        assert_eq!(&t.payload[8..16], &100u64.to_le_bytes());
    }
}
