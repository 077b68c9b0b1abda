"""Scenario tests of the pure scheduler core, in the spirit of Reflow's sched tests."""

from __future__ import annotations

import attrs
import pytest
from reflowes.engine import core
from reflowes.engine.check import check
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    BatchOpened,
    Event,
    ExecCreated,
    ExecExited,
    ExecLost,
    ExecStarted,
    Recorded,
    RunDeclared,
    SchedulerConfigured,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
    TaskState,
    TaskSubmitted,
    Tick,
)
from reflowes.events.resources import GiB, Resources

MAX = Resources(8, 32 * GiB, 100 * GiB)


class Driver:
    """Feeds facts to the core, keeps the log (facts and decisions) and the latest decisions."""

    def __init__(self, **config: object) -> None:
        self.state = core.initial()
        self.log: list[tuple[Event, float]] = []
        self.now = 0.0
        self.made: list[Event] = []
        self.feed(SchedulerConfigured(max_alloc=config.pop("max_alloc", MAX), **config))

    def feed(self, ev: Event, at: float | None = None) -> list[Event]:
        self.now = self.now if at is None else at
        self.state, self.made = core.step(self.state, ev, self.now)
        self.log.append((ev, self.now))
        self.log += [(d, self.now) for d in self.made]
        return self.made

    def submit(self, tid: str, cpu: float = 1, mem: int = GiB, priority: int = 0,
               at: float | None = None) -> list[Event]:
        return self.feed(TaskSubmitted(task_id=tid, run_id="run", key=f"k{tid}", ident=tid,
                                       resources=Resources(cpu, mem), priority=priority), at)

    def drain(self) -> list[Event]:
        dl = core.deadline(self.state)
        assert dl is not None
        return self.feed(Tick(), dl)

    def grant(self, alloc: str, req: str, res: Resources) -> list[Event]:
        return self.feed(AllocGranted(alloc_id=alloc, request_id=req, resources=res))

    def exit(self, tid: str, attempt: int = 1, code: int = 0, at: float | None = None,
             **kw: object) -> list[Event]:
        return self.feed(ExecExited(exec_id=f"{tid}.{attempt}", task_id=tid, exit_code=code,
                                    **kw), at)  # type: ignore[arg-type]

    def task(self, tid: str) -> core.TaskRecord:  # type: ignore[name-defined]
        t = core.task(self.state, tid)
        assert t is not None
        return t


def kinds(evs: list[Event], cls: type) -> list[Event]:
    return [e for e in evs if isinstance(e, cls)]


def test_basic_assignment_after_drain() -> None:
    d = Driver()
    assert d.submit("a") == []  # no request until the drain time has passed
    assert core.deadline(d.state) == pytest.approx(0.05)
    (req,) = d.drain()
    assert isinstance(req, AllocRequested)
    assert req.resources == Resources(1, GiB, GiB)  # at least min_alloc
    assert req.minimum == Resources(1, GiB, GiB)
    (a,) = d.grant("a1", req.request_id, req.resources)
    assert a == TaskAssigned(task_id="a", alloc_id="a1", attempt=1, exec_id="a.1",
                             resources=Resources(1, GiB))
    d.feed(ExecStarted(exec_id="a.1", task_id="a"))
    assert d.task("a").state == TaskState.RUNNING
    (fin,) = d.exit("a")
    assert isinstance(fin, TaskFinished) and fin.ok and fin.attempt == 1
    assert core.task_counts(d.state)[TaskState.DONE] == 1
    assert len(core.assigned_execs(d.state)) == 0


def test_an_exec_made_and_started_at_once_runs_and_one_only_made_does_not() -> None:
    d = Driver()
    d.submit("a")
    (req,) = d.drain()
    d.grant("a1", req.request_id, req.resources)
    made = ExecCreated(exec_id="a.1", task_id="a", alloc_id="a1", executor="docker", handle="c")
    before = d.state
    assert d.feed(made) == [] and d.state is before  # no fact for the core
    assert d.task("a").state == TaskState.ASSIGNED
    d.feed(attrs.evolve(made, executor="local", handle="1", started=True))
    assert d.task("a").state == TaskState.RUNNING
    (fin,) = d.exit("a")
    assert isinstance(fin, TaskFinished) and fin.ok


