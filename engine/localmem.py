"""Memory limits and peaks for local steps: a cgroup v1 memory group per exec when the
controller's own memory cgroup is writable, else RLIMIT_AS (`ulimit -v`) and ru_maxrss.

Groups are nested under the controller's cgroup (`<own>/reflowes-<pid>/<n>`), never elsewhere.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time

V1_ROOT = "/sys/fs/cgroup/memory"
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.M)


def own_memory_cgroup(root: str = V1_ROOT) -> str | None:
    """The directory of this process's cgroup v1 memory group, if mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = root + path.rstrip("/")
            return d if os.path.isdir(d) else None
    return None


class MemoryGroups:
    """One memory cgroup per exec: limit, peak usage and the OOM-kill counter."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._n = 0
        self._memsw = os.path.exists(f"{base}/memory.memsw.limit_in_bytes")
        self._stale: list[str] = []

    @classmethod
    def open(cls) -> MemoryGroups | None:
        """Per-exec groups under this controller's memory cgroup, or None when not writable."""
        own = own_memory_cgroup()
        if own is None:
            return None
        remove_dead_groups(own)
        base = f"{own}/reflowes-{os.getpid()}"
        try:
            os.makedirs(base, exist_ok=True)
            probe = cls(base)
            probe.remove(probe.make(64 << 20))
        except OSError:
            return None
        return probe

    def make(self, limit: int) -> str:
        """A new group capped at `limit` bytes (0: uncapped); returns its directory."""
        self._n += 1
        path = f"{self.base}/{self._n}"
        try:
            os.mkdir(path)
        except FileNotFoundError:  # closed before: start over
            os.makedirs(path)
        if limit > 0:
            _write(f"{path}/memory.limit_in_bytes", limit)
            if self._memsw:  # no swapping past the limit either
                _write(f"{path}/memory.memsw.limit_in_bytes", limit)
        return path

    @staticmethod
    def prologue(path: str) -> str:
        """The shell line that moves the step's shell into the group before it runs anything."""
        return f"echo $$ > {shlex.quote(path + '/cgroup.procs')} || exit 126\n"

    @staticmethod
    def read(path: str) -> tuple[int, bool]:
        """(peak bytes, OOM-killed) of a group whose processes have exited."""
        try:
            with open(f"{path}/memory.max_usage_in_bytes") as f:
                peak = int(f.read())
            with open(f"{path}/memory.oom_control") as f:
                m = _OOM_KILL.search(f.read())
        except OSError:
            return 0, False
        return peak, bool(m and int(m.group(1)) > 0)

    def remove(self, path: str) -> None:
        """Delete a group (kept for a later try while exiting processes still hold it)."""
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            self._stale.append(path)
        if self._stale and path != self._stale[0]:
            stale, self._stale = self._stale, []
            for p in stale:
                try:
                    os.rmdir(p)
                except FileNotFoundError:
                    pass
                except OSError:
                    self._stale.append(p)

    def close(self) -> None:
        """Remove every group of this controller (waits briefly for killed processes)."""
        remove_tree(self.base)


def remove_tree(base: str, wait: float = 2.0) -> None:
    """Remove a directory of (empty) cgroups, killing stragglers, retrying for `wait` s."""
    deadline = time.monotonic() + wait
    while os.path.isdir(base):
        for entry in os.scandir(base):
            if entry.is_dir(follow_symlinks=False):
                try:
                    with open(f"{entry.path}/cgroup.procs") as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                try:
                    os.rmdir(entry.path)
                except OSError:
                    pass
        try:
            os.rmdir(base)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


def remove_dead_groups(own: str) -> None:
    """Remove the groups of earlier controllers that are gone (SIGKILLed ones leave them)."""
    try:
        entries = [e for e in os.scandir(own) if e.name.startswith("reflowes-")]
    except OSError:
        return
    for e in entries:
        pid = e.name.removeprefix("reflowes-")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_tree(e.path, wait=0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))
