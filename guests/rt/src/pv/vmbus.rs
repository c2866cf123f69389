//! hv's VMBus-style channels, client side: one ring in guest memory with the layout hv's
//! provider reads (`hvlab_protocol::vmbus`; control page: write index @0, read index @4,
//! interrupt mask @8, pending send size @12, feature bits @64; then the data area), packet
//! framing (16-byte descriptor, payload padded to 8 bytes, 8-byte trailer) and both signal
//! rules: a writer signals only when the ring was empty before its packet and the reader has
//! not masked; a reader signals only when its read freed the space the writer asked for
//! (pending send size).
//!
//! [`Client`] is the BSP's connection: its SynIC pages, the management SINT (offers, open,
//! hv's close notices) and the channel SINT (event flag = channel id), and [`Channel`] an
//! open channel with both rings, for the device drivers (blk-io's and console-io's `vmbus`).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use hvlab_protocol::hyperv as tlfs;
use hvlab_protocol::vmbus as proto;

use super::hyperv;
use super::synic::{self, PostInput, SynicPages};
use crate::{cpu, idt};

const CONTROL: usize = 4096;
const DESC: usize = 16;
const TRAILER: usize = 8;

/// One ring: its control page at `base`, `pages` pages in all (control included).
#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
    size: u32,
}

// SAFETY: a ring is used by one CPU at a time on the guest side (hv is the other side).
unsafe impl Send for Ring {}

impl Ring {
    /// The ring at `base` (page-aligned, identity-mapped RAM) of `pages` pages; zeroes its
    /// control page.
    ///
    /// # Safety
    /// `base..base + pages * 4096` must be memory this ring owns.
    pub unsafe fn new(base: *mut u8, pages: usize) -> Ring {
        // SAFETY: the caller gives us the control page.
        unsafe { core::ptr::write_bytes(base, 0, CONTROL) };
        Ring {
            base,
            size: ((pages - 1) * CONTROL) as u32,
        }
    }

    fn ctl(&self, off: usize) -> u32 {
        // SAFETY: inside the control page, aligned.
        unsafe { core::ptr::read_volatile(self.base.add(off) as *const u32) }
    }

