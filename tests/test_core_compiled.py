"""The mypyc-compiled core decides exactly what the pure-Python one does, and REFLOWES_PURE=1
(or a core whose sources changed since its build) runs the pure one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reflowes.engine import COMPILED

ROOT = Path(__file__).resolve().parents[1]

# A simulated batch (seeded world: OOMs, exit 75, failures, alloc deaths, idle expiry), stepped
# through the core; prints which core ran and a digest of every decision and the final view.
_RUN = """
import hashlib
from benchmarks.bench_core import simulate
from reflowes import engine
from reflowes.engine import core
fed, _ = simulate(3000, seed=7)
state, h = core.initial(), hashlib.sha256()
for ev, at in fed:
    state, made = core.step(state, ev, at)
    h.update(repr(made).encode())
h.update(repr(core.view(state)).encode())
print(engine.COMPILED, h.hexdigest())
"""


def _run(pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "REFLOWES_PURE"}
    if pure:
        env["REFLOWES_PURE"] = "1"
    out = subprocess.run([sys.executable, "-c", _RUN], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    return out.stdout.split()


def test_pure_core_runs_under_reflowes_pure() -> None:
    compiled, _ = _run(pure=True)
    assert compiled == "False"


@pytest.mark.skipif(not COMPILED, reason="the core was built without mypyc (REFLOWES_PURE "
                    "at build, or its sources changed since: pip install -e . rebuilds it)")
def test_compiled_core_decides_as_the_pure_one() -> None:
    compiled, fast = _run(pure=False)
    pure_flag, slow = _run(pure=True)
    assert (compiled, pure_flag) == ("True", "False")
    assert fast == slow


@pytest.mark.skipif(not COMPILED, reason="the core was built without mypyc")
def test_a_core_edited_since_its_build_runs_from_its_sources(tmp_path: Path) -> None:
    """A copy of the built package: compiled as built; once core.py changes, the .py modules."""
    tree = tmp_path / "reflowes"
    for src in ("events", "engine"):
        shutil.copytree(ROOT / src, tree / src, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "__init__.py").write_text("")
    probe = ("from reflowes import engine; from reflowes.engine import core; "
             f"print(engine.__file__.startswith({str(tree)!r}), engine.COMPILED, "
             "core.__file__.endswith('.py'))")
    env = {k: v for k, v in os.environ.items() if k != "REFLOWES_PURE"}
    env["PYTHONPATH"] = str(tmp_path)

    def run() -> str:
        return subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert run() == "True True False"
    with open(tree / "engine" / "core.py", "a") as f:
        f.write("\n# edited after the build\n")
    assert run() == "True False True"
