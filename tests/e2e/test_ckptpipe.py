"""ckptpipe run: a SQL program over CSV and JSON-lines files, its views'
changes as JSON lines; the view rebuilt from those changes equals what SQLite computes with the
same SELECT over the same input. Growing files are followed; bad input is named, line and all."""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from ckpt import program

VIEW = ("SELECT user_id, COUNT(*) AS n, SUM(bytes) AS total, MIN(bytes) AS smallest, "
        "MAX(bytes) AS biggest, AVG(bytes) AS mean FROM clicks WHERE bytes > 0 GROUP BY user_id")


def program_text(fmt="csv", extra=""):
    return f"""-- the issue's program
CREATE TABLE clicks (user_id BIGINT, url VARCHAR, bytes BIGINT)
  WITH ('connector' = 'file', 'path' = 'in/clicks.{fmt}', 'format' = '{fmt}'{extra});
CREATE VIEW bytes_per_user
  WITH ('connector' = 'file', 'path' = 'out/bytes_per_user.jsonl')
  AS {VIEW};
"""


@pytest.fixture
def pipe(tmp_path):
    """A working directory with in/ and the program; returns a runner."""
    (tmp_path / "in").mkdir()

    def run(text, *args, timeout=60):
        (tmp_path / "prog.sql").write_text(text)
        return subprocess.run([program("ckptpipe"), "run", "prog.sql", "--storage", "state",
                               *args], cwd=tmp_path, capture_output=True, timeout=timeout)
    run.dir = tmp_path
    return run


