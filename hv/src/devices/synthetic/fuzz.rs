//! Seeded fuzzing of the transport and queue service without a VM: a device state over a small
//! guest memory takes random register writes (among them the hostile sequences: re-ready with
//! rings at the end of RAM or over the MMIO window, QUEUE_NUM changes, reset mid-flight,
//! renegotiation after DRIVER_OK, overlapping rings, QUEUE_SEL out of range) and random bytes in
//! ring memory, and serves after each. Every call must return, do bounded work (counted through
//! the transport stats) and never panic.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::blk::Blk;
use super::console::Console;
use super::service::{MAX_PASSES, NOTIFY_RETRIES};
use super::testing::{negotiate, put_read_request};
use super::{DeviceState, QUEUE_MAX, Tuning, reg, status};
use crate::counters::cputime::ThreadClock;
use crate::devices::NoteSink;
use crate::devices::disk::Disk;
use crate::devices::emulated::serial::{ConsoleCapture, ConsoleSink};

/// Guest memory of the fuzzed device: small, so that random addresses often land in it.
const MEM: u64 = 0x10000;
/// Operations per seed.
const OPS: usize = 48;
/// Seeds per run.
const SEEDS: u64 = 3000;

/// xorshift64*: tiny, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A value a hostile driver would write: small, a power of two, an address in, at the
    /// end of, or past guest memory, over the MMIO window, or anything.
    fn value(&mut self) -> u32 {
        match self.below(9) {
            0 => self.below(4) as u32,
            1 => 1 << self.below(17),
            2 => (self.below(MEM) & !0xf) as u32,
            3 => (MEM - 2 * (1 + self.below(8))) as u32,
            4 => 0xd000_0000 + (self.below(0x1000) as u32 & !3),
            5 => u32::MAX - self.below(16) as u32,
            6 => 0x1000 * self.below(16) as u32,
            _ => self.next() as u32,
        }
    }
}

fn device(rng: &mut Rng) -> (DeviceState, GuestMemoryMmap, NoteSink) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let notes = NoteSink::default();
    let backend: Box<dyn super::VirtioBackend> = if rng.below(2) == 0 {
        let disk = Disk::memory(64 << 10).unwrap();
        Box::new(Blk::new(Arc::new(Mutex::new(disk)), notes.clone()))
    } else {
        let sink = ConsoleSink(Arc::new(Mutex::new(ConsoleCapture::new(None))));
        Box::new(Console::new(sink))
    };
    let tuning = Tuning {
        event_idx: rng.below(2) == 0,
        polling: rng.below(4) == 0,
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let s = DeviceState::new("fuzz", backend, mem.clone(), irq, notes.clone(), tuning).unwrap();
    (s, mem, notes)
}

