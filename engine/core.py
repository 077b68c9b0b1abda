"""The pure scheduler core: step(state, event, at) -> (state, decisions). A fold over facts.

Imports no clock, no randomness, no I/O: only stdlib heapq/math, attrs, immutables and
reflowes.events. Everything it decides is a decision event; the shell performs them.

Theory (the rules of the state machine)
  * Time is `at` of the fact being stepped (never read from a clock); it never goes backwards
    (now = max(now, at)). Facts of kinds the core does not consume, and decisions fed back
    from a log, leave the state untouched and decide nothing.
  * A fact that does not fit (unknown exec, unknown request, duplicate task, ...) raises
    CoreError; since every structure is persistent, the state given is left as it was.
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
  * Requests: when tasks are left unplaced, the drain time has passed since the last
    submission, and fewer than max_pending_allocs requests are outstanding, the leftovers
    not already covered by outstanding requests are packed first-fit-decreasing into bins
    of max_alloc; one AllocRequested per bin (ids r1, r2, ...).
  * An alloc with no exec for max_alloc_idle is released; one holding execs never is.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

from reflowes.engine.placement import Bucket, BucketKey, bucket_key, new_bucket, pack
from reflowes.engine.schedstate import (
    AllocRecord,
    AttemptRecord,
    ExecSlot,
    Free,
    RequestRecord,
    SchedulerState,
    TaskRecord,
    as_free,
    assigned_execs,
    fits,
    free_size,
    live_allocs,
    outstanding_requests,
    task,
    task_counts,
    view,
)
from reflowes.events.errors import ReflowesError
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    Event,
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
TEMPORARY_EXIT = 75


class CoreError(ReflowesError, ValueError):
    """A fact that does not fit the scheduler state; the state is left untouched."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def initial() -> SchedulerState:
    """The state before any event."""
    return SchedulerState()


