//! The contract between hvlab guests and the VMM that runs them (hv, or a peer such as QEMU).
//!
//! Everything here is plain data so that the no_std guest and the host agree on one definition.
//! The README's "Guest protocol" section is the prose version of this file.
#![no_std]

pub mod net;
pub mod virtio_mmio;

/// COM1: a 16550 UART. Line-oriented console text; result lines are printed here too.
pub const CONSOLE_PORT: u16 = 0x3f8;

/// A 32-bit write ends the run with that status (QEMU's `isa-debug-exit` convention; QEMU then
/// exits with `(status << 1) | 1`).
pub const EXIT_PORT: u16 = 0xf4;

/// A 32-bit write marks a phase boundary: `phase_id | PHASE_END` for the end, `phase_id` for the
/// begin. hv snapshots every counter at that exit; the marker exits themselves fall outside the
/// phase. Under a VMM that ignores the port (QEMU) the write is harmless.
pub const PHASE_PORT: u16 = 0x700;
/// Bit set in a phase marker value for the end of a phase.
pub const PHASE_END: u32 = 1 << 31;

/// hv test port: every access is a userspace exit answered by hv (reads return
/// [`TEST_PORT_READ_VALUE`]). Used by exit-floor's `pio-out` / `pio-in`.
pub const TEST_PORT: u16 = 0x702;
/// What a read of [`TEST_PORT`] or [`TEST_MMIO_BASE`] returns, so the guest can tell a VMM that
/// answers from one that ignores the access (which reads all ones).
pub const TEST_PORT_READ_VALUE: u32 = 0x4856_4c42; // "HVLB"

/// A port whose writes KVM completes in the kernel (hv registers an ioeventfd on it), so a
/// write costs an exit to KVM but none to userspace. exit-floor's `pio-kernel`.
pub const KERNEL_PORT: u16 = 0x704;

/// Guest-physical MMIO window for devices; guest RAM must stay below it.
pub const MMIO_WINDOW_BASE: u64 = 0xc000_0000;
/// hv test MMIO region (one page): every access is a userspace exit answered by hv.
pub const TEST_MMIO_BASE: u64 = 0xd000_0000;
/// Size of the test MMIO region.
pub const TEST_MMIO_SIZE: u64 = 0x1000;

/// Highest guest RAM size the guest's identity map and the MMIO window allow.
pub const MAX_GUEST_RAM: u64 = MMIO_WINDOW_BASE;

/// Where the PVH start info lives when hv boots a guest (QEMU picks its own).
pub const START_INFO_ADDR: u64 = 0x6000;
/// Where hv puts the command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x7000;
/// Longest command line hv accepts, NUL included.
pub const CMDLINE_MAX: usize = 0x1000;
/// Physical address where the guest image is linked.
pub const IMAGE_BASE: u64 = 0x10_0000;

/// Exit statuses a guest writes to [`EXIT_PORT`].
pub mod status {
    /// The workload ran and verified its results.
    pub const OK: u32 = 0;
    /// The workload ran but a check failed (data mismatch, unexpected value).
    pub const WORKLOAD_FAILED: u32 = 1;
    /// The command line named no workload, an unknown one, or bad arguments.
    pub const BAD_ARGS: u32 = 2;
    /// The guest took an unexpected exception (details on the console).
    pub const EXCEPTION: u32 = 3;
    /// The guest runtime panicked (message on the console).
    pub const PANIC: u32 = 4;
    /// The workload needs something this VMM or host does not offer (reason on the console).
    pub const UNSUPPORTED: u32 = 5;
}

/// Every result line starts with this token, then space-separated `key=value` pairs. Values
/// never contain spaces. Lines without the prefix are free text.
pub const LINE_PREFIX: &str = "HVLAB";

