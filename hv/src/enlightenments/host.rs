//! hv's side of the enlightenments while a partition runs: the Hyper-V synthetic MSRs and
//! hypercalls (`super::hyperv`), TLB flushes of other vCPUs, multicast IPIs, spin-wait yields,
//! and the counters that show each in the phase records.
//!
//! Every value here comes from the guest: bad calls get a #GP or an error status, never a
//! panic, and every wait is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_msi;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use super::EnlightenmentSet;
use super::hyperv::synic::{Irq, Queued, Synic};
use super::hyperv::{self, Features, calls, messages, msr::Msrs, stimer::Stimers};
use crate::counters::CounterSource;
use crate::counters::cputime::ThreadClock;
use crate::devices::vmbus::channel::{Served, Vmbus};
use crate::devices::vmbus::ring::RingError;
use crate::devices::vmbus::{ChannelDevice, worker as vmbus_worker};
use crate::vcpu::RunControl;
use hvlab_protocol::vmbus;

/// How long a flush caller waits for its targets to leave the guest before it gives up (with
/// HV_STATUS_TIMEOUT and a note). Generous: a kicked vCPU leaves KVM_RUN in microseconds.
const FLUSH_WAIT_LIMIT: Duration = Duration::from_millis(500);
/// CR4.PGE: toggling it through KVM_SET_SREGS makes KVM reset the vCPU's MMU context, which
/// drops its cached translations (and flushes the hardware TLB on the next entry).
const CR4_PGE: u64 = 1 << 7;

macro_rules! counters {
    ($($field:ident : $name:literal),* $(,)?) => {
        /// hv-side enlightenment counts of one partition (all vCPUs), reported in the phase
        /// records' `exits_by_device` under `hv-enl:<name>`.
        #[derive(Debug, Default)]
        pub struct EnlightenmentCounters {
            $(pub $field: AtomicU64,)*
        }

        impl EnlightenmentCounters {
            const NAMES: &'static [&'static str] = &[$(concat!("hv-enl:", $name)),*];
        }

        impl CounterSource for EnlightenmentCounters {
            fn names(&self) -> &[&'static str] {
                Self::NAMES
            }
            fn read(&self, out: &mut Vec<u64>) {
                $(out.push(self.$field.load(Ordering::Relaxed));)*
            }
        }
    };
}

