"""The core's decision events, built without attrs' keyword __init__ (a Python frame and a
by-name setattr per field): object.__new__ and the classes' own slot descriptors instead.

Only for decision classes whose fields have no converter, validator or on_setattr hook (checked
at import, so a later change to events/model.py fails loudly here rather than being bypassed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
from reflowes.events.model import (
    AllocReleased,
    AllocRequested,
    FileRef,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
)
from reflowes.events.resources import Resources

_new_obj: Final = object.__new__
# The classes as Final names too: C statics under mypyc, not a module-dict lookup per decision.
_TaskAssigned: Final = TaskAssigned
_TaskFinished: Final = TaskFinished
_TaskRequeued: Final = TaskRequeued
_AllocRequested: Final = AllocRequested
_AllocReleased: Final = AllocReleased


def _setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of `cls`'s fields, in `names` order, which must be all of its fields."""
    fields = attrs.fields(cls)
    if tuple(f.name for f in fields) != names:
        raise TypeError(f"{cls.__name__} fields changed: {[f.name for f in fields]}")
    for f in fields:
        if f.converter is not None or f.validator is not None or f.on_setattr not in (
                None, attrs.setters.NO_OP):
            raise TypeError(f"{cls.__name__}.{f.name} has a hook its __init__ would run")
    return tuple(cls.__dict__[n].__set__ for n in names)


_TA: Final = _setters(TaskAssigned, ("task_id", "alloc_id", "attempt", "exec_id", "resources"))
_TA0: Final = _TA[0]
_TA1: Final = _TA[1]
_TA2: Final = _TA[2]
_TA3: Final = _TA[3]
_TA4: Final = _TA[4]
_TF: Final = _setters(TaskFinished, ("task_id", "attempt", "ok", "result", "error", "exit_code"))
_TF0: Final = _TF[0]
_TF1: Final = _TF[1]
_TF2: Final = _TF[2]
_TF3: Final = _TF[3]
_TF4: Final = _TF[4]
_TF5: Final = _TF[5]
_TR: Final = _setters(TaskRequeued, ("task_id", "attempt", "resources", "reason"))
_AQ: Final = _setters(AllocRequested, ("request_id", "resources", "minimum"))
_AR: Final = _setters(AllocReleased, ("alloc_id", "reason"))


def task_assigned(task_id: str, alloc_id: str, attempt: int, exec_id: str,
                  resources: Resources) -> TaskAssigned:
    d = _new_obj(_TaskAssigned)
    _TA0(d, task_id)
    _TA1(d, alloc_id)
    _TA2(d, attempt)
    _TA3(d, exec_id)
    _TA4(d, resources)
    return d


def task_finished(task_id: str, attempt: int, ok: bool, result: dict[str, FileRef],
                  error: str | None, exit_code: int | None) -> TaskFinished:
    d = _new_obj(_TaskFinished)
    _TF0(d, task_id)
    _TF1(d, attempt)
    _TF2(d, ok)
    _TF3(d, result)
    _TF4(d, error)
    _TF5(d, exit_code)
    return d


def task_requeued(task_id: str, attempt: int, resources: Resources,
                  reason: str) -> TaskRequeued:
    d = _new_obj(_TaskRequeued)
    for f, v in zip(_TR, (task_id, attempt, resources, reason)):
        f(d, v)
    return d


def alloc_requested(request_id: str, resources: Resources, minimum: Resources) -> AllocRequested:
    d = _new_obj(_AllocRequested)
    for f, v in zip(_AQ, (request_id, resources, minimum)):
        f(d, v)
    return d


def alloc_released(alloc_id: str, reason: str) -> AllocReleased:
    d = _new_obj(_AllocReleased)
    for f, v in zip(_AR, (alloc_id, reason)):
        f(d, v)
    return d
