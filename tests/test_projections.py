"""Projections on hand-built event sequences, and folding at any split point equals one fold."""

from __future__ import annotations

import hypothesis.strategies as hs
import msgspec
from hypothesis import given, settings
from reflowes.events import model as m
from reflowes.events.model import ExecState, FileRef, Recorded, RunPhase, TaskState
from reflowes.events.resources import GiB, Resources
from reflowes.projections import batch, fold, manifests, stats
from reflowes.projections.timeline import describe

T0 = 1_700_000_000.0
BIG = Resources(4, 8 * GiB, 100 * GiB)
ONE = Resources(1, 1 * GiB, 0)
OUT = {"out": FileRef("ab" * 32, 12)}


def scenario() -> list[m.Event]:
    """Two runs: r1 with an OOM retry then success, r2 cached then failed, an alloc that dies."""
    return [
        m.BatchOpened(csv="s.csv", program="p.py", invocation=1, pid=42),  # 1
        m.SchedulerConfigured(max_alloc=BIG),  # 2
        m.RunDeclared(run_id="r1", program="p.py", params={"n": "1"}, digest="d1", row=1),  # 3
        m.RunDeclared(run_id="r2", program="p.py", params={"n": "2"}, digest="d2", row=2),  # 4
        m.RunPhaseChanged(run_id="r1", phase=RunPhase.EVAL, tries=1),  # 5
        m.RunPhaseChanged(run_id="r2", phase=RunPhase.EVAL, tries=1),  # 6
        m.TaskSubmitted(task_id="t1", run_id="r1", key="k1", ident="count", resources=ONE),  # 7
        m.CacheHit(run_id="r2", key="k9", ident="sort", result=OUT),  # 8
        m.AllocRequested(request_id="q1", resources=BIG, minimum=ONE),  # 9
        m.AllocGranted(alloc_id="a1", request_id="q1", resources=BIG),  # 10
        m.TaskAssigned(task_id="t1", alloc_id="a1", attempt=1, exec_id="e1", resources=ONE),  # 11
        m.ExecCreated(exec_id="e1", task_id="t1", alloc_id="a1", executor="local",
                      handle="1234", config={"cmd": "wc"}, resources=ONE),  # 12
        m.ExecStarted(exec_id="e1", task_id="t1"),  # 13
        m.ExecExited(exec_id="e1", task_id="t1", exit_code=137, oom=True, peak_mem=2 * GiB,
                     duration=30.0, error="killed: OOM"),  # 14
        m.TaskRequeued(task_id="t1", attempt=2, resources=Resources(1, 3 * GiB), reason="oom"),  # 15
        m.TaskAssigned(task_id="t1", alloc_id="a1", attempt=2, exec_id="e2",
                       resources=Resources(1, 3 * GiB)),  # 16
        m.ExecCreated(exec_id="e2", task_id="t1", alloc_id="a1", executor="docker",
                      handle="c0ffee", resources=Resources(1, 3 * GiB)),  # 17
        m.ExecStarted(exec_id="e2", task_id="t1"),  # 18
        m.Tick(),  # 19
        m.ExecExited(exec_id="e2", task_id="t1", exit_code=0, peak_mem=GiB, duration=60.0,
                     result=OUT),  # 20
        m.TaskFinished(task_id="t1", attempt=2, ok=True, result=OUT, exit_code=0),  # 21
        m.RunFinished(run_id="r1", ok=True, result=OUT, steps_run=1, steps_cached=0),  # 22
        m.TaskSubmitted(task_id="t2", run_id="r2", key="k2", ident="join",
                        resources=Resources(2, GiB)),  # 23
        m.TaskAssigned(task_id="t2", alloc_id="a1", attempt=1, exec_id="e3",
                       resources=Resources(2, GiB)),  # 24
        m.ExecCreated(exec_id="e3", task_id="t2", alloc_id="a1", executor="local",
                      handle="999"),  # 25
        m.AllocDied(alloc_id="a1", reason="keepalive failed"),  # 26
        m.ExecLost(exec_id="e3", task_id="t2", reason="alloc a1 died"),  # 27
        m.TaskRequeued(task_id="t2", attempt=2, resources=Resources(2, GiB), reason="lost"),  # 28
        m.RunPhaseChanged(run_id="r2", phase=RunPhase.ERROR, tries=1, error="boom"),  # 29
        m.RunFinished(run_id="r2", ok=False, error="boom"),  # 30
        m.AllocGranted(alloc_id="a2", request_id="q2", resources=ONE),  # 31
        m.AllocReleased(alloc_id="a2"),  # 32
        m.RunDeclared(run_id="r1", program="p.py", params={"n": "5"}, digest="d1b", row=1),  # 33
    ]