/// A driver's setup of every queue: queue `i` at `0x1000 + 0x3000 * i` (descriptors), then
/// available and used rings in the next two pages, 16 entries; then DRIVER_OK.
fn setup(s: &mut DeviceState) {
    negotiate(s);
    for i in 0..s.queues.len() as u64 {
        let base = 0x1000 + 0x3000 * i;
        s.write_reg(reg::QUEUE_SEL, i as u32);
        s.write_reg(reg::QUEUE_NUM, 16);
        s.write_reg(reg::QUEUE_DESC_LOW, base as u32);
        s.write_reg(reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        s.write_reg(reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        s.write_reg(reg::QUEUE_READY, 1);
    }
    let st = s.status();
    s.write_reg(reg::STATUS, st | status::DRIVER_OK);
}

const REGS: [u64; 22] = [
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::CONFIG_GENERATION,
    reg::MAGIC,
    reg::QUEUE_NUM_MAX,
    reg::INTERRUPT_STATUS,
    reg::CONFIG,
    reg::QUEUE_READY,
    reg::QUEUE_DRIVER_LOW,
];

/// One random operation by the driver.
fn op(s: &mut DeviceState, mem: &GuestMemoryMmap, rng: &mut Rng) {
    let nq = s.queues.len() as u64;
    let qi = rng.below(nq) as usize;
    match rng.below(12) {
        0 | 1 => {
            let off = if rng.below(8) == 0 {
                rng.below(0x200) & !3
            } else {
                REGS[rng.below(REGS.len() as u64) as usize]
            };
            let v = rng.value();
            s.write_reg(off, v);
        }
        2 | 3 => {
            // Random bytes, mostly into the rings.
            let at = if rng.below(4) == 0 {
                rng.below(MEM)
            } else {
                0x1000 + rng.below(0x6000)
            };
            let len = 1 + rng.below(16) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = mem.write_slice(&bytes, GuestAddress(at));
        }
        4 | 5 => {
            // Publish: heads into the available ring, then move its index.
            let q = &s.queues[qi];
            let (avail, size) = (q.avail_ring(), u64::from(q.size().max(1)));
            let idx = mem.read_obj::<u16>(GuestAddress(avail + 2)).unwrap_or(0);
            let n = if rng.below(8) == 0 {
                rng.next() as u16
            } else {
                1 + rng.below(4) as u16
            };
            for k in 0..n.min(8) {
                let slot = u64::from(idx.wrapping_add(k)) % size;
                let head = (rng.below(4) * 3) as u16;
                let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
            }
            let _ = mem.write_obj(idx.wrapping_add(n), GuestAddress(avail + 2));
            s.write_reg(reg::QUEUE_NOTIFY, qi as u32);
        }
        6 => {
            // Well-formed requests at heads 0, 3, 6, 9 of the queue's table.
            let table = s.queues[qi].desc_table();
            for h in 0..4u16 {
                if table + 16 * 12 <= MEM {
                    put_read_request(mem, table, h * 3, 0x8000 + 0x400 * u64::from(h));
                }
            }
        }
        7 => {
            // Re-ready with the available ring at the end of RAM (finding 1), over the MMIO
            // window, or on top of the descriptor table.
            let avail = match rng.below(3) {
                0 => MEM - 4,
                1 => 0xd000_0000,
                _ => s.queues[qi].desc_table(),
            };
            s.write_reg(reg::QUEUE_SEL, qi as u32);
            s.write_reg(reg::QUEUE_READY, 0);
            s.write_reg(reg::QUEUE_DRIVER_LOW, avail as u32);
            s.write_reg(reg::QUEUE_READY, 1);
            let _ = mem.write_obj(rng.next() as u16, GuestAddress(avail + 2));
        }
        8 => {
            // QUEUE_NUM change around a re-ready.
            s.write_reg(reg::QUEUE_SEL, qi as u32);
            s.write_reg(reg::QUEUE_READY, 0);
            s.write_reg(reg::QUEUE_NUM, 1 << rng.below(10));
            s.write_reg(reg::QUEUE_READY, 1);
        }
        9 => {
            // Reset mid-flight, then maybe a fresh setup.
            s.write_reg(reg::STATUS, 0);
            if rng.below(2) == 0 {
                setup(s);
            }
        }
        10 => {
            // Renegotiation after DRIVER_OK.
            s.write_reg(reg::DRIVER_FEATURES_SEL, rng.below(3) as u32);
            s.write_reg(reg::DRIVER_FEATURES, rng.next() as u32);
            let v =
                status::ACKNOWLEDGE | status::DRIVER | (rng.below(2) as u32 * status::FEATURES_OK);
            s.write_reg(reg::STATUS, v);
        }
        _ => {
            s.write_reg(reg::QUEUE_SEL, rng.value());
            s.write_reg(reg::QUEUE_READY, rng.below(3) as u32);
        }
    }
}

#[derive(Debug, Default)]
struct Totals {
    calls: u64,
    chains: u64,
    needs_reset: u64,
    max_steps: u64,
}

fn run_seed(seed: u64, t: &mut Totals) {
    let mut rng = Rng::new(seed);
    let (mut s, mem, _notes) = device(&mut rng);
    if rng.below(8) != 0 {
        setup(&mut s);
    }
    let nq = s.queues.len() as u64;
    let steps_bound = MAX_PASSES as u64 * nq * (u64::from(QUEUE_MAX) + NOTIFY_RETRIES as u64 + 1);
    let chains_bound = MAX_PASSES as u64 * nq * u64::from(QUEUE_MAX);
    for _ in 0..OPS {
        op(&mut s, &mem, &mut rng);
        let before = s.stats;
        let served = s.serve_all();
        let after = s.stats;
        let steps = after.steps - before.steps;
        assert!(steps <= steps_bound, "seed {seed}: {steps} service steps");
        assert!(
            after.passes - before.passes <= MAX_PASSES as u64,
            "seed {seed}"
        );
        assert!(served <= after.chains - before.chains, "seed {seed}");
        assert!(after.chains - before.chains <= chains_bound, "seed {seed}");
        t.calls += 1;
        t.chains += served;
        t.max_steps = t.max_steps.max(steps);
    }
    if s.status() & status::DEVICE_NEEDS_RESET != 0 {
        t.needs_reset += 1;
    }
}

#[test]
fn random_registers_and_ring_bytes_always_end_in_bounded_work() {
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread, so that a service loop that never returns fails the test instead of hanging it.
    std::thread::spawn(move || {
        let clock = ThreadClock::current();
        let cpu0 = clock.as_ref().map_or(0, ThreadClock::read_ns);
        let t0 = Instant::now();
        let mut t = Totals::default();
        for seed in 0..SEEDS {
            run_seed(seed, &mut t);
        }
        let cpu = Duration::from_nanos(clock.as_ref().map_or(0, ThreadClock::read_ns) - cpu0);
        let _ = tx.send((t, t0.elapsed(), cpu));
    });
    let (t, took, cpu) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("fuzzing did not finish: a service call hung (or a seed panicked)");
    eprintln!("fuzz: {SEEDS} seeds, {t:?}, {took:?} wall, {cpu:?} CPU");
    assert_eq!(t.calls, SEEDS * OPS as u64);
    // The seeds reach both the good path and the broken one.
    assert!(t.chains > 0, "{t:?}");
    assert!(t.needs_reset > 0, "{t:?}");
}
