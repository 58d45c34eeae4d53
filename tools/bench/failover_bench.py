"""ckptpipe on ckptfs (issue 6), driven by tools/bench/run. Failover: a primary runs exactly_once
on a writable mount of a Swift bucket, a standby on a follower mount with its own cache; input
keeps coming; the primary's engine and mount are killed, and we time `ckptctl promote`,
`POST /activate` and the standby's first new output. Journal cost: the same input run to its
end exactly_once on ckptfs (each step's journal entry published to the bucket before its output),
at_least_once on ckptfs (no journal) and exactly_once on the local disk."""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from cache_bench import buckets, ckptfs_at
from ckpt import ckptctl, program
from engine_bench import write_clicks
from mount_bench import WORK, stop_process

GROUPS = 100_000       # the state: one group per user
RATE = 20_000          # records per second fed while the primary runs
STEP_RECORDS = 200_000  # the journal-cost run's input ...
STEP_BATCH = 500       # ... in steps of this many records
PUBLISH = "catalog.json|*.jnl"

VIEW = """CREATE VIEW bytes_per_user WITH ('connector' = 'file', 'path' = 'out/v.jsonl')
  AS SELECT user_id, COUNT(*) AS n, SUM(bytes) AS total, MIN(bytes) AS smallest,
     MAX(bytes) AS biggest, AVG(bytes) AS mean FROM clicks WHERE bytes > 0 GROUP BY user_id;
"""


