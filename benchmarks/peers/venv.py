"""The peers' own virtual environment under the user's cache; never a project dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CACHE = Path.home() / ".cache" / "reflowes-bench"
VENV = CACHE / "peers-venv"
PACKAGES = ["snakemake", "redun", "luigi", "matplotlib"]
_PROBE = "import snakemake, redun, luigi, matplotlib"


def ensure(venv: Path = VENV) -> Path:
    """Create the venv and install the peers unless a working one is already there."""
    py = venv / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([py, "-c", _PROBE], check=False, capture_output=True).returncode == 0
    ):
        return venv
    print(f"installing {' '.join(PACKAGES)} into {venv} (takes ~2 min) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = venv.parent / "pip.log"
    with open(log, "w") as out:
        res = subprocess.run(
            [py, "-m", "pip", "install", *PACKAGES],
            check=False,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if res.returncode != 0:
        sys.exit(f"pip install into {venv} failed; see {log}")
    return venv
