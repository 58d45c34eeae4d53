"""ckptpipe --ft exactly_once: a journal entry per step, durable before the step's output; after
a SIGKILL the restart replays the journal, checks each step (counts and hashes) and writes only
the output that is missing. Each output change appears once: the output of a run killed at the
worst instants equals, byte for byte, the output of a run never killed."""

import json
import os
import signal
import subprocess
import time

import pytest

from ckpt import program
from test_ckptpipe import (call, changes, csv_line, feed, free_port, program_text,
                           random_records, rebuild, same, sqlite_view, start, start_http,
                           torture, wait_consumed, wait_output, wait_status)

OUT = "out/bytes_per_user.jsonl"


@pytest.fixture
def pipe(tmp_path):
    (tmp_path / "in").mkdir()

    def run(*args, env=None, timeout=60, extra=""):
        (tmp_path / "prog.sql").write_text(program_text(extra=extra))
        return subprocess.run([program("ckptpipe"), "run", "prog.sql", "--storage", "state",
                               "--ft", "exactly_once", *args], cwd=tmp_path,
                              capture_output=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    run.dir = tmp_path
    return run


def check_each_step_once(lines):
    """Steps in order, each a run of its own, with at most one delete and one insert per group:
    a repeated step would repeat a group's delete (and rebuild() would refuse it too)."""
    seen, last = set(), 0
    for c in lines:
        assert c["step"] >= last, f"step {c['step']} after step {last}"
        last = c["step"]
        (kind, row), = ((k, v) for k, v in c.items() if k != "step")
        key = (c["step"], kind, row["user_id"])
        assert key not in seen, f"repeated: {key}"
        seen.add(key)


def reference_output(tmp_path, records, batch, text=None, extra=""):
    """What a run that is never killed writes for the same input and batch size."""
    ref = tmp_path / "reference"
    (ref / "in").mkdir(parents=True)
    (ref / "in/clicks.csv").write_text(text or "".join(csv_line(r) for r in records))
    (ref / "prog.sql").write_text(program_text(extra=extra))
    p = subprocess.run([program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--ft",
                        "exactly_once", "--exit-when-done", "--max-batch", str(batch)],
                       cwd=ref, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return (ref / OUT).read_bytes()


def test_crash_between_journal_and_output_and_a_torn_output(pipe, tmp_path):
    records = random_records(1000, 21)
    (pipe.dir / "in/clicks.csv").write_text("".join(csv_line(r) for r in records))
    want = reference_output(tmp_path, records, 50)
    # Killed right after step 4's entry is durable: none of step 4's output is written.
    p = pipe("--exit-when-done", "--max-batch", "50", env={"CKPTPIPE_CRASH_AT": "journal:4"})
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    out = changes(pipe.dir / OUT)
    assert out and max(c["step"] for c in out) == 3
    # Killed after step 9's output, which is then cut in the middle of a line: a torn write.
    p = pipe("--exit-when-done", "--max-batch", "50", env={"CKPTPIPE_CRASH_AT": "output:9"})
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    data = (pipe.dir / OUT).read_bytes()
    step9 = data.index(b'{"step": 9,')
    (pipe.dir / OUT).write_bytes(data[:step9 + (len(data) - step9) // 2 + 3])
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 0, p.stderr.decode()
    assert (pipe.dir / OUT).read_bytes() == want
    check_each_step_once(changes(pipe.dir / OUT))
    same(rebuild(changes(pipe.dir / OUT)), sqlite_view(records))


def test_sigkill_torture(pipe):
    args = ("--ft", "exactly_once", "--checkpoint-interval", "1")
    written = torture(pipe, args, (7, 50, 400))
    out = changes(pipe.dir / OUT)
    check_each_step_once(out)
    same(rebuild(out), sqlite_view(written))
    # The journal keeps only what the kept checkpoints need: no segment whose steps are all at
    # or before the oldest kept checkpoint's.
    oldest = json.loads((pipe.dir / "state/catalog.json").read_text())["checkpoints"][0]
    step = json.loads((pipe.dir / f"state/ckpt-{oldest}/MANIFEST.json").read_text())["step"]
    firsts = sorted(int(n[:16], 16) for n in os.listdir(pipe.dir / "state/journal"))
    assert firsts and all(later > step + 1 for later in firsts[1:]), (step, firsts)


def test_changed_input_and_foreign_output_are_refused(pipe):
    records = random_records(600, 5)
    (pipe.dir / "in/clicks.csv").write_text("".join(csv_line(r) for r in records))
    p = pipe("--exit-when-done", "--max-batch", "50", env={"CKPTPIPE_CRASH_AT": "journal:3"})
    assert p.returncode == -signal.SIGKILL
    # Step 3 read lines 101..150; a change there makes its replay differ from the journal.
    lines = (pipe.dir / "in/clicks.csv").read_text().splitlines(keepends=True)
    lines[120] = "1,/changed,1\n"
    (pipe.dir / "in/clicks.csv").write_text("".join(lines))
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 1
    assert b"replaying step 3: table clicks" in p.stderr and b"changed" in p.stderr, p.stderr
    # Back as it was, it replays; then bytes nobody journaled are refused.
    lines[120] = csv_line(records[120])
    (pipe.dir / "in/clicks.csv").write_text("".join(lines))
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 0, p.stderr.decode()
    with open(pipe.dir / OUT, "a") as f:
        f.write('{"step": 1, "insert": {"user_id": 999}}\n')
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 1 and b"written by something else" in p.stderr, p.stderr


def entry_offsets(data):
    """Where each entry of a journal segment starts (format in engine/journal.c)."""
    at, out = 8, []
    while at + 12 <= len(data):
        out.append(at)
        at += 12 + int.from_bytes(data[at:at + 4], "little")
    return out


def test_a_damaged_journal_entry_is_an_error_a_torn_last_one_is_not(pipe, tmp_path):
    records = random_records(400, 6)
    feed(pipe, records)
    want = reference_output(tmp_path, records, 50)
    p = pipe("--exit-when-done", "--max-batch", "50", env={"CKPTPIPE_CRASH_AT": "journal:4"})
    assert p.returncode == -signal.SIGKILL
    (seg,) = (pipe.dir / "state/journal").iterdir()
    data = whole = seg.read_bytes()
    assert len(entry_offsets(data)) == 4
    seg.write_bytes(data + data[8:40])  # the start of an entry, cut short: a torn last one
    p = pipe("--exit-when-done", "--max-batch", "50", env={"CKPTPIPE_CRASH_AT": "journal:6"})
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    data = seg.read_bytes()
    assert data == whole  # the torn entry was cut off
    segs = sorted((pipe.dir / "state/journal").iterdir())
    assert len(segs) == 2 and len(entry_offsets(segs[1].read_bytes())) == 2  # steps 5 and 6
    second = entry_offsets(data)[1]
    seg.write_bytes(data[:second + 20] + bytes([data[second + 20] ^ 1]) + data[second + 21:])
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 1, p.stderr.decode()
    assert f"{seg.name} is damaged at byte {second}".encode() in p.stderr, p.stderr
    seg.write_bytes(data)
    p = pipe("--exit-when-done", "--max-batch", "50")
    assert p.returncode == 0, p.stderr.decode()
    assert (pipe.dir / OUT).read_bytes() == want


def test_http_input_is_journaled(pipe):
    port = free_port()

    def launch():
        return start_http(pipe, port, "exactly_once")

    sent = []
    proc = launch()
    try:
        for i in range(30):
            rows = [{"id": (i * 7 + k) % 5, "amount": float(i + k)} for k in range(3)]
            body = "".join(json.dumps({"insert": r}) + "\n" for r in rows)
            status, reply = call(port, "POST", "/ingress/orders", body)
            assert status == 200 and reply["queued"] == 3 and reply["step"] >= 1, reply
            sent += rows
    finally:
        proc.kill()  # SIGKILL: nothing of this run was checkpointed
        proc.wait()
    proc = launch()
    try:
        status, st = call(port, "GET", "/status")
        assert st["replayed"] >= 1 and st["records"] == len(sent), st
        status, rows = call(port, "GET", "/views/totals")
        want = {}
        for r in sent:
            n, t = want.get(r["id"], (0, 0.0))
            want[r["id"]] = (n + 1, t + r["amount"])
        assert sorted((r["id"], r["n"], r["total"]) for r in rows) == \
            sorted((k, n, t) for k, (n, t) in want.items())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    lines = changes(pipe.dir / "out/totals.jsonl")
    steps = [c["step"] for c in lines]
    assert steps == sorted(steps)
    final = {}
    for c in lines:
        (kind, row), = ((k, v) for k, v in c.items() if k != "step")
        if kind == "insert":
            final[row["id"]] = (row["n"], row["total"])
        else:
            assert final.pop(row["id"]) == (row["n"], row["total"])  # each change once
    assert final == want


def test_lines_that_take_no_change_are_in_the_next_steps_span(pipe):
    """A blank line or a skipped record at the end of the input moves it on without a step of
    its own: the next step's journal entry starts where the last one ended, and replays."""
    skip = ", 'on_error' = 'skip'"
    proc = start(pipe, "--ft", "exactly_once", text=program_text(extra=skip))
    written = []
    try:
        for i, tail in enumerate(("\n", "1,/bad,notanumber\n", "\r\n")):
            recs = random_records(100, 60 + i)
            feed(pipe, recs)
            written += recs
            wait_consumed(pipe, proc, written)
            with open(pipe.dir / "in/clicks.csv", "a") as f:
                f.write(tail)  # polled alone: taken, but no change, so no step
            time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    p = pipe("--exit-when-done", extra=skip)
    assert p.returncode == 0, p.stderr.decode()
    out = changes(pipe.dir / OUT)
    check_each_step_once(out)
    same(rebuild(out), sqlite_view(written))


CSV_HTTP_PROGRAM = """CREATE TABLE notes (id BIGINT, text VARCHAR)
  WITH ('connector' = 'http', 'format' = 'csv');
CREATE VIEW last WITH ('connector' = 'file', 'path' = 'out/last.jsonl')
  AS SELECT id, COUNT(*) AS n, MAX(text) AS text FROM notes GROUP BY id;
"""


def test_http_csv_with_quotes_replays(pipe):
    """The journal keeps what was posted, byte for byte: a quoted field is unescaped in a copy."""
    port = free_port()
    (pipe.dir / "prog.sql").write_text(CSV_HTTP_PROGRAM)
    run = [program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--ft", "exactly_once",
           "--http", f"127.0.0.1:{port}"]

    def launch():
        proc = subprocess.Popen(run, cwd=pipe.dir, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                call(port, "GET", "/status")
                return proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise AssertionError(proc.stderr.read().decode())

    proc = launch()
    try:
        status, reply = call(port, "POST", "/ingress/notes", '1,"say ""hi"", then, go"\n2,plain\n')
        assert status == 200 and reply["queued"] == 2, reply
    finally:
        proc.kill()
        proc.wait()
    proc = launch()
    try:
        status, rows = call(port, "GET", "/views/last")
        assert sorted((r["id"], r["text"]) for r in rows) == \
            [(1, 'say "hi", then, go'), (2, "plain")], rows
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_supervised_standby_comes_back_active(pipe):
    """--standby --supervise on a local directory: a checkpoint written by a pipeline that then
    stopped is loaded; after POST /activate and a crash, the worker started again is active."""
    feed(pipe, random_records(300, 24))
    p = pipe("--exit-when-done")
    assert p.returncode == 0, p.stderr.decode()
    port = free_port()
    proc = subprocess.Popen([program("ckptpipe"), "run", "prog.sql", "--storage", "state",
                             "--ft", "exactly_once", "--standby", "--supervise", "--http",
                             f"127.0.0.1:{port}"], cwd=pipe.dir, stderr=subprocess.PIPE)
    written = random_records(300, 24)
    try:
        st = wait_status(port, lambda s: s["state"] == "standby" and s["resumed_from"])
        more = random_records(200, 25)
        feed(pipe, more)
        written += more
        time.sleep(0.5)
        assert call(port, "GET", "/status")[1]["step"] == st["step"]  # nothing processed
        status, st = call(port, "POST", "/activate")
        assert status == 200 and st["state"] == "running", st
        wait_output(pipe.dir / OUT, proc, written)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            (child,) = [int(c) for c in f.read().split()]
        os.kill(child, signal.SIGKILL)
        more = random_records(100, 26)
        feed(pipe, more)
        written += more
        wait_output(pipe.dir / OUT, proc, written)  # no POST /activate again
        assert wait_status(port, lambda s: True)["state"] == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    out = changes(pipe.dir / OUT)
    check_each_step_once(out)
    same(rebuild(out), sqlite_view(written))
