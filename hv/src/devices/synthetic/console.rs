//! virtio-console with one port and no multiport: queue 0 receives (device to driver), queue 1
//! transmits. What the driver transmits goes to the partition's console capture and, as a host
//! loopback, back to the driver on the receive queue while it has receive buffers posted;
//! bytes that find none are dropped and counted, as on a line nobody reads (at most
//! [`LOOPBACK_LIMIT`] bytes wait at once).

use std::collections::VecDeque;
use std::io::Write;

use vm_memory::GuestMemoryMmap;

use super::chain::{self, Chain};
use super::{Served, VirtioBackend};
use crate::devices::emulated::serial::ConsoleSink;

/// virtio device ID of a console.
pub const DEVICE_ID: u32 = 3;
/// Bytes waiting for receive buffers, at most.
pub const LOOPBACK_LIMIT: usize = 64 * 1024;
/// Largest transmit chain the device reads.
const MAX_TX: u64 = 64 * 1024;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub dropped: u64,
}

/// The virtio-console backend.
#[derive(Debug)]
pub struct Console {
    sink: ConsoleSink,
    loopback: VecDeque<u8>,
    pub stats: ConsoleStats,
}

impl Console {
    /// A console writing into `sink`.
    pub fn new(sink: ConsoleSink) -> Console {
        Console {
            sink,
            loopback: VecDeque::new(),
            stats: ConsoleStats::default(),
        }
    }
}

impl VirtioBackend for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queues(&self) -> usize {
        2
    }

    fn config(&self) -> Vec<u8> {
        vec![0; 12] // cols, rows, max_nr_ports, emerg_wr: unused without their features
    }

    fn wants(&self, queue: usize) -> bool {
        queue != 0 || !self.loopback.is_empty()
    }

    fn serve(&mut self, queue: usize, mem: &GuestMemoryMmap, c: &Chain) -> Served {
        if queue == 0 {
            let (a, b) = self.loopback.as_slices();
            let mut data = Vec::with_capacity(a.len() + b.len());
            data.extend_from_slice(a);
            data.extend_from_slice(b);
            let n = match chain::write_writable(mem, c, &data) {
                Ok(n) => n,
                Err(e) => return Served::Broken(e),
            };
            self.loopback.drain(..n);
            self.stats.rx_bytes += n as u64;
            return Served::Used(n as u32);
        }
        let mut data = Vec::new();
        if let Err(e) = chain::read_readable(mem, c, 0, &mut data, MAX_TX) {
            return Served::Broken(e);
        }
        let _ = self.sink.write_all(&data);
        self.stats.tx_bytes += data.len() as u64;
        let room = LOOPBACK_LIMIT.saturating_sub(self.loopback.len());
        let keep = room.min(data.len());
        self.loopback.extend(&data[..keep]);
        self.stats.dropped += (data.len() - keep) as u64;
        Served::Used(0)
    }

    fn starved(&mut self, queue: usize) {
        if queue == 0 {
            self.stats.dropped += self.loopback.len() as u64;
            self.loopback.clear();
        }
    }

    fn reset(&mut self) {
        self.loopback.clear();
    }

    fn stats(&self) -> String {
        let s = self.stats;
        format!(
            "tx_bytes={} rx_bytes={} loopback_dropped={}",
            s.tx_bytes, s.rx_bytes, s.dropped
        )
    }
}
