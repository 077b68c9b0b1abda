"""The scheduler core's state: frozen records in persistent maps, read-only accessors, view().

Pure values only; imports stdlib typing, attrs, immutables, the rerooting map and reflowes.events
(no clock, no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
import immutables
from reflowes.engine.placement import Bucket, BucketKey, SortedIndex
from reflowes.engine.pmap import RerootMap
from reflowes.events.model import FileRef, SchedulerConfigured, TaskState
from reflowes.events.resources import GiB, Resources

Free = tuple[float, int, int, int]  # (cpu, mem, disk, gpu): an alloc's free room, internal
Bound = tuple[float, float, float, float]  # a lower bound per resource (may be infinite)


def as_free(r: Resources) -> Free:
    return (r.cpu, r.mem, r.disk, r.gpu)


def free_size(f: Free) -> float:
    """Resources.size() of a Free tuple (same formula, no object built)."""
    return f[0] + f[1] / (8 * GiB) + f[3] * 8 + f[2] / (1 << 40)


def fits(need: Free, room: Free) -> bool:
    """Resources.fits_in on Free tuples."""
    return (need[0] <= room[0] + 1e-9 and need[1] <= room[1] and need[2] <= room[2]
            and need[3] <= room[3])


# Records are immutable NamedTuples rather than frozen attrs classes: the core builds several
# per event, and a 19-field frozen attrs instance costs ~3x a NamedTuple (benchmarks/README.md).
# The hot paths (transition.py, core.py) rebuild them with tuple.__new__ from slices of the old
# record, so their field order is part of the code: tests/test_core_scenarios.py pins it.


class ExecSlot(NamedTuple):
    """An assigned-but-unfinished attempt: what the shell must have running."""

    task_id: str
    alloc_id: str
    attempt: int
    resources: Resources


class AttemptRecord(NamedTuple):
    """One attempt of a task; kept after it ends (lost, OOM, exit 75, done, failed)."""

    attempt: int
    resources: Resources
    state: TaskState
    alloc_id: str | None = None
    exec_id: str | None = None
    reason: str | None = None
    exit_code: int | None = None


NO_RESULT: Mapping[str, FileRef] = immutables.Map()


class TaskRecord(NamedTuple):
    """A task's current standing plus every attempt; `state` is that of the current attempt."""

    task_id: str
    run_id: str
    key: str
    ident: str
    priority: int
    declared: Resources
    resources: Resources  # of the current attempt (OOM retries raise mem)
    state: TaskState
    attempt: int
    attempts: tuple[AttemptRecord, ...]
    submitted_at: float
    lost: int = 0
    ooms: int = 0
    temps: int = 0
    alloc_id: str | None = None
    exec_id: str | None = None
    error: str | None = None
    exit_code: int | None = None
    result: Mapping[str, FileRef] = NO_RESULT


class AllocRecord(NamedTuple):
    """A live alloc: what was granted, what is free, which execs it holds, since when idle."""

    alloc_id: str
    request_id: str
    resources: Resources
    free: Free
    execs: frozenset[str]
    granted_at: float
    idle_since: float | None


class RequestRecord(NamedTuple):
    """An outstanding AllocRequested, and the pending tasks (counts per bucket) it was for."""

    request_id: str
    resources: Resources
    minimum: Resources
    covers: tuple[tuple[BucketKey, int], ...]
    requested_at: float


_EMPTY: RerootMap[Any, Any] = RerootMap()  # shared: an empty RerootMap is never grown in place
_NO_ITEMS = SortedIndex()
STATES: tuple[TaskState, ...] = tuple(TaskState)
STATE_INDEX: dict[TaskState, int] = {s: i for i, s in enumerate(STATES)}
_ZERO_COUNTS: tuple[int, ...] = (0,) * len(STATES)

# Bucket keys in placement order: groups of equal (priority, size), in (priority, size) order;
# per group, the least of each resource over it and every later group (a room below it fits no
# key from there on); and the keys listed. Derived from `buckets`: it may still list keys of
# buckets emptied since it was built, never lacks a live one.
BucketOrder = tuple[tuple[tuple[BucketKey, ...], ...], tuple[Bound, ...], frozenset[BucketKey]]


class SchedulerState(NamedTuple):
    """Everything the core knows. Replace, never mutate: step() returns a new one."""

    config: SchedulerConfigured | None = None
    now: float = 0.0
    tasks: RerootMap[str, TaskRecord] = _EMPTY
    allocs: RerootMap[str, AllocRecord] = _EMPTY
    gone: RerootMap[str, str] = _EMPTY  # alloc id -> "released" | "died: <reason>"
    execs: RerootMap[str, ExecSlot] = _EMPTY
    requests: RerootMap[str, RequestRecord] = _EMPTY
    buckets: RerootMap[BucketKey, Bucket] = _EMPTY
    by_free: SortedIndex = _NO_ITEMS  # (free size, alloc id) of live allocs
    idle: SortedIndex = _NO_ITEMS  # (idle since, alloc id) of live allocs with no exec
    counts: tuple[int, ...] = _ZERO_COUNTS  # tasks per TaskState, in STATES order
    pending: int = 0
    next_seq: int = 0
    next_request: int = 1
    last_submit_at: float | None = None
    uncovered: int = 0  # pending tasks no outstanding request is for (sum over buckets)
    order: BucketOrder | None = None  # derived from `buckets`, built when placement needs it


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
    d = t._asdict()
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
