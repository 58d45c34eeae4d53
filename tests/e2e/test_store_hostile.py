"""Answers a real S3 server would not send, from a broken or hostile one: ckptctl must fail
cleanly with a message, never crash, loop, hang, or return wrong data. Swift cannot be made
to misbehave, so a small scripted HTTP server plays the server here."""

import http.server
import threading
from urllib.parse import parse_qs, urlparse

import pytest

from ckpt import ckptctl, one_line_error


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        u = urlparse(self.path)
        self.server.seen.append((self.command, self.path))
        status, headers, payload = self.server.behaviour(self.command, u.path, parse_qs(
            u.query, keep_blank_values=True), self.headers, body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(payload, bytes):
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:  # a generator: stream without a length, then close
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for piece in payload:
                    self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile(s3env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {**s3env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    try:
        yield server, env
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def listing(keys, truncated=False, token=None):
    contents = "".join(f"<Contents><Key>{k}</Key><Size>1</Size></Contents>" for k in keys)
    more = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (f"<ListBucketResult><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            f"{contents}{more}</ListBucketResult>").encode()


def test_listing_keeps_only_wellformed_keys_under_the_prefix(hostile):
    server, env = hostile
    keys = ["pre/", "pre/../../etc/x", "pre/ok", "pre/sub//y", "zzz/outside"]
    server.behaviour = lambda *a: (200, {}, listing(keys))
    p = ckptctl("store", "ls", "s3://bucket/pre", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"ok\t1\n"


def test_listing_out_of_order_is_an_error(hostile):
    server, env = hostile
    server.behaviour = lambda *a: (200, {}, listing(["b", "a"]))
    p = ckptctl("store", "ls", "s3://bucket", env=env)
    assert p.returncode == 1 and "out of order" in one_line_error(p)


def test_listing_that_never_advances_stops(hostile):
    server, env = hostile
    pages = iter(range(1000))
    server.behaviour = lambda *a: (200, {}, listing([f"k{next(pages):04d}"], True, "same"))
    p = ckptctl("store", "ls", "s3://bucket", env=env, timeout=30)
    assert p.returncode == 1 and "do not advance" in one_line_error(p)
    assert len(server.seen) == 2


def test_endless_answer_is_cut_off(hostile):
    server, env = hostile
    server.behaviour = lambda *a: (200, {}, (b" " * 65536 for _ in range(400)))  # 26 MB
    p = ckptctl("store", "ls", "--retries", "0", "s3://bucket", env=env, timeout=60)
    assert p.returncode == 1 and "larger than the request allows" in one_line_error(p)


def test_range_other_than_asked_is_refused(hostile):
    server, env = hostile
    server.behaviour = lambda *a: (206, {"Content-Range": "bytes 5-9/10"}, b"56789")
    p = ckptctl("store", "get", "s3://bucket/k", "-", env=env)
    assert p.returncode == 1 and "range other than" in one_line_error(p)
    assert p.stdout == b""


def test_range_ignored_by_server_still_gives_the_right_bytes(hostile):
    server, env = hostile
    data = bytes(range(256)) * 40
    server.behaviour = lambda *a: (200, {}, data)  # answers every Range with the whole object
    p = ckptctl("store", "get", "s3://bucket/k", "-", env=env)
    assert p.returncode == 0 and p.stdout == data


def test_multipart_completion_failing_inside_a_200_is_a_failure(hostile, tmp_path):
    """S3 may answer 200 and then report an error in the body; whitespace first, even."""
    server, env = hostile

    def behaviour(method, path, query, headers, body):
        if method == "POST" and "uploads" in query:
            return 200, {}, b"<InitiateMultipartUploadResult><UploadId>u1</UploadId>" \
                            b"</InitiateMultipartUploadResult>"
        if method == "PUT" and "partNumber" in query:
            return 200, {"ETag": f'"e{query["partNumber"][0]}"'}, b""
        if method == "POST" and "uploadId" in query:
            return 200, {}, b"  \n<?xml version='1.0'?><Error><Code>InternalError</Code>" \
                            b"<Message>We encountered an internal error</Message></Error>"
        return 204, {}, b""  # the abort

    server.behaviour = behaviour
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (70 << 20))
    p = ckptctl("store", "put", "--retries", "1", "s3://bucket/k", big, env=env, timeout=120)
    assert p.returncode == 1 and "InternalError" in one_line_error(p)
    methods = [(m, path.split("?")[1].split("=")[0] if "?" in path else "") for m, path in server.seen]
    assert methods.count(("POST", "uploadId")) == 2  # the completion was retried
    assert methods[-1] == ("DELETE", "uploadId")     # and the upload aborted
