"""The recovery view (engine/recovery.py): what a restart must reconcile, folded from events."""

from __future__ import annotations

from reflowes.engine.recovery import WorldView
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    ExecCreated,
    ExecExited,
    ExecLost,
    ExecStarted,
    RunDeclared,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
)
from reflowes.events.resources import Resources

R = Resources(1, 1 << 20, 0)


def assigned(n: int) -> TaskAssigned:
    return TaskAssigned(task_id=f"t{n}", alloc_id="a1", attempt=1, exec_id=f"t{n}.1", resources=R)


def created(n: int) -> ExecCreated:
    return ExecCreated(exec_id=f"t{n}.1", task_id=f"t{n}", alloc_id="a1", executor="local",
                       handle=str(100 + n), resources=R)


def test_allocs_requests_and_open_execs_follow_the_events() -> None:
    w = WorldView()
    for ev in [
        AllocRequested(request_id="r1", resources=R, minimum=R),
        AllocRequested(request_id="r2", resources=R, minimum=R),
        AllocGranted(alloc_id="a1", request_id="r1", resources=R),
        RunDeclared(run_id="x", program="p.py", params={}, digest="d"),  # not its business
        *(assigned(n) for n in range(5)), *(created(n) for n in range(5)),
        ExecStarted(exec_id="t0.1", task_id="t0"),
        ExecExited(exec_id="t0.1", task_id="t0", exit_code=0),
        ExecLost(exec_id="t1.1", task_id="t1", reason="gone"),
        TaskRequeued(task_id="t2", attempt=1, resources=R, reason="oom"),
        TaskFinished(task_id="t3", attempt=1, ok=False, error="x"),
    ]:
        w.apply(ev)
    assert set(w.requests) == {"r2"} and w.allocs == {"a1": R}
    assert set(w.open) == {"t4.1"} and set(w.created) == {"t4.1"} and w.by_task == {"t4": "t4.1"}
    # an ExecCreated for an attempt already closed is not remembered
    w.apply(created(0))
    assert set(w.created) == {"t4.1"}
    # a new attempt of a task replaces the old one in by_task; closing the old leaves it
    w.apply(TaskAssigned(task_id="t4", alloc_id="a1", attempt=2, exec_id="t4.2", resources=R))
    w.apply(ExecExited(exec_id="t4.1", task_id="t4", exit_code=1))
    assert set(w.open) == {"t4.2"} and w.by_task == {"t4": "t4.2"}
    w.apply(AllocDied(alloc_id="a1", reason="gone"))
    w.apply(AllocReleased(alloc_id="a9"))
    assert w.allocs == {}
