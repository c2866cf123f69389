//! Partitions: one KVM VM each, with its own guest memory from GPA 0, in-kernel irqchip, vCPU
//! threads, buses and devices. Partitions share nothing but the host.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hvlab_protocol::{
    CONSOLE_PORT, EXIT_PORT, KERNEL_PORT, MAX_GUEST_RAM, PHASE_PORT, TEST_MMIO_BASE,
    TEST_MMIO_SIZE, TEST_PORT,
};
use kvm_bindings::{
    CpuId, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES, kvm_enable_cap,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::bus::{Bus, SharedDevice};
use crate::counters::cputime::ThreadClock;
use crate::counters::kvm_stats::KvmStatsReader;
use crate::counters::{Meter, PhaseDelta, VcpuExitCounters};
use crate::devices::NoteSink;
use crate::devices::emulated::pm_timer::{PM_TIMER_PORT, PmTimer};
use crate::devices::emulated::rtc::{RTC_PORT, Rtc};
use crate::devices::emulated::serial::{ConsoleCapture, ConsoleSink, SerialDevice};
use crate::devices::hv_ports::{ExitPort, PhasePort, TestRegister};
use crate::enlightenments::{EnlightenmentHost, EnlightenmentSet};
use crate::error::HvError;
use crate::isolation::seccomp::{self, Monitor, ThreadKind};
use crate::status::RunStatus;
use crate::vcpu::{ExitRegs, RunControl, UnmappedLog, UnmappedPolicy, VcpuRunner};

/// Smallest guest RAM hv accepts: the image at 1 MiB plus its stacks fit well below it.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest vCPU count the guest runtime supports.
pub const MAX_VCPUS: u32 = 64;

/// Where the interrupt controllers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqChip {
    /// Local APICs in KVM; no PIC/IOAPIC (devices interrupt through MSI routes). Tears down in
    /// ~60 us here, against 11-15 ms for the full irqchip, which dominates short runs.
    #[default]
    Split,
    /// PIC, IOAPIC, PIT-capable and local APICs all in KVM.
    Full,
}

/// How to build one partition.
#[derive(Debug, Clone)]
pub struct PartitionConfig {
    /// Index among the partitions of one run (also passed to the guest as `part=`).
    pub index: u32,
    pub vcpus: u32,
    pub mem_bytes: u64,
    /// Guest command line.
    pub cmdline: String,
    /// Host CPUs to pin vCPU threads to, round-robin (vCPU i -> cpus[i % len]).
    pub pin: Option<Vec<usize>>,
    pub unmapped: UnmappedPolicy,
    /// Open kvm:* tracepoint counters per vCPU thread (needs root; skipped with a note).
    pub tracepoints: bool,
    /// Read KVM binary stats at phase markers.
    pub kvm_stats: bool,
    /// End the run after this many userspace exits per vCPU.
    pub max_exits: Option<u64>,
    /// Echo the guest console to stderr, prefixed.
    pub echo_console: bool,
    /// KVM PV feature bits (CPUID 0x40000001 EAX) to expose; the rest are hidden.
    pub kvm_pv_features: u32,
    pub irqchip: IrqChip,
    /// Register an ioeventfd on `hvlab_protocol::KERNEL_PORT` (writes complete in KVM).
    pub kernel_port: bool,
    /// Create KVM's in-kernel PIT (KVM_CREATE_PIT2, ports 0x40-0x43 and 0x61); needs
    /// `IrqChip::Full`.
    pub pit: bool,
    /// Attach hv's ACPI PM timer (`devices::emulated::pm_timer`, port 0x608).
    pub pm_timer: bool,
    /// Attach hv's CMOS RTC (`devices::emulated::rtc`, ports 0x70/0x71).
    pub rtc: bool,
    /// The PC platform (`devices::platform`: fw_cfg, ACPI tables, PIC firmware state, PCI host
    /// bridge, i8042 reset, port 0x80, PM1 blocks); needs `IrqChip::Full`.
    pub platform: bool,
    /// Enlightenments (hv/src/enlightenments). `None`: hv's plain defaults (the guest picks
    /// x2APIC when the CPU has it; only `kvm_pv_features` exposed). `Some(set)`: exactly the
    /// set (plus `kvm_pv_features`); an explicit member this host lacks fails the build with
    /// the probe's reason, a set chosen as `all` drops it with a note.
    pub enlightenments: Option<EnlightenmentSet>,
    /// Install seccomp filters on the vCPU and device worker threads (`hv/src/isolation`); a
    /// call outside a thread's allowlist ends the run with `RunStatus::SeccompViolation`.
    pub seccomp: bool,
    /// Boot a third-party kernel (`hv boot`: PVH, multiboot or bzImage, with its own command
    /// line, used as is) instead of an hvlab guest image.
    pub kernel: Option<boot::KernelBoot>,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            index: 0,
            vcpus: 1,
            mem_bytes: 16 << 20,
            cmdline: String::new(),
            pin: None,
            unmapped: UnmappedPolicy::Ignore,
            tracepoints: true,
            kvm_stats: true,
            max_exits: None,
            echo_console: false,
            kvm_pv_features: 0,
            irqchip: IrqChip::default(),
            kernel_port: false,
            pit: false,
            pm_timer: false,
            rtc: false,
            platform: false,
            enlightenments: None,
            seccomp: true,
            kernel: None,
        }
    }
}