counters! {
    calls_flush_tlb: "hvcall_flush_tlb",
    calls_send_ipi: "hvcall_send_ipi",
    flush_targets: "flush_targets",
    flushes_done: "tlb_flushes_done",
    kicks: "kicks",
    msis: "msis_sent",
    hyperv_calls: "hyperv_hypercalls",
    hyperv_call_errors: "hyperv_hypercall_errors",
    hyperv_spin_yields: "hyperv_spin_yields",
    synic_messages: "synic_messages_posted",
    synic_events: "synic_events_signalled",
    synic_busy: "synic_slot_busy",
    synic_irqs: "synic_irqs",
    stimer_expiries: "stimer_expiries",
    stimer_missed: "stimer_missed",
    stimer_kicks: "stimer_kicks",
    vmbus_messages: "vmbus_messages",
    vmbus_signals: "vmbus_signals",
    vmbus_packets: "vmbus_packets",
    vmbus_guest_signals: "vmbus_guest_signals",
    vmbus_signals_suppressed: "vmbus_signals_suppressed",
    vmbus_ring_errors: "vmbus_ring_errors",
    vmbus_replies: "vmbus_replies",
    vmbus_deferred: "vmbus_deferred",
    vmbus_closed_notices: "vmbus_closed_notices",
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// hv's enlightenment runtime of one partition, shared by its vCPU threads.
#[derive(Debug)]
pub struct EnlightenmentHost {
    set: EnlightenmentSet,
    vcpus: u32,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    control: OnceLock<Arc<RunControl>>,
    /// The seccomp filter hv's own threads (the `hv-stimer` timer thread) install.
    worker_filter: Mutex<Option<crate::isolation::seccomp::Target>>,
    /// vCPU i must drop its translations before it next enters the guest.
    flush_pending: Box<[AtomicBool]>,
    /// vCPU i is inside KVM_RUN (may be running guest code).
    in_guest: Box<[AtomicBool]>,
    /// Signalled when a flush completes or a vCPU leaves KVM_RUN.
    flush_lock: Mutex<()>,
    flush_cv: Condvar,
    counters: Arc<EnlightenmentCounters>,
    notes: Arc<Mutex<Vec<String>>>,
    /// The Hyper-V interface, when a Hyper-V enlightenment is on.
    hyperv: Option<HypervState>,
    /// The channel worker, once started (stops when dropped).
    vmbus_worker: Mutex<Option<vmbus_worker::WorkerHandle>>,
}

/// The Hyper-V interface of one partition.
#[derive(Debug)]
struct HypervState {
    features: Features,
    msrs: Msrs,
    /// vCPU i wrote the transport MSR: its call runs once its exit is complete.
    pending: Box<[AtomicBool]>,
    /// The SynIC, with `hv-synic` (shared with the channel worker).
    synic: Option<Arc<Synic>>,
    /// hv's VMBus-style channels (offered with `hv-synic`).
    vmbus: Option<Arc<Vmbus>>,
    /// The synthetic timers, with `hv-stimer` and a known reference time.
    stimers: Option<Arc<Stimers>>,
    /// vCPU i was kicked by the timer thread and has not looked at its timers since.
    stimer_kicked: Arc<[AtomicBool]>,
    clock: Option<hyperv::Clock>,
}

impl EnlightenmentHost {
    /// The runtime for `set` over `vcpus` vCPUs of `vm` with guest memory `mem`.
    /// `clock` is the guest TSC's rate and origin, for the Hyper-V reference time.
    pub fn new(
        set: EnlightenmentSet,
        vcpus: u32,
        mem: GuestMemoryMmap,
        vm: Arc<VmFd>,
        clock: Option<hyperv::Clock>,
    ) -> Self {
        let flags = |_| AtomicBool::new(false);
        let features = set.hyperv_features();
        // hv serves the Hyper-V MSRs and calls only with the user backend (else KVM does).
        let kernel = set.hyperv_backend() == hyperv::Backend::Kernel;
        let hyperv = (features.any() && !kernel).then(|| HypervState {
            features,
            msrs: Msrs::new(features, vcpus, clock),
            pending: (0..vcpus).map(flags).collect(),
            synic: features
                .has(Features::SYNIC)
                .then(|| Arc::new(Synic::new(vcpus))),
            vmbus: features
                .has(Features::SYNIC)
                .then(|| Arc::new(Vmbus::new())),
            stimers: (features.has(Features::STIMER) && clock.is_some())
                .then(|| Arc::new(Stimers::new(vcpus, features.has(Features::STIMER_DIRECT)))),
            stimer_kicked: (0..vcpus).map(flags).collect(),
            clock,
        });
        let mut notes = Vec::new();
        if features.any() && kernel {
            notes.push("hyperv backend: kernel (KVM serves the MSRs, its own hypercall page and the calls)".into());
        }
        if hyperv.is_some() {
            notes.push(format!("hyperv transport: {}", hyperv::page::TRANSPORT));
            if clock.is_none() && features.has(Features::STIMER) {
                notes.push(
                    "hv-stimer: guest TSC rate unknown: no reference time, the STIMER MSRs #GP"
                        .into(),
                );
            }
            if clock.is_none() {
                notes.push("hyperv: guest TSC rate unknown (KVM_GET_TSC_KHZ failed): the TSC page is marked invalid and TIME_REF_COUNT #GPs".into());
            }
        }
        EnlightenmentHost {
            set,
            vcpus,
            mem,
            vm,
            control: OnceLock::new(),
            worker_filter: Mutex::new(None),
            flush_pending: (0..vcpus).map(flags).collect(),
            in_guest: (0..vcpus).map(flags).collect(),
            flush_lock: Mutex::new(()),
            flush_cv: Condvar::new(),
            counters: Arc::new(EnlightenmentCounters::default()),
            notes: Arc::new(Mutex::new(notes)),
            hyperv,
            vmbus_worker: Mutex::new(None),
        }
    }

    /// The set this partition runs with.
    pub fn set(&self) -> EnlightenmentSet {
        self.set
    }

    /// The counters, for the partition's meter.
    pub fn counters(&self) -> Arc<EnlightenmentCounters> {
        self.counters.clone()
    }

    /// The seccomp filter for hv's own threads, from the partition (before
    /// [`Self::attach_control`] starts them). Without it they run unfiltered (unit tests).
    pub(crate) fn set_worker_filter(&self, target: crate::isolation::seccomp::Target) {
        *lock(&self.worker_filter) = Some(target);
    }

    /// Offers `device` on a new VMBus-style channel (`--device vmbus`); its id. Needs
    /// `hv-synic`, which carries the channels' messages and signals.
    pub fn add_vmbus_device(&self, device: Box<dyn ChannelDevice>) -> Result<u32, String> {
        let name = device.name();
        let bus = self
            .hyperv
            .as_ref()
            .and_then(|h| h.vmbus.as_ref())
            .ok_or_else(|| {
                format!("{name}: VMBus-style channels need the hv-synic enlightenment (served by hv, --hyperv-backend user)")
            })?;
        bus.add(device).ok_or_else(|| {
            format!(
                "{name}: a partition has at most {} channels",
                crate::devices::vmbus::channel::MAX_CHANNELS
            )
        })
    }

    /// Hands over the run control once the vCPU threads exist (for kicks and stop checks) and
    /// starts hv's own threads; returns the CPU clocks of those that serve devices.
    pub(crate) fn attach_control(&self, control: Arc<RunControl>) -> Vec<ThreadClock> {
        let _ = self.control.set(control.clone());
        let clocks = self.start_vmbus_worker(control.clone());
        self.start_timer_thread(control);
        clocks
    }

    /// With `hv-synic`: the channel worker (`devices::vmbus::worker`).
    fn start_vmbus_worker(&self, control: Arc<RunControl>) -> Vec<ThreadClock> {
        let Some(h) = &self.hyperv else {
            return Vec::new();
        };
        let (Some(bus), Some(synic)) = (&h.vmbus, &h.synic) else {
            return Vec::new();
        };
        let signals = Arc::new(ChannelSignals {
            synic: synic.clone(),
            mem: self.mem.clone(),
            vm: self.vm.clone(),
            counters: self.counters.clone(),
            notes: self.notes.clone(),
            control,
        });
        let filter = lock(&self.worker_filter).as_ref().map_or_else(
            || crate::isolation::seccomp::Target::none("vmbus worker"),
            |t| t.with_label("vmbus worker"),
        );
        match vmbus_worker::start(bus.clone(), self.mem.clone(), signals, filter) {
            Ok((handle, clock)) => {
                *lock(&self.vmbus_worker) = Some(handle);
                clock.into_iter().collect()
            }
            Err(e) => {
                self.note(format!("vmbus: {e}; channels are offered but never served"));
                Vec::new()
            }
        }
    }

    /// With `hv-stimer`: one thread per partition that kicks a vCPU whose timer is due (the
    /// vCPU delivers in [`Self::before_entry`]). It ends within `stimer::MAX_SLEEP` of the run's
    /// end. It installs the device workers' seccomp filter first (no ioctl: it only kicks).
    fn start_timer_thread(&self, control: Arc<RunControl>) {
        let Some(h) = &self.hyperv else { return };
        let (Some(timers), Some(clock)) = (h.stimers.clone(), h.clock) else {
            return;
        };
        let kicked = h.stimer_kicked.clone();
        let counters = self.counters.clone();
        let filter = lock(&self.worker_filter).take();
        let spawned = std::thread::Builder::new()
            .name("hv-stimer".into())
            .spawn(move || {
                if let Some(f) = &filter {
                    crate::isolation::seccomp::install(
                        crate::isolation::seccomp::ThreadKind::Worker,
                        f,
                    );
                }
                hyperv::stimer::run_thread(
                    &timers,
                    || clock.reference_time(),
                    || control.stopping(),
                    |vp| {
                        let first = kicked
                            .get(vp as usize)
                            .is_some_and(|k| !k.swap(true, Ordering::SeqCst));
                        if first {
                            bump(&counters.stimer_kicks, 1);
                            control.kick(vp as usize);
                        }
                    },
                )
            });
        if let Err(e) = spawned {
            self.note(format!("hv-stimer: cannot start the timer thread: {e}"));
        }
    }

    /// Remarks for the run's records (taken once), with the channel devices' counters.
    pub fn take_notes(&self) -> Vec<String> {
        let mut notes = std::mem::take(&mut *lock(&self.notes));
        if let Some(bus) = self.hyperv.as_ref().and_then(|h| h.vmbus.as_ref()) {
            notes.extend(bus.stats());
        }
        notes
    }

    fn note(&self, msg: String) {
        add_note(&self.notes, msg);
    }

    fn stopping(&self) -> bool {
        self.control.get().is_some_and(|c| c.stopping())
    }

    /// Called by vCPU `index`'s loop right before KVM_RUN: performs a pending TLB flush, then
    /// marks the vCPU as in the guest.
    pub(crate) fn before_entry(&self, index: u32, fd: &mut VcpuFd) {
        self.deliver_timers(index);
        let i = index as usize;
        if self
            .flush_pending
            .get(i)
            .is_some_and(|p| p.load(Ordering::SeqCst))
        {
            self.flush_own_tlb(fd);
            if let Some(p) = self.flush_pending.get(i) {
                p.store(false, Ordering::SeqCst);
            }
            let _g = lock(&self.flush_lock);
            self.flush_cv.notify_all();
        }
        if let Some(g) = self.in_guest.get(i) {
            g.store(true, Ordering::SeqCst);
        }
    }

    /// True when the vCPU loops must call [`Self::before_entry`] / [`Self::after_exit`]:
    /// only the TLB-flush hypercalls track who is in the guest and defer flushes to entry.
    /// Other sets keep those calls (two SeqCst stores and a scan) off the exit path.
    pub(crate) fn needs_entry_hooks(&self) -> bool {
        self.set.hyperv_features().has(Features::TLBFLUSH)
            || self.hyperv.as_ref().is_some_and(|h| h.stimers.is_some())
    }

    /// Delivers vCPU `index`'s due synthetic timers: direct mode raises the timer's vector,
    /// message mode posts HVMSG_TIMER_EXPIRED into its SINT (kept for EOM when the slot is
    /// busy; a second expiry while one waits is counted as missed).
    fn deliver_timers(&self, index: u32) {
        let Some(h) = &self.hyperv else { return };
        let Some(timers) = &h.stimers else { return };
        if let Some(k) = h.stimer_kicked.get(index as usize) {
            k.store(false, Ordering::SeqCst);
        }
        let Some(now) = h.msrs.reference_time() else {
            return;
        };
        let (due, skipped) = timers.due(index, now);
        bump(&self.counters.stimer_missed, skipped);
        for e in due {
            bump(&self.counters.stimer_expiries, 1);
            if let Some(vector) = e.direct {
                self.raise(&[Irq { vp: index, vector }]);
                continue;
            }
            let Some(synic) = &h.synic else { continue };
            let msg = messages::Message::timer_expired(e.timer, e.expiration, now);
            match synic.queue(&self.mem, index, e.sint, msg) {
                Queued::Delivered(irq) => self.raise(irq.as_slice()),
                Queued::Waiting => bump(&self.counters.synic_busy, 1),
                Queued::Dropped => bump(&self.counters.stimer_missed, 1),
            }
        }
    }

    /// One MSI per SynIC interrupt.
    fn raise(&self, irqs: &[Irq]) {
        raise_synic(&self.vm, &self.counters, &self.notes, irqs);
    }

    /// Called by vCPU `index`'s loop right after KVM_RUN returns.
    pub(crate) fn after_exit(&self, index: u32) {
        if let Some(g) = self.in_guest.get(index as usize) {
            g.store(false, Ordering::SeqCst);
        }
        // Only flush callers wait for this; avoid the lock when none can be waiting.
        if self.flush_pending.iter().any(|p| p.load(Ordering::Relaxed)) {
            let _g = lock(&self.flush_lock);
            self.flush_cv.notify_all();
        }
    }

    /// Drops this vCPU's cached translations. First completes any operation the last exit left
    /// pending (KVM_RUN with immediate_exit returns before entering the guest), so that the
    /// register reset happens between instructions; then toggles CR4.PGE through
    /// KVM_SET_SREGS and restores it, which makes KVM reset the MMU context (unloading its
    /// roots: unsynced shadow pages are resynced and the TLB is flushed when they reload).
    fn flush_own_tlb(&self, fd: &mut VcpuFd) {
        fd.set_kvm_immediate_exit(1);
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        let result = fd.get_sregs().and_then(|s| {
            let mut toggled = s;
            toggled.cr4 ^= CR4_PGE;
            fd.set_sregs(&toggled)?;
            fd.set_sregs(&s)
        });
        match result {
            Ok(()) => bump(&self.counters.flushes_done, 1),
            Err(e) => self.note(format!("hv-tlbflush: KVM_SET_SREGS failed: {e}")),
        }
    }

    /// Handles a guest RDMSR that hv filters. `None` = raise #GP.
    pub(crate) fn on_rdmsr(&self, index: u32, msr: u32) -> Option<u64> {
        let h = self.hyperv.as_ref()?;
        if Msrs::filtered(msr) {
            return h.msrs.read(index, msr).ok();
        }
        if let Some(s) = h.synic.as_ref().filter(|_| Synic::handles(msr)) {
            return s.read(index, msr).ok();
        }
        if let Some(t) = h.stimers.as_ref().filter(|_| Stimers::handles(msr)) {
            return t.read(index, msr).ok();
        }
        None
    }

    /// Handles a guest WRMSR that hv filters. `false` = raise #GP.
    pub(crate) fn on_wrmsr(&self, index: u32, msr: u32, value: u64) -> bool {
        if let Some(h) = &self.hyperv {
            if Msrs::filtered(msr) {
                return h.msrs.write(index, msr, value, &self.mem).is_ok();
            }
            if let Some(s) = h.synic.as_ref().filter(|_| Synic::handles(msr)) {
                return match s.write(index, msr, value, &self.mem) {
                    Ok(irqs) => {
                        self.raise(&irqs);
                        true
                    }
                    Err(_) => false,
                };
            }
            if let Some(t) = h.stimers.as_ref().filter(|_| Stimers::handles(msr)) {
                return h
                    .msrs
                    .reference_time()
                    .is_some_and(|now| t.write(index, msr, value, now).is_ok());
            }
            if msr == hvlab_protocol::hyperv::MSR_HV_HYPERCALL_TRANSPORT {
                // Only through an enabled hypercall page (the TLFS: no page, no hypercalls).
                if !h.msrs.hypercall_enabled() {
                    return false;
                }
                let Some(p) = h.pending.get(index as usize) else {
                    return false;
                };
                p.store(true, Ordering::SeqCst);
                return true;
            }
        }
        false
    }

    /// True when vCPU `index`'s last exit was a Hyper-V hypercall that
    /// [`Self::complete_hypercall`] must run.
    pub(crate) fn hypercall_pending(&self, index: u32) -> bool {
        self.hyperv
            .as_ref()
            .and_then(|h| h.pending.get(index as usize))
            .is_some_and(|p| p.load(Ordering::Relaxed))
    }

    /// Runs vCPU `index`'s pending Hyper-V hypercall: completes the transport `wrmsr` (KVM_RUN
    /// with immediate_exit, so the guest's RIP is past it), reads the call's registers
    /// (KVM_GET_REGS; the page put RCX in R9 and RDX in R10) and its CPL (KVM_GET_SREGS),
    /// runs the call and writes the result to RAX (KVM_SET_REGS).
    pub(crate) fn complete_hypercall(&self, index: u32, fd: &mut VcpuFd) {
        let Some(h) = &self.hyperv else { return };
        if let Some(p) = h.pending.get(index as usize) {
            p.store(false, Ordering::SeqCst);
        }
        fd.set_kvm_immediate_exit(1);
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        let (mut regs, sregs) = match fd.get_regs().and_then(|r| Ok((r, fd.get_sregs()?))) {
            Ok(r) => r,
            Err(e) => {
                self.note(format!("hyperv: KVM_GET_REGS/SREGS failed: {e}"));
                return;
            }
        };
        bump(&self.counters.hyperv_calls, 1);
        let call = calls::Regs {
            input: regs.r9,
            rdx: regs.r10,
            r8: regs.r8,
        };
        let mut outcome = calls::decode(h.features, self.vcpus, sregs.ss.dpl, call, &self.mem);
        if let Some(action) = outcome.action {
            match action {
                calls::Action::Flush(mask) => {
                    bump(&self.counters.calls_flush_tlb, 1);
                    if !self.flush_tlbs(index, mask) {
                        outcome.status = hvlab_protocol::hyperv::STATUS_TIMEOUT;
                    }
                }
                calls::Action::Ipi { vector, mask } => {
                    bump(&self.counters.calls_send_ipi, 1);
                    self.signal_msis(mask, vector);
                }
                calls::Action::Yield => {
                    bump(&self.counters.hyperv_spin_yields, 1);
                    std::thread::yield_now();
                }
                calls::Action::PostMessage(p) if p.connection == vmbus::CONN_MANAGEMENT => {
                    outcome.status = self.vmbus_message(h, &p);
                }
                calls::Action::PostMessage(p) => {
                    let r = h.synic.as_ref().map(|s| messages::post(s, &self.mem, &p));
                    outcome.status = self.synic_result(r, &self.counters.synic_messages);
                }
                calls::Action::SignalEvent { connection, .. }
                    if connection >= vmbus::CONN_CHANNEL_BASE
                        && connection - vmbus::CONN_CHANNEL_BASE < 0x1_0000 =>
                {
                    outcome.status = self.vmbus_signal(h, connection - vmbus::CONN_CHANNEL_BASE);
                }
                calls::Action::SignalEvent { connection, flag } => {
                    let r = h
                        .synic
                        .as_ref()
                        .map(|s| messages::signal(s, &self.mem, connection, flag));
                    outcome.status = self.synic_result(r, &self.counters.synic_events);
                }
            }
        }
        if outcome.status != hvlab_protocol::hyperv::STATUS_SUCCESS {
            bump(&self.counters.hyperv_call_errors, 1);
        }
        regs.rax = outcome.rax();
        if let Err(e) = fd.set_regs(&regs) {
            self.note(format!("hyperv: KVM_SET_REGS failed: {e}"));
        }
    }

    /// A VMBus management message: the reply goes into VP 0's management SINT (waiting for
    /// EOM when the slot is full; a second reply while one waits is refused with
    /// HV_STATUS_INSUFFICIENT_BUFFERS, so the guest retries).
    fn vmbus_message(&self, h: &HypervState, p: &messages::Post) -> u16 {
        use hvlab_protocol::hyperv as tlfs;
        let (Some(bus), Some(synic)) = (&h.vmbus, &h.synic) else {
            return tlfs::STATUS_INVALID_CONNECTION_ID;
        };
        if p.kind != vmbus::MSG_TYPE {
            return tlfs::STATUS_INVALID_PARAMETER;
        }
        bump(&self.counters.vmbus_messages, 1);
        let payload = &p.payload[..usize::from(p.size)];
        let Some(reply) = bus.on_message(&self.mem, payload) else {
            return tlfs::STATUS_INVALID_PARAMETER;
        };
        let msg = messages::Message {
            kind: vmbus::MSG_TYPE,
            port: u64::from(vmbus::CONN_MANAGEMENT),
            payload: reply,
        };
        match synic.queue(&self.mem, 0, vmbus::SINT_MANAGEMENT, msg) {
            Queued::Delivered(irq) => {
                self.raise(irq.as_slice());
                tlfs::STATUS_SUCCESS
            }
            Queued::Waiting => tlfs::STATUS_SUCCESS,
            Queued::Dropped => tlfs::STATUS_INSUFFICIENT_BUFFERS,
        }
    }

    /// A guest signal on a VMBus channel: mark it for the channel worker (which serves the
    /// rings and signals back), as an ioeventfd doorbell would.
    fn vmbus_signal(&self, h: &HypervState, channel: u32) -> u16 {
        use hvlab_protocol::hyperv as tlfs;
        let Some(bus) = &h.vmbus else {
            return tlfs::STATUS_INVALID_CONNECTION_ID;
        };
        bump(&self.counters.vmbus_signals, 1);
        match bus.signal(channel) {
            Ok(()) => tlfs::STATUS_SUCCESS,
            Err(_) => tlfs::STATUS_INVALID_PORT_ID,
        }
    }

    /// Raises a delivered message's or event's interrupt and counts it; the call's status.
    fn synic_result(&self, r: Option<Result<Option<Irq>, u16>>, delivered: &AtomicU64) -> u16 {
        use hvlab_protocol::hyperv as tlfs;
        match r {
            Some(Ok(irq)) => {
                bump(delivered, 1);
                self.raise(irq.as_slice());
                tlfs::STATUS_SUCCESS
            }
            Some(Err(status)) => {
                if status == tlfs::STATUS_INSUFFICIENT_BUFFERS {
                    bump(&self.counters.synic_busy, 1);
                }
                status
            }
            None => tlfs::STATUS_INVALID_HYPERCALL_CODE,
        }
    }

    /// A flush hypercall from `caller`: mark every target, kick it out of KVM_RUN, and wait
    /// until each target has either flushed or is outside KVM_RUN (then it flushes in
    /// `before_entry`, before it runs guest code again). A target that is itself in a
    /// hypercall is outside KVM_RUN, so two vCPUs flushing each other cannot deadlock.
    /// `false` when targets did not leave the guest within [`FLUSH_WAIT_LIMIT`].
    fn flush_tlbs(&self, caller: u32, mask: u64) -> bool {
        let targets: Vec<usize> = (0..self.vcpus as usize)
            .filter(|&t| mask & (1 << t) != 0)
            .collect();
        bump(&self.counters.flush_targets, targets.len() as u64);
        for &t in &targets {
            self.flush_pending[t].store(true, Ordering::SeqCst);
        }
        let Some(control) = self.control.get() else {
            return true; // not started: nobody runs guest code yet
        };
        for &t in &targets {
            if t != caller as usize {
                control.kick(t);
                bump(&self.counters.kicks, 1);
            }
        }
        let deadline = Instant::now() + FLUSH_WAIT_LIMIT;
        let mut g = lock(&self.flush_lock);
        loop {
            // The caller itself is outside KVM_RUN now; it flushes before re-entering.
            let busy = targets.iter().any(|&t| {
                self.flush_pending[t].load(Ordering::SeqCst)
                    && self.in_guest[t].load(Ordering::SeqCst)
            });
            if !busy || self.stopping() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(g);
                self.note(format!(
                    "hv-tlbflush: targets {mask:#x} did not leave the guest within {FLUSH_WAIT_LIMIT:?}"
                ));
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(1));
            g = self
                .flush_cv
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// One MSI (physical destination = APIC ID = vCPU index) per vCPU in `mask`.
    fn signal_msis(&self, mask: u64, vector: u32) {
        signal_msis(
            &self.vm,
            &self.counters,
            &self.notes,
            self.vcpus,
            mask,
            vector,
        );
    }
}

fn add_note(notes: &Mutex<Vec<String>>, msg: String) {
    let mut n = lock(notes);
    if !n.contains(&msg) && n.len() < 32 {
        n.push(msg);
    }
}

/// One MSI to vCPU `vp` (physical destination = APIC ID = vCPU index).
fn send_msi(
    vm: &VmFd,
    counters: &EnlightenmentCounters,
    notes: &Mutex<Vec<String>>,
    vp: u32,
    vector: u32,
) {
    let msi = kvm_msi {
        address_lo: 0xfee0_0000 | (vp << 12),
        address_hi: 0,
        data: vector,
        ..Default::default()
    };
    match vm.signal_msi(msi) {
        Ok(_) => bump(&counters.msis, 1),
        Err(e) => add_note(notes, format!("KVM_SIGNAL_MSI failed: {e}")),
    }
}

/// One MSI per vCPU in `mask` below `vcpus`.
fn signal_msis(
    vm: &VmFd,
    counters: &EnlightenmentCounters,
    notes: &Mutex<Vec<String>>,
    vcpus: u32,
    mask: u64,
    vector: u32,
) {
    for t in (0..vcpus.min(64)).filter(|t| mask & (1 << t) != 0) {
        send_msi(vm, counters, notes, t, vector);
    }
}

/// One MSI per SynIC interrupt (to its VP alone: no scan of the partition's vCPUs).
fn raise_synic(
    vm: &VmFd,
    counters: &EnlightenmentCounters,
    notes: &Mutex<Vec<String>>,
    irqs: &[Irq],
) {
    for irq in irqs.iter().filter(|irq| irq.vp < 64) {
        bump(&counters.synic_irqs, 1);
        send_msi(vm, counters, notes, irq.vp, irq.vector);
    }
}

/// The channel worker's way into the SynIC (it runs on its own thread, so it holds what it
/// needs rather than the host).
struct ChannelSignals {
    synic: Arc<Synic>,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    counters: Arc<EnlightenmentCounters>,
    notes: Arc<Mutex<Vec<String>>>,
    control: Arc<RunControl>,
}

impl vmbus_worker::GuestSignals for ChannelSignals {
    fn channel_event(&self, channel: u32) {
        bump(&self.counters.vmbus_guest_signals, 1);
        // An event the guest's SIEFP cannot take (not enabled yet) is dropped, as in Hyper-V.
        if let Ok(irq) = self
            .synic
            .signal_event(&self.mem, 0, vmbus::SINT_CHANNEL, channel)
        {
            raise_synic(&self.vm, &self.counters, &self.notes, irq.as_slice());
        }
    }

    fn closed_notice(&self, payload: Vec<u8>) {
        let msg = messages::Message {
            kind: vmbus::MSG_TYPE,
            port: u64::from(vmbus::CONN_MANAGEMENT),
            payload,
        };
        match self.synic.queue(&self.mem, 0, vmbus::SINT_MANAGEMENT, msg) {
            Queued::Delivered(irq) => {
                bump(&self.counters.vmbus_closed_notices, 1);
                raise_synic(&self.vm, &self.counters, &self.notes, irq.as_slice());
            }
            Queued::Waiting => bump(&self.counters.vmbus_closed_notices, 1),
            Queued::Dropped => bump(&self.counters.synic_busy, 1),
        }
    }

    fn served(&self, s: &Served) {
        bump(&self.counters.vmbus_packets, s.packets);
        bump(&self.counters.vmbus_replies, s.replies);
        bump(&self.counters.vmbus_signals_suppressed, s.suppressed);
        bump(&self.counters.vmbus_deferred, u64::from(s.deferred));
    }

    fn ring_error(&self, channel: u32, e: RingError) {
        bump(&self.counters.vmbus_ring_errors, 1);
        add_note(&self.notes, format!("vmbus channel {channel} closed: {e}"));
    }

    fn stopping(&self) -> bool {
        self.control.stopping()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// hv's earlier private hypercall MSR is gone: under the seed's old names (now aliases of
    /// the hv-* enlightenments) a guest writing or reading it gets a #GP, while the Hyper-V
    /// MSRs answer.
    #[test]
    fn the_private_hypercall_msr_is_gone() {
        let kvm = crate::error::kvm_for_tests();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let set =
            EnlightenmentSet::parse("tlb-flush-hypercall,ipi-hypercall,long-spin-notify").unwrap();
        let host = EnlightenmentHost::new(set, 2, mem, vm, None);
        // The MSR hv's private interface used ("HVL" + 0x00), before the TLFS replaced it.
        let old = 0x4856_4c00;
        assert_eq!(host.on_rdmsr(0, old), None);
        assert!(!host.on_wrmsr(0, old, 0x1000));
        assert!(!host.hypercall_pending(0));
        // The Hyper-V interface is what those names now switch on.
        let vp_index = hvlab_protocol::hyperv::MSR_VP_INDEX;
        assert_eq!(host.on_rdmsr(1, vp_index), Some(1));
        assert!(host.needs_entry_hooks());
    }
}
