"""Where a batch keeps its state: the directory beside the CSV, and the per-user repository.

`samples.csv` -> `samples.reflowes/` holding `log.sqlite`, `execs/<exec id>/` (stdout, stderr,
the private work dir) and `results/<run id>/`. Pure path arithmetic; creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

LOG_NAME = "log.sqlite"
STATE_SUFFIX = ".reflowes"


def default_repo() -> Path:
    """The per-user content-addressed repository and cache: $REFLOWES_HOME or ~/.cache/reflowes."""
    env = os.environ.get("REFLOWES_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reflowes"


@attrs.frozen
class BatchLayout:
    """Paths of one batch's state directory."""

    state_dir: Path
    csv: Path | None = None

    @classmethod
    def for_csv(cls, csv: str | os.PathLike[str]) -> BatchLayout:
        p = Path(csv).absolute()
        return cls(p.with_name(p.stem + STATE_SUFFIX), p)

    @classmethod
    def resolve(cls, path: str | os.PathLike[str]) -> BatchLayout:
        """From a CSV path or a state directory (or the log file inside it)."""
        p = Path(path).absolute()
        if p.is_dir():
            return cls(p)
        if p.name == LOG_NAME:
            return cls(p.parent)
        return cls.for_csv(p)

    @property
    def log(self) -> Path:
        return self.state_dir / LOG_NAME

    @property
    def execs(self) -> Path:
        return self.state_dir / "execs"

    @property
    def results(self) -> Path:
        return self.state_dir / "results"

    def exec_dir(self, exec_id: str) -> Path:
        return self.execs / exec_id

    def run_results(self, run_id: str) -> Path:
        return self.results / run_id
