"""`ckptctl store` and the object-store layer end to end: both backends, real Swift, real files."""

import os

import pytest

from ckpt import ckptctl, one_line_error, run, stats_of

MIB = 1 << 20


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path):
    """(store URL, environment) for an empty store of each backend."""
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        return f"file://{root}", None
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}", request.getfixturevalue("s3env")


def payload(size, seed=1):
    return (bytes(range(256)) * (size // 256 + 1))[:size] if seed == 1 else os.urandom(size)


def test_conformance_on_swift(bucket, s3env):
    """Every store operation against Swift, with and without a key prefix (file: meson test)."""
    for url in (f"s3://{bucket}", f"s3://{bucket}/a/prefix"):
        p = run("store_conformance", url, "--if-absent", "no", env=s3env, timeout=300)
        assert p.returncode == 0, p.stderr.decode()
        assert b"all checks passed" in p.stdout


@pytest.mark.parametrize("size", [0, 1, 5 * MIB + 3, 70 * MIB])
def test_put_get_roundtrip(base, tmp_path, size):
    url, env = base
    src = tmp_path / "src"
    src.write_bytes(payload(size, seed=2))
    p = ckptctl("store", "put", "--stats", f"{url}/dir/obj", src, env=env)
    assert p.returncode == 0, p.stderr
    if size > 64 * MIB and url.startswith("s3:"):
        assert stats_of(p)["multipart"]["bytes_up"] == size  # went up in parts
    dst = tmp_path / "dst"
    p = ckptctl("store", "get", f"{url}/dir/obj", dst, env=env)
    assert p.returncode == 0, p.stderr
    assert dst.read_bytes() == src.read_bytes()
    p = ckptctl("store", "get", f"{url}/dir/obj", "-", env=env)
    assert p.returncode == 0 and p.stdout == src.read_bytes()


def test_stdin_ls_head_rm(base):
    url, env = base
    for key, data in [("a/one", b"1"), ("a/two", b"22"), ("a/b/three", b"333"), ("top", b"")]:
        p = ckptctl("store", "put", f"{url}/{key}", "-", env=env, input=data)
        assert p.returncode == 0, p.stderr
    p = ckptctl("store", "ls", url, env=env)
    assert p.stdout.decode() == "a/b/three\t3\na/one\t1\na/two\t2\ntop\t0\n"
    p = ckptctl("store", "ls", f"{url}/a", env=env)  # a "directory": keys relative to it
    assert p.stdout.decode() == "b/three\t3\none\t1\ntwo\t2\n"
    p = ckptctl("store", "head", f"{url}/a/two", env=env)
    size, mtime = p.stdout.decode().split("\t")
    assert size == "2" and int(mtime) > 1600000000
    p = ckptctl("store", "rm", f"{url}/a/one", f"{url}/a/two", f"{url}/never-was", env=env)
    assert p.returncode == 0, p.stderr
    assert ckptctl("store", "ls", url, env=env).stdout.decode() == "a/b/three\t3\ntop\t0\n"


def test_interop_with_boto3(bucket, s3env, s3server, tmp_path):
    """What we write, an independent client reads byte for byte, and the other way round."""
    client = s3server.client()
    data = payload(3 * MIB + 5, seed=2)
    (tmp_path / "f").write_bytes(data)
    assert ckptctl("store", "put", f"s3://{bucket}/x/ours", tmp_path / "f", env=s3env).returncode == 0
    assert client.get_object(Bucket=bucket, Key="x/ours")["Body"].read() == data
    client.put_object(Bucket=bucket, Key="x/theirs b+c", Body=data[::-1])
    p = ckptctl("store", "get", f"s3://{bucket}/x/theirs b+c", "-", env=s3env)
    assert p.returncode == 0 and p.stdout == data[::-1]
    listed = ckptctl("store", "ls", f"s3://{bucket}", env=s3env).stdout.decode().splitlines()
    assert listed == [f"{o['Key']}\t{o['Size']}"
                      for o in client.list_objects_v2(Bucket=bucket)["Contents"]]


def test_if_absent_and_probe(base, tmp_path):
    url, env = base
    probe = ckptctl("store", "probe", url, env=env)
    assert probe.returncode == 0, probe.stderr
    first = ckptctl("store", "put", "--if-absent", f"{url}/k", "-", env=env, input=b"first")
    second = ckptctl("store", "put", "--if-absent", f"{url}/k", "-", env=env, input=b"second")
    if url.startswith("file:"):
        assert b"supported" in probe.stdout and b"not supported" not in probe.stdout
        assert first.returncode == 0
        assert second.returncode == 1 and "already exists" in one_line_error(second)
        assert ckptctl("store", "get", f"{url}/k", "-", env=env).stdout == b"first"
    else:  # Swift answers If-None-Match with 501; the probe must say so, not pretend
        assert b"not supported" in probe.stdout
        assert first.returncode == 1 and "501" in one_line_error(first)
    assert ckptctl("store", "ls", url, env=env).stdout.count(b"probe") == 0  # probe cleaned up


def test_credentials_file_and_profile(bucket, s3env, s3server, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n"
                     f"[swift]\naws_access_key_id = {s3server.access_key}\n"
                     f"aws_secret_access_key = {s3server.secret_key}\n")
    env = {k: v for k, v in s3env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    ok = ckptctl("store", "ls", "--credentials", creds, "--profile", "swift", f"s3://{bucket}", env=env)
    assert ok.returncode == 0, ok.stderr
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    env["AWS_PROFILE"] = "swift"
    assert ckptctl("store", "ls", f"s3://{bucket}", env=env).returncode == 0
    env["AWS_PROFILE"] = "default"  # a key the server does not know
    bad = ckptctl("store", "ls", f"s3://{bucket}", env=env)
    assert bad.returncode == 1 and "403" in one_line_error(bad)


@pytest.mark.parametrize("args, words", [
    (["ls", "s3:/bucket"], ["not a store URL"]),
    (["rm", "s3:/bucket/k"], ["not an object URL"]),
    (["head", "ftp://host/x"], ["not an object URL"]),
    (["ls", "file://relative/path"], ["absolute path"]),
    (["ls", "s3://Bad_Bucket!"], ["not a valid bucket name"]),
    (["head", "s3://BUCKET"], ["names no object"]),
    (["ls", "s3://bucket/a/../b"], ["segments"]),
])
def test_malformed_urls(s3env, args, words):
    p = ckptctl("store", *[a.replace("BUCKET", "some-bucket") for a in args], env=s3env)
    assert p.returncode == 1
    msg = one_line_error(p)
    assert all(w in msg for w in words), msg


def test_bad_usage_exits_2(s3env):
    assert ckptctl("store", "put", "s3://b/k", env=s3env).returncode == 2  # missing FILE
    assert ckptctl("store", "frobnicate", env=s3env).returncode == 2
    assert ckptctl("store", "ls", "--no-such-option", "s3://b", env=s3env).returncode == 2
    assert ckptctl("store", "ls", "--timeout", "soon", "s3://b", env=s3env).returncode == 2
    assert ckptctl("store", "--help").returncode == 0


def test_server_side_failures_are_named(bucket, s3env, tmp_path):
    missing = ckptctl("store", "ls", "s3://no-such-bucket-here", env=s3env)
    assert missing.returncode == 1 and "no-such-bucket-here' does not exist" in one_line_error(missing)
    wrong = ckptctl("store", "ls", f"s3://{bucket}", env={**s3env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert wrong.returncode == 1 and "SignatureDoesNotMatch" in one_line_error(wrong)
    nocreds = {k: v for k, v in s3env.items() if not k.startswith("AWS_SECRET")}
    nocreds["HOME"] = str(tmp_path)
    p = ckptctl("store", "ls", f"s3://{bucket}", env=nocreds)
    assert p.returncode == 1 and "no S3 credentials" in one_line_error(p)
    dest = tmp_path / "out"
    p = ckptctl("store", "get", f"s3://{bucket}/absent", dest, env=s3env)
    assert p.returncode == 1 and "no such object" in one_line_error(p)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary left behind


def test_unreachable_endpoint(s3env):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = ckptctl("store", "ls", "--retries", "2", "--endpoint", f"http://127.0.0.1:{port}",
                "--stats", "s3://bucket", env=s3env)
    assert p.returncode == 1
    msg = [l for l in p.stderr.decode().splitlines() if l.startswith("ckptctl:")]
    assert len(msg) == 1 and "connect" in msg[0].lower() and str(port) in msg[0]
    assert stats_of(p)["list"]["requests"] == 3  # retried: the network may come back


def test_tools_stay_inside_what_they_are_given(tmp_path, bucket, s3env, s3server):
    """rm never prunes directories above the object; probe writes only under its URL."""
    home = tmp_path / "home" / "user" / "emptydir" / "sub"
    home.mkdir(parents=True)
    (home / "f").write_bytes(b"x")
    assert ckptctl("store", "rm", f"file://{home}/f").returncode == 0
    assert home.is_dir() and list(home.iterdir()) == []  # the user's directories stay
    probe_dir = tmp_path / "store"
    probe_dir.mkdir()
    before = set(tmp_path.iterdir())
    assert ckptctl("store", "probe", f"file://{probe_dir}").returncode == 0
    assert set(tmp_path.iterdir()) == before and list(probe_dir.iterdir()) == []
    mark = s3server.mark()
    assert ckptctl("store", "probe", f"s3://{bucket}/team/a/", env=s3env).returncode == 0
    writes = [r.path for r in s3server.requests(since=mark) if r.method in ("PUT", "DELETE")]
    assert writes and all(p.startswith(f"/{bucket}/team/a/.ckptfs-probe-") for p in writes)


def test_prefix_with_trailing_slash(bucket, s3env):
    assert ckptctl("store", "put", f"s3://{bucket}/p/k", "-", env=s3env, input=b"1").returncode == 0
    p = ckptctl("store", "ls", f"s3://{bucket}/p/", env=s3env)
    assert p.returncode == 0 and p.stdout == b"k\t1\n"
