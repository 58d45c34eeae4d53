"""Failover of ckptpipe on ckptfs with Swift: the primary runs exactly_once on a writable mount
that publishes its catalog and journal; a standby runs on a follower mount of the same bucket with
a cache of its own, loading each checkpoint as it arrives. The primary (engine and mount) is
killed mid-stream; the standby's mount is promoted and the standby activated; the rest of the
input is fed. The combined output, in the bucket, has every change exactly once."""

import json
import os
import signal
import subprocess
import time

import pytest

from ckpt import ckptctl, program
from fsmount import mount_factory
from test_ckptpipe import (VIEW, call, changes, csv_line, free_port, random_records, rebuild,
                           same, sqlite_view, wait_output, wait_status)
from test_exactly_once import check_each_step_once

OUT = "out/bytes_per_user.jsonl"


def failover_program(inputs):
    return f"""CREATE TABLE clicks (user_id BIGINT, url VARCHAR, bytes BIGINT)
  WITH ('connector' = 'file', 'path' = '{inputs}/clicks.csv', 'format' = 'csv');
CREATE VIEW bytes_per_user WITH ('connector' = 'file', 'path' = '{OUT}') AS {VIEW};
"""


class Pipeline:
    """ckptpipe run in a directory (a mount), stopped whatever happens."""

    def __init__(self, cwd, *args):
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--ft",
             "exactly_once", "--checkpoint-interval", "1", *args],
            cwd=cwd, stderr=subprocess.PIPE, env={**os.environ, "CKPTPIPE_VERBOSE": "1"})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def pipelines():
    made = []

    def start(cwd, *args):
        made.append(Pipeline(cwd, *args))
        return made[-1]
    yield start
    for p in made:
        p.stop()


def test_failover_is_exactly_once(tmp_path, bucket, s3env, pipelines):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    text = failover_program(inputs)
    with mount_factory(tmp_path, f"s3://{bucket}", env=s3env) as mount:
        primary = mount("--publish-on", "catalog.json", "--publish-on", "*.jnl", name="primary")
        (tmp_path / "primary-mnt/prog.sql").write_text(text)
        written = random_records(1500, 31)
        with open(inputs / "clicks.csv", "w") as f:
            f.write("".join(csv_line(r) for r in written))
        engine = pipelines(primary.path, "--max-batch", "40")
        wait_output(f"{primary.path}/{OUT}", engine.proc, written, 60)

        standby = mount("--follow=1", name="standby")
        port = free_port()
        spare = pipelines(standby.path, "--standby", "--http", f"127.0.0.1:{port}")
        first = wait_status(port, lambda s: s["state"] == "standby" and s["resumed_from"])
        assert first["step"] >= 1
        assert call(port, "POST", "/ingress/clicks", "")[0] == 503
        assert call(port, "POST", "/checkpoint")[0] != 200

        # More input while the primary runs: the standby loads the newer checkpoints ...
        more = random_records(3000, 32)
        with open(inputs / "clicks.csv", "a") as f:
            for i in range(0, len(more), 100):
                f.write("".join(csv_line(r) for r in more[i:i + 100]))
                f.flush()
                time.sleep(0.1 if i < 1500 else 0.01)
                if i == 1500:
                    wait_status(port, lambda s: s["resumed_from"] > first["resumed_from"])
        # ... and then the primary machine dies mid-stream, engine and mount.
        engine.proc.kill()
        engine.proc.wait()
        primary.kill()
        written += more

        status, err = call(port, "POST", "/activate")
        assert status == 409 and "promote" in err["error"], err  # the mount is still read-only
        p = ckptctl("promote", standby.path)
        assert p.returncode == 0, p.stderr.decode()
        status, st = call(port, "POST", "/activate")
        assert status == 200 and st["activated"] and st["state"] == "running", st

        rest = random_records(1000, 33)
        with open(inputs / "clicks.csv", "a") as f:
            f.write("".join(csv_line(r) for r in rest))
        written += rest
        wait_output(f"{standby.path}/{OUT}", spare.proc, written, 60)
        assert spare.stop() == 0, spare.proc.stderr.read().decode()
        out = changes(f"{standby.path}/{OUT}")
        check_each_step_once(out)
        same(rebuild(out), sqlite_view(written))
        assert standby.stop() == 0

        # What the bucket holds, read by a fresh reader, is that same output.
        again = mount("--read-only", name="reader")
        assert changes(f"{again.path}/{OUT}") == out


def test_a_seeded_bucket_resumes_from_the_seeds_checkpoint(tmp_path, bucket, bucket2, s3env):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    written = random_records(1200, 41)
    with open(inputs / "clicks.csv", "w") as f:
        f.write("".join(csv_line(r) for r in written[:600]))
    run = [program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--ft", "exactly_once",
           "--exit-when-done", "--max-batch", "100"]
    with mount_factory(tmp_path, f"s3://{bucket}", env=s3env) as mount:
        seed = mount("--publish-on", "catalog.json|*.jnl", name="seed")
        (tmp_path / "seed-mnt/prog.sql").write_text(failover_program(inputs))
        p = subprocess.run(run, cwd=seed.path, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        with open(inputs / "clicks.csv", "a") as f:
            f.write("".join(csv_line(r) for r in written[600:]))
        p = subprocess.run(run, cwd=seed.path, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        older, newest = json.loads((tmp_path / "seed-mnt/state/catalog.json").read_text())[
            "checkpoints"]
        assert seed.stop() == 0
        # A new pipeline seeded from the first one's bucket, from its older checkpoint: the
        # journal since then is replayed (its output is there already), then it goes on.
        new = mount("--seed-from", f"s3://{bucket}", url=f"s3://{bucket2}", name="new")
        with open(inputs / "clicks.csv", "a") as f:
            f.write("".join(csv_line(r) for r in random_records(300, 42)))
        written += random_records(300, 42)
        p = subprocess.run(run + ["--start-from", older, "--fail-if-no-checkpoint"],
                           cwd=new.path, capture_output=True, timeout=60,
                           env={**os.environ, "CKPTPIPE_VERBOSE": "1"})
        err = p.stderr.decode()
        assert p.returncode == 0, err
        assert f"resumed from checkpoint {older}" in err and "replayed" in err, err
        assert "(0 replayed" not in err
        out = changes(f"{new.path}/{OUT}")
        check_each_step_once(out)
        same(rebuild(out), sqlite_view(written))
