#!/usr/bin/env bash
# Runs the hvlab guest image under QEMU by hand: the peer column of hv's run records, without
# hv. The library does the same (hv::peer::qemu, or
# `cargo run -p hv --release --example qemu_peer -- exit-floor`), and writes run records.
#
# usage: scripts/qemu-peer.sh GUEST_ELF [--vcpus N] [--mem MiB] [--timeout S] WORKLOAD [key=value ...]
#
# GUEST_ELF is the image hv embeds (hv::GUEST_IMAGE); build.rs leaves it at
#   $CARGO_TARGET_DIR/<profile>/build/hv-*/out/guest-target/x86_64-unknown-none/release/hvlab-guest
# e.g. `ls target/release/build/hv-*/out/guest-target/x86_64-unknown-none/release/hvlab-guest`
# after `cargo build -p hv --release` (pick the newest when there are several).
#
# The guest console (its `HVLAB rec=...` lines) goes to stdout. The guest's exit status comes
# back as this script's exit status: QEMU's isa-debug-exit exits with (status << 1) | 1, which
# is undone here; QEMU's own failures (and a triple fault, which ends QEMU under -no-reboot with
# code 0) exit with 125; a timeout with 124.
#
# The guest command line is hv's: `WORKLOAD cpus=N part=0 key=value ... apic=xapic`
# (apic=xapic because hv's default enlightenment set `none` leaves x2APIC off), and every KVM PV
# CPUID feature is switched off as under hv's `none`.
set -euo pipefail

die() { echo "qemu-peer: $*" >&2; exit 125; }
[ $# -ge 2 ] || die "usage: $0 GUEST_ELF [--vcpus N] [--mem MiB] [--timeout S] WORKLOAD [key=value ...]"
elf=$1; shift
[ -f "$elf" ] || die "$elf: no such guest image"
vcpus=1 mem=32 timeout_s=60
while [ $# -gt 0 ]; do
    case $1 in
        --vcpus) vcpus=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || die "no workload named"
workload=$1; shift
qemu=${HVLAB_QEMU:-$(command -v qemu-system-x86_64 || true)}
[ -n "$qemu" ] || die "qemu-system-x86_64 not found: apt-get install qemu-system-x86"

pv_off=kvmclock=off,kvm-nopiodelay=off,kvm-asyncpf=off,kvm-steal-time=off,kvm-pv-eoi=off
pv_off=$pv_off,kvm-pv-unhalt=off,kvm-pv-tlb-flush=off,kvm-pv-ipi=off,kvm-poll-control=off
pv_off=$pv_off,kvm-pv-sched-yield=off,kvm-asyncpf-int=off,kvm-msi-ext-dest-id=off
pv_off=$pv_off,kvmclock-stable-bit=off

cmdline="$workload cpus=$vcpus part=0${*:+ $*} apic=xapic"
set +e
timeout --kill-after=2 "$timeout_s" "$qemu" \
    -M microvm -accel kvm -cpu "host,-arch-capabilities,$pv_off" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -m "${mem}M" -smp "$vcpus" \
    -kernel "$elf" -append "$cmdline" </dev/null
rc=$?
set -e
case $rc in
    124|137) echo "qemu-peer: timed out after ${timeout_s}s" >&2; exit 124 ;;
    0) echo "qemu-peer: QEMU exited without a guest status (triple fault or reset)" >&2; exit 125 ;;
esac
if [ $((rc & 1)) -eq 1 ]; then
    exit $((rc >> 1))
fi
echo "qemu-peer: QEMU failed with exit code $rc" >&2
exit 125
