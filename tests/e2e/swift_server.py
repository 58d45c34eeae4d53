"""A throw-away single-node OpenStack Swift + s3api server for tests and benchmarks.

Swift verifies SigV4 signatures and payload hashes, so a signing bug in our C code fails
loudly instead of passing against a lenient mock.  Everything (configs, rings, objects,
logs) lives in a fresh temporary directory that stop() removes.  How this setup was worked
out: /work/shared/notes/s3-test-server.md.

As a library:

    with SwiftServer() as server:
        server.client().create_bucket(Bucket="some-bucket")

As a CLI for benchmark scripts: prints one JSON line (endpoint, credentials, region, pid),
then serves until SIGTERM or SIGINT:

    /usr/bin/python3 tests/e2e/swift_server.py [--dir PARENT_DIR]
"""

import argparse
import atexit
import collections
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import boto3
import botocore.config
import botocore.configprovider
import botocore.exceptions
import botocore.session

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3
BACKENDS = ("account", "container", "object")

ACCESS_LOG_NAME = "proxy-access"
# What requests() needs comes first; the rest is for a human reading the raw log.
ACCESS_LOG_TEMPLATE = ("{method} {path} {status_int} {source} {transaction_id} "
                       "{bytes_recvd} {bytes_sent} {request_time}")
SYNC_PATH = "/info?sync="

# How a port taken between our pick and the server's bind shows up in the logs
# (Swift's get_socket, memcached).
PORT_CLASH_MARKERS = ("Could not bind", "Address already in use")

Request = collections.namedtuple("Request", "method path status")


class StartError(RuntimeError):
    """The server did not come up; the message carries the tails of its logs."""


class _PortClash(Exception):
    """A server lost the race for its port; start() retries with fresh ports."""