class _Tx:
    """One step in progress: working references to persistent structures, then build()."""

    def __init__(self, s: SchedulerState, at: float) -> None:
        self.s = s
        self.config = s.config
        self.now = max(s.now, at)
        self.tasks, self.allocs, self.gone = s.tasks, s.allocs, s.gone
        self.execs, self.requests, self.buckets = s.execs, s.requests, s.buckets
        self.by_free, self.idle, self.counts = s.by_free, s.idle, s.counts
        self.pending, self.next_seq, self.next_request = s.pending, s.next_seq, s.next_request
        self.last_submit_at = s.last_submit_at
        self.uncovered = s.uncovered
        self.seq0 = s.next_seq  # tasks enqueued at or after this are new in this step
        self.grown: set[str] = set()  # allocs whose free space grew in this step
        self.touched: set[tuple[int, float, int, int, int]] = set()  # buckets enqueued to
        self.out: list[Event] = []

    def build(self) -> SchedulerState:
        return SchedulerState(
            self.config, self.now, self.tasks, self.allocs, self.gone, self.execs,
            self.requests, self.buckets, self.by_free, self.idle, self.counts, self.pending,
            self.next_seq, self.next_request, self.last_submit_at, self.uncovered,
        )

    # -------------------------------------------------------------- records

    def put_task(self, old: TaskRecord | None, new: TaskRecord) -> None:
        if old is None or old.state != new.state:
            c = self.counts
            if old is not None:
                c = c.set(old.state, c[old.state] - 1)
            self.counts = c.set(new.state, c[new.state] + 1)
        self.tasks = self.tasks.set(new.task_id, new)

    def put_alloc(self, old: AllocRecord, new: AllocRecord | None) -> None:
        """Replace an alloc record (None: it is gone), keeping both indexes in step."""
        a = old.alloc_id
        if new is None:
            self.by_free = self.by_free.remove((free_size(old.free), a))
        elif new.free != old.free:
            self.by_free = self.by_free.replace((free_size(old.free), a),
                                                (free_size(new.free), a))
        if old.idle_since != (None if new is None else new.idle_since):
            if old.idle_since is not None:
                self.idle = self.idle.remove((old.idle_since, a))
            if new is not None and new.idle_since is not None:
                self.idle = self.idle.add((new.idle_since, a))
        self.allocs = self.allocs.delete(a) if new is None else self.allocs.set(a, new)

    def put_bucket(self, key: BucketKey, old: Bucket | None, new: Bucket | None) -> None:
        """Replace a bucket (None: drop it), keeping the uncovered total in step."""
        self.uncovered += (new.uncovered if new else 0) - (old.uncovered if old else 0)
        self.buckets = self.buckets.delete(key) if new is None else self.buckets.set(key, new)

    def enqueue(self, t: TaskRecord) -> None:
        key = bucket_key(t.priority, t.resources)
        old = self.buckets.get(key)
        self.put_bucket(key, old, (old or new_bucket(t.priority, t.resources))
                        .push(self.next_seq, t.task_id))
        self.next_seq += 1
        self.pending += 1
        self.touched.add(key)

    # -------------------------------------------------------------- attempts

    def end_attempt(self, t: TaskRecord, state: TaskState, reason: str | None,
                    exit_code: int | None = None) -> tuple[AttemptRecord, ...]:
        last = t.attempts[-1]
        done = AttemptRecord(last.attempt, last.resources, state, last.alloc_id, last.exec_id,
                             reason, exit_code)
        return t.attempts[:-1] + (done,)

    def finish(self, t: TaskRecord, ok: bool, *, error: str | None = None,
               exit_code: int | None = None, result: dict | None = None,  # type: ignore[type-arg]
               lost: bool = False) -> None:
        state = TaskState.DONE if ok else TaskState.FAILED
        attempts = self.end_attempt(t, TaskState.LOST if lost else state, error, exit_code)
        new = TaskRecord(
            t.task_id, t.run_id, t.key, t.ident, t.priority, t.declared, t.resources, state,
            t.attempt, attempts, t.submitted_at, t.lost + lost, t.ooms, t.temps, None, None, error,
            exit_code, result or {},
        )
        self.put_task(t, new)
        self.out.append(TaskFinished(task_id=t.task_id, attempt=t.attempt, ok=ok,
                                     result=result or {}, error=error, exit_code=exit_code))

    def requeue(self, t: TaskRecord, resources: Resources, reason: str, ended: TaskState,
                exit_code: int | None = None, *, lost: int = 0, ooms: int = 0,
                temps: int = 0) -> None:
        attempts = self.end_attempt(t, ended, reason, exit_code) + (
            AttemptRecord(t.attempt + 1, resources, TaskState.PENDING),
        )
        new = TaskRecord(
            t.task_id, t.run_id, t.key, t.ident, t.priority, t.declared, resources,
            TaskState.PENDING, t.attempt + 1, attempts, t.submitted_at, t.lost + lost,
            t.ooms + ooms, t.temps + temps,
        )
        self.put_task(t, new)
        self.enqueue(new)
        self.out.append(TaskRequeued(task_id=t.task_id, attempt=new.attempt,
                                     resources=resources, reason=reason))

    def release_exec(self, exec_id: str, free_alloc: bool) -> TaskRecord:
        """Forget an exec (its attempt is over) and give its resources back to its alloc."""
        slot = self.execs[exec_id]
        self.execs = self.execs.delete(exec_id)
        if free_alloc:
            a = self.allocs[slot.alloc_id]
            execs = a.execs - {exec_id}
            f, r = a.free, slot.resources
            free = (round(f[0] + r.cpu, 6), f[1] + r.mem, f[2] + r.disk, f[3] + r.gpu)
            self.put_alloc(a, AllocRecord(a.alloc_id, a.request_id, a.resources, free, execs,
                                          a.granted_at, None if execs else self.now))
            self.grown.add(a.alloc_id)
        return self.tasks[slot.task_id]

    def lose(self, exec_id: str, reason: str, free_alloc: bool) -> None:
        t = self.release_exec(exec_id, free_alloc)
        assert self.config is not None
        if t.lost + 1 >= self.config.max_lost:
            self.finish(t, False, error=f"lost {t.lost + 1} times: {reason}", lost=True)
        else:
            self.requeue(t, t.resources, f"lost: {reason}", TaskState.LOST, lost=1)

    # -------------------------------------------------------------- placement

    def best_fit(self, need: Free, weight: float, among: set[str] | None) -> str | None:
        """The live alloc with the least free room that fits `need` (among some, or all)."""
        if among is not None:
            best = None
            for a in among:
                rec = self.allocs.get(a)
                if rec is not None and fits(need, rec.free):
                    k = (free_size(rec.free), a)
                    if best is None or k < best:
                        best = k
            return None if best is None else best[1]
        allocs = self.allocs
        for _, a in self.by_free.irange((weight - 1e-9, "")):
            if fits(need, allocs[a].free):
                return str(a)
        return None

    def assign(self, t: TaskRecord, alloc_id: str) -> None:
        a = self.allocs[alloc_id]
        exec_id = f"{t.task_id}.{t.attempt}"
        f, r = a.free, t.resources
        free = (round(f[0] - r.cpu, 6), f[1] - r.mem, f[2] - r.disk, f[3] - r.gpu)
        if free[0] < -1e-9 or free[1] < 0 or free[2] < 0 or free[3] < 0:
            raise AssertionError(f"over-commit of {alloc_id}")  # a bug, never a bad fact
        self.put_alloc(a, AllocRecord(a.alloc_id, a.request_id, a.resources, free,
                                      a.execs | {exec_id}, a.granted_at, None))
        last = t.attempts[-1]
        attempts = t.attempts[:-1] + (
            AttemptRecord(last.attempt, last.resources, TaskState.ASSIGNED, alloc_id, exec_id),
        )
        self.put_task(t, TaskRecord(
            t.task_id, t.run_id, t.key, t.ident, t.priority, t.declared, t.resources,
            TaskState.ASSIGNED, t.attempt, attempts, t.submitted_at, t.lost, t.ooms, t.temps,
            alloc_id, exec_id,
        ))
        self.execs = self.execs.set(exec_id, ExecSlot(t.task_id, alloc_id, t.attempt, t.resources))
        self.out.append(TaskAssigned(task_id=t.task_id, alloc_id=alloc_id, attempt=t.attempt,
                                     exec_id=exec_id, resources=t.resources))

    def place(self) -> None:
        """Assign pending tasks in (priority, size, seq) order while any fits somewhere."""
        if not self.by_free or not self.buckets:
            return
        seq0 = self.seq0
        heap = []
        if self.grown:
            # Old pending tasks fit nowhere but (maybe) in the allocs that grew this step.
            rooms = [self.allocs[a].free for a in self.grown if a in self.allocs]
            if len(rooms) == 1:  # the usual case: one exec ended
                c, m, d, g = rooms[0]
                c += 1e-9
                for k, b in self.buckets.items():
                    n = b.need
                    if n[0] <= c and n[1] <= m and n[2] <= d and n[3] <= g or b.items[b.head][0] >= seq0:
                        heap.append((b.priority, b.weight, b.items[b.head][0], k))
            else:
                for k, b in self.buckets.items():
                    head = b.items[b.head][0]
                    if head >= seq0 or any(fits(b.need, r) for r in rooms):
                        heap.append((b.priority, b.weight, head, k))
        else:
            for k in self.touched:
                b = self.buckets.get(k)
                if b is not None and b.items[b.head][0] >= seq0:
                    heap.append((b.priority, b.weight, b.items[b.head][0], k))
        if not heap:
            return
        heapq.heapify(heap)
        grown = self.grown
        while heap:
            _, _, seq, k = heapq.heappop(heap)
            old = self.buckets[k]
            alloc = self.best_fit(old.need, old.weight, None if seq >= seq0 else grown)
            if alloc is None:
                continue  # same shape behind it fits nowhere either
            _, tid = old.peek()
            b = old.pop()
            self.pending -= 1
            if b.waiting:
                self.put_bucket(k, old, b)
                heapq.heappush(heap, (b.priority, b.weight, b.peek()[0], k))
            else:
                self.put_bucket(k, old, None)
            self.assign(self.tasks[tid], alloc)

    def request(self) -> None:
        """Ask for allocs sized to the uncovered leftovers, once the drain time has passed."""
        cfg = self.config
        if cfg is None or not self.pending:
            return
        room = cfg.max_pending_allocs - len(self.requests)
        if room <= 0 or not self.uncovered or not self.drained():
            return
        left = sorted(
            ((b.priority, -b.weight, k), b.shape, b.uncovered)
            for k, b in self.buckets.items() if b.uncovered
        )
        if not left:
            return
        bins = pack([(k[2], shape, n) for k, shape, n in left], cfg.max_alloc, room)
        floor = cfg.min_alloc.min(cfg.max_alloc)
        for bn in bins:
            rid = f"r{self.next_request}"
            self.next_request += 1
            want = bn.used.max(floor).min(cfg.max_alloc)
            minimum = floor.max(bn.largest)
            for key, n in bn.counts:
                old = self.buckets[key]
                self.put_bucket(key, old, old.cover(n))
            self.requests = self.requests.set(
                rid, RequestRecord(rid, want, minimum, bn.counts, self.now))
            self.out.append(AllocRequested(request_id=rid, resources=want, minimum=minimum))

    def drained(self) -> bool:
        assert self.config is not None
        last = self.last_submit_at
        return last is None or self.now >= last + self.config.drain_timeout

    def expire(self) -> None:
        """Release allocs idle for max_alloc_idle at `now`."""
        if self.config is None:
            return
        limit = self.config.max_alloc_idle
        while self.idle:
            since, a = self.idle.first()
            if since + limit > self.now:
                break
            self.put_alloc(self.allocs[a], None)
            self.gone = self.gone.set(a, "released")
            self.out.append(AllocReleased(alloc_id=a, reason="idle"))



