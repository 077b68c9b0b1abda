"""`reflowes replay`, `status` and `ps` with click's CliRunner on real SQLite logs written through
the real scheduler core (so `--check` has something true to check)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from reflowes.cli.main import cli
from reflowes.engine import core
from reflowes.engine.core import DECISION_KINDS
from reflowes.engine.layout import BatchLayout
from reflowes.events import model as m
from reflowes.events.log import SqliteLog
from reflowes.events.model import FileRef, RunPhase
from reflowes.events.resources import GiB, Resources
from reflowes.projections.fold import fold, initial

T0 = 1_700_000_000.0
BIG = Resources(4, 8 * GiB, 100 * GiB)
ONE = Resources(1, 1 * GiB, 0)
OUT = {"out": FileRef("cd" * 32, 5)}


def build_batch(tmp: Path) -> Path:
    """A finished two-run batch: r1 plain, r2 with one OOM retry; returns the CSV path."""
    csv = tmp / "s.csv"
    csv.write_text("id,n\nr1,1\nr2,2\n")
    layout = BatchLayout.for_csv(csv)
    layout.state_dir.mkdir()
    state = core.initial()
    with SqliteLog.open(layout.log) as log:

        def feed(*facts: m.Event, at: float) -> list[m.Event]:
            nonlocal state
            group: list[m.Event] = []
            for fact in facts:
                state, made = core.step(state, fact, at)
                group += [fact, *made]
            log.append(group, at=at)
            return [e for e in group if e.decision]

        def run_exec(a: m.TaskAssigned, at: float, **exit: object) -> list[m.Event]:
            feed(m.ExecCreated(exec_id=a.exec_id, task_id=a.task_id, alloc_id=a.alloc_id,
                               executor="local", handle=str(4000 + int(at) % 100),
                               resources=a.resources), at=at)
            feed(m.ExecStarted(exec_id=a.exec_id, task_id=a.task_id), at=at + 1)
            return feed(m.ExecExited(exec_id=a.exec_id, task_id=a.task_id, **exit), at=at + 2)

        feed(m.BatchOpened(csv=str(csv), program="p.py", invocation=1),
             m.SchedulerConfigured(max_alloc=BIG), at=T0 + 1)
        for i, run in enumerate(("r1", "r2"), 1):
            feed(m.RunDeclared(run_id=run, program="p.py", params={"n": str(i)},
                               digest=f"d{i}", row=i),
                 m.RunPhaseChanged(run_id=run, phase=RunPhase.EVAL, tries=1), at=T0 + 2)
        feed(m.TaskSubmitted(task_id="t1", run_id="r1", key="k1", ident="count", resources=ONE),
             m.TaskSubmitted(task_id="t2", run_id="r2", key="k2", ident="sort", resources=ONE),
             at=T0 + 3)
        (req,) = feed(m.Tick(), at=T0 + 4)
        assert isinstance(req, m.AllocRequested)
        a1, a2 = feed(m.AllocGranted(alloc_id="a1", request_id=req.request_id,
                                     resources=req.resources), at=T0 + 5)
        assert isinstance(a1, m.TaskAssigned) and isinstance(a2, m.TaskAssigned)
        run_exec(a1, T0 + 10, exit_code=0, duration=60.0, result=OUT, peak_mem=GiB // 2)
        feed(m.RunFinished(run_id="r1", ok=True, result=OUT, steps_run=1), at=T0 + 13)
        requeued, again = run_exec(a2, T0 + 20, exit_code=137, oom=True, peak_mem=GiB,
                                   duration=30.0)
        assert isinstance(requeued, m.TaskRequeued) and isinstance(again, m.TaskAssigned)
        run_exec(again, T0 + 30, exit_code=0, duration=120.0, result=OUT)
        feed(m.RunFinished(run_id="r2", ok=True, result=OUT, steps_run=1), at=T0 + 33)
    return csv


@pytest.fixture(scope="module")
def batch_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_batch(tmp_path_factory.mktemp("batch"))


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def lines(*args: object) -> list[dict[str, object]]:
    res = invoke("replay", *args, "--json")
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.output.splitlines()]


def last_seq(csv: Path) -> int:
    with SqliteLog.open(BatchLayout.for_csv(csv).log, readonly=True) as log:
        return log.last_seq()


def test_replay_prints_every_event_in_order(batch_csv: Path) -> None:
    res = invoke("replay", batch_csv)
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert len(out) == last_seq(batch_csv)
    seqs = [int(line.split()[0]) for line in out]
    assert seqs == list(range(1, len(out) + 1))
    assert "batch.opened" in out[0] and "task.requeued" in res.output
    assert any("exit 137 OOM" in line for line in out)


def test_replay_json_lines_parse(batch_csv: Path) -> None:
    recs = lines(batch_csv)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert all({"seq", "at", "kind", "stream"} <= set(r) for r in recs)
    assert recs[0]["kind"] == "batch.opened" and recs[0]["stream"] == "batch"
    exited = [r for r in recs if r["kind"] == "exec.exited"]
    assert [r["exit_code"] for r in exited] == [0, 137, 0] and exited[1]["oom"] is True


def test_replay_run_filter_follows_tasks_and_execs(batch_csv: Path) -> None:
    recs = lines(batch_csv, "--run", "r2")
    assert recs and all(
        r.get("run_id") == "r2" or r.get("task_id") == "t2" for r in recs)
    kinds = [r["kind"] for r in recs]
    assert kinds.count("exec.exited") == 2 and "task.requeued" in kinds
    assert "run.finished" in kinds and kinds.count("run.declared") == 1


def test_replay_task_prefix_alloc_and_kind_filters(batch_csv: Path) -> None:
    recs = lines(batch_csv, "--task", "t")
    assert {r.get("task_id") for r in recs} == {"t1", "t2"}
    recs = lines(batch_csv, "--task", "t2", "--kind", "task.assigned")
    assert [r["attempt"] for r in recs] == [1, 2]
    recs = lines(batch_csv, "--alloc", "a1", "--kind", "exec.")
    assert len(recs) == 9 and all(str(r["kind"]).startswith("exec.") for r in recs)
    assert lines(batch_csv, "--alloc", "a") == []  # alloc ids are exact (a1 is not a10)
    recs = lines(batch_csv, "--kind", "run", "--kind", "alloc.granted")
    assert {r["kind"] for r in recs} == {"run.declared", "run.phase", "run.finished",
                                         "alloc.granted"}
    res = invoke("replay", batch_csv, "--kind", "nosuch")
    assert res.exit_code == 1 and "--kind 'nosuch' matches no event kind" in res.output


def test_replay_since_until_by_seq_and_time(batch_csv: Path) -> None:
    assert [r["seq"] for r in lines(batch_csv, "--since", 5, "--until", 8)] == [5, 6, 7, 8]
    iso = datetime.fromtimestamp(T0 + 30).isoformat()
    recs = lines(batch_csv, "--since", iso)
    assert recs and min(r["at"] for r in recs) == T0 + 30  # type: ignore[type-var]
    assert lines(batch_csv, "--since", "10m") == []  # the batch is years old
    res = invoke("replay", batch_csv, "--since", "yesterday-ish")
    assert res.exit_code == 2 and "relative time" in res.output


def test_replay_at_prints_projections_as_they_stood(batch_csv: Path) -> None:
    with SqliteLog.open(BatchLayout.for_csv(batch_csv).log, readonly=True) as log:
        recs = list(log.read())
    seq = next(r.seq for r in recs if r.kind == "task.assigned" and r.event.attempt == 2)
    res = invoke("replay", batch_csv, "--at", seq, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    want = json.loads(json.dumps(initial().apply_all(recs[:seq]).to_dict()))
    assert got == want and got["seq"] == seq
    assert got["batch"]["runs"]["r1"]["phase"] == "done"
    assert got["batch"]["runs"]["r2"]["phase"] == "eval"
    t2 = [a for a in got["stats"]["attempts"] if a["task_id"] == "t2"]
    assert [(a["attempt"], a["state"]) for a in t2] == [(1, "failed"), (2, "assigned")]
    text = invoke("replay", batch_csv, "--at", seq)
    assert text.exit_code == 0 and f"as of seq {seq}" in text.output and "a1" in text.output


def test_replay_check_ok_and_tampered(batch_csv: Path, tmp_path: Path) -> None:
    with SqliteLog.open(BatchLayout.for_csv(batch_csv).log, readonly=True) as log:
        n = sum(r.kind in DECISION_KINDS for r in log.read())
    res = invoke("replay", batch_csv, "--check")
    assert res.exit_code == 0 and res.output.strip() == f"ok: {n} decisions match"
    copy = build_batch(tmp_path)
    db = sqlite3.connect(BatchLayout.for_csv(copy).log)
    db.execute("DROP TRIGGER events_no_update")
    seq, body = db.execute("SELECT seq, body FROM events WHERE kind = 'task.requeued'").fetchone()
    data = json.loads(body)
    data["resources"]["mem"] += 1
    db.execute("UPDATE events SET body = ? WHERE seq = ?", (json.dumps(data), seq))
    db.commit()
    db.close()
    res = invoke("replay", copy, "--check")
    assert res.exit_code == 1 and "decision differs" in res.output
    assert f"decision seq {seq}" in res.output


def test_status_and_ps(batch_csv: Path) -> None:
    res = invoke("status", batch_csv, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    runs = {r["id"]: r for r in got["runs"]}
    assert runs["r1"]["phase"] == "done" and runs["r2"]["tries"] == 1
    results = BatchLayout.for_csv(batch_csv).state_dir / "results"
    assert runs["r2"]["results"] == {"out": str(results / "r2" / "out")}
    assert runs["r2"]["resource_minutes"] == pytest.approx(1 * 30 / 60 + 1 * 120 / 60)
    assert got["totals"]["phases"]["done"] == 2 and got["totals"]["tasks"] == 2
    assert got["totals"]["live_execs"] == 0 and got["totals"]["allocs"] == 1
    text = invoke("status", batch_csv)
    assert text.exit_code == 0 and "r2" in text.output and "2 runs (2 done)" in text.output
    assert json.loads(invoke("ps", batch_csv, "--json").output) == []
    every = json.loads(invoke("ps", batch_csv, "--json", "--all").output)
    assert [x["exec_id"] for x in every] == ["t1.1", "t2.1", "t2.2"]
    assert every[1]["oom"] is True and every[1]["age"] == 2.0
    assert "no live execs" in invoke("ps", batch_csv).output


def test_ps_lists_live_execs(tmp_path: Path) -> None:
    csv = build_batch(tmp_path)
    with SqliteLog.open(BatchLayout.for_csv(csv).log) as log:
        log.append([m.ExecCreated(exec_id="x9", task_id="t9", alloc_id="a1", executor="docker",
                                  handle="abc123", resources=ONE)], at=T0 + 40)
    got = json.loads(invoke("ps", csv, "--json").output)
    assert [(x["exec_id"], x["state"], x["handle"]) for x in got] == [("x9", "created", "abc123")]
    assert "abc123" in invoke("ps", csv).output


WRITER = """
import sys
from reflowes.events import model as m
from reflowes.events.log import SqliteLog
log = SqliteLog.open(sys.argv[1])
log.append([m.Tick()])
print("ready", flush=True)
sys.stdin.readline()
log.append([m.Tick()])
"""


def _stamp(csv: Path) -> tuple[int, int, int]:
    """The log file's size and mtime, and the size of its WAL (SQLite's -shm index aside)."""
    log = BatchLayout.for_csv(csv).log
    wal = log.with_name(log.name + "-wal")
    return log.stat().st_size, log.stat().st_mtime_ns, wal.stat().st_size if wal.exists() else 0


def test_readers_never_write_even_beside_a_live_writer(tmp_path: Path) -> None:
    csv = build_batch(tmp_path)
    log_path = BatchLayout.for_csv(csv).log
    before, seq = _stamp(csv), last_seq(csv)
    for args in (["replay"], ["replay", "--at", "5"], ["replay", "--check"], ["status"],
                 ["ps", "--all"]):
        assert invoke(args[0], csv, *args[1:]).exit_code == 0
    assert _stamp(csv) == before and last_seq(csv) == seq
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(log_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        res = invoke("replay", csv, "--kind", "clock.tick", "--json")
        assert res.exit_code == 0, res.output
        assert len(res.output.splitlines()) == 2  # the core's drain tick and the writer's
        assert invoke("status", csv).exit_code == 0
    finally:
        writer.communicate("go\n", timeout=30)
    assert writer.returncode == 0 and last_seq(csv) == seq + 2


# ----------------------------------------------------------------- bad input


def _error(*args: object) -> str:
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    out = res.output.strip()
    assert out.startswith("Error: ") and "\n" not in out and "Traceback" not in out
    return out


@pytest.mark.parametrize("command", ["replay", "status", "ps"])
def test_bad_input_is_one_clear_line(command: str, tmp_path: Path) -> None:
    assert "no reflowes batch" in _error(command, tmp_path / "missing.csv")
    state = tmp_path / "x.reflowes"
    state.mkdir()
    (state / "log.sqlite").write_text("id,n\nthis is a csv, not a log\n")
    assert "not an SQLite database" in _error(command, state)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    msg = _error(command, other)
    assert "not a reflowes event log" in msg and str(other) in msg


def _variant(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return build_batch(d)


def test_newer_schema_unknown_kind_and_corruption(tmp_path: Path) -> None:
    newer = _variant(tmp_path, "newer")
    db = sqlite3.connect(BatchLayout.for_csv(newer).log)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    msg = _error("status", newer)
    assert "schema v99" in msg and "upgrade reflowes" in msg and "log.sqlite" in msg

    future = _variant(tmp_path, "future")
    seq = last_seq(future) + 1
    db = sqlite3.connect(BatchLayout.for_csv(future).log)
    db.execute("INSERT INTO events VALUES (?, ?, 'galaxy.formed', 'x', 1, '{}')", (seq, T0))
    db.commit()
    db.close()
    msg = _error("status", future)
    assert "unknown event kind 'galaxy.formed'" in msg and f"seq {seq}" in msg
    res = invoke("replay", future)  # streams: events before it (per the log's chunks), the error
    assert res.exit_code == 1 and len(res.stdout.splitlines()) < seq
    msg = res.stderr.strip()
    assert "unknown event kind 'galaxy.formed'" in msg and f"seq {seq}" in msg

    bad = _variant(tmp_path, "bad")
    seq = last_seq(bad) + 1
    db = sqlite3.connect(BatchLayout.for_csv(bad).log)
    db.execute("INSERT INTO events VALUES (?, ?, 'exec.started', 'exec:x', 1, '{\"exec_id\": 7}')",
               (seq, T0))
    db.commit()
    db.close()
    for command in ("status", "replay"):
        res = invoke(command, bad)
        assert res.exit_code == 1 and "'exec.started' has a bad body" in res.stderr
        assert f"seq {seq}" in res.stderr and "log.sqlite" in res.stderr

    broken = _variant(tmp_path, "broken")
    log_path = BatchLayout.for_csv(broken).log
    with SqliteLog.open(log_path) as log:  # enough events to span many pages
        for i in range(40):
            log.append([m.Tick()] * 100, at=T0 + 100 + i)
    size = log_path.stat().st_size
    with open(log_path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(os.urandom(size // 4))
    msg = _error("replay", broken)
    assert "log.sqlite" in msg and "last good seq" in msg


def test_fold_reads_only_the_tail_after_a_snapshot(tmp_path: Path) -> None:
    csv = build_batch(tmp_path)
    from reflowes.projections.fold import snapshot

    with SqliteLog.open(BatchLayout.for_csv(csv).log) as log:
        full = fold(log, use_snapshot=False)
        half = fold(log, until=20)
        snapshot(log, half)
        assert fold(log) == full
        assert fold(log, until=10) == fold(log, until=10, use_snapshot=False)
    assert json.loads(invoke("replay", csv, "--at", 25, "--json").output)["seq"] == 25


SLEEPER = """
import reflowes as rf

