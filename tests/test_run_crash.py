"""Crash recovery with real processes: `reflowes run` SIGKILLed at random moments, then rerun."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from reflowes.events.log import SqliteLog
from reflowes.events.model import ExecCreated, ExecExited, TaskAssigned, TaskSubmitted

pytestmark = pytest.mark.slow

PROGRAM = textwrap.dedent('''
    import reflowes as rf

    def main(i: int):
        a = rf.exec("sleep 0.02; echo {i} > {out}", inputs={"i": i}, outputs={"out": rf.FILE},
                    name="first", mem="16MiB")
        b = rf.exec("sleep 0.02; cat {a} {a} > {out}; echo marker-{i} >> {out}",
                    inputs={"a": a["out"], "i": i}, outputs={"out": rf.FILE}, name="second",
                    mem="16MiB")
        return {"out": b["out"]}
''')
ROWS = 100  # x 2 steps = 200 steps


def write_batch(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "prog.py").write_text(PROGRAM)
    (d / "w.csv").write_text("id,i\n" + "".join(f"r{i},{i}\n" for i in range(ROWS)))


def start(d: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "reflowes.cli.main", "run", "w.csv", "-p", "prog.py", "-q"],
        cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def results(d: Path) -> dict[str, bytes]:
    root = d / "w.reflowes" / "results"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def step_processes(d: Path) -> list[psutil.Process]:
    """Processes still running with a cwd inside the batch's exec directories."""
    execs = str(d / "w.reflowes" / "execs")
    found = []
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info.get("cwd") or ""
        if cwd.startswith(execs):
            found.append(p)
    return found


def test_sigkill_ten_times_then_complete_identically(tmp_path: Path) -> None:
    rng = random.Random(1234)
    ref, crashed = tmp_path / "ref", tmp_path / "crash"
    write_batch(ref)
    write_batch(crashed)
    env_ref = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home-ref"))
    env = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home-crash"))

    t0 = time.monotonic()
    p = start(ref, env_ref)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode() if p.stderr else ""
    full = time.monotonic() - t0

    kills = 0
    while kills < 10:
        p = start(crashed, env)
        time.sleep(rng.uniform(0.2, max(0.5, full * 0.5)))
        if p.poll() is not None:  # finished before the kill: the batch is complete
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        time.sleep(0.1)
        assert step_processes(crashed) == [], "orphan step process left after SIGKILL"
    p = start(crashed, env)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode() if p.stderr else ""
    assert kills >= 3, "the batch finished too fast to be interrupted"

    assert results(crashed) == results(ref)
    assert len(results(ref)) == ROWS

    # No step whose outcome was recorded ran again: once an exec of a key exited 0,
    # no later exec was created for that key.
    with SqliteLog.open(crashed / "w.reflowes" / "log.sqlite", readonly=True) as log:
        key_of: dict[str, str] = {}
        exec_key: dict[str, str] = {}
        done_keys: set[str] = set()
        reruns = []
        for rec in log.read():
            ev = rec.event
            if isinstance(ev, TaskSubmitted):
                key_of[ev.task_id] = ev.key
            elif isinstance(ev, TaskAssigned):
                exec_key[ev.exec_id] = key_of[ev.task_id]
            elif isinstance(ev, ExecCreated):
                if exec_key[ev.exec_id] in done_keys:
                    reruns.append(ev.exec_id)
            elif isinstance(ev, ExecExited) and ev.exit_code == 0 and ev.error is None:
                done_keys.add(exec_key[ev.exec_id])
    assert reruns == []
    assert len(done_keys) == 2 * ROWS
    assert step_processes(crashed) == []
