"""A hypothesis state machine drives the pure scheduler core with random facts and checks its
invariants after every step, replay against the live state, and the replay checker."""

from __future__ import annotations

import math

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from reflowes.engine import core
from reflowes.engine.check import check
from reflowes.engine.placement import SortedIndex
from reflowes.engine.schedstate import free_size
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    Event,
    ExecExited,
    ExecLost,
    ExecStarted,
    Recorded,
    SchedulerConfigured,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
    TaskState,
    TaskSubmitted,
    Tick,
)
from reflowes.events.resources import GiB, MiB, Resources

MAX = Resources(8, 16 * GiB, 64 * GiB, 2)
CONFIG = SchedulerConfigured(max_alloc=MAX, max_lost=3, max_oom_retries=2, max_temp_retries=2)
CPUS = st.sampled_from([0.5, 1, 2, 4, 9])  # 9 is larger than any alloc
MEMS = st.sampled_from([256 * MiB, GiB, 3 * GiB, 8 * GiB])
GPUS = st.sampled_from([0, 0, 0, 1])
DT = st.sampled_from([0.0, 0.01, 0.03, 0.06, 1.0, 120.0, 301.0])


def _between(draw: st.DrawFn, lo: Resources, hi: Resources) -> Resources:
    hi = hi.max(lo)
    return Resources(
        draw(st.sampled_from(sorted({lo.cpu, hi.cpu, math.ceil((lo.cpu + hi.cpu) / 2)}))),
        draw(st.integers(lo.mem // MiB, hi.mem // MiB)) * MiB + (lo.mem % MiB and MiB),
        draw(st.sampled_from(sorted({lo.disk, hi.disk}))),
        draw(st.integers(lo.gpu, hi.gpu)),
    )


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = core.initial()
        self.now = 0.0
        self.log: list[tuple[Event, float]] = []
        self.made: list[Event] = []
        self.before = self.state
        self.n = 0
        self.feed(CONFIG)

    def feed(self, ev: Event, dt: float = 0.0) -> list[Event]:
        self.now += dt
        self.before = self.state
        self.state, self.made = core.step(self.state, ev, self.now)
        self.log.append((ev, self.now))
        self.log += [(d, self.now) for d in self.made]
        for d in self.made:
            if isinstance(d, TaskAssigned):
                assert d.exec_id == f"{d.task_id}.{d.attempt}"
        return self.made

    # ---------------------------------------------------------------- rules

    @rule(cpu=CPUS, mem=MEMS, gpu=GPUS, priority=st.integers(0, 2), dt=DT)
    def submit(self, cpu: float, mem: int, gpu: int, priority: int, dt: float) -> None:
        self.n += 1
        tid = f"t{self.n}"
        r = Resources(cpu, mem, 0, gpu)
        made = self.feed(TaskSubmitted(task_id=tid, run_id="r", key=tid, ident=tid,
                                       resources=r, priority=priority), dt)
        mine = [d for d in made if getattr(d, "task_id", None) == tid]
        if not r.fits_in(MAX):
            assert len(mine) == 1 and isinstance(mine[0], TaskFinished) and not mine[0].ok
            assert str(r) in (mine[0].error or "")
        else:
            assert all(isinstance(d, TaskAssigned) for d in mine) and len(mine) <= 1

    @precondition(lambda self: len(core.outstanding_requests(self.state)) > 0)
    @rule(data=st.data(), dt=DT)
    def grant(self, data: st.DataObject, dt: float) -> None:
        reqs = core.outstanding_requests(self.state)
        rid = data.draw(st.sampled_from(sorted(reqs.keys())))
        req = reqs[rid]
        got = _between(data.draw, req.minimum, req.resources)
        self.n += 1
        self.feed(AllocGranted(alloc_id=f"a{self.n}", request_id=rid, resources=got), dt)

    @precondition(lambda self: len(core.live_allocs(self.state)) > 0)
    @rule(data=st.data(), dt=DT)
    def kill(self, data: st.DataObject, dt: float) -> None:
        alloc = data.draw(st.sampled_from(sorted(core.live_allocs(self.state))))
        held = sorted(x for x, s in core.assigned_execs(self.state).items() if s.alloc_id == alloc)
        made = self.feed(AllocDied(alloc_id=alloc, reason="keepalive failed"), dt)
        for exec_id in held:
            tid = exec_id.rsplit(".", 1)[0]
            self._check_lost(tid, made)

    def _check_lost(self, tid: str, made: list[Event]) -> None:
        t = core.task(self.state, tid)
        assert t is not None and t.attempts[-2 if t.state != TaskState.FAILED else -1].state \
            == TaskState.LOST
        if t.state == TaskState.FAILED:
            assert t.lost == CONFIG.max_lost and f"lost {t.lost} times" in (t.error or "")
        else:
            assert any(isinstance(d, TaskRequeued) and d.task_id == tid for d in made)

    @precondition(lambda self: any(
        core.task(self.state, s.task_id).state == TaskState.ASSIGNED  # type: ignore[union-attr]
        for s in core.assigned_execs(self.state).values()))
    @rule(data=st.data(), dt=DT)
    def start(self, data: st.DataObject, dt: float) -> None:
        ready = sorted(x for x, s in core.assigned_execs(self.state).items()
                       if core.task(self.state, s.task_id).state == TaskState.ASSIGNED)  # type: ignore[union-attr]
        exec_id = data.draw(st.sampled_from(ready))
        self.feed(ExecStarted(exec_id=exec_id, task_id=core.assigned_execs(self.state)[exec_id]
                              .task_id), dt)
        assert self._task_of(exec_id).state == TaskState.RUNNING

    def _task_of(self, exec_id: str) -> core.TaskRecord:  # type: ignore[name-defined]
        t = core.task(self.state, exec_id.rsplit(".", 1)[0])
        assert t is not None
        return t

    @precondition(lambda self: len(core.assigned_execs(self.state)) > 0)
    @rule(data=st.data(), dt=DT,
          outcome=st.sampled_from(["ok", "fail", "oom", "temp", "lost", "missing"]))
    def exit(self, data: st.DataObject, dt: float, outcome: str) -> None:
        execs = core.assigned_execs(self.state)
        exec_id = data.draw(st.sampled_from(sorted(execs)))
        slot = execs[exec_id]
        tid = slot.task_id
        before = core.task(self.state, tid)
        assert before is not None
        if outcome == "lost":
            made = self.feed(ExecLost(exec_id=exec_id, task_id=tid, reason="gone"), dt)
            self._check_lost(tid, made)
            return
        peak = data.draw(st.integers(0, 12)) * GiB
        code = {"ok": 0, "fail": 3, "oom": 137, "temp": 75, "missing": 0}[outcome]
        made = self.feed(ExecExited(
            exec_id=exec_id, task_id=tid, exit_code=code, oom=outcome == "oom", peak_mem=peak,
            error="output missing" if outcome == "missing" else None, stderr_tail="boom"), dt)
        t = core.task(self.state, tid)
        assert t is not None
        ends = [d for d in made if getattr(d, "task_id", None) == tid
                and isinstance(d, (TaskFinished, TaskRequeued))]
        assert len(ends) == 1
        end = ends[0]
        if outcome == "ok":
            assert isinstance(end, TaskFinished) and end.ok
        elif outcome in ("fail", "missing"):
            assert isinstance(end, TaskFinished) and not end.ok and "boom" in (end.error or "")
        elif outcome == "temp":
            if before.temps < CONFIG.max_temp_retries:
                assert isinstance(end, TaskRequeued) and end.resources == before.resources
            else:
                assert isinstance(end, TaskFinished) and not end.ok
        else:
            if isinstance(end, TaskRequeued):
                assert before.ooms < CONFIG.max_oom_retries
                assert end.resources.mem > before.resources.mem
                assert end.resources.mem >= min(math.ceil(1.5 * peak), MAX.mem)
                assert end.resources.mem <= MAX.mem
            else:
                assert not end.ok and "out of memory" in (end.error or "")
                assert before.ooms >= CONFIG.max_oom_retries or before.resources.mem == MAX.mem

    @rule(dt=DT)
    def tick(self, dt: float) -> None:
        self.feed(Tick(), dt)

    @precondition(lambda self: core.deadline(self.state) is not None)
    @rule()
    def tick_at_deadline(self) -> None:
        dl = core.deadline(self.state)
        assert dl is not None and dl >= self.now
        made = self.feed(Tick(), dl - self.now)
        assert made, "a Tick at the deadline must change something"

    # ---------------------------------------------------------------- invariants

    @invariant()
    def no_alloc_over_committed(self) -> None:
        v = core.view(self.state)
        used: dict[str, Resources] = {}
        for s in core.assigned_execs(self.state).values():
            used[s.alloc_id] = used.get(s.alloc_id, Resources()) + s.resources
        for a, rec in self.state.allocs.items():
            assert not Resources(*rec.free).is_negative()
            assert Resources(*rec.free) == rec.resources - used.get(a, Resources())
            assert sorted(rec.execs) == v["allocs"][a][3]

    @invariant()
    def indexes_match_records(self) -> None:
        allocs = self.state.allocs
        assert list(self.state.by_free) == sorted((free_size(a.free), k) for k, a in allocs.items())
        assert list(self.state.idle) == sorted(
            (a.idle_since, k) for k, a in allocs.items() if a.idle_since is not None)

    @invariant()
    def each_task_in_one_state(self) -> None:
        pending = [tid for b in self.state.buckets.values() for tid in b.task_ids()]
        assert len(pending) == len(set(pending)) == self.state.pending
        execs = {s.task_id for s in core.assigned_execs(self.state).values()}
        assert len(execs) == len(core.assigned_execs(self.state))
        counts = {s: 0 for s in TaskState}
        for tid, t in self.state.tasks.items():
            counts[t.state] += 1
            assert (t.state == TaskState.PENDING) == (tid in pending)
            assert (t.state in (TaskState.ASSIGNED, TaskState.RUNNING)) == (tid in execs)
            assert t.attempt == len(t.attempts) == t.attempts[-1].attempt
            last = t.attempts[-1].state
            assert last == t.state or (t.state == TaskState.FAILED and last == TaskState.LOST)
            for a in t.attempts[:-1]:  # ended attempts that led to a retry
                assert a.state in (TaskState.LOST, TaskState.FAILED)
            assert t.lost <= CONFIG.max_lost and t.ooms <= CONFIG.max_oom_retries
        assert counts == core.task_counts(self.state)
        assert self.state.uncovered == sum(b.uncovered for b in self.state.buckets.values())

    @invariant()
    def idle_allocs_released_busy_never(self) -> None:
        for d in self.made:
            if isinstance(d, AllocReleased):
                was = self.before.allocs[d.alloc_id]
                assert not was.execs
                assert was.idle_since is not None
                assert was.idle_since + CONFIG.max_alloc_idle <= self.now
        for rec in self.state.allocs.values():
            assert (rec.idle_since is None) == bool(rec.execs)
            if rec.idle_since is not None:
                assert rec.idle_since + CONFIG.max_alloc_idle > self.now

    @invariant()
    def priorities_respected(self) -> None:
        for b in self.state.buckets.values():
            for a, rec in self.state.allocs.items():
                assert not b.shape.fits_in(Resources(*rec.free)), f"{b.shape} pending, fits {a}"
        order = [(t.priority, t.resources.size()) for d in self.made
                 if isinstance(d, TaskAssigned) for t in [core.task(self.state, d.task_id)]
                 if t is not None]
        assert order == sorted(order)

    @invariant()
    def requests_only_when_needed(self) -> None:
        reqs = core.outstanding_requests(self.state)
        assert len(reqs) <= CONFIG.max_pending_allocs
        for d in self.made:
            if isinstance(d, AllocRequested):
                assert d.minimum.fits_in(d.resources) and d.resources.fits_in(MAX)
                assert CONFIG.min_alloc.min(MAX).fits_in(d.minimum)

    @invariant()
    def replay_equals_live(self) -> None:
        assert core.view(core.replay(self.log)) == core.view(self.state)

    def teardown(self) -> None:
        recs = [Recorded(i + 1, at, ev) for i, (ev, at) in enumerate(self.log)]
        assert check(recs) is None
        decided = [i for i, r in enumerate(recs) if r.kind in core.DECISION_KINDS]
        if decided:
            i = decided[len(decided) // 2]
            ev = recs[i].event
            field = "reason" if isinstance(ev, AllocReleased) else (
                "request_id" if isinstance(ev, AllocRequested) else "task_id")
            bad = attrs.evolve(ev, **{field: "altered"})
            altered = recs[:i] + [Recorded(recs[i].seq, recs[i].at, bad)] + recs[i + 1:]
            m = check(altered)
            assert m is not None and m.decision_seq == recs[i].seq and m.recorded == bad


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "replace"]), st.integers(0, 400),
                          st.integers(0, 400)), max_size=600))
