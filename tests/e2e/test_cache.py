"""The tiered cache: the disk bound, measured on disk under a write load larger than the cache;
dirty data never evicted (writers wait while the store is down, and fail only after the
timeout); a corrupted cache file detected and fetched again; a warm cache kept across restarts;
warm-up; read-ahead and one download shared by concurrent readers; the memory tier."""

import errno
import hashlib
import json
import os
import random
import struct
import subprocess
import threading
import time
from urllib.parse import urlparse

import pytest
import xxhash

from ckpt import ckptctl
from faultproxy import FaultProxy
from fsmount import CkptfsMount
from test_mount import mounts  # noqa: F401  (a fixture)

MIB = 1 << 20
CACHE = 64 * MIB
MARGIN = 8 * MIB  # the README's bound: the cache directory never holds more than --cache-size + 8 MiB


def blob(seed, size):
    return random.Random(seed).randbytes(size)


def write_file(path, data):
    with open(path, "wb") as f:
        for off in range(0, len(data), MIB):
            f.write(data[off:off + MIB])
        f.flush()
        os.fsync(f.fileno())


def read_file(path):
    """The file's bytes as the daemon serves them: the kernel's cached copy is dropped first."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def disk_usage(root):
    """What a directory takes on disk, as du counts it (st_blocks), not what the daemon thinks."""
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except FileNotFoundError:
                pass  # gone while we walked
    return total


class DiskSampler(threading.Thread):
    """Samples a directory's disk usage every 20 ms, from another thread; .peak is the most seen."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.peak, self.samples = root, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, disk_usage(self.root))
            self.samples += 1
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def status(m):
    p = ckptctl("status", "--json", m.path)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ---- the disk bound ----

def test_cache_size_holds_under_a_write_load_bigger_than_the_cache(mounts):
    m = mounts("--cache-size", "64M", "--snapshot-interval", "2")
    files = {f"f{i}": blob(i, 48 * MIB) for i in range(5)}  # 240 MiB: almost 4x the cache
    with DiskSampler(m.cache_dir) as disk:
        for name, data in files.items():
            write_file(os.path.join(m.path, name), data)
        for name, data in files.items():  # most of it was evicted: read back through the store
            assert hashlib.sha256(read_file(os.path.join(m.path, name))).digest() == \
                hashlib.sha256(data).digest(), name
    assert disk.samples > 20
    assert disk.peak <= CACHE + MARGIN, f"the cache held {disk.peak / MIB:.1f} MiB"
    st = status(m)
    assert st["cache_limit"] == CACHE and st["cache_used"] <= CACHE
    assert st["evictions"] > 0 and st["chunks_fetched"] > 0


def test_cache_size_is_checked_on_the_command_line(mounts):
    with pytest.raises(RuntimeError) as e:
        mounts("--cache-size", "12M")
    assert "too small" in str(e.value)
    with pytest.raises(RuntimeError) as e:
        mounts("--cache-size", "lots")
    assert "not a size" in str(e.value)


# ---- dirty data and an unreachable store ----

@pytest.fixture
def downable(tmp_path, s3server, bucket, s3env):
    """Mounts of the Swift bucket through a fault proxy that can take the store down."""
    u = urlparse(s3server.endpoint)
    made = []
    with FaultProxy(u.hostname, u.port) as proxy:
        def mount(*args, name="m"):
            m = CkptfsMount(f"s3://{bucket}", tmp_path / f"{name}-cache", tmp_path / f"{name}-mnt",
                            "--snapshot-interval", "1", "--retries", "1", *args,
                            env={**s3env, "AWS_ENDPOINT_URL": proxy.url})
            made.append(m)
            return m.start()
        mount.proxy = proxy
        yield mount
        proxy.plan([])
        for m in made:
            try:
                m.stop(timeout=120)
            except Exception:
                m.kill()


def writer(tmp_path, path, data):
    """Writes data to path with fsync from another process: a file of a mount open here while a
    test runs ckptctl would be flushed by every fork, and block it as the write does."""
    src = tmp_path / f"src-{len(data)}"
    src.write_bytes(data)
    return subprocess.Popen(["dd", f"if={src}", f"of={path}", "bs=1M", "conv=fsync", "status=none"],
                            stderr=subprocess.PIPE)


