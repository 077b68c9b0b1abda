"""The pure scheduler core: step(state, event, at) -> (state, decisions). A fold over facts.

Imports no clock, no randomness, no I/O: only stdlib heapq/math, attrs, immutables, the core's
own modules and reflowes.events. Everything it decides is a decision event; the shell performs
them. Compiled by mypyc at install (setup.py); the same code runs as plain Python.

Theory (the rules of the state machine)
  * Time is `at` of the fact being stepped (never read from a clock); it never goes backwards
    (now = max(now, at)). Facts of kinds the core does not consume, and decisions fed back
    from a log, leave the state untouched and decide nothing.
  * A fact that does not fit (unknown exec, unknown request, duplicate task, ...) raises
    CoreError; since every structure is persistent (rerooting maps, engine/pmap.py), the
    state given is left as it was.
  * Each fact is handled in four phases: (1) idle allocs whose idle time has passed at `now`
    are released; (2) the fact is applied; (3) pending tasks are placed; (4) allocs are
    requested for what is left.
  * A task is in exactly one TaskState (that of its current attempt): pending -> assigned
    -> running -> done | failed, or back to pending as attempt+1 (lost, OOM, exit 75).
    Lost, OOM and exit-75 retries each have a cap; past it the task fails. Every attempt
    stays on record.
  * Placement: pending tasks are taken by (priority, size, enqueue order); each goes to the
    best-fitting live alloc (smallest free Resources.size() that fits in every dimension).
    Invariant after every step: no pending task fits the free resources of any live alloc,
    and no alloc is over-committed. So only allocs whose free space grew in this step, and
    tasks enqueued in this step, need to be looked at: cost O(buckets + log n) per fact.
  * Pending tasks live in FIFO buckets, one per (priority, shape); a requeued attempt
    queues as of its requeue. The number of shapes is small, so buckets are few.
  * Requests: when tasks are left unplaced, the drain time has passed since the last
    submission, and fewer than max_pending_allocs requests are outstanding, the leftovers
    not already covered by outstanding requests are packed first-fit-decreasing into bins
    of max_alloc (higher priority first); one AllocRequested per bin (ids r1, r2, ...),
    asking for the bin's sum (at least min_alloc) with its largest task (at least
    min_alloc, capped) as the minimum. A request covers, per bucket, the tasks packed into
    it until it is granted; the grant then places whatever fits, by priority.
  * An alloc with no exec for max_alloc_idle is released; one holding execs never is.
    AllocDied for an alloc already released or dead is accepted and changes nothing.
  * Retries: lost (alloc died, exec lost) up to max_lost lost attempts; OOM up to
    max_oom_retries with mem = max(declared, ceil(oom_factor x peak)), or oom_factor x the
    mem that failed when that is no larger, capped by max_alloc.mem (failing at once when
    the cap is what failed); exit 75 up to max_temp_retries with the same resources. Any
    other exit, or exit 0 with an error, fails with the exit code and stderr tail.
  * A SchedulerConfigured replaces the config; pending tasks larger than its max_alloc fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from reflowes.engine.schedstate import (
    AllocRecord,
    AttemptRecord,
    ExecSlot,
    SchedulerState,
    TaskRecord,
    as_free,
    assigned_execs,
    fits,
    live_allocs,
    outstanding_requests,
    task,
    task_counts,
    view,
)
from reflowes.engine.transition import Transition
from reflowes.events.errors import ReflowesError
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    Event,
    ExecCreated,
    ExecExited,
    ExecLost,
    ExecStarted,
    SchedulerConfigured,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
    TaskState,
    TaskSubmitted,
)
from reflowes.events.resources import Resources, format_size

__all__ = [
    "DECISION_KINDS",
    "CoreError",
    "SchedulerState",
    "assigned_execs",
    "deadline",
    "initial",
    "live_allocs",
    "outstanding_requests",
    "replay",
    "step",
    "task",
    "task_counts",
    "view",
]

DECISION_KINDS: frozenset[str] = frozenset(
    {TaskAssigned.kind, TaskRequeued.kind, TaskFinished.kind, AllocRequested.kind,
     AllocReleased.kind}
)
TEMPORARY_EXIT: Final = 75
_PENDING: Final = TaskState.PENDING  # Final: C statics under mypyc (see transition.py)
_RUNNING: Final = TaskState.RUNNING
_FAILED: Final = TaskState.FAILED


class CoreError(ReflowesError, ValueError):
    """A fact that does not fit the scheduler state; the state is left untouched."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def initial() -> SchedulerState:
    """The state before any event."""
    return SchedulerState()


# ------------------------------------------------------------------ fact handlers


# The fact is passed whole: its kind (a class attribute, read by name) only matters for errors.
def _need_config(tx: Transition, ev: Event) -> SchedulerConfigured:
    if tx.config is None:
        raise CoreError(ev.kind, "no SchedulerConfigured before it")
    return tx.config