def test_submissions_within_drain_are_packed_in_one_alloc() -> None:
    d = Driver()
    for i in range(4):
        d.submit(f"t{i}", cpu=1, mem=2 * GiB, at=0.01 * i)
    (req,) = d.drain()
    assert isinstance(req, AllocRequested)
    assert req.resources == Resources(4, 8 * GiB, GiB)
    made = d.grant("a1", req.request_id, req.resources)
    assert [e.alloc_id for e in kinds(made, TaskAssigned)] == ["a1"] * 4  # type: ignore[attr-defined]
    free = core.view(d.state)["allocs"]["a1"][2]
    assert free == [0.0, 0, GiB, 0]


def test_leftovers_beyond_max_alloc_get_several_requests() -> None:
    d = Driver()
    for i in range(20):
        d.submit(f"t{i}", cpu=1, mem=GiB)
    reqs = kinds(d.drain(), AllocRequested)
    assert [r.resources.cpu for r in reqs] == [8, 8, 4]  # type: ignore[attr-defined]
    assert core.deadline(d.state) is None
    assert d.submit("late") == []
    (r4,) = d.drain()  # the outstanding requests cover the 20, not the 21st
    assert r4 == AllocRequested(request_id="r4", resources=Resources(1, GiB, GiB),
                                minimum=Resources(1, GiB, GiB))
    made = d.grant("a1", "r1", Resources(4, 4 * GiB, GiB))  # half of what r1 was for
    assert len(kinds(made, TaskAssigned)) == 4
    (r5,) = kinds(made, AllocRequested)  # the other half is no longer covered
    assert r5.resources == Resources(4, 4 * GiB, GiB)  # type: ignore[attr-defined]


def test_assignment_to_live_alloc_is_immediate_and_best_fit() -> None:
    d = Driver(max_pending_allocs=5)
    d.submit("x", cpu=1)
    (r1,) = d.drain()
    d.submit("y", cpu=1)
    (r2,) = d.drain()
    d.grant("big", r1.request_id, Resources(8, 16 * GiB, 10 * GiB))  # type: ignore[attr-defined]
    d.grant("small", r2.request_id, Resources(2, 2 * GiB, 2 * GiB))  # type: ignore[attr-defined]
    d.exit("x")
    d.exit("y")
    (a,) = d.submit("z", cpu=1, at=1.0)  # before any drain: existing allocs are used at once
    assert isinstance(a, TaskAssigned) and a.alloc_id == "small"


def test_alloc_death_requeues_tasks_elsewhere() -> None:
    d = Driver()
    d.submit("a")
    d.submit("b")
    (req,) = d.drain()
    d.grant("a1", req.request_id, req.resources)  # type: ignore[attr-defined]
    d.submit("c", cpu=6, at=1)
    (req2,) = d.drain()
    d.grant("a2", req2.request_id, Resources(8, 4 * GiB, 2 * GiB))  # type: ignore[attr-defined]
    made = d.feed(AllocDied(alloc_id="a1", reason="keepalive failed"), 2)
    requeued = kinds(made, TaskRequeued)
    assert [(e.task_id, e.attempt) for e in requeued] == [("a", 2), ("b", 2)]  # type: ignore[attr-defined]
    assigned = kinds(made, TaskAssigned)
    assert [(e.task_id, e.alloc_id, e.exec_id) for e in assigned] == [  # type: ignore[attr-defined]
        ("a", "a2", "a.2"), ("b", "a2", "b.2")]
    a = d.task("a")
    assert [x.state for x in a.attempts] == [TaskState.LOST, TaskState.ASSIGNED]
    assert "keepalive failed" in (a.attempts[0].reason or "")
    with pytest.raises(core.CoreError):
        d.exit("a", attempt=1)  # the lost attempt's exec is gone


