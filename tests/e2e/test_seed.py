"""Seeding (--seed-from): a new bucket starts from another bucket's snapshot, never writes to the
seed (byte-identical before and after, and the server's request log shows no write to it), and
stays whole after the seed is deleted. Real mounts on the Swift server."""

import hashlib
import json
import os

import pytest

from ckpt import ckptctl
from conftest import _delete_bucket
from fsmount import mount_factory

MIB = 1 << 20


@pytest.fixture
def mounts(tmp_path, s3env):
    with mount_factory(tmp_path, None, env=s3env) as mount:
        yield mount


def objects(client, bucket):
    """{key: sha256 of the bytes} of every object in the bucket."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def seed(mounts, bucket):
    """The seed bucket: a pipeline's checkpoint, published."""
    m = mounts(url=f"s3://{bucket}", name="seeder")
    os.makedirs(f"{m.path}/ckpt-1")
    for i in range(3):
        with open(f"{m.path}/ckpt-1/part-{i}", "wb") as f:
            f.write(os.urandom(5 * MIB + i))
    with open(f"{m.path}/CATALOG", "w") as f:
        f.write("ckpt-1\n")
    want = tree(m.path)
    m.stop()
    return bucket, want


def test_seeded_bucket_starts_from_the_seed_and_outlives_it(mounts, seed, bucket2, s3server,
                                                            s3env):
    seed_bucket, want = seed
    client = s3server.client()
    before = objects(client, seed_bucket)
    since = s3server.mark()
    m = mounts("--seed-from", f"s3://{seed_bucket}", url=f"s3://{bucket2}", name="new")
    assert tree(m.path) == want
    with open(f"{m.path}/CATALOG", "w") as f:  # the new pipeline goes on from there
        f.write("ckpt-2\n")
    want["CATALOG"] = hashlib.sha256(b"ckpt-2\n").hexdigest()
    assert m.stop() == 0
    sent = s3server.requests(since)
    writes = [r for r in sent if r.method not in ("GET", "HEAD") and f"/{seed_bucket}" in r.path]
    assert writes == [], writes
    # Same server, same credentials: the chunks were copied by the server, never fetched here.
    fetched = [r for r in sent if r.method == "GET" and f"/{seed_bucket}/chunks/" in r.path]
    assert fetched == [], fetched
    assert objects(client, seed_bucket) == before

    _delete_bucket(client, seed_bucket)
    assert seed_bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    again = mounts(url=f"s3://{bucket2}", name="after")  # no --seed-from: its own bucket alone
    assert tree(again.path) == want
    again.stop()
    p = ckptctl("verify", f"s3://{bucket2}", env=s3env)
    assert p.returncode == 0, p.stderr.decode()


def test_seed_from_is_ignored_once_the_bucket_has_its_own(mounts, seed, bucket2):
    seed_bucket, want = seed
    m = mounts("--seed-from", f"s3://{seed_bucket}", url=f"s3://{bucket2}", name="first")
    os.remove(f"{m.path}/CATALOG")
    m.stop()
    # A fresh cache, the same command line (an fstab entry): the bucket's own tree wins.
    m = mounts("--seed-from", f"s3://{seed_bucket}", url=f"s3://{bucket2}", name="second")
    assert "CATALOG" not in os.listdir(m.path)
    m.stop()
    assert "is not used" in m.output()


def test_seed_from_an_older_snapshot(mounts, bucket, bucket2, s3env):
    w = mounts(url=f"s3://{bucket}", name="seeder")
    with open(f"{w.path}/f", "w") as f:
        f.write("old")
    assert ckptctl("sync", w.path, env=s3env).returncode == 0
    with open(f"{w.path}/f", "w") as f:
        f.write("new")
    w.stop()
    first = json.loads(ckptctl("snapshots", f"s3://{bucket}", "--json", env=s3env).stdout)[0]
    m = mounts("--seed-from", f"s3://{bucket}", "--snapshot", first["id"], url=f"s3://{bucket2}",
               name="new")
    assert open(f"{m.path}/f").read() == "old"
    m.stop()


@pytest.mark.parametrize("case", ["no seed data", "encryption differs", "read-only", "itself"])
def test_seed_refusals(mounts, seed, bucket2, tmp_path, case):
    seed_bucket, _ = seed
    args, url = ["--seed-from", f"s3://{seed_bucket}"], f"s3://{bucket2}"
    if case == "no seed data":
        args = ["--seed-from", f"s3://{bucket2}/nothing-here"]
        message = "holds no ckptfs data"
    elif case == "encryption differs":
        key = tmp_path / "key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        args += ["--encrypt-key", str(key)]
        message = "is not encrypted, but --encrypt-key was given"
    elif case == "read-only":
        args += ["--read-only"]
        message = "--seed-from is for a writable mount"
    else:
        url = f"s3://{seed_bucket}"
        message = "names the mount's own bucket"
    with pytest.raises(RuntimeError) as e:
        mounts(*args, url=url, name="bad")
    assert message in str(e.value)


def test_seeding_between_file_buckets_copies_the_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    with mount_factory(tmp_path, f"file://{a}") as mount:
        m = mount(name="seeder")
        with open(f"{m.path}/state", "wb") as f:
            f.write(os.urandom(9 * MIB))
        want = tree(m.path)
        m.stop()
        seeded = mount("--seed-from", f"file://{a}", url=f"file://{b}", name="new")
        assert tree(seeded.path) == want
        seeded.stop()
    chunks = lambda root: sorted(p.relative_to(root) for p in (root / "chunks").rglob("*")
                                 if p.is_file())
    assert chunks(b) == chunks(a) and len(chunks(a)) == 3
    for rel in chunks(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