impl PartitionConfig {
    fn validate(&self) -> Result<(), HvError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(HvError::Config(format!(
                "vCPUs must be 1..={MAX_VCPUS}, not {}",
                self.vcpus
            )));
        }
        if self.mem_bytes < MIN_MEM || self.mem_bytes > MAX_GUEST_RAM {
            return Err(HvError::Config(format!(
                "guest memory must be between {} MiB and {} MiB, not {} bytes",
                MIN_MEM >> 20,
                MAX_GUEST_RAM >> 20,
                self.mem_bytes
            )));
        }
        if self.mem_bytes % 4096 != 0 {
            return Err(HvError::Config(
                "guest memory size must be a multiple of 4 KiB".into(),
            ));
        }
        if self.pit && self.irqchip != IrqChip::Full {
            return Err(HvError::Config(
                "the in-kernel PIT needs the full irqchip".into(),
            ));
        }
        if self.platform && self.irqchip != IrqChip::Full {
            return Err(HvError::Config(
                "the PC platform needs the full irqchip (its PIC and IOAPIC are KVM's)".into(),
            ));
        }
        if let Some(p) = &self.pin {
            if p.is_empty() {
                return Err(HvError::Config("--cpus needs at least one host CPU".into()));
            }
        }
        Ok(())
    }
}

fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, HvError> {
    static CACHE: OnceLock<CpuId> = OnceLock::new();
    if let Some(c) = CACHE.get() {
        return Ok(c.clone());
    }
    let c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(HvError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(CACHE.get_or_init(|| c).clone())
}

/// CPUID for vCPU `index`: what KVM supports, with this vCPU's APIC ID and only the chosen PV
/// features. (Some hosts ignore parts of KVM_SET_CPUID2; guests must detect, not assume.)
fn vcpu_cpuid(base: &CpuId, index: u32, pv_features: u32) -> CpuId {
    let mut c = base.clone();
    for e in c.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            0x4000_0001 => e.eax &= pv_features,
            _ => {}
        }
    }
    c
}