/// Record kinds (the `rec=` key, always first after the prefix):
///
/// - `rec=phase id=N name=NAME ops=N tsc=CYCLES [metric=value ...]` — one measured phase.
/// - `rec=hist id=N unit=tsc b=IDX:COUNT,IDX:COUNT,...` — the phase's latency histogram in
///   [`hist_bucket`] buckets (only non-empty buckets).
/// - `rec=info key=value ...` — facts the guest found (CPU count, hypervisor signature, ...).
/// - `rec=skip name=NAME reason=WORD_WORD` — a micro-test the guest could not run here.
pub mod rec {
    pub const PHASE: &str = "phase";
    pub const HIST: &str = "hist";
    pub const INFO: &str = "info";
    pub const SKIP: &str = "skip";
}

/// Sub-buckets per power of two in the guest's latency histogram.
pub const HIST_SUB_BITS: u32 = 2;
/// Number of buckets: enough for any u64 value.
pub const HIST_BUCKETS: usize = (64 << HIST_SUB_BITS) as usize;

/// Log-linear bucket of a value: 4 buckets per power of two (relative error <= 25%), computed
/// with shifts only (no floating point, no popcnt/lzcnt needed beyond `leading_zeros`).
pub const fn hist_bucket(v: u64) -> usize {
    if v < (1 << HIST_SUB_BITS) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1);
    (((msb - HIST_SUB_BITS + 1) << HIST_SUB_BITS) as u64 + sub) as usize
}

/// Lowest value that falls into `bucket` (inverse of [`hist_bucket`]).
pub const fn hist_bucket_low(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < (1 << HIST_SUB_BITS) {
        return b;
    }
    let octave = (b >> HIST_SUB_BITS) - 1;
    let sub = b & ((1 << HIST_SUB_BITS) - 1);
    ((1 << HIST_SUB_BITS) | sub) << octave
}

/// hv's own CPUID leaves (hv's enlightenments are advertised here; KVM's stay at 0x40000000).
pub const HV_CPUID_BASE: u32 = 0x4000_0100;
/// Signature returned in EBX, ECX, EDX of [`HV_CPUID_BASE`]: "hvlabhvlabhv".
pub const HV_CPUID_SIGNATURE: [u8; 12] = *b"hvlabhvlabhv";

/// The Hyper-V Top-Level Functional Specification (TLFS) subset hv serves in userspace
/// (`hv/src/enlightenments/hyperv/`): CPUID leaves, synthetic MSRs, hypercall codes and
/// status codes, as numbered by the TLFS. Shared by hv and the guest runtime.
pub mod hyperv {
    /// CPUID 0x40000000: max leaf in EAX, "Microsoft Hv" in EBX, ECX, EDX.
    pub const CPUID_VENDOR: u32 = 0x4000_0000;
    /// CPUID 0x40000001: interface signature "Hv#1" in EAX.
    pub const CPUID_INTERFACE: u32 = 0x4000_0001;
    /// CPUID 0x40000002: hypervisor version.
    pub const CPUID_VERSION: u32 = 0x4000_0002;
    /// CPUID 0x40000003: features (EAX privileges, EDX features).
    pub const CPUID_FEATURES: u32 = 0x4000_0003;
    /// CPUID 0x40000004: recommendations (EAX) and spinlock retry count (EBX).
    pub const CPUID_RECOMMENDATIONS: u32 = 0x4000_0004;
    /// CPUID 0x40000005: implementation limits.
    pub const CPUID_LIMITS: u32 = 0x4000_0005;
    /// Vendor signature of leaf 0x40000000.
    pub const VENDOR: [u8; 12] = *b"Microsoft Hv";
    /// Leaf 0x40000001 EAX: "Hv#1".
    pub const INTERFACE_HV1: u32 = u32::from_le_bytes(*b"Hv#1");
    /// Where KVM's own leaves move when the Hyper-V leaves are shown (as QEMU does).
    pub const KVM_CPUID_BASE_BEHIND_HYPERV: u32 = 0x4000_0100;
    /// Where hv's private leaves move when the Hyper-V leaves are shown (transitional).
    pub const HV_CPUID_BASE_BEHIND_HYPERV: u32 = 0x4000_0200;

