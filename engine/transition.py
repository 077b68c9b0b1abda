"""One step of the scheduler core in progress: record updates, placement, requests, expiry.

Works on references to persistent structures and builds the next SchedulerState at the end, so
an exception half-way leaves the given state as it was. Pure: imports only stdlib heapq, the
core's records and maps and reflowes.events (no clock, no randomness, no I/O).
"""

from __future__ import annotations

import heapq
from typing import Final

from reflowes.engine.decisions import (
    alloc_released,
    alloc_requested,
    task_assigned,
    task_finished,
    task_requeued,
)
from reflowes.engine.placement import Bucket, BucketKey, bucket_key, new_bucket, pack
from reflowes.engine.schedstate import (
    NO_RESULT,
    STATE_INDEX,
    AllocRecord,
    AttemptRecord,
    Bound,
    BucketOrder,
    ExecSlot,
    Free,
    RequestRecord,
    SchedulerState,
    TaskRecord,
    cpu_round,
    fits,
    fits_alloc,
    free_size,
)
from reflowes.events.model import Event, TaskState
from reflowes.events.resources import Resources

# Final: mypyc keeps these in C statics (a module global is a dict lookup, and an enum member
# through its class runs EnumType's attribute hook).
_PENDING: Final = TaskState.PENDING
_ASSIGNED: Final = TaskState.ASSIGNED
_DONE: Final = TaskState.DONE
_FAILED: Final = TaskState.FAILED
_LOST: Final = TaskState.LOST


