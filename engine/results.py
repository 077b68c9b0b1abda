"""Finished runs' results linked under `results/<run id>/` by a worker thread, off the loop.

A directory per run costs the kernel 20-450 us on ext4 (the most after mass deletions), and the
controller's loop is what a batch of short steps waits on. Each dir is made whole as
`results/.<run id>.partial` and renamed into place, so a dir that is there is complete; after a
crash, `repair` redoes the done runs whose dir is missing. The log records a run as finished
before its dir exists: results are derived from it (like the projections), and rebuilt from it.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Iterable, Mapping

from reflowes.engine.errors import InfraError
from reflowes.engine.repository import Repository, RepositoryError
from reflowes.events.model import FileRef

_PARTIAL = ".partial"


class ResultsWriteError(InfraError):
    """A run's results could not be linked under results/ (the run itself is done)."""


class ResultsWriter:
    """Materializes runs' results on one worker thread (started on first use); `close` waits
    for all of them and raises the first failure."""

    def __init__(self, repo: Repository, results_dir: str) -> None:
        self.repo = repo
        self.dir = results_dir
        self._q: queue.SimpleQueue[tuple[str, Mapping[str, FileRef]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._error: ResultsWriteError | None = None

    def submit(self, run_id: str, result: Mapping[str, FileRef]) -> None:
        """Link `result` under results/<run_id>/ soon (replacing what is there)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="reflowes-results",
                                            daemon=True)
            self._thread.start()
        self._q.put((run_id, result))

    def _work(self) -> None:
        while (item := self._q.get()) is not None:
            try:
                self.write(*item)
            except (OSError, RepositoryError) as e:
                if self._error is None:
                    self._error = ResultsWriteError(
                        f"{self.dir}/{item[0]}: cannot link the run's results: {e} "
                        "(the run is done; `reflowes run` again writes them)")

    def write(self, run_id: str, result: Mapping[str, FileRef]) -> None:
        """Link the results now, whole or not at all (in the calling thread)."""
        dest = f"{self.dir}/{run_id}"
        tmp = f"{self.dir}/.{run_id}{_PARTIAL}"
        try:
            os.mkdir(tmp)
        except FileExistsError:  # left by a crash
            shutil.rmtree(tmp)
            os.mkdir(tmp)
        except FileNotFoundError:  # the first run with results
            os.makedirs(tmp)
        for name, ref in result.items():
            self.repo.materialize(ref, f"{tmp}/{name}")
        try:
            os.rename(tmp, dest)
        except OSError:  # a dir of an earlier try is in the way (rename replaces empty ones)
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)

    def repair(self, done: Iterable[tuple[str, Mapping[str, FileRef]]]) -> int:
        """Submit the done runs whose results dir is missing (a crash came before the worker
        made it, or it was deleted); drop partial dirs. Returns how many were submitted."""
        try:
            present = set(os.listdir(self.dir))
        except FileNotFoundError:
            present = set()
        for name in present:
            if name.startswith(".") and name.endswith(_PARTIAL):
                shutil.rmtree(f"{self.dir}/{name}", ignore_errors=True)
        n = 0
        for run_id, result in done:
            if result and run_id not in present:
                self.submit(run_id, result)
                n += 1
        return n

    def close(self, check: bool = True) -> None:
        """Wait until every submitted run is written; raise the first failure if `check`."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join()
        error, self._error = self._error, None
        if error is not None and check:
            raise error