    // Leaf 0x40000003 EAX: partition privileges (MSR access).
    /// HV_X64_MSR_TIME_REF_COUNT available.
    pub const PRIV_TIME_REF_COUNT: u32 = 1 << 1;
    /// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL available.
    pub const PRIV_HYPERCALL_MSRS: u32 = 1 << 5;
    /// HV_X64_MSR_VP_INDEX available.
    pub const PRIV_VP_INDEX: u32 = 1 << 6;
    /// HV_X64_MSR_REFERENCE_TSC available.
    pub const PRIV_REFERENCE_TSC: u32 = 1 << 9;
    /// HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY available.
    pub const PRIV_FREQUENCY_MSRS: u32 = 1 << 11;
    // Leaf 0x40000003 EDX: features.
    /// Frequency MSRs available (EDX bit 8).
    pub const FEAT_FREQUENCY_MSRS: u32 = 1 << 8;

    // Leaf 0x40000004 EAX: recommendations.
    /// Use HvCallFlushVirtualAddressSpace(List) for remote flushes.
    pub const REC_REMOTE_TLB_FLUSH: u32 = 1 << 2;
    /// Relaxed timing: do not treat watchdog timeouts as fatal.
    pub const REC_RELAXED_TIMING: u32 = 1 << 5;
    /// Use HvCallSendSyntheticClusterIpi.
    pub const REC_CLUSTER_IPI: u32 = 1 << 7;
    /// The Ex (sparse VP set) forms are available.
    pub const REC_EX_PROCESSOR_MASKS: u32 = 1 << 8;
    /// Leaf 0x40000004 EBX value meaning "never notify a long spin".
    pub const SPIN_NEVER: u32 = 0xffff_ffff;

