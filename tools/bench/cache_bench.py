"""The cache's benchmarks, driven by tools/bench/run: cold and warm sequential reads of a 1 GiB
checkpoint file, random 4 KiB reads under a 256 MiB cache bound, full and incremental
checkpoints until they are durable in the bucket, and metadata operations. Each measures ckptfs
beside s3fs, `rclone mount --vfs-cache-mode full` and the local disk, in the same run on the same
Swift server, interleaved; reports medians and ratios, the ckptfs daemon's CPU and peak RSS, and
draws a bar chart into docs/."""

import concurrent.futures
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from ckpt import ckptctl, program  # noqa: E402
from fsmount import CkptfsMount, is_mounted  # noqa: E402
from swift_server import ACCESS_LOG_NAME, SwiftServer  # noqa: E402

from mount_bench import (MIB, WORK, ckptfs_mount, commit_file, cpu_of, dd_write,  # noqa: E402
                         peak_rss_mib, rclone_config, s3fs_mount, stop_process, timed,
                         write_checkpoint)

GIB = 1 << 30
DOCS = os.path.join(REPO, "docs")
NAME = "ckpt.bin"      # the 1 GiB file the read benchmarks read
CACHE_BOUND = "256M"   # randread: the disk cache bound of ckptfs and rclone
RAND_READS, RAND_SECONDS = 20000, 60.0  # randread: reads per peer, or this long at most
PEERS = ("ckptfs", "s3fs", "rclone mount", "local disk")


# ---- plumbing -------------------------------------------------------------------------

def server_env(server):
    """Environment for a child that must talk to our server only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    return env


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def empty_bucket(client, bucket):
    """Deletes the bucket and its objects: the Swift server's disk is the machine's."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def buckets(server, *names):
    client = server.client()
    for name in names:
        client.create_bucket(Bucket=name)
    try:
        yield client
    finally:
        for name in names:
            empty_bucket(client, name)


def listing(client, bucket, prefix=""):
    """{key: size} of the bucket's objects under prefix."""
    return {o["Key"]: o["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
            for o in page.get("Contents", [])}


def ckptfs_has(option):
    out = subprocess.run([program("ckptfs"), "--help"], capture_output=True, text=True)
    return option in out.stdout + out.stderr


def ckptfs_status(m):
    return json.loads(ckptctl("status", "--json", m.path).stdout)


def peer_versions():
    s3fs = subprocess.run(["s3fs", "--version"], capture_output=True, text=True).stdout.split()
    rclone = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split()
    return f"s3fs {s3fs[s3fs.index('File') + 2]}, rclone {rclone[1]}"


# ---- mounts: each a context manager that unmounts and stops its daemon, by pid --------

@contextlib.contextmanager
def ckptfs_at(server, bucket, cache, mnt, *args, fresh=True):
    """A ckptfs mount of s3://bucket; fresh=False keeps what the cache directory holds."""
    env = server_env(server)
    m = ckptfs_mount(f"s3://{bucket}", cache, mnt, *args, env=env) if fresh else \
        CkptfsMount(f"s3://{bucket}", cache, mnt, *args, env=env).start()
    try:
        yield m
    finally:
        m.stop()


@contextlib.contextmanager
def peer_daemon(proc, mnt):
    """Yields mnt; then unmounts it and stops proc, the peer's FUSE daemon mounted there."""
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        stop_process(proc)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)


def s3fs_at(server, bucket, d):
    mnt = f"{d}/s3fs"
    return peer_daemon(s3fs_mount(server, bucket, mnt, d), mnt)


