"""The event vocabulary: frozen attrs values, each with a stable `kind` tag and a stream.

Kinds never change once shipped. Facts come from the world (executors, pools, the CSV, the
clock); decisions are what the pure core or the evaluator decided, recorded before their effect.
Imports nothing but attrs and resources: the pure core uses these classes.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Optional, Union

import attrs

from reflowes.events.resources import Resources

SCHEMA_VERSION = 1


class RunPhase(enum.StrEnum):
    """A run's phase, as Reflow's runner: Init -> Eval -> Done, or Eval -> Retry -> Init; Error."""

    INIT = "init"
    EVAL = "eval"
    RETRY = "retry"
    DONE = "done"
    ERROR = "error"


class TaskState(enum.StrEnum):
    """Where one task attempt stands in the scheduler."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"


class ExecState(enum.StrEnum):
    """An executor-side exec's life: created -> running -> exited (or lost)."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    LOST = "lost"


@attrs.frozen
class FileRef:
    """A value in the repository: a file or a dir (a listing object), by sha256 digest."""

    digest: str
    size: int
    kind: str = "file"  # "file" | "dir"


Result = dict[str, FileRef]


def _stream(prefix: str, ident: str) -> str:
    return f"{prefix}:{ident}"


# ---------------------------------------------------------------- facts: batch and runs


@attrs.frozen(kw_only=True)
class BatchOpened:
    """A `reflowes run` invocation started on this batch (one per invocation)."""

    kind: ClassVar[str] = "batch.opened"
    decision: ClassVar[bool] = False
    csv: str
    program: str
    invocation: int
    argv: list[str] = attrs.field(factory=list)
    pid: int = 0

    def stream(self) -> str:
        return "batch"


@attrs.frozen(kw_only=True)
class SchedulerConfigured:
    """The scheduler's settings for this invocation; the core reads nothing else."""

    kind: ClassVar[str] = "sched.configured"
    decision: ClassVar[bool] = False
    max_alloc: Resources
    min_alloc: Resources = Resources(1, 1 << 30, 1 << 30, 0)
    max_pending_allocs: int = 5
    drain_timeout: float = 0.05
    max_alloc_idle: float = 300.0
    max_lost: int = 5
    max_oom_retries: int = 3
    max_temp_retries: int = 3
    oom_factor: float = 1.5

    def stream(self) -> str:
        return "sched"


@attrs.frozen(kw_only=True)
class RunDeclared:
    """A CSV row became a run (or its parameters changed: same id, new digest)."""

    kind: ClassVar[str] = "run.declared"
    decision: ClassVar[bool] = False
    run_id: str
    program: str
    params: dict[str, str]
    digest: str
    row: int = 0
    # > 0: its evaluation began too, as try `tries` (one event for a new run's first phase
    # change, not two); 0: only declared, a RunPhaseChanged follows (older logs).
    tries: int = 0

    def stream(self) -> str:
        return _stream("run", self.run_id)


@attrs.frozen(kw_only=True)
class RunPhaseChanged:
    """A run moved to another phase; `tries` counts evaluation attempts."""

    kind: ClassVar[str] = "run.phase"
    decision: ClassVar[bool] = True
    run_id: str
    phase: RunPhase
    tries: int = 1
    error: Optional[str] = None

    def stream(self) -> str:
        return _stream("run", self.run_id)


@attrs.frozen(kw_only=True)
class RunFinished:
    """A run is over (phase Done when ok, else Error): its result, materialized under
    results/<run id>/, or its error; `steps` maps each step's name to its cache key."""

    kind: ClassVar[str] = "run.finished"
    decision: ClassVar[bool] = True
    run_id: str
    ok: bool
    result: dict[str, FileRef] = attrs.field(factory=dict)
    error: Optional[str] = None
    steps_run: int = 0
    steps_cached: int = 0
    steps: dict[str, str] = attrs.field(factory=dict)  # step name -> cache key

    def stream(self) -> str:
        return _stream("run", self.run_id)