class Transition:
    """One step in progress: working references to persistent structures, then build()."""

    __slots__ = (
        "allocs", "buckets", "by_free", "config", "counts", "dirty", "execs", "gone", "grown",
        "idle",
        "last_submit_at", "next_request", "next_seq", "now", "order", "out", "pending",
        "requests", "s", "seq0", "tasks", "touched", "uncovered",
    )

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
        self.order = s.order
        self.seq0 = s.next_seq  # tasks enqueued at or after this are new in this step
        self.grown: set[str] = set()  # allocs whose free space grew in this step
        self.touched: set[BucketKey] = set()  # buckets enqueued to
        self.out: list[Event] = []
        # Allocs changed in this step -> their record when it began (None: not live then).
        # The two indexes catch up once (flush), not at every change: an exec ending and the
        # next one starting on the same alloc often leave its free room as it was.
        self.dirty: dict[str, AllocRecord | None] = {}

    def build(self) -> SchedulerState:
        if self.dirty:
            self.flush()
        return SchedulerState(
            self.config, self.now, self.tasks, self.allocs, self.gone, self.execs,
            self.requests, self.buckets, self.by_free, self.idle, self.counts, self.pending,
            self.next_seq, self.next_request, self.last_submit_at, self.uncovered, self.order,
        )

    # -------------------------------------------------------------- records

    def put_task(self, old: TaskRecord | None, new: TaskRecord) -> None:
        if old is None or old.state != new.state:
            c = list(self.counts)
            if old is not None:
                c[STATE_INDEX[old.state]] -= 1
            c[STATE_INDEX[new.state]] += 1
            self.counts = tuple(c)
        self.tasks = self.tasks.set(new.task_id, new)

    def put_alloc(self, old: AllocRecord | None, new: AllocRecord) -> None:
        """Add or replace a live alloc's record; the indexes follow at flush()."""
        a = new.alloc_id
        if a not in self.dirty:
            self.dirty[a] = old
        self.allocs = self.allocs.set(a, new)

    def drop_alloc(self, old: AllocRecord) -> None:
        """The alloc is gone (released or dead)."""
        a = old.alloc_id
        if a not in self.dirty:
            self.dirty[a] = old
        self.allocs = self.allocs.delete(a)

    def flush(self) -> None:
        """Bring by_free and idle up to date with the allocs changed since the last flush."""
        for a, was in self.dirty.items():
            now = self.allocs.get(a)
            if was is None:
                if now is not None:
                    self.by_free = self.by_free.add((now.free_size(), a))
            elif now is None:
                self.by_free = self.by_free.remove((was.free_size(), a))
            else:
                old_size, new_size = was.free_size(), now.free_size()
                if old_size != new_size:
                    self.by_free = self.by_free.replace((old_size, a), (new_size, a))
            old_idle = None if was is None or was.idle_since is None else (was.idle_since, a)
            new_idle = None if now is None or now.idle_since is None else (now.idle_since, a)
            if old_idle != new_idle:
                if old_idle is not None:
                    self.idle = self.idle.remove(old_idle)
                if new_idle is not None:
                    self.idle = self.idle.add(new_idle)
        self.dirty = {}

    def put_bucket(self, key: BucketKey, old: Bucket | None, new: Bucket | None) -> None:
        """Replace a bucket (None: drop it), keeping the uncovered total in step."""
        self.uncovered += (new.uncovered if new else 0) - (old.uncovered if old else 0)
        if new is None:
            self.buckets = self.buckets.delete(key)  # the order may keep it: fill skips it
        else:
            if old is None and self.order is not None and key not in self.order[2]:
                self.order = None
            self.buckets = self.buckets.set(key, new)

    def bucket_order(self) -> BucketOrder:
        """Bucket keys grouped by equal (priority, size), in that order, with the least of each
        resource over the groups from each one on; cached in the state, rebuilt only when a
        key it lacks appears (keys of emptied buckets stay listed until then)."""
        if self.order is None:
            ks = sorted(  # k[1:] is the shape as a Free tuple: (cpu, mem, disk, gpu)
                (k[0], free_size(k[1:]), k)
                for k in self.buckets.keys()  # noqa: SIM118 (a Map, not a dict)
            )
            groups: list[tuple[tuple[BucketKey, Free], ...]] = []
            last = None
            for pr, w, k in ks:
                entry = (k, (k[1], k[2], k[3], k[4]))
                if (pr, w) == last:
                    groups[-1] += (entry,)
                else:
                    groups.append((entry,))
                    last = (pr, w)
            lows: list[Bound] = []
            c, m, d, g = float("inf"), float("inf"), float("inf"), float("inf")
            for group in reversed(groups):
                for _, n in group:
                    c, m, d, g = min(c, n[0]), min(m, n[1]), min(d, n[2]), min(g, n[3])
                lows.append((c, m, d, g))
            lows.reverse()
            self.order = (tuple(groups), tuple(lows), frozenset(k for _, _, k in ks))
        return self.order

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
                    exit_code: int | None = None) -> AttemptRecord:
        """The task's current attempt, ended."""
        c = t.current
        return AttemptRecord(c.attempt, c.resources, state, c.alloc_id, c.exec_id, reason,
                             exit_code)

    def finish(self, t: TaskRecord, ok: bool, *, error: str | None = None,
               exit_code: int | None = None, result: dict | None = None,  # type: ignore[type-arg]
               lost: bool = False) -> None:
        state = _DONE if ok else _FAILED
        ended = self.end_attempt(t, _LOST if lost else state, error, exit_code)
        res = result or {}
        self.put_task(t, t.moved(state, ended, None, None, error, exit_code, res,
                                 1 if lost else 0))
        self.out.append(task_finished(t.task_id, t.attempt, ok, res, error, exit_code))

    def requeue(self, t: TaskRecord, resources: Resources, reason: str, ended: TaskState,
                exit_code: int | None = None, *, lost: int = 0, ooms: int = 0,
                temps: int = 0) -> None:
        past = t.past + (self.end_attempt(t, ended, reason, exit_code),)
        attempt = t.attempt + 1
        new = TaskRecord(
            t.task_id, t.run_id, t.key, t.ident, t.priority, t.declared, resources,
            _PENDING, attempt, past, AttemptRecord(attempt, resources, _PENDING),
            t.submitted_at, t.lost + lost, t.ooms + ooms, t.temps + temps,
        )
        self.put_task(t, new)
        self.enqueue(new)
        self.out.append(task_requeued(t.task_id, new.attempt, resources, reason))

    def release_exec(self, exec_id: str, free_alloc: bool) -> TaskRecord:
        """Forget an exec (its attempt is over) and give its resources back to its alloc."""
        slot = self.execs[exec_id]
        self.execs = self.execs.delete(exec_id)
        if free_alloc:
            a = self.allocs[slot.alloc_id]
            execs = a.execs - {exec_id}
            r = slot.need
            self.put_alloc(a, AllocRecord(
                a.alloc_id, a.request_id, a.resources, cpu_round(a.free_cpu + r[0]),
                a.free_mem + r[1], a.free_disk + r[2], a.free_gpu + r[3], execs,
                a.granted_at, None if execs else self.now))
            self.grown.add(a.alloc_id)
        return self.tasks[slot.task_id]

    def lose(self, exec_id: str, reason: str, free_alloc: bool) -> None:
        t = self.release_exec(exec_id, free_alloc)
        assert self.config is not None
        if t.lost + 1 >= self.config.max_lost:
            self.finish(t, False, error=f"lost {t.lost + 1} times: {reason}", lost=True)
        else:
            self.requeue(t, t.resources, f"lost: {reason}", _LOST, lost=1)

    # -------------------------------------------------------------- placement

    def best_fit(self, need: Free, weight: float, among: set[str] | None) -> str | None:
        """The live alloc with the least free room that fits `need` (among some, or all)."""
        if among is not None:
            if len(among) == 1:  # the usual case: the alloc of the exec that ended
                (a,) = among
                rec = self.allocs.get(a)
                return a if rec is not None and fits_alloc(need, rec) else None
            best = None
            for a in among:
                rec = self.allocs.get(a)
                if rec is not None and fits_alloc(need, rec):
                    k = (rec.free_size(), a)
                    if best is None or k < best:
                        best = k
            return None if best is None else best[1]
        self.flush()
        allocs = self.allocs
        for _, a in self.by_free.irange((weight - 1e-9, "")):
            if fits_alloc(need, allocs[a]):
                return str(a)
        return None

    def assign(self, t: TaskRecord, alloc_id: str, need: Free) -> Free:
        """Decide that `t` (whose resources are `need`) runs on the alloc; returns the alloc's
        free room after it."""
        a = self.allocs[alloc_id]
        task_id, r, attempt = t.task_id, t.resources, t.attempt
        exec_id = f"{task_id}.{attempt}"
        c, m, d, g = (cpu_round(a.free_cpu - need[0]), a.free_mem - need[1],
                      a.free_disk - need[2], a.free_gpu - need[3])
        if c < -1e-9 or m < 0 or d < 0 or g < 0:
            raise AssertionError(f"over-commit of {alloc_id}")  # a bug, never a bad fact
        self.put_alloc(a, AllocRecord(alloc_id, a.request_id, a.resources, c, m, d, g,
                                      a.execs | {exec_id}, a.granted_at, None))
        cur = t.current
        self.put_task(t, t.moved(_ASSIGNED, AttemptRecord(cur.attempt, cur.resources, _ASSIGNED,
                                                          alloc_id, exec_id), alloc_id, exec_id,
                                 None, None, NO_RESULT))
        self.execs = self.execs.set(exec_id, ExecSlot(task_id, alloc_id, attempt, r, need))
        self.out.append(task_assigned(task_id, alloc_id, attempt, exec_id, r))
        return (c, m, d, g)

    def place(self) -> None:
        """Assign pending tasks in (priority, size, seq) order while any fits somewhere (step
        calls it only when an alloc grew or a task was enqueued: else nothing can fit)."""
        if not self.allocs or not self.buckets:
            return
        grown = [a for a in self.grown if a in self.allocs]
        if len(grown) == 1 and not self.touched:
            self.fill(grown[0])  # the usual case: one exec ended, nothing was enqueued
            return
        seq0 = self.seq0
        buckets = self.buckets
        heap = []
        if grown:
            # Old pending tasks fit nowhere but (maybe) in the allocs that grew this step.
            rooms = [self.allocs[a].free for a in grown]
            keys = {k for k in buckets.keys()  # noqa: SIM118 (a Map, not a dict)
                    if any(fits(k[1:], r) for r in rooms)}
            for k in keys.union(self.touched):
                b = buckets.get(k)
                if b is not None:
                    heap.append((b.priority, b.weight, b.items[b.head][0], k))
        else:
            for k in self.touched:
                b = buckets.get(k)
                if b is not None and b.items[b.head][0] >= seq0:
                    heap.append((b.priority, b.weight, b.items[b.head][0], k))
        heapq.heapify(heap)
        while heap:
            _, _, seq, k = heapq.heappop(heap)
            b = self.buckets[k]
            alloc = self.best_fit(b.need, b.weight, None if seq >= seq0 else self.grown)
            if alloc is None:
                continue  # same shape behind it fits nowhere either
            if self.take(k, alloc)[0]:
                b = self.buckets[k]
                heapq.heappush(heap, (b.priority, b.weight, b.peek()[0], k))

    def fill(self, alloc_id: str) -> None:
        """Place old pending tasks into the one alloc that grew, in (priority, size, seq) order.

        They fit nowhere else (the invariant), so bucket keys (priority, cpu, mem, disk, gpu)
        are walked in the cached (priority, size) order against the shrinking room, stopping
        as soon as the room is below the least of every key left; equal (priority, size) of
        different shapes go by head seq.
        """
        groups, lows, _ = self.bucket_order()
        a = self.allocs[alloc_id]
        c, m, d, g = a.free_cpu, a.free_mem, a.free_disk, a.free_gpu
        for group, (lc, lm, ld, lg) in zip(groups, lows):  # same length
            if c + 1e-9 < lc or m < lm or d < ld or g < lg:
                return
            if len(group) == 1:
                k, n = group[0]
                # The fit first: most shapes do not fit the room, and the test is cheaper than
                # looking the bucket up (it may have been emptied since the order was built).
                while (n[0] <= c + 1e-9 and n[1] <= m and n[2] <= d and n[3] <= g
                       and k in self.buckets):
                    c, m, d, g = self.take(k, alloc_id)[1]
            else:
                buckets = self.buckets
                fit = [e for e in group if e[0] in buckets and fits(e[1], (c, m, d, g))]
                while fit:
                    buckets = self.buckets
                    k = fit[0][0] if len(fit) == 1 else min(
                        fit, key=lambda e: buckets[e[0]].peek()[0])[0]
                    left, (c, m, d, g) = self.take(k, alloc_id)
                    fit = [e for e in fit if (left or e[0] != k) and fits(e[1], (c, m, d, g))]

    def take(self, key: BucketKey, alloc_id: str) -> tuple[bool, Free]:
        """Assign the head of a bucket to an alloc: whether the bucket still has tasks, and
        the alloc's free room after it."""
        old = self.buckets[key]
        tid = old.items[old.head][1]
        b = old.pop()
        self.pending -= 1
        left = b.tail > b.head
        self.put_bucket(key, old, b if left else None)
        return left, self.assign(self.tasks[tid], alloc_id, old.need)

    def request(self) -> None:
        """Ask for allocs sized to the uncovered leftovers, once the drain time has passed
        (step calls it only when some pending task is uncovered)."""
        cfg = self.config
        if cfg is None:
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
            self.out.append(alloc_requested(rid, want, minimum))

    def drained(self) -> bool:
        assert self.config is not None
        last = self.last_submit_at
        return last is None or self.now >= last + self.config.drain_timeout

    def expire(self) -> None:
        """Release allocs idle for max_alloc_idle at `now`."""
        if self.config is None:
            return
        limit = self.config.max_alloc_idle
        first = self.idle.first()
        if first is None or first[0] + limit > self.now:
            return
        self.flush()
        due = []
        for since, a in self.idle:
            if since + limit > self.now:
                break
            due.append(a)
        for a in due:
            self.drop_alloc(self.allocs[a])
            self.gone = self.gone.set(a, "released")
            self.out.append(alloc_released(a, "idle"))
