"""Fixtures that give a test a directory to exercise: a plain local one (the reference, and
the check that the tests themselves are right) and a ckptfs mount (what is under test).

    from fsfixtures import fsdir  # noqa: F401

    def test_something(fsdir):     # runs as test_something[local] and test_something[ckptfs]
        ...

The "ckptfs" variant skips while the daemon is not built, so the same test files run
unchanged before and after it lands.
"""

import os
import signal
import stat
import threading

import pytest

from ckpt import program
from fsmount import CkptfsMount

BACKENDS = ["local", "ckptfs"]

# A test on a hung mount would block in a system call for ever, and CI with it. Past this
# many seconds the daemon is killed: the blocked calls then fail (ENOTCONN) and the test is
# reported as hung. Generous, for the 100,000-entry test under a sanitizer build.
TEST_TIMEOUT = float(os.environ.get("CKPT_FS_TEST_TIMEOUT", "600"))


def make_traversable(path):
    """Lets every user walk down to `path`: tests run a child as uid 65534 against files in
    it, and pytest's base temporary directory is 0700. Adds only the search bit for others
    (not read), on each ancestor that lacks it."""
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _local_dir(path):
    os.mkdir(path)
    os.chmod(path, 0o755)  # as a fresh mount's root: umask must not decide what others can do
    make_traversable(path)
    return str(path)


def _ckptfs_program():
    try:
        return program("ckptfs")
    except FileNotFoundError:
        pytest.skip("ckptfs not built")


class _Mount:
    """A ckptfs mount of a fresh bucket, everything local under `base`: a file:// bucket
    there, or the S3 bucket `url` with the environment `env` that reaches it."""

    def __init__(self, base, url=None, env=None):
        _ckptfs_program()
        os.mkdir(base)
        make_traversable(base)
        if url is None:
            bucket_dir = os.path.join(base, "bucket")
            os.mkdir(bucket_dir)  # a file:// bucket is a directory that must exist
            url = f"file://{bucket_dir}"
        self.mount = CkptfsMount(url, os.path.join(base, "cache"), os.path.join(base, "mnt"),
                                 "-o", "allow_other", env=env)

    def __enter__(self):
        self.mount.start()
        self.hung = False
        self.watchdog = threading.Timer(TEST_TIMEOUT, self._kill_hung_daemon)
        self.watchdog.daemon = True
        self.watchdog.start()
        return self.mount.path

    def _kill_hung_daemon(self):
        proc = self.mount.proc
        if proc is not None and proc.poll() is None:
            self.hung = True
            os.kill(proc.pid, signal.SIGKILL)

    def __exit__(self, *exc):
        self.watchdog.cancel()
        status = self.mount.stop()
        if self.hung:
            pytest.fail(f"ckptfs hung: killed after {TEST_TIMEOUT:.0f} s "
                        f"(CKPT_FS_TEST_TIMEOUT); its log:\n{self.mount.output()[-4000:]}")
        # a daemon that crashes, or finds an error, while unmounting fails the test as well
        assert status == 0, f"ckptfs exited with {status}:\n{self.mount.output()[-4000:]}"


@pytest.fixture(params=BACKENDS)
def fsdir(request, tmp_path):
    """An empty directory on the backend named by the parameter; its path as a str."""
    if request.param == "local":
        yield _local_dir(tmp_path / "local")
        return
    with _Mount(str(tmp_path / "ckptfs")) as path:
        yield path


@pytest.fixture(params=BACKENDS + ["ckptfs-s3"])
def fsdir_pair(request, tmp_path):
    """(reference, under_test): a plain local directory and an empty directory on the
    backend named by the parameter, for differential tests. With "local" both are plain
    directories, which checks the differential harness itself; "ckptfs-s3" mounts a bucket
    of the Swift test server, so snapshots and uploads go through real S3 meanwhile."""
    reference = _local_dir(tmp_path / "reference")
    if request.param == "local":
        yield reference, _local_dir(tmp_path / "local")
        return
    url = env = None
    if request.param == "ckptfs-s3":
        url = f"s3://{request.getfixturevalue('bucket')}"
        env = request.getfixturevalue("s3env")
    with _Mount(str(tmp_path / "ckptfs"), url, env) as path:
        yield reference, path


@pytest.fixture
def reference_dir(tmp_path):
    """A plain local directory next to `fsdir`, for tests that measure a subtle kernel rule
    on the local filesystem and require the backend to behave the same."""
    return _local_dir(tmp_path / "reference")
