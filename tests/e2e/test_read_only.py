"""Read-only mounts: the newest snapshot or the one --snapshot names, and never a write request
of any kind to the bucket (the Swift server's own request log says so)."""

import json
import os
import subprocess

import pytest

from ckpt import ckptctl
from fsmount import CkptfsMount

MIB = 1 << 20


def mount(tmp_path, name, url, *args, env=None):
    return CkptfsMount(url, tmp_path / f"{name}-cache", tmp_path / f"{name}-mnt", *args, env=env)


def ids(url, env=None):
    p = ckptctl("snapshots", url, "--json", env=env)
    assert p.returncode == 0, p.stderr.decode()
    return [s["id"] for s in json.loads(p.stdout)]


@pytest.fixture
def two_snapshots(tmp_path, bucket, s3env):
    """A Swift bucket whose writer published "v1" of a file, then "v2" and more files."""
    url = f"s3://{bucket}"
    w = mount(tmp_path, "writer", url, env=s3env).start()
    try:
        with open(f"{w.path}/f", "w") as f:
            f.write("v1")
        assert ckptctl("sync", w.path).returncode == 0
        with open(f"{w.path}/f", "w") as f:
            f.write("v2")
        os.makedirs(f"{w.path}/d")
        with open(f"{w.path}/d/big", "wb") as f:
            f.write(os.urandom(5 * MIB))
    finally:
        w.stop()
    return url


def test_read_only_sends_no_write_request(tmp_path, two_snapshots, s3server, s3env):
    since = s3server.mark()
    m = mount(tmp_path, "ro", two_snapshots, "--read-only", env=s3env).start()
    try:
        assert open(f"{m.path}/f").read() == "v2"
        assert len(open(f"{m.path}/d/big", "rb").read()) == 5 * MIB
        subprocess.run(["ls", "-lR", m.path], check=True, capture_output=True)
        with pytest.raises(OSError):
            open(f"{m.path}/new", "w")
        st = json.loads(ckptctl("status", "--json", m.path).stdout)
        assert st["last_error"] in ("", None)
    finally:
        assert m.stop() == 0
    sent = s3server.requests(since)
    assert any(r.method == "GET" for r in sent)
    writes = [r for r in sent if r.method not in ("GET", "HEAD")]
    assert writes == [], writes


def test_read_only_at_an_older_snapshot(tmp_path, two_snapshots, s3env):
    first, last = ids(two_snapshots, s3env)[0], ids(two_snapshots, s3env)[-1]
    assert first != last
    m = mount(tmp_path, "old", two_snapshots, "--read-only", "--snapshot", first, env=s3env)
    m.start()
    try:
        assert open(f"{m.path}/f").read() == "v1"
        assert not os.path.exists(f"{m.path}/d")
        st = json.loads(ckptctl("status", "--json", m.path).stdout)
        assert (st["serving"], st["newest"]) == (first, last)
        assert st["snapshots_behind"] == len(ids(two_snapshots, s3env)) - 1
        human = ckptctl("status", m.path).stdout.decode()
        assert f"serving:        snapshot {first}; newest in the bucket {last}" in human
    finally:
        m.stop()
    # The same cache directory, now at the newest: the tree is loaded anew.
    m = mount(tmp_path, "old", two_snapshots, "--read-only", env=s3env).start()
    try:
        assert open(f"{m.path}/f").read() == "v2"
    finally:
        m.stop()


@pytest.mark.parametrize("args,message", [
    (["--read-only", "--snapshot", "00000009-000000000009"], "has no snapshot 00000009-000000000009"),
    (["--read-only", "--snapshot", "latest"], "is not a snapshot ID"),
    (["--snapshot", "00000001-000000000001"], "--snapshot needs --read-only"),
])
def test_snapshot_option_refusals(tmp_path, two_snapshots, s3env, args, message):
    m = mount(tmp_path, "bad", two_snapshots, *args, env=s3env)
    with pytest.raises(RuntimeError) as e:
        m.start()
    m.kill()
    assert message in str(e.value)
