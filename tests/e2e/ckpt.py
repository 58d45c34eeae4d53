"""Running the project's programs from tests: where they are built, and one call to run them."""

import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CKPT_BUILD_DIR", os.path.join(REPO, "build"))


def program(name):
    """Path of a built program (ckptctl, store_conformance, ...); fails clearly if not built."""
    for sub in ("tools", "tests", "fs", "engine", os.path.join("tools", "bench")):
        path = os.path.join(BUILD, sub, name)
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"{name} is not built under {BUILD}: run the README's test command")


def run(name, *args, env=None, input=None, timeout=120):
    """Runs a program to completion; returns the CompletedProcess (text on stderr, bytes on stdout)."""
    return subprocess.run([program(name), *map(str, args)], env=env, input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def ckptctl(*args, **kw):
    return run("ckptctl", *args, **kw)


def stats_of(proc):
    """The JSON counters `--stats` printed as the last line of stderr."""
    for line in reversed(proc.stderr.decode().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no --stats line in: {proc.stderr.decode()!r}")


def one_line_error(proc):
    """The failure message, asserting it is exactly one line that starts with the program name."""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ckptctl: error: "), lines
    return lines[0]