    // Synthetic MSRs.
    pub const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
    pub const MSR_HYPERCALL: u32 = 0x4000_0001;
    pub const MSR_VP_INDEX: u32 = 0x4000_0002;
    pub const MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
    pub const MSR_REFERENCE_TSC: u32 = 0x4000_0021;
    pub const MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
    pub const MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
    pub const MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
    /// Enable bit of MSR_HYPERCALL, MSR_REFERENCE_TSC and MSR_VP_ASSIST_PAGE.
    pub const MSR_ENABLE: u64 = 1;
    /// Lock bit of MSR_HYPERCALL.
    pub const HYPERCALL_LOCKED: u64 = 1 << 1;
    // SynIC and synthetic timer MSRs (hv-synic, hv-stimer).
    pub const MSR_SCONTROL: u32 = 0x4000_0080;
    pub const MSR_SVERSION: u32 = 0x4000_0081;
    pub const MSR_SIEFP: u32 = 0x4000_0082;
    pub const MSR_SIMP: u32 = 0x4000_0083;
    pub const MSR_EOM: u32 = 0x4000_0084;
    /// SINT0; SINTn is `MSR_SINT0 + n` (n < 16).
    pub const MSR_SINT0: u32 = 0x4000_0090;
    /// STIMER0_CONFIG; timer n's CONFIG is `+ 2n`, its COUNT `+ 2n + 1` (n < 4).
    pub const MSR_STIMER0_CONFIG: u32 = 0x4000_00b0;
    /// SINT MSR bits: vector 7:0, masked 16, auto-EOI 17, polling 18.
    pub const SINT_MASKED: u64 = 1 << 16;
    pub const SINT_AUTO_EOI: u64 = 1 << 17;
    pub const SINT_POLLING: u64 = 1 << 18;
    /// STIMER CONFIG bits: enable 0, periodic 1, lazy 2, auto-enable 3, vector 11:4, direct
    /// mode 12, SINT 19:16.
    pub const STIMER_ENABLE: u64 = 1 << 0;
    pub const STIMER_PERIODIC: u64 = 1 << 1;
    pub const STIMER_LAZY: u64 = 1 << 2;
    pub const STIMER_AUTO_ENABLE: u64 = 1 << 3;
    pub const STIMER_DIRECT: u64 = 1 << 12;
    /// SynIC message slot: 256 bytes per SINT in the SIMP page; header type (u32 @0),
    /// payload size (u8 @4), flags (u8 @5, bit 0 = message pending), port/sender (u64 @8),
    /// payload @16.
    pub const MSG_SLOT_SIZE: u64 = 256;
    pub const MSG_PAYLOAD_MAX: usize = 240;
    pub const MSG_FLAG_PENDING: u8 = 1;
    pub const HVMSG_NONE: u32 = 0;
    pub const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;
    /// Event flags: 2048 bits (256 bytes) per SINT in the SIEFP page.
    pub const EVENT_FLAGS_PER_SINT: u32 = 2048;
    // Leaf 0x40000003 bits of the SynIC and timers.
    /// EAX: SynIC MSRs available.
    pub const PRIV_SYNIC_MSRS: u32 = 1 << 2;
    /// EAX: synthetic timer MSRs available.
    pub const PRIV_SYNTIMER_MSRS: u32 = 1 << 3;
    /// EBX: HvCallPostMessage allowed.
    pub const PRIV_POST_MESSAGES: u32 = 1 << 4;
    /// EBX: HvCallSignalEvent allowed.
    pub const PRIV_SIGNAL_EVENTS: u32 = 1 << 5;
    /// EDX: direct-mode synthetic timers available.
    pub const FEAT_STIMER_DIRECT: u32 = 1 << 19;
    /// Leaf 0x40000004 EAX: auto-EOI deprecated (hv cannot honour it: see the SynIC docs).
    pub const REC_DEPRECATING_AEOI: u32 = 1 << 9;
    /// hv's loopback connections (an hv choice, documented in `hv`): connection id
    /// `CONN_MSG_BASE + vp * 16 + sint` posts messages to that VP's SINT,
    /// `CONN_EVENT_BASE + vp * 16 + sint` signals its event flags.
    pub const CONN_MSG_BASE: u32 = 0x0001_0000;
    pub const CONN_EVENT_BASE: u32 = 0x0002_0000;
    pub const CALL_POST_MESSAGE: u16 = 0x005c;
    pub const CALL_SIGNAL_EVENT: u16 = 0x005d;
    pub const STATUS_INVALID_PORT_ID: u16 = 0x0011;
    pub const STATUS_INVALID_CONNECTION_ID: u16 = 0x0012;
    pub const STATUS_INSUFFICIENT_BUFFERS: u16 = 0x0013;
    /// hv's transport behind the hypercall page (an hv choice, not the TLFS): the page saves
    /// RCX in R9 and RDX in R10, then writes this MSR, which hv filters to userspace.
    pub const MSR_HV_HYPERCALL_TRANSPORT: u32 = 0x4856_4c01;

    // Hypercall codes.
    pub const CALL_FLUSH_SPACE: u16 = 0x0002;
    pub const CALL_FLUSH_LIST: u16 = 0x0003;
    pub const CALL_NOTIFY_LONG_SPIN_WAIT: u16 = 0x0008;
    pub const CALL_SEND_IPI: u16 = 0x000b;
    pub const CALL_FLUSH_SPACE_EX: u16 = 0x0013;
    pub const CALL_FLUSH_LIST_EX: u16 = 0x0014;
    pub const CALL_SEND_IPI_EX: u16 = 0x0015;
    /// Input value bit 16: fast (register) call.
    pub const INPUT_FAST: u64 = 1 << 16;

    // Flush flags.
    pub const FLUSH_ALL_PROCESSORS: u64 = 1 << 0;
    pub const FLUSH_ALL_SPACES: u64 = 1 << 1;
    pub const FLUSH_NON_GLOBAL_ONLY: u64 = 1 << 2;
    pub const FLUSH_EXTENDED_RANGES: u64 = 1 << 3;
    /// VP set formats.
    pub const VPSET_SPARSE_4K: u64 = 0;
    pub const VPSET_ALL: u64 = 1;

