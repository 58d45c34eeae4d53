"""Disaster recovery's benchmark (issue 5), driven by tools/bench/run: standby activation. A
writer holds a 1 GiB checkpoint and a follower (`--follow`) has warmed its cache with it; the
writer is killed, and we time `ckptctl promote` and a full read of the checkpoint on the
promoted mount, against a cold mount of the same bucket (a fresh cache: what recovery without a
standby does) and the local disk, in the same run on the same Swift server."""

import json
import statistics
import sys
import time

from cache_bench import (GIB, NAME, Daemon, checkpoint_file, ckptfs_at, ckptfs_status,
                         dd_read, ratio)
from ckpt import ckptctl

WARM_TIMEOUT = 600.0


def wait_warm(m):
    """Until the follower has fetched the whole tree into its disk cache."""
    deadline = time.monotonic() + WARM_TIMEOUT
    while time.monotonic() < deadline:
        st = ckptfs_status(m)
        if not st["warming"] and st["cache_used"] >= GIB:
            return
        time.sleep(0.2)
    raise RuntimeError("the follower did not warm its cache in time")


def promoted_read(server, d, bucket, daemon):
    """(seconds ckptctl promote took, MB/s of the read after it, seconds from the promote to
    the last byte read) for a warm follower whose writer was just killed."""
    with ckptfs_at(server, bucket, f"{d}/cache-writer", f"{d}/mnt-writer") as w, \
            ckptfs_at(server, bucket, f"{d}/cache-follower", f"{d}/mnt-follower",
                      "--follow=1", "--cache-size", "4G") as f:
        wait_warm(f)
        w.kill()
        with daemon.measure(f):
            t0 = time.monotonic()
            p = ckptctl("promote", f.path)
            promote = time.monotonic() - t0
            if p.returncode:
                raise RuntimeError(p.stderr.decode())
            rate = dd_read(f"{f.path}/{NAME}")
            ready = time.monotonic() - t0
        return promote, rate, ready


def cold_read(server, d, bucket):
    """(seconds to mount, MB/s of the read, seconds from the mount's start to the last byte)
    on a fresh cache."""
    t0 = time.monotonic()
    with ckptfs_at(server, bucket, f"{d}/cache-cold", f"{d}/mnt-cold", "--read-only") as m:
        mounted = time.monotonic() - t0
        rate = dd_read(f"{m.path}/{NAME}")
        ready = time.monotonic() - t0
    return mounted, rate, ready


def bench_standby(args, server):
    rows = {"warm follower, promoted": [], "cold mount (fresh cache)": []}
    disk, daemon = [], Daemon()
    with checkpoint_file(server, "standby") as (d, local, a, _plain):
        for run in range(args.runs):
            rows["warm follower, promoted"].append(promoted_read(server, d, a, daemon))
            rows["cold mount (fresh cache)"].append(cold_read(server, d, a))
            disk.append(dd_read(local))
            print(f"standby: run {run + 1}/{args.runs} " + json.dumps(
                {k: [round(x, 2) for x in v[-1]] for k, v in rows.items()}), file=sys.stderr)
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
    local = statistics.median(disk)
    warm = med["warm follower, promoted"]
    lines = [
        "A writer mount holds a 1 GiB checkpoint file (random bytes, 4 MiB blocks) in a Swift "
        "bucket; a follower (`--follow=1 --cache-size 4G`, its own fresh cache) has warmed its "
        "cache with it. The writer is killed (SIGKILL), then `ckptctl promote` runs and the "
        "checkpoint is read in full (`dd bs=1M`, page caches dropped) on the promoted mount. "
        "Against it: a `--read-only` mount of the same bucket on a fresh cache, timed from its "
        f"start. Median of {args.runs} runs.", "",
        "| path | promote / mount s | read MB/s | vs local disk | promote (mount) to last byte s |",
        "|---|---:|---:|---:|---:|"]
    for k, (first, rate, ready) in med.items():
        lines.append(f"| {k} | {first:.2f} | {rate:.0f} | {ratio(rate, local)} | {ready:.2f} |")
    lines.append(f"| local disk | | {local:.0f} | 1.00x | {GIB / 1e6 / local:.2f} |")
    cold = med["cold mount (fresh cache)"]
    lines += [
        "", f"Promotion took **{warm[0]:.2f} s** (target: at most 1 s) and the promoted mount "
        f"then read at {ratio(warm[1], local)} the local disk's rate: the whole checkpoint was "
        f"read {warm[2]:.2f} s after the promote began, against {cold[2]:.2f} s for a cold "
        f"mount ({ratio(cold[2], warm[2])} as long). " + daemon.text(args.runs * GIB,
                                                                    "GiB read after promotion"),
        "", "Command: `tools/bench/run --only standby`."]
    return "\n".join(lines)