def main(sample: str):
    return {"o": rf.exec("sleep 20; echo done > {out}", outputs={"out": rf.FILE},
                         name="nap")["out"]}
"""


@pytest.mark.slow
def test_ps_status_and_check_while_a_real_run_writes(tmp_path: Path) -> None:
    (tmp_path / "nap.py").write_text(SLEEPER)
    (tmp_path / "b.csv").write_text("sample\nz1\n")
    env = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home"))
    run = subprocess.Popen([sys.executable, "-m", "reflowes.cli.main", "run", "b.csv", "-p",
                            "nap.py", "--quiet"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv = tmp_path / "b.csv"
    try:
        live: list[dict[str, object]] = []
        deadline = time.monotonic() + 90
        while not live and time.monotonic() < deadline:
            time.sleep(0.2)
            if BatchLayout.for_csv(csv).log.exists():
                res = invoke("ps", csv, "--json")
                assert res.exit_code == 0, res.output
                live = [x for x in json.loads(res.output) if x["state"] == "running"]
        assert live, "no exec started within 90 s"
        (x,) = live
        assert x["executor"] == "local" and x["task_id"] and float(str(x["age"])) >= 0
        os.kill(int(str(x["handle"])), 0)  # the handle is the pid of a live process
        got = json.loads(invoke("status", csv, "--json").output)
        assert [(r["id"], r["phase"]) for r in got["runs"]] == [("z1", "eval")]
        assert got["totals"]["live_execs"] == 1
        check = invoke("replay", csv, "--check")
        assert check.exit_code == 0 and check.output.startswith("ok: "), check.output
        assert "nap" in invoke("replay", csv, "--kind", "task.submitted").output
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)


def test_follow_prints_events_as_they_are_appended(tmp_path: Path) -> None:
    import select

    csv = build_batch(tmp_path)
    seq = last_seq(csv)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reflowes.cli.main", "replay", str(csv), "--follow", "--json",
         "--kind", "alloc.died", "--since", str(seq + 1)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        got = []
        with SqliteLog.open(BatchLayout.for_csv(csv).log) as log:
            for i in range(3):
                log.append([m.Tick(), m.AllocDied(alloc_id=f"x{i}", reason="test")], at=T0 + 99)
                ready, _, _ = select.select([proc.stdout], [], [], 60)
                assert ready, "replay --follow printed nothing within 60 s"
                got.append(json.loads(proc.stdout.readline()))
        assert [(r["seq"], r["alloc_id"]) for r in got] == [
            (seq + 2, "x0"), (seq + 4, "x1"), (seq + 6, "x2")]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