def _exec_of(tx: Transition, ev: Event, exec_id: str, task_id: str) -> ExecSlot:
    slot = tx.execs.get(exec_id)
    if slot is None:
        raise CoreError(ev.kind, f"unknown or finished exec {exec_id!r}")
    if slot.task_id != task_id:
        raise CoreError(ev.kind,
                        f"exec {exec_id!r} belongs to task {slot.task_id!r}, not {task_id!r}")
    return slot


def _configured(tx: Transition, ev: SchedulerConfigured) -> None:
    tx.config = ev
    # A new invocation may offer smaller allocs: what no longer fits would wait forever.
    largest = as_free(ev.max_alloc)
    for key in sorted(k for k in tx.buckets.keys() if not fits(k[1:], largest)):  # noqa: SIM118
        b = tx.buckets[key]
        for tid in b.task_ids():
            t = tx.tasks[tid]
            tx.finish(t, False, error=f"task needs {t.resources} but the largest alloc is now "
                                      f"{ev.max_alloc}")
        tx.pending -= b.waiting
        tx.put_bucket(key, b, None)


def _submitted(tx: Transition, ev: TaskSubmitted) -> None:
    cfg = _need_config(tx, ev)
    if ev.task_id in tx.tasks:
        raise CoreError(ev.kind, f"task {ev.task_id!r} submitted twice")
    r = ev.resources
    need = as_free(r)  # Resources' own methods would each run a Python frame
    if need[0] < -1e-9 or need[1] < 0 or need[2] < 0 or need[3] < 0:  # r.is_negative()
        raise CoreError(ev.kind, f"task {ev.task_id!r} asks for negative resources ({r})")
    t = TaskRecord(ev.task_id, ev.run_id, ev.key, ev.ident, ev.priority, r, r,
                   _PENDING, 1, (), AttemptRecord(1, r, _PENDING), tx.now)
    tx.put_task(None, t)
    tx.last_submit_at = tx.now
    if not fits(need, as_free(cfg.max_alloc)):  # r.fits_in(cfg.max_alloc)
        tx.finish(t, False, error=f"task needs {r} but the largest alloc is {cfg.max_alloc}")
    else:
        tx.enqueue(t)


def _granted(tx: Transition, ev: AllocGranted) -> None:
    req = tx.requests.get(ev.request_id)
    if req is None:
        raise CoreError(ev.kind, f"no outstanding request {ev.request_id!r}")
    if ev.alloc_id in tx.allocs or ev.alloc_id in tx.gone:
        raise CoreError(ev.kind, f"alloc {ev.alloc_id!r} granted twice")
    if not req.minimum.fits_in(ev.resources):
        raise CoreError(ev.kind, f"granted {ev.resources}, below the minimum {req.minimum}")
    tx.requests = tx.requests.delete(ev.request_id)
    for key, n in req.covers:
        b = tx.buckets.get(key)
        if b is not None:
            tx.put_bucket(key, b, b.cover(-n))
    r = ev.resources
    rec = AllocRecord(ev.alloc_id, ev.request_id, r, r.cpu, r.mem, r.disk, r.gpu, frozenset(),
                      tx.now, tx.now)
    tx.put_alloc(None, rec)
    tx.grown.add(ev.alloc_id)


def _died(tx: Transition, ev: AllocDied) -> None:
    a = tx.allocs.get(ev.alloc_id)
    if a is None:
        if ev.alloc_id in tx.gone:
            return  # already released or dead: nothing more is lost
        raise CoreError(ev.kind, f"unknown alloc {ev.alloc_id!r}")
    _need_config(tx, ev)
    for exec_id in sorted(a.execs):  # sorted: set order depends on string hashing
        tx.lose(exec_id, f"alloc {ev.alloc_id} died: {ev.reason}", free_alloc=False)
    tx.drop_alloc(a)
    tx.gone = tx.gone.set(ev.alloc_id, f"died: {ev.reason}")


def _started(tx: Transition, ev: ExecStarted | ExecCreated) -> None:
    t = tx.tasks[_exec_of(tx, ev, ev.exec_id, ev.task_id).task_id]  # the key's own string
    if t.state == _RUNNING:
        return  # re-attached after a restart: already known to run
    c = t.current
    tx.put_task(t, t.moved(_RUNNING, AttemptRecord(
        c.attempt, c.resources, _RUNNING, c.alloc_id, c.exec_id, c.reason, c.exit_code),
        t.alloc_id, t.exec_id, t.error, t.exit_code, t.result))


