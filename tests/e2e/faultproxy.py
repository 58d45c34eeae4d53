"""Fault-injecting HTTP/1.1 reverse proxy for end-to-end retry tests.

The proxy sits between the S3 client and the real S3 server (Swift s3api,
which verifies SigV4 signatures).  To keep signatures valid the request is
forwarded as the exact bytes received: request line (method + raw target,
never re-encoded), every header line including Host, and the body.

Usage:
    with FaultProxy("127.0.0.1", 8080) as proxy:
        proxy.plan([503, None, "reset"])           # one entry per request
        proxy.plan(["hang"], match=lambda m, t: m == "PUT")
        ... point the client at proxy.url ...
        assert proxy.log[0] == ("GET", "/bucket/key", 503)

Standard library only: the e2e tests run with Debian's python, no PyPI.
"""

import http.client
import select
import socket
import struct
import threading
from http import HTTPStatus

FAULT_NAMES = ("reset", "hang", "truncate", "slowdown")

# S3 error code put in the XML body of an injected status.
_S3_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}

_MAX_LINE = 65536


class _ClientGone(Exception):
    """The client closed its connection (or stop() shut it down)."""


class _Request:
    def __init__(self, method, target, version, head, headers, body):
        self.method = method
        self.target = target
        self.version = version
        self.head = head          # raw request line + header lines + CRLF
        self.headers = headers    # [(lower-case name, value)] for our logic
        self.body = body          # raw body bytes (still chunked if chunked)

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def wants_close(self):
        conn = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


def _readline(rfile):
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        raise _ClientGone()
    if len(line) > _MAX_LINE:
        raise ValueError("header line too long")
    return line


def _read_exact(rfile, n):
    data = rfile.read(n)
    if len(data) != n:
        raise _ClientGone()
    return data


def _read_chunked(rfile):
    """Read a chunked body and return it still chunk-encoded (forwarded raw)."""
    raw = b""
    while True:
        line = _readline(rfile)
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        raw += _read_exact(rfile, size + 2)
    while True:  # trailers, up to the empty line
        line = _readline(rfile)
        raw += line
        if line in (b"\r\n", b"\n"):
            return raw


def _error_xml(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            "<Error><Code>%s</Code><Message>%s</Message>"
            "<RequestId>faultproxy</RequestId></Error>" % (code, message)
            ).encode()


