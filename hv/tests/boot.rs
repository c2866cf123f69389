//! `hv boot` end to end: tiny hand-assembled multiboot kernels (a.out-kludge header, 32-bit
//! code) booted through `hv::boot::session` on /dev/kvm: the serial console, QEMU's
//! isa-debug-exit status mapping, the multiboot start state (EAX magic, EBX info with the
//! command line), unclaimed ports counted and noted once, the timeout status, and the one-line
//! error for a file in no boot format. Plus kvm-unit-tests' SMP test when KUT_DIR names a
//! built checkout (skipped with the reason otherwise).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use hv::boot::KernelBoot;
use hv::boot::session::{self, BootRequest};
use hv::status::RunStatus;

const LOAD: u32 = 0x10_0000;
const HEADER_LEN: u32 = 32;

/// A multiboot image: the a.out-kludge header at file offset 0, loaded at 1 MiB, entered
/// right after the header.
fn kernel(code: &[u8]) -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    let flags = 1u32 << 16;
    let mut f = Vec::new();
    for v in [
        magic,
        flags,
        0u32.wrapping_sub(magic).wrapping_sub(flags),
        LOAD,              // header_addr
        LOAD,              // load_addr
        0,                 // load_end_addr: the whole file
        0,                 // bss_end_addr: none
        LOAD + HEADER_LEN, // entry_addr
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    f
}

/// Prints "hi\n" and the first byte of the command line on COM1, then writes 0x21 to port 0xf4
/// if EAX held the multiboot magic at entry (0x22 if not).
fn hello_kernel() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend_from_slice(&[0x89, 0xc6]); // mov esi, eax
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for ch in b"hi\n" {
        c.extend_from_slice(&[0xb0, *ch, 0xee]); // mov al, ch; out dx, al
    }
    c.extend_from_slice(&[0x8b, 0x43, 0x10]); // mov eax, [ebx+16]  (info.cmdline)
    c.extend_from_slice(&[0x8a, 0x00]); // mov al, [eax]
    c.push(0xee); // out dx, al
    c.extend_from_slice(&[0xb8, 0x21, 0, 0, 0]); // mov eax, 0x21
    c.extend_from_slice(&[0x81, 0xfe, 0x02, 0xb0, 0xad, 0x2b]); // cmp esi, 0x2badb002
    c.extend_from_slice(&[0x74, 0x05]); // je +5
    c.extend_from_slice(&[0xb8, 0x22, 0, 0, 0]); // mov eax, 0x22
    c.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00]); // mov dx, 0xf4
    c.push(0xef); // out dx, eax
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    kernel(&c)
}

fn request(image: Vec<u8>, cmdline: &str, timeout: Duration) -> BootRequest {
    BootRequest {
        kernel: image,
        boot: KernelBoot {
            cmdline: cmdline.into(),
            kernel_name: "k.bin".into(),
            ..KernelBoot::default()
        },
        mem_bytes: 16 << 20,
        timeout,
        console_to_stdout: false,
        ..BootRequest::default()
    }
}

#[test]
fn multiboot_kernel_prints_and_exits_with_isa_debug_exit_status() {
    let kvm = common::kvm();
    let out = session::boot(
        &kvm,
        &request(hello_kernel(), "Xyz", Duration::from_secs(20)),
    )
    .unwrap();
    assert_eq!(out.format, hv::boot::Format::Multiboot);
    assert_eq!(out.status, RunStatus::GuestExit(0x21), "{out:?}");
    assert_eq!(out.exit_status(), (0x21 << 1) | 1);
    // The command line starts with the kernel's name, as QEMU passes it.
    assert_eq!(out.console, "hi\nk");
    assert_eq!((out.unmapped_pio, out.unmapped_mmio), (0, 0));
}

#[test]
fn unclaimed_ports_are_counted_and_noted_once() {
    let kvm = common::kvm();
    let mut c = Vec::new();
    c.extend_from_slice(&[0x66, 0xba, 0x34, 0x12]); // mov dx, 0x1234
    c.extend_from_slice(&[0xee; 3]); // out dx, al (three times)
    c.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
    c.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00]); // mov dx, 0xf4
    c.push(0xef); // out dx, eax
    c.extend_from_slice(&[0xeb, 0xfe]);
    let out = session::boot(&kvm, &request(kernel(&c), "", Duration::from_secs(20))).unwrap();
    assert_eq!(out.status, RunStatus::GuestExit(0));
    assert_eq!(out.exit_status(), 1);
    assert_eq!(out.unmapped_pio, 3);
    let notes: Vec<_> = out.notes.iter().filter(|n| n.contains("0x1234")).collect();
    assert_eq!(notes.len(), 1, "{:?}", out.notes);
}

#[test]
fn a_kernel_that_never_exits_times_out_with_status_124() {
    let kvm = common::kvm();
    let spin = kernel(&[0xeb, 0xfe]); // jmp $
    let out = session::boot(&kvm, &request(spin, "", Duration::from_millis(300))).unwrap();
    assert!(matches!(out.status, RunStatus::Timeout(_)), "{out:?}");
    assert_eq!(out.exit_status(), session::STATUS_TIMEOUT);
}

#[test]
fn a_file_in_no_boot_format_is_one_line_naming_each_format() {
    let kvm = common::kvm();
    let err = session::boot(
        &kvm,
        &request(
            b"#!/bin/sh\necho not a kernel\n".to_vec(),
            "",
            Duration::from_secs(5),
        ),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    for f in ["PVH ELF", "multiboot", "Linux bzImage"] {
        assert!(err.contains(f), "{err}");
    }
}

/// kvm-unit-tests' smptest (2 vCPUs: the AP is started by INIT/SIPI and counted from fw_cfg),
/// when KUT_DIR names a built checkout.
#[test]
fn kvm_unit_tests_smptest_when_present() {
    let Some(dir) = std::env::var_os("KUT_DIR") else {
        eprintln!("skipped: KUT_DIR is not set (a built kvm-unit-tests checkout)");
        return;
    };
    let flat = std::path::Path::new(&dir).join("x86/smptest.flat");
    let Ok(image) = std::fs::read(&flat) else {
        eprintln!("skipped: {} not found", flat.display());
        return;
    };
    let kvm = common::kvm();
    let mut req = request(image, "", Duration::from_secs(120));
    req.vcpus = 2;
    req.mem_bytes = 128 << 20;
    let out = session::boot(&kvm, &req).unwrap();
    assert_eq!(out.exit_status(), 1, "{}\n{:?}", out.console, out.status);
    assert!(out.console.contains("found 2 cpus"), "{}", out.console);
}
