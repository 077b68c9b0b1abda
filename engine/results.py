"""Finished runs' results linked under `results/<run id>/`, and put back when missing.

The results are derived from the log (each RunFinished holds its result refs), like the
projections. Runs whose results are all files are linked by the linker process (engine/linker.py),
off the loop, after their RunFinished may already be recorded; `repair` (at the start of an
invocation) rewrites the dirs of done runs that are missing (a crash came first, or a user's rm)
and drops half-made ones. (A worker thread instead of a process measured worse: it needs the
GIL between its syscalls. benchmarks/README.md.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

from reflowes.engine.errors import InfraError
from reflowes.engine.linker import PARTIAL, Linker
from reflowes.engine.repository import Repository
from reflowes.events.model import FileRef


class ResultsNotLinked(InfraError):
    """Some runs' results could not be linked under results/ (the runs themselves are done)."""


class Results:
    """The `results/` dir of a batch."""

    def __init__(self, repo: Repository, results_dir: str) -> None:
        self.repo = repo
        self.dir = results_dir
        self._linker = Linker()

    def submit(self, run_id: str, result: Mapping[str, FileRef]) -> None:
        """Link `result` under results/<run_id>/ soon (a dir result: now, in this process)."""
        if any(ref.kind == "dir" for ref in result.values()):
            self.write(run_id, result)
            return
        self._linker.link(f"{self.dir}/{run_id}",
                          [(name, self.repo.path_str(ref)) for name, ref in result.items()])

    def write(self, run_id: str, result: Mapping[str, FileRef]) -> None:
        """Link `result` under results/<run_id>/ now (files there of the same names replaced)."""
        dest = f"{self.dir}/{run_id}"
        try:
            os.mkdir(dest)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the first run with results
            os.makedirs(dest, exist_ok=True)
        for name, ref in result.items():
            self.repo.materialize(ref, f"{dest}/{name}")

    def repair(self, done: Iterable[tuple[str, Mapping[str, FileRef]]]) -> int:
        """Rewrite the dirs of the done runs (with results) that are missing, and drop
        half-made ones; returns how many were rewritten."""
        try:
            present = set(os.listdir(self.dir))
        except FileNotFoundError:
            present = set()
        for name in present:
            if name.startswith(".") and name.endswith(PARTIAL):
                shutil.rmtree(f"{self.dir}/{name}", ignore_errors=True)
        n = 0
        for run_id, result in done:
            if result and run_id not in present:
                self.write(run_id, result)
                n += 1
        return n

    def close(self) -> None:
        """Wait until every submitted run is linked; raise if some could not be."""
        failed = self._linker.close()
        if failed:
            dest, error = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise ResultsNotLinked(
                f"{dest}: cannot link the run's results: {error}{more}; the runs are done, "
                "`reflowes run` again writes their results")