    fn set_ctl(&self, off: usize, v: u32) {
        // SAFETY: as in `ctl`.
        unsafe { core::ptr::write_volatile(self.base.add(off) as *mut u32, v) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area follows the control page.
        unsafe { self.base.add(CONTROL) }
    }

    fn used(&self, write: u32, read: u32) -> u32 {
        if write >= read {
            write - read
        } else {
            self.size - read + write
        }
    }

    // Whole u64 accesses: every index, descriptor, payload (padded) and trailer is 8-aligned
    // and the data area is a multiple of 8, so no word straddles the wrap. (Kernel-mode guest
    // code may run in the host's instruction emulator: one access per 8 bytes, not per byte.)
    fn put(&self, at: usize, w: u64) {
        let off = (at % self.size as usize) & !7;
        // SAFETY: `off` is an aligned word inside the data area.
        unsafe { core::ptr::write_volatile(self.data().add(off) as *mut u64, w) };
    }

    fn get(&self, at: usize) -> u64 {
        let off = (at % self.size as usize) & !7;
        // SAFETY: as in `put`.
        unsafe { core::ptr::read_volatile(self.data().add(off) as *const u64) }
    }

    /// Writes one packet; `None` when it does not fit, else whether to signal the reader.
    pub fn write(&self, kind: u16, transaction: u64, payload: &[u8]) -> Option<bool> {
        self.write_flags(kind, 0, transaction, payload)
    }

    /// [`Self::write`] with packet flags.
    pub fn write_flags(
        &self,
        kind: u16,
        flags: u16,
        transaction: u64,
        payload: &[u8],
    ) -> Option<bool> {
        let len = (DESC + payload.len()).div_ceil(8) * 8;
        let write = self.ctl(0);
        let read = self.ctl(4);
        let free = self.size - self.used(write, read);
        if (len + TRAILER) as u32 >= free {
            return None;
        }
        let at = write as usize;
        let d0 = u64::from(kind)
            | ((DESC / 8) as u64) << 16
            | ((len / 8) as u64) << 32
            | u64::from(flags) << 48;
        self.put(at, d0);
        self.put(at + 8, transaction);
        // Whole words straight from the payload (one load each: kernel-mode guest code may be
        // emulated instruction by instruction), the tail byte by byte.
        let whole = payload.len() / 8;
        for i in 0..whole {
            // SAFETY: bytes 8i..8i+8 are inside `payload`; unaligned reads are allowed.
            let w = unsafe { core::ptr::read_unaligned(payload.as_ptr().add(8 * i) as *const u64) };
            self.put(at + DESC + 8 * i, w);
        }
        if payload.len() > 8 * whole {
            let w = payload[8 * whole..]
                .iter()
                .rev()
                .fold(0u64, |w, &b| w << 8 | u64::from(b));
            self.put(at + DESC + 8 * whole, w);
        }
        self.put(at + len, u64::from(write) << 32);
        fence(Ordering::SeqCst);
        self.set_ctl(0, (write + (len + TRAILER) as u32) % self.size);
        fence(Ordering::SeqCst);
        Some(self.ctl(8) == 0 && self.ctl(4) == write)
    }

    /// Writes descriptor word `d0` at the write index and moves the index by `advance` bytes,
    /// as a hostile or broken guest would (tests only).
    pub fn write_raw(&self, d0: u64, advance: u32) {
        let write = self.ctl(0);
        self.put(write as usize, d0);
        fence(Ordering::SeqCst);
        self.set_ctl(0, (write + advance) % self.size);
    }

    /// Overwrites the write index with `v`, as a hostile or broken guest would (tests only).
    pub fn set_write_index_raw(&self, v: u32) {
        self.set_ctl(0, v);
    }

    /// True when a packet is waiting.
    pub fn has_data(&self) -> bool {
        self.ctl(0) != self.ctl(4)
    }

    /// Free bytes now.
    pub fn free(&self) -> u32 {
        self.size - self.used(self.ctl(0), self.ctl(4))
    }

    /// Masks (or unmasks) the writer's signals to this reader.
    pub fn set_interrupt_mask(&self, masked: bool) {
        self.set_ctl(8, u32::from(masked));
    }

    /// [`Self::read`], and whether this read freed the space the writer is waiting for (the
    /// pending-send-size rule): then the reader must signal it.
    pub fn read_signal(&self, buf: &mut [u8]) -> Option<(u16, u64, usize, bool)> {
        let free_before = self.free();
        let r = self.read(buf)?;
        fence(Ordering::SeqCst);
        let pending = self.ctl(12);
        // Cheapest test first: a writer that asked for nothing (the usual case) costs one load.
        let wants = pending != 0
            && free_before < pending
            && self.ctl(64) & 1 != 0
            && self.free() >= pending;
        Some((r.0, r.1, r.2, wants))
    }

    /// Reads one packet's payload into `buf` (cut to its length); (kind, transaction, payload
    /// bytes including padding), or `None` when empty or malformed.
    pub fn read(&self, buf: &mut [u8]) -> Option<(u16, u64, usize)> {
        let write = self.ctl(0);
        let read = self.ctl(4);
        if write == read {
            return None;
        }
        let at = read as usize;
        let d0 = self.get(at);
        let kind = d0 as u16;
        let offset = ((d0 >> 16) & 0xffff) as usize * 8;
        let len = ((d0 >> 32) & 0xffff) as usize * 8;
        let transaction = self.get(at + 8);
        if offset < DESC || offset > len || len + TRAILER > self.used(write, read) as usize {
            return None;
        }
        let n = len - offset;
        let take = n.min(buf.len());
        let whole = take / 8;
        for i in 0..whole {
            let w = self.get(at + offset + 8 * i);
            // SAFETY: bytes 8i..8i+8 are inside `buf` (8i + 8 <= take <= buf.len()).
            unsafe { core::ptr::write_unaligned(buf.as_mut_ptr().add(8 * i) as *mut u64, w) };
        }
        if take > 8 * whole {
            let w = self.get(at + offset + 8 * whole);
            for (j, b) in buf[8 * whole..take].iter_mut().enumerate() {
                *b = (w >> (8 * j)) as u8;
            }
        }
        fence(Ordering::SeqCst);
        self.set_ctl(4, ((at + len + TRAILER) % self.size as usize) as u32);
        Some((kind, transaction, n))
    }
}

/// SINT of hv's management messages and of channel events (`hvlab_protocol::vmbus`).
const SINT_MGMT: u32 = proto::SINT_MANAGEMENT;
const SINT_CHANNEL: u32 = proto::SINT_CHANNEL;
/// The vectors the client routes those SINTs to.
pub const MGMT_VECTOR: u8 = 0x58;
pub const CHANNEL_VECTOR: u8 = 0x59;
/// How long the client waits for hv's answer to a management message (TSC ticks).
const REPLY_LIMIT: u64 = 1 << 36;

static PAGES: SynicPages = SynicPages::new();
static INPUT: PostInput = PostInput::new();
/// Management messages consumed, and the first payload words of the last one.
static MGMT_MSGS: AtomicU32 = AtomicU32::new(0);
static LAST: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
/// Channel interrupts taken.
static CHANNEL_IRQS: AtomicU64 = AtomicU64::new(0);
/// Channels hv closed (bit = channel id), from CHANNEL_CLOSED notices.
static CLOSED: AtomicU64 = AtomicU64::new(0);

fn on_management(_: u8) {
    for (i, w) in LAST.iter().enumerate() {
        w.store(PAGES.payload_word(SINT_MGMT, i), Ordering::Release);
    }
    if PAGES.consume(SINT_MGMT).0 != tlfs::HVMSG_NONE {
        let w0 = LAST[0].load(Ordering::Acquire);
        if w0 as u32 == proto::CHANNEL_CLOSED
            && let Some(bit) = 1u64.checked_shl((w0 >> 32) as u32)
        {
            CLOSED.fetch_or(bit, Ordering::AcqRel);
        }
        MGMT_MSGS.fetch_add(1, Ordering::AcqRel);
    }
}

fn on_channel(_: u8) {
    CHANNEL_IRQS.fetch_add(1, Ordering::Relaxed);
    // The flags say which channel; each driver looks at its own ring, so clearing is enough.
    PAGES.take_events(SINT_CHANNEL);
}

/// Why the client could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmbusError {
    /// The hypervisor does not show the SynIC (no `hv-synic`).
    NoSynic,
    /// hv refused a management message (its status).
    Refused(u16),
    /// No answer within the limit.
    NoReply,
    /// No channel of the device class asked for.
    NoDevice,
    /// hv refused the open (its OPEN_RESULT status).
    Open(u32),
}

