"""What the world should look like according to the log: live allocs, outstanding alloc
requests, and exec attempts decided but without an outcome — what a restart must reconcile.

A pure fold over events; the shell keeps it current while it records.
"""

from __future__ import annotations

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
        """Fold one event."""
        if isinstance(ev, TaskAssigned):
            self.open[ev.exec_id] = ev
            self.by_task[ev.task_id] = ev.exec_id
        elif isinstance(ev, ExecCreated):
            if ev.exec_id in self.open:
                self.created[ev.exec_id] = ev
        elif isinstance(ev, (ExecExited, ExecLost)):
            self._close(ev.exec_id)
        elif isinstance(ev, (TaskRequeued, TaskFinished)):
            exec_id = self.by_task.get(ev.task_id)
            if exec_id is not None:
                self._close(exec_id)
        elif isinstance(ev, AllocRequested):
            self.requests[ev.request_id] = ev
        elif isinstance(ev, AllocGranted):
            self.requests.pop(ev.request_id, None)
            self.allocs[ev.alloc_id] = ev.resources
        elif isinstance(ev, (AllocDied, AllocReleased)):
            self.allocs.pop(ev.alloc_id, None)

    def _close(self, exec_id: str) -> None:
        assigned = self.open.pop(exec_id, None)
        self.created.pop(exec_id, None)
        if assigned is not None and self.by_task.get(assigned.task_id) == exec_id:
            del self.by_task[assigned.task_id]
