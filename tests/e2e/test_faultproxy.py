"""Tests of the fault-injecting proxy itself, against a tiny echo upstream."""

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from faultproxy import FaultProxy


class _Echo(BaseHTTPRequestHandler):
    """Replies with a JSON description of the request it received."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real S3 server

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, send_body=True):
        info = {"method": self.command, "path": self.path,
                "host": self.headers["Host"],
                "expect": self.headers.get("Expect"),
                "body": self._body().decode()}
        data = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _reply

    def do_HEAD(self):
        self._reply(send_body=False)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    # Short poll interval so shutdown() in teardown is quick.
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    t.join()


@pytest.fixture
def proxy(upstream):
    with FaultProxy("127.0.0.1", upstream, hang_seconds=10) as p:
        yield p


def _conn(proxy, timeout=5):
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def _request(proxy, method="GET", target="/b/k", body=None, headers=None):
    conn = _conn(proxy)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_forward_preserves_method_target_host_and_body(proxy):
    # The raw query must not be re-encoded, or SigV4 signatures break.
    target = "/bucket/a%2Fb%20c?uploadId=x%2By&partNumber=2&acl"
    status, data = _request(proxy, "PUT", target, body=b"hello world")
    assert status == 200
    info = json.loads(data)
    assert info["method"] == "PUT"
    assert info["path"] == target
    assert info["host"] == "127.0.0.1:%d" % proxy.port  # client's Host kept
    assert info["body"] == "hello world"
    assert proxy.log == [("PUT", target, 200)]


def test_expect_continue_and_chunked_body(proxy):
    status, data = _request(proxy, "PUT", "/b/k", body=b"abc",
                            headers={"Expect": "100-continue"})
    assert status == 200
    assert json.loads(data)["body"] == "abc"
    assert json.loads(data)["expect"] == "100-continue"  # still forwarded

    conn = _conn(proxy)
    conn.request("PUT", "/b/c", body=iter([b"12", b"345"]), encode_chunked=True)
    assert json.loads(conn.getresponse().read())["body"] == "12345"
    conn.close()


def test_head_is_forwarded_without_body(proxy):
    conn = _conn(proxy)
    conn.request("HEAD", "/b/k")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    # Connection still usable: the proxy did not append a stray body.
    conn.request("GET", "/b/k")
    assert conn.getresponse().status == 200
    conn.close()


def test_planned_status_then_forwarded(proxy):
    proxy.plan([503])
    status, data = _request(proxy)
    assert status == 503
    assert b"<Code>ServiceUnavailable</Code>" in data
    assert _request(proxy)[0] == 200
    assert [o for _, _, o in proxy.log] == [503, 200]


def test_slowdown_and_internal_error_bodies(proxy):
    proxy.plan(["slowdown", 500, 429])
    status, data = _request(proxy)
    assert status == 503 and b"<Code>SlowDown</Code>" in data
    status, data = _request(proxy)
    assert status == 500 and b"<Code>InternalError</Code>" in data
    assert _request(proxy)[0] == 429
    assert [o for _, _, o in proxy.log] == ["slowdown", 500, 429]


def test_reset(proxy):
    proxy.plan(["reset"])
    # RemoteDisconnected is a subclass of ConnectionResetError.
    with pytest.raises(ConnectionResetError):
        _request(proxy, "PUT", body=b"x" * 1000)
    assert _request(proxy)[0] == 200
    assert [o for _, _, o in proxy.log] == ["reset", 200]


def test_hang_times_out_client(proxy):
    proxy.plan(["hang"])
    conn = _conn(proxy, timeout=1)
    conn.request("GET", "/b/k")
    with pytest.raises(TimeoutError):  # socket.timeout is TimeoutError
        conn.getresponse()
    conn.close()
    assert proxy.log == [("GET", "/b/k", "hang")]


def test_truncate(proxy):
    proxy.plan(["truncate"])
    conn = _conn(proxy)
    conn.request("GET", "/b/k")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    assert proxy.log == [("GET", "/b/k", "truncate")]


def test_keep_alive_two_requests_one_connection(proxy):
    proxy.plan([500])  # an injected error must not close the connection
    conn = _conn(proxy)
    conn.request("GET", "/b/1")
    r1 = conn.getresponse()
    assert r1.status == 500
    r1.read()
    sock = conn.sock
    conn.request("PUT", "/b/2", body=b"two")
    r2 = conn.getresponse()
    assert r2.status == 200 and json.loads(r2.read())["body"] == "two"
    assert conn.sock is sock  # http.client did not reconnect
    conn.close()
    assert proxy.log == [("GET", "/b/1", 500), ("PUT", "/b/2", 200)]


def test_match_predicate(proxy):
    proxy.plan([503, 503], match=lambda method, target: method == "PUT")
    assert _request(proxy, "GET")[0] == 200
    assert _request(proxy, "PUT", body=b"a")[0] == 503
    assert _request(proxy, "DELETE")[0] == 200
    assert _request(proxy, "PUT", body=b"a")[0] == 503
    assert _request(proxy, "PUT", body=b"a")[0] == 200
    assert proxy.pending() == []
    assert [(m, o) for m, _, o in proxy.log] == [
        ("GET", 200), ("PUT", 503), ("DELETE", 200), ("PUT", 503),
        ("PUT", 200)]


def test_unknown_fault_rejected(proxy):
    with pytest.raises(ValueError):
        proxy.plan(["explode"])


def _proxy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


def test_stop_closes_everything(upstream):
    p = FaultProxy("127.0.0.1", upstream, hang_seconds=60)
    # Only the hanging request takes the fault, whichever of the two the proxy reads first.
    p.plan(["hang"], match=lambda method, target: target == "/b/hang")
    hanging = _conn(p, timeout=30)
    hanging.request("GET", "/b/hang")
    idle = _conn(p)  # an idle keep-alive connection
    idle.request("GET", "/b/k")
    idle.getresponse().read()
    p.stop()  # must not wait for the 60 s hang
    assert _proxy_threads() == []
    # The hanging client is released (connection closed, not a timeout).
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        hanging.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1)
    hanging.close()
    idle.close()