def record(events: list[m.Event], first: int = 1) -> list[Recorded]:
    """Envelopes with seq from `first` and one second between events."""
    return [Recorded(first + i, T0 + first + i, e) for i, e in enumerate(events)]


def folded(records: list[Recorded]) -> fold.Projections:
    return fold.initial().apply_all(records)


RECS = record(scenario())


def test_stats_totals_allocs_and_every_attempt() -> None:
    st = folded(RECS).stats
    assert (st.total_allocs, st.total_tasks) == (2, 2)
    a1 = st.allocs["a1"]
    assert a1.resources == BIG and a1.granted_at == T0 + 10
    # t1's attempts gave their resources back; t2's was lost with the alloc (as in the core)
    assert a1.available == BIG - Resources(2, GiB)
    assert a1.dead and not a1.released and a1.reason == "keepalive failed"
    assert a1.task_ids == ["t1", "t1", "t2"]
    a2 = st.allocs["a2"]
    assert a2.released and not a2.dead and a2.reason == "idle"
    first, second = st.attempt("t1", 1), st.attempt("t1", 2)
    assert (first.state, first.error, first.exec_id, first.alloc_id, first.exit_code) == (
        TaskState.FAILED, "killed: OOM", "e1", "a1", 137)
    assert (first.ident, first.type, first.run_id, first.key) == ("count", "exec", "r1", "k1")
    assert (second.state, second.error, second.exec_id, second.exit_code) == (
        TaskState.DONE, None, "e2", 0)
    assert second.resources == Resources(1, 3 * GiB)
    lost, waiting = st.attempt("t2", 1), st.attempt("t2", 2)
    assert (lost.state, lost.error, lost.exec_id) == (TaskState.LOST, "alloc a1 died", "e3")
    assert (waiting.state, waiting.alloc_id, waiting.run_id) == (TaskState.PENDING, None, "r2")
    assert st.latest("t2") is waiting


def test_stats_available_while_running() -> None:
    st = folded(RECS[:18]).stats
    assert st.allocs["a1"].available == BIG - Resources(1, 3 * GiB)
    assert st.attempt("t1", 2).state is TaskState.RUNNING
    assert st.attempt("t1", 1).state is TaskState.FAILED


def test_stats_adopts_the_cores_attempt_numbers() -> None:
    recs = record([
        m.TaskSubmitted(task_id="t", run_id="r", key="k", ident="x", resources=ONE),
        m.TaskAssigned(task_id="t", alloc_id="a", attempt=0, exec_id="e", resources=ONE),
    ])
    st = folded(recs).stats
    assert list(st.attempts["t"]) == [0] and st.attempt("t", 0).state is TaskState.ASSIGNED


