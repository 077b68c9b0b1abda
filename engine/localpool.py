"""The local pool: this machine as one pool of resources (cpus, 95% of RAM, the repository's disk).

Grants come in request order as soon as the free capacity covers a request's minimum.
Imports no docker and no sqlite.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path

import psutil

from reflowes.engine.layout import default_repo
from reflowes.engine.localmem import memory_ceiling
from reflowes.events.model import AllocDied, AllocGranted, Event
from reflowes.events.resources import Resources

MEM_FRACTION = 0.95


def machine_resources(repo_root: str | os.PathLike[str] | None = None) -> Resources:
    """What this machine offers: usable cpus, 95% of RAM (or of the cgroup's memory limit),
    free disk where the repository lives."""
    p = Path(repo_root) if repo_root is not None else default_repo()
    while not p.exists() and p != p.parent:
        p = p.parent
    disk = shutil.disk_usage(p).free
    mem = psutil.virtual_memory().total
    ceiling = memory_ceiling()  # in a container, the cgroup's limit is the machine
    if ceiling is not None:
        mem = min(mem, ceiling)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Resources(cpus or 1, int(mem * MEM_FRACTION), disk)


def alloc_id_for(request_id: str) -> str:
    """The deterministic alloc id of a request: "r3" -> "a3"."""
    return "a" + (request_id.removeprefix("r"))


class LocalPool:
    """Carves allocs out of this machine; `poll` returns the grants."""

    def __init__(
        self, resources: Resources | None = None, repo_root: str | os.PathLike[str] | None = None
    ) -> None:
        self.total = resources if resources is not None else machine_resources(repo_root)
        self.allocs: dict[str, Resources] = {}
        self._free = self.total
        self._waiting: OrderedDict[str, tuple[Resources, Resources]] = OrderedDict()
        self._events: list[Event] = []

    def capacity(self) -> Resources:
        """The largest alloc this pool can ever grant."""
        return self.total

    def free(self) -> Resources:
        """What is not allocated now."""
        return self._free

    def request(self, request_id: str, want: Resources, minimum: Resources) -> None:
        """Queue a request (again is a no-op); grants are made as capacity frees up."""
        if request_id in self._waiting or alloc_id_for(request_id) in self.allocs:
            return
        self._waiting[request_id] = (want, minimum)
        self._grant()

    def release(self, alloc_id: str) -> None:
        """Give an alloc back (unknown ids are ignored: release is idempotent)."""
        res = self.allocs.pop(alloc_id, None)
        if res is not None:
            self._free = self._free + res
            self._grant()

    def restore(self, allocs: dict[str, Resources]) -> list[Event]:
        """Re-take the allocs the log says are live; those that no longer fit have died."""
        died: list[Event] = []
        for alloc_id, res in allocs.items():
            if alloc_id in self.allocs:
                continue
            if res.fits_in(self._free):
                self.allocs[alloc_id] = res
                self._free = self._free - res
            else:
                died.append(AllocDied(alloc_id=alloc_id,
                                      reason=f"the machine no longer has room for {res}"))
        return died

    def poll(self) -> list[Event]:
        """AllocGranted facts since the last call."""
        self._grant()
        out, self._events = self._events, []
        return out

    def _grant(self) -> None:
        for request_id, (want, minimum) in list(self._waiting.items()):
            if not minimum.fits_in(self._free):
                continue
            res = want.min(self._free).max(minimum)
            alloc_id = alloc_id_for(request_id)
            del self._waiting[request_id]
            self.allocs[alloc_id] = res
            self._free = self._free - res
            self._events.append(AllocGranted(alloc_id=alloc_id, request_id=request_id,
                                             resources=res))
