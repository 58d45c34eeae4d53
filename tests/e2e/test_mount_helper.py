"""ckptfs as a daemon, through mount.ckptfs and through an /etc/fstab line read by mount(8)."""

import os
import subprocess
import time

import pytest

from ckpt import program
from fsmount import CkptfsMount, is_mounted
from test_mount import tree


def wait_daemon_exit(cache_dir, timeout=60):
    """A daemonized ckptfs removes its pid file once its last snapshot is in the bucket."""
    pid_file = os.path.join(cache_dir, "ckptfs.pid")
    deadline = time.monotonic() + timeout
    while os.path.exists(pid_file):
        assert time.monotonic() < deadline, "the daemon did not finish after unmount"
        time.sleep(0.05)


def read_back(url, tmp_path):
    with CkptfsMount(url, tmp_path / "check-cache", tmp_path / "check-mnt", "--read-only") as m:
        return tree(m.path)


@pytest.fixture
def place(tmp_path):
    bucket, mnt, cache = tmp_path / "bucket", tmp_path / "mnt", tmp_path / "cache"
    bucket.mkdir()
    mnt.mkdir()
    yield f"file://{bucket}", mnt, cache
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)])


def test_daemonizes_once_mounted(place, tmp_path):
    url, mnt, cache = place
    p = subprocess.run([program("ckptfs"), "--cache-dir", cache, url, mnt], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert is_mounted(mnt)  # mounted by the time the command returned
    (mnt / "f").write_bytes(b"daemon")
    subprocess.run(["umount", str(mnt)], check=True)
    wait_daemon_exit(cache)
    assert read_back(url, tmp_path) == {"f": b"daemon"}


def test_a_daemon_keeps_its_cache_within_the_bound(place, tmp_path):
    """The evictor is a thread: it must run in the daemon, not die in the fork."""
    from test_cache import CACHE, MARGIN, DiskSampler, blob, read_file, write_file
    url, mnt, cache = place
    p = subprocess.run([program("ckptfs"), "--cache-dir", cache, "--cache-size", "64M", "--full-timeout", "20",
                        url, mnt],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    files = {f"f{i}": blob(60 + i, 40 * 1024 * 1024) for i in range(4)}
    with DiskSampler(cache) as disk:
        for name, data in files.items():
            write_file(os.path.join(mnt, name), data)
        assert {n: read_file(os.path.join(mnt, n)) for n in files} == files
    subprocess.run(["umount", str(mnt)], check=True)
    wait_daemon_exit(cache)
    assert disk.peak <= CACHE + MARGIN, f"the cache held {disk.peak / (1 << 20):.1f} MiB"


def test_mount_helper(place, tmp_path):
    url, mnt, cache = place
    env = {**os.environ, "CKPTFS_BIN": program("ckptfs")}
    p = subprocess.run([program("mount.ckptfs"), url, str(mnt), "-o",
                        f"rw,_netdev,cache_dir={cache},snapshot_interval=2,compress=3"],
                       capture_output=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    (mnt / "g").write_bytes(b"helper")
    subprocess.run(["umount", str(mnt)], check=True)
    wait_daemon_exit(cache)
    assert read_back(url, tmp_path) == {"g": b"helper"}
    bad = subprocess.run([program("mount.ckptfs"), url, str(mnt), "-o", "bogus_option=1"],
                         capture_output=True, timeout=60, env=env)
    assert bad.returncode != 0 and b"bogus_option" in bad.stderr


def test_fstab_line_through_mount8(place, tmp_path):
    """mount(8) reads an fstab line and runs /sbin/mount.ckptfs; done in a private mount
    namespace where /sbin is a tmpfs holding only our helper, so the host is untouched."""
    url, mnt, cache = place
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{url} {mnt} ckptfs _netdev,cache_dir={cache} 0 0\n")
    script = f"""
        set -e
        mount -t tmpfs none /sbin
        ln -s {program("mount.ckptfs")} /sbin/mount.ckptfs
        mount --fstab {fstab} {mnt}
        echo fstab > {mnt}/h
        umount {mnt}
    """
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, timeout=120,
                       env={**os.environ, "CKPTFS_BIN": program("ckptfs")})
    assert p.returncode == 0, p.stderr
    wait_daemon_exit(cache)
    assert read_back(url, tmp_path) == {"h": b"fstab\n"}
