//! The console over a VMBus-style channel (`hvlab_protocol::vmbus::console` has the packet
//! format): the guest's output goes to the partition's console; a packet with FLAG_LOOPBACK
//! comes back as a data packet with the same bytes (the read-back path console-io measures,
//! as hv's virtio-console loopback does); one with FLAG_COMPLETION_REQUESTED alone gets a
//! completion with the byte count. A length field past the packet or over `MAX_LINE` is cut to
//! what the packet holds, counted and noted.

use std::io::Write;

use hvlab_protocol::vmbus::{self as proto, console as wire};
use vm_memory::GuestMemoryMmap;

use super::ChannelDevice;
use super::ring::Packet;
use crate::devices::NoteSink;
use crate::devices::emulated::serial::ConsoleSink;

/// The console of one channel.
#[derive(Debug)]
pub struct Console {
    sink: ConsoleSink,
    notes: NoteSink,
    tx_bytes: u64,
    looped: u64,
    bad_lengths: u64,
}

const HEADER: usize = 8;

impl Console {
    /// A console writing into `sink`.
    pub fn new(sink: ConsoleSink, notes: NoteSink) -> Console {
        Console {
            sink,
            notes,
            tx_bytes: 0,
            looped: 0,
            bad_lengths: 0,
        }
    }
}

impl ChannelDevice for Console {
    fn class(&self) -> u32 {
        proto::DEVICE_CONSOLE
    }

    fn name(&self) -> &'static str {
        "vmbus-console"
    }

    fn max_reply(&self, request_len: usize) -> usize {
        request_len.max(HEADER)
    }

    fn on_packet(&mut self, _: &GuestMemoryMmap, p: &Packet) -> Option<Packet> {
        if p.kind != proto::PACKET_DATA {
            self.bad_lengths += 1;
            self.notes
                .note(format!("vmbus-console: packet kind {} ignored", p.kind));
            return None;
        }
        let said =
            p.payload
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as usize;
        let held = p.payload.len().saturating_sub(HEADER).min(wire::MAX_LINE);
        if said > held {
            self.bad_lengths += 1;
            self.notes.note(format!(
                "vmbus-console: length {said} past the packet's {held} bytes; cut"
            ));
        }
        let n = said.min(held);
        let bytes = p.payload.get(HEADER..HEADER + n).unwrap_or(&[]);
        let _ = self.sink.write_all(bytes);
        self.tx_bytes += n as u64;
        let mut reply = Vec::with_capacity(HEADER + n);
        reply.extend_from_slice(&(n as u32).to_le_bytes());
        reply.extend_from_slice(&0u32.to_le_bytes());
        if p.flags & wire::FLAG_LOOPBACK != 0 {
            self.looped += n as u64;
            reply.extend_from_slice(bytes);
            return Some(Packet {
                kind: proto::PACKET_DATA,
                flags: 0,
                transaction: p.transaction,
                payload: reply,
            });
        }
        (p.flags & proto::FLAG_COMPLETION_REQUESTED != 0).then_some(Packet {
            kind: proto::PACKET_COMPLETION,
            flags: 0,
            transaction: p.transaction,
            payload: reply,
        })
    }

    fn stats(&self) -> String {
        format!(
            "tx_bytes={} loopback_bytes={} bad_lengths={}",
            self.tx_bytes, self.looped, self.bad_lengths
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::emulated::serial::ConsoleCapture;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;

    fn line(flags: u16, said: u32, bytes: &[u8]) -> Packet {
        let mut p = said.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(bytes);
        Packet {
            kind: proto::PACKET_DATA,
            flags,
            transaction: 5,
            payload: p,
        }
    }

    #[test]
    fn output_loopback_completion_and_bad_lengths() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let capture = Arc::new(Mutex::new(ConsoleCapture::new(None)));
        let mut c = Console::new(ConsoleSink(capture.clone()), NoteSink::default());
        assert_eq!(c.on_packet(&mem, &line(0, 3, b"hi\n")), None);
        let done = c
            .on_packet(&mem, &line(proto::FLAG_COMPLETION_REQUESTED, 2, b"ok"))
            .unwrap();
        assert_eq!(done.kind, proto::PACKET_COMPLETION);
        assert_eq!(&done.payload[..4], &2u32.to_le_bytes());
        let back = c
            .on_packet(&mem, &line(wire::FLAG_LOOPBACK, 4, b"abcd"))
            .unwrap();
        assert_eq!((back.kind, back.transaction), (proto::PACKET_DATA, 5));
        assert_eq!(&back.payload[HEADER..], b"abcd");
        // A length past the packet is cut to what it holds.
        let cut = c
            .on_packet(&mem, &line(wire::FLAG_LOOPBACK, 9999, b"xy"))
            .unwrap();
        assert_eq!(&cut.payload[..4], &2u32.to_le_bytes());
        assert_eq!(c.bad_lengths, 1);
        let text = capture.lock().unwrap().text();
        assert!(text.contains("hi\nokabcdxy"), "{text:?}");
    }
}