# ---------------------------------------------------------------- tasks


@attrs.frozen(kw_only=True)
class TaskSubmitted:
    """The evaluator needs a step run: one task per cache key in flight (single-flight)."""

    kind: ClassVar[str] = "task.submitted"
    decision: ClassVar[bool] = False
    task_id: str
    run_id: str
    key: str
    ident: str
    resources: Resources
    priority: int = 0
    image: Optional[str] = None

    def stream(self) -> str:
        return _stream("task", self.task_id)


@attrs.frozen(kw_only=True)
class CacheHit:
    """A step's cache key was found: its result is reused and nothing runs."""

    kind: ClassVar[str] = "task.cached"
    decision: ClassVar[bool] = False
    run_id: str
    key: str
    ident: str
    result: dict[str, FileRef] = attrs.field(factory=dict)

    def stream(self) -> str:
        return _stream("run", self.run_id)


@attrs.frozen(kw_only=True)
class TaskJoined:
    """A run needs a step already in flight for another run: it waits for that task (single
    flight) instead of submitting its own. Not consumed by the scheduler; it links the run to
    the task, so `replay --run` can follow the step and status can explain the wait."""

    kind: ClassVar[str] = "task.joined"
    decision: ClassVar[bool] = False
    run_id: str
    task_id: str
    key: str
    ident: str

    def stream(self) -> str:
        return _stream("task", self.task_id)


@attrs.frozen(kw_only=True)
class TaskAssigned:
    """Decision: this attempt of the task runs on that alloc as exec `exec_id`."""

    kind: ClassVar[str] = "task.assigned"
    decision: ClassVar[bool] = True
    task_id: str
    alloc_id: str
    attempt: int
    exec_id: str
    resources: Resources

    def stream(self) -> str:
        return _stream("task", self.task_id)


@attrs.frozen(kw_only=True)
class TaskRequeued:
    """Decision: the attempt ended without an answer (lost, OOM, exit 75); a new one waits."""

    kind: ClassVar[str] = "task.requeued"
    decision: ClassVar[bool] = True
    task_id: str
    attempt: int
    resources: Resources
    reason: str

    def stream(self) -> str:
        return _stream("task", self.task_id)


@attrs.frozen(kw_only=True)
class TaskFinished:
    """Decision: the task is over, done with a result or failed with an error."""

    kind: ClassVar[str] = "task.finished"
    decision: ClassVar[bool] = True
    task_id: str
    attempt: int
    ok: bool
    result: dict[str, FileRef] = attrs.field(factory=dict)
    error: Optional[str] = None
    exit_code: Optional[int] = None

    def stream(self) -> str:
        return _stream("task", self.task_id)


# ---------------------------------------------------------------- allocs


@attrs.frozen(kw_only=True)
class AllocRequested:
    """Decision: ask the pool for an alloc of `resources`; anything down to `minimum` will do."""

    kind: ClassVar[str] = "alloc.requested"
    decision: ClassVar[bool] = True
    request_id: str
    resources: Resources
    minimum: Resources

    def stream(self) -> str:
        return _stream("alloc", self.request_id)


@attrs.frozen(kw_only=True)
class AllocGranted:
    """The pool carved an alloc for a request."""

    kind: ClassVar[str] = "alloc.granted"
    decision: ClassVar[bool] = False
    alloc_id: str
    request_id: str
    resources: Resources

    def stream(self) -> str:
        return _stream("alloc", self.alloc_id)


@attrs.frozen(kw_only=True)
class AllocDied:
    """An alloc's keepalive failed (or the engine went away): its tasks are lost."""

    kind: ClassVar[str] = "alloc.died"
    decision: ClassVar[bool] = False
    alloc_id: str
    reason: str

    def stream(self) -> str:
        return _stream("alloc", self.alloc_id)