def test_batch_runs_phases_results_and_resource_minutes() -> None:
    b = folded(RECS[:32]).batch
    assert (b.csv, b.program, b.invocations) == ("s.csv", "p.py", 1)
    r1, r2 = b.runs["r1"], b.runs["r2"]
    assert (r1.program, r1.params, r1.digest, r1.row, r1.created) == (
        "p.py", {"n": "1"}, "d1", 1, T0 + 3)
    assert (r1.phase, r1.tries, r1.last_try, r1.completed) == (RunPhase.DONE, 1, T0 + 5, T0 + 22)
    assert (r1.result, r1.error, r1.steps_run, r1.steps_cached) == (OUT, None, 1, 0)
    assert r1.resource_minutes == 1 * 30 / 60 + 1 * 60 / 60
    assert (r2.phase, r2.error, r2.steps_cached, r2.steps_run, r2.completed) == (
        RunPhase.ERROR, "boom", 1, 0, T0 + 30)
    assert r2.resource_minutes == 0.0  # its only exec was lost: no duration
    totals = b.totals()
    assert totals["runs"] == 2 and totals["phases"]["done"] == 1 and totals["phases"]["error"] == 1
    assert totals["steps_run"] == 1 and totals["steps_cached"] == 1


def test_a_run_declared_with_its_first_try_is_evaluating() -> None:
    recs = record([
        m.RunDeclared(run_id="a", program="p.py", params={}, digest="d", tries=1),
        m.RunDeclared(run_id="b", program="p.py", params={}, digest="d"),  # older logs
        m.RunPhaseChanged(run_id="a", phase=RunPhase.EVAL, tries=2),
    ])
    runs = folded(recs[:2]).batch.runs
    assert (runs["a"].phase, runs["a"].tries, runs["a"].last_try) == (RunPhase.EVAL, 1, T0 + 1)
    assert (runs["b"].phase, runs["b"].tries, runs["b"].last_try) == (RunPhase.INIT, 0, None)
    a = folded(recs).batch.runs["a"]
    assert (a.phase, a.tries, a.last_try) == (RunPhase.EVAL, 2, T0 + 3)


def test_batch_new_digest_resets_run_and_same_digest_does_not() -> None:
    b = folded(RECS).batch
    r1 = b.runs["r1"]
    assert (r1.digest, r1.params, r1.phase, r1.tries, r1.created) == (
        "d1b", {"n": "5"}, RunPhase.INIT, 0, T0 + 33)
    assert (r1.result, r1.resource_minutes, r1.completed) == ({}, 0.0, None)
    again = record([m.RunDeclared(run_id="r2", program="p.py", params={"n": "2"}, digest="d2")],
                   first=34)
    p = folded(RECS).apply_all(again)
    assert p.batch.runs["r2"].phase is RunPhase.ERROR and p.batch.runs["r2"].created == T0 + 4


def test_manifests_every_exec() -> None:
    mf = folded(RECS).manifests
    e1, e2, e3 = mf.execs["e1"], mf.execs["e2"], mf.execs["e3"]
    assert (e1.executor, e1.handle, e1.config, e1.created, e1.started, e1.ended) == (
        "local", "1234", {"cmd": "wc"}, T0 + 12, T0 + 13, T0 + 14)
    assert (e1.state, e1.exit_code, e1.oom, e1.peak_mem, e1.error, e1.duration) == (
        ExecState.EXITED, 137, True, 2 * GiB, "killed: OOM", 30.0)
    assert (e1.task_id, e1.alloc_id, e1.resources) == ("t1", "a1", ONE)
    assert (e2.executor, e2.handle, e2.state, e2.result, e2.oom) == (
        "docker", "c0ffee", ExecState.EXITED, OUT, False)
    assert (e3.state, e3.error, e3.ended) == (ExecState.LOST, "alloc a1 died", T0 + 27)
    assert mf.live() == []
    mid = folded(RECS[:25]).manifests
    assert [x.exec_id for x in mid.live()] == ["e3"]
    assert folded(RECS[:18]).manifests.execs["e2"].state is ExecState.RUNNING