    // Status codes (RAX bits 15:0).
    pub const STATUS_SUCCESS: u16 = 0x0000;
    pub const STATUS_INVALID_HYPERCALL_CODE: u16 = 0x0002;
    pub const STATUS_INVALID_HYPERCALL_INPUT: u16 = 0x0003;
    pub const STATUS_INVALID_ALIGNMENT: u16 = 0x0004;
    pub const STATUS_INVALID_PARAMETER: u16 = 0x0005;
    pub const STATUS_ACCESS_DENIED: u16 = 0x0006;
    pub const STATUS_OPERATION_DENIED: u16 = 0x0008;
    pub const STATUS_INVALID_VP_INDEX: u16 = 0x000e;
    pub const STATUS_TIMEOUT: u16 = 0x0078;

    /// Builds a hypercall input value: code, fast bit, variable header size (8-byte units),
    /// rep count and rep start index.
    pub const fn input(code: u16, fast: bool, var_hdr: u16, reps: u16, start: u16) -> u64 {
        code as u64
            | if fast { INPUT_FAST } else { 0 }
            | ((var_hdr as u64 & 0x3ff) << 17)
            | ((reps as u64 & 0xfff) << 32)
            | ((start as u64 & 0xfff) << 48)
    }

    /// Status of a hypercall result (RAX).
    pub const fn status(rax: u64) -> u16 {
        rax as u16
    }

    /// Reps completed of a hypercall result (RAX bits 43:32).
    pub const fn reps_completed(rax: u64) -> u16 {
        ((rax >> 32) & 0xfff) as u16
    }

    /// Reference time from the TSC page: `((tsc * scale) >> 64) + offset`, 100 ns units.
    pub const fn tsc_page_time(tsc: u64, scale: u64, offset: i64) -> u64 {
        (((tsc as u128 * scale as u128) >> 64) as u64).wrapping_add(offset as u64)
    }
}

/// hv's VMBus-style channel (a simplified VMBus, not Microsoft's wire format): management
/// messages through the SynIC, one ring pair per channel in guest memory (layout in
/// `hv/src/devices/vmbus/ring.rs`), signals by HvCallSignalEvent and SynIC event flags.
pub mod vmbus {
    /// Guest -> hv management messages: HvCallPostMessage to this connection, message type
    /// [`MSG_TYPE`], payload word 0 = the message kind.
    pub const CONN_MANAGEMENT: u32 = 4;
    /// Guest -> hv channel signal: HvCallSignalEvent to `CONN_CHANNEL_BASE + channel`, flag 0.
    pub const CONN_CHANNEL_BASE: u32 = 0x0003_0000;
    /// hv -> guest management replies: a message of type [`MSG_TYPE`] in VP 0's SINT 2 slot.
    pub const SINT_MANAGEMENT: u32 = 2;
    /// hv -> guest channel signals: VP 0's SINT 3 event flag number = channel id.
    pub const SINT_CHANNEL: u32 = 3;
    pub const MSG_TYPE: u32 = 1;
    /// Guest: which channels are there? Reply [`OFFERS`]: kind, count, then (channel, device)
    /// pairs of u32.
    pub const REQUEST_OFFERS: u32 = 3;
    pub const OFFERS: u32 = 1;
    /// Guest: open `channel` (u32) with rings at `gpa` (u64 at byte 8): the guest -> hv ring of
    /// `out_pages` (u32 at 16) pages then the hv -> guest ring of `in_pages` (u32 at 20) pages,
    /// each including its 4 KiB control page. Reply [`OPEN_RESULT`]: kind, channel, status.
    pub const OPEN: u32 = 5;
    pub const OPEN_RESULT: u32 = 6;
    pub const OPEN_OK: u32 = 0;
    pub const OPEN_BAD_RING: u32 = 1;
    pub const OPEN_UNKNOWN_CHANNEL: u32 = 2;
    /// Device class of a channel that returns every packet it gets (kind, transaction id and
    /// payload), for measuring the transport itself.
    pub const DEVICE_ECHO: u32 = 1;
    /// Packet kind of in-band data.
    pub const PACKET_DATA: u16 = 6;
    /// Packet kind of a completion (VMBus's VM_PKT_COMP): the answer to a packet that asked
    /// for one, with the request's transaction id.
    pub const PACKET_COMPLETION: u16 = 11;
    /// Packet flag: the sender wants a completion (VMBus's COMPLETION_REQUESTED).
    pub const FLAG_COMPLETION_REQUESTED: u16 = 1;
    /// hv -> guest management message: hv closed `channel` (u32 at 4) because the guest broke
    /// its ring protocol; `reason` (u32 at 8) is one of the `CLOSED_*` codes. Later signals on
    /// the channel get HV_STATUS_INVALID_PORT_ID until the guest opens it again.
    pub const CHANNEL_CLOSED: u32 = 7;
    /// A ring index was unaligned or past its ring.
    pub const CLOSED_BAD_INDEX: u32 = 1;
    /// A packet was larger than its ring or than hv reads.
    pub const CLOSED_OVERSIZED: u32 = 2;
    /// A packet descriptor was malformed.
    pub const CLOSED_BAD_DESCRIPTOR: u32 = 3;
    /// Guest memory behind the ring could not be accessed.
    pub const CLOSED_MEMORY: u32 = 4;
    /// Device class: block storage (the request/response protocol of [`blk`]).
    pub const DEVICE_BLOCK: u32 = 2;
    /// Device class: a console (the protocol of [`console`]).
    pub const DEVICE_CONSOLE: u32 = 3;