/// The BSP's connection to hv's channels.
pub struct Client;

impl Client {
    /// Enables this CPU's SynIC (its pages, the management and channel SINTs) and the
    /// hypercall page. Call once, on the BSP.
    pub fn connect() -> Result<Client, VmbusError> {
        let info = hyperv::detect().ok_or(VmbusError::NoSynic)?;
        if info.privileges & tlfs::PRIV_SYNIC_MSRS == 0 {
            return Err(VmbusError::NoSynic);
        }
        hyperv::enable_hypercalls();
        idt::register(MGMT_VECTOR, on_management);
        idt::register(CHANNEL_VECTOR, on_channel);
        PAGES.enable();
        synic::set_sint(SINT_MGMT, MGMT_VECTOR);
        synic::set_sint(SINT_CHANNEL, CHANNEL_VECTOR);
        Ok(Client)
    }

    /// One management message (payload words, `size` bytes) and hv's reply (its first eight
    /// payload words).
    pub fn request(&self, words: &[u64], size: u32) -> Result<[u64; 8], VmbusError> {
        let m0 = MGMT_MSGS.load(Ordering::Acquire);
        let st = synic::post_message(&INPUT, proto::CONN_MANAGEMENT, proto::MSG_TYPE, size, words);
        if st != tlfs::STATUS_SUCCESS {
            return Err(VmbusError::Refused(st));
        }
        let start = cpu::rdtsc();
        loop {
            cpu::cli();
            if MGMT_MSGS.load(Ordering::Acquire) != m0 {
                cpu::sti();
                return Ok(core::array::from_fn(|i| LAST[i].load(Ordering::Acquire)));
            }
            if cpu::rdtsc().wrapping_sub(start) > REPLY_LIMIT {
                cpu::sti();
                return Err(VmbusError::NoReply);
            }
            cpu::sti_hlt();
        }
    }

