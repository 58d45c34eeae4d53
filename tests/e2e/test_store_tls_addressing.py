"""How requests reach the server: virtual-hosted addressing against Swift, and HTTPS with
certificate checks against a local TLS server."""

import http.server
import ssl
import subprocess
import threading
from urllib.parse import urlparse

import pytest

from ckpt import ckptctl, one_line_error, run


def test_virtual_hosted_addressing(bucket, s3env, s3server):
    """BUCKET.localhost:PORT, with Swift's storage_domain = localhost."""
    port = urlparse(s3server.endpoint).port
    virtual = ["--endpoint", f"http://localhost:{port}", "--addressing", "virtual"]
    p = run("store_conformance", *virtual, f"s3://{bucket}", "--if-absent", "no", env=s3env,
            timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    mark = s3server.mark()
    assert ckptctl("store", "put", *virtual, f"s3://{bucket}/vh-key", "-", env=s3env,
                   input=b"v").returncode == 0
    # The bucket travelled in the host name, so the path is the key alone.
    assert [(r.method, r.path) for r in s3server.requests(since=mark)] == [("PUT", "/vh-key")]


class _EmptyBucket(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields (url, cert path)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyBucket)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_certificates_are_checked(tls_server, s3env):
    url, cert = tls_server
    refused = ckptctl("store", "ls", "--endpoint", url, "--stats", "s3://bucket", env=s3env)
    assert refused.returncode == 1
    lines = [l for l in refused.stderr.decode().splitlines() if l.startswith("ckptctl:")]
    assert len(lines) == 1 and "certificate" in lines[0].lower(), lines
    trusted = ckptctl("store", "ls", "--endpoint", url, "s3://bucket",
                      env={**s3env, "AWS_CA_BUNDLE": str(cert)})
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout == b""


def test_ca_bundle_is_ignored_for_http(bucket, s3env, tmp_path):
    """This machine exports AWS_CA_BUNDLE; a plain-http endpoint must not trip over it."""
    env = {**s3env, "AWS_CA_BUNDLE": str(tmp_path / "does-not-exist.pem")}
    p = ckptctl("store", "ls", f"s3://{bucket}", env=env)
    assert p.returncode == 0, one_line_error(p)