def test_dirty_data_is_never_evicted_writers_wait_for_the_store(downable, tmp_path, bucket, s3env):
    m = downable("--cache-size", "64M", "--full-timeout", "600")
    downable.proxy.plan([503] * 1000000)  # the store is down from now on
    data = blob(1, 100 * MIB)  # more than the cache holds: it cannot all stay dirty
    with DiskSampler(m.cache_dir) as disk:
        dd = writer(tmp_path, os.path.join(m.path, "big"), data)
        wait_for(lambda: status(m)["writers_waiting"] > 0, 60, "a writer to wait for room")
        time.sleep(2)
        assert dd.poll() is None  # waiting, not failing, not dropping data
        downable.proxy.plan([])  # the store is back: uploads free room, the writer goes on
        assert dd.wait(180) == 0, dd.stderr.read()
    assert disk.peak <= CACHE + MARGIN, f"the cache held {disk.peak / MIB:.1f} MiB"
    assert status(m)["writer_waits"] > 0
    assert read_file(os.path.join(m.path, "big")) == data
    assert ckptctl("sync", m.path).returncode == 0
    assert m.stop() == 0
    fresh = CkptfsMount(f"s3://{bucket}", tmp_path / "fresh-cache", tmp_path / "fresh-mnt",
                        "--read-only", env=s3env).start()
    try:
        assert read_file(os.path.join(fresh.path, "big")) == data
    finally:
        fresh.stop()


def test_a_writer_gives_up_with_enospc_after_the_timeout(downable, tmp_path):
    m = downable("--cache-size", "64M", "--full-timeout", "2")
    downable.proxy.plan([503] * 1000000)
    dd = writer(tmp_path, os.path.join(m.path, "big"), blob(2, 100 * MIB))
    assert dd.wait(120) != 0
    assert os.strerror(errno.ENOSPC).encode() in dd.stderr.read()
    assert status(m)["writer_timeouts"] > 0
    downable.proxy.plan([])  # the store is back: the mount works again
    write_file(os.path.join(m.path, "small"), b"still here")
    assert read_file(os.path.join(m.path, "small")) == b"still here"
    assert ckptctl("sync", m.path).returncode == 0


# ---- checked cache, warm cache ----

def data_files(cache_dir):
    out = []
    for dirpath, _, names in os.walk(os.path.join(cache_dir, "data")):
        out += [os.path.join(dirpath, n) for n in names]
    return out


def test_a_corrupted_cache_file_is_detected_and_fetched_again(mounts):
    data = blob(3, 12 * MIB)
    m = mounts(name="a")
    write_file(os.path.join(m.path, "f"), data)
    assert m.stop() == 0  # everything clean, in the bucket and in the cache
    victim = max(data_files(m.cache_dir), key=os.path.getsize)
    with open(victim, "r+b") as f:  # one flipped byte in the second block
        f.seek(5 * MIB + 123)
        byte = f.read(1)
        f.seek(5 * MIB + 123)
        f.write(bytes([byte[0] ^ 0x40]))
    m = mounts(name="a")
    assert read_file(os.path.join(m.path, "f")) == data
    st = status(m)
    assert st["corrupt_blocks"] == 1 and st["chunks_fetched"] == 1
    with open(victim, "rb") as f:  # the cache holds the right bytes again
        f.seek(5 * MIB + 123)
        assert f.read(1) == byte


def test_restart_keeps_the_warm_cache(mounts):
    w = mounts(name="writer")
    files = {f"f{i}": blob(10 + i, 10 * MIB) for i in range(3)}
    for name, data in files.items():
        write_file(os.path.join(w.path, name), data)
    assert w.stop() == 0
    r = mounts(name="reader")  # a fresh cache: everything comes from the bucket
    assert {n: read_file(os.path.join(r.path, n)) for n in files} == files
    assert status(r)["chunks_fetched"] == 9
    assert r.stop() == 0
    r = mounts(name="reader")  # the same cache: nothing comes from the bucket
    assert {n: read_file(os.path.join(r.path, n)) for n in files} == files
    st = status(r)
    assert st["chunks_fetched"] == 0 and st["misses"] == 0 and st["hits_disk"] > 0
    human = ckptctl("status", r.path).stdout.decode()
    assert "disk cache:" in human and f"{st['hits_disk']} from disk, 0 fetched" in human