    /// The id of the first offered channel of device class `class`.
    pub fn find(&self, class: u32) -> Result<u32, VmbusError> {
        let r = self.request(&[u64::from(proto::REQUEST_OFFERS)], 4)?;
        if r[0] as u32 != proto::OFFERS {
            return Err(VmbusError::NoReply);
        }
        let count = ((r[0] >> 32) as usize).min(r.len() - 1);
        // Offers are (channel, class) pairs, one per payload word after the first.
        (1..=count)
            .map(|i| r[i])
            .find(|w| (w >> 32) as u32 == class)
            .map(|w| w as u32)
            .ok_or(VmbusError::NoDevice)
    }

    /// Opens `channel` with rings in `mem`: `out_pages` pages guest -> hv, then `in_pages`
    /// pages hv -> guest (each counting its control page).
    ///
    /// # Safety
    /// `mem` must be page-aligned, identity-mapped RAM of `out_pages + in_pages` pages that
    /// the channel owns from now on.
    pub unsafe fn open(
        &self,
        channel: u32,
        mem: *mut u8,
        out_pages: usize,
        in_pages: usize,
    ) -> Result<Channel, VmbusError> {
        // SAFETY: the caller gives us the pages.
        let (out, inr) = unsafe {
            (
                Ring::new(mem, out_pages),
                Ring::new(mem.add(out_pages * CONTROL), in_pages),
            )
        };
        self.open_raw(channel, mem as u64, out_pages, in_pages)?;
        CLOSED.fetch_and(!(1u64 << (channel % 64)), Ordering::AcqRel);
        Ok(Channel {
            id: channel,
            out,
            inr,
            signals: 0,
            owed: false,
        })
    }
}

impl Client {
    /// The OPEN message alone, for rings at any `gpa` (hostile tests: hv must refuse rings
    /// outside RAM before it touches them). `Ok` when hv opened the channel.
    pub fn open_raw(
        &self,
        channel: u32,
        gpa: u64,
        out_pages: usize,
        in_pages: usize,
    ) -> Result<(), VmbusError> {
        let msg = [
            u64::from(proto::OPEN) | u64::from(channel) << 32,
            gpa,
            out_pages as u64 | (in_pages as u64) << 32,
        ];
        let r = self.request(&msg, 24)?;
        let status = r[1] as u32;
        if r[0] as u32 != proto::OPEN_RESULT || status != proto::OPEN_OK {
            return Err(VmbusError::Open(status));
        }
        Ok(())
    }
}

/// An open channel.
pub struct Channel {
    pub id: u32,
    pub out: Ring,
    pub inr: Ring,
    /// HvCallSignalEvent calls made (the doorbells).
    pub signals: u64,
    /// A queued packet found the ring empty: the next kick signals.
    owed: bool,
}

