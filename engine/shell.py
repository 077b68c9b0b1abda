"""The imperative shell around the pure core: facts in, decisions out, write-ahead.

`drive` records every fact together with the decisions the core made from it in one
transaction, and only then performs those decisions (idempotently, keyed by deterministic ids).
After a crash it replays the log into the core and re-performs decisions that lack an outcome.
Knows nothing of terminals: progress goes to a callback.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from reflowes.engine import core
from reflowes.engine.batchplan import BatchOptions, plan_runs
from reflowes.engine.cache import Cache
from reflowes.engine.errors import UserError
from reflowes.engine.evaluator import Evaluator, RunSpec
from reflowes.engine.executor import Executor, Pool
from reflowes.engine.layout import BatchLayout
from reflowes.engine.local import LocalExecutor
from reflowes.engine.localpool import LocalPool
from reflowes.engine.recovery import WorldView
from reflowes.engine.repository import Repository
from reflowes.events.errors import ReflowesError
from reflowes.events.log import SqliteLog
from reflowes.events.model import (
    AllocReleased,
    AllocRequested,
    BatchOpened,
    CacheHit,
    Event,
    ExecExited,
    ExecLost,
    ExecStarted,
    Recorded,
    RunFinished,
    SchedulerConfigured,
    TaskAssigned,
    TaskFinished,
    Tick,
)

_OUTCOMES = (ExecStarted, ExecExited, ExecLost)
_COUNTED = frozenset({CacheHit, TaskFinished, RunFinished})  # what the progress counters count
# The longest stretch of committed events a power cut (not a crash) may take back (seconds).
DURABLE_EVERY = 1.0
# How often finished results are written to the shared cache index (seconds).
CACHE_FLUSH_EVERY = 0.5
# A long invocation lets readers (status, replay) start from a recent snapshot this often.
CHECKPOINT_EVERY = 200_000
# How long a group of facts may wait for more before it is committed (one fsync per group).
GROUP_WINDOW = 0.002


@attrs.define
class Progress:
    """Counters for the live display and the closing summary."""

    runs_total: int = 0
    runs_done: int = 0
    runs_failed: int = 0
    runs_skipped: int = 0
    runs_running: int = 0
    steps_run: int = 0
    steps_cached: int = 0
    steps_failed: int = 0
    execs_running: int = 0
    started: float = attrs.field(factory=time.monotonic)
    failures: list[tuple[str, str]] = attrs.Factory(list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def finished(self) -> int:
        return self.runs_done + self.runs_failed + self.runs_skipped


class BatchLocked(UserError):
    """Another `reflowes run` holds this batch."""


class Shell:
    """One invocation of a batch: owns the log's only write connection."""

    def __init__(self, opts: BatchOptions, on_progress: Callable[[Progress], None] | None = None,
                 checkpoint: Callable[[SqliteLog], None] | None = None,
                 on_recorded: Callable[[SqliteLog, list[Recorded]], None] | None = None) -> None:
        self.opts = opts
        self.checkpoint = checkpoint
        self.on_recorded = on_recorded
        self._cache_flushed = 0.0
        self._last_durable = 0.0
        self._next_checkpoint = CHECKPOINT_EVERY
        self.layout = BatchLayout.for_csv(opts.csv)
        self.on_progress = on_progress or (lambda p: None)
        self.progress = Progress()
        self._last_report = 0.0

    # ------------------------------------------------------------ setup

    def _lock(self) -> None:
        self.layout.state_dir.mkdir(parents=True, exist_ok=True)
        # Held open for the whole invocation: the flock is the "one writer" guarantee.
        self._lockf = open(self.layout.state_dir / "lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockf.seek(0)
            pid = self._lockf.read().strip() or "?"
            raise BatchLocked(
                f"{self.layout.state_dir}: batch is being run by another reflowes (pid {pid})"
            ) from None
        self._lockf.seek(0)
        self._lockf.truncate()
        self._lockf.write(str(os.getpid()))
        self._lockf.flush()

    def run(self) -> Progress:
        """Run the batch to the end (or until interrupted); returns the counters."""
        specs = plan_runs(self.opts)  # every user error surfaces here, before anything runs
        self._lock()
        if self.opts.reset:
            for p in (self.layout.log, self.layout.execs, self.layout.results):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            for suffix in ("-wal", "-shm"):
                Path(str(self.layout.log) + suffix).unlink(missing_ok=True)
        repo_root = Path(self.opts.repo)
        self.repo = Repository(repo_root)
        self.cache = Cache(repo_root)
        self.log = SqliteLog.open(self.layout.log)
        self.docker: Executor | None = None
        self.pool: Pool = self._make_pool(repo_root)
        self.local: Executor = LocalExecutor(self.repo, self.layout.execs)
        self.evaluator = Evaluator(self.repo, self.cache, self.layout.results)
        self.state = core.initial()
        try:
            progress = self._drive(specs)
        except BaseException:
            self._close(check=False)
            raise
        self._close(check=True)
        return progress

    def _close(self, check: bool) -> None:
        """Stop the executors, write the cache index, wait for the results to be linked (a
        failure to link raised if `check`), close the log."""
        try:
            self.local.close()
            if self.docker is not None:
                self.docker.close()
            self.evaluator.flush_cache()
            try:
                self.evaluator.close()
            except ReflowesError:
                if check:
                    raise
        finally:
            self.log.close()

    # ------------------------------------------------------------ recording

    def record(self, facts: list[Event]) -> list[Event]:
        """Step the core over the facts, append facts and decisions in one transaction,
        and return the decisions (to perform after the commit)."""
        batch: list[Event] = []
        decisions: list[Event] = []
        for ev in facts:
            if isinstance(ev, _OUTCOMES) and ev.exec_id not in self.world.open:
                continue  # a late word on an attempt already ended (e.g. its alloc died)
            self.state, made = core.step(self.state, ev, self._now)
            batch.append(ev)
            self.world.apply(ev)
            if type(ev) in _COUNTED:
                self._count(ev)
            for d in made:
                batch.append(d)
                self.world.apply(d)
                if type(d) in _COUNTED:
                    self._count(d)
            decisions.extend(made)
        # Every group is committed before its decisions are performed, so a crash of this
        # process never loses a decision whose effect happened. The fsync (power loss) is
        # paid at most every DURABLE_EVERY seconds: a power cut loses at most that much of
        # the tail, whose effects are redone idempotently (deterministic exec ids).
        durable = self._now - self._last_durable >= DURABLE_EVERY
        self._append(batch, durable)
        if durable:
            self._last_durable = self._now
        if self.checkpoint is not None and self.log.last_seq() >= self._next_checkpoint:
            self.checkpoint(self.log)
            self._next_checkpoint = self.log.last_seq() + CHECKPOINT_EVERY
        return decisions

    def _append(self, batch: list[Event], durable: bool) -> None:
        recs = self.log.append(batch, at=self._now, durable=durable)
        if self.on_recorded is not None:
            self.on_recorded(self.log, recs)

    def flush(self, facts: list[Event]) -> None:
        """Record facts, perform the decisions, and repeat with the facts that produced."""
        while facts:
            facts = self.commit(facts)

    def commit(self, facts: list[Event]) -> list[Event]:
        """One group commit: record facts with their decisions, then perform the decisions.
        Returns the facts the performing produced (recorded by the next commit)."""
        self._now = time.time()
        decisions = self.record(facts)
        out: list[Event] = []
        # Steps first: an alloc's slot waits on them; the rest (evaluating finished tasks,
        # materializing results, allocs) waits on nothing. The decisions are independent.
        for d in decisions:
            if type(d) is TaskAssigned:
                out += self.perform(d)
        for d in decisions:
            if type(d) is not TaskAssigned:
                out += self.perform(d)
        # The cache index is written in batches: results are in the log already, and a
        # restart copies any the index missed (Evaluator.restore).
        if self._now - self._cache_flushed >= CACHE_FLUSH_EVERY:
            self.evaluator.flush_cache()
            self._cache_flushed = self._now
        return out

    def perform(self, d: Event) -> list[Event]:
        """Carry out one recorded decision; returns the facts it produced."""
        if isinstance(d, TaskAssigned):
            spec = self.evaluator.spec(d.task_id, d.alloc_id, d.exec_id, d.resources)
            if spec is None:
                self._deferred.append(d)
                return []
            return self._executor_for(spec.image).put(spec)
        if isinstance(d, AllocRequested):
            self.pool.request(d.request_id, d.resources, d.minimum)
            return []
        if isinstance(d, AllocReleased):
            self.pool.release(d.alloc_id)
            return []
        if isinstance(d, TaskFinished):
            return self.evaluator.finished(d)
        return []

    def _make_pool(self, repo_root: Path) -> Pool:
        if self.opts.pool == "docker":
            from reflowes.engine.dockerpool import DockerPool, connect

            return DockerPool(connect(), self._batch_id())
        return LocalPool(repo_root=repo_root)

    def _executor_for(self, image: str | None) -> Executor:
        if image is None:
            return self.local
        if self.docker is None:
            from reflowes.engine.docker import DockerExecutor

            self.docker = DockerExecutor(self.repo, self.layout.execs,
                                         batch_id=self._batch_id())
        return self.docker

    def _batch_id(self) -> str:
        import hashlib

        return hashlib.sha256(str(self.layout.state_dir).encode()).hexdigest()[:12]

    def _count(self, ev: Event) -> None:
        if isinstance(ev, CacheHit):
            self.progress.steps_cached += 1
        elif isinstance(ev, TaskFinished):
            if ev.ok:
                self.progress.steps_run += 1
            else:
                self.progress.steps_failed += 1
        elif isinstance(ev, RunFinished):
            if ev.ok:
                self.progress.runs_done += 1
            else:
                self.progress.runs_failed += 1
                self.progress.failures.append((ev.run_id, ev.error or "failed"))

    # ------------------------------------------------------------ the loop

    def _drive(self, specs: list[RunSpec]) -> Progress:
        self._now = time.time()
        self._deferred: list[TaskAssigned] = []
        last_invocation = 0
        self.world = WorldView()
        history = []
        for rec in self.log.read():
            history.append(rec)
            self.evaluator.restore(rec)
            self.world.apply(rec.event)
            if isinstance(rec.event, BatchOpened):
                last_invocation = rec.event.invocation
        todo = [s for s in specs if self.evaluator.needs_run(s)]
        # Only runs that stay done: a changed row's old results are cleared when it starts.
        self.evaluator.repair_results({s.run_id for s in specs} - {s.run_id for s in todo})
        self.progress.runs_total = len(specs)
        self.progress.runs_skipped = len(specs) - len(todo)
        opened = BatchOpened(csv=str(self.layout.csv), program=str(self.opts.program or ""),
                             invocation=last_invocation + 1, pid=os.getpid())
        if not todo and not self.world.open:
            # Everything is done and no exec is in flight: the core has nothing to decide, so
            # a resume of a finished batch does not replay the log into it. Alloc requests
            # still outstanding (a finished run leaves some) wait for the next invocation
            # with work, which replays the log and re-sends them (_recover).
            self._append([opened], True)
            self._report(force=True)
            return self.progress
        for rec in history:
            self.state, _ = core.step(self.state, rec.event, rec.at)
        del history
        # Runs that were mid-evaluation go first: their tasks are already in the core.
        todo.sort(key=lambda s: (self.evaluator.memo.get(s.run_id) is None, s.row))

        self.flush([opened, SchedulerConfigured(max_alloc=self.pool.capacity())])
        recovered = self._recover()
        queue = list(reversed(todo))
        started = self._start_runs(queue)
        self.flush(started + recovered)
        self._retry_deferred()

        carried: list[Event] = []  # facts produced by performing, recorded with the next group
        while queue or self.evaluator.running_runs() or carried:
            facts = carried + self._start_runs(queue)
            timeout = GROUP_WINDOW if facts else 0.2
            dl = core.deadline(self.state)  # polling does not step the core: it holds
            if dl is not None:
                timeout = max(0.0, min(timeout, dl - time.time()))
            facts += self._poll(timeout)
            facts += self.pool.poll()
            if dl is not None and time.time() >= dl:
                facts.append(Tick())
            carried = self.commit(facts) if facts else []
            self._retry_deferred()
            self._report()
            if not facts and not carried and not queue and self._stalled():
                break
        self._finish_deferred()
        self._report(force=True)
        return self.progress

    def _start_runs(self, queue: list[RunSpec]) -> list[Event]:
        out: list[Event] = []
        while queue and self.evaluator.running_runs() < self.opts.parallel:
            spec = queue.pop()
            # One priority for all: the core keeps submission order within a priority,
            # so earlier rows go first without a bucket per run.
            out += self.evaluator.start(spec, 0)
        return out

    def _poll(self, timeout: float) -> list[Event]:
        facts: list[Event] = []
        if self.docker is not None and self.docker.running():
            facts += self.docker.poll(0 if self.local.running() else timeout)
            timeout = 0 if facts else min(timeout, 0.05)
        facts += self.local.poll(timeout)
        return facts

    def _recover(self) -> list[Event]:
        """Reconcile the world with what the log says: allocs, requests, execs in flight."""
        facts = list(self.pool.restore(dict(self.world.allocs)))
        for req in self.world.requests.values():
            self.pool.request(req.request_id, req.resources, req.minimum)
        for exec_id, assigned in self.world.open.items():
            created = self.world.created.get(exec_id)
            if created is not None:
                ex = self.local if created.executor == "local" else self._executor_for("docker")
                facts += ex.recover(exec_id, assigned.task_id, created.handle)
            else:  # decided but never performed: perform it now (put is idempotent)
                self._deferred.append(assigned)
        return facts

    def _retry_deferred(self) -> None:
        if not self._deferred:
            return
        pending, self._deferred = self._deferred, []
        facts: list[Event] = []
        for d in pending:
            facts += self.perform(d)
        self.flush(facts)

    def _finish_deferred(self) -> None:
        """Assigned attempts no run needs anymore (rows removed): end them as failed."""
        facts: list[Event] = [
            ExecExited(exec_id=d.exec_id, task_id=d.task_id, exit_code=-1,
                       error="no run of this batch needs this step anymore")
            for d in self._deferred
        ]
        self._deferred = []
        self.flush(facts)

    def _execs_running(self) -> int:
        return self.local.running() + (self.docker.running() if self.docker is not None else 0)

    def _stalled(self) -> bool:
        """Nothing runs, nothing can (no exec, no timer, no alloc request): the loop would spin."""
        return (not self._execs_running() and core.deadline(self.state) is None
                and not self.world.requests)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report > 0.2:
            self._last_report = now
            self.progress.runs_running = self.evaluator.running_runs()
            self.progress.execs_running = self._execs_running()
            self.on_progress(self.progress)


def drive(opts: BatchOptions, on_progress: Callable[[Progress], None] | None = None,
          checkpoint: Callable[[SqliteLog], None] | None = None,
          on_recorded: Callable[[SqliteLog, list[Recorded]], None] | None = None) -> Progress:
    """Run a batch: the entry point of `reflowes run`. `on_recorded(log, envelopes)` sees every
    group as it is committed (the CLI keeps the projections current with it); `checkpoint(log)`
    is called with the writer's log every CHECKPOINT_EVERY events (the CLI stores a projections
    snapshot)."""
    return Shell(opts, on_progress, checkpoint, on_recorded).run()

