"""What the world should look like according to the log: live allocs, outstanding alloc
requests, and exec attempts decided but without an outcome — what a restart must reconcile.

A pure fold over events; the shell keeps it current while it records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    Event,
    ExecCreated,
    ExecExited,
    ExecLost,
    TaskAssigned,
    TaskFinished,
    TaskRequeued,
)
from reflowes.events.resources import Resources


@attrs.define
class WorldView:
    """Allocs, requests and open exec attempts, folded from the log."""

    allocs: dict[str, Resources] = attrs.Factory(dict)
    requests: dict[str, AllocRequested] = attrs.Factory(dict)
    open: dict[str, TaskAssigned] = attrs.Factory(dict)  # exec id -> its assignment
    created: dict[str, ExecCreated] = attrs.Factory(dict)  # exec id -> creation, while open
    by_task: dict[str, str] = attrs.Factory(dict)  # task id -> open exec id

    def apply(self, ev: Event) -> None:
        """Fold one event (a dispatch on its exact type: this runs for every event)."""
        fold = _FOLDS.get(type(ev))
        if fold is not None:
            fold(self, ev)

    def _assigned(self, ev: TaskAssigned) -> None:
        self.open[ev.exec_id] = ev
        self.by_task[ev.task_id] = ev.exec_id

    def _created(self, ev: ExecCreated) -> None:
        if ev.exec_id in self.open:
            self.created[ev.exec_id] = ev

    def _ended(self, ev: ExecExited | ExecLost) -> None:
        self._close(ev.exec_id)

    def _task_ended(self, ev: TaskRequeued | TaskFinished) -> None:
        exec_id = self.by_task.get(ev.task_id)
        if exec_id is not None:
            self._close(exec_id)

    def _requested(self, ev: AllocRequested) -> None:
        self.requests[ev.request_id] = ev

    def _granted(self, ev: AllocGranted) -> None:
        self.requests.pop(ev.request_id, None)
        self.allocs[ev.alloc_id] = ev.resources

    def _gone(self, ev: AllocDied | AllocReleased) -> None:
        self.allocs.pop(ev.alloc_id, None)

    def _close(self, exec_id: str) -> None:
        assigned = self.open.pop(exec_id, None)
        self.created.pop(exec_id, None)
        if assigned is not None and self.by_task.get(assigned.task_id) == exec_id:
            del self.by_task[assigned.task_id]


_FOLDS: dict[type, Callable[[WorldView, Any], None]] = {
    TaskAssigned: WorldView._assigned,
    ExecCreated: WorldView._created,
    ExecExited: WorldView._ended,
    ExecLost: WorldView._ended,
    TaskRequeued: WorldView._task_ended,
    TaskFinished: WorldView._task_ended,
    AllocRequested: WorldView._requested,
    AllocGranted: WorldView._granted,
    AllocDied: WorldView._gone,
    AllocReleased: WorldView._gone,
}