# ------------------------------------------------------------------ fact handlers


def _need_config(tx: _Tx, kind: str) -> SchedulerConfigured:
    if tx.config is None:
        raise CoreError(kind, "no SchedulerConfigured before it")
    return tx.config


def _exec_of(tx: _Tx, kind: str, exec_id: str, task_id: str) -> ExecSlot:
    slot = tx.execs.get(exec_id)
    if slot is None:
        raise CoreError(kind, f"unknown or finished exec {exec_id!r}")
    if slot.task_id != task_id:
        raise CoreError(kind, f"exec {exec_id!r} belongs to task {slot.task_id!r}, not {task_id!r}")
    return slot


def _configured(tx: _Tx, ev: SchedulerConfigured) -> None:
    tx.config = ev


def _submitted(tx: _Tx, ev: TaskSubmitted) -> None:
    cfg = _need_config(tx, ev.kind)
    if ev.task_id in tx.tasks:
        raise CoreError(ev.kind, f"task {ev.task_id!r} submitted twice")
    r = ev.resources
    if r.is_negative():
        raise CoreError(ev.kind, f"task {ev.task_id!r} asks for negative resources ({r})")
    t = TaskRecord(ev.task_id, ev.run_id, ev.key, ev.ident, ev.priority, r, r,
                   TaskState.PENDING, 1, (AttemptRecord(1, r, TaskState.PENDING),), tx.now)
    tx.put_task(None, t)
    tx.last_submit_at = tx.now
    if not r.fits_in(cfg.max_alloc):
        tx.finish(t, False, error=f"task needs {r} but the largest alloc is {cfg.max_alloc}")
    else:
        tx.enqueue(t)


