"""Steps shared by several runs (single flight): counted once in status, followed by replay --run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reads"


def reflowes(*args: str, cwd: Path, home: Path) -> str:
    """The CLI's stdout (it must exit 0)."""
    env = dict(os.environ, REFLOWES_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "reflowes.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True).stdout


def test_shared_step_counted_once(tmp_path: Path) -> None:
    batch = tmp_path / "reads"
    shutil.copytree(EXAMPLE, batch, ignore=shutil.ignore_patterns("*.reflowes"))
    home = tmp_path / "home"
    summary = json.loads(reflowes("run", "samples.csv", "--json", cwd=batch, home=home))
    status = json.loads(reflowes("status", "samples.csv", "--json", cwd=batch, home=home))
    per_run = sum(r["steps_run"] for r in status["runs"])
    assert summary["steps_run"] == status["totals"]["steps_run"] == status["totals"]["tasks"]
    assert per_run > status["totals"]["steps_run"], "the example shares a step between runs"


def test_replay_of_a_run_follows_the_step_it_joined(tmp_path: Path) -> None:
    """A run that needed a step already in flight for another run records that it joined it,
    so `replay --run` shows the step's execution and end for that run too."""
    batch = tmp_path / "reads"
    shutil.copytree(EXAMPLE, batch, ignore=shutil.ignore_patterns("*.reflowes"))
    home = tmp_path / "home"
    reflowes("run", "samples.csv", "--json", cwd=batch, home=home)
    lines = reflowes("replay", "samples.csv", "--run", "S5", "--json", cwd=batch, home=home)
    events = [json.loads(line) for line in lines.splitlines()]
    joined = [e for e in events if e["kind"] == "task.joined" and e["run_id"] == "S5"]
    assert len(joined) == 1 and joined[0]["ident"] == "ref_index"
    tid = joined[0]["task_id"]
    submitted_by = [e["run_id"] for e in events if e["kind"] == "task.submitted"
                    and e["task_id"] == tid]
    assert submitted_by == []  # another run submitted it: only the join links S5 to it
    assert any(e["kind"] == "task.finished" and e["task_id"] == tid and e["ok"] for e in events)
