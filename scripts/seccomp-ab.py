#!/usr/bin/env python3
"""What seccomp filters cost: exit-floor pio-out and blk-io QD1 (virtio-blk) with and without
filters, alternated in one invocation so that both see the same host load.

usage: scripts/seccomp-ab.py [HV] [--reps N]
  HV defaults to target/release/hv (`cargo build --release -p hv-cli`).

Each repetition runs both variants, in alternating order (on/off, then off/on), as separate
`hv run --json` processes; the per-op time of the measured phase is its wall_ns / ops. Prints
the medians of wall time and of hv's CPU time (vCPU + worker threads, from the record's `cpu`)
per op, and the ratios filters/no filters. CPU time is the steadier of the two on a busy host. A filter adds a BPF program run
to every system call of the filtered thread (KVM_RUN included), so the ratio is the cost of
~20-40 BPF instructions per exit.
"""

import json
import statistics
import subprocess
import sys

CASES = [
    # (label, hv run arguments, phase measured)
    ("exit-floor pio-out", ["exit-floor", "--", "tests=pio-out", "iters=20000"], "pio-out"),
    (
        "blk-io QD1 synthetic",
        ["blk-io", "--device", "synthetic", "--qd", "1", "--", "count=400"],
        "blk-read",
    ),
]


def run(hv, args, phase, seccomp):
    cmd = [hv, "run", "--json", "--no-tracepoints"]
    if not seccomp:
        cmd.append("--no-seccomp")
    # Flags go before the workload's `--` arguments.
    wl = args[0]
    rest = args[1:]
    if "--" in rest:
        i = rest.index("--")
        flags, wargs = rest[:i], rest[i:]
    else:
        flags, wargs = rest, []
    out = subprocess.run(
        cmd[:2] + [wl] + cmd[2:] + flags + wargs, capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        r = json.loads(line)
        if r["phase"] == phase:
            if r["status"]["kind"] != "ok":
                raise SystemExit(f"{phase}: {r['status']}")
            cpu = r["cpu"]["vcpu_ns"] + r["cpu"]["worker_ns"]
            return r["wall_ns"] / r["ops"], cpu / r["ops"]
    raise SystemExit(f"no {phase} phase in: {out[:500]}")


def main():
    argv = sys.argv[1:]
    reps = 11
    if "--reps" in argv:
        i = argv.index("--reps")
        reps = int(argv[i + 1])
        del argv[i : i + 2]
    hv = argv[0] if argv else "target/release/hv"
    for label, args, phase in CASES:
        ns = {True: [], False: []}
        for rep in range(reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for on in order:
                ns[on].append(run(hv, args, phase, on))
        for i, what in ((0, "wall"), (1, "hv CPU (vCPU + worker threads)")):
            on = statistics.median(x[i] for x in ns[True])
            off = statistics.median(x[i] for x in ns[False])
            print(
                f"{label:22} {what:31} filters {on / 1000:8.2f} us/op   no filters "
                f"{off / 1000:8.2f} us/op   ratio {on / off:.3f}   (median of {reps}; on: "
                + ", ".join(f"{x[i] / 1000:.1f}" for x in ns[True])
                + "; off: "
                + ", ".join(f"{x[i] / 1000:.1f}" for x in ns[False])
                + ")"
            )


if __name__ == "__main__":
    main()