def _granted(tx: _Tx, ev: AllocGranted) -> None:
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
    rec = AllocRecord(ev.alloc_id, ev.request_id, ev.resources, as_free(ev.resources),
                      frozenset(), tx.now, tx.now)
    tx.allocs = tx.allocs.set(ev.alloc_id, rec)
    tx.by_free = tx.by_free.add((free_size(rec.free), ev.alloc_id))
    tx.idle = tx.idle.add((tx.now, ev.alloc_id))
    tx.grown.add(ev.alloc_id)


def _died(tx: _Tx, ev: AllocDied) -> None:
    a = tx.allocs.get(ev.alloc_id)
    if a is None:
        if ev.alloc_id in tx.gone:
            return  # already released or dead: nothing more is lost
        raise CoreError(ev.kind, f"unknown alloc {ev.alloc_id!r}")
    _need_config(tx, ev.kind)
    for exec_id in sorted(a.execs):  # sorted: set order depends on string hashing
        tx.lose(exec_id, f"alloc {ev.alloc_id} died: {ev.reason}", free_alloc=False)
    tx.put_alloc(a, None)
    tx.gone = tx.gone.set(ev.alloc_id, f"died: {ev.reason}")


def _started(tx: _Tx, ev: ExecStarted) -> None:
    _exec_of(tx, ev.kind, ev.exec_id, ev.task_id)
    t = tx.tasks[ev.task_id]
    if t.state == TaskState.RUNNING:
        return  # re-attached after a restart: already known to run
    last = t.attempts[-1]
    attempts = t.attempts[:-1] + (
        AttemptRecord(last.attempt, last.resources, TaskState.RUNNING, last.alloc_id,
                      last.exec_id),
    )
    tx.put_task(t, TaskRecord(
        t.task_id, t.run_id, t.key, t.ident, t.priority, t.declared, t.resources,
        TaskState.RUNNING, t.attempt, attempts, t.submitted_at, t.lost, t.ooms, t.temps,
        t.alloc_id, t.exec_id,
    ))