def _exited(tx: Transition, ev: ExecExited) -> None:
    exec_id = ev.exec_id
    _exec_of(tx, ev, exec_id, ev.task_id)
    cfg = _need_config(tx, ev)
    t = tx.release_exec(exec_id, free_alloc=True)
    code = ev.exit_code
    if ev.oom:
        _oom(tx, cfg, t, ev)
    elif code == 0 and ev.error is None:
        tx.finish(t, True, exit_code=0, result=dict(ev.result))
    elif code == TEMPORARY_EXIT:
        if t.temps < cfg.max_temp_retries:
            tx.requeue(t, t.resources, f"temporary failure (exit {code})", _FAILED,
                       code, temps=1)
        else:
            tx.finish(t, False, exit_code=code, error=_exit_error(
                f"temporary failure (exit {code}) {t.temps + 1} times", ev))
    else:
        tx.finish(t, False, exit_code=code, error=_exit_error(f"exited with code {code}", ev))


def _exit_error(head: str, ev: ExecExited) -> str:
    msg = head + (f": {ev.error}" if ev.error else "")
    tail = ev.stderr_tail.strip()
    return msg + (f"\n{tail}" if tail else "")


def _oom(tx: Transition, cfg: SchedulerConfigured, t: TaskRecord, ev: ExecExited) -> None:
    cap = cfg.max_alloc.mem
    failed = t.resources.mem
    mem = min(max(t.declared.mem, math.ceil(cfg.oom_factor * ev.peak_mem)), cap)
    if mem <= failed:
        mem = min(max(mem, math.ceil(failed * cfg.oom_factor)), cap)
    what = f"out of memory at {format_size(failed)} (peak {format_size(ev.peak_mem)})"
    if t.ooms >= cfg.max_oom_retries:
        tx.finish(t, False, exit_code=ev.exit_code,
                  error=_exit_error(f"{what}, {t.ooms + 1} times", ev))
    elif mem <= failed:
        tx.finish(t, False, exit_code=ev.exit_code, error=_exit_error(
            f"{what}; already at the largest alloc's memory ({format_size(cap)})", ev))
    else:
        r = t.resources
        tx.requeue(t, Resources(r.cpu, mem, r.disk, r.gpu), what, _FAILED,
                   ev.exit_code, ooms=1)


def _exec_lost(tx: Transition, ev: ExecLost) -> None:
    _exec_of(tx, ev, ev.exec_id, ev.task_id)
    _need_config(tx, ev)
    tx.lose(ev.exec_id, ev.reason, free_alloc=True)


def _tick(tx: Transition, ev: Event) -> None:
    pass  # expiry happens for every consumed fact


_HANDLERS: Final[dict[str, Callable[[Transition, Event], None]]] = {
    SchedulerConfigured.kind: _configured,  # type: ignore[dict-item]
    TaskSubmitted.kind: _submitted,  # type: ignore[dict-item]
    AllocGranted.kind: _granted,  # type: ignore[dict-item]
    AllocDied.kind: _died,  # type: ignore[dict-item]
    ExecStarted.kind: _started,  # type: ignore[dict-item]
    ExecExited.kind: _exited,  # type: ignore[dict-item]
    ExecLost.kind: _exec_lost,  # type: ignore[dict-item]
    "clock.tick": _tick,
}
# An ExecCreated with started=True (a local exec, made and started at once) is also its
# ExecStarted; one without is no fact for the core (the log had only those before).
_CREATED_STARTED: Final[Callable[[Transition, Event], None]] = _started  # type: ignore[assignment]


# ------------------------------------------------------------------ the API


def step(state: SchedulerState, event: Event, at: float) -> tuple[SchedulerState, list[Event]]:
    """Apply one recorded event at time `at`; the new state and the decisions it implies."""
    handler = _HANDLERS.get(event.kind)
    if handler is None:
        if type(event) is not ExecCreated or not event.started:
            return state, []
        handler = _CREATED_STARTED
    tx = Transition(state, at)
    if state.idle:  # the four phases; each is skipped when it cannot change anything
        tx.expire()
    handler(tx, event)
    if tx.grown or tx.touched:
        tx.place()
    if tx.uncovered:
        tx.request()
    return tx.build(), tx.out


def replay(records: Iterable[tuple[Event, float]]) -> SchedulerState:
    """Fold step over (event, at) pairs, dropping decisions."""
    state = initial()
    for event, at in records:
        state, _ = step(state, event, at)
    return state


def deadline(state: SchedulerState) -> float | None:
    """The earliest time at which a Tick would change something, or None."""
    cfg = state.config
    if cfg is None:
        return None
    times = []
    first = state.idle.first()
    if first is not None:
        times.append(first[0] + cfg.max_alloc_idle)
    last = state.last_submit_at
    if (last is not None and state.now < last + cfg.drain_timeout
            and len(state.requests) < cfg.max_pending_allocs
            and state.uncovered):
        times.append(last + cfg.drain_timeout)
    return min(times) if times else None
