//! hvlab's experiment machinery, beside the specs and benches it serves: experiment specs and
//! their matrix, the suite runner with its shards and results files, and the QEMU peer
//! (`suite`, `peer`); plus the shared pieces of the criterion benches: a minimal raw kvm-ioctls
//! loop that runs the same tiny guest code as hv, so hv's own overhead can be measured against it
//! in one process.
//!
//! The hypervisor itself (partitions, vCPUs, buses, devices, enlightenments, counters, caps) is
//! the `hv` crate; `analysis` turns results into tables, plots and reports; `hv-cli` ties them
//! together.

pub mod error;
pub mod kut;
pub mod lifecycle;
pub mod peer;
pub mod suite;
pub mod variants;
pub mod virtqueue;

pub use error::BenchError;

use std::time::{Duration, Instant};

use hv::partition::{Partition, PartitionConfig};
use hv::tiny_guest;
use hvlab_protocol::{EXIT_PORT, PHASE_END, PHASE_PORT};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM used by both sides.
pub const MEM: u64 = 16 << 20;

/// A VM built with raw kvm-ioctls calls only: memory, irqchip, one vCPU at the code.
#[derive(Debug)]
pub struct RawVm {
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    pub vcpu: VcpuFd,
}

impl RawVm {
    /// Builds it, with the in-kernel irqchip (as hv has) when `irqchip`.
    pub fn new(kvm: &Kvm, code: &[u8], irqchip: bool) -> RawVm {
        let vm = kvm.create_vm().expect("create_vm");
        if irqchip {
            vm.create_irq_chip().expect("irqchip");
        }
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("mmap");
        mem.write_slice(code, GuestAddress(tiny_guest::LOAD_ADDR))
            .expect("load code");
        let host = mem.get_host_address(GuestAddress(0)).expect("host address");
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: host as u64,
        };
        // SAFETY: `mem` is a live mapping of MEM bytes kept in the returned RawVm alongside the VM.
        unsafe { vm.set_user_memory_region(region) }.expect("memory region");
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        let mut sregs = vcpu.get_sregs().expect("sregs");
        let regs = hv::boot::pvh_entry_state(&mut sregs, tiny_guest::LOAD_ADDR);
        vcpu.set_sregs(&sregs).expect("set sregs");
        vcpu.set_regs(&regs).expect("set regs");
        RawVm {
            _vm: vm,
            _mem: mem,
            vcpu,
        }
    }

    /// Runs until the exit port; returns the time between the phase markers.
    pub fn run_phase(&mut self) -> Duration {
        let (mut t0, mut t1) = (None, None);
        loop {
            match self.vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut(PHASE_PORT, d) => {
                    let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                    if v & PHASE_END == 0 {
                        t0 = Some(Instant::now())
                    } else {
                        t1 = Some(Instant::now())
                    }
                }
                VcpuExit::IoOut(EXIT_PORT, _) => break,
                VcpuExit::IoOut(..) => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
        match (t0, t1) {
            (Some(a), Some(b)) => b - a,
            _ => panic!("phase markers missing"),
        }
    }

    /// Runs to the first exit.
    pub fn run_to_first_exit(&mut self) {
        match self.vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// hv's partition config for benches: counters that read files at markers are off, since the
/// bench measures the exit path itself.
pub fn hv_config() -> PartitionConfig {
    PartitionConfig {
        mem_bytes: MEM,
        tracepoints: false,
        kvm_stats: false,
        ..PartitionConfig::default()
    }
}

/// `n` PIO exits through hv's dispatch: the phase's wall time.
pub fn hv_pio_exits(kvm: &Kvm, n: u32) -> Duration {
    let elf = tiny_guest::elf(&tiny_guest::pio_loop(n));
    let p = Partition::new(kvm, hv_config(), &elf).expect("partition");
    let o = p.start().expect("start").wait(
        Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    assert!(o.status.is_ok(), "{}", o.status);
    Duration::from_nanos(o.phases[0].wall_ns)
}

/// `n` PIO exits through the raw loop: the phase's wall time.
pub fn raw_pio_exits(kvm: &Kvm, n: u32) -> Duration {
    RawVm::new(kvm, &tiny_guest::pio_loop(n), true).run_phase()
}

/// hv: create a partition, run to its first exit (the exit port), tear down.
pub fn hv_create_run_destroy(kvm: &Kvm, elf: &[u8]) {
    let p = Partition::new(kvm, hv_config(), elf).expect("partition");
    let o = p.start().expect("start").wait(
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    assert!(o.status.is_ok(), "{}", o.status);
}

/// hv with `cfg`: create a partition, run to its first exit, tear down.
pub fn hv_lifecycle(kvm: &Kvm, cfg: PartitionConfig, elf: &[u8]) {
    let p = Partition::new(kvm, cfg, elf).expect("partition");
    let o = p.start().expect("start").wait(
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    assert!(o.status.is_ok(), "{}", o.status);
}

/// Raw: create a VM, run to its first exit, tear down.
pub fn raw_create_run_destroy(kvm: &Kvm, code: &[u8]) {
    RawVm::new(kvm, code, false).run_to_first_exit();
}

/// Median of `samples`.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_run_the_same_guest() {
        let kvm = hv::error::open_kvm()
            .unwrap_or_else(|e| panic!("this test boots guests and needs /dev/kvm: {e}"));
        assert!(raw_pio_exits(&kvm, 50) > Duration::ZERO);
        assert!(hv_pio_exits(&kvm, 50) > Duration::ZERO);
        hv_create_run_destroy(&kvm, &tiny_guest::elf(&tiny_guest::exit_now(0)));
        raw_create_run_destroy(&kvm, &tiny_guest::exit_now(0));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
