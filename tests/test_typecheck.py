"""House rule: `mypy --strict` is clean on events/ and engine/ (the pure core and the shell).

The folders install as reflowes.* through setuptools' package-dir mapping, which mypy cannot
follow, so the check runs over a tree of symlinks that has the installed shape.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_on_events_and_engine(tmp_path: Path) -> None:
    if shutil.which("mypy") is None and subprocess.run(
        [sys.executable, "-m", "mypy", "--version"], capture_output=True, check=False
    ).returncode != 0:
        pytest.fail("mypy is missing: pip install -e '.[test]'")
    pkg = tmp_path / "reflowes"
    pkg.mkdir()
    shutil.copy(ROOT / "reflowes" / "__init__.py", pkg / "__init__.py")
    for name in ("events", "engine", "projections", "cli"):
        (pkg / name).symlink_to(ROOT / name)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "reflowes/events", "reflowes/engine"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
