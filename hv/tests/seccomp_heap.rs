//! A filtered thread that frees memory must not trip its own filter. glibc, the first time in a
//! process that a thread shrinks a heap of a non-main malloc arena, opens
//! /proc/sys/vm/overcommit_memory: on a vCPU or device worker thread that `openat` is outside
//! the filter and ended a chaos run as a seccomp violation (seed 4 of the SynIC campaign).
//! This file holds one test so that its process has never shrunk a heap before the filter is
//! installed (the check runs once per process).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use hv::isolation::seccomp::{Monitor, Target, ThreadKind, install};

#[test]
fn freeing_heap_memory_on_a_filtered_thread_is_not_a_violation() {
    let m = Monitor::new(true);
    let target = Target::new(&m, "vCPU 0");
    std::thread::spawn(move || {
        install(ThreadKind::Vcpu, &target);
        // Blocks under the mmap threshold come from this thread's own arena's heap; freeing
        // them all leaves a top chunk far over the trim threshold, which glibc gives back
        // to the kernel by shrinking the heap.
        for _ in 0..4 {
            let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 100_000]).collect();
            assert_eq!(blocks.len(), 64);
            drop(blocks);
        }
    })
    .join()
    .unwrap();
    assert_eq!(m.violation(), None, "{:?}", m.notes());
}
