"""ckptctl gc: deletes expired snapshots and the chunks no remaining snapshot names, never a
chunk younger than its grace (one a running writer may be about to name), never anything when a
snapshot cannot be read; verify passes afterwards and the writer carries on."""

import json
import os
import time

import pytest

from ckpt import ckptctl
from fsmount import mount_factory
from test_bucket_tools import chunk_files, mounts  # noqa: F401 (a fixture)

MIB = 1 << 20
HOURS = 3600


def age(paths, hours):
    """Makes objects look as old as a long-running bucket's (file:// object times are mtimes)."""
    t = time.time() - hours * HOURS
    for p in paths:
        os.utime(p, (t, t))


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def sync(m):
    p = ckptctl("sync", m.path)
    assert p.returncode == 0, p.stderr.decode()


def gc(url, *args):
    p = ckptctl("gc", url, "--json", *args)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_gc_with_a_writer_running(mounts, tmp_path):
    w = mounts("--snapshot-interval", "900", "--keep", "1")
    old = os.urandom(6 * MIB)
    put(f"{w.path}/state", old)
    sync(w)
    put(f"{w.path}/state", os.urandom(6 * MIB))  # old's chunks: named by no snapshot now
    put(f"{w.path}/kept", os.urandom(3 * MIB))
    sync(w)  # --keep 1: the first snapshot is gone
    before = chunk_files(mounts.bucket)
    age(before, 30)
    # New data the writer has uploaded ahead but not yet named in a snapshot: young, so kept.
    put(f"{w.path}/new", os.urandom(5 * MIB))
    time.sleep(1.5)  # its full blocks go up after 200 ms of quiet
    young = [p for p in chunk_files(mounts.bucket) if p not in before]
    assert young, "no chunk was uploaded ahead of the snapshot"

    plan = gc(mounts.url, "--dry-run")
    assert plan["dry_run"] and plan["chunks_deleted"] == 2  # old's 6 MiB: two 4 MiB blocks
    assert plan["chunks_young"] == len(young)
    assert chunk_files(mounts.bucket) == sorted(before + young)  # a dry run deletes nothing

    done = gc(mounts.url)
    assert done["chunks_deleted"] == 2 and done["snapshots_kept"] == 1
    assert len(chunk_files(mounts.bucket)) == len(before) + len(young) - 2
    sync(w)  # the writer names its young chunks now: they are all there
    p = ckptctl("verify", mounts.url)
    assert p.returncode == 0, p.stderr.decode() + p.stdout.decode()
    kept, new = (open(f"{w.path}/{n}", "rb").read() for n in ("kept", "new"))
    w.stop()
    r = mounts("--read-only", name="reader")
    assert open(f"{r.path}/kept", "rb").read() == kept
    assert open(f"{r.path}/new", "rb").read() == new


def test_gc_deletes_expired_snapshots_first(mounts):
    w = mounts("--snapshot-interval", "900")
    for i in range(4):
        put(f"{w.path}/f", bytes([i]) * MIB)
        sync(w)
    w.stop()
    age(chunk_files(mounts.bucket), 48)
    age((mounts.bucket / "snapshots").iterdir(), 48)
    done = gc(mounts.url, "--keep", "2")
    assert (done["snapshots_deleted"], done["snapshots_kept"]) == (2, 2)
    assert done["chunks_deleted"] == 2 and done["chunks_named"] == 2
    assert ckptctl("verify", mounts.url).returncode == 0
    assert len(list((mounts.bucket / "snapshots").iterdir())) == 2


def test_gc_refuses_what_it_cannot_judge(mounts):
    p = ckptctl("gc", mounts.url)
    assert p.returncode == 1 and "holds no snapshot" in p.stderr.decode()
    w = mounts()
    put(f"{w.path}/f", os.urandom(MIB))
    w.stop()
    chunks = chunk_files(mounts.bucket)
    age(chunks, 48)
    snap = next((mounts.bucket / "snapshots").iterdir())
    snap.write_bytes(snap.read_bytes()[:-5])  # damaged: what it names is unknown
    p = ckptctl("gc", mounts.url)
    assert p.returncode == 1, p.stdout
    assert "nothing deleted" in p.stderr.decode() and snap.name in p.stderr.decode()
    assert chunk_files(mounts.bucket) == chunks
    p = ckptctl("gc", mounts.url, "--grace", "10m")
    assert p.returncode == 2 and "--grace" in p.stderr.decode()


def test_gc_on_swift_keeps_young_chunks(tmp_path, bucket, s3env):
    url = f"s3://{bucket}"
    with mount_factory(tmp_path, url, env=s3env) as mount:
        w = mount("--keep", "1")
        put(f"{w.path}/f", os.urandom(5 * MIB))
        sync(w)
        put(f"{w.path}/f", os.urandom(5 * MIB))
        sync(w)
        p = ckptctl("gc", url, "--json", env=s3env)
        assert p.returncode == 0, p.stderr.decode()
        done = json.loads(p.stdout)
        # Everything is minutes old: the unnamed chunks of the first version stay.
        assert done["chunks_deleted"] == 0 and done["chunks_young"] == 2
        assert ckptctl("verify", url, env=s3env).returncode == 0