    /// The block device's protocol, a simplified storvsc. Each request is one
    /// `PACKET_DATA` packet with
    /// `FLAG_COMPLETION_REQUESTED` and a transaction
    /// id of the guest's choosing; its payload is [`REQUEST_BYTES`] bytes: `op` u32 @0,
    /// `sectors` u32 @4, `lba` u64 @8, buffer GPA u64 @16, reserved u64 @24. The buffer is one
    /// guest-physical range of `sectors * 512` bytes (VMBus would send a GPA range list; the
    /// guest runtime identity-maps RAM, so one range does). hv answers each request with one
    /// `PACKET_COMPLETION` with the same transaction id and
    /// a [`COMPLETION_BYTES`]-byte payload: `status` u32 @0, bytes transferred u32 @4, `value`
    /// u64 @8 (the capacity in sectors for [`OP_INFO`], else 0). Requests are served in ring
    /// order; a guest may have as many in flight as its rings hold.
    pub mod blk {
        /// Capacity query: the completion's `value` is the capacity in sectors, and its
        /// `bytes` field is 1 when the disk is read-only, else 0.
        pub const OP_INFO: u32 = 0;
        pub const OP_READ: u32 = 1;
        pub const OP_WRITE: u32 = 2;
        pub const OP_FLUSH: u32 = 3;
        pub const REQUEST_BYTES: usize = 32;
        pub const COMPLETION_BYTES: usize = 16;
        pub const STATUS_OK: u32 = 0;
        /// The disk failed the request (an injected fault, an I/O error, past the end).
        pub const STATUS_IOERR: u32 = 1;
        /// Unknown `op`.
        pub const STATUS_UNSUPPORTED: u32 = 2;
        /// The buffer is not wholly in guest RAM, or the transfer is 0 or over
        /// [`MAX_TRANSFER`] bytes, or the request is shorter than [`REQUEST_BYTES`].
        pub const STATUS_BAD_REQUEST: u32 = 3;
        /// Largest transfer of one request.
        pub const MAX_TRANSFER: u32 = 256 * 1024;
    }

