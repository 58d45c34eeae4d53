"""Mounting ckptfs from tests: a real FUSE mount of a real daemon, always unmounted and
stopped afterwards, also when the test fails.

    with CkptfsMount("file:///tmp/bucket", cache_dir, mountpoint) as m:
        open(m.path + "/f", "w").write("x")
"""

import contextlib
import os
import signal
import subprocess
import time

from ckpt import program

MOUNT_TIMEOUT = 30.0


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class CkptfsMount:
    """`ckptfs -f URL MOUNTPOINT --cache-dir DIR [args]` as a child process.

    stop() unmounts (the daemon then uploads what is left and publishes a final snapshot) and
    waits for the daemon to exit; kill() is `kill -9`, as a crash test wants it."""

    def __init__(self, url, cache_dir, mountpoint, *args, env=None):
        self.url, self.cache_dir, self.path = url, str(cache_dir), str(mountpoint)
        self.args, self.env = [str(a) for a in args], env
        self.proc = None
        self.log = os.path.join(self.cache_dir + ".log")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        os.makedirs(self.path, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [program("ckptfs"), "-f", "--cache-dir", self.cache_dir, *self.args, self.url,
                 self.path], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ckptfs exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ckptfs did not mount within {MOUNT_TIMEOUT} s:\n{self.output()}")
            time.sleep(0.02)
        return self

    def output(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self, timeout=120):
        """Unmounts and waits for the daemon to finish its final upload; returns its exit status."""
        if self.proc is None:
            return None
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", self.path], capture_output=True)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._lazy_unmount()
        rc, self.proc = self.proc.returncode, None
        return rc

    def kill(self):
        """SIGKILL: the daemon dies mid-work, as in a crash; the mount is then detached."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self._lazy_unmount()

    def _lazy_unmount(self):
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)


@contextlib.contextmanager
def mount_factory(tmp_path, url, env=None):
    """Yields mount(*args, name=, url=, env=): starts a CkptfsMount of url (unless given another)
    with its own cache directory under tmp_path and returns it. Every mount made is stopped at
    the end, or killed if it will not stop, whatever happened."""
    made = []

    def mount(*args, name=None, url=url, env=env):
        name = name or f"m{len(made)}"
        m = CkptfsMount(url, tmp_path / f"{name}-cache", tmp_path / f"{name}-mnt", *args, env=env)
        made.append(m)
        return m.start()

    try:
        yield mount
    finally:
        for m in made:
            try:
                m.stop(timeout=60)
            except Exception:
                m.kill()