def rclone_at(server, bucket, d, cache, *args):
    """rclone mount --vfs-cache-mode full of the bucket, its VFS cache in `cache`."""
    mnt, conf = f"{d}/rclone", f"{d}/rclone.conf"
    rclone_config(server, conf)
    os.makedirs(mnt, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with open(f"{d}/rclone.log", "ab") as log:
        proc = subprocess.Popen(["rclone", "--config", conf, "mount", f"swift:{bucket}", mnt,
                                 "--vfs-cache-mode", "full", "--cache-dir", cache, *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 30
    while not is_mounted(mnt):
        if time.monotonic() > deadline or proc.poll() is not None:
            with peer_daemon(proc, mnt):
                raise RuntimeError(f"rclone did not mount, see {d}/rclone.log")
        time.sleep(0.05)
    return peer_daemon(proc, mnt)


class Daemon:
    """The ckptfs daemon's CPU seconds and peak RSS over the runs of a benchmark."""

    def __init__(self):
        self.cpu, self.rss = 0.0, 0.0

    @contextlib.contextmanager
    def measure(self, m):
        """Adds the daemon's CPU while the body runs."""
        cpu = cpu_of(m.proc.pid)
        yield
        self.cpu += cpu_of(m.proc.pid) - cpu
        self.rss = max(self.rss, peak_rss_mib(m.proc.pid))

    def text(self, moved, what):
        return (f"ckptfs daemon: {self.cpu / (moved / GIB):.2f} CPU s per {what}, "
                f"peak RSS {self.rss:.0f} MiB.")


class Traffic:
    """Bytes the Swift proxy received in client requests (PUT, POST bodies) and sent in its
    responses to GETs since the last take(), read from its access log."""

    def __init__(self, server):
        self.server = server
        self.path = os.path.join(server.datadir, "log", "syslog.log")
        self.offset = os.path.getsize(self.path)

    def take(self):
        """(bytes up, bytes down) since the last call."""
        self.server.mark()  # the log lines of every request answered so far are in
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        self.offset += len(data)
        up = down = 0
        for line in data.decode(errors="replace").splitlines():
            tag, _, message = line.partition(": ")
            f = message.split(" ")  # ACCESS_LOG_TEMPLATE: bytes_recvd is 5, bytes_sent 6
            if tag != ACCESS_LOG_NAME or len(f) < 7 or f[3] != "-":
                continue  # not an access line, or a middleware's subrequest
            if f[0] in ("PUT", "POST") and f[5].isdigit():
                up += int(f[5])
            elif f[0] == "GET" and f[6].isdigit():
                down += int(f[6])
        return up, down


class Tally:
    """A benchmark's figure per peer and run, with the bytes each moved to and from the
    bucket while measured."""

    def __init__(self, server, peers):
        self.traffic = Traffic(server)
        self.rows = {p: [] for p in peers}
        self.up = {p: [] for p in peers}
        self.down = {p: [] for p in peers}

    def add(self, peer, fn):
        self.traffic.take()
        self.rows[peer].append(fn())
        up, down = self.traffic.take()
        self.up[peer].append(up)
        self.down[peer].append(down)

    def median(self, of=None):
        return {k: statistics.median(v) for k, v in (of or self.rows).items() if v}

    def progress(self, name, run, runs):
        print(f"{name}: run {run + 1}/{runs} " + json.dumps(
            {k: round(v[-1]) for k, v in self.rows.items() if v}), file=sys.stderr)


# ---- the file the read benchmarks read ------------------------------------------------

@contextlib.contextmanager
def checkpoint_file(server, tag):
    """A 1 GiB file of random bytes three ways: on the local disk, written through a ckptfs
    mount into bucket bench-TAG-ckptfs, and as one plain object in bucket bench-TAG-plain.
    Yields (scratch directory, local path, ckptfs bucket, plain bucket)."""
    a, b = f"bench-{tag}-ckptfs", f"bench-{tag}-plain"
    with tempfile.TemporaryDirectory(dir=WORK) as d, buckets(server, a, b) as client:
        local = f"{d}/{NAME}"
        with open(local, "wb") as f:
            for _ in range(GIB // (64 * MIB)):
                f.write(os.urandom(64 * MIB))
        with ckptfs_at(server, a, f"{d}/cache-write", f"{d}/mnt") as m:
            dd_write(local, f"{m.path}/{NAME}")
        with open(local, "rb") as f:
            client.put_object(Bucket=b, Key=NAME, Body=f)
        print(f"{tag}: 1 GiB file in place", file=sys.stderr)
        yield d, local, a, b


def dd_read(path):
    """MB/s of `dd bs=1M` into /dev/null, page caches dropped first."""
    drop_caches()
    secs = timed(lambda: subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                                        check=True, capture_output=True))
    return os.path.getsize(path) / 1e6 / secs


def parallel_get(server, bucket, prefix, jobs=8):
    """GETs of every object under prefix, jobs in flight, the bytes discarded, page caches
    dropped first. Returns MB/s, the object count and the share of the time the client spent
    on a CPU (low: the server is the limit)."""
    client = server.client(max_pool_connections=jobs)
    objects = listing(client, bucket, prefix)
    rate, busy = get_all(client, bucket, [(key, None) for key in objects], jobs)
    return rate, len(objects), busy


def ranged_get(server, bucket, key, part=4 * MIB, jobs=8):
    """As parallel_get, of one object in ranges of part bytes. Returns MB/s."""
    client = server.client(max_pool_connections=jobs)
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    ranges = [(key, f"bytes={at}-{min(at + part, size) - 1}") for at in range(0, size, part)]
    return get_all(client, bucket, ranges, jobs)[0]


def get_latency(server, bucket, key, size=64 << 10, count=100, seed=2):
    """Median seconds of one ranged GET of size bytes at a random offset, one at a time
    (boto3): what a reader waits for on each miss."""
    client, rng, took = server.client(), random.Random(seed), []
    end = client.head_object(Bucket=bucket, Key=key)["ContentLength"] - size
    for _ in range(count):
        at = rng.randrange(end)
        took.append(timed(lambda: client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={at}-{at + size - 1}")["Body"].read()))
    return statistics.median(took)


def get_all(client, bucket, gets, jobs):
    """Runs the (key, range or None) GETs, jobs in flight: (MB/s, share of a CPU busy)."""
    got = [0] * len(gets)

    def get(i):
        key, byte_range = gets[i]
        body = client.get_object(Bucket=bucket, Key=key,
                                 **({"Range": byte_range} if byte_range else {}))["Body"]
        while data := body.read(MIB):
            got[i] += len(data)
    drop_caches()
    cpu = time.process_time()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        secs = timed(lambda: list(pool.map(get, range(len(gets)))))
    return sum(got) / 1e6 / secs, (time.process_time() - cpu) / secs


def disk_usage(root):
    """What a directory holds on disk (st_blocks, as du counts), files that vanish skipped."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def random_reads(path, count=RAND_READS, limit=RAND_SECONDS, seed=1):
    """Reads/s of 4 KiB preads at random 4 KiB-aligned offsets (fixed seed), page caches
    dropped first; stops after `limit` seconds. Returns (reads/s, reads done)."""
    rng = random.Random(seed)
    offsets = [rng.randrange(os.path.getsize(path) // 4096) * 4096 for _ in range(count)]
    drop_caches()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead
        t0 = time.monotonic()
        for done, off in enumerate(offsets, 1):
            if len(os.pread(fd, 4096, off)) != 4096:
                raise RuntimeError(f"short read at {off} of {path}")
            if time.monotonic() - t0 > limit:
                break
        return done / (time.monotonic() - t0), done
    finally:
        os.close(fd)


# ---- charts and tables ----------------------------------------------------------------

def chart(name, panels, log=False):
    """docs/bench-NAME.png: one horizontal bar chart per panel ({title: {peer: value}}), side
    by side; ckptfs in its own colour. Returns the markdown that shows it."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.4, 2.2), dpi=90,
                             sharey=True, squeeze=False)
    for ax, (title, values) in zip(axes[0], panels.items()):
        labels = list(values)[::-1]
        bars = ax.barh(labels, [values[k] for k in labels],
                       color=["#d9622b" if k.startswith("ckptfs") else "#7f8c99" for k in labels])
        ax.bar_label(bars, [f"{values[k]:,.0f}" if values[k] >= 100 else f"{values[k]:.3g}"
                            for k in labels], fontsize=7, padding=2)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.margins(x=0.25)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(left=1)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, f"bench-{name}.png"))
    plt.close(fig)
    return f"![{name}](bench-{name}.png)"


def ratio(a, b):
    x = a / b
    return f"{x:.0f}x" if x >= 10 else f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def mib(values):
    return f"{statistics.median(values) / MIB:.0f}"


# ---- coldread -------------------------------------------------------------------------

RAW = "raw GET, 8 in flight"
RANGED = "raw ranged GET, 8 in flight"


@contextlib.contextmanager
def cores_apart():
    """A Swift server of its own on CPU 1 while this process, and every client it starts, runs
    on CPU 0: server and client no longer compete for the same cores, as across a network, so
    the server is the limit. Yields the server."""
    was = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        server = SwiftServer().start()
    finally:
        os.sched_setaffinity(0, {0})
    try:
        yield server
    finally:
        server.stop()
        os.sched_setaffinity(0, was)


def coldread_runs(args, server, setting):
    """Medians of each reader's cold sequential read on server; with the bytes fetched, the
    ckptfs daemon's figures, boto3's share of a core and ckptfs's chunk count."""
    tally, daemon, client_cpu, chunks = Tally(server, PEERS + (RAW, RANGED)), Daemon(), [], 0

    def get_chunks():
        nonlocal chunks
        rate, chunks, busy = parallel_get(server, a, "chunks/")
        client_cpu.append(busy)
        return rate

    with checkpoint_file(server, "cold") as (d, local, a, b):
        for run in range(args.runs):
            with ckptfs_at(server, a, f"{d}/cache", f"{d}/mnt") as m, daemon.measure(m):
                tally.add("ckptfs", lambda: dd_read(f"{m.path}/{NAME}"))
            with s3fs_at(server, b, d) as mnt:
                tally.add("s3fs", lambda: dd_read(f"{mnt}/{NAME}"))
            with rclone_at(server, b, d, f"{d}/rclone-cache-{run}") as mnt:
                tally.add("rclone mount", lambda: dd_read(f"{mnt}/{NAME}"))
            tally.add("local disk", lambda: dd_read(local))
            tally.add(RAW, get_chunks)
            tally.add(RANGED, lambda: ranged_get(server, b, NAME))
            tally.progress(f"coldread ({setting})", run, args.runs)
    return tally, daemon, statistics.median(client_cpu), chunks


def coldread_table(tally):
    med = tally.median()
    lines = ["| reader | MB/s | vs raw GET | MiB fetched |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.0f} | {ratio(v, med[RAW])} | {mib(tally.down[k])} |"
              for k, v in med.items()]
    return med, lines


def coldread_verdict(med, setting):
    return (f"{setting}: ckptfs reads at **{ratio(med['ckptfs'], med[RAW])}** the raw parallel "
            f"GET rate (target: at least 0.9x), {ratio(med['ckptfs'], med['s3fs'])} s3fs's and "
            f"{ratio(med['ckptfs'], med['rclone mount'])} rclone's.")


def bench_coldread(args, server):
    shared, shared_daemon, shared_cpu, chunks = coldread_runs(args, server, "shared")
    apart = None
    if len(os.sched_getaffinity(0)) >= 2:
        with cores_apart() as own:
            apart, apart_daemon, apart_cpu, _ = coldread_runs(args, own, "apart")
    med, table = coldread_table(shared)
    lines = [
        "Sequential read (`dd bs=1M` into /dev/null) of a 1 GiB file of random bytes on a fresh "
        "cache, page caches dropped first. ckptfs reads it from the bucket its mount wrote it "
        f"to ({chunks} chunk objects); s3fs and rclone from one plain object of the same bytes "
        "in another bucket of the same Swift server; *raw GET* is boto3 fetching ckptfs's chunk "
        "objects, 8 in flight, bytes discarded: what the server gives. *Raw ranged GET* is "
        "boto3 fetching the plain object in 4 MiB ranges, 8 in flight: Swift's object server "
        "computes an MD5 of every GET that starts at byte 0 (to catch its own disk's rot) and "
        "of no other, so ranges past the first cost the server less than whole objects do; "
        "s3fs (10 MiB ranges) and rclone (its chunked reading) read the plain object in "
        "ranges too, and ckptfs fetches each chunk from its byte 4 (the first four are the "
        "magic every chunk starts with; its own checks make the server's redundant). ckptfs "
        "also writes what it fetches into its disk cache, on the disk the "
        "server reads from, so that the next mount reads it warm. *Fetched* is what the "
        "Swift proxy sent (its access log). Median of "
        f"{args.runs} runs, interleaved. MB/s = 10^6 bytes per second.", "",
        "Two settings. *Shared*: server and clients share this machine's two cores, and Swift's "
        "Python proxy needs most of them, so every CPU second a client spends is taken from the "
        f"server (boto3 kept {shared_cpu:.0%} of one core busy). *Apart*: the server on one "
        "core, the clients on the other, as across a network: the server is the limit, which is "
        "what the target is about.", "", "**Shared cores**", ""] + table
    if apart:
        amed, atable = coldread_table(apart)
        lines += ["", "**Server and clients on separate cores**", ""] + atable
        lines += ["", f"boto3 kept {apart_cpu:.0%} of its core busy."]
    lines += ["", coldread_verdict(med, "Shared cores")
              + " " + shared_daemon.text(args.runs * GIB, "GiB read")]
    panels = {"shared cores, MB/s": med}
    if apart:
        lines += ["", coldread_verdict(amed, "Cores apart")
                  + " " + apart_daemon.text(args.runs * GIB, "GiB read")]
        panels["server on its own core, MB/s"] = amed
    lines += [
        "", chart("coldread", panels), "",
        f"Command: `tools/bench/run --only coldread`. Peers: {peer_versions()} "
        "(`mount --vfs-cache-mode full`, a fresh `--cache-dir` each run), both with their "
        "defaults otherwise."]
    return "\n".join(lines)


# ---- warmread -------------------------------------------------------------------------

def bench_warmread(args, server):
    tally, daemon = Tally(server, PEERS), Daemon()
    with checkpoint_file(server, "warm") as (d, local, a, b):
        # Fill both disk caches once; each run then reads on a fresh mount of the same cache.
        with ckptfs_at(server, a, f"{d}/cache", f"{d}/mnt") as m:
            dd_read(f"{m.path}/{NAME}")
        with rclone_at(server, b, d, f"{d}/rclone-cache") as mnt:
            dd_read(f"{mnt}/{NAME}")
        for run in range(args.runs):
            with ckptfs_at(server, a, f"{d}/cache", f"{d}/mnt", fresh=False) as m, \
                    daemon.measure(m):
                tally.add("ckptfs", lambda: dd_read(f"{m.path}/{NAME}"))
            with rclone_at(server, b, d, f"{d}/rclone-cache") as mnt:
                tally.add("rclone mount", lambda: dd_read(f"{mnt}/{NAME}"))
            with s3fs_at(server, b, d) as mnt:
                tally.add("s3fs", lambda: dd_read(f"{mnt}/{NAME}"))
            tally.add("local disk", lambda: dd_read(local))
            tally.progress("warmread", run, args.runs)
    med = tally.median()
    disk = med["local disk"]
    lines = [
        "The 1 GiB file of *coldread* read again (`dd bs=1M`) with its bytes in the mount's "
        f"disk cache (on {WORK}, the local file's disk): each run unmounts, mounts again on the "
        "same cache directory and drops the page caches before reading. rclone likewise with a "
        "warm `--vfs-cache-mode full` cache; s3fs keeps no cache across mounts by default, so it "
        f"reads from the bucket again (for reference). Median of {args.runs} runs, interleaved. "
        "This machine's disk is virtual: dropping the page caches empties the guest's, not the "
        "host's, so *local disk* reads at the speed of the host's memory (between "
        f"{min(tally.rows['local disk']):.0f} and {max(tally.rows['local disk']):.0f} MB/s in "
        "these runs).",
        "", "| reader | MB/s | vs local disk | MiB fetched |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.0f} | {ratio(v, disk)} | {mib(tally.down[k])} |"
              for k, v in med.items()]
    lines += [
        "", f"ckptfs reads from its warm cache at **{ratio(med['ckptfs'], disk)}** the local "
        f"disk's rate (target: at least 0.8x) and {ratio(med['ckptfs'], med['rclone mount'])} "
        "rclone's. " + daemon.text(args.runs * GIB, "GiB read"), "",
        chart("warmread", {"warm sequential read, MB/s": med}), "",
        f"Command: `tools/bench/run --only warmread`. Peers: {peer_versions()}."]
    return "\n".join(lines)


# ---- randread -------------------------------------------------------------------------

SMALL = "ckptfs, 256K blocks"  # randread: a bucket made with --block-size 256K


def bench_randread(args, server):
    readers = PEERS[:1] + (SMALL,) + PEERS[1:]
    tally, daemon, done, counters = Tally(server, readers), Daemon(), {p: [] for p in readers}, {}
    held = {p: [] for p in readers}  # what its cache directory held on disk after the reads
    latency = []  # a ranged GET's, per run
    bound = ckptfs_has("--cache-size")
    small = "bench-rand-small"

    def reads(peer, path, cache=None):
        rate, n = random_reads(path)
        done[peer].append(n)
        if cache:
            held[peer].append(disk_usage(cache))
        return rate

    with checkpoint_file(server, "rand") as (d, local, a, b), buckets(server, small):
        with ckptfs_at(server, small, f"{d}/cache-small-write", f"{d}/mnt", "--block-size",
                       "256K") as m:
            dd_write(local, f"{m.path}/{NAME}")
        for run in range(args.runs):
            with ckptfs_at(server, a, f"{d}/cache", f"{d}/mnt",
                           *(("--cache-size", CACHE_BOUND) if bound else ())) as m:
                with daemon.measure(m):
                    tally.add("ckptfs", lambda: reads("ckptfs", f"{m.path}/{NAME}", f"{d}/cache"))
                counters = ckptfs_status(m)
            with ckptfs_at(server, small, f"{d}/cache-small", f"{d}/mnt", "--cache-size",
                           CACHE_BOUND) as m:
                tally.add(SMALL, lambda: reads(SMALL, f"{m.path}/{NAME}", f"{d}/cache-small"))
            with rclone_at(server, b, d, f"{d}/rclone-cache-{run}", "--vfs-cache-max-size",
                           CACHE_BOUND) as mnt:
                tally.add("rclone mount", lambda: reads("rclone mount", f"{mnt}/{NAME}",
                                                        f"{d}/rclone-cache-{run}"))
            with s3fs_at(server, b, d) as mnt:
                tally.add("s3fs", lambda: reads("s3fs", f"{mnt}/{NAME}"))
            tally.add("local disk", lambda: reads("local disk", local))
            latency.append(get_latency(server, b, NAME))
            tally.progress("randread", run, args.runs)
    med = tally.median()
    disk = med["local disk"]
    cache = ", ".join(f"{k} {counters[k] / MIB:.0f} MiB" if k.endswith(("_used", "_limit"))
                      else f"{k} {counters[k]}"
                      for k in ("cache_used", "cache_limit", "memory_used", "memory_limit",
                                "hits_memory", "hits_disk", "misses", "pieces_fetched", "chunks_fetched",
                                "evictions")
                      if k in counters)
    lines = [
        f"{RAND_READS:,} preads of 4 KiB at random 4 KiB-aligned offsets (fixed seed, "
        "`POSIX_FADV_RANDOM`) over the 1 GiB file of *coldread*, page caches dropped first, on "
        f"a fresh cache: ckptfs with `--cache-size {CACHE_BOUND}`"
        + (" (its memory tier of decoded chunks at its default size)" if bound else
           " (**not in this build**: its cache was unbounded)")
        + ", on its default 4 MiB blocks (a random read fetches just the 64 KiB pieces of its "
        "chunk it touches, and keeps them in the disk cache) and on a bucket made with "
        "`--block-size 256K` (blocks under 1 MiB are fetched whole)"
        + f", rclone with `--vfs-cache-max-size {CACHE_BOUND}`, s3fs with its defaults (no "
        "bound: what it fetched stays in a temporary file while the file is open). A reader "
        f"stops after {RAND_SECONDS:.0f} s; its rate is over the reads it did. *Fetched* is what "
        f"the Swift proxy sent; *cache after* what the reader's cache directory held on disk "
        f"when it stopped (du). Median of {args.runs} runs, interleaved.", "",
        "| reader | reads/s | reads done | vs local disk | MiB fetched | cache after, MiB |",
        "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v:.0f} | {statistics.median(done[k]):,.0f} | {ratio(v, disk)} | "
              f"{mib(tally.down[k])} | "
              + (f"{statistics.median(held[k]) / MIB:.0f} |" if held[k] else "- |")
              for k, v in med.items()]
    lines += [
        "", f"ckptfs does **{ratio(med['ckptfs'], disk)}** the local disk's random reads, "
        f"**{ratio(med['ckptfs'], med['rclone mount'])}** rclone's and "
        f"**{ratio(med['ckptfs'], med['s3fs'])}** s3fs's; with 256 KiB blocks "
        f"**{ratio(med[SMALL], disk)}**, {ratio(med[SMALL], med['rclone mount'])} and "
        f"{ratio(med[SMALL], med['s3fs'])}. "
        + f"The server answers a 64 KiB ranged GET in {statistics.median(latency) * 1e3:.1f} ms "
        "(boto3, one at a time, median), so a reader that misses a share m of its reads can do "
        "at most 1 / (m x that) reads/s: a bound of a quarter of the file leaves m at 3/4 or more "
        "(the readers whose cache holds more did not keep to the bound). "
        + daemon.text(sum(tally.down["ckptfs"]), "GiB fetched")
        + (f" Its cache after the last run (`ckptctl status`): {cache}." if cache else ""), "",
        chart("randread", {"random 4 KiB reads per second": med}, log=True), "",
        f"Command: `tools/bench/run --only randread`. Peers: {peer_versions()}."]
    return "\n".join(lines)


# ---- ckptwrite ------------------------------------------------------------------------

def checkpoints(each=16 * MIB, files=64, new=6):
    """Two checkpoints of `files` files: a full one, and the next one, written in full again
    as a new directory, whose files are the first's except `new` of them spread across it."""
    full = [os.urandom(each) for _ in range(files)]
    step = files // new
    return full, [os.urandom(each) if i % step == step // 2 and i // step < new else part
                  for i, part in enumerate(full)]


def catalog(number):
    return "".join(f"ckpt-{i}\n" for i in range(1, number + 1)).encode()


def engine_checkpoint(root, number, parts):
    """Checkpoint `number` as an engine writes it: its directory of files, then the catalog
    (listing every checkpoint so far) renamed into place."""
    write_checkpoint(f"{root}/ckpt-{number}", parts)
    commit_file(f"{root}/CATALOG", catalog(number))


def until_listed(client, bucket, number, parts, timeout=300):
    """Waits until the bucket lists checkpoint `number` and its catalog with their full sizes."""
    objects = {f"ckpt-{number}/part-{i:03d}": len(p) for i, p in enumerate(parts)}
    objects["CATALOG"] = len(catalog(number))
    deadline = time.monotonic() + timeout
    while True:
        have = listing(client, bucket)
        if all(have.get(k) == v for k, v in objects.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{bucket}: checkpoint {number} not listed after {timeout} s")
        time.sleep(0.1)


def bench_ckptwrite(args, server):
    full, incr = checkpoints()
    kinds = ("ckptfs", "s3fs", "rclone mount", "local + rclone copy", "local disk only")
    first, second = Tally(server, kinds), Tally(server, kinds)
    daemon, own_count = Daemon(), []

    def both(kind, root, until=lambda number, parts: None):
        """Times the two checkpoints into root, each until `until` says it is durable."""
        for number, parts, tally in ((1, full, first), (2, incr, second)):
            tally.add(kind, lambda: timed(lambda: (engine_checkpoint(root, number, parts),
                                                   until(number, parts))))

    for run in range(args.runs):
        names = [f"bench-cw-{k}-{run}" for k in ("ckptfs", "s3fs", "rclone", "copy")]
        with tempfile.TemporaryDirectory(dir=WORK) as d, buckets(server, *names) as client:
            with ckptfs_at(server, names[0], f"{d}/cache", f"{d}/mnt", "--publish-on",
                           "CATALOG") as m, daemon.measure(m):
                both("ckptfs", m.path)
                own_count.append(ckptfs_status(m).get("bytes_uploaded", 0))
            with s3fs_at(server, names[1], d) as mnt:
                both("s3fs", mnt)
            # Not 0s: rclone 1.60 then starts uploading part-NNN.mut as it is closed, loses
            # it to the rename that follows, and never uploads part-NNN.
            with rclone_at(server, names[2], d, f"{d}/rclone-cache", "--vfs-write-back",
                           "1s") as mnt:
                both("rclone mount", mnt, lambda number, parts: until_listed(
                    client, names[2], number, parts))
            conf = f"{d}/rclone.conf"  # written by rclone_at
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
            both("local + rclone copy", f"{d}/local", lambda number, parts: subprocess.run(
                ["rclone", "--config", conf, "copy", "--transfers", "8", f"{d}/local",
                 f"swift:{names[3]}"], check=True, env=env, capture_output=True))
            both("local disk only", f"{d}/localonly")
        first.progress("ckptwrite, full", run, args.runs)
        second.progress("ckptwrite, next", run, args.runs)
    f, n = first.median(), second.median()
    changed = sum(a is not b for a, b in zip(full, incr))
    lines = [
        f"A full checkpoint of {len(full)} files of {len(full[0]) // MIB} MiB (1 GiB, random "
        "bytes), then the next one; each file written as an engine does (temporary name, fsync, "
        "rename, directory fsync), then a catalog renamed into place. The next checkpoint is a "
        f"new directory of {len(incr)} files of which {len(incr) - changed} are byte-identical to "
        f"the first's and {changed} ({changed / len(incr):.0%} of the bytes) are new, as an "
        "engine that writes full snapshots of mostly unchanged state does. Time from the first "
        "write until the checkpoint is durable in the Swift bucket: ckptfs (`--publish-on "
        "CATALOG`) when the catalog's rename returns; s3fs when close/fsync returns; rclone "
        "mount (`--vfs-write-back 1s`) when the bucket lists every file with its full size "
        "(with `0s`, rclone 1.60 starts uploading `part-NNN.mut` as it is closed, loses it to "
        "the rename that follows and never uploads `part-NNN`). "
        "*Uploaded* is the request bytes the Swift proxy received (its access log). Median of "
        f"{args.runs} runs.", "",
        "| how | full: s | MiB uploaded | next: s | MiB uploaded |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {f[k]:.1f} | {mib(first.up[k])} | {n[k]:.1f} | {mib(second.up[k])} |"
              for k in kinds]
    peers = [k for k in kinds if k not in ("ckptfs", "local disk only")]
    bf, bn = min(peers, key=f.get), min(peers, key=n.get)
    lines += [
        "", f"ckptfs is **{ratio(f[bf], f['ckptfs'])}** as fast as the fastest peer ({bf}) for "
        f"the full checkpoint and **{ratio(n[bn], n['ckptfs'])}** ({bn}) for the next one "
        f"(target: faster), uploading {mib(second.up['ckptfs'])} MiB for the next one (its own "
        "count, `ckptctl status` bytes_uploaded after both checkpoints: "
        f"{mib(own_count)} MiB). "
        + daemon.text(args.runs * 2 * GIB, "GiB written"), "",
        chart("ckptwrite", {"full checkpoint, s": f, "next checkpoint, s": n}), "",
        f"Command: `tools/bench/run --only ckptwrite`. Peers: {peer_versions()}; local + "
        "`rclone copy --transfers 8` is how Feldera syncs its checkpoints."]
    return "\n".join(lines)


# ---- metadata -------------------------------------------------------------------------

def metadata_ops(root, count):
    """Creates `count` empty files in directories of 1,000, then `ls -lR`, then stats each,
    page caches dropped before each. Returns per second: creates, entries listed, stats."""
    paths = [os.path.join(root, f"d{i // 1000:02d}", f"f{i:05d}") for i in range(count)]

    def create():
        for i, path in enumerate(paths):
            if i % 1000 == 0:
                os.makedirs(os.path.dirname(path))
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    rates = [count / timed(create)]
    drop_caches()
    rates.append(count / timed(lambda: subprocess.run(["ls", "-lR", root], check=True,
                                                      stdout=subprocess.DEVNULL)))
    drop_caches()
    rates.append(count / timed(lambda: [os.stat(p) for p in paths]))
    return rates


def bench_metadata(args, server):
    many, few = 10000, 500  # s3fs sends requests per file: a sample gives its rate
    counts = {"ckptfs": many, "local disk": many, "s3fs": few, "rclone mount": many}
    rows = {k: [] for k in counts}
    daemon = Daemon()
    for run in range(args.runs):
        names = [f"bench-md-{k}-{run}" for k in ("ckptfs", "s3fs", "rclone")]
        with tempfile.TemporaryDirectory(dir=WORK) as d, buckets(server, *names):
            with ckptfs_at(server, names[0], f"{d}/cache", f"{d}/mnt") as m, daemon.measure(m):
                rows["ckptfs"].append(metadata_ops(f"{m.path}/t", counts["ckptfs"]))
            rows["local disk"].append(metadata_ops(f"{d}/local", counts["local disk"]))
            with s3fs_at(server, names[1], d) as mnt:
                rows["s3fs"].append(metadata_ops(f"{mnt}/t", counts["s3fs"]))
            with rclone_at(server, names[2], d, f"{d}/rclone-cache") as mnt:
                rows["rclone mount"].append(metadata_ops(f"{mnt}/t", counts["rclone mount"]))
        print(f"metadata: run {run + 1}/{args.runs} " + json.dumps(
            {k: [round(x) for x in v[-1]] for k, v in rows.items()}), file=sys.stderr)
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
    disk, o = med["local disk"], med["ckptfs"]
    lines = [
        f"Empty files created (open O_CREAT, close) in directories of 1,000, then `ls -lR` of "
        "the tree, then `stat` of every file (Python os.stat over the list), page caches "
        "dropped before the listing and the stats. s3fs sends requests to the bucket for each "
        f"file: it does {few} files, enough for a rate. rclone mount with `--vfs-cache-mode "
        f"full` and its defaults (uploads start 5 s after a file is closed). Median of "
        f"{args.runs} runs.", "",
        "| file system | files | creates/s | `ls -lR` entries/s | stats/s |",
        "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {counts[k]:,} | {v[0]:.0f} | {v[1]:.0f} | {v[2]:.0f} |"
              for k, v in med.items()]
    lines += [
        "", "ckptfs vs the local disk: creates **{}**, listing **{}**, stats **{}**; vs s3fs: "
        "{}, {}, {}; vs rclone: {}, {}, {}.".format(
            *(ratio(o[i], peer[i]) for peer in (disk, med["s3fs"], med["rclone mount"])
              for i in range(3))),
        f"ckptfs daemon: {daemon.cpu / (3 * many * args.runs) * 1000:.2f} CPU s per 1,000 "
        f"operations, peak RSS {daemon.rss:.0f} MiB.", "",
        chart("metadata", {title: {k: v[i] for k, v in med.items()} for i, title in
                           enumerate(("creates/s", "ls -lR entries/s", "stats/s"))}, log=True),
        "", f"Command: `tools/bench/run --only metadata`. Peers: {peer_versions()}."]
    return "\n".join(lines)
