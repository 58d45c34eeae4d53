"""MOUNTPOINT/.snapshots/ID/: every snapshot in the bucket as a read-only directory, so that
ls, diff -r and du work on any retained checkpoint, on writable, read-only and follower mounts."""

import errno
import json
import os
import subprocess

import pytest

from ckpt import ckptctl
from test_bucket_tools import describe, make_tree, mounts  # noqa: F401 (a fixture)

MIB = 1 << 20


def ids(url):
    p = ckptctl("snapshots", url, "--json")
    assert p.returncode == 0, p.stderr.decode()
    return [s["id"] for s in json.loads(p.stdout)]


def sync(m):
    p = ckptctl("sync", m.path)
    assert p.returncode == 0, p.stderr.decode()


def change(root):
    with open(f"{root}/state/deep/er/small.txt", "a") as f:
        f.write("more\n")
    os.unlink(f"{root}/empty")
    with open(f"{root}/state/new.bin", "wb") as f:
        f.write(os.urandom(5 * MIB))


def test_every_snapshot_is_a_directory(mounts, tmp_path):
    w = mounts("--snapshot-interval", "900")
    make_tree(w.path)
    sync(w)
    first = describe(w.path)
    change(w.path)
    sync(w)
    second = describe(w.path)
    one, two = ids(mounts.url)
    snaps = f"{w.path}/.snapshots"
    assert ".snapshots" not in os.listdir(w.path)  # hidden: a cp -r of the mount skips it
    assert sorted(os.listdir(snaps)) == [one, two]
    assert describe(f"{snaps}/{one}") == first
    assert describe(f"{snaps}/{two}") == second
    diff = subprocess.run(["diff", "-r", "-x", "fifo", f"{snaps}/{two}", w.path], capture_output=True)
    assert diff.returncode == 0, diff.stdout.decode()
    diff = subprocess.run(["diff", "-r", "-x", "fifo", f"{snaps}/{one}", f"{snaps}/{two}"], capture_output=True)
    assert diff.returncode == 1 and b"Only in" in diff.stdout and b"small.txt" in diff.stdout
    du = subprocess.run(["du", "-sb", f"{snaps}/{two}"], capture_output=True, check=True)
    assert int(du.stdout.split()[0]) >= 14 * MIB
    # The live tree goes on changing; the snapshots do not.
    with open(f"{w.path}/state/big.bin", "r+b") as f:
        f.write(b"changed")
    assert open(f"{snaps}/{two}/state/big.bin", "rb").read(7) != b"changed"
    assert describe(f"{snaps}/{two}") == second


def test_snapshots_cannot_change(mounts):
    w = mounts()
    make_tree(w.path)
    sync(w)
    snap = f"{w.path}/.snapshots/{ids(mounts.url)[0]}"
    for act in (lambda: open(f"{snap}/state/big.bin", "r+b"), lambda: open(f"{snap}/new", "w"),
                lambda: os.mkdir(f"{snap}/d"), lambda: os.unlink(f"{snap}/empty"),
                lambda: os.rename(f"{snap}/empty", f"{snap}/e2"),
                lambda: os.chmod(f"{snap}/empty", 0o600),
                lambda: os.setxattr(f"{snap}/empty", "user.x", b"1"),
                lambda: os.rename(f"{w.path}/empty", f"{snap}/empty")):
        with pytest.raises(OSError) as e:
            act()
        assert e.value.errno in (errno.EROFS, errno.EXDEV), act
    with pytest.raises(OSError) as e:
        os.mkdir(f"{w.path}/.snapshots")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FileNotFoundError):
        os.stat(f"{w.path}/.snapshots/00000001-0000000000ff")
    with pytest.raises(FileNotFoundError):
        os.stat(f"{w.path}/.snapshots/not-an-id")


def test_snapshots_on_a_read_only_mount(mounts):
    w = mounts()
    make_tree(w.path)
    seen = describe(w.path)
    w.stop()
    r = mounts("--read-only", name="reader")
    (only,) = ids(mounts.url)
    assert describe(f"{r.path}/.snapshots/{only}") == seen
