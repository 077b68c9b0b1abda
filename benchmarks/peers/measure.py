"""Run one engine command in its own process group: wall time, peak RSS of its tree, kill on cue.

Peak RSS is the largest sum of RSS over the whole process tree, sampled every 50 ms with psutil,
not ru_maxrss: a child's ru_maxrss keeps the harness's own RSS from before its exec (Linux).
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
    stalled: bool = False  # no new output for `stall` seconds while some were missing
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
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.02)


def run(
    argv: list[str],
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    kill_when: Callable[[], bool] | None = None,
    pending: Callable[[], int] | None = None,
    stall: float = 180.0,
) -> Measurement:
    """Run argv in cwd (new session); SIGKILL its whole group when kill_when() turns true, at
    the timeout, or when pending() (outputs still missing) stays above 0 and unchanged for stall s.
    """
    with open(log, "ab") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        sampler = _Sampler(proc.pid)
        sampler.start()
        killed, why = False, ""
        status = 0
        last, last_change, next_check = -1, t0, t0
        try:
            while True:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = time.monotonic()
                if not killed and kill_when is not None and kill_when():
                    why = "cue"
                elif not killed and now - t0 > timeout:
                    why = "timeout"
                elif not killed and pending is not None and now >= next_check:
                    left, next_check = pending(), now + min(1.0, stall / 4)
                    if left != last:
                        last, last_change = left, now
                    elif left > 0 and now - last_change > stall:
                        why = "stalled"
                if why and not killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.01)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Orphaned workers of the group must be gone before anyone looks at the outputs.
        if killed:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, time.monotonic() + 10)
        sampler.stop.set()
        sampler.join()
    peak = sampler.peak
    return Measurement(
        wall=wall,
        peak_rss=peak,
        returncode=proc.returncode,
        killed=why == "cue",
        timed_out=why in ("timeout", "stalled"),
        stalled=why == "stalled",
        log=str(log),
    )


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group? Zombies wait on whoever reaps orphans."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            pass
    return False