/// A built partition, ready to start.
pub struct Partition {
    cfg: PartitionConfig,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    console: ConsoleSink,
    tsc_khz: Option<u32>,
    /// Kept alive for the run: KVM signals it on writes to the kernel port.
    _kernel_port: Option<EventFd>,
    /// Devices and resources that must live as long as the partition (workers, eventfds).
    keep_alive: Vec<Box<dyn std::any::Any + Send>>,
    /// CPU clocks of device worker threads, counted as worker time in every phase.
    worker_clocks: Vec<ThreadClock>,
    /// Remarks from devices (guest-caused errors, counters), merged into the run's notes.
    device_notes: NoteSink,
    /// Enlightenment runtime (`None` when `cfg.enlightenments` is `None`) and setup notes.
    enlightenments: Option<Arc<EnlightenmentHost>>,
    enl_notes: Vec<String>,
    /// This partition's seccomp filters (device workers find it through the VM).
    seccomp: Arc<Monitor>,
    /// Registers of each vCPU as it left the guest, when asked for (`record_exit_regs`).
    exit_regs: Option<Arc<ExitRegs>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("cfg", &self.cfg)
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

impl Partition {
    /// Creates the VM, memory, irqchip, vCPUs and hv's standard devices, and loads `image`.
    pub fn new(kvm: &Kvm, cfg: PartitionConfig, image: &[u8]) -> Result<Partition, HvError> {
        cfg.validate()?;
        let max_vcpus = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        if cfg.vcpus > max_vcpus {
            return Err(HvError::Limit(crate::limits::LimitError::Vcpus {
                vcpus: cfg.vcpus,
                max: max_vcpus,
            }));
        }
        let vm = kvm.create_vm().map_err(HvError::kvm("KVM_CREATE_VM"))?;
        let seccomp = Monitor::new(cfg.seccomp);
        // Needed on Intel hosts without unrestricted guest; harmless (or refused) elsewhere.
        let _ = vm.set_tss_address(0xfffb_d000);
        // Enlightenments, step 1 of 3: probe the set and do the VM-level setup (before vCPUs).
        let mut enl_notes = Vec::new();
        let enl_set = match cfg.enlightenments {
            Some(set) => {
                let (set, dropped) = set
                    .resolve(kvm)
                    .map_err(|e| HvError::Setup(e.to_string()))?;
                for (name, reason) in dropped {
                    enl_notes.push(format!("enlightenment {name} skipped: {reason}"));
                }
                set.setup_vm(&vm).map_err(HvError::Setup)?;
                Some(set)
            }
            None => None,
        };
        let mut cmdline = cfg.cmdline.clone();
        for w in enl_set.map(|s| s.cmdline_words()).unwrap_or_default() {
            cmdline.push(' ');
            cmdline.push_str(w);
        }

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), cfg.mem_bytes as usize)])
            .map_err(|e| HvError::Memory(format!("cannot map {} bytes: {e}", cfg.mem_bytes)))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| HvError::Memory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the partition keeps (and
            // the run outcome after it) for at least as long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(HvError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // After the memslot: adding a memslot to a VM that already has an irqchip costs an SRCU
        // grace period (milliseconds on nested hosts).
        match cfg.irqchip {
            IrqChip::Full => {
                vm.create_irq_chip()
                    .map_err(HvError::kvm("KVM_CREATE_IRQCHIP"))?;
                if cfg.pit {
                    // The dummy speaker port (0x61) in KVM too: it gates channel 2.
                    let pit = kvm_bindings::kvm_pit_config {
                        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                        ..Default::default()
                    };
                    vm.create_pit2(pit)
                        .map_err(HvError::kvm("KVM_CREATE_PIT2"))?;
                }
            }
            IrqChip::Split => {
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_SPLIT_IRQCHIP,
                    ..Default::default()
                };
                cap.args[0] = 24; // IOAPIC pins reserved in the GSI space (none are used)
                vm.enable_cap(&cap)
                    .map_err(HvError::kvm("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
            }
        }

        let start = match &cfg.kernel {
            Some(k) => boot::load_kernel(&mem, cfg.mem_bytes, image, k)?.start,
            None => boot::load_guest(&mem, cfg.mem_bytes, image, &cmdline)?,
        };

        let base_cpuid = supported_cpuid(kvm)?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        // vCPU 0's TSC and the host's, read together: the Hyper-V reference clock's origin.
        let mut tsc_origin = (0, 0);
        for i in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(i))
                .map_err(HvError::kvm("KVM_CREATE_VCPU"))?;
            if i == 0 {
                tsc_origin = crate::enlightenments::hyperv::read_origin(&fd)
                    .unwrap_or((0, crate::enlightenments::hyperv::host_tsc()));
            }
            let pv_bits = cfg.kvm_pv_features | enl_set.map_or(0, |s| s.kvm_pv_bits());
            let mut cpuid = vcpu_cpuid(&base_cpuid, i, pv_bits);
            // Enlightenments, step 2 of 3: KVM's PV bits and hv's own leaves.
            if let Some(set) = &enl_set {
                set.edit_cpuid(&mut cpuid, cfg.kvm_pv_features, cfg.vcpus)
                    .map_err(HvError::Setup)?;
            }
            fd.set_cpuid2(&cpuid)
                .map_err(HvError::kvm("KVM_SET_CPUID2"))?;
            if let Some(set) = &enl_set {
                set.setup_vcpu(kvm, &fd, i).map_err(HvError::Setup)?;
            }
            if i == 0 {
                let mut sregs = fd.get_sregs().map_err(HvError::kvm("KVM_GET_SREGS"))?;
                let regs = start.apply(&mut sregs);
                fd.set_sregs(&sregs)
                    .map_err(HvError::kvm("KVM_SET_SREGS"))?;
                fd.set_regs(&regs).map_err(HvError::kvm("KVM_SET_REGS"))?;
            }
            vcpus.push(fd);
        }
        let tsc_khz = vcpus.first().and_then(|v| v.get_tsc_khz().ok());

        let console = ConsoleSink(Arc::new(Mutex::new(ConsoleCapture::new(
            cfg.echo_console.then(|| format!("[p{}] ", cfg.index)),
        ))));
        let mut pio = Bus::new();
        let dev = |d: SharedDevice| d;
        pio.insert(
            "serial",
            u64::from(CONSOLE_PORT),
            8,
            dev(Arc::new(Mutex::new(SerialDevice::new(console.clone())))),
        )?;
        pio.insert(
            "exit",
            u64::from(EXIT_PORT),
            4,
            dev(Arc::new(Mutex::new(ExitPort))),
        )?;
        pio.insert(
            "phase",
            u64::from(PHASE_PORT),
            1,
            dev(Arc::new(Mutex::new(PhasePort))),
        )?;
        pio.insert(
            "test-port",
            u64::from(TEST_PORT),
            1,
            dev(Arc::new(Mutex::new(TestRegister))),
        )?;
        if cfg.pm_timer {
            pio.insert(
                "pm-timer",
                u64::from(PM_TIMER_PORT),
                4,
                dev(Arc::new(Mutex::new(PmTimer::new()))),
            )?;
        }
        if cfg.rtc {
            pio.insert(
                "rtc",
                u64::from(RTC_PORT),
                2,
                dev(Arc::new(Mutex::new(Rtc::new()))),
            )?;
        }
        let mut mmio = Bus::new();
        mmio.insert(
            "test-mmio",
            TEST_MMIO_BASE,
            TEST_MMIO_SIZE,
            dev(Arc::new(Mutex::new(TestRegister))),
        )?;

        // Only on request: a VM with any ioeventfd takes ~15 ms longer to tear down here.
        let kernel_port = if cfg.kernel_port {
            let e = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| HvError::Setup(format!("eventfd: {e}")))?;
            vm.register_ioevent(
                &e,
                &IoEventAddress::Pio(u64::from(KERNEL_PORT)),
                NoDatamatch,
            )
            .map_err(HvError::kvm("KVM_IOEVENTFD"))?;
            Some(e)
        } else {
            None
        };

        // Enlightenments, step 3 of 3: the runtime the vCPU threads call into.
        let vm = Arc::new(vm);
        if cfg.platform {
            let spec = crate::devices::platform::PlatformSpec {
                vcpus: cfg.vcpus,
                ram_bytes: cfg.mem_bytes,
                has_pm_timer: cfg.pm_timer,
            };
            crate::devices::platform::attach(&vm, &mem, &mut pio, spec)?;
        }
        let enlightenments = enl_set.map(|set| {
            Arc::new(EnlightenmentHost::new(
                set,
                cfg.vcpus,
                mem.clone(),
                vm.clone(),
                tsc_khz.map(|tsc_khz| crate::enlightenments::hyperv::Clock {
                    tsc_khz,
                    guest_tsc: tsc_origin.0,
                    host_tsc: tsc_origin.1,
                }),
            ))
        });
        Ok(Partition {
            cfg,
            vm,
            enlightenments,
            enl_notes,
            mem,
            vcpus,
            pio,
            mmio,
            console,
            tsc_khz,
            _kernel_port: kernel_port,
            keep_alive: Vec::new(),
            worker_clocks: Vec::new(),
            device_notes: NoteSink::default(),
            seccomp,
            exit_regs: None,
        })
    }

    /// vCPU `index` before the run starts, for callers that start a guest other than at the
    /// PVH entry (the host probes start vCPU 0 in real mode).
    pub(crate) fn vcpu_fd(&self, index: usize) -> Option<&VcpuFd> {
        self.vcpus.get(index)
    }

    /// Has every vCPU thread read its registers (KVM_GET_REGS) as it leaves the guest, for
    /// the caller to read after the run: where a vCPU stood when the run's end (a timeout)
    /// pulled it out of KVM_RUN. The host probes use it; runs do not pay for it otherwise.
    pub fn record_exit_regs(&mut self) -> Arc<ExitRegs> {
        self.exit_regs
            .get_or_insert_with(|| Arc::new(ExitRegs::new(self.vcpus.len())))
            .clone()
    }

    /// The VM, for devices that register ioeventfds, irqfds or routes.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Offers `device` on a VMBus-style channel (needs `hv-synic` served by hv).
    pub fn add_vmbus_device(
        &mut self,
        device: Box<dyn crate::devices::vmbus::ChannelDevice>,
    ) -> Result<u32, HvError> {
        let host = self.enlightenments.as_ref().ok_or_else(|| {
            HvError::Config(format!(
                "{}: VMBus-style channels need the hv-synic enlightenment",
                device.name()
            ))
        })?;
        host.add_vmbus_device(device).map_err(HvError::Config)
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PartitionConfig {
        &self.cfg
    }

    /// Attaches a device to the PIO bus.
    pub fn add_pio_device(
        &mut self,
        name: &str,
        base: u16,
        len: u16,
        d: SharedDevice,
    ) -> Result<usize, HvError> {
        self.pio.insert(name, u64::from(base), u64::from(len), d)
    }

    /// Attaches a device to the MMIO bus.
    pub fn add_mmio_device(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        d: SharedDevice,
    ) -> Result<usize, HvError> {
        self.mmio.insert(name, base, len, d)
    }

    /// What a device worker thread of this partition installs as its seccomp filter
    /// (`isolation::seccomp::install(ThreadKind::Worker, ...)` first thing on the thread).
    pub fn seccomp_target(&self, label: impl Into<String>) -> seccomp::Target {
        seccomp::Target::new(&self.seccomp, label)
    }

    /// Where devices report remarks for the run's notes.
    pub fn device_notes(&self) -> NoteSink {
        self.device_notes.clone()
    }

    /// The console capture (the 16550's), for other console devices to write into.
    pub fn console_sink(&self) -> ConsoleSink {
        self.console.clone()
    }

    /// Keeps `thing` alive until the partition's run ends (device workers, eventfds).
    pub fn keep_alive(&mut self, thing: Box<dyn std::any::Any + Send>) {
        self.keep_alive.push(thing);
    }

    /// Counts a device worker thread's CPU time in this partition's phases (get the clock with
    /// `ThreadClock::current()` on the worker thread).
    pub fn add_worker_clock(&mut self, clock: ThreadClock) {
        self.worker_clocks.push(clock);
    }

    /// Starts one thread per vCPU.
    pub fn start(self) -> Result<RunningPartition, HvError> {
        Ok(self.prepare()?.go())
    }

    /// Starts one thread per vCPU and waits until each is set up (pinned, counters open,
    /// filtered), without letting the guest run: [`ReadyPartition::go`] does. A run with many
    /// partitions readies them all first, so they start together and the host's cost of all
    /// of them can be measured at one point (`crate::scale`).
    pub fn prepare(self) -> Result<ReadyPartition, HvError> {
        let control = Arc::new(
            RunControl::new(self.vcpus.len(), self.seccomp.clone()).map_err(HvError::Thread)?,
        );
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let counters: Vec<_> = (0..self.cfg.vcpus)
            .map(|_| Arc::new(VcpuExitCounters::new(pio.len(), mmio.len())))
            .collect();
        let mut stats = Vec::new();
        let mut notes = Vec::new();
        let mut vm_stats = None;
        if self.cfg.kvm_stats {
            for v in &self.vcpus {
                match KvmStatsReader::for_vcpu(v) {
                    Ok(r) => stats.push(r),
                    Err(e) => {
                        notes.push(format!("KVM vCPU stats unavailable: {e}"));
                        stats.clear();
                        break;
                    }
                }
            }
            match KvmStatsReader::for_vm(&self.vm) {
                Ok(r) => vm_stats = Some(r),
                Err(e) => notes.push(format!("KVM VM stats unavailable: {e}")),
            }
        }
        let meter = Arc::new(Meter::new(
            counters.clone(),
            &pio.names(),
            &mmio.names(),
            stats,
            vm_stats,
        ));
        for n in notes {
            meter.note(n);
        }
        for c in self.worker_clocks {
            meter.add_worker_clock(c);
        }
        if let Some(e) = &self.enlightenments {
            e.set_worker_filter(seccomp::Target::new(&self.seccomp, "hv-stimer"));
            for c in e.attach_control(control.clone()) {
                meter.add_worker_clock(c);
            }
            meter.add_source(e.counters());
            meter.note(format!("enlightenments: {}", e.set()));
        }
        for n in self.enl_notes {
            meter.note(n);
        }
        let unmapped_log = Arc::new(UnmappedLog::default());
        let started = Instant::now();
        let mut threads = Vec::with_capacity(self.vcpus.len());
        // Each thread reports whether its setup (pinning) worked, then waits for the go: the
        // guest runs only once every vCPU thread is ready, and not at all if one is not.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut go = Vec::with_capacity(self.vcpus.len());
        let mut failure = None;
        for (i, fd) in self.vcpus.into_iter().enumerate() {
            let runner = VcpuRunner {
                index: i as u32,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                counters: counters[i].clone(),
                meter: meter.clone(),
                control: control.clone(),
                unmapped: self.cfg.unmapped,
                unmapped_log: unmapped_log.clone(),
                max_exits: self.cfg.max_exits,
                enlightenments: self.enlightenments.clone(),
                exit_regs: self.exit_regs.clone(),
            };
            let pin = self.cfg.pin.as_ref().map(|p| p[i % p.len()]);
            let tracepoints = self.cfg.tracepoints;
            let meter = meter.clone();
            let ready = ready_tx.clone();
            let thread_control = control.clone();
            let filter = seccomp::Target::new(&self.seccomp, format!("vCPU {i}"));
            let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
            let spawned = std::thread::Builder::new()
                .name(format!("p{}-vcpu{i}", self.cfg.index))
                .spawn(move || {
                    // First: listed for kicks, and unlisted (reporting that it left) however
                    // the thread ends.
                    let _slot = thread_control.enter_thread(i);
                    let setup = match pin {
                        Some(cpu) => pin_current_thread(cpu)
                            .map_err(|e| format!("vCPU {i}: pinning to CPU {cpu} failed: {e}")),
                        None => Ok(()),
                    };
                    if setup.is_ok() {
                        meter.register_vcpu_thread(tracepoints);
                        seccomp::install(ThreadKind::Vcpu, &filter);
                    }
                    let _ = ready.send(setup);
                    if go_rx.recv() == Ok(true) {
                        runner.run();
                    }
                });
            match spawned {
                Ok(h) => {
                    threads.push(h);
                    go.push(go_tx);
                }
                Err(e) => {
                    control.never_started(i);
                    failure = Some(HvError::Thread(format!("cannot start vCPU {i}: {e}")));
                    break;
                }
            }
        }
        drop(ready_tx);
        // Phase snapshots must see every vCPU thread's clock and tracepoints.
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(HvError::Thread(e));
                }
                Err(_) => {
                    failure.get_or_insert(HvError::Thread("a vCPU thread died in setup".into()));
                }
            }
        }
        if let Some(e) = failure {
            // No guest instruction has run; the threads end at once on `false`.
            control.finish(RunStatus::Stopped(format!("start failed: {e}")));
            for g in &go {
                let _ = g.send(false);
            }
            for (i, t) in threads.into_iter().enumerate() {
                let _ = t.join();
                control.never_started(i);
            }
            return Err(e);
        }
        Ok(ReadyPartition {
            go,
            running: RunningPartition {
                index: self.cfg.index,
                control,
                threads,
                meter,
                console: self.console,
                mem: self.mem,
                started,
                tsc_khz: self.tsc_khz,
                _vm: self.vm,
                keep_alive: self.keep_alive,
                device_notes: self.device_notes,
                enlightenments: self.enlightenments,
            },
        })
    }
}