def test_priorities_lower_first_then_size() -> None:
    d = Driver()
    d.submit("low", cpu=1, priority=5)
    d.submit("big", cpu=2, priority=1)
    d.submit("small", cpu=1, priority=1)
    d.feed(Tick(), 0.01)
    (req,) = d.drain()
    made = d.grant("a1", req.request_id, Resources(3, 8 * GiB, GiB))  # type: ignore[attr-defined]
    assert [e.task_id for e in kinds(made, TaskAssigned)] == ["small", "big"]  # type: ignore[attr-defined]
    assert d.task("low").state == TaskState.PENDING
    fin, _ = d.exit("small", at=1)
    assert isinstance(fin, TaskFinished)  # 1 cpu free, "low" needs 1: assigned too
    assert [e.task_id for e in kinds(d.made, TaskAssigned)] == ["low"]  # type: ignore[attr-defined]


def test_idle_alloc_released_busy_never() -> None:
    d = Driver(max_alloc_idle=300.0)
    d.submit("a")
    d.submit("b", at=0.01)
    (req,) = d.drain()
    d.grant("a1", req.request_id, Resources(1, GiB, GiB))  # type: ignore[attr-defined]
    d.feed(Tick(), 10_000.0)  # a1 holds "a": never released
    assert "a1" in core.live_allocs(d.state)
    d.exit("a", at=10_001.0)  # b takes the room at once: still busy
    d.exit("b", at=10_002.0)
    assert core.deadline(d.state) == pytest.approx(10_302.0)
    assert d.feed(Tick(), 10_301.0) == []
    assert d.feed(Tick(), 10_302.0) == [AllocReleased(alloc_id="a1", reason="idle")]
    assert core.live_allocs(d.state) == {}
    d.feed(AllocDied(alloc_id="a1", reason="late keepalive"), 10_303.0)  # harmless


def test_too_large_task_fails_at_once() -> None:
    d = Driver()
    (fin,) = d.submit("huge", cpu=64)
    assert isinstance(fin, TaskFinished) and not fin.ok
    assert "cpu=64" in (fin.error or "") and "cpu=8" in (fin.error or "")
    assert core.deadline(d.state) is None


def test_oom_escalates_by_factor_then_succeeds() -> None:
    d = Driver()
    d.submit("m", cpu=1, mem=2 * GiB)
    (req,) = d.drain()
    d.grant("a1", req.request_id, Resources(8, 32 * GiB, GiB))  # type: ignore[attr-defined]
    made = d.exit("m", code=137, oom=True, peak_mem=2 * GiB)
    (rq,) = kinds(made, TaskRequeued)
    assert rq.resources.mem == 3 * GiB and rq.attempt == 2  # type: ignore[attr-defined]
    assert kinds(made, TaskAssigned)[0].exec_id == "m.2"  # type: ignore[attr-defined]
    made = d.exit("m", attempt=2, code=137, oom=True, peak_mem=GiB)  # low peak: still 1.5x
    assert kinds(made, TaskRequeued)[0].resources.mem == int(4.5 * GiB)  # type: ignore[attr-defined]
    (fin,) = d.exit("m", attempt=3, code=0)
    assert isinstance(fin, TaskFinished) and fin.ok and fin.attempt == 3
    assert [a.resources.mem for a in d.task("m").attempts] == [2 * GiB, 3 * GiB, int(4.5 * GiB)]


def test_oom_retries_are_capped() -> None:
    d = Driver(max_oom_retries=2)
    d.submit("m", cpu=1, mem=GiB)
    (req,) = d.drain()
    d.grant("a1", req.request_id, Resources(8, 32 * GiB, GiB))  # type: ignore[attr-defined]
    d.exit("m", 1, 137, oom=True, peak_mem=GiB)
    d.exit("m", 2, 137, oom=True, peak_mem=GiB)
    (fin,) = d.exit("m", 3, 137, oom=True, peak_mem=GiB, stderr_tail="Killed")
    assert isinstance(fin, TaskFinished) and not fin.ok
    assert "out of memory" in (fin.error or "") and "Killed" in (fin.error or "")


