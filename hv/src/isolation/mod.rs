//! Isolation of hv's own threads from what a guest can make them do.
//!
//! A guest drives hv's code on two kinds of threads: its vCPU threads (exit dispatch, emulated
//! devices, phase snapshots) and the device worker threads of synthetic devices (virtqueue
//! service, disk I/O). [`seccomp`] gives each kind a seccomp-bpf allowlist of the system calls
//! that code really makes, installed on the thread itself once its setup is done, so that a
//! bug a guest can steer (in hv or in a crate hv uses) cannot open files, sockets or processes
//! from those threads. Filters are on by default (`PartitionConfig::seccomp`, `hv run
//! --no-seccomp` turns them off); a call outside a thread's list fails with EPERM and ends the
//! partition's run with `RunStatus::SeccompViolation`, naming the thread and the call.

pub mod seccomp;
