//! The echo device: every packet comes back with its kind, transaction id and payload. It has
//! no work of its own, so what a request costs over it is the transport's cost.

use hvlab_protocol::vmbus as proto;
use vm_memory::GuestMemoryMmap;

use super::ChannelDevice;
use super::ring::Packet;

#[derive(Debug, Default)]
pub struct Echo {
    packets: u64,
}

impl ChannelDevice for Echo {
    fn class(&self) -> u32 {
        proto::DEVICE_ECHO
    }

    fn name(&self) -> &'static str {
        "vmbus-echo"
    }

    fn max_reply(&self, request_len: usize) -> usize {
        request_len
    }

    fn on_packet(&mut self, _: &GuestMemoryMmap, p: &Packet) -> Option<Packet> {
        self.packets += 1;
        Some(Packet {
            kind: p.kind,
            flags: 0,
            transaction: p.transaction,
            payload: p.payload.clone(),
        })
    }

    fn stats(&self) -> String {
        format!("packets={}", self.packets)
    }
}
