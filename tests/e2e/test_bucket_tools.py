"""ckptctl on a bucket without a mount: `snapshots` lists what a writer published, `pull`
restores a snapshot into a plain directory exactly, `verify` finds missing and damaged chunks,
and snapshots crafted to break the format are refused cleanly by every reader. Real mounts
write the buckets (file:// and Swift)."""

import hashlib
import json
import os
import stat
import struct
import subprocess

import pytest
import xxhash

from ckpt import ckptctl, one_line_error
from fsmount import CkptfsMount, mount_factory

MIB = 1 << 20


@pytest.fixture
def mounts(tmp_path):
    """A factory of mounts of one file:// bucket (unless url= says), each stopped at the end."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with mount_factory(tmp_path, f"file://{bucket}") as mount:
        mount.bucket = bucket
        mount.url = f"file://{bucket}"
        yield mount


def make_tree(root):
    """A tree with every kind of thing a checkpoint directory can hold."""
    os.makedirs(f"{root}/state/deep/er")
    with open(f"{root}/state/big.bin", "wb") as f:  # several 4 MiB blocks, the last partial
        f.write(os.urandom(9 * MIB + 123))
    with open(f"{root}/state/sparse.bin", "wb") as f:
        f.seek(6 * MIB)
        f.write(b"end")
    with open(f"{root}/state/deep/er/small.txt", "w") as f:
        f.write("hello\n")
    open(f"{root}/empty", "w").close()
    os.symlink("state/deep/er/small.txt", f"{root}/link")
    os.link(f"{root}/state/deep/er/small.txt", f"{root}/hard")
    os.mkfifo(f"{root}/fifo")
    os.setxattr(f"{root}/state/big.bin", "user.checkpoint", b"42")
    os.chmod(f"{root}/state/deep/er/small.txt", 0o640)
    os.chmod(f"{root}/state/deep", 0o750)
    os.utime(f"{root}/state/big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))


def describe(root):
    """Everything pull promises to restore, per relative path."""
    out = {}
    inodes = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            e = {"mode": st.st_mode, "mtime": st.st_mtime_ns, "kind": kind}
            if stat.S_ISREG(kind):
                with open(p, "rb") as f:
                    e["sha"] = hashlib.sha256(f.read()).hexdigest()
                e["size"] = st.st_size
                e["links"] = st.st_nlink
                e["xattrs"] = {k: os.getxattr(p, k) for k in os.listxattr(p)}
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                e["target"] = os.readlink(p)
                del e["mtime"]  # a symlink's own time is not the tree's business
            out[rel] = e
    out["<hard links>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def publish(mounts, build, url=None, env=None):
    """Writes a tree through a mount and unmounts (which publishes it); returns the tree as the
    mount showed it."""
    m = mounts(url=url, env=env) if url else mounts()
    build(m.path)
    seen = describe(m.path)
    m.stop()
    return seen


def snapshot_list(url, *args, env=None):
    p = ckptctl("snapshots", url, "--json", *args, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_pull_restores_the_tree_exactly(mounts, tmp_path):
    seen = publish(mounts, make_tree)
    listed = snapshot_list(mounts.url)
    assert len(listed) == 1
    assert listed[0]["files"] == 4  # big, sparse, small (twice linked: one file), empty
    assert listed[0]["bytes"] == 9 * MIB + 123 + 6 * MIB + 3 + 6
    out = tmp_path / "restored"
    p = ckptctl("pull", mounts.url, out)
    assert p.returncode == 0, p.stderr.decode()
    assert f"snapshot {listed[0]['id']} restored" in p.stdout.decode()
    assert describe(out) == seen
    assert not [n for n in os.listdir(tmp_path) if ".pull-" in n], "the staging directory stays"


def test_pull_of_an_older_snapshot_by_id(mounts, tmp_path):
    m = mounts()
    with open(f"{m.path}/f", "w") as f:
        f.write("one")
    assert ckptctl("sync", m.path).returncode == 0
    with open(f"{m.path}/f", "w") as f:
        f.write("two, longer")
    m.stop()
    first, last = snapshot_list(mounts.url)[0], snapshot_list(mounts.url)[-1]
    assert first["id"] != last["id"]
    assert ckptctl("pull", f"{mounts.url}@{first['id']}", tmp_path / "a").returncode == 0
    assert (tmp_path / "a" / "f").read_text() == "one"
    assert ckptctl("pull", mounts.url, tmp_path / "b", "--snapshot", last["id"]).returncode == 0
    assert (tmp_path / "b" / "f").read_text() == "two, longer"


def test_pull_refuses_an_existing_directory_and_bad_ids(mounts, tmp_path):
    publish(mounts, lambda root: open(f"{root}/f", "w").close())
    there = tmp_path / "there"
    there.mkdir()
    (there / "mine").write_text("keep")
    p = ckptctl("pull", mounts.url, there)
    assert p.returncode == 1 and "exists" in one_line_error(p)
    assert os.listdir(there) == ["mine"]
    p = ckptctl("pull", f"{mounts.url}@nonsense", tmp_path / "x")
    assert p.returncode == 1 and "is not a snapshot ID" in one_line_error(p)
    p = ckptctl("pull", mounts.url, tmp_path / "y", "--snapshot", "00000009-000000000009")
    assert p.returncode == 1 and "there is no snapshot 00000009-000000000009" in one_line_error(p)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert ckptctl("pull", mounts.url).returncode == 2


def chunk_files(bucket):
    return sorted(p for p in (bucket / "chunks").rglob("*") if p.is_file())


def test_verify_finds_missing_and_damaged_chunks(mounts):
    publish(mounts, make_tree)
    p = ckptctl("verify", mounts.url)
    assert p.returncode == 0, p.stderr.decode()
    assert "all good" in p.stdout.decode()
    chunks = chunk_files(mounts.bucket)
    assert len(chunks) >= 4
    chunks[0].unlink()
    data = bytearray(chunks[1].read_bytes())
    data[len(data) // 2] ^= 1
    chunks[1].write_bytes(bytes(data))
    p = ckptctl("verify", mounts.url)
    err = p.stderr.decode()
    assert p.returncode == 1
    assert "missing" in err and chunks[0].name in err
    assert "damaged" in err and chunks[1].name in err
    assert "PROBLEMS FOUND" in p.stdout.decode()
    assert "0 damaged snapshots, 2 missing or damaged chunks" in err


def test_verify_recomputes_names(mounts):
    """A chunk whose checksum holds but whose content is not what its name says, as a writer
    that named it wrong would leave: a mount's fetch checks the checksum only; verify finds it."""
    publish(mounts, make_tree)
    raw = [p for p in chunk_files(mounts.bucket) if p.stat().st_size > 4096
           and p.read_bytes()[4:6] == bytes([3, 0])]  # version 3, neither compressed nor encrypted
    assert raw, "make_tree's random bytes should give raw chunks"
    chunk = bytearray(raw[0].read_bytes())
    name = bytes.fromhex(raw[0].name)
    # The layout drawn in cache/codec.c: a 16-byte header, n stored lengths, n piece sums, the
    # index's checksum, then (all raw) the plaintext.
    n = -(-struct.unpack_from("<Q", chunk, 8)[0] // (64 << 10))
    sums, check, plain = 16 + 4 * n, 16 + 12 * n, 16 + 12 * n + 16

    def checksum(data):
        h = xxhash.xxh3_128_intdigest(bytes(data), seed=xxhash.xxh3_64_intdigest(name))
        return struct.pack("<QQ", h & (2**64 - 1), h >> 64)
    assert checksum(chunk[:check]) == chunk[check:plain]
    assert hashlib.sha256(chunk[plain:]).digest() == name
    chunk[plain] ^= 1
    chunk[sums:sums + 8] = struct.pack("<Q", xxhash.xxh3_64_intdigest(
        bytes(chunk[plain:plain + min(64 << 10, len(chunk) - plain)])))
    chunk[check:plain] = checksum(chunk[:check])
    raw[0].write_bytes(bytes(chunk))
    p = ckptctl("verify", mounts.url)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "content does not match its name" in err and raw[0].name in err
    assert "0 damaged snapshots, 1 missing or damaged chunks" in err


def test_tools_on_swift(mounts, bucket, s3env, tmp_path):
    url = f"s3://{bucket}"
    seen = publish(mounts, make_tree, url=url, env=s3env)
    assert len(snapshot_list(url, env=s3env)) == 1
    p = ckptctl("verify", url, env=s3env)
    assert p.returncode == 0, p.stderr.decode()
    p = ckptctl("pull", url, tmp_path / "out", env=s3env)
    assert p.returncode == 0, p.stderr.decode()
    assert describe(tmp_path / "out") == seen


# ---- hostile snapshots: crafted by hand, in the format snapshot.c draws ----------------

def uvar(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def svar(b):
    return uvar(len(b)) + b


def tvar(sec):
    ns = sec * 10**9
    return uvar((ns << 1) ^ (ns >> 63))  # zigzag


def inode(delta, mode, size=0, nlink=1, target=b""):
    return (uvar(delta) + uvar(mode) + uvar(0) + uvar(0) + uvar(nlink) + uvar(size) + uvar(0)
            + tvar(1) + tvar(1) + tvar(1) + svar(target))


def snapshot_bytes(inodes, dentries, xattrs=(), blocks=(), counts=None, block_size=4 * MIB,
                   version=1):
    head = b"CKSN" + bytes([version, 0, 0, 0]) + struct.pack("<QQQII", 9, 1, 10**18, block_size, 0)
    sections = [inodes, dentries, xattrs, blocks]
    body = b""
    for i, recs in enumerate(sections):
        n = counts[i] if counts and counts[i] is not None else len(recs)
        body += uvar(n) + b"".join(recs)
    return head + body


def dentry(parent, name, ino):
    return uvar(parent) + svar(name) + uvar(ino)


def store_snapshot(bucket, plain, sid="00000009-000000000001"):
    """A snapshot object as the codec writes one, raw: its name, then the chunk."""
    name = hashlib.sha256(plain).digest()
    chunk = b"CKCH" + bytes([1, 0, 0, 0]) + struct.pack("<Q", len(plain)) + plain
    d = bucket / "snapshots"
    d.mkdir(exist_ok=True)
    (d / sid).write_bytes(name + chunk)


DIR, REG, LNK = 0o040755, 0o100644, 0o120777
ROOT = inode(1, DIR, nlink=2)
HOSTILE = {
    "dot-dot name": snapshot_bytes([ROOT, inode(1, REG)], [dentry(1, b"..", 2)]),
    "slash in a name": snapshot_bytes([ROOT, inode(1, REG)], [dentry(1, b"a/b", 2)]),
    "NUL in a name": snapshot_bytes([ROOT, inode(1, REG)], [dentry(1, b"a\0b", 2)]),
    "directory loop": snapshot_bytes(
        [ROOT, inode(1, DIR, nlink=2), inode(1, DIR, nlink=2)],
        [dentry(2, b"a", 3), dentry(3, b"b", 2)]),
    "absurd count": snapshot_bytes([ROOT], [], counts=[10**15, None, None, None]),
    "absurd size": snapshot_bytes([ROOT, inode(1, REG, size=1 << 63)], [dentry(1, b"f", 2)]),
    "block past the end": snapshot_bytes(
        [ROOT, inode(1, REG, size=10)], [dentry(1, b"f", 2)],
        blocks=[uvar(2) + uvar(5) + bytes(32)]),
    "entry into a file": snapshot_bytes(
        [ROOT, inode(1, REG), inode(1, REG)], [dentry(1, b"f", 2), dentry(2, b"g", 3)]),
    "no root": snapshot_bytes([inode(2, DIR)], []),
    "wrong version": snapshot_bytes([ROOT], [], version=7),
    "zero block size": snapshot_bytes([ROOT], [], block_size=0),
    "trailing bytes": snapshot_bytes([ROOT], []) + b"junk",
}


@pytest.mark.parametrize("case", sorted(HOSTILE) + ["truncated", "wrong name", "not a chunk"])
def test_hostile_snapshots_are_refused_cleanly(tmp_path, case):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "ckptfs").write_text('{"format":1,"block_size":4194304,"encrypted":false}')
    if case in HOSTILE:
        store_snapshot(bucket, HOSTILE[case])
    else:
        store_snapshot(bucket, snapshot_bytes([ROOT, inode(1, REG)], [dentry(1, b"f", 2)]))
        obj = bucket / "snapshots" / "00000009-000000000001"
        data = obj.read_bytes()
        if case == "truncated":
            obj.write_bytes(data[:-3])
        elif case == "wrong name":
            obj.write_bytes(bytes(32) + data[32:])
        else:
            obj.write_bytes(data[:32] + b"XXXX" + data[36:])
    url = f"file://{bucket}"
    out = tmp_path / "out"
    p = ckptctl("pull", url, out)
    assert p.returncode == 1, p.stderr.decode()
    assert "00000009-000000000001" in one_line_error(p)
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".pull-" in n]
    p = ckptctl("verify", url)
    assert p.returncode == 1 and "00000009-000000000001" in p.stderr.decode()
    p = ckptctl("snapshots", url)
    assert p.returncode == 1 and "damaged" in p.stdout.decode()
    # A read-only mount refuses it too, with the reason, and leaves nothing mounted.
    m = CkptfsMount(url, tmp_path / "cache", tmp_path / "mnt", "--read-only")
    with pytest.raises(Exception) as e:
        m.start()
    m.kill()
    assert "snapshot" in str(e.value) or "snapshot" in m.output()
    assert not subprocess.run(["mountpoint", "-q", str(tmp_path / "mnt")]).returncode == 0


def test_encrypted_bucket_needs_its_key(mounts, tmp_path):
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    m = mounts("--encrypt-key", key)
    with open(f"{m.path}/secret", "wb") as f:
        f.write(b"s" * 100000)
    m.stop()
    p = ckptctl("pull", mounts.url, tmp_path / "no-key")
    assert p.returncode == 1 and "encrypt" in one_line_error(p)
    assert not (tmp_path / "no-key").exists()
    p = ckptctl("pull", mounts.url, tmp_path / "out", "--encrypt-key", key)
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "out" / "secret").read_bytes() == b"s" * 100000
    p = ckptctl("verify", mounts.url, "--encrypt-key", key)
    assert p.returncode == 0, p.stderr.decode()
