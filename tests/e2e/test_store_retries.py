"""Retries against real Swift behind a fault-injecting proxy: transient failures are retried
until the request succeeds; refusals are not retried and their error names the cause."""

from urllib.parse import urlparse

import pytest

from ckpt import ckptctl, stats_of
from faultproxy import FaultProxy


@pytest.fixture
def proxy(s3server):
    u = urlparse(s3server.endpoint)
    with FaultProxy(u.hostname, u.port, hang_seconds=10) as p:
        yield p


def via(proxy, *args):
    return ["--endpoint", proxy.url, "--stats", *args]


@pytest.fixture
def obj(bucket, s3env):
    url = f"s3://{bucket}/retry/object"
    assert ckptctl("store", "put", url, "-", env=s3env, input=b"x" * 100000).returncode == 0
    return url


@pytest.mark.parametrize("faults", [
    [503, 500, "slowdown"],
    [429, 502],
    ["reset", "reset"],
    ["truncate"],
])
def test_transient_failures_are_retried(proxy, obj, s3env, faults):
    proxy.plan(faults)
    p = ckptctl("store", "get", *via(proxy, obj, "-"), env=s3env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"x" * 100000  # no partial body from a failed attempt leaks in
    st = stats_of(p)["get"]
    assert (st["requests"], st["retries"], st["errors"]) == (len(faults) + 1, len(faults), 0)
    assert [outcome for _, _, outcome in proxy.log] == faults + [206]  # ranged GETs: bounded memory


def test_timeout_is_retried(proxy, obj, s3env):
    proxy.plan(["hang"])
    p = ckptctl("store", "get", "--timeout", "1", *via(proxy, obj, "-"), env=s3env)
    assert p.returncode == 0, p.stderr
    assert stats_of(p)["get"]["retries"] == 1


def test_put_retried_lands_once(proxy, bucket, s3env, s3server):
    proxy.plan(["reset", 500])
    p = ckptctl("store", "put", *via(proxy, f"s3://{bucket}/k", "-"), env=s3env, input=b"data")
    assert p.returncode == 0, p.stderr
    assert stats_of(p)["put"]["retries"] == 2
    assert s3server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"


@pytest.mark.parametrize("status, words", [(403, "403 AccessDenied"), (400, "400"), (404, "no such object")])
def test_client_errors_are_not_retried(proxy, obj, s3env, status, words):
    proxy.plan([status])
    p = ckptctl("store", "get", *via(proxy, obj, "-"), env=s3env)
    assert p.returncode == 1
    assert words in one_line_error_of(p)
    assert stats_of(p)["get"]["requests"] == 1
    assert len(proxy.log) == 1


def test_gives_up_after_retries(proxy, obj, s3env):
    proxy.plan([503] * 10)
    p = ckptctl("store", "get", "--retries", "2", *via(proxy, obj, "-"), env=s3env)
    assert p.returncode == 1
    assert "503" in one_line_error_of(p)
    st = stats_of(p)["get"]
    assert (st["requests"], st["retries"], st["errors"]) == (3, 2, 1)


def one_line_error_of(p):
    """The error line of a run that also printed --stats."""
    lines = [l for l in p.stderr.decode().splitlines() if not l.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("ckptctl: error: "), lines
    return lines[0]