def test_warm_fetches_a_subtree_and_refuses_what_cannot_fit(mounts):
    w = mounts(name="writer")
    for k, (d, n) in enumerate((("a", 2), ("b", 1))):
        os.makedirs(os.path.join(w.path, d, "sub"))
        for i in range(n):
            write_file(os.path.join(w.path, d, "sub", f"f{i}"), blob(20 + 10 * k + i, 8 * MIB))
    write_file(os.path.join(w.path, "huge"), blob(30, 80 * MIB))
    assert w.stop() == 0
    m = mounts(name="fresh")
    p = ckptctl("warm", m.path, os.path.join(m.path, "a"))
    assert p.returncode == 0, p.stderr
    assert b"2 files warm" in p.stdout
    assert status(m)["chunks_fetched"] == 4
    read_file(os.path.join(m.path, "a", "sub", "f0"))
    read_file(os.path.join(m.path, "a", "sub", "f1"))
    assert status(m)["chunks_fetched"] == 4  # served from the warm cache
    read_file(os.path.join(m.path, "b", "sub", "f0"))
    assert status(m)["chunks_fetched"] == 6  # not warmed: fetched on demand
    assert m.stop() == 0  # one writer at a time
    small = mounts("--cache-size", "64M", name="small")
    p = ckptctl("warm", small.path)
    assert p.returncode == 1
    assert b"room for" in p.stderr and b"--cache-size 64 MiB" in p.stderr
    assert ckptctl("warm", small.path, "/").returncode == 1  # not inside the mount


# ---- the read path ----

def test_concurrent_readers_of_one_chunk_share_one_download(mounts):
    w = mounts(name="writer")
    data = blob(40, 4 * MIB)  # exactly one block
    write_file(os.path.join(w.path, "one"), data)
    assert w.stop() == 0
    m = mounts(name="fresh")
    fd = os.open(os.path.join(m.path, "one"), os.O_RDONLY)
    got = {}
    start = threading.Barrier(4)

    def read(i):
        start.wait()
        got[i] = os.pread(fd, MIB, i * MIB)
    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(fd)
    assert b"".join(got[i] for i in range(4)) == data
    assert status(m)["chunks_fetched"] == 1


PIECE = 64 << 10  # what a chunk's pieces hold (cache/codec.h)


def random_preads(path, offsets, size=4096):
    """preads as a random reader does them: the page cache dropped first, no kernel read-ahead."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return [os.pread(fd, size, off) for off in offsets]
    finally:
        os.close(fd)


def far_apart(size, n, seed):
    """n random offsets of 4 KiB reads, each over 5 MiB from the one before: the mount takes a
    read within 4 MiB of the last for part of a sequential one."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        off = rng.randrange(size - 4096)
        if not out or abs(off - out[-1]) > 5 * MIB:
            out.append(off)
    return out


@pytest.fixture(params=["plain", "encrypted"])
def key_args(request, tmp_path):
    if request.param == "plain":
        return ()
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    return ("--encrypt-key", str(key))


def test_random_reads_fetch_only_the_pieces_they_need(mounts, key_args):
    data = blob(60, 40 * MIB + 12345)  # the last block short, and its last piece
    w = mounts(*key_args, name="writer")
    write_file(os.path.join(w.path, "r"), data)
    assert w.stop() == 0
    offsets = far_apart(len(data), 12, 61) + [len(data) - 4096]
    want = [data[o:o + 4096] for o in offsets]
    m = mounts(*key_args, name="fresh")
    path = os.path.join(m.path, "r")
    assert random_preads(path, offsets) == want
    st = status(m)
    assert st["chunks_fetched"] == 0 and st["pieces_fetched"] >= len(offsets), st
    assert st["bytes_fetched"] <= 2 * PIECE * len(offsets), st  # a read may straddle two
    assert random_preads(path, offsets) == want  # the pieces are on disk now
    assert status(m)["pieces_fetched"] == st["pieces_fetched"]
    assert m.stop() == 0
    m = mounts(*key_args, name="fresh")  # and stay there across a restart
    assert random_preads(path, offsets) == want
    st = status(m)
    assert st["pieces_fetched"] == 0 and st["chunks_fetched"] == 0 and st["hits_disk"] > 0, st
    assert read_file(path) == data  # a sequential read fetches the rest
    assert status(m)["chunks_fetched"] >= 1


