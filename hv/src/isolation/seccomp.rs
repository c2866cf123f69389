//! seccomp-bpf allowlists per thread kind (as Firecracker does, with the `seccompiler` crate).
//!
//! Each vCPU thread and each device worker thread installs the filter of its [`ThreadKind`] on
//! itself, after its setup (pinning, perf-event and stats fds, epoll are opened before) and
//! without TSYNC, so the filter binds that thread alone: hv's main thread, the suite and other
//! partitions keep every system call. The lists hold what those threads were seen to call under
//! `strace -f` across the integration tests (see [`allowed`]), plus what thread exit, the
//! allocator and Rust's panic path need.
//!
//! A call outside the list is not killed (`SECCOMP_RET_KILL_*` would take the whole process
//! down, or leave a partition waiting on a dead thread): the filter returns `SECCOMP_RET_TRAP`,
//! the kernel skips the call and raises SIGSYS on the calling thread, and [`on_sigsys`] records
//! the call number in the thread's [`ThreadSlot`] (atomics only: it runs in signal context),
//! makes the call return `-EPERM`, and lets the thread go on. The partition's [`Monitor`] turns
//! the first recorded call into `RunStatus::SeccompViolation`: the vCPU loop checks it after
//! every exit and `RunControl::wait` while it waits, so the run ends with a status that names
//! the thread and the call, and hv itself carries on.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::status::RunStatus;

/// The kinds of hv threads a guest drives, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN, exit dispatch, emulated devices (the ATA disk does its I/O
    /// here), phase snapshots (stats-fd and perf-event reads), kicks of other vCPUs.
    Vcpu,
    /// A synthetic device's worker: epoll on doorbells, virtqueue service, disk I/O, irqfd.
    Worker,
    /// A VMBus-style channel worker: a worker that also raises SynIC interrupts, whose vectors
    /// the guest picks at run time (so no irqfd route fits): the worker list plus
    /// KVM_SIGNAL_MSI, and no other ioctl.
    ChannelWorker,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::ChannelWorker,
    ];

    /// Name in statuses and notes.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::ChannelWorker => "channel worker",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in [`allowed`]).
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    /// The SIGSYS handler could not be installed, so violations could not be reported.
    #[error("cannot install the SIGSYS handler for seccomp: {0}")]
    Handler(std::io::Error),
    /// prctl(PR_SET_NO_NEW_PRIVS) or seccomp(SECCOMP_SET_MODE_FILTER) failed.
    #[error(
        "cannot install the {kind} seccomp filter on {thread}: {source} (`--no-seccomp` runs \
         without filters)"
    )]
    Install {
        kind: &'static str,
        thread: String,
        source: seccompiler::Error,
    },
}

/// `si_code` of a SIGSYS raised by a seccomp filter (`SYS_SECCOMP` in the kernel's siginfo.h).
const SYS_SECCOMP: libc::c_int = 1;
/// Slot value for "no violation".
const NONE: i64 = -1;

// ---------------------------------------------------------------------------------------------
// The allowlists.

/// `_IOC` type of KVM's ioctls.
const KVMIO: u32 = 0xae;
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_bindings::kvm_msi);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);

/// The KVM ioctls a vCPU thread makes after its setup: KVM_RUN; KVM_GET/SET_SREGS for the
/// enlightenments' TLB flush before entry (`EnlightenmentHost::before_entry`); KVM_SIGNAL_MSI
/// for hv's IPI hypercall (the only ioctls seen on vCPU threads under strace across the
/// integration tests); KVM_GET/SET_REGS for the Hyper-V hypercalls (registers in, RAX out)
/// and for `Partition::record_exit_regs` (host probes read where a vCPU stood as it left).
/// KVM_IRQ_LINE for the PC platform's pc-testdev IRQ lines (`devices::platform::pc_testdev`).
/// Everything else (creating VMs, vCPUs, memslots, irqfds, ioeventfds, perf-event and stats
/// fds) happens before the filter is installed and stays refused.
pub fn vcpu_ioctls() -> [(&'static str, u64); 7] {
    [
        ("KVM_RUN", KVM_RUN()),
        ("KVM_GET_REGS", KVM_GET_REGS()),
        ("KVM_SET_REGS", KVM_SET_REGS()),
        ("KVM_GET_SREGS", KVM_GET_SREGS()),
        ("KVM_SET_SREGS", KVM_SET_SREGS()),
        ("KVM_SIGNAL_MSI", KVM_SIGNAL_MSI()),
        ("KVM_IRQ_LINE", KVM_IRQ_LINE()),
    ]
}

/// One syscall's entry: unconditional (`[]`) or any of the rules.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, len, op, value)
}

