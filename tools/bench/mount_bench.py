"""The mount's benchmarks (issue 3), driven by tools/bench/run: sequential writes against the
cache's own disk, a 1 GiB checkpoint until it is in the bucket against local disk + rclone copy,
and small-file creation against the local disk and s3fs. Each measures peers in the same run,
interleaved, and reports medians and ratios."""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "e2e"))

from fsmount import CkptfsMount, is_mounted  # noqa: E402

MIB = 1 << 20
WORK = "/var/tmp"  # the machine's disk (/tmp may be anything); caches and local copies go here


def stop_process(proc, timeout=60):
    """SIGTERM, and SIGKILL if proc has not exited within timeout seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def write_file(path, data, chunk=MIB):
    with open(path, "wb") as f:
        for off in range(0, len(data), chunk):
            f.write(data[off:off + chunk])
        f.flush()
        os.fsync(f.fileno())


def commit_file(path, data):
    """As engines do: temporary name, fsync, rename, fsync the directory."""
    write_file(path + ".mut", data)
    os.rename(path + ".mut", path)
    fsync_path(os.path.dirname(path))


def ckptfs_mount(url, cache, mnt, *args, env=None):
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    os.environ.setdefault("CKPT_BUILD_DIR", os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                         "build"))
    return CkptfsMount(url, cache, mnt, *args, env=env).start()


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---- sequential write ----

def dd_write(src, dst):
    """dd bs=1M conv=fsync from a tmpfs file: the lightest writer, so the two cores go to the
    file systems, not to the benchmark."""
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"], check=True,
                   capture_output=True)


def bench_write(args, server):
    del server
    size = 1 << 30
    local, mount = [], []
    # The bucket on tmpfs stands for a remote one: uploads cost CPU, not this disk.
    with tempfile.TemporaryDirectory(dir=WORK) as d, \
            tempfile.TemporaryDirectory(dir="/dev/shm") as bucket, \
            tempfile.NamedTemporaryFile(dir="/dev/shm") as src:
        src.write(os.urandom(size))
        src.flush()
        os.makedirs(f"{d}/local")
        m = ckptfs_mount(f"file://{bucket}", f"{d}/cache", f"{d}/mnt", "--snapshot-interval",
                         "900")
        try:
            pairs = [(f"{d}/local/f", local), (f"{m.path}/f", mount)]
            for run in range(args.runs):
                # Alternating who goes first: this disk is faster after a pause.
                for target, out in pairs if run % 2 == 0 else pairs[::-1]:
                    out.append(size / 1e6 / timed(lambda: dd_write(src.name, target)))
                    os.remove(target)
                print(f"write: run {run + 1}/{args.runs}", file=sys.stderr)
            cpu = cpu_of(m.proc.pid)
        finally:
            m.stop()
    lm, mm = statistics.median(local), statistics.median(mount)
    return "\n".join([
        "1 GiB written by `dd bs=1M conv=fsync` from a tmpfs file; the mount's cache and the "
        f"local copy on the same disk ({WORK}). Full blocks go up to the mount's bucket while the "
        "write goes on, as in use; the bucket is a file:// directory on tmpfs, standing for a "
        "remote one (uploads cost CPU, not this disk). Median of "
        f"{args.runs} runs, interleaved, alternating which goes first.",
        "", "| target | MB/s |", "|---|---:|",
        f"| local disk (the cache's) | {lm:.0f} |", f"| ckptfs mount | {mm:.0f} |", "",
        f"ckptfs / local disk: **{mm / lm:.2f}x** (target: at least 0.8x). ckptfs daemon CPU: "
        f"{cpu / (args.runs * size / (1 << 30)):.2f} s per GiB written. Writes reach the daemon "
        "through the kernel's writeback cache and are spliced into the cache file.", "",
        "Command: `tools/bench/run --only write`."])


# ---- a checkpoint until it is in the bucket ----

def write_checkpoint(root, parts):
    os.makedirs(root, exist_ok=True)
    for i, data in enumerate(parts):
        commit_file(os.path.join(root, f"part-{i:03d}"), data)


def rclone_config(server, path):
    with open(path, "w") as f:
        f.write(f"[swift]\ntype = s3\nprovider = Other\nendpoint = {server.endpoint}\n"
                f"region = us-east-1\nforce_path_style = true\naccess_key_id = {server.access_key}\n"
                f"secret_access_key = {server.secret_key}\n")


def checkpoint_ckptfs(server, d, bucket, parts, env):
    m = ckptfs_mount(f"s3://{bucket}", f"{d}/cache", f"{d}/mnt", "--publish-on", "CATALOG",
                     env=env)
    try:
        def run():
            write_checkpoint(f"{m.path}/ckpt", parts)
            commit_file(f"{m.path}/CATALOG", b"ckpt\n")  # returns once in the bucket
        secs = timed(run)
        cpu, rss = cpu_of(m.proc.pid), peak_rss_mib(m.proc.pid)
    finally:
        m.stop()
    return secs, cpu, rss


def checkpoint_rclone(server, d, bucket, parts):
    conf = f"{d}/rclone.conf"
    rclone_config(server, conf)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def run():
        write_checkpoint(f"{d}/local", parts)
        subprocess.run(["rclone", "--config", conf, "copy", "--transfers", "8",
                        f"{d}/local", f"swift:{bucket}/rclone"], check=True, env=env,
                       capture_output=True)
    return timed(run)


def checkpoint_local(d, parts):
    return timed(lambda: write_checkpoint(f"{d}/localonly", parts))


def bench_checkpoint(args, server):
    n, each = 64, 16 * MIB
    parts = [os.urandom(each) for _ in range(n)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    ours, rclone, local, cpus, rsss = [], [], [], [], []
    client = server.client()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=WORK) as d:
            b1, b2 = f"bench-ck-{run}", f"bench-rc-{run}"
            client.create_bucket(Bucket=b1)
            client.create_bucket(Bucket=b2)
            secs, cpu, rss = checkpoint_ckptfs(server, d, b1, parts, env)
            ours.append(secs)
            cpus.append(cpu)
            rsss.append(rss)
            rclone.append(checkpoint_rclone(server, d, b2, parts))
            local.append(checkpoint_local(d, parts))
        print(f"checkpoint: run {run + 1}/{args.runs}", file=sys.stderr)
    gib = n * each / (1 << 30)
    o, r, lo = statistics.median(ours), statistics.median(rclone), statistics.median(local)
    return "\n".join([
        f"A checkpoint of {n} files of {each // MIB} MiB (1 GiB, random bytes), written as an "
        "engine writes (temporary name, fsync, rename, directory fsync), then a catalog renamed "
        "into place. Time from the first write until the checkpoint is in the Swift bucket. "
        f"Median of {args.runs} runs.", "",
        "| how | seconds | MB/s |", "|---|---:|---:|",
        f"| ckptfs mount, `--publish-on CATALOG` (in the bucket when the rename returns) | {o:.1f} "
        f"| {gib * 1073.741824 / o:.0f} |",
        f"| local disk, then `rclone copy --transfers 8` (how Feldera syncs) | {r:.1f} | "
        f"{gib * 1073.741824 / r:.0f} |",
        f"| local disk only (not in any bucket) | {lo:.1f} | {gib * 1073.741824 / lo:.0f} |", "",
        f"ckptfs is **{r / o:.2f}x** as fast as local + rclone (target: faster). ckptfs daemon: "
        f"{statistics.median(cpus) / gib:.2f} CPU s per GiB, peak RSS "
        f"{max(rsss):.0f} MiB.", "", "Command: `tools/bench/run --only checkpoint`."])


# ---- small files ----

def small_files(root, n, size=4096):
    data = os.urandom(size)

    def run():
        os.makedirs(root, exist_ok=True)
        for i in range(n):
            sub = os.path.join(root, f"d{i // 1000:02d}")
            if i % 1000 == 0:
                os.makedirs(sub, exist_ok=True)
            write_file(os.path.join(sub, f"f{i:05d}"), data)
    create = timed(run)
    ls = timed(lambda: subprocess.run(["ls", "-lR", root], check=True, stdout=subprocess.DEVNULL))
    return n / create, ls


def s3fs_mount(server, bucket, mnt, d):
    pw = f"{d}/passwd"
    with open(pw, "w") as f:
        f.write(f"{bucket}:{server.access_key}:{server.secret_key}\n")
    os.chmod(pw, 0o600)
    os.makedirs(mnt, exist_ok=True)
    proc = subprocess.Popen(["s3fs", bucket, mnt, "-f", "-o", f"passwd_file={pw}", "-o",
                             f"url={server.endpoint}", "-o", "use_path_request_style", "-o",
                             "endpoint=us-east-1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not is_mounted(mnt):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("s3fs did not mount")
        time.sleep(0.05)
    return proc


def bench_smallfiles(args, server):
    n_fast, n_s3fs = 10000, 300  # s3fs makes a PUT per fsync: a small sample gives its rate
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    rows = {"local disk": [], "ckptfs (Swift)": [], "s3fs (Swift)": []}
    client = server.client()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=WORK) as d:
            rows["local disk"].append(small_files(f"{d}/local", n_fast))
            client.create_bucket(Bucket=f"bench-sf-{run}")
            m = ckptfs_mount(f"s3://bench-sf-{run}", f"{d}/cache", f"{d}/mnt", env=env)
            try:
                rows["ckptfs (Swift)"].append(small_files(f"{m.path}/t", n_fast))
            finally:
                m.stop()
            client.create_bucket(Bucket=f"bench-s3fs-{run}")
            proc = s3fs_mount(server, f"bench-s3fs-{run}", f"{d}/s3fs", d)
            try:
                rows["s3fs (Swift)"].append(small_files(f"{d}/s3fs/t", n_s3fs))
            finally:
                subprocess.run(["fusermount3", "-u", f"{d}/s3fs"], capture_output=True)
                stop_process(proc, 30)
        print(f"smallfiles: run {run + 1}/{args.runs}", file=sys.stderr)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for k, v in rows.items()}
    lines = [f"{n_fast} files of 4 KiB (s3fs: {n_s3fs}, it is slow), each written and fsynced, "
             f"in directories of 1,000; then `ls -lR`. Median of {args.runs} runs.", "",
             "| file system | creates+fsync per second | `ls -lR` seconds |", "|---|---:|---:|"]
    for k, (rate, ls) in med.items():
        lines.append(f"| {k} | {rate:.0f} | {ls:.2f}{' (300 files)' if 's3fs' in k else ''} |")
    ours = med["ckptfs (Swift)"][0]
    lines += ["", f"ckptfs creates at **{ours / med['local disk'][0]:.2f}x** the local disk's rate "
              f"and **{ours / med['s3fs (Swift)'][0]:.0f}x** s3fs's.", "",
              "Command: `tools/bench/run --only smallfiles`."]
    return "\n".join(lines)