def test_sorted_index_matches_a_sorted_list(ops: list[tuple[str, int, int]]) -> None:
    """The persistent index behind best fit and idle release, against a plain sorted list;
    old versions stay as they were (persistence)."""
    idx, model = SortedIndex(), []
    for op, i, j in ops:  # pairs with equal numbers too: the name breaks the tie
        x, y = (i // 5 * 0.5, f"a{i % 5}"), (j // 5 * 0.5, f"a{j % 5}")
        before, snapshot = idx, list(model)
        if op == "add" and x not in model:
            idx = idx.add(x)
            model = sorted(model + [x])
        elif op == "remove" and x in model:
            idx = idx.remove(x)
            model.remove(x)
        elif op == "replace" and x in model and y not in model:
            idx = idx.replace(x, y)
            model = sorted([v for v in model if v != x] + [y])
        assert list(before) == snapshot
        assert list(idx) == model and len(idx) == len(model)
        assert idx.first() == (model[0] if model else None)
        assert list(idx.irange(y)) == [v for v in model if v >= y]
        assert (x in idx) == (x in model)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop"]), st.integers(0, 50)), max_size=300))
def test_bucket_versions_are_values(ops: list[tuple[str, int]]) -> None:
    """A bucket's FIFO shares one append-only list between versions: pushing or popping any
    earlier version (a branch) must never change what another version holds."""
    from reflowes.engine.placement import new_bucket

    versions = [(new_bucket(0, Resources(1, GiB)), [])]
    for n, (op, pick) in enumerate(ops):
        b, model = versions[pick % len(versions)]
        if op == "push":
            versions.append((b.push(n, f"t{n}"), model + [f"t{n}"]))
        elif model:
            assert b.peek() == (int(model[0][1:]), model[0])
            versions.append((b.pop(), model[1:]))
        for v, m in versions:
            assert v.task_ids() == m and v.waiting == len(m)


def test_bucket_compaction_keeps_old_versions() -> None:
    """Popping past the compaction point copies the live part; versions from before keep theirs."""
    from reflowes.engine.placement import new_bucket

    b = new_bucket(0, Resources(1, GiB))
    for i in range(10_000):
        b = b.push(i, f"t{i}")
    early = b
    for _ in range(9_000):
        b = b.pop()
    assert b.head < 9_000  # compacted on the way
    assert b.task_ids() == [f"t{i}" for i in range(9_000, 10_000)]
    b2 = early.push(10_000, "x")  # a branch from before the pops
    assert early.task_ids() == [f"t{i}" for i in range(10_000)]
    assert b2.task_ids()[-2:] == ["t9999", "x"] and b.push(1, "y").task_ids()[-1] == "y"
    assert b.task_ids()[-1] == "t9999"