@attrs.frozen(kw_only=True)
class AllocReleased:
    """Decision: an idle alloc goes back to the pool."""

    kind: ClassVar[str] = "alloc.released"
    decision: ClassVar[bool] = True
    alloc_id: str
    reason: str = "idle"

    def stream(self) -> str:
        return _stream("alloc", self.alloc_id)


# ---------------------------------------------------------------- execs


@attrs.frozen(kw_only=True)
class ExecCreated:
    """An executor made the exec: a process (pid) or a container (id)."""

    kind: ClassVar[str] = "exec.created"
    decision: ClassVar[bool] = False
    exec_id: str
    task_id: str
    alloc_id: str
    executor: str
    handle: str
    config: dict[str, Any] = attrs.field(factory=dict)
    resources: Resources = Resources()
    # Started as it was made (a local process): no ExecStarted follows; one event, not two.
    started: bool = False

    def stream(self) -> str:
        return _stream("exec", self.exec_id)


@attrs.frozen(kw_only=True)
class ExecStarted:
    """The exec's process or container is running."""

    kind: ClassVar[str] = "exec.started"
    decision: ClassVar[bool] = False
    exec_id: str
    task_id: str

    def stream(self) -> str:
        return _stream("exec", self.exec_id)


@attrs.frozen(kw_only=True)
class ExecExited:
    """The exec ended: exit code, OOM flag, peak memory, and its result or an error."""

    kind: ClassVar[str] = "exec.exited"
    decision: ClassVar[bool] = False
    exec_id: str
    task_id: str
    exit_code: int
    oom: bool = False
    peak_mem: int = 0
    result: dict[str, FileRef] = attrs.field(factory=dict)
    error: Optional[str] = None
    stderr_tail: str = ""
    duration: float = 0.0

    def stream(self) -> str:
        return _stream("exec", self.exec_id)


@attrs.frozen(kw_only=True)
class ExecLost:
    """The exec vanished with no outcome (process or container gone after a crash)."""

    kind: ClassVar[str] = "exec.lost"
    decision: ClassVar[bool] = False
    exec_id: str
    task_id: str
    reason: str

    def stream(self) -> str:
        return _stream("exec", self.exec_id)


# ---------------------------------------------------------------- time


@attrs.frozen(kw_only=True)
class Tick:
    """Time passed; the envelope's `at` is the time. Idle release and drain read it."""

    kind: ClassVar[str] = "clock.tick"
    decision: ClassVar[bool] = False

    def stream(self) -> str:
        return "clock"


EVENT_TYPES: tuple[type, ...] = (
    BatchOpened, SchedulerConfigured, RunDeclared, RunPhaseChanged, RunFinished,
    TaskSubmitted, CacheHit, TaskAssigned, TaskRequeued, TaskFinished,
    AllocRequested, AllocGranted, AllocDied, AllocReleased,
    ExecCreated, ExecStarted, ExecExited, ExecLost, Tick, TaskJoined,
)
Event = Union[
    BatchOpened, SchedulerConfigured, RunDeclared, RunPhaseChanged, RunFinished,
    TaskSubmitted, CacheHit, TaskAssigned, TaskRequeued, TaskFinished,
    AllocRequested, AllocGranted, AllocDied, AllocReleased,
    ExecCreated, ExecStarted, ExecExited, ExecLost, Tick, TaskJoined,
]
BY_KIND: dict[str, type] = {t.kind: t for t in EVENT_TYPES}  # type: ignore[attr-defined]
assert len(BY_KIND) == len(EVENT_TYPES), "event kinds must be unique"


@attrs.frozen
class Recorded:
    """An event as stored: global seq, wall-clock time set by the shell, and the envelope."""

    seq: int
    at: float
    event: Event
    v: int = SCHEMA_VERSION

    @property
    def kind(self) -> str:
        return self.event.kind

    @property
    def stream(self) -> str:
        return self.event.stream()