    /// The console's protocol. The guest sends its output as `PACKET_DATA`
    /// packets whose payload is the byte count u32 @0, reserved u32 @4, then the bytes (at most
    /// `MAX_LINE`). hv writes them to the partition's console; with
    /// `FLAG_LOOPBACK` it also sends them back as one data packet of the
    /// same format and transaction id (instead of a completion); with
    /// `FLAG_COMPLETION_REQUESTED` alone it answers one
    /// completion whose payload is the byte count u32 @0, reserved u32 @4.
    pub mod console {
        pub const FLAG_LOOPBACK: u16 = 2;
        pub const MAX_LINE: usize = 1024;
    }
}

/// KVM's paravirtual interface as Linux's `kvm_para.h` defines it: CPUID 0x40000001 EAX feature
/// bits, MSRs and hypercall numbers, plus the pure arithmetic guest and host both test.
pub mod kvm_pv {
    /// KVM's signature in CPUID 0x40000000 EBX/ECX/EDX (Linux searches 0x40000000..0x40010000
    /// in steps of 0x100 for it).
    pub const SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";

    pub const FEATURE_CLOCKSOURCE: u32 = 0;
    pub const FEATURE_NOP_IO_DELAY: u32 = 1;
    pub const FEATURE_CLOCKSOURCE2: u32 = 3;
    pub const FEATURE_ASYNC_PF: u32 = 4;
    pub const FEATURE_STEAL_TIME: u32 = 5;
    pub const FEATURE_PV_EOI: u32 = 6;
    pub const FEATURE_PV_UNHALT: u32 = 7;
    pub const FEATURE_PV_TLB_FLUSH: u32 = 9;
    pub const FEATURE_PV_SEND_IPI: u32 = 11;
    pub const FEATURE_POLL_CONTROL: u32 = 12;
    pub const FEATURE_PV_SCHED_YIELD: u32 = 13;
    pub const FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 24;

    /// Bit mask of feature `bit`.
    pub const fn bit(feature: u32) -> u32 {
        1 << feature
    }

    pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
    pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
    pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
    pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
    pub const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
    /// Bit 0 of the system-time, steal-time and PV-EOI MSRs: enabled.
    pub const MSR_ENABLED: u64 = 1;

    /// `kvm_steal_time.preempted` bits.
    pub const VCPU_PREEMPTED: u8 = 1 << 0;
    pub const VCPU_FLUSH_TLB: u8 = 1 << 1;

    pub const HC_KICK_CPU: u64 = 5;
    pub const HC_SEND_IPI: u64 = 10;
    pub const HC_SCHED_YIELD: u64 = 11;
    /// What KVM returns for an unknown hypercall (-KVM_ENOSYS).
    pub const ENOSYS: i64 = -1000;

    /// `pvclock_vcpu_time_info`: nanoseconds since `system_time` was sampled, from a TSC delta.
    pub const fn pvclock_scale(delta_tsc: u64, mul: u32, shift: i8) -> u64 {
        let d = if shift < 0 {
            delta_tsc >> ((-(shift as i32)) as u32)
        } else {
            delta_tsc << (shift as u32)
        };
        ((d as u128 * mul as u128) >> 32) as u64
    }

    /// KVM_HC_SEND_IPI covers APIC IDs `min..min+128` in two 64-bit bitmaps. Returns
    /// `(bitmap_low, bitmap_high, min)` for the first window of `ids` at or above `from`, and
    /// the next id not covered (for the following call), as Linux's `__send_ipi_mask` does.
    pub fn send_ipi_window(ids: &[u32], from: u32) -> Option<(u64, u64, u32, Option<u32>)> {
        let min = ids.iter().copied().filter(|&i| i >= from).min()?;
        let (mut lo, mut hi, mut next) = (0u64, 0u64, None::<u32>);
        for &id in ids.iter().filter(|&&i| i >= from) {
            let off = id - min;
            if off < 64 {
                lo |= 1 << off;
            } else if off < 128 {
                hi |= 1 << (off - 64);
            } else {
                next = Some(next.map_or(id, |n: u32| n.min(id)));
            }
        }
        Some((lo, hi, min, next))
    }
}

