"""ckptfs as a checkpoint store: what reaches the bucket and when (the durability contract of
DESIGN.md), crashes, restoring on a fresh machine, deduplication, one writer per bucket, and
start-up refusals. Real mounts of a real daemon; SIGKILL where a crash is the point."""

import json
import os
import subprocess
import threading
import time

import pytest

from ckpt import ckptctl, program
from fsmount import CkptfsMount, is_mounted, mount_factory

MIB = 1 << 20


@pytest.fixture
def mounts(tmp_path):
    """A factory of mounts of one file:// bucket, each with its own cache directory;
    every mount is stopped (or killed) at the end, whatever happened."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with mount_factory(tmp_path, f"file://{bucket}") as mount:
        mount.bucket = bucket
        yield mount


def snapshots(bucket):
    d = bucket / "snapshots"
    return sorted(os.listdir(d)) if d.exists() else []


def write_durably(path, data):
    """How engines write: a temporary name, fsync, rename, fsync the directory."""
    tmp = f"{path}.mut"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)


def checkpoint(root, n, size, seed):
    """A checkpoint directory of n files; returns {relative name: bytes}."""
    files = {}
    d = os.path.join(root, f"ckpt-{seed}")
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        data = (f"{seed}:{i}:".encode() * (size // 8 + 1))[:size]
        write_durably(os.path.join(d, f"part-{i}"), data)
        files[f"ckpt-{seed}/part-{i}"] = data
    return files


def tree(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


# ---- the durability contract ----

def test_publish_on_commit_is_in_the_bucket_when_rename_returns(mounts):
    m = mounts("--publish-on", "CATALOG", "--snapshot-interval", "900")
    files = checkpoint(m.path, 4, 300000, seed=1)
    assert snapshots(mounts.bucket) == []  # fsyncs alone publish nothing (no round trips)
    write_durably(os.path.join(m.path, "CATALOG"), b"ckpt-1\n")
    files["CATALOG"] = b"ckpt-1\n"
    m.kill()  # the commit returned: the bucket must hold it, whatever happens now
    fresh = mounts("--read-only", name="fresh")
    assert tree(fresh.path) == files


def test_sync_remote_fsync_is_in_the_bucket(mounts):
    m = mounts("--sync", "remote", "--snapshot-interval", "900")
    with open(os.path.join(m.path, "journal"), "wb") as f:
        f.write(b"step 1\n")
        f.flush()
        os.fsync(f.fileno())
    m.kill()
    assert tree(mounts("--read-only", name="fresh").path) == {"journal": b"step 1\n"}


def test_concurrent_remote_fsyncs_share_publishes(mounts):
    m = mounts("--sync", "remote", "--snapshot-interval", "900")

    def writer(i):
        for j in range(10):
            with open(os.path.join(m.path, f"w{i}-{j}"), "wb") as f:
                f.write(b"x" * 1000)
                os.fsync(f.fileno())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 80 fsyncs; waiting callers share a publish, so far fewer snapshots than fsyncs.
    assert 1 <= len(snapshots(mounts.bucket)) < 80
    m.kill()
    assert len(tree(mounts("--read-only", name="fresh").path)) == 80


def test_unmount_publishes_everything(mounts):
    m = mounts("--snapshot-interval", "900")
    files = checkpoint(m.path, 3, 5 * MIB + 7, seed=2)  # crosses 4 MiB blocks
    assert m.stop() == 0
    assert tree(mounts("--read-only", name="fresh").path) == files


def test_ckptctl_sync_and_status(mounts):
    m = mounts("--snapshot-interval", "900")
    checkpoint(m.path, 2, 100000, seed=3)
    before = json.loads(ckptctl("status", "--json", m.path).stdout)
    assert before["upload_queue"] >= 2 and before["last_snapshot"] is None
    p = ckptctl("sync", m.path)
    assert p.returncode == 0, p.stderr
    snap = p.stdout.decode().split("snapshot ")[1].split()[0]
    assert snapshots(mounts.bucket) == [snap]
    after = json.loads(ckptctl("status", "--json", m.path).stdout)
    assert after["upload_queue"] == 0 and after["last_snapshot"] == snap
    assert after["last_error"] == ""
    human = ckptctl("status", m.path).stdout.decode()
    assert snap in human and "not uploaded:   0 B in 0 blocks" in human
    bad = ckptctl("sync", str(mounts.bucket))
    assert bad.returncode == 1 and b"not a ckptfs mount" in bad.stderr


# ---- crashes ----

def test_kill_during_heavy_writes_keeps_everything_fsynced(mounts):
    m = mounts("--snapshot-interval", "1")
    done = []  # names whose write_durably returned
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            name = f"f{i:05d}"
            try:
                write_durably(os.path.join(m.path, name), name.encode() * 20000)
            except OSError:
                return  # the daemon died under us
            done.append(name)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    while len(done) < 40:
        pass
    m.kill()
    stop.set()
    t.join()
    # Same cache directory: everything fsynced is there, intact.
    again = CkptfsMount(m.url, m.cache_dir, m.path).start()
    try:
        got = tree(again.path)
        for name in done:
            assert got[name] == name.encode() * 20000
        assert not [n for n in got if n.endswith(".mut") and got[n] and len(got[n]) % 120000]
        assert again.stop() == 0  # and the rest goes up
    finally:
        again.kill()
    fresh = tree(mounts("--read-only", name="fresh").path)
    for name in done:
        assert fresh[name] == name.encode() * 20000


def test_every_snapshot_is_whole(mounts, tmp_path):
    """Snapshots are published atomically: each one in the bucket mounts and reads back whole
    files only (each file is written in full before it is renamed into place)."""
    m = mounts("--snapshot-interval", "1")
    for i in range(6):
        checkpoint(m.path, 2, 200000, seed=10 + i)
        ckptctl("sync", m.path)
    m.kill()
    for snap in snapshots(mounts.bucket):
        for other in snapshots(mounts.bucket):
            if other > snap:
                os.remove(mounts.bucket / "snapshots" / other)
        got = tree(mounts("--read-only", name=f"at-{snap}").path)
        for name, data in got.items():
            seed, i = name.split("/")[0].split("-")[1], name.split("-")[-1]
            assert data == (f"{seed}:{i}:".encode() * 25001)[:200000]


# ---- deduplication ----

def uploaded(m):
    return json.loads(ckptctl("status", "--json", m.path).stdout)["bytes_uploaded"]


def test_second_checkpoint_uploads_only_new_bytes(mounts):
    m = mounts("--snapshot-interval", "900")
    rand = [os.urandom(3 * MIB) for _ in range(8)]
    for i, data in enumerate(rand):
        write_durably(os.path.join(m.path, f"a{i}"), data)
    ckptctl("sync", m.path)
    first = uploaded(m)
    assert first >= 24 * MIB
    # The next checkpoint: the same files written again under new names, plus one new file.
    new = os.urandom(3 * MIB)
    for i, data in enumerate(rand[:7] + [new]):
        write_durably(os.path.join(m.path, f"b{i}"), data)
    ckptctl("sync", m.path)
    assert uploaded(m) - first <= len(new) * 1.05


# ---- one writer per bucket, and refusals ----

def test_second_writer_is_refused_naming_the_holder(mounts, tmp_path):
    first = mounts()
    with pytest.raises(RuntimeError) as e:
        mounts(name="second")
    assert "being written by another mount" in str(e.value)
    first.stop()
    assert is_mounted(mounts(name="third").path)


def test_force_takes_over_a_writer_whose_heartbeat_stopped(mounts):
    first = mounts()
    first.kill()
    owner = mounts.bucket / "owner"
    record = json.loads(owner.read_text())
    record["heartbeat"] -= 3600  # as if it died an hour ago
    owner.write_text(json.dumps(record))
    with pytest.raises(RuntimeError) as e:
        mounts(name="second")
    assert "--force" in str(e.value)
    taken = mounts("--force", name="third")
    assert json.loads(owner.read_text())["epoch"] == record["epoch"] + 1
    assert is_mounted(taken.path)


def run_ckptfs(*args, env=None):
    return subprocess.run([program("ckptfs"), "-f", *map(str, args)], capture_output=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("case", ["unknown option", "missing mountpoint", "busy mountpoint",
                                  "foreign prefix", "bad url", "bad level"])
def test_bad_input_is_refused_and_nothing_written(tmp_path, case):
    bucket, mnt = tmp_path / "bucket", tmp_path / "mnt"
    bucket.mkdir()
    mnt.mkdir()
    args = ["--cache-dir", tmp_path / "cache"]
    url = f"file://{bucket}"
    if case == "unknown option":
        args += ["--frobnicate"]
    elif case == "missing mountpoint":
        mnt = tmp_path / "nowhere"
    elif case == "busy mountpoint":
        (mnt / "something").write_text("x")
    elif case == "foreign prefix":
        (bucket / "photo.jpg").write_text("not ours")
    elif case == "bad url":
        url = "http://bucket/x"
    elif case == "bad level":
        args += ["--compress", "99"]
    before = sorted(os.listdir(bucket))
    p = run_ckptfs(*args, url, mnt)
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert lines and lines[0].startswith("ckptfs: "), lines
    assert sorted(os.listdir(bucket)) == before  # nothing written
    assert not is_mounted(mnt) if mnt.exists() else True
    if case == "foreign prefix":
        assert "photo.jpg" in lines[0]


# ---- encryption ----

def bucket_bytes(bucket):
    out = b""
    for dirpath, _, names in os.walk(bucket):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as f:
                out += f.read()
    return out


@pytest.mark.parametrize("encrypted", [False, True])
def test_encryption_hides_content_and_names(mounts, tmp_path, encrypted):
    secret = b"TOP-SECRET-MODEL-WEIGHTS:" * 4000
    args = ["--compress", "off"]  # so without encryption the bytes would be plainly there
    if encrypted:
        key = tmp_path / "key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        args += ["--encrypt-key", key]
    m = mounts(*args)
    write_durably(os.path.join(m.path, "weights"), secret)
    assert m.stop() == 0
    stored = bucket_bytes(mounts.bucket)
    assert (b"TOP-SECRET-MODEL-WEIGHTS" in stored) != encrypted
    assert (b"weights" in stored) != encrypted  # file names live in the snapshot, encrypted too
    assert tree(mounts("--read-only", *args, name="reader").path) == {"weights": secret}
    if encrypted:
        with pytest.raises(RuntimeError) as e:
            mounts("--read-only", name="keyless")
        assert "encrypt-key" in str(e.value)


def test_fresh_writable_mount_continues_from_the_bucket(mounts):
    """A new machine takes over a bucket cleanly given up: it starts from the newest snapshot,
    reads file data on demand, and its own changes follow in newer snapshots."""
    first = mounts()
    files = checkpoint(first.path, 3, 5 << 20, seed=21)
    assert first.stop() == 0
    second = mounts(name="second")  # an empty cache directory
    assert tree(second.path) == files
    write_durably(os.path.join(second.path, "ckpt-21/part-0"), b"rewritten")
    files["ckpt-21/part-0"] = b"rewritten"
    assert second.stop() == 0
    assert tree(mounts("--read-only", name="reader").path) == files


def test_block_size_of_a_new_bucket(mounts, tmp_path):
    m = mounts("--block-size", "256K")
    data = os.urandom(MIB + 5)
    with open(f"{m.path}/f", "wb") as f:
        f.write(data)
    m.stop()
    assert json.loads((mounts.bucket / "ckptfs").read_text())["block_size"] == 256 << 10
    chunks = [p for p in (mounts.bucket / "chunks").rglob("*") if p.is_file()]
    assert len(chunks) == 5  # 4 blocks of 256 KiB and 5 bytes
    again = mounts(name="again")  # later mounts take the bucket's size
    with open(f"{again.path}/f", "rb") as f:
        assert f.read() == data
    again.stop()
    with pytest.raises(RuntimeError) as e:
        mounts("--block-size", "1M", name="other")
    assert "--block-size 1048576 differs from the 262144-byte blocks" in str(e.value)
    p = run_ckptfs("--block-size", "100K", f"file://{tmp_path}/b2", tmp_path)
    assert p.returncode == 2 and b"not a multiple of 64K" in p.stderr


def publish_versions(m, count, pause=0.0):
    for i in range(count):
        with open(f"{m.path}/f", "w") as f:
            f.write(str(i))
        assert ckptctl("sync", m.path).returncode == 0
        time.sleep(pause)


def test_keep_deletes_all_but_the_newest_snapshots(mounts, tmp_path):
    m = mounts("--keep", "2")
    publish_versions(m, 5)
    m.stop()
    left = snapshots(mounts.bucket)
    assert len(left) == 2, left
    for sid, want in zip(left, ("3", "4")):
        out = tmp_path / f"pull-{sid}"
        assert ckptctl("pull", f"file://{mounts.bucket}@{sid}", out).returncode == 0
        assert (out / "f").read_text() == want


def test_keep_age_and_keep_together(mounts):
    m = mounts("--keep", "1", "--keep-age", "1h", name="young")
    publish_versions(m, 3)  # all younger than an hour: every one stays
    assert len(snapshots(mounts.bucket)) == 3
    m.stop()
    m = mounts("--keep-age", "2s", name="old")
    publish_versions(m, 1, pause=3.5)
    publish_versions(m, 1)  # the others are older than 2 s now: only the newest stays
    assert len(snapshots(mounts.bucket)) == 1
    m.stop()


@pytest.mark.parametrize("args,message", [
    (["--keep", "0"], "--keep: '0' is not a number from 1"),
    (["--keep-age", "5x"], "--keep-age: '5x' is not a duration"),
    (["--keep-age", "-3d"], "is not a duration"),
    (["--read-only", "--keep", "2"], "--keep and --keep-age are for the writer"),
])
def test_retention_refusals(tmp_path, args, message):
    (tmp_path / "bucket").mkdir()
    p = run_ckptfs(*args, "--cache-dir", tmp_path / "c", f"file://{tmp_path}/bucket",
                   tmp_path / "bucket")
    assert p.returncode != 0 and message in p.stderr.decode(), p.stderr.decode()


def test_new_options_in_mount_o_form(mounts):
    """As an fstab line gives them: -o block_size=...,keep=...,keep_age=..."""
    m = mounts("-o", "block_size=128K,keep=1,keep_age=1s")
    publish_versions(m, 3, pause=2.5)
    m.stop()
    assert json.loads((mounts.bucket / "ckptfs").read_text())["block_size"] == 128 << 10
    assert len(snapshots(mounts.bucket)) == 1