def _free_ports(count):
    """Ports free right now.  Another process may still take one before our server binds
    it; start() copes with that by retrying."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:  # all held open together, so the ports are distinct
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines))
    except OSError as e:
        return f"<unreadable: {e}>\n"


def _isolated_botocore_session():
    """A botocore session that reads no AWS_* variable and no ~/.aws file.

    This machine exports AWS_CA_BUNDLE, and a stray AWS_PROFILE naming a missing profile
    would make client creation fail: neither may change how we talk to the test server."""
    variables = {}
    for name, (_, _, default, convert) in \
            botocore.configprovider.BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        if name in ("config_file", "credentials_file"):
            default = os.devnull  # not a regular file, so botocore reads nothing
        variables[name] = (None, None, default, convert)
    return botocore.session.Session(session_vars=variables)


def make_client(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, **config):
    """A boto3 S3 client for `endpoint`: path-style, SigV4, independent of the
    environment.  Keyword arguments go to botocore.config.Config."""
    config = botocore.config.Config(
        signature_version="s3v4", s3={"addressing_style": "path"},
        proxies={},  # never send 127.0.0.1 traffic through an HTTP_PROXY from the env
        **config)
    session = boto3.session.Session(botocore_session=_isolated_botocore_session())
    return session.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                          config=config)


class _SyslogListener:
    """Receives the servers' syslog datagrams on a UDP port of its own.

    Swift logs only through syslog, and its access logger cannot be pointed at a unix
    socket path (proxy_logging passes only the UDP settings on), so every server sends to
    this listener.  Each line is appended to a file; proxy access lines (tagged
    ACCESS_LOG_NAME, laid out by ACCESS_LOG_TEMPLATE) are also parsed into `entries`."""

    def __init__(self, path):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A burst of small requests must not overflow the default buffer and lose lines.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)  # lets the thread notice close()
        self.port = self._sock.getsockname()[1]
        self._entries = []          # client requests, oldest first
        self._sync_tokens = set()   # barrier requests seen, see SwiftServer._sync_log
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path,),
                                        name="swift-syslog", daemon=True)
        self._thread.start()

    def _run(self, path):
        with open(path, "a", buffering=1) as out:
            while not self._stop.is_set():
                try:
                    data = self._sock.recv(65536)
                except socket.timeout:
                    continue
                line = data.decode(errors="replace").rstrip("\n\0")
                if line.startswith("<"):  # the syslog priority, e.g. "<134>"
                    line = line.partition(">")[2]
                out.write(line + "\n")
                self._parse(line)

    def _parse(self, line):
        tag, _, message = line.partition(": ")
        if tag != ACCESS_LOG_NAME:
            return
        method, path, status, source = message.split(" ", 4)[:4]
        # The logger percent-quotes the path once more; undo that to get the wire form.
        path = urllib.parse.unquote(path)
        with self._cond:
            if path.startswith(SYNC_PATH):
                self._sync_tokens.add(path[len(SYNC_PATH):])
            elif source == "-":  # no source: sent by a client, not a middleware
                self._entries.append(Request(method, path, int(status)))
            self._cond.notify_all()

    def entries(self, since=0):
        with self._cond:
            return self._entries[since:]

    def wait_for_token(self, token, timeout):
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._sync_tokens, timeout):
                raise TimeoutError(f"no access log line for sync request {token}")
            self._sync_tokens.discard(token)

    def close(self):
        self._stop.set()
        self._thread.join()
        self._sock.close()


class SwiftServer:
    """Swift proxy (with s3api and tempauth), account, container and object servers and
    memcached, on free ports of 127.0.0.1.

    Once started: endpoint, access_key, secret_key, region, datadir, pids."""

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, parent_dir=None):
        self._parent_dir = parent_dir
        self.datadir = None
        self.endpoint = None
        self._procs = []  # (name, Popen); each the leader of a process group of its own
        self._syslog = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def pids(self):
        return [proc.pid for _, proc in self._procs]

    def start(self):
        if self.datadir:
            raise RuntimeError("SwiftServer already started")
        self.datadir = tempfile.mkdtemp(prefix="swift-s3-", dir=self._parent_dir)
        atexit.register(self.stop)  # for callers that never reach stop()
        try:
            for sub in ("etc", "srv/d1", "log"):
                os.makedirs(os.path.join(self.datadir, sub))
            shutil.copy("/etc/swift/swift.conf", os.path.join(self.datadir, "etc"))
            self._syslog = _SyslogListener(self._log_path("syslog"))
            self._start_with_retries()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_with_retries(self):
        for _ in range(START_ATTEMPTS):
            try:
                return self._start_once()
            except _PortClash:
                self._terminate()
        raise StartError(f"ports taken by others {START_ATTEMPTS} times\n"
                         + self._log_tails())

    def _start_once(self):
        memcached_port, proxy_port, *backend_ports = _free_ports(2 + len(BACKENDS))
        self.endpoint = f"http://127.0.0.1:{proxy_port}"
        self._spawn("memcached", ["memcached", "-l", "127.0.0.1", "-p", str(memcached_port),
                                  "-U", "0", "-u", "root"])  # refuses root without -u
        for name, port in zip(BACKENDS, backend_ports):
            self._build_ring(name, port)
            self._spawn_swift(name, self._backend_conf(name, port))
        self._spawn_swift("proxy", self._proxy_conf(proxy_port, memcached_port))
        self._wait_ready()

    # --- configuration -------------------------------------------------------------

    def _common_conf(self, name, port):
        # user = root: each server drops privileges to the "swift" user by default, who
        #   could not write to our root-owned temporary directory.
        # bind_timeout: fail fast on a port clash so start() can retry (default 30 s).
        return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
bind_timeout = 2
workers = 1
user = root
swift_dir = {self.datadir}/etc
log_name = {name}-server
log_udp_host = 127.0.0.1
log_udp_port = {self._syslog.port}
"""

    def _backend_conf(self, name, port):
        return self._common_conf(name, port) + f"""devices = {self.datadir}/srv
mount_check = false
disable_fallocate = true

[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

    def _proxy_conf(self, port, memcached_port):
        # The first proxy-logging logs requests as clients sent them (S3 paths); the
        # second one logs middleware subrequests, which carry a "source".
        return self._common_conf("proxy", port) + f"""
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = {REGION}
allow_multipart_uploads = true
min_segment_size = 5242880
max_upload_part_num = 10000
s3_acl = false
# Virtual-hosted addressing: BUCKET.localhost:PORT (curl resolves *.localhost to loopback).
storage_domain = localhost

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {SECRET_KEY} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:proxy-logging]
use = egg:swift#proxy_logging
access_log_name = {ACCESS_LOG_NAME}
log_msg_template = {ACCESS_LOG_TEMPLATE}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""

    def _build_ring(self, name, port):
        # Imported here: importing Swift costs about 0.5 s, and only this step needs it.
        from swift.common.ring import RingBuilder
        builder = RingBuilder(6, 1, 0)  # 64 partitions, 1 replica, no move delay
        builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                         "port": port, "device": "d1", "weight": 100})
        builder.rebalance()
        builder.get_ring().save(os.path.join(self.datadir, "etc", f"{name}.ring.gz"))

    # --- processes -----------------------------------------------------------------

    def _log_path(self, name):
        return os.path.join(self.datadir, "log", f"{name}.log")

    def _spawn_swift(self, name, conf_text):
        conf = os.path.join(self.datadir, "etc", f"{name}-server.conf")
        with open(conf, "w") as f:
            f.write(conf_text)
        self._spawn(name, [sys.executable, f"/usr/bin/swift-{name}-server", conf])

    def _spawn(self, name, argv):
        # A session of its own (setsid): stop() signals a server and the worker it forks
        # as one process group, and nothing else.  Output goes to a file: tracebacks from
        # before Swift's logging is set up only show up there.
        # EVENTLET_NO_GREENDNS: green DNS imports dnspython and httpx, about 0.5 s of CPU
        # per server, a second of start-up on 2 cores; the servers only see IP addresses.
        with open(self._log_path(name), "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.datadir,
                                    env=dict(os.environ, EVENTLET_NO_GREENDNS="yes"))
        self._procs.append((name, proc))

    def _wait_ready(self):
        """Poll until a signed request succeeds: it needs the proxy, s3api, tempauth,
        memcached and the account server, so the whole chain is up."""
        client = make_client(self.endpoint, connect_timeout=1, read_timeout=3,
                             retries={"total_max_attempts": 1})
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive()
            try:
                client.list_buckets()
                # Our log having the barrier line proves that our proxy answered, not a
                # program that took the port first while ours still retries its bind.
                self._sync_log(timeout=2.0)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                    http.client.HTTPException, OSError) as e:
                if time.monotonic() > deadline:
                    raise StartError(f"no signed request succeeded within {START_TIMEOUT} s,"
                                     f" last error: {e}\n{self._log_tails()}") from None
                time.sleep(0.1)

    def _check_alive(self):
        dead = [(name, proc) for name, proc in self._procs if proc.poll() is not None]
        if not dead:
            return
        tails = self._log_tails()
        if any(marker in tails for marker in PORT_CLASH_MARKERS):
            raise _PortClash()
        names = ", ".join(f"{name} (exit {proc.returncode})" for name, proc in dead)
        raise StartError(f"exited during start-up: {names}\n{tails}")

    def _log_tails(self):
        logdir = os.path.join(self.datadir, "log")
        return "".join(f"--- {name} ---\n{_tail(os.path.join(logdir, name))}"
                       for name in sorted(os.listdir(logdir)))

    def _terminate(self):
        """SIGTERM each process group we created; SIGKILL what outlives STOP_TIMEOUT."""
        procs, self._procs = self._procs, []
        for _, proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, proc in procs:
            if not _wait_group(proc, deadline):
                _signal_group(proc.pid, signal.SIGKILL)
                _wait_group(proc, time.monotonic() + STOP_TIMEOUT)

    def stop(self):
        """Stop every process start() created and remove the data directory.  Safe to
        call more than once, and after a failed start()."""
        self._terminate()
        if self._syslog:
            self._syslog.close()
            self._syslog = None
        if self.datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.datadir = None
        atexit.unregister(self.stop)

    # --- for tests and child processes ---------------------------------------------

    def client(self, **config):
        """A boto3 S3 client for this server; keyword arguments go to botocore's Config."""
        return make_client(self.endpoint, self.access_key, self.secret_key, **config)

    def env(self):
        """The environment variables a child process needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint}

    def mark(self):
        """A position in the request log, for requests(since=...)."""
        self._sync_log()
        return len(self._syslog.entries())

    def requests(self, since=0):
        """Request(method, path, status) for each client request the proxy answered since
        `since` (a mark()), oldest first.  Paths are as sent on the wire (percent-encoded,
        with the query string); middleware subrequests are left out."""
        self._sync_log()
        return self._syslog.entries(since)

    def _sync_log(self, timeout=5.0):
        """Wait until the access lines of all requests answered so far have arrived.

        The proxy logs a request just after writing the end of its response, and over
        UDP, so a line can trail the client's view.  All lines leave through the one
        socket of the access logger in the proxy's single worker process (workers = 1),
        in order, so once the line of a barrier request sent after them arrives, theirs
        have arrived too."""
        token = uuid.uuid4().hex
        netloc = urllib.parse.urlsplit(self.endpoint).netloc
        conn = http.client.HTTPConnection(netloc, timeout=timeout)
        try:
            conn.request("GET", SYNC_PATH + token)
            conn.getresponse().read()
        finally:
            conn.close()
        self._syslog.wait_for_token(token, timeout)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_group(proc, deadline):
    """Reap the group leader, then wait for the rest of its group (a Swift server's forked
    worker) to vanish.  True if all of it went away before `deadline`."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    while _group_alive(proc.pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to create the temporary data directory")
    args = parser.parse_args()

    stopping = threading.Event()
    # By default SIGTERM kills us without running stop(); turn both into a flag.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with SwiftServer(args.dir) as server:
        print(json.dumps({"endpoint": server.endpoint, "access_key": server.access_key,
                          "secret_key": server.secret_key, "region": server.region,
                          "pid": os.getpid(), "datadir": server.datadir}), flush=True)
        stopping.wait()


if __name__ == "__main__":
    main()