/// Multiboot v1 boot of the guest image (its header is in `guests/image`): what the entry sees
/// and how the command line is read.
pub mod multiboot {
    /// EAX a multiboot v1 loader passes to the kernel.
    pub const BOOT_MAGIC: u32 = 0x2BAD_B002;
    /// Multiboot information `flags` bit: `cmdline` (offset 16) is valid.
    pub const INFO_CMDLINE: u32 = 1 << 2;

    /// The kernel's own arguments from a multiboot command line. Loaders put the kernel's file
    /// name first (QEMU: "FILE ARGS", GRUB likewise), while hvlab's line is `<workload>
    /// key=value ...`: a leading word is a file name when it has a `/`, or when the next word
    /// is not `key=value` either (a workload name is followed only by `key=value` words).
    pub fn kernel_args(line: &str) -> &str {
        let line = line.trim_start();
        let mut words = line.split_whitespace();
        let (Some(first), second) = (words.next(), words.next()) else {
            return line;
        };
        let is_file = first.contains('/') || second.is_some_and(|w| !w.contains('='));
        if is_file && !first.contains('=') {
            line[first.len()..].trim_start()
        } else {
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_invertible() {
        let mut last = 0;
        for v in 0..5000u64 {
            let b = hist_bucket(v);
            assert!(b >= last, "bucket went down at {v}");
            assert!(hist_bucket_low(b) <= v, "low bound above value at {v}");
            assert_eq!(hist_bucket(hist_bucket_low(b)), b);
            last = b;
        }
        assert!(hist_bucket(u64::MAX) < HIST_BUCKETS);
    }

    #[test]
    fn pvclock_scale_matches_linux_arithmetic() {
        // mul = 2^31 (0.5) with shift 1 -> delta ns = delta tsc.
        assert_eq!(kvm_pv::pvclock_scale(1000, 1 << 31, 1), 1000);
        assert_eq!(kvm_pv::pvclock_scale(1000, 1 << 31, -1), 250);
        assert_eq!(
            kvm_pv::pvclock_scale(u64::MAX >> 1, u32::MAX, 0),
            (((u64::MAX >> 1) as u128 * u32::MAX as u128) >> 32) as u64
        );
    }

    #[test]
    fn multiboot_command_lines_lose_the_loaders_file_name_only() {
        use multiboot::kernel_args;
        assert_eq!(kernel_args("/tmp/g.elf platform cpus=2"), "platform cpus=2");
        assert_eq!(
            kernel_args("g.elf platform"),
            "platform",
            "no slash, next word bare"
        );
        assert_eq!(kernel_args("/tmp/g.elf"), "", "file name alone");
        assert_eq!(kernel_args("platform cpus=2"), "platform cpus=2");
        assert_eq!(kernel_args("platform"), "platform");
        assert_eq!(kernel_args("  exit-floor iters=5"), "exit-floor iters=5");
        assert_eq!(kernel_args("cpus=2 a=b"), "cpus=2 a=b");
        assert_eq!(kernel_args(""), "");
    }

    #[test]
    fn send_ipi_windows_cover_every_id_once() {
        let ids = [3, 5, 70, 200, 131];
        let (lo, hi, min, next) = kvm_pv::send_ipi_window(&ids, 0).unwrap();
        assert_eq!(min, 3);
        assert_eq!(lo, (1 << 0) | (1 << 2));
        assert_eq!(hi, 1 << (70 - 3 - 64));
        assert_eq!(next, Some(131));
        let (lo, hi, min, next) = kvm_pv::send_ipi_window(&ids, 131).unwrap();
        assert_eq!((lo, hi, min, next), (1, 1 << (200 - 131 - 64), 131, None));
        assert!(kvm_pv::send_ipi_window(&ids, 201).is_none());
    }
}