impl Channel {
    fn signal(&mut self) -> u16 {
        self.signals += 1;
        synic::signal_event(proto::CONN_CHANNEL_BASE + self.id, 0)
    }

    /// Sends one packet, signalling hv when the ring protocol asks; `Ok(false)` when the
    /// ring is full, `Err(status)` when hv refused the signal.
    pub fn send(
        &mut self,
        kind: u16,
        flags: u16,
        transaction: u64,
        payload: &[u8],
    ) -> Result<bool, u16> {
        match self.out.write_flags(kind, flags, transaction, payload) {
            None => Ok(false),
            Some(false) => Ok(true),
            Some(true) => match self.signal() {
                tlfs::STATUS_SUCCESS => Ok(true),
                st => Err(st),
            },
        }
    }

    /// Writes one packet without signalling (a batch: [`Self::kick`] after the last one);
    /// `false` when the ring is full.
    pub fn queue(&mut self, kind: u16, flags: u16, transaction: u64, payload: &[u8]) -> bool {
        match self.out.write_flags(kind, flags, transaction, payload) {
            None => false,
            Some(wants) => {
                self.owed |= wants;
                true
            }
        }
    }

    /// Signals hv if a packet queued since the last kick found the ring empty (one doorbell
    /// per batch, as a virtio driver kicks once after publishing many buffers).
    pub fn kick(&mut self) -> Result<(), u16> {
        if !core::mem::take(&mut self.owed) {
            return Ok(());
        }
        match self.signal() {
            tlfs::STATUS_SUCCESS => Ok(()),
            st => Err(st),
        }
    }

    /// Receives one packet into `buf` (kind, transaction, payload bytes), signalling hv when
    /// this read freed the room it was waiting for.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<(u16, u64, usize)> {
        let (kind, t, n, wants) = self.inr.read_signal(buf)?;
        if wants {
            self.signal();
        }
        Some((kind, t, n))
    }

    /// Halts until a packet is waiting or `limit` TSC ticks passed (false then).
    pub fn wait(&self, limit: u64) -> bool {
        let start = cpu::rdtsc();
        loop {
            cpu::cli();
            if self.inr.has_data() {
                cpu::sti();
                return true;
            }
            if cpu::rdtsc().wrapping_sub(start) > limit {
                cpu::sti();
                return false;
            }
            cpu::sti_hlt();
        }
    }

    /// Spins (no halt, no interrupt needed) until a packet is waiting or `limit` TSC ticks
    /// passed (false then): for a reader that masked its interrupts.
    pub fn poll(&self, limit: u64) -> bool {
        let start = cpu::rdtsc();
        while !self.inr.has_data() {
            if cpu::rdtsc().wrapping_sub(start) > limit {
                return false;
            }
            cpu::pause();
        }
        true
    }

    /// True once hv closed this channel (a CHANNEL_CLOSED notice came).
    pub fn closed(&self) -> bool {
        CLOSED.load(Ordering::Acquire) & (1u64 << (self.id % 64)) != 0
    }
}

/// Channel interrupts taken so far (all channels).
pub fn channel_irqs() -> u64 {
    CHANNEL_IRQS.load(Ordering::Relaxed)
}

/// Ring memory for a driver's channel: `N` pages, page-aligned.
#[repr(C, align(4096))]
pub struct RingPages<const N: usize>(UnsafeCell<[[u8; 4096]; N]>);

// SAFETY: handed to one channel (through `Client::open`), which one CPU drives.
unsafe impl<const N: usize> Sync for RingPages<N> {}

impl<const N: usize> RingPages<N> {
    pub const fn new() -> Self {
        RingPages(UnsafeCell::new([[0; 4096]; N]))
    }

    /// The pages' address (identity-mapped: also their GPA).
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.get() as *mut u8
    }
}

impl<const N: usize> Default for RingPages<N> {
    fn default() -> Self {
        Self::new()
    }
}
