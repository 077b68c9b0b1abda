"""Memory limits and peaks for local steps: a cgroup v1 memory group per exec when the
controller's own memory cgroup is writable, else RLIMIT_AS (`ulimit -v`) and ru_maxrss.

Groups are nested under the controller's cgroup (`<own>/reflowes-<pid>/<n>`), never elsewhere.
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import time

V1_ROOT = "/sys/fs/cgroup/memory"
_instances = 0  # groups of one controller: reflowes-<pid>-<instance>
_RESIDUE = 16 << 20  # charges left in a free group above this are reclaimed before reuse


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


def memory_ceiling() -> int | None:
    """The tightest memory limit on this process's cgroups (v1 or v2), if any is set."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            root, name = V1_ROOT, "memory.limit_in_bytes"
        elif controllers == "":
            root, name = "/sys/fs/cgroup", "memory.max"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts), -1, -1):  # the group and each of its ancestors
            try:
                with open("/".join([root, *parts[:i], name])) as f:
                    value = f.read().strip()
            except OSError:
                continue
            if value.isdigit() and int(value) < (1 << 62):
                limits.append(int(value))
    return min(limits) if limits else None


class Group:
    """A memory cgroup with its control files kept open (read with pread: no open per exec)."""

    __slots__ = ("fds", "join", "limit", "ooms", "path")

    def __init__(self, path: str, memsw: bool) -> None:
        self.path = path
        # The shell line that moves the shell running it into the group ("0": the writer).
        self.join = f"echo 0 > {shlex.quote(path + '/cgroup.procs')} || exit 126\n"
        names = ["memory.max_usage_in_bytes", "memory.oom_control", "memory.usage_in_bytes",
                 "cgroup.procs", "memory.limit_in_bytes", "memory.force_empty"]
        if memsw:
            names.append("memory.memsw.limit_in_bytes")
        self.fds = [os.open(f"{path}/{n}", os.O_RDWR if n.startswith("memory.") and n not in
                            ("memory.oom_control", "memory.usage_in_bytes") else os.O_RDONLY)
                    for n in names]
        self.limit = -2  # unknown
        self.ooms = 0

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class MemoryGroups:
    """Memory cgroups for execs, reused: a group is made once and serves exec after exec,
    its peak reset and its OOM-kill counter compared with the value before the exec."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._n = 0
        self._memsw = False
        self._free: list[Group] = []
        self._stale: list[Group] = []

    @classmethod
    def open(cls) -> MemoryGroups | None:
        """Groups under this controller's memory cgroup, or None when it is not writable.
        Nothing is created until the first `acquire`."""
        own = own_memory_cgroup()
        if own is None or not os.access(own, os.W_OK):
            return None
        remove_dead_groups(own)
        global _instances
        _instances += 1
        return cls(f"{own}/reflowes-{os.getpid()}-{_instances}")

    def acquire(self, limit: int) -> Group:
        """A group capped at `limit` bytes (0: uncapped) with a fresh peak."""
        g = self._free.pop() if self._free else self._new_group()
        try:
            self._set_limit(g, limit)
        except OSError:  # e.g. EBUSY: charges it cannot shed below the new limit; use a new one
            g.close()
            try:
                os.rmdir(g.path)
            except OSError:
                pass
            g = self._new_group()
            self._set_limit(g, limit)
        return g

    def _new_group(self) -> Group:
        self._n += 1
        path = f"{self.base}/{self._n}"
        if self._n == 1 or not os.path.isdir(self.base):
            os.makedirs(self.base, exist_ok=True)
            atexit.register(self.close)  # SIGKILL is the guardian's business
        os.mkdir(path)
        self._memsw = os.path.exists(f"{path}/memory.memsw.limit_in_bytes")
        g = Group(path, self._memsw)
        g.ooms = _oom_kills(g)
        return g

    def _set_limit(self, g: Group, limit: int) -> None:
        if g.limit == limit:
            return
        value = b"%d" % limit if limit > 0 else b"-1"
        if self._memsw:  # memsw >= mem at all times: lift it, set mem, then cap it
            os.write(g.fds[6], b"-1")
        os.write(g.fds[4], value)
        if self._memsw:  # no swapping past the limit either
            os.write(g.fds[6], value)
        g.limit = limit

    @staticmethod
    def prologue(g: Group) -> str:
        """The shell line that moves the step's shell into the group before it runs anything."""
        return g.join

    @staticmethod
    def read(g: Group) -> tuple[int, bool]:
        """(peak bytes, OOM-killed) of the exec that used `g`, once its processes exited."""
        try:
            peak = int(os.pread(g.fds[0], 64, 0))
            ooms = _oom_kills(g)
        except (OSError, ValueError):
            return 0, False
        killed, g.ooms = ooms > g.ooms, ooms
        return peak, killed

    def release(self, g: Group) -> None:
        """Back to the free list, emptied: stragglers killed, page cache uncharged, peak reset."""
        try:
            procs = os.pread(g.fds[3], 4096, 0).split()
            for pid in procs:
                os.kill(int(pid), signal.SIGKILL)
            if procs:  # not reusable until they are gone
                self._stale.append(g)
                return
            if int(os.pread(g.fds[2], 64, 0)) > _RESIDUE:  # e.g. the page cache of outputs
                os.write(g.fds[5], b"0")
            os.write(g.fds[0], b"0")
        except (OSError, ValueError):
            self._stale.append(g)
            return
        self._free.append(g)
        if self._stale:
            stale, self._stale = self._stale, []
            for s in stale:
                if os.pread(s.fds[3], 4096, 0).strip():
                    self._stale.append(s)
                else:
                    self.release(s)

    def close(self) -> None:
        """Remove every group of this controller (waits briefly for killed processes)."""
        for g in self._free + self._stale:
            g.close()
        self._free, self._stale = [], []
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
        pid = e.name.split("-")[1] if e.name.count("-") >= 1 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_tree(e.path, wait=0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _oom_kills(g: Group) -> int:
    text = os.pread(g.fds[1], 512, 0)
    i = text.find(b"\noom_kill ")  # the counter's line (kernels before 4.13 have none)
    if i < 0:
        return 0
    end = text.find(b"\n", i + 10)
    return int(text[i + 10:end if end >= 0 else None])