def _exited(tx: _Tx, ev: ExecExited) -> None:
    _exec_of(tx, ev.kind, ev.exec_id, ev.task_id)
    cfg = _need_config(tx, ev.kind)
    t = tx.release_exec(ev.exec_id, free_alloc=True)
    code = ev.exit_code
    if ev.oom:
        _oom(tx, cfg, t, ev)
    elif code == 0 and ev.error is None:
        tx.finish(t, True, exit_code=0, result=dict(ev.result))
    elif code == TEMPORARY_EXIT:
        if t.temps < cfg.max_temp_retries:
            tx.requeue(t, t.resources, f"temporary failure (exit {code})", TaskState.FAILED,
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


def _oom(tx: _Tx, cfg: SchedulerConfigured, t: TaskRecord, ev: ExecExited) -> None:
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
        tx.requeue(t, Resources(r.cpu, mem, r.disk, r.gpu), what, TaskState.FAILED,
                   ev.exit_code, ooms=1)


def _exec_lost(tx: _Tx, ev: ExecLost) -> None:
    _exec_of(tx, ev.kind, ev.exec_id, ev.task_id)
    _need_config(tx, ev.kind)
    tx.lose(ev.exec_id, ev.reason, free_alloc=True)


def _tick(tx: _Tx, ev: Event) -> None:
    pass  # expiry happens for every consumed fact


_HANDLERS: dict[str, Callable[[_Tx, Event], None]] = {
    SchedulerConfigured.kind: _configured,  # type: ignore[dict-item]
    TaskSubmitted.kind: _submitted,  # type: ignore[dict-item]
    AllocGranted.kind: _granted,  # type: ignore[dict-item]
    AllocDied.kind: _died,  # type: ignore[dict-item]
    ExecStarted.kind: _started,  # type: ignore[dict-item]
    ExecExited.kind: _exited,  # type: ignore[dict-item]
    ExecLost.kind: _exec_lost,  # type: ignore[dict-item]
    "clock.tick": _tick,
}


# ------------------------------------------------------------------ the API


def step(state: SchedulerState, event: Event, at: float) -> tuple[SchedulerState, list[Event]]:
    """Apply one recorded event at time `at`; the new state and the decisions it implies."""
    handler = _HANDLERS.get(event.kind)
    if handler is None:
        return state, []
    tx = _Tx(state, at)
    tx.expire()
    handler(tx, event)
    tx.place()
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
    if state.idle:
        times.append(state.idle.first()[0] + cfg.max_alloc_idle)
    last = state.last_submit_at
    if (last is not None and state.now < last + cfg.drain_timeout
            and len(state.requests) < cfg.max_pending_allocs
            and state.uncovered):
        times.append(last + cfg.drain_timeout)
    return min(times) if times else None
