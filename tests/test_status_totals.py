"""`reflowes status` totals count a step shared by several runs once, as the run summary does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reads"


def reflowes(*args: str, cwd: Path, home: Path) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, REFLOWES_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "reflowes.cli.main", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_shared_step_counted_once(tmp_path: Path) -> None:
    batch = tmp_path / "reads"
    shutil.copytree(EXAMPLE, batch, ignore=shutil.ignore_patterns("*.reflowes"))
    home = tmp_path / "home"
    summary = reflowes("run", "samples.csv", "--json", cwd=batch, home=home)
    status = reflowes("status", "samples.csv", "--json", cwd=batch, home=home)
    per_run = sum(r["steps_run"] for r in status["runs"])
    assert summary["steps_run"] == status["totals"]["steps_run"] == status["totals"]["tasks"]
    assert per_run > status["totals"]["steps_run"], "the example shares a step between runs"
