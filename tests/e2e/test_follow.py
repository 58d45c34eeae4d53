"""Standby mounts (--follow) and promotion (ckptctl promote): a follower switches its view to
each newer snapshot at one instant, files opened before a switch keep their version, and a
promoted follower's snapshots win over a writer that still runs, which is fenced."""

import errno
import hashlib
import json
import os
import threading
import time

import pytest

from ckpt import ckptctl
from fsmount import mount_factory

KIB = 1 << 10
VERSIONS = 20


def version_bytes(i):
    """Version i of the file: every byte i, a size of its own (growing and shrinking) spanning
    several 64K blocks."""
    return bytes([i]) * (300 * KIB + (i * 37 % 11) * 7 * KIB)


def which_version(data):
    """The version data is, or an AssertionError for a mix of versions or a wrong size."""
    assert data, "empty read"
    i = data[0]
    assert data == version_bytes(i), f"a mix: starts as version {i}, {len(data)} bytes"
    return i


def status(path):
    p = ckptctl("status", "--json", path)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def sync(path):
    p = ckptctl("sync", path)
    assert p.returncode == 0, p.stderr.decode()


def write_version(path, i):
    with open(f"{path}/data", "wb") as f:
        f.write(version_bytes(i))


def wait_for(what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def read_version(path):
    with open(f"{path}/data", "rb") as f:
        return which_version(f.read())


@pytest.fixture(params=["file", "swift"])
def bucket_url(request, tmp_path):
    if request.param == "file":
        os.mkdir(tmp_path / "bucket")
        return f"file://{tmp_path}/bucket", None
    s3env = request.getfixturevalue("s3env")
    return f"s3://{request.getfixturevalue('bucket')}", s3env


@pytest.fixture
def mounts(tmp_path, bucket_url):
    url, env = bucket_url
    with mount_factory(tmp_path, url, env=env) as mount:
        yield mount


def test_follower_sees_whole_versions_and_converges(mounts):
    w = mounts("--block-size", "64K", "--snapshot-interval", "900", name="writer")
    write_version(w.path, 1)
    sync(w.path)
    f = mounts("--follow=1", "--memory-cache", "1M", name="follower")
    assert read_version(f.path) == 1
    old = open(f"{f.path}/data", "rb")  # opened at version 1: reads version 1 to the end
    seen, errors, done = [], [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.append(read_version(f.path))
            except (AssertionError, OSError) as e:
                errors.append(repr(e))
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2, VERSIONS + 1):
            write_version(w.path, i)
            sync(w.path)
            time.sleep(0.3)
        synced = time.monotonic()
        converged = wait_for(lambda: read_version(f.path) == VERSIONS)
    finally:
        done.set()
        t.join()
    assert errors == []
    assert seen == sorted(seen), "a reader went back to an older version"
    assert len(set(seen)) > 3, f"the follower switched too rarely: {sorted(set(seen))}"
    # A poll interval (1 s) plus a fetch of one small snapshot: well within 10 s here.
    assert converged - synced < 10
    assert which_version(old.read()) == 1
    old.close()
    st = status(f.path)
    assert st["following"] and st["read_only"]
    assert st["serving"] == st["newest"] and st["snapshots_behind"] == 0 == st["lag_seconds"]
    assert st["switches"] >= 3 and st["follow_error"] == ""
    # The warm-up put the newest version on the follower's disk: reading it fetches nothing.
    wait_for(lambda: not status(f.path)["warming"])
    before = status(f.path)["misses"]
    assert read_version(f.path) == VERSIONS
    assert status(f.path)["misses"] == before


def test_follower_refuses_changes(mounts):
    w = mounts(name="writer")
    write_version(w.path, 1)
    sync(w.path)
    f = mounts("--follow", name="follower")
    for change in (lambda: open(f"{f.path}/data", "r+b"), lambda: open(f"{f.path}/new", "w"),
                   lambda: os.mkdir(f"{f.path}/d"), lambda: os.unlink(f"{f.path}/data"),
                   lambda: os.chmod(f"{f.path}/data", 0o600),
                   lambda: os.rename(f"{f.path}/data", f"{f.path}/moved")):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS
    assert read_version(f.path) == 1


def test_promote_after_the_writer_died(tmp_path, mounts, bucket_url):
    w = mounts("--block-size", "64K", name="writer")
    write_version(w.path, 3)
    sync(w.path)
    f = mounts("--follow=1", name="follower")
    write_version(w.path, 4)
    sync(w.path)
    wait_for(lambda: read_version(f.path) == 4)
    w.kill()
    p = ckptctl("promote", f.path)
    assert p.returncode == 0, p.stderr.decode()
    assert "promoted in" in p.stdout.decode()
    assert read_version(f.path) == 4
    write_version(f.path, 5)
    os.mkdir(f"{f.path}/after")
    sync(f.path)
    st = status(f.path)
    assert not st["following"] and not st["read_only"] and st["last_error"] == ""
    assert int(st["last_snapshot"].split("-")[0], 16) >= 2  # a new epoch
    assert f.stop() == 0
    again = mounts("--read-only", name="elsewhere")
    assert read_version(again.path) == 5 and os.path.isdir(f"{again.path}/after")
    # Promoting what is not a follower is refused, and says why.
    p = ckptctl("promote", again.path)
    assert p.returncode == 1 and b"not a follower" in p.stderr


def test_promote_fences_a_writer_that_still_runs(mounts, bucket_url):
    url, env = bucket_url
    w = mounts(name="writer")
    write_version(w.path, 1)
    sync(w.path)
    f = mounts("--follow=1", name="follower")
    assert ckptctl("promote", f.path).returncode == 0
    # Swift has no create-if-absent: the promoted mount says so, and the epoch rule alone decides.
    assert ("conditional puts" in f.output()) == url.startswith("s3://")
    newest = ckptctl("snapshots", url, "--json", env=env)
    ours = json.loads(newest.stdout)[-1]["id"]
    # The old writer's next publish finds the bucket taken: it fails, and it turns read-only.
    write_version(w.path, 2)
    p = ckptctl("sync", w.path)
    assert p.returncode == 1 and b"taken over" in p.stderr, p.stderr
    st = status(w.path)
    assert st["fenced"] and st["read_only"]
    with pytest.raises(OSError) as e:
        open(f"{w.path}/more", "w")
    assert e.value.errno == errno.EROFS
    assert w.stop() != 0  # its unpublished changes stay in its cache, as it logs
    assert "taken over" in w.output()
    # None of the old writer's snapshots is newer than the promoted mount's.
    listed = json.loads(ckptctl("snapshots", url, "--json", env=env).stdout)
    assert listed[-1]["id"] == ours
    write_version(f.path, 6)
    sync(f.path)
    assert read_version(f.path) == 6


@pytest.mark.parametrize("case", ["directory loop", "dot-dot name", "absurd count"])
def test_follower_refuses_a_hostile_snapshot_and_keeps_serving(tmp_path, case):
    from test_bucket_tools import HOSTILE, store_snapshot
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with mount_factory(tmp_path, f"file://{bucket}") as mount:
        w = mount(name="writer")
        write_version(w.path, 1)
        sync(w.path)
        w.stop()
        f = mount("--follow=1", name="follower")
        assert read_version(f.path) == 1
        store_snapshot(bucket, HOSTILE[case], sid="7fffffff-000000000001")  # the newest now
        wait_for(lambda: status(f.path)["follow_error"] != "")
        st = status(f.path)
        assert "7fffffff-000000000001" in st["follow_error"] and st["switches"] == 0
        assert read_version(f.path) == 1 and os.listdir(f.path) == ["data"]
        assert st["serving"] != st["newest"] and st["snapshots_behind"] == 1


def test_an_old_heartbeat_over_a_takeover_does_not_fence_the_new_writer(tmp_path):
    """The old writer read the owner object just before the promotion and wrote its heartbeat
    just after: the lower epoch loses, the promoted mount goes on, and the old writer's
    snapshots still never become the newest."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with mount_factory(tmp_path, f"file://{bucket}") as mount:
        w = mount(name="writer")
        write_version(w.path, 1)
        sync(w.path)
        old_claim = (bucket / "owner").read_text()
        f = mount("--follow=1", name="follower")
        assert ckptctl("promote", f.path).returncode == 0
        (bucket / "owner").write_text(old_claim)  # the old writer's late heartbeat
        write_version(f.path, 2)
        sync(f.path)
        assert not status(f.path)["fenced"]
        write_version(w.path, 3)
        ckptctl("sync", w.path)  # it may get this one out: at its old epoch
        listed = json.loads(ckptctl("snapshots", f"file://{bucket}", "--json").stdout)
        assert listed[-1]["id"] == status(f.path)["last_snapshot"]
        r = mount("--read-only", name="reader")
        assert read_version(r.path) == 2


def test_a_file_unlinked_while_open_is_in_no_snapshot(mounts):
    """Its blocks stay until the last close, but a snapshot taken meanwhile holds neither the file
    nor its blocks: readers and followers load it (a snapshot that named them was refused as
    'a block lies outside its file')."""
    w = mounts(name="writer")
    write_version(w.path, 3)
    sync(w.path)  # its blocks are clean: in the bucket
    with open(f"{w.path}/data", "rb") as held:
        os.unlink(f"{w.path}/data")
        with open(f"{w.path}/kept", "wb") as f:
            f.write(b"k")
        sync(w.path)  # a snapshot while the unlinked file is still open
        r = mounts("--read-only", name="reader")
        assert sorted(os.listdir(r.path)) == ["kept"]
        assert which_version(held.read()) == 3


@pytest.mark.parametrize("bucket_url", ["swift"], indirect=True)
def test_promote_cuts_a_warm_up_short(mounts):
    """A follower still warming up is promoted without fetching the rest of its tree first: the
    warm-up stops with the blocks already asked for, and the rest comes when read."""
    w = mounts("--block-size", "64K", name="writer")
    files, size = 16, 4 << 20  # 64 MiB in 1,024 blocks of 64 KiB: a second or more of GETs
    digests = []
    for i in range(files):
        data = os.urandom(size)
        digests.append(hashlib.sha256(data).hexdigest())
        with open(f"{w.path}/f{i:02}", "wb") as out:
            out.write(data)
    sync(w.path)
    f = mounts("--follow=1", name="follower")
    wait_for(lambda: status(f.path)["warming"])
    w.kill()
    p = ckptctl("promote", f.path)
    assert p.returncode == 0, p.stderr.decode()
    blocks = files * size // (64 << 10)
    fetched = status(f.path)["chunks_fetched"]
    assert fetched < blocks, f"promotion waited for the whole warm-up ({fetched} blocks)"
    for i in range(files):
        with open(f"{f.path}/f{i:02}", "rb") as src:
            assert hashlib.sha256(src.read()).hexdigest() == digests[i], f"f{i:02}"
    assert status(f.path)["chunks_fetched"] == blocks
