"""The S3 test server itself: it must be a strict S3 endpoint and clean up after itself."""

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys

import botocore.exceptions
import pytest

import swift_server
from swift_server import Request, SwiftServer


def _error_of(excinfo):
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_round_trip(s3server, bucket):
    client = s3server.client()
    body = os.urandom(1 << 20)
    put = client.put_object(Bucket=bucket, Key="dir/blob", Body=body)
    got = client.get_object(Bucket=bucket, Key="dir/blob")
    assert got["Body"].read() == body
    assert put["ETag"] == got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'


def test_wrong_secret_is_rejected(s3server, bucket):
    client = swift_server.make_client(s3server.endpoint, secret_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert _error_of(excinfo) == ("SignatureDoesNotMatch", 403)
    assert s3server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_body_not_matching_signed_hash_is_rejected(s3server, bucket):
    # botocore retries BadDigest (4 times, with back-off); one attempt says it all.
    client = s3server.client(retries={"total_max_attempts": 1})

    def drop_md5(request, **_):
        # botocore adds Content-MD5 to PutObject; without it, only the SHA-256 named in
        # x-amz-content-sha256 can catch the swapped body.
        del request.headers["Content-MD5"]

    def swap_body(request, **_):
        # After signing, so the signature and x-amz-content-sha256 describe the original
        # body; same length, so Content-Length still matches.
        request.body = io.BytesIO(b"y" * 1000)

    client.meta.events.register("before-sign.s3.PutObject", drop_md5)
    client.meta.events.register("before-send.s3.PutObject", swap_body)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    assert _error_of(excinfo) == ("BadDigest", 400)
    assert s3server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_request_log_shows_client_requests(s3server, bucket):
    client = s3server.client()
    mark = s3server.mark()
    client.put_object(Bucket=bucket, Key="a b/c", Body=b"data")
    client.get_object(Bucket=bucket, Key="a b/c")["Body"].read()
    assert s3server.requests(since=mark) == [
        Request("PUT", f"/{bucket}/a%20b/c", 200),
        Request("GET", f"/{bucket}/a%20b/c", 200),
    ]


def test_request_log_lets_a_test_assert_no_writes(s3server, bucket):
    client = s3server.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"data")
    mark = s3server.mark()
    client.head_object(Bucket=bucket, Key="k")
    client.list_objects_v2(Bucket=bucket)
    seen = s3server.requests(since=mark)
    assert [r.method for r in seen] == ["HEAD", "GET"]
    assert not [r for r in seen if r.method in ("PUT", "POST", "DELETE")]


def test_s3env_points_only_at_the_server(s3server, s3env):
    assert s3env["AWS_ENDPOINT_URL"] == s3server.endpoint
    assert s3env["AWS_ACCESS_KEY_ID"] == "test:tester"
    assert s3env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert s3env["AWS_REGION"] == "us-east-1"
    assert set(k for k in s3env if k.startswith("AWS_")) == set(s3server.env())


def _gone(pid):
    """True if no process is left in the process group `pid` leads."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_closed(endpoint):
    port = int(endpoint.rsplit(":", 1)[1])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_leaves_nothing_behind():
    server = SwiftServer().start()
    pids, endpoint, datadir = server.pids, server.endpoint, server.datadir
    assert len(pids) == 5 and not any(_gone(pid) for pid in pids)
    server.stop()
    assert all(_gone(pid) for pid in pids)
    assert _port_closed(endpoint)
    assert not os.path.exists(datadir)
    server.stop()  # a second stop is harmless


def test_cli_prints_endpoint_and_stops_on_sigterm(tmp_path):
    cli = subprocess.Popen([sys.executable, swift_server.__file__, "--dir", str(tmp_path)],
                           stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(cli.stdout.readline())
        assert info["pid"] == cli.pid
        assert (info["access_key"], info["secret_key"], info["region"]) == \
            ("test:tester", "testing", "us-east-1")
        client = swift_server.make_client(info["endpoint"])
        assert client.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert _port_closed(info["endpoint"])
    assert list(tmp_path.iterdir()) == []