def test_an_exec_made_and_started_at_once_is_running_in_stats_and_manifests() -> None:
    recs = record([
        m.TaskSubmitted(task_id="t", run_id="r", key="k", ident="x", resources=ONE),
        m.TaskAssigned(task_id="t", alloc_id="a", attempt=1, exec_id="e", resources=ONE),
        m.ExecCreated(exec_id="e", task_id="t", alloc_id="a", executor="local", handle="7",
                      started=True),
    ])
    p = folded(recs)
    assert p.stats.attempt("t", 1).state is TaskState.RUNNING
    man = p.manifests.execs["e"]
    assert (man.state, man.created, man.started) == (ExecState.RUNNING, T0 + 3, T0 + 3)
    # without the flag it is only made: an ExecStarted follows (e.g. a container)
    made = folded(recs[:2] + record([m.ExecCreated(exec_id="e", task_id="t", alloc_id="a",
                                                   executor="docker", handle="c")], 3))
    assert made.stats.attempt("t", 1).state is TaskState.ASSIGNED
    assert made.manifests.execs["e"].state is ExecState.CREATED


def test_to_dict_is_json_ready() -> None:
    import json

    d = folded(RECS).to_dict()
    again = json.loads(json.dumps(d))
    assert again["seq"] == len(RECS)
    assert again["batch"]["runs"]["r2"]["phase"] == "error"
    assert {(a["task_id"], a["attempt"]) for a in again["stats"]["attempts"]} == {
        ("t1", 1), ("t1", 2), ("t2", 1), ("t2", 2)}
    assert again["manifests"]["execs"]["e1"]["state"] == "exited"


def test_every_kind_has_a_one_line_summary() -> None:
    for rec in RECS:
        text = describe(rec.event)
        assert text and "\n" not in text and text != rec.kind or rec.kind == "clock.tick"
    assert "attempt 2" in describe(RECS[14].event) and "oom" in describe(RECS[14].event)


# ----------------------------------------------------------------- property: split folds


@hs.composite
def event_sequences(draw: hs.DrawFn) -> list[Recorded]:
    """Plausible but unruly sequences: ids reused, outcomes out of order, dead allocs."""
    runs = [f"r{i}" for i in range(3)]
    tasks = [f"t{i}" for i in range(4)]
    allocs = [f"a{i}" for i in range(2)]
    execs = [f"e{i}" for i in range(5)]
    pick = hs.sampled_from
    res = hs.builds(Resources, hs.integers(0, 4), hs.integers(0, 4 * GiB))
    kinds = hs.one_of(
        hs.builds(m.RunDeclared, run_id=pick(runs), program=hs.just("p"),
                  params=hs.just({}), digest=pick(["d1", "d2"])),
        hs.builds(m.RunPhaseChanged, run_id=pick(runs), phase=pick(list(RunPhase)),
                  tries=hs.integers(1, 3), error=hs.none() | hs.just("e")),
        hs.builds(m.RunFinished, run_id=pick(runs), ok=hs.booleans(),
                  steps_run=hs.integers(0, 2)),
        hs.builds(m.TaskSubmitted, task_id=pick(tasks), run_id=pick(runs), key=hs.just("k"),
                  ident=hs.just("s"), resources=res),
        hs.builds(m.CacheHit, run_id=pick(runs), key=hs.just("k"), ident=hs.just("s")),
        hs.builds(m.TaskAssigned, task_id=pick(tasks), alloc_id=pick(allocs),
                  attempt=hs.integers(1, 3), exec_id=pick(execs), resources=res),
        hs.builds(m.TaskRequeued, task_id=pick(tasks), attempt=hs.integers(2, 4),
                  resources=res, reason=pick(["lost", "oom"])),
        hs.builds(m.TaskFinished, task_id=pick(tasks), attempt=hs.integers(1, 3),
                  ok=hs.booleans()),
        hs.builds(m.AllocGranted, alloc_id=pick(allocs), request_id=hs.just("q"),
                  resources=res),
        hs.builds(m.AllocDied, alloc_id=pick(allocs), reason=hs.just("gone")),
        hs.builds(m.AllocReleased, alloc_id=pick(allocs)),
        hs.builds(m.ExecCreated, exec_id=pick(execs), task_id=pick(tasks),
                  alloc_id=pick(allocs), executor=hs.just("local"), handle=hs.just("1"),
                  started=hs.booleans()),
        hs.builds(m.ExecStarted, exec_id=pick(execs), task_id=pick(tasks)),
        hs.builds(m.ExecExited, exec_id=pick(execs), task_id=pick(tasks),
                  exit_code=hs.integers(0, 2), duration=hs.floats(0, 100)),
        hs.builds(m.ExecLost, exec_id=pick(execs), task_id=pick(tasks), reason=hs.just("x")),
        hs.just(m.Tick()),
    )
    return record(draw(hs.lists(kinds, max_size=60)))