def test_exit_75_retries_with_same_resources() -> None:
    d = Driver(max_temp_retries=1)
    d.submit("t", cpu=2)
    (req,) = d.drain()
    d.grant("a1", req.request_id, req.resources)  # type: ignore[attr-defined]
    made = d.exit("t", code=75)
    assert kinds(made, TaskRequeued)[0].resources == Resources(2, GiB)  # type: ignore[attr-defined]
    (fin,) = d.exit("t", attempt=2, code=75)
    assert isinstance(fin, TaskFinished) and not fin.ok and fin.exit_code == 75


def test_other_exit_fails_with_stderr_and_missing_output_fails() -> None:
    d = Driver()
    d.submit("x")
    d.submit("y")
    (req,) = d.drain()
    d.grant("a1", req.request_id, Resources(2, 2 * GiB, GiB))  # type: ignore[attr-defined]
    (fin,) = d.exit("x", code=2, stderr_tail="line1\nno such file\n")
    assert isinstance(fin, TaskFinished) and not fin.ok and fin.exit_code == 2
    assert "code 2" in (fin.error or "") and "no such file" in (fin.error or "")
    (fin,) = d.exit("y", code=0, error="output 'out' missing")
    assert isinstance(fin, TaskFinished) and not fin.ok and "missing" in (fin.error or "")


def test_lost_cap() -> None:
    d = Driver(max_lost=3)
    d.submit("t")
    (req,) = d.drain()
    d.grant("a1", req.request_id, Resources(4, 4 * GiB, GiB))  # type: ignore[attr-defined]
    for attempt in (1, 2):
        made = d.feed(ExecLost(exec_id=f"t.{attempt}", task_id="t", reason="container gone"))
        assert kinds(made, TaskRequeued)[0].attempt == attempt + 1  # type: ignore[attr-defined]
    (fin,) = d.feed(ExecLost(exec_id="t.3", task_id="t", reason="container gone"))
    assert isinstance(fin, TaskFinished) and not fin.ok
    assert fin.error == "lost 3 times: container gone"
    assert len(d.task("t").attempts) == 3
    assert all(a.state == TaskState.LOST for a in d.task("t").attempts)


def test_bad_facts_raise_and_leave_state_untouched() -> None:
    d = Driver()
    d.submit("a")
    before = core.view(d.state)
    bad: list[Event] = [
        TaskSubmitted(task_id="a", run_id="r", key="k", ident="i", resources=Resources(1)),
        AllocGranted(alloc_id="x", request_id="nope", resources=MAX),
        ExecExited(exec_id="a.1", task_id="a", exit_code=0),
        ExecStarted(exec_id="zz.1", task_id="zz"),
        AllocDied(alloc_id="never", reason="?"),
    ]
    for ev in bad:
        with pytest.raises(core.CoreError):
            core.step(d.state, ev, 99.0)
        assert core.view(d.state) == before
    with pytest.raises(core.CoreError):
        core.step(core.initial(), TaskSubmitted(task_id="a", run_id="r", key="k", ident="i",
                                                resources=Resources(1)), 0)


def test_other_kinds_are_ignored_and_replay_matches() -> None:
    d = Driver()
    d.feed(BatchOpened(csv="s.csv", program="p.py", invocation=1))
    d.feed(RunDeclared(run_id="r", program="p.py", params={}, digest="d"))
    d.submit("a")
    (req,) = d.drain()
    d.grant("a1", req.request_id, req.resources)  # type: ignore[attr-defined]
    d.exit("a", at=5)
    assert core.view(core.replay(d.log)) == core.view(d.state)
    recs = [Recorded(i + 1, at, ev) for i, (ev, at) in enumerate(d.log)]
    assert check(recs) is None
    altered = list(recs)
    i = next(i for i, r in enumerate(recs) if isinstance(r.event, TaskAssigned))
    altered[i] = Recorded(recs[i].seq, recs[i].at, TaskAssigned(
        task_id="a", alloc_id="a9", attempt=1, exec_id="a.1", resources=Resources(1, GiB)))
    m = check(altered)
    assert m is not None and m.decision_seq == recs[i].seq and m.fact_seq == recs[i - 1].seq
    dropped = recs[:i] + recs[i + 1:]
    m = check(dropped)
    assert m is not None and m.recorded is None


