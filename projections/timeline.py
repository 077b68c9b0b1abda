"""One-line, human summaries of events for `reflowes replay`'s timeline.

Pure string formatting over the event vocabulary; imports only reflowes.events and the stdlib.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reflowes.events import model as m
from reflowes.events.resources import format_size


def _short(ident: str | None, n: int = 12) -> str:
    """A digest-like id cut to n characters, keeping an attempt suffix (`<task>.2`)."""
    if not ident:
        return "-"
    head, dot, tail = ident.rpartition(".")
    if dot and tail.isdigit() and len(head) > n:
        return f"{head[:n]}.{tail}"
    return ident[:n]


def short(ident: str | None, n: int = 12) -> str:
    """Public form of the id shortener, for tables."""
    return _short(ident, n)


def _files(result: dict[str, m.FileRef]) -> str:
    return ",".join(sorted(result)) if result else "-"


def _err(error: str | None) -> str:
    if not error:
        return ""
    line = error.strip().splitlines()[-1] if error.strip() else error
    return f": {line[:120]}"


_SUMMARY: dict[type, Callable[[Any], str]] = {
    m.BatchOpened: lambda e: (
        f"invocation {e.invocation} of {e.csv}" + (f" with {e.program}" if e.program else "")
        + f" (pid {e.pid})"
    ),
    m.SchedulerConfigured: lambda e: f"max alloc {e.max_alloc}, max pending {e.max_pending_allocs}",
    m.RunDeclared: lambda e: (
        f"run {e.run_id} (row {e.row}) program {e.program} params "
        + " ".join(f"{k}={v}" for k, v in e.params.items())
        + f" digest {_short(e.digest)}"
        + (f" -> eval (try {e.tries})" if e.tries else "")
    ),
    m.RunPhaseChanged: lambda e: f"run {e.run_id} -> {e.phase.value} (try {e.tries}){_err(e.error)}",
    m.RunFinished: lambda e: (
        f"run {e.run_id} {'done' if e.ok else 'failed'}: {e.steps_run} run, "
        f"{e.steps_cached} cached, results {_files(e.result)}{_err(e.error)}"
    ),
    m.TaskSubmitted: lambda e: (
        f"task {_short(e.task_id)} {e.ident} for run {e.run_id} key {_short(e.key)} "
        f"({e.resources})"
    ),
    m.CacheHit: lambda e: f"{e.ident} for run {e.run_id} cached, key {_short(e.key)}",
    m.TaskJoined: lambda e: (
        f"{e.ident} for run {e.run_id} joins task {_short(e.task_id)} (in flight, same key "
        f"{_short(e.key)})"
    ),
    m.TaskAssigned: lambda e: (
        f"task {_short(e.task_id)} attempt {e.attempt} -> alloc {e.alloc_id} "
        f"as exec {_short(e.exec_id)} ({e.resources})"
    ),
    m.TaskRequeued: lambda e: (
        f"task {_short(e.task_id)} requeued as attempt {e.attempt} ({e.reason}; {e.resources})"
    ),
    m.TaskFinished: lambda e: (
        f"task {_short(e.task_id)} attempt {e.attempt} {'done' if e.ok else 'failed'}"
        + (f" exit {e.exit_code}" if e.exit_code is not None else "")
        + _err(e.error)
    ),
    m.AllocRequested: lambda e: f"request {e.request_id} for {e.resources} (min {e.minimum})",
    m.AllocGranted: lambda e: f"alloc {e.alloc_id} for request {e.request_id}: {e.resources}",
    m.AllocDied: lambda e: f"alloc {e.alloc_id} died: {e.reason}",
    m.AllocReleased: lambda e: f"alloc {e.alloc_id} released ({e.reason})",
    m.ExecCreated: lambda e: (
        f"exec {_short(e.exec_id)} of task {_short(e.task_id)} on {e.alloc_id}: "
        f"{e.executor} {e.handle}{', running' if e.started else ''}"
    ),
    m.ExecStarted: lambda e: f"exec {_short(e.exec_id)} running",
    m.ExecExited: lambda e: (
        f"exec {_short(e.exec_id)} exit {e.exit_code}{' OOM' if e.oom else ''} after "
        f"{e.duration:.1f}s, peak {format_size(e.peak_mem)}, outputs {_files(e.result)}"
        + _err(e.error)
    ),
    m.ExecLost: lambda e: f"exec {_short(e.exec_id)} lost: {e.reason}",
    m.Tick: lambda e: "tick",
}


def describe(event: m.Event) -> str:
    """A one-line summary of the event (no newlines)."""
    fn = _SUMMARY.get(type(event))
    text = fn(event) if fn is not None else event.kind
    return text.replace("\n", " ")