def program_text(inputs):
    return (f"CREATE TABLE clicks (user_id BIGINT, url VARCHAR, bytes BIGINT) WITH "
            f"('connector' = 'file', 'path' = '{inputs}', 'format' = 'csv');\n{VIEW}")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_status(port, ok, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, st = call(port, "GET", "/status")
            if status == 200 and ok(st):
                return st
        time.sleep(0.05)
    raise RuntimeError("the pipeline's status never came as wanted")


@contextlib.contextmanager
def engine(cwd, *args):
    proc = subprocess.Popen([program("ckptpipe"), "run", "prog.sql", "--storage", "state",
                             *args], cwd=cwd, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc)


class Feeder(threading.Thread):
    """Appends RATE records a second to path, in 50 ms slices, until stopped."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.done, self.n = path, threading.Event(), 0

    def run(self):
        with open(self.path, "a") as f:
            while not self.done.is_set():
                rows = "".join(f"{(self.n + i) * 7919 % GROUPS},/p,{(self.n + i) % 1000}\n"
                               for i in range(RATE // 20))
                f.write(rows)
                f.flush()
                self.n += RATE // 20
                time.sleep(0.05)

    def stop(self):
        self.done.set()
        self.join()


def first_new_output(path, after, timeout=60):
    """Seconds until path grows past `after` bytes with a whole line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as f:
                f.seek(after)
                if b"\n" in f.read(65536):
                    return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError("no new output from the activated standby")


def one_failover(server, d, bucket):
    """(promote s, activate s, death to first new output s, steps replayed)."""
    inputs = f"{d}/clicks.csv"
    write_clicks(inputs, GROUPS, GROUPS, 5)
    ports = free_port(), free_port()
    with ckptfs_at(server, bucket, f"{d}/cache-p", f"{d}/mnt-p", "--publish-on", PUBLISH) as p, \
            ckptfs_at(server, bucket, f"{d}/cache-s", f"{d}/mnt-s", "--follow=1") as s:
        with open(f"{p.path}/prog.sql", "w") as f:
            f.write(program_text(inputs))
        with engine(p.path, "--ft", "exactly_once", "--checkpoint-interval", "10", "--http",
                    f"127.0.0.1:{ports[0]}") as primary:
            wait_status(ports[0], lambda st: st["records"] >= GROUPS and st["checkpoints"] > 0)
            feeder = Feeder(inputs)
            feeder.start()
            with engine(s.path, "--ft", "exactly_once", "--standby", "--http",
                        f"127.0.0.1:{ports[1]}") as standby:
                try:
                    wait_status(ports[1], lambda st: st["resumed_from"])
                    time.sleep(12)  # steady: newer checkpoints come and are loaded
                    t0 = time.monotonic()
                    primary.kill()
                    p.kill()
                    run = ckptctl("promote", s.path)
                    promoted = time.monotonic()
                    if run.returncode:
                        raise RuntimeError(run.stderr.decode())
                    status, st = call(ports[1], "POST", "/activate")
                    activated = time.monotonic()
                    if status != 200:
                        raise RuntimeError(f"activate: {st}")
                    size = os.path.getsize(f"{s.path}/out/v.jsonl")
                    first = first_new_output(f"{s.path}/out/v.jsonl", size)
                finally:
                    feeder.stop()
                if standby.poll() is not None:
                    raise RuntimeError("the standby died")
    os.unlink(inputs)
    return promoted - t0, activated - promoted, first - t0, st["replayed"]


def journal_cost(server, d, bucket):
    """{setting: seconds} for STEP_RECORDS records run to their end in steps of STEP_BATCH."""
    inputs = f"{d}/steps.csv"
    write_clicks(inputs, STEP_RECORDS, 1000, 6)
    out = {}

    def run(cwd, ft):
        with open(f"{cwd}/prog.sql", "w") as f:
            f.write(program_text(inputs))
        t0 = time.monotonic()
        subprocess.run([program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--ft", ft,
                        "--exit-when-done", "--max-batch", str(STEP_BATCH)], cwd=cwd, check=True,
                       capture_output=True)
        return time.monotonic() - t0

    for ft in ("exactly_once", "at_least_once"):
        with ckptfs_at(server, bucket, f"{d}/cache-{ft}", f"{d}/mnt-{ft}", "--publish-on",
                       PUBLISH) as m:
            os.makedirs(f"{m.path}/{ft}")
            out[f"{ft}, ckptfs + Swift"] = run(f"{m.path}/{ft}", ft)
    os.makedirs(f"{d}/local")
    out["exactly_once, local disk"] = run(f"{d}/local", "exactly_once")
    return out


def bench_failover(args, server):
    runs, costs = [], []
    for run in range(args.runs):
        a, b = f"bench-failover-{run}", f"bench-journal-{run}"
        with buckets(server, a, b), tempfile.TemporaryDirectory(dir=WORK) as d:
            runs.append(one_failover(server, d, a))
            costs.append(journal_cost(server, d, b))
        print(f"failover: run {run + 1}/{args.runs} {runs[-1]} {costs[-1]}", file=sys.stderr)
    med = [statistics.median(r[i] for r in runs) for i in range(4)]
    steps = STEP_RECORDS // STEP_BATCH
    cost = {k: statistics.median(c[k] for c in costs) for k in costs[0]}
    lines = [
        f"A primary `ckptpipe --ft exactly_once --checkpoint-interval 10` runs on a ckptfs mount "
        f"of a Swift bucket (`--publish-on '{PUBLISH}'`: each checkpoint's catalog and each "
        f"step's journal entry are in the bucket before their call returns), with "
        f"{GROUPS // 1000}k groups of state and {RATE // 1000}k input records a second coming "
        "in; a standby `ckptpipe --standby` runs on a `--follow=1` mount of the bucket with its "
        "own cache and has loaded the newest checkpoint. The primary's engine and mount are "
        "killed (SIGKILL), then `ckptctl promote` and `POST /activate` are issued at once (what "
        "an orchestrator's detection adds comes on top). *First new output*: from the kill to "
        "the first output line of a step the primary never took. Median of "
        f"{args.runs} runs.", "",
        "| promote s | activate s (steps replayed) | death to first new output s |",
        "|---:|---:|---:|",
        f"| {med[0]:.2f} | {med[1]:.2f} ({med[3]:.0f}) | **{med[2]:.2f}** |", "",
        f"Failover takes **{med[2]:.2f} s** from the primary's death to the standby's first new "
        f"output (target: at most 5 s, {'met' if med[2] <= 5 else 'not met'}).", "",
        f"The journal's cost: {STEP_RECORDS // 1000}k records run to their end in {steps} steps "
        f"of {STEP_BATCH} (`--max-batch {STEP_BATCH}`, `--exit-when-done`), median of "
        f"{args.runs} runs:", "",
        "| setting | seconds | ms per step | records/s |",
        "|---|---:|---:|---:|"]
    for k, v in cost.items():
        lines.append(f"| {k} | {v:.2f} | {1000 * v / steps:.1f} | {STEP_RECORDS / v:,.0f} |")
    lines += ["", "Each exactly_once step costs one publish of the journal (one snapshot in the "
              "bucket), whatever its number of records: a pipeline behind on its input takes "
              "bigger steps (up to `--max-batch`, 100,000 by default), so the round trip is "
              "paid per step, not per record.", "",
              "Command: `tools/bench/run --only failover`."]
    return "\n".join(lines)