class FaultProxy:
    def __init__(self, upstream_host, upstream_port, hang_seconds=60.0,
                 upstream_timeout=60.0):
        self.upstream = (upstream_host, upstream_port)
        self.hang_seconds = hang_seconds
        self.upstream_timeout = upstream_timeout
        self.log = []                  # [(method, target, outcome)]
        self._lock = threading.Lock()
        self._faults = []
        self._match = None
        self._stopping = threading.Event()
        self._socks = set()            # open client + upstream sockets
        self._threads = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()

    # ----- public API -------------------------------------------------

    def plan(self, faults, match=None):
        """Replace the fault plan.

        Each request (only those for which match(method, target) is true,
        when match is given; target is the raw path + query string) takes
        the next entry: None = forward, int = reply with that status,
        "slowdown" = 503 SlowDown, "reset", "hang" or "truncate".
        Once the list is used up every request is forwarded.
        """
        for f in faults:
            if not (f is None or isinstance(f, int) or f in FAULT_NAMES):
                raise ValueError("unknown fault %r" % (f,))
        with self._lock:
            self._faults = list(faults)
            self._match = match

    def pending(self):
        """Faults not yet consumed."""
        with self._lock:
            return list(self._faults)

    def stop(self):
        """Close the listener and every connection, then join all threads."""
        self._stopping.set()
        self._acceptor.join()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                # shutdown (not close) wakes threads blocked in recv/select.
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ----- internals --------------------------------------------------

    def _accept_loop(self):
        # Poll so stop() does not depend on close() waking a blocked accept().
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([self._listener], [], [], 0.05)
                if not ready:
                    continue
                sock, _ = self._listener.accept()
                sock.settimeout(None)
                t = threading.Thread(target=self._serve, args=(sock,),
                                     name="faultproxy-conn", daemon=True)
                with self._lock:
                    self._socks.add(sock)
                    self._threads.add(t)
                t.start()
        finally:
            self._listener.close()

    def _forget(self, sock):
        with self._lock:
            self._socks.discard(sock)

    def _record(self, req, outcome):
        with self._lock:
            self.log.append((req.method, req.target, outcome))

    def _next_fault(self, req):
        with self._lock:
            if not self._faults:
                return None
            if self._match and not self._match(req.method, req.target):
                return None
            return self._faults.pop(0)

    def _serve(self, sock):
        """One client connection: loop over keep-alive requests."""
        rfile = sock.makefile("rb")
        abort = False
        try:
            keep = True
            while keep and not self._stopping.is_set():
                req = self._read_request(sock, rfile)
                fault = self._next_fault(req)
                if fault == "reset":
                    self._record(req, "reset")
                    abort = True
                    return
                if fault == "hang":
                    self._record(req, "hang")
                    # Wakes early if the client closes or stop() shuts down.
                    select.select([sock], [], [], self.hang_seconds)
                    return
                if fault is None or fault == "truncate":
                    keep = self._forward(sock, req, truncate=bool(fault))
                else:
                    self._reply_error(sock, req, fault)
                keep = keep and not req.wants_close()
        except (_ClientGone, OSError, ValueError):
            pass
        finally:
            self._forget(sock)
            rfile.close()
            if abort:
                # SO_LINGER {on, 0}: close() sends RST instead of FIN, so
                # the client sees ECONNRESET.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
            sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _read_request(self, sock, rfile):
        line = _readline(rfile)
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
            line = _readline(rfile)
        head = line
        method, target, version = line.decode("latin-1").split()
        headers = []
        while True:
            line = _readline(rfile)
            head += line
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        req = _Request(method, target, version, head, headers, b"")
        # Answer 100-continue ourselves so the client sends the body; the
        # Expect header is still forwarded (it may be signed) and upstream's
        # own 100 response is skipped by http.client.
        if "100-continue" in (req.header("expect") or "").lower():
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in (req.header("transfer-encoding") or "").lower():
            req.body = _read_chunked(rfile)
        else:
            req.body = _read_exact(rfile, int(req.header("content-length") or 0))
        return req

    def _reply_error(self, sock, req, fault):
        if fault == "slowdown":
            status, code = 503, "SlowDown"
            msg = "Please reduce your request rate."
        else:
            status, code = fault, _S3_CODES.get(fault, "InternalError")
            msg = "Injected by faultproxy."
        self._record(req, fault)
        self._send(sock, req, status, [("Content-Type", "application/xml")],
                   _error_xml(code, msg))

    def _forward(self, sock, req, truncate):
        """Send the request upstream verbatim; relay the response.

        A fresh upstream connection per request avoids stale keep-alive
        handling; client-side keep-alive is what the tests care about.
        Returns False if the client connection must be closed.
        """
        try:
            up = socket.create_connection(self.upstream, self.upstream_timeout)
        except OSError:
            self._record(req, 502)
            self._send(sock, req, 502, [], _error_xml("BadGateway", "upstream"))
            return True
        with self._lock:
            self._socks.add(up)
            if self._stopping.is_set():  # stop() may have missed this socket
                up.shutdown(socket.SHUT_RDWR)
        try:
            up.sendall(req.head + req.body)
            resp = http.client.HTTPResponse(up, method=req.method)
            resp.begin()          # skips upstream's interim 100 Continue
            body = resp.read()    # de-chunks; re-sent with Content-Length
            headers = resp.getheaders()
        except (OSError, http.client.HTTPException):
            self._record(req, 502)
            self._send(sock, req, 502, [], _error_xml("BadGateway", "upstream"))
            return True
        finally:
            self._forget(up)
            up.close()
        if truncate:
            self._record(req, "truncate")
            self._send(sock, req, resp.status, headers, body, reason=resp.reason,
                       cut=len(body) // 2)
            return False
        self._record(req, resp.status)
        self._send(sock, req, resp.status, headers, body, reason=resp.reason)
        conn = [v.lower() for k, v in headers if k.lower() == "connection"]
        return not any("close" in v for v in conn)

    def _send(self, sock, req, status, headers, body, reason=None, cut=None):
        """Write a response; with cut, only the first `cut` body bytes."""
        if reason is None:
            reason = HTTPStatus(status).phrase
        no_body = req.method == "HEAD" or status in (204, 304)
        out = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
        for k, v in headers:
            # Upstream's framing is replaced by our own Content-Length,
            # except for bodiless responses whose headers describe the GET.
            if not no_body and k.lower() in ("content-length",
                                             "transfer-encoding"):
                continue
            out.append("%s: %s\r\n" % (k, v))
        framed = any(k.lower() in ("content-length", "transfer-encoding")
                     for k, _ in headers)
        if not no_body or (not framed and status not in (204, 304)):
            out.append("Content-Length: %d\r\n" % len(body))
        out.append("\r\n")
        data = "".join(out).encode("latin-1")
        if not no_body:
            data += body if cut is None else body[:cut]
        sock.sendall(data)