def test_reconfigured_smaller_fails_what_no_longer_fits() -> None:
    d = Driver()
    d.submit("big", cpu=6)
    d.submit("small", cpu=1)
    d.feed(SchedulerConfigured(max_alloc=Resources(4, 32 * GiB, 100 * GiB)), 1.0)
    fin, req = d.made  # the drain time has passed too: the small one gets its alloc
    assert isinstance(fin, TaskFinished) and fin.task_id == "big" and not fin.ok
    assert "largest alloc is now" in (fin.error or "")
    assert isinstance(req, AllocRequested)
    assert req.resources.cpu == 1  # type: ignore[attr-defined]
    assert core.task_counts(d.state)[TaskState.PENDING] == 1


_DRIVE = r"""
import hashlib
from reflowes.engine import core
from reflowes.events.model import *
from reflowes.events.resources import GiB, Resources
s, out = core.initial(), []
def feed(ev, at):
    global s
    s, made = core.step(s, ev, at)
    out.extend(repr(d) for d in made)
feed(SchedulerConfigured(max_alloc=Resources(8, 32 * GiB, 100 * GiB)), 0)
for i in range(300):
    r = Resources(1 + i % 3, (1 + i % 4) * GiB, 0, i % 7 == 0)
    feed(TaskSubmitted(task_id=f"t{i}", run_id="r", key="k", ident="i", resources=r,
                       priority=i % 2), i * 1e-4)
t, n = 1.0, 0
feed(Tick(), t)
while core.outstanding_requests(s) or core.assigned_execs(s):
    t += 1
    for rid in sorted(core.outstanding_requests(s)):
        n += 1
        feed(AllocGranted(alloc_id=f"a{n}", request_id=rid,
                          resources=core.outstanding_requests(s)[rid].resources), t)
    execs = sorted(core.assigned_execs(s).items())
    if t == 3:  # kill the busiest alloc: its tasks are requeued in a deterministic order
        held = sorted(slot.alloc_id for _, slot in execs)
        feed(AllocDied(alloc_id=max(held, key=held.count), reason="x"), t)
        continue
    for x, slot in execs[:7]:
        feed(ExecExited(exec_id=x, task_id=slot.task_id, exit_code=(0, 75, 3)[len(x) % 3]), t)
print(len(out), hashlib.sha256("\n".join(out).encode()).hexdigest())
"""


def test_decisions_do_not_depend_on_string_hashing() -> None:
    """Set and map iteration order changes with PYTHONHASHSEED; the decisions must not."""
    import os
    import subprocess
    import sys

    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        run = subprocess.run([sys.executable, "-c", _DRIVE], env=env, capture_output=True,
                             text=True, check=True)
        outs.add(run.stdout.strip())
    assert len(outs) == 1
    n = int(outs.pop().split()[0])
    assert n > 600  # assignments, finishes, requeues, requests were all made


