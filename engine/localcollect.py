"""Collecting a local exec's outputs: each declared output hashed into the repository, small
files in the controller's loop, dirs and big files on worker threads (hashlib drops the GIL)
whose outcomes `ready` picks up. Imports no executor."""

from __future__ import annotations

import os
import select
import stat
from concurrent.futures import Future, ThreadPoolExecutor

from reflowes.engine.executor import ExecSpec
from reflowes.engine.localproc import tail
from reflowes.engine.repository import Repository, RepositoryError
from reflowes.events.model import ExecExited, FileRef

_HASHERS = 2  # threads hashing big outputs
_INLINE_HASH = 4 << 20  # outputs up to this size are hashed in the loop itself


class Outputs:
    """The outputs of execs that exited 0, hashed into `repo`; the worker threads' eventfd is
    registered in `poller` (readable: `ready` has outcomes)."""

    def __init__(self, repo: Repository, poller: select.poll) -> None:
        self.repo = repo
        self._poller = poller
        self._hasher: ThreadPoolExecutor | None = None
        self._efd = -1
        self._collecting: dict[str, Future[ExecExited]] = {}
        self._dropped: set[str] = set()

    def collect(self, spec: ExecSpec, d: str, peak: int, duration: float) -> ExecExited | None:
        """The outcome of exec `spec` run in dir `d`; None when its outputs are being hashed
        on a worker thread (its outcome comes from `ready`)."""
        small = _small_outputs(spec, d)
        if small is None:
            self._defer(spec, d, peak, duration)
            return None
        return self._collect(spec, d, peak, duration, small)

    def ready(self) -> list[ExecExited]:
        """Outcomes whose outputs the hashing threads have finished."""
        if not self._collecting:
            return []
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return []
        out: list[ExecExited] = []
        for exec_id, fut in list(self._collecting.items()):
            if fut.done():
                del self._collecting[exec_id]
                if exec_id not in self._dropped:
                    out.append(fut.result())
                self._dropped.discard(exec_id)
        return out

    def drop(self, exec_id: str) -> None:
        """No outcome for `exec_id` (killed while its outputs were being hashed)."""
        if exec_id in self._collecting:
            self._dropped.add(exec_id)

    def pending(self) -> int:
        return len(self._collecting) - len(self._dropped)

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None
            self._poller.unregister(self._efd)
            os.close(self._efd)
            self._collecting.clear()
            self._dropped.clear()

    def _defer(self, spec: ExecSpec, d: str, peak: int, duration: float) -> None:
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(_HASHERS, thread_name_prefix="reflowes-hash")
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._poller.register(self._efd, select.POLLIN)
        fut = self._hasher.submit(self._collect, spec, d, peak, duration)
        fut.add_done_callback(lambda _: os.eventfd_write(self._efd, 1))
        self._collecting[spec.exec_id] = fut

    def _collect(self, spec: ExecSpec, d: str, peak: int, duration: float,
                 stats: dict[str, os.stat_result | None] | None = None) -> ExecExited:
        """Hash the outputs of an exec that exited 0 into the repository (`stats`: the lstat
        of each file output, None when missing, if the caller has them)."""
        result: dict[str, FileRef] = {}
        for name, kind in spec.outputs.items():
            p = f"{d}/out/{name}"
            try:
                if kind == "dir":
                    if not os.path.isdir(p):
                        raise FileNotFoundError(p)
                    result[name] = self.repo.put_dir(p, move=True)
                else:
                    st = os.lstat(p) if stats is None else stats[name]
                    if st is None:
                        raise FileNotFoundError(p)
                    if stat.S_ISDIR(st.st_mode):
                        raise IsADirectoryError(p)
                    result[name] = self.repo.put_file(p, move=True, st=st)
            except FileNotFoundError:
                return ExecExited(exec_id=spec.exec_id, task_id=spec.task_id, exit_code=0,
                                  peak_mem=peak, duration=duration, stderr_tail=tail(
                                      f"{d}/stderr"),
                                  error=f"step produced no declared output {name!r}")
            except (OSError, RepositoryError) as e:
                return ExecExited(exec_id=spec.exec_id, task_id=spec.task_id, exit_code=0,
                                  peak_mem=peak, duration=duration,
                                  error=f"cannot collect output {name!r}: {e}")
        return ExecExited(exec_id=spec.exec_id, task_id=spec.task_id, exit_code=0,
                          peak_mem=peak, result=result, duration=duration)


def _small_outputs(spec: ExecSpec, d: str) -> dict[str, os.stat_result | None] | None:
    """The lstat of each output (None: missing) when all are files small enough to hash
    in the loop; None when one is a dir or big (hashed on a worker thread)."""
    stats: dict[str, os.stat_result | None] = {}
    for name, kind in spec.outputs.items():
        if kind == "dir":
            return None
        try:
            st = stats[name] = os.lstat(f"{d}/out/{name}")
        except OSError:
            stats[name] = None
            continue
        if st.st_size > _INLINE_HASH:
            return None
    return stats
