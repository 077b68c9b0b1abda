"""Batch state, a pure fold: per run its phase, tries, result or error, steps and resource-minutes.

Resource-minutes sum cpu x duration / 60 over a run's exec attempts (exec -> task -> run through
TaskAssigned and TaskSubmitted). Imports only reflowes.events, msgspec and the stdlib.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from reflowes.events import model as m
from reflowes.events.model import FileRef, Recorded, RunPhase
from reflowes.projections.plain import plain
from reflowes.projections.records import Records, Wire, encode, wire_decoder


class RunState(msgspec.Struct, array_like=True, gc=False):
    """One run (one CSV row) as it stands."""

    run_id: str
    program: str
    params: dict[str, str]
    digest: str
    created: float
    row: int = 0
    phase: RunPhase = RunPhase.INIT
    tries: int = 0
    last_try: float | None = None
    completed: float | None = None
    result: dict[str, FileRef] = msgspec.field(default_factory=dict)
    error: str | None = None
    steps_run: int = 0
    steps_cached: int = 0
    resource_minutes: float = 0.0


class BatchState(msgspec.Struct, array_like=True, gc=False):
    """Every run by id, plus the maps that attribute exec time to runs (tasks and execs in
    flight only, so that a snapshot stays small)."""

    csv: str | None = None
    program: str | None = None
    invocations: int = 0
    runs: Records[RunState] = msgspec.field(default_factory=lambda: Records(RunState))
    task_run: dict[str, str] = msgspec.field(default_factory=dict)
    exec_cpu: dict[str, tuple[str, float]] = msgspec.field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        """Runs per phase, steps and resource-minutes over the whole batch."""
        phases = {p.value: 0 for p in RunPhase}
        run = cached = 0
        minutes = 0.0
        for r in self.runs.values():
            phases[r.phase.value] += 1
            run += r.steps_run
            cached += r.steps_cached
            minutes += r.resource_minutes
        return {
            "runs": len(self.runs),
            "phases": phases,
            "steps_run": run,
            "steps_cached": cached,
            "resource_minutes": round(minutes, 6),
        }


def initial() -> BatchState:
    """The empty batch."""
    return BatchState()


def _opened(st: BatchState, ev: m.BatchOpened, at: float) -> None:
    st.csv = ev.csv
    st.program = ev.program
    st.invocations += 1


def _declared(st: BatchState, ev: m.RunDeclared, at: float) -> None:
    old = st.runs.get(ev.run_id)
    if old is not None and old.digest == ev.digest:
        return  # the same row seen again by a resuming invocation
    run = st.runs[ev.run_id] = RunState(ev.run_id, ev.program, ev.params, ev.digest, at, ev.row)
    if ev.tries:  # its evaluation began at once (no RunPhaseChanged to EVAL follows)
        run.phase, run.tries, run.last_try = RunPhase.EVAL, ev.tries, at


def _phase(st: BatchState, ev: m.RunPhaseChanged, at: float) -> None:
    run = st.runs.get(ev.run_id)
    if run is None:
        return
    run.phase = ev.phase
    run.tries = ev.tries
    if ev.phase is RunPhase.EVAL:
        run.last_try = at
    if ev.error is not None:
        run.error = ev.error
    elif ev.phase is not RunPhase.ERROR:
        run.error = None


def _finished(st: BatchState, ev: m.RunFinished, at: float) -> None:
    run = st.runs.get(ev.run_id)
    if run is None:
        return
    run.phase = RunPhase.DONE if ev.ok else RunPhase.ERROR
    run.completed = at
    run.result = ev.result
    run.error = ev.error
    if ev.steps_run or ev.steps_cached:
        run.steps_run = ev.steps_run
        run.steps_cached = ev.steps_cached


def _submitted(st: BatchState, ev: m.TaskSubmitted, at: float) -> None:
    st.task_run[ev.task_id] = ev.run_id


def _cached(st: BatchState, ev: m.CacheHit, at: float) -> None:
    run = st.runs.get(ev.run_id)
    if run is not None:
        run.steps_cached += 1


def _assigned(st: BatchState, ev: m.TaskAssigned, at: float) -> None:
    run_id = st.task_run.get(ev.task_id)
    if run_id is not None:
        st.exec_cpu[ev.exec_id] = (run_id, ev.resources.cpu)


def _task_finished(st: BatchState, ev: m.TaskFinished, at: float) -> None:
    run_id = st.task_run.pop(ev.task_id, None)  # a finished task is never heard of again
    if ev.ok and run_id is not None:
        run = st.runs.get(run_id)
        if run is not None:
            run.steps_run += 1


def _exited(st: BatchState, ev: m.ExecExited, at: float) -> None:
    where = st.exec_cpu.pop(ev.exec_id, None)
    if where is None:
        return
    run = st.runs.get(where[0])
    if run is not None:
        run.resource_minutes += where[1] * ev.duration / 60.0


def _lost(st: BatchState, ev: m.ExecLost, at: float) -> None:
    st.exec_cpu.pop(ev.exec_id, None)


HANDLERS: dict[type, Callable[[BatchState, Any, float], None]] = {
    m.BatchOpened: _opened,
    m.RunDeclared: _declared,
    m.RunPhaseChanged: _phase,
    m.RunFinished: _finished,
    m.TaskSubmitted: _submitted,
    m.CacheHit: _cached,
    m.TaskAssigned: _assigned,
    m.TaskFinished: _task_finished,
    m.ExecExited: _exited,
    m.ExecLost: _lost,
}


def apply(state: BatchState, rec: Recorded) -> BatchState:
    """Fold one recorded event into the batch state (in place) and return it."""
    handler = HANDLERS.get(type(rec.event))
    if handler is not None:
        handler(state, rec.event, rec.at)
    return state


def to_dict(state: BatchState) -> dict[str, Any]:
    """JSON-ready form: batch facts, runs by id, and totals."""
    return {
        "csv": state.csv,
        "program": state.program,
        "invocations": state.invocations,
        "runs": plain(state.runs),
        "totals": state.totals(),
    }


_FINISHED = (RunPhase.DONE, RunPhase.ERROR)
_wire = wire_decoder(
    tuple[str | None, str | None, int, Wire, dict[str, str], dict[str, tuple[str, float]]]
)


def dumps(state: BatchState) -> bytes:
    """Snapshot bytes (msgpack); finished runs go into a cold segment."""
    runs = state.runs.freeze(lambda r: r.phase in _FINISHED)
    return encode((state.csv, state.program, state.invocations, runs, state.task_run,
                   state.exec_cpu))


def loads(blob: bytes) -> BatchState:
    """The state from snapshot bytes (cold runs stay encoded until needed)."""
    csv, program, invocations, runs, task_run, exec_cpu = _wire.decode(blob)
    return BatchState(csv, program, invocations, Records.unfreeze(RunState, runs), task_run,
                      exec_cpu)