/// The allowlist of `kind`: syscall number to rules (an empty rule list allows every call).
///
/// Shared by both kinds (seen under strace, or needed by thread exit and panics):
/// - memory: `mmap`/`mprotect` without `PROT_EXEC` (malloc arenas, thread stacks), `munmap`,
///   `mremap`, `madvise` (malloc trim and glibc's stack release at thread exit), `brk`;
/// - I/O on fds the thread already holds: `read`/`write`/`readv`/`writev` (eventfds, stats
///   fds, perf-event fds, stderr for console echo and panic messages),
///   `pread64`/`pwrite64`/`preadv`/`pwritev` and `fsync`/`fdatasync` (disk images), `close`
///   (a thread that drops the last handle of a device, counter or vCPU closes its fd), and
///   `fcntl(fd, F_GETFD)` only (debug builds of std check an fd is open before closing it);
/// - threads: `futex` (mutexes, condvars, channels, joins), `sched_yield` (the polling worker),
///   `getpid`/`gettid`, `tgkill` to this process only (`pthread_kill`:
///   kicks of other vCPUs, `abort`), `rt_sigprocmask` (glibc blocks signals around `tgkill` and
///   thread exit), `rt_sigreturn` (every signal handler returns through it: the vCPU kick and
///   SIGSYS itself), `sigaltstack` (Rust's stack-overflow guard is torn down at exit),
///   `restart_syscall`, `exit` and `exit_group`;
/// - time and randomness: `clock_gettime` (when the vDSO falls back to the call, and CPU-time
///   clocks of other threads at phase snapshots), `getrandom` (std's hash keys).
///
/// vCPU only: `ioctl` restricted by request number to [`vcpu_ioctls`]. Worker only: `epoll_wait`
/// and `epoll_pwait` (plus `epoll_ctl`/`epoll_create1`, since the worker installs its filter
/// before it builds its epoll set).
pub fn allowed(kind: ThreadKind) -> Result<Rules, seccompiler::BackendError> {
    use SeccompCmpArgLen::Dword;
    use SeccompCmpOp::{Eq, MaskedEq};
    let mut r: Rules = BTreeMap::new();
    let always = |r: &mut Rules, nrs: &[libc::c_long]| {
        for &nr in nrs {
            r.insert(nr, Vec::new());
        }
    };
    always(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
        ],
    );
    // No new executable memory: `prot` (argument 2) without PROT_EXEC.
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![SeccompRule::new(vec![cond(
            2,
            Dword,
            MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    r.insert(libc::SYS_mmap, no_exec()?);
    r.insert(libc::SYS_mprotect, no_exec()?);
    r.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![cond(
            1,
            Dword,
            Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    // Signals to threads of this process only (argument 0 is the thread group).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    r.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![cond(0, Dword, Eq, pid)?])?],
    );
    match kind {
        ThreadKind::Vcpu => {
            let rules = vcpu_ioctls()
                .iter()
                .map(|&(_, nr)| SeccompRule::new(vec![cond(1, Dword, Eq, nr)?]))
                .collect::<Result<Vec<_>, _>>()?;
            r.insert(libc::SYS_ioctl, rules);
        }
        ThreadKind::Worker | ThreadKind::ChannelWorker => {
            always(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_create1,
                ],
            );
            if kind == ThreadKind::ChannelWorker {
                r.insert(
                    libc::SYS_ioctl,
                    vec![SeccompRule::new(vec![cond(
                        1,
                        Dword,
                        Eq,
                        KVM_SIGNAL_MSI(),
                    )?])?],
                );
            }
        }
    }
    Ok(r)
}

/// The compiled filter of `kind`: allowed calls pass, everything else traps (SIGSYS).
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(
        allowed(kind).map_err(build)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The filter of `kind`, compiled once per process.
fn program(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    static VCPU: OnceLock<BpfProgram> = OnceLock::new();
    static WORKER: OnceLock<BpfProgram> = OnceLock::new();
    static CHANNEL_WORKER: OnceLock<BpfProgram> = OnceLock::new();
    let cell = match kind {
        ThreadKind::Vcpu => &VCPU,
        ThreadKind::Worker => &WORKER,
        ThreadKind::ChannelWorker => &CHANNEL_WORKER,
    };
    if let Some(p) = cell.get() {
        return Ok(p);
    }
    let p = compile(kind)?;
    Ok(cell.get_or_init(|| p))
}

// ---------------------------------------------------------------------------------------------
// Violations: the SIGSYS handler and what it writes to.

/// One filtered thread: its label and the first call its filter refused.
#[derive(Debug)]
struct ThreadSlot {
    /// Index in the monitor's slot list.
    id: usize,
    label: String,
    /// First refused syscall number, or [`NONE`].
    syscall: AtomicI64,
    /// Calls refused on this thread.
    refused: AtomicU64,
    /// Set by the panic hook: calls refused from here on belong to the panic message (with
    /// RUST_BACKTRACE it opens files), not to a guest-steered bug, and are only counted.
    panicking: AtomicBool,
    /// Calls refused while panicking.
    refused_panicking: AtomicU64,
    /// The partition's "first violating slot + 1" (0: none yet).
    first: Arc<AtomicUsize>,
}

impl ThreadSlot {
    /// Records a refused call. Async-signal-safe: atomics only.
    fn record(&self, nr: i64) {
        if self.panicking.load(Ordering::Acquire) {
            self.refused_panicking.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = self
            .syscall
            .compare_exchange(NONE, nr, Ordering::AcqRel, Ordering::Acquire);
        self.refused.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .first
            .compare_exchange(0, self.id + 1, Ordering::AcqRel, Ordering::Acquire);
    }
}

thread_local! {
    /// This thread's slot, for the SIGSYS handler. Const-initialised and without a destructor,
    /// so reading it in a signal handler is a plain TLS load. Null on unfiltered threads, and
    /// cleared by [`SlotOwner`]'s drop before the slot can go away.
    static SLOT: Cell<*const ThreadSlot> = const { Cell::new(std::ptr::null()) };
    /// Keeps this thread's slot alive as long as the thread runs (a filter stays on its thread
    /// until it exits).
    static OWNER: std::cell::RefCell<Option<SlotOwner>> = const { std::cell::RefCell::new(None) };
}

/// Owns a thread's slot; on drop (thread exit) detaches it from the handler first.
struct SlotOwner {
    _slot: Arc<ThreadSlot>,
}

impl Drop for SlotOwner {
    fn drop(&mut self) {
        SLOT.with(|s| s.set(std::ptr::null()));
    }
}

/// The `_sigsys` member of the kernel's `siginfo_t` on x86_64 (include/uapi/asm-generic/
/// siginfo.h): three ints, padding to the union's 8-byte alignment, then `_call_addr`,
/// `_syscall`, `_arch`. The `libc` crate does not expose these fields.
#[repr(C)]
struct SigsysInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// The SIGSYS handler: records the refused call and makes it return `-EPERM`.
extern "C" fn on_sigsys(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if sig != libc::SIGSYS || info.is_null() || ctx.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes) to an SA_SIGINFO handler;
    // SigsysInfo is a prefix of it with the kernel's layout (checked by a unit test).
    let si = unsafe { &*(info as *const SigsysInfo) };
    if si.si_code != SYS_SECCOMP {
        return; // a SIGSYS sent by kill(2): nothing to answer
    }
    let nr = i64::from(si.syscall);
    // A filtered thread past its TLS teardown has no slot any more: the call still fails.
    let slot = SLOT.with(|s| s.get());
    if !slot.is_null() {
        // SAFETY: a non-null SLOT points into the Arc<ThreadSlot> that this thread's OWNER
        // keeps alive; OWNER's drop nulls SLOT before releasing it.
        unsafe { (*slot).record(nr) };
    }
    // SAFETY: for SA_SIGINFO handlers the third argument is the interrupted context; RAX of
    // the saved registers becomes the trapped call's return value when the handler returns
    // (the kernel skipped the call and preset -ENOSYS there).
    unsafe {
        let uc = ctx as *mut libc::ucontext_t;
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

/// Wraps the process's panic hook (once) so that a filtered thread's slot knows it is
/// panicking before the message (and a backtrace, which opens files) is written: a panic then
/// ends the thread as a panic, not as a seccomp violation.
fn chain_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let slot = SLOT.with(|s| s.get());
        if !slot.is_null() {
            // SAFETY: as in `on_sigsys`: OWNER keeps the slot alive while SLOT points at it.
            unsafe { (*slot).panicking.store(true, Ordering::Release) };
        }
        previous(info);
    }));
}

/// Installs [`on_sigsys`] for the process, once.
/// glibc's malloc, the first time in a process that it shrinks the heap of a non-main arena
/// (a thread's own), opens /proc/sys/vm/overcommit_memory. On a filtered thread that `openat`
/// is refused and ends the run as a violation (`hv/tests/seccomp_heap.rs`). A trim threshold
/// no heap reaches means heaps are never shrunk, so the file is never opened: freed memory
/// stays in the heap for the next allocation instead of going back to the kernel (guest
/// memory is mapped apart from the heap and is not affected). Also fixes glibc's otherwise
/// adaptive mmap threshold, so hv's memory use does not step with allocation history.
fn keep_heaps_unshrunk() {
    // SAFETY: mallopt only changes the allocator's tuning; any value is valid.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
}

fn install_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    static FAILED: AtomicI64 = AtomicI64::new(0);
    ONCE.call_once(|| {
        keep_heaps_unshrunk();
        // SAFETY: sigaction with a zeroed struct, our handler, SA_SIGINFO and an empty mask is
        // the documented way to install a three-argument handler; the handler only touches
        // atomics, TLS without destructors and the interrupted context.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsys as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            FAILED.store(i64::from(errno.max(1)), Ordering::Relaxed);
            return;
        }
        chain_panic_hook();
    });
    match FAILED.load(Ordering::Relaxed) {
        0 => Ok(()),
        e => Err(SeccompError::Handler(std::io::Error::from_raw_os_error(
            e as i32,
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Per-partition monitor.

/// Most install-failure notes a monitor keeps.
const MAX_NOTES: usize = 8;

/// One partition's filters: whether they are on, every filtered thread, the first violation.
#[derive(Debug)]
pub struct Monitor {
    enabled: bool,
    /// First violating slot + 1; 0 while none. Shared with the slots (the handler sets it).
    first: Arc<AtomicUsize>,
    slots: Mutex<Vec<Arc<ThreadSlot>>>,
    notes: Mutex<Vec<String>>,
    /// Set after the first install failure, so each partition notes it once per kind.
    failed: [AtomicBool; 2],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// A monitor for one partition; with `enabled` false, [`install`] does nothing.
    pub fn new(enabled: bool) -> Arc<Monitor> {
        Arc::new(Monitor {
            enabled,
            first: Arc::new(AtomicUsize::new(0)),
            slots: Mutex::default(),
            notes: Mutex::default(),
            failed: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// Whether this partition's threads get filters.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The first refused call of this partition's threads, as the run's status. One atomic
    /// load while there is none (the vCPU loop calls it after every exit).
    pub fn violation(&self) -> Option<RunStatus> {
        let first = self.first.load(Ordering::Acquire);
        if first == 0 {
            return None;
        }
        let slots = lock(&self.slots);
        let slot = slots.get(first - 1)?;
        Some(RunStatus::SeccompViolation {
            thread: slot.label.clone(),
            syscall: slot.syscall.load(Ordering::Acquire),
        })
    }

    /// Remarks for the run's notes: install failures, and every thread with refused calls.
    pub fn notes(&self) -> Vec<String> {
        let mut n = lock(&self.notes).clone();
        if !self.enabled {
            n.push("seccomp: filters off (--no-seccomp)".into());
        }
        for s in lock(&self.slots).iter() {
            let in_panic = s.refused_panicking.load(Ordering::Relaxed);
            if in_panic > 0 {
                n.push(format!(
                    "seccomp: {} panicked; its filter refused {in_panic} call(s) of the panic \
                     report (a backtrace reads files)",
                    s.label
                ));
            }
            let refused = s.refused.load(Ordering::Relaxed);
            if refused > 0 {
                let nr = s.syscall.load(Ordering::Relaxed);
                n.push(format!(
                    "seccomp: {} had {refused} call(s) refused, the first {} ({nr})",
                    s.label,
                    syscall_name(nr).unwrap_or("unknown")
                ));
            }
        }
        n
    }

    fn note_failure(&self, kind: ThreadKind, e: &SeccompError) {
        let i = usize::from(kind == ThreadKind::Worker);
        if !self.failed[i].swap(true, Ordering::Relaxed) {
            let mut n = lock(&self.notes);
            if n.len() < MAX_NOTES {
                n.push(format!(
                    "seccomp: {e}; {} threads run unfiltered",
                    kind.name()
                ));
            }
        }
    }

    /// Installs `kind`'s filter on the calling thread, labelled `label` in statuses.
    /// Call it on the thread itself, after the thread's setup and before it serves the guest.
    pub fn install_current(&self, kind: ThreadKind, label: &str) -> Result<(), SeccompError> {
        if !self.enabled {
            return Ok(());
        }
        install_handler()?;
        let prog = program(kind)?;
        let slot = {
            let mut slots = lock(&self.slots);
            let slot = Arc::new(ThreadSlot {
                id: slots.len(),
                label: label.to_string(),
                syscall: AtomicI64::new(NONE),
                refused: AtomicU64::new(0),
                panicking: AtomicBool::new(false),
                refused_panicking: AtomicU64::new(0),
                first: self.first.clone(),
            });
            slots.push(slot.clone());
            slot
        };
        // Attach the slot before the filter: a refused call right after installation must find
        // it. Replacing an earlier owner (a second install on one thread) nulls SLOT in the old
        // owner's drop, so set the new pointer after the replacement.
        let ptr = Arc::as_ptr(&slot);
        OWNER.with(|o| *o.borrow_mut() = Some(SlotOwner { _slot: slot }));
        SLOT.with(|s| s.set(ptr));
        seccompiler::apply_filter(prog).map_err(|source| {
            OWNER.with(|o| *o.borrow_mut() = None);
            SeccompError::Install {
                kind: kind.name(),
                thread: label.to_string(),
                source,
            }
        })
    }
}

/// What a thread needs to filter itself: its partition's monitor (none: unfiltered) and its
/// label. Built where the thread is spawned, moved into it.
#[derive(Debug, Clone)]
pub struct Target {
    monitor: Option<Arc<Monitor>>,
    label: String,
}

impl Target {
    /// A thread of the partition `monitor` watches.
    pub fn new(monitor: &Arc<Monitor>, label: impl Into<String>) -> Target {
        Target {
            monitor: Some(monitor.clone()),
            label: label.into(),
        }
    }

    /// The same partition's filter for another thread.
    pub fn with_label(&self, label: impl Into<String>) -> Target {
        Target {
            monitor: self.monitor.clone(),
            label: label.into(),
        }
    }

    /// A thread that runs unfiltered (benches and unit tests that build devices without a
    /// partition).
    pub fn none(label: impl Into<String>) -> Target {
        Target {
            monitor: None,
            label: label.into(),
        }
    }
}

/// Installs `kind`'s filter on the calling thread for `target`'s partition. Never fails the
/// thread: when the filter cannot be installed, the partition's notes say so once per kind.
pub fn install(kind: ThreadKind, target: &Target) {
    if let Some(m) = &target.monitor {
        if let Err(e) = m.install_current(kind, &target.label) {
            m.note_failure(kind, &e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host support and names.

/// Whether this kernel has seccomp filters: `prctl(PR_GET_SECCOMP)` answers (EINVAL without
/// CONFIG_SECCOMP) and `/proc/self/status` lists a `Seccomp_filters` or `Seccomp` field.
/// `Err` carries the reason for `hv caps`.
pub fn supported() -> Result<String, String> {
    // SAFETY: PR_GET_SECCOMP takes no pointers and only reads the caller's mode.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if mode < 0 {
        return Err(format!(
            "prctl(PR_GET_SECCOMP) failed: {} (kernel without CONFIG_SECCOMP?)",
            std::io::Error::last_os_error()
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    match field {
        None => Err("/proc/self/status has no Seccomp field (no CONFIG_SECCOMP)".into()),
        // hv itself already under a filter (a container runtime's): hv's are stacked on it.
        Some(_) if mode == 2 => Ok("seccomp filters available (hv already runs under one)".into()),
        Some(_) => Ok("seccomp filters available".into()),
    }
}

macro_rules! syscall_names {
    ($($name:ident),* $(,)?) => {
        /// The name of x86_64 syscall `nr`, for the syscalls hv's threads might plausibly make
        /// (the allowed ones and the usual suspects); `None` for the rest.
        pub fn syscall_name(nr: i64) -> Option<&'static str> {
            paste_names!(nr, $($name),*)
        }
    };
}

macro_rules! paste_names {
    ($nr:expr, $($name:ident),*) => {{
        $(
            if $nr == libc::$name as i64 {
                return Some(&stringify!($name)[4..]);
            }
        )*
        None
    }};
}

syscall_names!(
    SYS_read,
    SYS_write,
    SYS_open,
    SYS_close,
    SYS_stat,
    SYS_fstat,
    SYS_lstat,
    SYS_poll,
    SYS_lseek,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_brk,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_access,
    SYS_pipe,
    SYS_select,
    SYS_sched_yield,
    SYS_mremap,
    SYS_msync,
    SYS_madvise,
    SYS_dup,
    SYS_dup2,
    SYS_nanosleep,
    SYS_getpid,
    SYS_socket,
    SYS_connect,
    SYS_accept,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_bind,
    SYS_listen,
    SYS_clone,
    SYS_fork,
    SYS_vfork,
    SYS_execve,
    SYS_exit,
    SYS_wait4,
    SYS_kill,
    SYS_uname,
    SYS_fcntl,
    SYS_flock,
    SYS_fsync,
    SYS_fdatasync,
    SYS_truncate,
    SYS_ftruncate,
    SYS_getcwd,
    SYS_chdir,
    SYS_rename,
    SYS_mkdir,
    SYS_rmdir,
    SYS_unlink,
    SYS_readlink,
    SYS_chmod,
    SYS_chown,
    SYS_umask,
    SYS_getrlimit,
    SYS_getrusage,
    SYS_sysinfo,
    SYS_ptrace,
    SYS_getuid,
    SYS_getgid,
    SYS_setuid,
    SYS_setgid,
    SYS_geteuid,
    SYS_getegid,
    SYS_getppid,
    SYS_setsid,
    SYS_sigaltstack,
    SYS_prctl,
    SYS_arch_prctl,
    SYS_setrlimit,
    SYS_mount,
    SYS_gettid,
    SYS_tkill,
    SYS_futex,
    SYS_sched_setaffinity,
    SYS_sched_getaffinity,
    SYS_epoll_create,
    SYS_getdents64,
    SYS_restart_syscall,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_exit_group,
    SYS_epoll_wait,
    SYS_epoll_ctl,
    SYS_tgkill,
    SYS_openat,
    SYS_mkdirat,
    SYS_newfstatat,
    SYS_unlinkat,
    SYS_renameat,
    SYS_readlinkat,
    SYS_ppoll,
    SYS_set_robust_list,
    SYS_epoll_pwait,
    SYS_timerfd_create,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_dup3,
    SYS_pipe2,
    SYS_preadv,
    SYS_pwritev,
    SYS_perf_event_open,
    SYS_prlimit64,
    SYS_getrandom,
    SYS_memfd_create,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_statx,
    SYS_rseq,
    SYS_clone3,
    SYS_close_range,
    SYS_openat2,
    SYS_seccomp,
    SYS_bpf,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigsys_info_matches_the_kernel_layout() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, si_code), 8);
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
        assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());
    }

    #[test]
    fn both_filters_compile_and_differ_where_they_should() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind).unwrap();
            assert!(
                !prog.is_empty() && prog.len() < 4096,
                "{kind:?}: {}",
                prog.len()
            );
        }
        let vcpu = allowed(ThreadKind::Vcpu).unwrap();
        let worker = allowed(ThreadKind::Worker).unwrap();
        // vCPUs may ioctl (only the listed KVM requests); workers may not ioctl at all.
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), vcpu_ioctls().len());
        assert!(!worker.contains_key(&libc::SYS_ioctl));
        assert!(worker.contains_key(&libc::SYS_epoll_wait));
        // A channel worker may ioctl, but only KVM_SIGNAL_MSI.
        let channel = allowed(ThreadKind::ChannelWorker).unwrap();
        assert_eq!(channel[&libc::SYS_ioctl].len(), 1);
        assert!(channel.contains_key(&libc::SYS_epoll_wait));
        assert!(!vcpu.contains_key(&libc::SYS_epoll_wait));
        // What a guest-steered bug would want is on neither list.
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_kill,
            libc::SYS_ptrace,
            libc::SYS_getppid,
            libc::SYS_perf_event_open,
            libc::SYS_seccomp,
        ] {
            assert!(!vcpu.contains_key(&nr), "vcpu allows {nr}");
            assert!(!worker.contains_key(&nr), "worker allows {nr}");
        }
        // Thread exit, signal return and panics need these on both lists.
        for nr in [
            libc::SYS_exit,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_sigaltstack,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_futex,
            libc::SYS_write,
        ] {
            assert!(vcpu.contains_key(&nr) && worker.contains_key(&nr), "{nr}");
        }
    }

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        // From include/uapi/linux/kvm.h on x86_64.
        let want = [
            ("KVM_RUN", 0xae80),
            ("KVM_GET_REGS", 0x8090_ae81),
            ("KVM_SET_REGS", 0x4090_ae82),
            ("KVM_GET_SREGS", 0x8138_ae83),
            ("KVM_SET_SREGS", 0x4138_ae84),
            ("KVM_SIGNAL_MSI", 0x4020_aea5),
            ("KVM_IRQ_LINE", 0x4008_ae61),
        ];
        assert_eq!(vcpu_ioctls(), want);
    }

    #[test]
    fn syscall_names_cover_the_usual_suspects() {
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_getppid), Some("getppid"));
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(100_000), None);
    }

    /// Runs `f` on a fresh thread that installed `kind`'s filter under a fresh monitor.
    fn filtered<T: Send + 'static>(
        kind: ThreadKind,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> (Arc<Monitor>, std::thread::Result<T>) {
        let m = Monitor::new(true);
        let target = Target::new(&m, format!("test-{}", kind.name()));
        let h = std::thread::spawn(move || {
            if let Some(mon) = &target.monitor {
                mon.install_current(kind, &target.label).unwrap();
            }
            f()
        });
        let r = h.join();
        (m, r)
    }

    #[test]
    fn a_refused_call_returns_eperm_is_recorded_and_the_thread_exits_cleanly() {
        for kind in ThreadKind::ALL {
            let (m, r) = filtered(kind, || {
                // Through syscall(2), which sets errno (glibc's getppid() never does).
                // SAFETY: getppid has no preconditions.
                let rc = unsafe { libc::syscall(libc::SYS_getppid) };
                (rc, std::io::Error::last_os_error().raw_os_error())
            });
            let (rc, errno) = r.expect("the filtered thread exits normally");
            assert_eq!((rc, errno), (-1, Some(libc::EPERM)), "{kind:?}");
            assert_eq!(
                m.violation(),
                Some(RunStatus::SeccompViolation {
                    thread: format!("test-{}", kind.name()),
                    syscall: libc::SYS_getppid,
                })
            );
            assert!(m.notes()[0].contains("getppid"), "{:?}", m.notes());
        }
    }

    #[test]
    fn allowed_calls_pass_and_leave_no_violation() {
        let (m, r) = filtered(ThreadKind::Worker, || {
            let v: Vec<u64> = (0..100_000).collect(); // malloc: mmap/munmap
            let sum: u64 = v.iter().sum();
            std::thread::yield_now();
            let _ = std::time::Instant::now();
            let e = vmm_sys_util::eventfd::EventFd::new(0);
            sum + u64::from(e.is_err())
        });
        // eventfd2 is not allowed after setup: the worker creates its fds before.
        assert!(r.unwrap() > 0);
        assert_eq!(
            m.violation(),
            Some(RunStatus::SeccompViolation {
                thread: "test-worker".into(),
                syscall: libc::SYS_eventfd2,
            })
        );
        let (m, r) = filtered(ThreadKind::Vcpu, || {
            let v: Vec<u8> = vec![1; 1 << 20];
            let (tx, rx) = std::sync::mpsc::channel();
            tx.send(v.len()).unwrap();
            rx.recv().unwrap()
        });
        assert_eq!(r.unwrap(), 1 << 20);
        assert_eq!(m.violation(), None);
    }

    #[test]
    fn arguments_are_filtered_not_only_call_numbers() {
        // A non-KVM ioctl on a vCPU thread.
        let (m, r) = filtered(ThreadKind::Vcpu, || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the valid pointer (or fails).
            unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) }
        });
        assert_eq!(r.unwrap(), -1);
        assert!(
            matches!(m.violation(), Some(RunStatus::SeccompViolation { syscall, .. }) if syscall == libc::SYS_ioctl)
        );
        // New executable memory on a worker; plain memory and F_GETFD pass.
        let (m, r) = filtered(ThreadKind::Worker, || {
            // SAFETY: an anonymous private mapping with no address hint; unmapped below.
            let plain = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            // SAFETY: as above.
            let exec = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            // SAFETY: fcntl(F_GETFD) only reads the descriptor flags.
            let getfd = unsafe { libc::fcntl(0, libc::F_GETFD) };
            if plain != libc::MAP_FAILED {
                // SAFETY: `plain` is the 4 KiB mapping made above.
                unsafe { libc::munmap(plain, 4096) };
            }
            (
                plain != libc::MAP_FAILED,
                exec == libc::MAP_FAILED,
                getfd >= 0,
            )
        });
        assert_eq!(r.unwrap(), (true, true, true));
        assert_eq!(
            m.violation(),
            Some(RunStatus::SeccompViolation {
                thread: "test-worker".into(),
                syscall: libc::SYS_mmap,
            })
        );
    }

    #[test]
    fn a_panicking_filtered_thread_unwinds_without_violations() {
        for kind in ThreadKind::ALL {
            let (m, r) = filtered::<()>(kind, || panic!("filtered thread panics on purpose"));
            assert!(r.is_err());
            assert_eq!(m.violation(), None, "{kind:?}: {:?}", m.notes());
        }
    }

    #[test]
    fn disabled_monitor_installs_nothing() {
        let m = Monitor::new(false);
        let target = Target::new(&m, "off");
        let rc = std::thread::spawn(move || {
            install(ThreadKind::Vcpu, &target);
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() }
        })
        .join()
        .unwrap();
        assert!(rc > 0);
        assert_eq!(m.violation(), None);
    }

    #[test]
    fn seccomp_is_supported_here() {
        // Linux has had SECCOMP_FILTER since 3.5; every host hv runs on has it.
        assert!(supported().is_ok(), "{:?}", supported());
    }
}
