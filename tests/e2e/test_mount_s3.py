"""ckptfs on a real S3 server (Swift + s3api): checkpoints reach the bucket, a fresh machine
restores them, start-up refusals name the problem, and an outage of the store while mounted
loses nothing."""

import json
import os
import subprocess
import time
from urllib.parse import urlparse

import pytest

from ckpt import ckptctl, program
from faultproxy import FaultProxy
from fsmount import CkptfsMount, is_mounted, mount_factory
from test_mount import checkpoint, tree, write_durably


@pytest.fixture
def s3mounts(tmp_path, bucket, s3env):
    with mount_factory(tmp_path, f"s3://{bucket}/team/job", env=s3env) as mount:
        yield mount


def test_checkpoint_reaches_swift_and_restores_elsewhere(s3mounts, s3server, bucket):
    m = s3mounts("--publish-on", "CATALOG", "--snapshot-interval", "900")
    files = checkpoint(m.path, 5, 6 << 20, seed=1)  # two blocks per file
    write_durably(os.path.join(m.path, "CATALOG"), b"1\n")
    files["CATALOG"] = b"1\n"
    m.kill()
    keys = [o["Key"] for o in s3server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("team/job/") for k in keys)  # the prefix is respected
    assert any(k.startswith("team/job/snapshots/") for k in keys)
    assert tree(s3mounts("--read-only", name="fresh").path) == files


def test_refusals_on_s3(tmp_path, bucket, s3env):
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def attempt(url, env):
        return subprocess.run([program("ckptfs"), "-f", "--cache-dir", tmp_path / "c", url, mnt],
                              capture_output=True, timeout=120, env=env)

    wrong = attempt(f"s3://{bucket}", {**s3env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert wrong.returncode != 0 and b"SignatureDoesNotMatch" in wrong.stderr
    missing = attempt("s3://no-such-bucket-x", s3env)
    assert missing.returncode != 0 and b"does not exist" in missing.stderr
    down = attempt(f"s3://{bucket}", {**s3env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert down.returncode != 0 and b"connect" in down.stderr.lower()
    assert not is_mounted(mnt)


def status(m):
    return json.loads(ckptctl("status", "--json", m.path).stdout)


def test_store_outage_while_mounted_loses_nothing(tmp_path, s3server, bucket, s3env):
    u = urlparse(s3server.endpoint)
    with FaultProxy(u.hostname, u.port) as proxy:
        env = {**s3env, "AWS_ENDPOINT_URL": proxy.url}
        m = CkptfsMount(f"s3://{bucket}", tmp_path / "cache", tmp_path / "mnt",
                        "--snapshot-interval", "1", "--retries", "1", env=env).start()
        try:
            proxy.plan([503] * 100000)  # the store is down from now on
            files = checkpoint(m.path, 3, 1 << 20, seed=7)  # writes go on into the cache
            deadline = time.monotonic() + 30
            while not status(m)["last_error"] and time.monotonic() < deadline:
                time.sleep(0.2)
            st = status(m)
            assert "503" in st["last_error"] and st["upload_queue"] >= 3
            proxy.plan([])  # the store is back
            p = ckptctl("sync", m.path)
            assert p.returncode == 0, p.stderr
            assert status(m)["upload_queue"] == 0
            assert m.stop() == 0
        finally:
            m.kill()
    fresh = CkptfsMount(f"s3://{bucket}", tmp_path / "cache2", tmp_path / "mnt2", "--read-only",
                        env=s3env).start()
    try:
        assert tree(fresh.path) == files
    finally:
        fresh.stop()
