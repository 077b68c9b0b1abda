"""Executor manifests, a pure fold: per exec its executor, state, handle, config and outcome.

The log-derived counterpart of Reflow's per-exec manifest.json. Imports only reflowes.events,
msgspec and the stdlib.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from reflowes.events import model as m
from reflowes.events.model import ExecState, FileRef, Recorded
from reflowes.events.resources import Resources
from reflowes.projections.plain import plain
from reflowes.projections.records import Records, Wire, encode, wire_decoder

LIVE = (ExecState.CREATED, ExecState.RUNNING)


class Manifest(msgspec.Struct, array_like=True, gc=False):
    """One exec: a process (pid) or a container (id) and how it ended."""

    exec_id: str
    task_id: str
    alloc_id: str
    executor: str
    handle: str
    created: float
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    resources: Resources = Resources()
    state: ExecState = ExecState.CREATED
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    oom: bool = False
    peak_mem: int = 0
    duration: float = 0.0
    result: dict[str, FileRef] = msgspec.field(default_factory=dict)
    error: str | None = None


class ManifestsState(msgspec.Struct, array_like=True, gc=False):
    """Every exec by id."""

    execs: Records[Manifest] = msgspec.field(default_factory=lambda: Records(Manifest))

    def live(self) -> list[Manifest]:
        """Execs still created or running, oldest first."""
        return sorted(
            (x for x in self.execs.unfinished() if x.state in LIVE), key=lambda x: x.created
        )


def initial() -> ManifestsState:
    """No execs yet."""
    return ManifestsState()


def _get(st: ManifestsState, exec_id: str, task_id: str, at: float) -> Manifest:
    man = st.execs.get(exec_id)
    if man is None:  # an outcome without its creation (e.g. a tail read from a later seq)
        man = st.execs[exec_id] = Manifest(exec_id, task_id, "", "", "", at)
    return man


def _created(st: ManifestsState, ev: m.ExecCreated, at: float) -> None:
    st.execs[ev.exec_id] = Manifest(
        ev.exec_id, ev.task_id, ev.alloc_id, ev.executor, ev.handle, at, ev.config, ev.resources
    )
    if ev.started:
        _started(st, ev, at)


def _started(st: ManifestsState, ev: m.ExecStarted | m.ExecCreated, at: float) -> None:
    man = _get(st, ev.exec_id, ev.task_id, at)
    if man.state is ExecState.CREATED:
        man.state = ExecState.RUNNING
    man.started = at


def _exited(st: ManifestsState, ev: m.ExecExited, at: float) -> None:
    man = _get(st, ev.exec_id, ev.task_id, at)
    man.state = ExecState.EXITED
    man.ended = at
    man.exit_code = ev.exit_code
    man.oom = ev.oom
    man.peak_mem = ev.peak_mem
    man.duration = ev.duration
    man.result = ev.result
    man.error = ev.error


def _lost(st: ManifestsState, ev: m.ExecLost, at: float) -> None:
    man = _get(st, ev.exec_id, ev.task_id, at)
    if man.state in LIVE:
        man.state = ExecState.LOST
        man.ended = at
        man.error = ev.reason


HANDLERS: dict[type, Callable[[ManifestsState, Any, float], None]] = {
    m.ExecCreated: _created,
    m.ExecStarted: _started,
    m.ExecExited: _exited,
    m.ExecLost: _lost,
}


def apply(state: ManifestsState, rec: Recorded) -> ManifestsState:
    """Fold one recorded event into the manifests (in place) and return it."""
    handler = HANDLERS.get(type(rec.event))
    if handler is not None:
        handler(state, rec.event, rec.at)
    return state


def to_dict(state: ManifestsState) -> dict[str, Any]:
    """JSON-ready form: execs by id."""
    return {"execs": plain(state.execs)}


_wire = wire_decoder(tuple[Wire])


def dumps(state: ManifestsState) -> bytes:
    """Snapshot bytes (msgpack); execs that exited or were lost go into a cold segment."""
    return encode((state.execs.freeze(lambda x: x.state not in LIVE),))


def loads(blob: bytes) -> ManifestsState:
    """The state from snapshot bytes (cold execs stay encoded until needed)."""
    (execs,) = _wire.decode(blob)
    return ManifestsState(Records.unfreeze(Manifest, execs))