/// A partition whose vCPU threads are set up and wait for the go ([`Partition::prepare`]).
#[derive(Debug)]
pub struct ReadyPartition {
    go: Vec<std::sync::mpsc::Sender<bool>>,
    running: RunningPartition,
}

impl ReadyPartition {
    /// Lets the guest run; its wall time starts now.
    pub fn go(mut self) -> RunningPartition {
        self.running.started = Instant::now();
        for g in &self.go {
            let _ = g.send(true);
        }
        self.running
    }

    /// Ends the threads without running the guest (another partition failed to start); the
    /// outcome says `stopped` with `why`.
    pub fn cancel(self, why: &str) -> PartitionOutcome {
        self.running.stop(why);
        for g in &self.go {
            let _ = g.send(false);
        }
        let now = Instant::now();
        self.running.wait(now, Duration::ZERO)
    }

    /// Guest memory (for `crate::scale`'s count of touched pages).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.running.mem
    }
}

/// Drops a partition's devices (stopping their workers) on a thread of its own and waits up
/// to `grace` for that; true when they were released in time. A worker that never stops
/// cannot block the caller: its thread is left behind, holding what it holds.
fn release_devices(
    keep_alive: Vec<Box<dyn std::any::Any + Send>>,
    index: u32,
    grace: Duration,
) -> bool {
    if keep_alive.is_empty() {
        return true;
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("p{index}-release"))
        .spawn(move || {
            drop(keep_alive);
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => rx.recv_timeout(grace).is_ok(),
        // No thread for it: the failed spawn dropped the closure, devices included, here.
        Err(_) => true,
    }
}

fn pin_current_thread(cpu: usize) -> Result<(), String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is out of range"));
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it (cpu checked above);
    // sched_setaffinity(0, ...) applies to the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// A partition whose vCPUs are running.
pub struct RunningPartition {
    index: u32,
    control: Arc<RunControl>,
    threads: Vec<std::thread::JoinHandle<()>>,
    meter: Arc<Meter>,
    console: ConsoleSink,
    mem: GuestMemoryMmap,
    started: Instant,
    tsc_khz: Option<u32>,
    _vm: Arc<VmFd>,
    keep_alive: Vec<Box<dyn std::any::Any + Send>>,
    device_notes: NoteSink,
    enlightenments: Option<Arc<EnlightenmentHost>>,
}

impl std::fmt::Debug for RunningPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPartition")
            .field("index", &self.index)
            .finish()
    }
}