def changes(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def rebuild(lines):
    """The view's rows from its changes, checking that every delete removes a row there."""
    rows, last = {}, 0
    for c in lines:
        assert c["step"] >= last
        last = c["step"]
        (kind, row), = ((k, v) for k, v in c.items() if k != "step")
        key = json.dumps(row, sort_keys=True)
        if kind == "delete":
            assert rows.get(key, 0) > 0, f"deleted but not there: {row}"
            rows[key] -= 1
        else:
            rows[key] = rows.get(key, 0) + 1
    return sorted((json.loads(k) for k, n in rows.items() for _ in range(n)),
                  key=lambda r: json.dumps(r, sort_keys=True))


def sqlite_view(records):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE clicks(user_id INTEGER, url TEXT, bytes INTEGER)")
    db.executemany("INSERT INTO clicks VALUES (?, ?, ?)", records)
    cur = db.execute(VIEW)
    names = [d[0] for d in cur.description]
    return sorted((dict(zip(names, r)) for r in cur.fetchall()),
                  key=lambda r: json.dumps(r, sort_keys=True))


def same(got, want):
    assert len(got) == len(want), (got, want)
    for g, w in zip(sorted(got, key=lambda r: r["user_id"]), sorted(want, key=lambda r: r["user_id"])):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == pytest.approx(w[k]), (k, g, w)


def random_records(n, seed):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        b = None if rnd.random() < 0.1 else rnd.randint(-5, 1000)
        out.append((rnd.randint(1, 50), rnd.choice(["/a", "/b,c", 'q"uote', ""]) or None, b))
    return out


def csv_line(r):
    def field(v):
        if v is None:
            return ""
        s = str(v)
        return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"') else s
    return ",".join(field(v) for v in r) + "\n"


def test_csv_view_equals_sqlite(pipe):
    records = random_records(5000, 7)
    (pipe.dir / "in/clicks.csv").write_text("".join(csv_line(r) for r in records))
    p = pipe(program_text(), "--exit-when-done")
    assert p.returncode == 0, p.stderr.decode()
    same(rebuild(changes(pipe.dir / "out/bytes_per_user.jsonl")), sqlite_view(records))


def test_an_output_that_cannot_be_written_fails_the_run(pipe):
    """Output is written by a thread while the next step reads: a write that fails (a full
    disk: /dev/full) still fails the run, naming the view, in every mode."""
    records = random_records(3000, 11)
    (pipe.dir / "in/clicks.csv").write_text("".join(csv_line(r) for r in records))
    (pipe.dir / "out").mkdir()
    os.symlink("/dev/full", pipe.dir / "out/bytes_per_user.jsonl")
    for ft in ("none", "checkpoint", "exactly_once"):
        shutil.rmtree(pipe.dir / "state", ignore_errors=True)
        p = pipe(program_text(), "--exit-when-done", "--max-batch", "500", "--ft", ft)
        err = p.stderr.decode()
        assert p.returncode != 0, (ft, err)
        assert "view bytes_per_user" in err and "No space left on device" in err, (ft, err)


def test_json_inserts_and_deletes_equal_sqlite(pipe):
    rnd = random.Random(11)
    live, lines = [], []
    for _ in range(3000):
        if live and rnd.random() < 0.35:  # deletes empty groups and remove extremes
            r = live.pop(rnd.randrange(len(live)))
            kind = "delete"
        else:
            r = random_records(1, rnd.random())[0]
            live.append(r)
            kind = "insert"
        lines.append(json.dumps({kind: dict(zip(("user_id", "url", "bytes"), r))}) + "\n")
    (pipe.dir / "in/clicks.json").write_text("".join(lines))
    p = pipe(program_text("json"), "--exit-when-done", "--max-batch", "97")
    assert p.returncode == 0, p.stderr.decode()
    out = changes(pipe.dir / "out/bytes_per_user.jsonl")
    assert any("delete" in c for c in out)
    same(rebuild(out), sqlite_view(live))


def test_follows_a_growing_file(pipe):
    (pipe.dir / "prog.sql").write_text(program_text())
    proc = subprocess.Popen([program("ckptpipe"), "run", "prog.sql", "--storage", "state"],
                            cwd=pipe.dir, stderr=subprocess.PIPE)
    out = pipe.dir / "out/bytes_per_user.jsonl"
    try:
        written = []
        with open(pipe.dir / "in/clicks.csv", "a") as f:
            for i, r in enumerate(random_records(300, 3)):
                f.write(csv_line(r)[:-1])  # a line without its newline waits ...
                f.flush()
                if i % 100 == 0:
                    time.sleep(0.1)
                f.write("\n")  # ... until it is whole
                written.append(r)
                if i % 100 == 99:
                    f.flush()
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        try:
                            same(rebuild(changes(out)), sqlite_view(written))
                            break
                        except (FileNotFoundError, AssertionError, json.JSONDecodeError):
                            pass
                        time.sleep(0.05)
                    same(rebuild(changes(out)), sqlite_view(written))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read().decode()
    assert max(c["step"] for c in changes(out)) >= 3


def test_bad_records_are_named_and_fail_or_skip(pipe):
    (pipe.dir / "in/clicks.csv").write_text('1,/a,10\n2,/b,many\n3,"/c,4\n4,/d,1,extra\n5,/e,7\n')
    p = pipe(program_text(), "--exit-when-done")
    assert p.returncode == 1
    assert b"in/clicks.csv:2: bytes: 'many' is not a BIGINT" in p.stderr
    os.unlink(pipe.dir / "out/bytes_per_user.jsonl")
    p = pipe(program_text(extra=", 'on_error' = 'skip'"), "--exit-when-done")
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    for what in ("clicks.csv:2: bytes", "clicks.csv:3: a quoted field is not closed",
                 "clicks.csv:4: more than the 3 fields"):
        assert what in err, err
    same(rebuild(changes(pipe.dir / "out/bytes_per_user.jsonl")),
         sqlite_view([(1, "/a", 10), (5, "/e", 7)]))


def test_a_line_over_16_mib_fails_or_is_skipped_without_being_held(pipe):
    """A line too long to hold is malformed like any other: it fails the pipeline, naming it;
    skipping errors, it goes as it comes, and the lines after it keep their numbers. A stop
    while its end has not come yet resumes at its start, never inside it."""
    src, out = pipe.dir / "in/clicks.csv", pipe.dir / "out/bytes_per_user.jsonl"
    head, tail = "7,/" + "x" * (9 << 20), "y" * (9 << 20) + ",1\n"
    # Its newline comes in the 1 MiB read that takes it past 16 MiB: too long all the same.
    just_over = "8,/" + "z" * ((16 << 20) + (512 << 10)) + ",5\n"
    src.write_text(just_over + "1,/a,10\n2,/b,20\n" + head + tail + "3,/c,30\n4,/d,many\n")
    p = pipe(program_text(), "--exit-when-done")
    assert p.returncode == 1
    assert b"in/clicks.csv:1: a line longer than 16777216 bytes" in p.stderr, p.stderr
    out.unlink()
    skip = program_text(extra=", 'on_error' = 'skip'")
    p = pipe(skip, "--exit-when-done", "--ft", "exactly_once")
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    for n in (1, 4):
        assert f"clicks.csv:{n}: a line longer than 16777216 bytes (skipped)" in err, err
    assert "clicks.csv:6: bytes: 'many' is not a BIGINT" in err, err
    want = sqlite_view([(1, "/a", 10), (2, "/b", 20), (3, "/c", 30)])
    same(rebuild(changes(out)), want)

    out.unlink()
    shutil.rmtree(pipe.dir / "state")
    src.write_text("1,/a,10\n2,/b,20\n" + head + tail[:len(tail) // 2])
    p = pipe(skip, "--exit-when-done", "--ft", "checkpoint")
    assert p.returncode == 0, p.stderr.decode()
    with open(src, "a") as f:
        f.write(tail[len(tail) // 2:] + "3,/c,30\n")
    p = pipe(skip, "--exit-when-done", "--ft", "checkpoint")
    assert p.returncode == 0, p.stderr.decode()
    assert "clicks.csv:3: a line longer than 16777216 bytes (skipped)" in p.stderr.decode()
    same(rebuild(changes(out)), want)


def test_program_errors_name_line_and_column(pipe):
    p = pipe("CREATE TABLE t (a BIGINT);\nCREATE VIEW v AS SELECT SUM(b) AS s FROM t;\n")
    assert p.returncode == 1
    assert b"prog.sql: line 2, column 29: t has no column b" in p.stderr
    p = pipe(program_text(), "--ft", "exactly_once", "--standby")
    assert p.returncode == 2 and b"--standby" in p.stderr and b"--http" in p.stderr


# ---- fault tolerance ----

def start(pipe, *args, text=None):
    """Starts the pipeline and returns once it runs (its first log line: resumed, or not)."""
    (pipe.dir / "prog.sql").write_text(text or program_text())
    proc = subprocess.Popen([program("ckptpipe"), "run", "prog.sql", "--storage", "state", *args],
                            cwd=pipe.dir, stderr=subprocess.PIPE,
                            env={**os.environ, "CKPTPIPE_VERBOSE": "1"})
    proc.first_line = proc.stderr.readline().decode()
    assert "resumed from" in proc.first_line or "from the beginning" in proc.first_line, \
        proc.first_line + proc.stderr.read().decode()
    return proc


def feed(pipe, records):
    with open(pipe.dir / "in/clicks.csv", "a") as f:
        f.write("".join(csv_line(r) for r in records))


def wait_consumed(pipe, proc, written, timeout=20):
    """Until the view's output shows every record written (the last change per group)."""
    wait_output(pipe.dir / "out/bytes_per_user.jsonl", proc, written, timeout)


def wait_status(port, ok, timeout=30):
    """The pipeline's GET /status once ok(it) holds."""
    deadline, st = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status, st = call(port, "GET", "/status")
            if status == 200 and ok(st):
                return st
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the status never came as wanted: {st}")


def wait_output(path, proc, written, timeout=20):
    deadline = time.monotonic() + timeout
    want = final_of(sqlite_view(written))
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if final_rows(path) == want:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError("the pipeline did not catch up")


def final_rows(path):
    """Each group's row as the last change for it says (repeats after a crash allowed)."""
    last = {}
    for c in changes(path):
        (kind, row), = ((k, v) for k, v in c.items() if k != "step")
        if kind == "insert":
            last[row["user_id"]] = row
        elif last.get(row["user_id"]) == row:
            del last[row["user_id"]]
    return final_of(last.values())


def final_of(rows):
    return {r["user_id"]: {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}
            for r in rows}


def test_checkpoint_mode_loses_and_repeats_nothing_across_stops(pipe):
    written = []
    for run in range(3):
        proc = start(pipe, "--ft", "checkpoint")
        recs = random_records(400, run)
        feed(pipe, recs)
        written += recs
        wait_consumed(pipe, proc, written)
        proc.send_signal(signal.SIGTERM)
        err = proc.first_line + proc.communicate(timeout=20)[1].decode()
        assert proc.returncode == 0, err
        assert "checkpoint" in err and "committed" in err
        if run:
            assert "resumed from checkpoint" in err
    # Exactly once across the stops: rebuilding with every delete checked works, and matches.
    same(rebuild(changes(pipe.dir / "out/bytes_per_user.jsonl")), sqlite_view(written))
    catalog = json.loads((pipe.dir / "state/catalog.json").read_text())
    assert len(catalog["checkpoints"]) == 2  # two kept, as Feldera keeps them
    assert len(os.listdir(pipe.dir / "state")) == 2 + 2  # catalog, batches/, two ckpt-*


def kill(proc, rnd):
    proc.kill()  # SIGKILL: no last checkpoint
    proc.wait()


def torture(pipe, args, batches, records=400, pause=1.5, stop=kill):
    """Rounds (CKPT_TORTURE_ROUNDS, 20) of: start with args and a --max-batch out of batches,
    feed up to `records` records, wait up to `pause` s, stop(proc, rnd); then a last run must
    consume everything, and stops cleanly. The seed is printed (CKPT_TORTURE_SEED replays
    it). Returns the records written."""
    seed = int(os.environ.get("CKPT_TORTURE_SEED", time.time()))
    print(f"seed {seed}")  # pytest shows it on failure
    rnd = random.Random(seed)
    written = []
    for round_ in range(int(os.environ.get("CKPT_TORTURE_ROUNDS", 20))):
        proc = start(pipe, *args, "--max-batch", str(rnd.choice(batches)))
        recs = random_records(rnd.randint(50, records), rnd.random())
        feed(pipe, recs)
        written += recs
        time.sleep(rnd.uniform(0, pause))
        stop(proc, rnd)
    proc = start(pipe, *args)
    try:
        wait_consumed(pipe, proc, written, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    return written


def kill_or_stop(proc, rnd):
    if rnd.random() < 0.5:
        return kill(proc, rnd)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.stderr.read().decode()


def test_checkpoint_mode_torture(pipe):
    """Stops at random moments, each a SIGTERM (a checkpoint, then exit) or a SIGKILL (back to
    the last checkpoint, inputs re-read from its positions): nothing is ever lost."""
    torture(pipe, ("--ft", "checkpoint"), (20, 300), records=300, pause=0.8, stop=kill_or_stop)


def test_at_least_once_survives_sigkill(pipe):
    torture(pipe, ("--ft", "at_least_once", "--checkpoint-interval", "1"), (50,))


def test_no_checkpoint_refused_when_asked_and_damage_is_an_error(pipe):
    feed(pipe, random_records(100, 5))
    (pipe.dir / "prog.sql").write_text(program_text())
    run = [program("ckptpipe"), "run", "prog.sql", "--storage", "state", "--exit-when-done"]
    p = subprocess.run(run + ["--ft", "checkpoint", "--fail-if-no-checkpoint"], cwd=pipe.dir,
                       capture_output=True)
    assert p.returncode == 1 and b"holds no checkpoint" in p.stderr
    p = subprocess.run(run + ["--ft", "checkpoint"], cwd=pipe.dir, capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    # Stray files of a checkpoint that never committed go at the next start.
    (pipe.dir / "state/ckpt-00000000000000ff").mkdir()
    (pipe.dir / "state/batches/v0-00000000000000ff.batch").write_bytes(b"x")
    (pipe.dir / "state/catalog.json.mut").write_text("{")
    p = subprocess.run(run + ["--ft", "checkpoint"], cwd=pipe.dir, capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    assert not (pipe.dir / "state/ckpt-00000000000000ff").exists()
    assert not (pipe.dir / "state/batches/v0-00000000000000ff.batch").exists()
    assert not (pipe.dir / "state/catalog.json.mut").exists()
    # A damaged batch: an error naming it, never a silent start from scratch.
    newest = json.loads((pipe.dir / "state/catalog.json").read_text())["checkpoints"][-1]
    manifest = json.loads((pipe.dir / f"state/ckpt-{newest}/MANIFEST.json").read_text())
    batch = pipe.dir / "state/batches" / manifest["views"]["bytes_per_user"][-1]
    batch.write_bytes(batch.read_bytes()[:-3])
    p = subprocess.run(run + ["--ft", "checkpoint"], cwd=pipe.dir, capture_output=True)
    assert p.returncode == 1 and batch.name.encode() in p.stderr, p.stderr
    # --start-from the older one still works.
    older = json.loads((pipe.dir / "state/catalog.json").read_text())["checkpoints"][0]
    p = subprocess.run(run + ["--ft", "checkpoint", "--start-from", older], cwd=pipe.dir,
                       capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    p = subprocess.run(run + ["--ft", "checkpoint", "--start-from", "0000000000000999"],
                       cwd=pipe.dir, capture_output=True)
    assert p.returncode == 1 and b"no checkpoint 0000000000000999" in p.stderr


def children_of(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_supervise_restarts_a_killed_pipeline(pipe):
    proc = start(pipe, "--ft", "at_least_once", "--checkpoint-interval", "1", "--supervise")
    written = random_records(300, 8)
    feed(pipe, written)
    wait_consumed(pipe, proc, written)
    for round_ in range(2):
        (child,) = children_of(proc.pid)
        os.kill(child, signal.SIGKILL)  # no operator: the supervisor starts it again
        more = random_records(200, 9 + round_)
        feed(pipe, more)
        written += more
        wait_consumed(pipe, proc, written, timeout=30)
        assert children_of(proc.pid) != [child]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=20)[1].decode()
    assert proc.returncode == 0, err
    assert err.count("died of signal 9") == 2
    p = subprocess.run([program("ckptpipe"), "run", "prog.sql", "--storage", "s", "--supervise"],
                       cwd=pipe.dir, capture_output=True)
    assert p.returncode == 2 and b"--supervise restarts from checkpoints" in p.stderr


# ---- the HTTP API ----

HTTP_PROGRAM = """CREATE TABLE orders (id BIGINT, amount DOUBLE) WITH ('connector' = 'http');
CREATE VIEW totals WITH ('connector' = 'file', 'path' = 'out/totals.jsonl')
  AS SELECT id, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY id;
"""


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if "json" in r.headers["Content-Type"] else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def start_http(pipe, port, ft="checkpoint"):
    (pipe.dir / "prog.sql").write_text(HTTP_PROGRAM)
    proc = subprocess.Popen([program("ckptpipe"), "run", "prog.sql", "--storage", "state",
                             "--ft", ft, "--http", f"127.0.0.1:{port}"],
                            cwd=pipe.dir, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if call(port, "GET", "/status")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode())


def view_when(port, want, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, rows = call(port, "GET", "/views/totals")
        assert status == 200
        got = sorted((r["id"], r["n"], r["total"]) for r in rows)
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{got} != {want}")


def test_http_api(pipe):
    port = free_port()
    proc = start_http(pipe, port)
    try:
        body = "".join(json.dumps({"insert": {"id": i % 3, "amount": i * 1.5}}) + "\n"
                       for i in range(10))
        assert call(port, "POST", "/ingress/orders", body) == (200, {"queued": 10})
        view_when(port, [(0, 4, 27.0), (1, 3, 18.0), (2, 3, 22.5)])
        bad = '{"insert": {"id": 1, "amount": 2}}\n{"insert": {"id": "x"}}\n'
        status, err = call(port, "POST", "/ingress/orders", bad)
        assert status == 400 and "line 2" in err["error"] and "id" in err["error"], err
        assert call(port, "POST", "/ingress/nope", "")[0] == 404
        assert call(port, "GET", "/views/nope")[0] == 404
        body = json.dumps({"delete": {"id": 2, "amount": 3.0}}) + "\n"
        assert call(port, "POST", "/ingress/orders", body)[0] == 200
        view_when(port, [(0, 4, 27.0), (1, 3, 18.0), (2, 2, 19.5)])
        status, st = call(port, "GET", "/status")
        assert status == 200 and st["state"] == "running" and st["records"] == 11
        status, text = call(port, "GET", "/metrics")
        assert "ckptpipe_records_total 11" in text and 'ckptpipe_view_groups{view="totals"} 3' in text
        status, made = call(port, "POST", "/checkpoint")
        assert status == 200 and len(made["checkpoint"]) == 16
        status, stopped = call(port, "POST", "/stop")
        assert status == 200 and stopped["stopped"] and stopped["checkpoint"] > made["checkpoint"]
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    newest = json.loads((pipe.dir / "state/catalog.json").read_text())["checkpoints"][-1]
    assert newest == stopped["checkpoint"]  # the stop's checkpoint is the last one
    proc = start_http(pipe, port)  # the state comes back from the checkpoint
    try:
        view_when(port, [(0, 4, 27.0), (1, 3, 18.0), (2, 2, 19.5)])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
