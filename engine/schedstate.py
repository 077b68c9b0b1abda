"""The scheduler core's state: frozen records in persistent maps, read-only accessors, view().

Pure values only; imports stdlib typing, attrs, immutables, the rerooting map and reflowes.events
(no clock, no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import immutables
from reflowes.engine.placement import Bucket, BucketKey, SortedIndex
from reflowes.engine.pmap import RerootMap
from reflowes.events.model import FileRef, SchedulerConfigured, TaskState
from reflowes.events.resources import GiB, Resources

Free = tuple[float, int, int, int]  # (cpu, mem, disk, gpu): an alloc's free room, internal
Bound = tuple[float, float, float, float]  # a lower bound per resource (may be infinite)
_MEM_SCALE: Final = 8 * GiB  # Resources.size(): 8 GiB of mem weigh as 1 cpu
_DISK_SCALE: Final = 1 << 40


def as_free(r: Resources) -> Free:
    return (r.cpu, r.mem, r.disk, r.gpu)


def free_size(f: Free) -> float:
    """Resources.size() of a Free tuple (same formula, no object built)."""
    return f[0] + f[1] / _MEM_SCALE + f[3] * 8 + f[2] / _DISK_SCALE


def cpu_round(x: float) -> float:
    """round(x, 6): the call is skipped when x is integral (it would return x), as it mostly is.
    (The bounds keep int() away from inf and nan, which round() passes through.)"""
    return x if -1e15 < x < 1e15 and x == int(x) else round(x, 6)


def fits_alloc(need: Free, a: AllocRecord) -> bool:
    """fits(need, a.free), no tuple built."""
    return (need[0] <= a.free_cpu + 1e-9 and need[1] <= a.free_mem and need[2] <= a.free_disk
            and need[3] <= a.free_gpu)


def fits(need: Free, room: Free) -> bool:
    """Resources.fits_in on Free tuples."""
    return (need[0] <= room[0] + 1e-9 and need[1] <= room[1] and need[2] <= room[2]
            and need[3] <= room[3])


# Records are native classes when the core is compiled (mypyc: C-struct fields, direct
# constructor calls), plain slotted classes otherwise. Never mutated once built: a change is a
# new record (the old state keeps the old one). A task's ended attempts sit in a tuple that only
# grows on a retry; the attempt in progress is a record of its own, so an assignment or a start
# rebuilds two small records and no tuple. An alloc's free room is four plain fields.


def _repr(obj: Any, names: tuple[str, ...]) -> str:
    return f"{type(obj).__name__}({', '.join(f'{n}={getattr(obj, n)!r}' for n in names)})"


class ExecSlot:
    """An assigned-but-unfinished attempt: what the shell must have running (`need`: its
    resources as plain numbers, for the alloc's arithmetic)."""

    __slots__ = ("alloc_id", "attempt", "need", "resources", "task_id")

    def __init__(self, task_id: str, alloc_id: str, attempt: int, resources: Resources,
                 need: Free) -> None:
        self.task_id = task_id
        self.alloc_id = alloc_id
        self.attempt = attempt
        self.resources = resources
        self.need = need

    def __repr__(self) -> str:
        return _repr(self, ("task_id", "alloc_id", "attempt", "resources"))


class AttemptRecord:
    """One attempt of a task; kept after it ends (lost, OOM, exit 75, done, failed)."""

    __slots__ = ("alloc_id", "attempt", "exec_id", "exit_code", "reason", "resources", "state")

    def __init__(self, attempt: int, resources: Resources, state: TaskState,
                 alloc_id: str | None = None, exec_id: str | None = None,
                 reason: str | None = None, exit_code: int | None = None) -> None:
        self.attempt = attempt
        self.resources = resources
        self.state = state
        self.alloc_id = alloc_id
        self.exec_id = exec_id
        self.reason = reason
        self.exit_code = exit_code

    def __repr__(self) -> str:
        return _repr(self, ATTEMPT_FIELDS)


ATTEMPT_FIELDS = ("attempt", "resources", "state", "alloc_id", "exec_id", "reason", "exit_code")
NO_RESULT: Final[Mapping[str, FileRef]] = immutables.Map()


class TaskRecord:
    """A task's current standing plus every attempt; `state` is that of the current attempt
    (`current`; `past` holds the ended ones, `attempts` all of them in order)."""

    __slots__ = ("alloc_id", "attempt", "current", "declared", "error", "exec_id", "exit_code",
                 "ident", "key", "lost", "ooms", "past", "priority", "resources", "result",
                 "run_id", "state", "submitted_at", "task_id", "temps")

    def __init__(self, task_id: str, run_id: str, key: str, ident: str, priority: int,
                 declared: Resources, resources: Resources, state: TaskState, attempt: int,
                 past: tuple[AttemptRecord, ...], current: AttemptRecord, submitted_at: float,
                 lost: int = 0, ooms: int = 0, temps: int = 0, alloc_id: str | None = None,
                 exec_id: str | None = None, error: str | None = None,
                 exit_code: int | None = None, result: Mapping[str, FileRef] = NO_RESULT) -> None:
        self.task_id = task_id
        self.run_id = run_id
        self.key = key
        self.ident = ident
        self.priority = priority
        self.declared = declared
        self.resources = resources  # of the current attempt (OOM retries raise mem)
        self.state = state
        self.attempt = attempt
        self.past = past
        self.current = current
        self.submitted_at = submitted_at
        self.lost = lost
        self.ooms = ooms
        self.temps = temps
        self.alloc_id = alloc_id
        self.exec_id = exec_id
        self.error = error
        self.exit_code = exit_code
        self.result = result

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        return self.past + (self.current,)

    def moved(self, state: TaskState, current: AttemptRecord, alloc_id: str | None,
              exec_id: str | None, error: str | None, exit_code: int | None,
              result: Mapping[str, FileRef], lost: int = 0) -> TaskRecord:
        """This task in another state of the same attempt (the rest kept)."""
        return TaskRecord(self.task_id, self.run_id, self.key, self.ident, self.priority,
                          self.declared, self.resources, state, self.attempt, self.past, current,
                          self.submitted_at, self.lost + lost, self.ooms, self.temps, alloc_id,
                          exec_id, error, exit_code, result)

    def __repr__(self) -> str:
        return _repr(self, TASK_FIELDS)


# The order of a task's fields in view() (and repr).
TASK_FIELDS = ("task_id", "run_id", "key", "ident", "priority", "declared", "resources", "state",
               "attempt", "attempts", "submitted_at", "lost", "ooms", "temps", "alloc_id",
               "exec_id", "error", "exit_code", "result")


class AllocRecord:
    """A live alloc: what was granted, what is free (`free`: cpu, mem, disk, gpu), which execs
    it holds, since when idle."""

    __slots__ = ("alloc_id", "execs", "free_cpu", "free_disk", "free_gpu", "free_mem",
                 "granted_at", "idle_since", "request_id", "resources")

    def __init__(self, alloc_id: str, request_id: str, resources: Resources, free_cpu: float,
                 free_mem: int, free_disk: int, free_gpu: int, execs: frozenset[str],
                 granted_at: float, idle_since: float | None) -> None:
        self.alloc_id = alloc_id
        self.request_id = request_id
        self.resources = resources
        self.free_cpu = free_cpu
        self.free_mem = free_mem
        self.free_disk = free_disk
        self.free_gpu = free_gpu
        self.execs = execs
        self.granted_at = granted_at
        self.idle_since = idle_since

    @property
    def free(self) -> Free:
        return (self.free_cpu, self.free_mem, self.free_disk, self.free_gpu)

    def free_size(self) -> float:
        """free_size(self.free), no tuple built."""
        return (self.free_cpu + self.free_mem / _MEM_SCALE + self.free_gpu * 8
                + self.free_disk / _DISK_SCALE)

    def __repr__(self) -> str:
        return _repr(self, ("alloc_id", "request_id", "resources", "free", "execs", "granted_at",
                            "idle_since"))


class RequestRecord:
    """An outstanding AllocRequested, and the pending tasks (counts per bucket) it was for."""

    __slots__ = ("covers", "minimum", "request_id", "requested_at", "resources")

    def __init__(self, request_id: str, resources: Resources, minimum: Resources,
                 covers: tuple[tuple[BucketKey, int], ...], requested_at: float) -> None:
        self.request_id = request_id
        self.resources = resources
        self.minimum = minimum
        self.covers = covers
        self.requested_at = requested_at

    def __repr__(self) -> str:
        return _repr(self, ("request_id", "resources", "minimum", "covers", "requested_at"))


_EMPTY: Final[RerootMap[Any, Any]] = RerootMap()  # shared: an empty one is never grown in place
_NO_ITEMS: Final = SortedIndex()
STATES: Final[tuple[TaskState, ...]] = tuple(TaskState)
STATE_INDEX: Final[dict[TaskState, int]] = {s: i for i, s in enumerate(STATES)}
_ZERO_COUNTS: Final[tuple[int, ...]] = (0,) * len(STATES)

# Bucket keys (each with its shape as a Free) in placement order: groups of equal (priority,
# size), in (priority, size) order; per group, the least of each resource over it and every
# later group (a room below it fits no key from there on); and the keys listed. Derived from
# `buckets`: it may still list keys of buckets emptied since it was built, never lacks a live one.
BucketOrder = tuple[tuple[tuple[tuple[BucketKey, Free], ...], ...], tuple[Bound, ...],
                    frozenset[BucketKey]]


class SchedulerState:
    """Everything the core knows. Replace, never mutate: step() returns a new one."""

    __slots__ = ("allocs", "buckets", "by_free", "config", "counts", "execs", "gone", "idle",
                 "last_submit_at", "next_request", "next_seq", "now", "order", "pending",
                 "requests", "tasks", "uncovered")

    def __init__(
        self,
        config: SchedulerConfigured | None = None,
        now: float = 0.0,
        tasks: RerootMap[str, TaskRecord] = _EMPTY,
        allocs: RerootMap[str, AllocRecord] = _EMPTY,
        gone: RerootMap[str, str] = _EMPTY,  # alloc id -> "released" | "died: <reason>"
        execs: RerootMap[str, ExecSlot] = _EMPTY,
        requests: RerootMap[str, RequestRecord] = _EMPTY,
        buckets: RerootMap[BucketKey, Bucket] = _EMPTY,
        by_free: SortedIndex = _NO_ITEMS,  # (free size, alloc id) of live allocs
        idle: SortedIndex = _NO_ITEMS,  # (idle since, alloc id) of live allocs with no exec
        counts: tuple[int, ...] = _ZERO_COUNTS,  # tasks per TaskState, in STATES order
        pending: int = 0,
        next_seq: int = 0,
        next_request: int = 1,
        last_submit_at: float | None = None,
        uncovered: int = 0,  # pending tasks no outstanding request is for (sum over buckets)
        order: BucketOrder | None = None,  # derived from `buckets`, built when placement needs
    ) -> None:
        self.config = config
        self.now = now
        self.tasks = tasks
        self.allocs = allocs
        self.gone = gone
        self.execs = execs
        self.requests = requests
        self.buckets = buckets
        self.by_free = by_free
        self.idle = idle
        self.counts = counts
        self.pending = pending
        self.next_seq = next_seq
        self.next_request = next_request
        self.last_submit_at = last_submit_at
        self.uncovered = uncovered
        self.order = order


# ------------------------------------------------------------------ accessors for the shell


def live_allocs(state: SchedulerState) -> dict[str, Resources]:
    """Live allocs and their granted resources."""
    return {a: rec.resources for a, rec in state.allocs.items()}


def assigned_execs(state: SchedulerState) -> RerootMap[str, ExecSlot]:
    """exec id -> (task id, alloc id, attempt, resources) for every assigned-but-unfinished exec."""
    return state.execs


def task(state: SchedulerState, task_id: str) -> TaskRecord | None:
    """A task's record (state, attempt, resources, error, result, attempts), or None."""
    return state.tasks.get(task_id)


def task_counts(state: SchedulerState) -> dict[TaskState, int]:
    """Number of tasks in each TaskState (the state of their current attempt)."""
    return dict(zip(STATES, state.counts, strict=True))


def outstanding_requests(state: SchedulerState) -> RerootMap[str, RequestRecord]:
    """Alloc requests made and not yet granted."""
    return state.requests


# ------------------------------------------------------------------ canonical view


def _res(r: Resources) -> list[float]:
    return [r.cpu, r.mem, r.disk, r.gpu]


def _task_view(t: TaskRecord) -> dict[str, Any]:
    d = {f: getattr(t, f) for f in TASK_FIELDS}
    d.update(
        declared=_res(t.declared), resources=_res(t.resources), state=str(t.state),
        result={k: attrs.astuple(v) for k, v in sorted(t.result.items())},
        attempts=[
            [a.attempt, _res(a.resources), str(a.state), a.alloc_id, a.exec_id, a.reason,
             a.exit_code]
            for a in t.attempts
        ],
    )
    return d


def view(state: SchedulerState) -> dict[str, Any]:
    """A canonical snapshot of the state as plain data: equal states give equal views."""
    return {
        "config": None if state.config is None else attrs.asdict(state.config),
        "now": state.now,
        "tasks": {k: _task_view(state.tasks[k]) for k in sorted(state.tasks.keys())},
        "allocs": {
            k: [a.request_id, _res(a.resources), list(a.free), sorted(a.execs), a.granted_at,
                a.idle_since]
            for k in sorted(state.allocs.keys()) for a in [state.allocs[k]]
        },
        "gone": dict(sorted(state.gone.items())),
        "execs": {
            k: [s.task_id, s.alloc_id, s.attempt, _res(s.resources)]
            for k, s in sorted(state.execs.items())
        },
        "requests": {
            k: [_res(r.resources), _res(r.minimum), [[list(k), n] for k, n in r.covers],
                r.requested_at]
            for k, r in sorted(state.requests.items())
        },
        "pending": [
            [list(k), b.covered, b.task_ids()] for k, b in sorted(state.buckets.items())
        ],
        "by_free": list(state.by_free),
        "idle": list(state.idle),
        "counts": {str(s): n for s, n in sorted(zip(STATES, state.counts, strict=True))},
        "pending_total": state.pending,
        "next_seq": state.next_seq,
        "next_request": state.next_request,
        "last_submit_at": state.last_submit_at,
        "uncovered": state.uncovered,
    }
