"""Run one engine command in its own process group: wall time, peak RSS of its tree, kill on cue.

Peak RSS is the largest sum of RSS over the whole process tree, sampled every 50 ms with psutil,
and never below the child's own ru_maxrss (which catches runs shorter than one sample).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05


@dataclass
class Measurement:
    """What one engine invocation cost and how it ended."""

    wall: float
    peak_rss: int  # bytes
    returncode: int | None
    killed: bool = False  # we SIGKILLed its process group on cue
    timed_out: bool = False
    log: str = ""  # path of its captured stdout+stderr


def _tree_rss(root: psutil.Process) -> int:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()
        try:
            self.root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.root = None

    def run(self) -> None:
        while self.root is not None and not self.stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.root))
            self.stop.wait(SAMPLE_SECONDS)


def _wait_group_gone(pgid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def run(
    argv: list[str],
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    kill_when: Callable[[], bool] | None = None,
) -> Measurement:
    """Run argv in cwd (new session); SIGKILL its whole group when kill_when() turns true."""
    with open(log, "ab") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        sampler = _Sampler(proc.pid)
        sampler.start()
        killed = timed_out = False
        status = None
        rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_when is not None and not killed and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
            elif not killed and time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = timed_out = True
            time.sleep(0.01)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Orphaned workers of the group must be gone before anyone looks at the outputs.
        if killed:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, time.monotonic() + 10)
        sampler.stop.set()
        sampler.join()
    peak = max(sampler.peak, (rusage.ru_maxrss * 1024) if rusage else 0)
    return Measurement(
        wall=wall,
        peak_rss=peak,
        returncode=proc.returncode,
        killed=killed and not timed_out,
        timed_out=timed_out,
        log=str(log),
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
