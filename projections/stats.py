"""Scheduler Stats, a pure fold: totals, per alloc, and per task attempt (every attempt kept).

Unlike Reflow, whose stats are keyed by flow and let a retry overwrite its predecessor, each
(task id, attempt) has its own record. Imports only reflowes.events, msgspec and the stdlib.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from reflowes.events import model as m
from reflowes.events.model import Recorded, TaskState
from reflowes.events.resources import Resources
from reflowes.projections.plain import plain
from reflowes.projections.records import Records, Wire, encode, wire_decoder

_LIVE = (TaskState.ASSIGNED, TaskState.RUNNING)


class AllocStats(msgspec.Struct, array_like=True, gc=False):
    """One alloc: what it was granted, what is in use on it now, whether it is gone."""

    alloc_id: str
    resources: Resources
    granted_at: float
    dead: bool = False
    released: bool = False
    reason: str | None = None
    task_ids: list[str] = msgspec.field(default_factory=list)
    # exec id -> resources of the attempts placed here and not over (kept when the alloc
    # dies: its resources are gone with it). A map, not a running total: Resources
    # arithmetic costs ~2 us an operation, and the fold does two per task.
    in_use: dict[str, Resources] = msgspec.field(default_factory=dict)

    @property
    def available(self) -> Resources:
        """What is free on the alloc now."""
        free = self.resources
        for r in self.in_use.values():
            free = free - r
        return free


class TaskAttempt(msgspec.Struct, array_like=True, gc=False):
    """One attempt of one task, as the scheduler saw it."""

    task_id: str
    attempt: int
    ident: str
    run_id: str
    key: str
    resources: Resources
    state: TaskState = TaskState.PENDING
    type: str = "exec"
    error: str | None = None
    exec_id: str | None = None
    alloc_id: str | None = None
    exit_code: int | None = None


class StatsState(msgspec.Struct, array_like=True, gc=False):
    """The whole fold; `attempts` maps task id -> attempt number -> record.

    Deliberately no exec -> attempt index: exec events name their task, and every record
    here is decoded again when a snapshot is opened.
    """

    total_allocs: int = 0
    total_tasks: int = 0
    allocs: Records[AllocStats] = msgspec.field(default_factory=lambda: Records(AllocStats))
    attempts: Records[dict[int, TaskAttempt]] = msgspec.field(
        default_factory=lambda: Records(dict[int, TaskAttempt]))

    def attempt(self, task_id: str, attempt: int) -> TaskAttempt:
        """The record of one attempt (KeyError when unknown)."""
        return self.attempts[task_id][attempt]

    def latest(self, task_id: str) -> TaskAttempt:
        """The newest attempt of a task."""
        per = self.attempts[task_id]
        return per[max(per)]


def initial() -> StatsState:
    """The empty Stats."""
    return StatsState()


def _end(st: StatsState, att: TaskAttempt, state: TaskState, error: str | None) -> None:
    """Close an attempt; the first close hands its resources back to its alloc."""
    if att.state in _LIVE and att.alloc_id is not None:
        alloc = st.allocs.get(att.alloc_id)
        if alloc is not None and not alloc.dead and att.exec_id is not None:
            alloc.in_use.pop(att.exec_id, None)
    att.state = state
    if error is not None:
        att.error = error


def _submitted(st: StatsState, ev: m.TaskSubmitted, at: float) -> None:
    st.total_tasks += 1
    st.attempts[ev.task_id] = {
        1: TaskAttempt(ev.task_id, 1, ev.ident, ev.run_id, ev.key, ev.resources)
    }


def _attempt_for(st: StatsState, task_id: str, attempt: int) -> TaskAttempt | None:
    per = st.attempts.get(task_id)
    if per is None:
        return None
    att = per.get(attempt)
    if att is None:
        # The core numbers attempts itself; adopt its number for a still-unplaced attempt.
        last = per[max(per)]
        if last.state is not TaskState.PENDING or last.alloc_id is not None:
            return None
        del per[last.attempt]
        last.attempt = attempt
        per[attempt] = att = last
    return att


def _assigned(st: StatsState, ev: m.TaskAssigned, at: float) -> None:
    att = _attempt_for(st, ev.task_id, ev.attempt)
    if att is None:
        return
    att.state = TaskState.ASSIGNED
    att.alloc_id = ev.alloc_id
    att.exec_id = ev.exec_id
    att.resources = ev.resources
    alloc = st.allocs.get(ev.alloc_id)
    if alloc is not None:
        alloc.in_use[ev.exec_id] = ev.resources
        alloc.task_ids.append(ev.task_id)


def _requeued(st: StatsState, ev: m.TaskRequeued, at: float) -> None:
    per = st.attempts.get(ev.task_id)
    if per is None:
        return
    prev = per[max(per)]
    if prev.state not in (TaskState.DONE, TaskState.FAILED, TaskState.LOST):
        state = TaskState.LOST if "lost" in ev.reason else TaskState.FAILED
        _end(st, prev, state, None)
    if prev.error is None:  # the exec's own error, when it gave one, says more than the reason
        prev.error = ev.reason
    per[ev.attempt] = TaskAttempt(
        ev.task_id, ev.attempt, prev.ident, prev.run_id, prev.key, ev.resources
    )


def _finished(st: StatsState, ev: m.TaskFinished, at: float) -> None:
    per = st.attempts.get(ev.task_id)
    if per is None:
        return
    att = per.get(ev.attempt) or per[max(per)]
    if ev.ok:
        state = TaskState.DONE
    elif att.state is TaskState.LOST or (ev.error or "").startswith("lost "):
        state = TaskState.LOST  # lost once too often: the task failed, its last attempt was lost
    else:
        state = TaskState.FAILED
    _end(st, att, state, ev.error)
    if ev.exit_code is not None:
        att.exit_code = ev.exit_code


def _exec_attempt(st: StatsState, task_id: str, exec_id: str) -> TaskAttempt | None:
    """The attempt that ran as `exec_id` (exec events name their task; a task has few attempts)."""
    per = st.attempts.get(task_id)
    if per is not None:
        for att in reversed(per.values()):
            if att.exec_id == exec_id:
                return att
    return None


def _started(st: StatsState, ev: m.ExecStarted | m.ExecCreated, at: float) -> None:
    att = _exec_attempt(st, ev.task_id, ev.exec_id)
    if att is not None and att.state is TaskState.ASSIGNED:
        att.state = TaskState.RUNNING


def _created(st: StatsState, ev: m.ExecCreated, at: float) -> None:
    if ev.started:  # made and started at once: no ExecStarted follows
        _started(st, ev, at)


def _exited(st: StatsState, ev: m.ExecExited, at: float) -> None:
    att = _exec_attempt(st, ev.task_id, ev.exec_id)
    if att is not None:
        att.exit_code = ev.exit_code
        if ev.error is not None and att.error is None:
            att.error = ev.error


def _lost(st: StatsState, ev: m.ExecLost, at: float) -> None:
    att = _exec_attempt(st, ev.task_id, ev.exec_id)
    if att is not None and att.state in _LIVE:
        _end(st, att, TaskState.LOST, ev.reason)


def _granted(st: StatsState, ev: m.AllocGranted, at: float) -> None:
    st.total_allocs += 1
    st.allocs[ev.alloc_id] = AllocStats(ev.alloc_id, ev.resources, at)


def _died(st: StatsState, ev: m.AllocDied, at: float) -> None:
    alloc = st.allocs.get(ev.alloc_id)
    if alloc is not None:
        alloc.dead = True
        alloc.reason = ev.reason


def _released(st: StatsState, ev: m.AllocReleased, at: float) -> None:
    alloc = st.allocs.get(ev.alloc_id)
    if alloc is not None:
        alloc.released = True
        alloc.reason = ev.reason


HANDLERS: dict[type, Callable[[StatsState, Any, float], None]] = {
    m.TaskSubmitted: _submitted,
    m.TaskAssigned: _assigned,
    m.TaskRequeued: _requeued,
    m.TaskFinished: _finished,
    m.ExecCreated: _created,
    m.ExecStarted: _started,
    m.ExecExited: _exited,
    m.ExecLost: _lost,
    m.AllocGranted: _granted,
    m.AllocDied: _died,
    m.AllocReleased: _released,
}


def apply(state: StatsState, rec: Recorded) -> StatsState:
    """Fold one recorded event into the Stats (in place) and return it."""
    handler = HANDLERS.get(type(rec.event))
    if handler is not None:
        handler(state, rec.event, rec.at)
    return state


def to_dict(state: StatsState) -> dict[str, Any]:
    """JSON-ready form: totals, allocs by id, and a flat list of attempts."""
    return {
        "total_allocs": state.total_allocs,
        "total_tasks": state.total_tasks,
        "allocs": {
            k: {**plain(a), "available": plain(a.available)} for k, a in state.allocs.items()
        },
        "attempts": [
            plain(per[n]) for _, per in sorted(state.attempts.items()) for n in sorted(per)
        ],
    }


_ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.LOST)
_wire = wire_decoder(tuple[int, int, Wire, Wire])


def dumps(state: StatsState) -> bytes:
    """Snapshot bytes (msgpack); gone allocs and ended tasks go into cold segments."""
    allocs = state.allocs.freeze(lambda a: a.dead or a.released)
    attempts = state.attempts.freeze(lambda per: per[max(per)].state in _ENDED)
    return encode((state.total_allocs, state.total_tasks, allocs, attempts))


def loads(blob: bytes) -> StatsState:
    """The state from snapshot bytes (cold records stay encoded until needed)."""
    total_allocs, total_tasks, allocs, attempts = _wire.decode(blob)
    return StatsState(total_allocs, total_tasks, Records.unfreeze(AllocStats, allocs),
                      Records.unfreeze(dict[int, TaskAttempt], attempts))
