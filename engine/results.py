"""Finished runs' results linked under `results/<run id>/`, and put back when missing.

The results are derived from the log (each RunFinished holds its result refs), like the
projections: a run's dir is written before its RunFinished is recorded, and `repair` (at the
start of an invocation) rewrites the dirs of done runs that are missing, e.g. deleted by hand.
(Writing them on a worker thread, off the loop, was tried: the GIL hand-offs cost the loop more
than the dirs did, even with ext4 slow after mass deletions. benchmarks/README.md.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from reflowes.engine.repository import Repository
from reflowes.events.model import FileRef


class Results:
    """The `results/` dir of a batch."""

    def __init__(self, repo: Repository, results_dir: str) -> None:
        self.repo = repo
        self.dir = results_dir

    def write(self, run_id: str, result: Mapping[str, FileRef]) -> None:
        """Link `result` under results/<run_id>/ (files there of the same names replaced)."""
        dest = f"{self.dir}/{run_id}"
        try:  # one mkdir, not a failed link + stat + makedirs
            os.mkdir(dest)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the first run with results
            os.makedirs(dest, exist_ok=True)
        for name, ref in result.items():
            self.repo.materialize(ref, f"{dest}/{name}")

    def repair(self, done: Iterable[tuple[str, Mapping[str, FileRef]]]) -> int:
        """Rewrite the dirs of the done runs (with results) that are missing; how many."""
        try:
            present = set(os.listdir(self.dir))
        except FileNotFoundError:
            present = set()
        n = 0
        for run_id, result in done:
            if result and run_id not in present:
                self.write(run_id, result)
                n += 1
        return n