@hs.composite
def lifecycles(draw: hs.DrawFn) -> list[Recorded]:
    """Coherent task lives (submit, place, run, OOM retry or fail or lose), interleaved at
    random: most records finish, so snapshots put them in cold segments."""
    lives: list[list[m.Event]] = [[
        m.AllocGranted(alloc_id="a1", request_id="q", resources=BIG),
        m.RunDeclared(run_id="r0", program="p", params={}, digest="d"),
        m.RunPhaseChanged(run_id="r0", phase=RunPhase.EVAL),
    ]]
    for n in range(draw(hs.integers(1, 5))):
        task, run = f"t{n}", f"r{n % 2}"
        life: list[m.Event] = [m.TaskSubmitted(task_id=task, run_id=run, key=task, ident="s",
                                               resources=ONE)]
        attempts = draw(hs.integers(1, 3))
        for a in range(1, attempts + 1):
            ex = f"{task}.{a}"
            life += [m.TaskAssigned(task_id=task, alloc_id="a1", attempt=a, exec_id=ex,
                                    resources=ONE),
                     m.ExecCreated(exec_id=ex, task_id=task, alloc_id="a1", executor="local",
                                   handle=str(a)),
                     m.ExecStarted(exec_id=ex, task_id=task)]
            if a < attempts:
                life += [draw(hs.sampled_from([
                    m.ExecExited(exec_id=ex, task_id=task, exit_code=137, oom=True,
                                 duration=2.0),
                    m.ExecLost(exec_id=ex, task_id=task, reason="gone")])),
                    m.TaskRequeued(task_id=task, attempt=a + 1, resources=ONE,
                                   reason=draw(hs.sampled_from(["oom", "lost: gone"])))]
            else:
                ok = draw(hs.booleans())
                life += [m.ExecExited(exec_id=ex, task_id=task, exit_code=0 if ok else 1,
                                      duration=5.0, result=OUT if ok else {}),
                         m.TaskFinished(task_id=task, attempt=a, ok=ok)]
        lives.append(life)
    lives.append([m.RunFinished(run_id="r0", ok=True, result=OUT), m.AllocReleased(alloc_id="a1")])
    order = draw(hs.permutations([i for i, life in enumerate(lives[1:-1], 1) for _ in life]))
    cursor = [0] * len(lives)
    events = list(lives[0])
    for i in order:
        events.append(lives[i][cursor[i]])
        cursor[i] += 1
    return record(events + lives[-1])


@settings(max_examples=150, deadline=None)
@given(hs.one_of(event_sequences(), lifecycles()), hs.lists(hs.integers(0, 60), max_size=4))
def test_incremental_fold_at_any_split_equals_one_fold(
    recs: list[Recorded], cuts: list[int]
) -> None:
    whole = fold.dumps(folded(recs))
    p = fold.initial()  # each split below goes through a snapshot round trip
    last = 0
    for cut in sorted(c for c in cuts if c <= len(recs)) + [len(recs)]:
        p = fold.loads(fold.dumps(p))  # each split goes through a snapshot round trip
        p.apply_all(recs[last:cut])
        last = cut
    full = folded(recs)
    assert p == full and p.to_dict() == full.to_dict()
    assert fold.loads(fold.dumps(p)) == fold.loads(whole)