/// What a finished partition leaves behind.
#[derive(Debug)]
pub struct PartitionOutcome {
    pub index: u32,
    pub status: RunStatus,
    /// Everything the guest printed.
    pub console: String,
    /// Console bytes dropped past the capture limit.
    pub console_dropped: u64,
    pub phases: Vec<PhaseDelta>,
    /// Counts over the whole run.
    pub totals: PhaseDelta,
    pub notes: Vec<String>,
    pub wall: Duration,
    pub tsc_khz: Option<u32>,
    /// Guest memory, for host-side checks after the run (`run::run` releases it once the
    /// records are made: then it is empty).
    pub memory: GuestMemoryMmap,
    /// From the end of the guest's run to the VM's release: vCPU threads joined, devices
    /// stopped, KVM's VM closed (`crate::scale`).
    pub teardown: Duration,
}

impl RunningPartition {
    /// Ends the run from outside (another partition failed, or the user interrupted).
    pub fn stop(&self, why: &str) {
        self.control.finish(RunStatus::Stopped(why.to_string()));
    }

    /// Waits until the guest ends the run or `deadline` passes (then: timeout), and collects
    /// the outcome. `limit` is the timeout reported.
    ///
    /// Returns by `deadline + limits::VCPU_EXIT_GRACE` (plus the time to read the counters)
    /// whatever the guest or a device does: a vCPU thread that does not leave within the grace
    /// period (stuck inside a device, e.g. on its lock) is detached and the status becomes
    /// `RunStatus::DeviceStuck`. What that thread still references (buses, devices, the meter,
    /// its VcpuFd and with it the VM) stays alive through its `Arc`s until it leaves, if ever;
    /// guest memory stays mapped as long as any clone of it lives. The partition's devices are
    /// then dropped on a separate thread, so a worker whose drop blocks on the stuck device
    /// cannot block this one either.
    pub fn wait(self, deadline: Instant, limit: Duration) -> PartitionOutcome {
        let mut status = self.control.wait(deadline, limit);
        let wall = self.started.elapsed();
        let ended = Instant::now();
        let mut stuck = self
            .control
            .wait_threads_left(Instant::now() + crate::limits::VCPU_EXIT_GRACE);
        // Under CPU overcommit a thread that has left the guest may still wait for a CPU (or for
        // a lock whose holder does): it gets more time (limits::RUNNABLE_EXIT_GRACE).
        let hard = Instant::now() + crate::limits::RUNNABLE_EXIT_GRACE;
        while !stuck.is_empty() && Instant::now() < hard {
            let names: Vec<String> = stuck
                .iter()
                .map(|i| format!("p{}-vcpu{i}", self.index))
                .collect();
            if !crate::limits::threads_runnable(&names) && !crate::limits::overcommitted() {
                break;
            }
            stuck = self
                .control
                .wait_threads_left(Instant::now() + Duration::from_millis(100));
        }
        for (i, t) in self.threads.into_iter().enumerate() {
            if stuck.contains(&i) {
                // Detached: dropping the handle does not wait for the thread.
                drop(t);
            } else if t.join().is_err() && status.is_ok() {
                status = RunStatus::VcpuThreadPanicked { vcpu: i as u32 };
            }
        }
        let mut extra_notes = Vec::new();
        if let Some(&first) = stuck.first() {
            status = RunStatus::DeviceStuck {
                vcpu: first as u32,
                threads: stuck.len() as u32,
                after: Box::new(status),
            };
            // The stuck vCPU may hold a device lock a worker's drop needs: do not wait.
            release_devices(self.keep_alive, self.index, Duration::ZERO);
        } else if !release_devices(self.keep_alive, self.index, crate::limits::VCPU_EXIT_GRACE) {
            // Device workers stop (and file-backed disks sync) before the outcome is read, so
            // a clean exit leaves every completed write in the image and their remarks in the
            // notes; a worker that does not stop within the grace is left behind.
            status = RunStatus::WorkerStuck {
                after: Box::new(status),
            };
        }
        // A call refused after the outcome (thread exit, device teardown) still fails a clean run.
        if status.is_ok() {
            if let Some(v) = self.control.seccomp().violation() {
                status = v;
            }
        }
        extra_notes.extend(self.control.seccomp().notes());
        if let Some(e) = &self.enlightenments {
            extra_notes.extend(e.take_notes());
        }
        let notes = crate::limits::merge_notes(
            &[&self.meter.bounded_notes(), &self.device_notes.bounded()],
            extra_notes,
        );
        // A stuck vCPU may hold the console (a console device stuck mid-write): do not wait
        // for it then.
        let (console, console_dropped) = match self.console.0.try_lock() {
            Ok(c) => (c.text(), c.dropped),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let c = p.into_inner();
                (c.text(), c.dropped)
            }
            Err(std::sync::TryLockError::WouldBlock) if stuck.is_empty() => {
                let c = self.console.0.lock().unwrap_or_else(|p| p.into_inner());
                (c.text(), c.dropped)
            }
            Err(std::sync::TryLockError::WouldBlock) => (String::new(), 0),
        };
        let mut outcome = PartitionOutcome {
            index: self.index,
            status,
            console,
            console_dropped,
            phases: self.meter.phases(),
            totals: self.meter.totals(),
            notes,
            wall,
            tsc_khz: self.tsc_khz,
            memory: self.mem,
            teardown: Duration::ZERO,
        };
        // The VM closes with its last reference: here, unless a stuck thread still holds one.
        drop(self.enlightenments);
        drop(self._vm);
        outcome.teardown = ended.elapsed();
        outcome
    }
}