def test_records_are_values_with_their_fields() -> None:
    """Records are built positionally (native classes when compiled): each keeps exactly the
    fields it was given, and the view lists a task's fields in their documented order."""
    from reflowes.engine.placement import Bucket
    from reflowes.engine.schedstate import (
        NO_RESULT,
        TASK_FIELDS,
        AllocRecord,
        AttemptRecord,
        ExecSlot,
        SchedulerState,
        TaskRecord,
        free_size,
    )

    r, r2 = Resources(1, GiB), Resources(2, 3 * GiB, 4, 1)
    first = AttemptRecord(1, r, TaskState.LOST, "a1", "t.1", "lost: x", None)
    cur = AttemptRecord(2, r2, TaskState.ASSIGNED, "a2", "t.2")
    t = TaskRecord("t", "run", "k", "id", 3, r, r2, TaskState.ASSIGNED, 2, (first,), cur, 1.5,
                   1, 0, 0, "a2", "t.2", None, None)
    assert [getattr(t, f) for f in TASK_FIELDS] == [
        "t", "run", "k", "id", 3, r, r2, TaskState.ASSIGNED, 2, (first, cur), 1.5, 1, 0, 0,
        "a2", "t.2", None, None, NO_RESULT]
    assert [(x.attempt, x.resources, x.state, x.alloc_id, x.exec_id, x.reason, x.exit_code)
            for x in t.attempts] == [(1, r, TaskState.LOST, "a1", "t.1", "lost: x", None),
                                     (2, r2, TaskState.ASSIGNED, "a2", "t.2", None, None)]
    moved = t.moved(TaskState.DONE, cur, None, None, None, 0, {"o": None}, 1)  # type: ignore[dict-item]
    assert (moved.state, moved.lost, moved.result, moved.past, t.state, t.lost) == (
        TaskState.DONE, 2, {"o": None}, (first,), TaskState.ASSIGNED, 1)
    a = AllocRecord("a", "r1", r2, 1.5, 2, 3, 0, frozenset({"x"}), 2.0, None)
    assert (a.free, a.free_size(), a.execs, a.granted_at, a.idle_since) == (
        (1.5, 2, 3, 0), free_size((1.5, 2, 3, 0)), frozenset({"x"}), 2.0, None)
    s = ExecSlot("t", "a", 2, r, (1.0, GiB, 0, 0))
    assert (s.task_id, s.alloc_id, s.attempt, s.resources, s.need) == (
        "t", "a", 2, r, (1.0, GiB, 0, 0))
    b = Bucket(0, r, r.size(), (1.0, GiB, 0, 0), [], 0, 0, 0).push(7, "t").cover(1)
    assert (b.peek(), b.waiting, b.uncovered, b.covered) == ((7, "t"), 1, 0, 1)
    st = SchedulerState()
    assert (st.config, st.now, st.pending, st.next_request, st.order, len(st.tasks)) == (
        None, 0.0, 0, 1, None, 0)


def test_decisions_built_without_attrs_init_equal_attrs_built_ones() -> None:
    """engine/decisions.py fills the slots itself: the values must be what the classes' own
    keyword __init__ makes (equal, same repr, same hash), and a field with a hook is refused."""
    import attrs
    from reflowes.engine import decisions as d

    r, r2 = Resources(2, 3 * GiB), Resources(1, GiB, GiB)
    pairs = [
        (d.task_assigned("t", "a1", 2, "t.2", r),
         TaskAssigned(task_id="t", alloc_id="a1", attempt=2, exec_id="t.2", resources=r)),
        (d.task_finished("t", 2, False, {}, "boom", 1),
         TaskFinished(task_id="t", attempt=2, ok=False, result={}, error="boom", exit_code=1)),
        (d.task_requeued("t", 3, r2, "lost: x"),
         TaskRequeued(task_id="t", attempt=3, resources=r2, reason="lost: x")),
        (d.alloc_requested("r1", r, r2),
         AllocRequested(request_id="r1", resources=r, minimum=r2)),
        (d.alloc_released("a1", "idle"), AllocReleased(alloc_id="a1", reason="idle")),
    ]
    for fast, slow in pairs:
        assert type(fast) is type(slow)
        assert (fast, repr(fast)) == (slow, repr(slow))
        if not isinstance(fast, TaskFinished):  # its result dict makes it unhashable
            assert hash(fast) == hash(slow)

    @attrs.frozen(kw_only=True)
    class Checked:
        x: int = attrs.field(converter=int)

    with pytest.raises(TypeError, match="hook"):
        d._setters(Checked, ("x",))
    with pytest.raises(TypeError, match="fields changed"):
        d._setters(TaskRequeued, ("task_id", "attempt", "resources"))


def test_cpu_round_is_round_to_six_places() -> None:
    """The shortcut for integral cpu gives exactly round(x, 6), inf and nan included."""
    import math

    from reflowes.engine.schedstate import cpu_round

    for x in (0.0, -0.0, 3.0, -2.0, 1.5, 0.1 + 0.2, 16 - 0.3, 1e300, 2.0**60, math.inf,
              -math.inf):
        assert repr(cpu_round(x)) == repr(round(x, 6))
    assert math.isnan(cpu_round(math.nan))