def test_a_corrupted_piece_is_detected_and_fetched_again(mounts):
    data = blob(62, 12 * MIB)
    w = mounts(name="writer")
    write_file(os.path.join(w.path, "r"), data)
    assert w.stop() == 0
    m = mounts(name="fresh")
    path, off = os.path.join(m.path, "r"), 9 * MIB + 5000
    assert random_preads(path, [off]) == [data[off:off + 4096]]
    assert m.stop() == 0
    (victim,) = [f for f in data_files(m.cache_dir) if os.path.getsize(f) > 0]
    with open(victim, "r+b") as f:  # the block holds just that piece: flip a byte of it
        f.seek(off + 10)
        f.write(bytes([f.read(1)[0] ^ 0x40]))
    m = mounts(name="fresh")
    assert random_preads(path, [off]) == [data[off:off + 4096]]
    st = status(m)
    assert st["corrupt_blocks"] == 1 and st["pieces_fetched"] >= 1, st
    assert read_file(path) == data


def test_chunks_of_an_older_format_are_fetched_whole(mounts):
    """A bucket written before chunks had pieces (format version 2) is read as it was: a random
    read fetches the whole chunk."""
    data = blob(63, 12 * MIB)
    w = mounts(name="writer")  # random bytes: raw chunks
    write_file(os.path.join(w.path, "r"), data)
    assert w.stop() == 0
    rewritten = 0
    for f in (mounts.bucket / "chunks").rglob("*"):
        chunk = f.read_bytes() if f.is_file() else b""
        if chunk[4:6] != bytes([3, 0]):  # not a raw version 3 chunk
            continue
        n = -(-struct.unpack_from("<Q", chunk, 8)[0] // PIECE)
        plain, name = chunk[16 + 12 * n + 16:], bytes.fromhex(f.name)
        h = xxhash.xxh3_128_intdigest(plain, seed=xxhash.xxh3_64_intdigest(name))
        f.write_bytes(b"CKCH" + bytes([2, 0, 0, 0]) + struct.pack("<QQQ", len(plain), h & (2**64 - 1),
                                                                  h >> 64) + plain)
        rewritten += 1
    assert rewritten >= 3
    m = mounts(name="fresh")
    path, off = os.path.join(m.path, "r"), 9 * MIB + 5000
    assert random_preads(path, [off]) == [data[off:off + 4096]]
    st = status(m)
    assert st["chunks_fetched"] == 1 and st["pieces_fetched"] == 0, st
    assert read_file(path) == data


def test_sequential_reads_fetch_ahead_and_the_memory_tier_serves_rereads(mounts):
    w = mounts(name="writer")
    data = blob(50, 40 * MIB)
    write_file(os.path.join(w.path, "seq"), data)
    assert w.stop() == 0
    m = mounts(name="fresh")
    assert read_file(os.path.join(m.path, "seq")) == data
    st = status(m)
    assert st["prefetched"] >= 5, st  # blocks fetched ahead of the reader
    assert st["chunks_fetched"] == 10
    assert read_file(os.path.join(m.path, "seq")) == data
    again = status(m)
    assert again["hits_memory"] > st["hits_memory"] and again["hits_disk"] == st["hits_disk"]
    assert again["chunks_fetched"] == 10
    assert m.stop() == 0
    m = mounts("--memory-cache", "0", name="fresh")  # no memory tier: the disk serves
    assert read_file(os.path.join(m.path, "seq")) == data
    st = status(m)
    assert st["hits_memory"] == 0 and st["hits_disk"] > 0 and st["chunks_fetched"] == 0