def test_snapshot_at_every_seq_then_tail_equals_full_fold() -> None:
    full = folded(RECS)
    for i in range(len(RECS) + 1):
        p = fold.loads(fold.dumps(folded(RECS[:i]))).apply_all(RECS[i:])
        assert p == full and p.to_dict() == full.to_dict(), f"split at {i}"
    p = fold.initial()
    for rec in RECS:  # a snapshot after every event: many cold segments, thawed by lookups
        p = fold.loads(fold.dumps(p)).apply(rec)
    assert p == full and p.to_dict() == full.to_dict()


def test_finished_records_stay_encoded_until_needed() -> None:
    p = fold.loads(fold.dumps(folded(RECS[:25])))
    execs = p.manifests.execs
    assert len(execs) == 3 and list(execs.unfinished()) == [execs.hot["e3"]]
    assert [x.exec_id for x in p.manifests.live()] == ["e3"] and len(execs.hot) == 1
    assert execs["e1"].exit_code == 137 and len(execs.hot) == 3  # a lookup thaws them


def test_each_projection_apply_matches_the_bundle() -> None:
    s, b, mf = stats.initial(), batch.initial(), manifests.initial()
    for rec in RECS:
        s, b, mf = stats.apply(s, rec), batch.apply(b, rec), manifests.apply(mf, rec)
    p = folded(RECS)
    assert (s, b, mf) == (p.stats, p.batch, p.manifests)
    assert stats.loads(stats.dumps(s)) == s and batch.loads(batch.dumps(b)) == b
    assert manifests.loads(manifests.dumps(mf)) == mf


def test_fold_of_a_log_reads_raw_rows_and_equals_the_record_fold() -> None:
    from reflowes.events.log import MemoryLog

    log = MemoryLog()
    for rec in RECS:
        log.append([rec.event], at=rec.at)
    assert fold.fold(log) == folded(RECS)
    assert fold.fold(log, until=20) == folded(RECS[:20])
    fold.snapshot(log, fold.fold(log, until=12))
    assert fold.fold(log) == folded(RECS) and fold.fold(log, until=11) == folded(RECS[:11])


def test_unusable_snapshots_are_ignored() -> None:
    from reflowes.events.log import MemoryLog

    log = MemoryLog()
    for rec in RECS:
        log.append([rec.event], at=rec.at)
    full = folded(RECS)
    log.save_snapshot(fold.SNAPSHOT_NAME, 10, fold.VERSION, b"not msgpack at all")
    assert fold.fold(log) == full  # damaged: folded from seq 0
    log.save_snapshot(fold.SNAPSHOT_NAME, 10, fold.VERSION + 1, fold.dumps(folded(RECS[:10])))
    assert fold.fold(log) == full  # another version: ignored
    log.save_snapshot(fold.SNAPSHOT_NAME, 11, fold.VERSION, fold.dumps(folded(RECS[:10])))
    assert fold.fold(log) == full  # its seq disagrees with the row's: ignored
    empty = fold.loads(fold.dumps(fold.initial()))
    assert empty == fold.initial() and empty.seq == 0


def test_a_row_that_cannot_be_decoded_stops_the_fold_at_the_last_good_seq() -> None:
    import pytest
    from reflowes.events.errors import BadEventBody, UnknownEventKind

    rows = [(r.seq, r.at, r.kind, r.stream, 1, msgspec.json.encode(r.event))
            for r in RECS[:12]]
    p = fold.initial()
    with pytest.raises(UnknownEventKind, match="seq 13 in x.sqlite"):
        p.apply_rows([*rows, (13, T0, "galaxy.formed", "x", 1, b"{}")], "x.sqlite")
    assert p == folded(RECS[:12]) and p.seq == 12
    p = fold.initial()
    with pytest.raises(BadEventBody, match="seq 13"):
        p.apply_rows([*rows, (13, T0, "exec.started", "x", 1, b'{"exec_id": 7}')])
    assert p.seq == 12
