"""The evaluator: turns each run's graph into cache hits and task submissions, and finished
tasks back into resolved values, finished runs and materialized results.

It emits events and leaves recording them to the shell; its only I/O is the repository and the
cache (content-addressed, idempotent). Single-flight: one task per cache key in flight.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from reflowes.engine.cache import Cache
from reflowes.engine.executor import ExecSpec
from reflowes.engine.graph import ExecNode, FileNode, OutputRef, exec_key, scalar_text, walk
from reflowes.engine.program import Program
from reflowes.engine.repository import Repository
from reflowes.engine.results import Results
from reflowes.events.errors import ReflowesError
from reflowes.events.model import (
    CacheHit,
    Event,
    FileRef,
    Recorded,
    RunDeclared,
    RunFinished,
    RunPhase,
    RunPhaseChanged,
    TaskFinished,
    TaskJoined,
    TaskSubmitted,
)


def run_digest(program: Program, params: dict[str, str]) -> str:
    """Identity of a run's inputs: a changed row or program makes the run run again."""
    h = hashlib.sha256(program.digest.encode())
    for k in sorted(params):
        h.update(b"\0" + k.encode() + b"\0" + params[k].encode())
    return h.hexdigest()


@attrs.define
class RunSpec:
    """One CSV row ready to evaluate: its program and converted arguments."""

    run_id: str
    row: int
    program: Program
    params: dict[str, str]
    kwargs: dict[str, Any]
    digest: str


@attrs.define(eq=False)
class RunEval:
    """A run being evaluated: its graph and what of it is resolved."""

    spec: RunSpec
    priority: int
    result: dict[str, FileNode | OutputRef] = attrs.Factory(dict)
    nodes: list[ExecNode] = attrs.Factory(list)
    values: dict[int, dict[str, FileRef]] = attrs.Factory(dict)  # id(ExecNode) -> outputs
    files: dict[int, FileRef] = attrs.Factory(dict)  # id(FileNode) -> ref
    submitted: set[int] = attrs.Factory(set)
    steps: dict[str, str] = attrs.Factory(dict)
    steps_run: int = 0
    steps_cached: int = 0
    done: bool = False


@attrs.define
class TaskWork:
    """What a submitted task needs to run, and who waits for it."""

    key: str
    node: ExecNode
    inputs: dict[str, FileRef]
    waiters: list[tuple[RunEval, ExecNode]] = attrs.Factory(list)


@attrs.define
class RunMemo:
    """What the log says about a run: the digest it was last declared with, and its end."""

    digest: str
    tries: int = 0
    finished: bool | None = None  # None: not finished; True ok; False failed


class Evaluator:
    """Drives runs from main() to RunFinished; the shell records what it returns."""

    def __init__(self, repo: Repository, cache: Cache, results_dir: Path) -> None:
        self.repo = repo
        self.cache = cache
        self.results_dir = str(results_dir)  # plain strings: pathlib costs on the hot path
        # No results dir yet: no run has results to clear (this invocation makes each run's
        # dir only once it is declared and done), so a new run costs no lookup.
        self._results_absent = not os.path.isdir(self.results_dir)
        self.memo: dict[str, RunMemo] = {}
        self.results = Results(repo, self.results_dir)
        self.done_results: dict[str, dict[str, FileRef]] = {}  # run id -> its last ok result
        self.key_count: dict[str, int] = {}
        self.work: dict[str, TaskWork] = {}  # task id -> work, for tasks of this invocation
        self.by_key: dict[str, str] = {}  # key -> task id in flight
        self.active: dict[str, RunEval] = {}
        self.pending_cache: list[tuple[str, dict[str, FileRef]]] = []
        # Results the log holds (a crash, or the batched cache write, may not have put them
        # in the cache index yet).
        self.known: dict[str, dict[str, FileRef]] = {}
        self.task_key: dict[str, str] = {}
        # Tasks submitted and not finished (per the log and this invocation) -> the runs that
        # submitted or joined them.
        self.task_runs: dict[str, set[str]] = {}

    # ------------------------------------------------------------ restore from the log

    def restore(self, rec: Recorded) -> None:
        """Fold one recorded event into what the evaluator remembers across invocations
        (a dispatch on the event's exact type: this runs for every event of the log)."""
        fold = _RESTORE.get(type(rec.event))
        if fold is not None:
            fold(self, rec.event)

    def _declared(self, ev: RunDeclared) -> None:
        self.memo[ev.run_id] = RunMemo(ev.digest, ev.tries)
        self.done_results.pop(ev.run_id, None)  # new inputs: the old results are cleared

    def _phase(self, ev: RunPhaseChanged) -> None:
        m = self.memo.get(ev.run_id)
        if m is not None and ev.phase is RunPhase.EVAL:
            m.tries = ev.tries
            m.finished = None

    def _run_finished(self, ev: RunFinished) -> None:
        m = self.memo.get(ev.run_id)
        if m is not None:
            m.finished = ev.ok
        if ev.ok:
            self.done_results[ev.run_id] = ev.result

    def _submitted(self, ev: TaskSubmitted) -> None:
        self.key_count[ev.key] = self.key_count.get(ev.key, 0) + 1
        self.by_key[ev.key] = ev.task_id
        self.task_key[ev.task_id] = ev.key
        self.task_runs[ev.task_id] = {ev.run_id}

    def _joined(self, ev: TaskJoined) -> None:
        runs = self.task_runs.get(ev.task_id)
        if runs is not None:
            runs.add(ev.run_id)

    def _task_finished(self, ev: TaskFinished) -> None:
        self.task_runs.pop(ev.task_id, None)
        key = self.task_key.get(ev.task_id)
        if ev.ok and key is not None:
            self.known[key] = ev.result
            self.pending_cache.append((key, ev.result))

    def needs_run(self, spec: RunSpec) -> bool:
        """False when the log has this run done with the same inputs."""
        m = self.memo.get(spec.run_id)
        return not (m is not None and m.digest == spec.digest and m.finished is True)

    # ------------------------------------------------------------ runs

    def start(self, spec: RunSpec, priority: int) -> list[Event]:
        """Declare (if new or changed) and begin evaluating a run."""
        out: list[Event] = []
        m = self.memo.get(spec.run_id)
        if m is None or m.digest != spec.digest:  # declared, and its first try begins
            out.append(RunDeclared(
                run_id=spec.run_id, program=str(spec.program.path), params=spec.params,
                digest=spec.digest, row=spec.row, tries=1,
            ))
            m = self.memo[spec.run_id] = RunMemo(spec.digest, 1)
            self._clear_results(spec.run_id)
        else:
            m.tries += 1
            m.finished = None
            out.append(RunPhaseChanged(run_id=spec.run_id, phase=RunPhase.EVAL, tries=m.tries))
        run = RunEval(spec, priority)
        self.active[spec.run_id] = run
        try:
            run.result = spec.program.call(spec.kwargs, run_id=spec.run_id)
            run.nodes = walk(run.result)
            for ref in run.result.values():
                if isinstance(ref, FileNode):
                    self._file(run, ref)
            for node in run.nodes:
                for v in node.inputs.values():
                    if isinstance(v, FileNode):
                        self._file(run, v)
        except ReflowesError as e:
            return out + self._finish(run, ok=False, error=str(e))
        except OSError as e:
            return out + self._finish(run, ok=False, error=f"{e.strerror or e}: {e.filename}")
        return out + self._advance(run)

    def _file(self, run: RunEval, node: FileNode) -> FileRef:
        ref = run.files.get(id(node))
        if ref is None:
            ref = run.files[id(node)] = self.repo.intern(node.source, kind=node.kind)
        return ref

    def _inputs(self, run: RunEval, node: ExecNode) -> dict[str, FileRef] | None:
        """The file inputs of a node, or None while one of them is unresolved."""
        refs: dict[str, FileRef] = {}
        for name, v in node.inputs.items():
            if isinstance(v, FileNode):
                refs[name] = run.files[id(v)]
            elif isinstance(v, OutputRef):
                outs = run.values.get(id(v.node))
                if outs is None:
                    return None
                refs[name] = outs[v.name]
        return refs

    def _advance(self, run: RunEval) -> list[Event]:
        """Submit or resolve from cache every node whose inputs are ready; finish when all are."""
        out: list[Event] = []
        progressed = True
        while progressed and not run.done:
            progressed = False
            for node in run.nodes:
                nid = id(node)
                if nid in run.values or nid in run.submitted:
                    continue
                inputs = self._inputs(run, node)
                if inputs is None:
                    continue
                key = exec_key(node, {k: r.digest for k, r in inputs.items()})
                run.steps[self._step_name(run, node)] = key
                hit = self.known.get(key) or self.cache.get(key)  # get checks the objects
                if hit is not None:
                    run.values[nid] = hit
                    run.steps_cached += 1
                    out.append(CacheHit(run_id=run.spec.run_id, key=key, ident=node.name,
                                        result=hit))
                    progressed = True
                    continue
                run.submitted.add(nid)
                task_id = self.by_key.get(key)
                linked = None if task_id is None else self.task_runs.get(task_id)
                if task_id is not None and linked is not None:  # in flight: wait for it
                    work = self.work.get(task_id)
                    if work is None:  # in flight since an earlier invocation
                        work = self.work[task_id] = TaskWork(key, node, inputs)
                    work.waiters.append((run, node))
                    if run.spec.run_id not in linked:  # recorded once per run and task
                        linked.add(run.spec.run_id)
                        out.append(TaskJoined(run_id=run.spec.run_id, task_id=task_id, key=key,
                                              ident=node.name))
                    continue
                n = self.key_count.get(key, 0) + 1
                self.key_count[key] = n
                task_id = key[:16] if n == 1 else f"{key[:16]}-{n}"
                self.by_key[key] = task_id
                self.task_runs[task_id] = {run.spec.run_id}
                self.work[task_id] = TaskWork(key, node, inputs, [(run, node)])
                out.append(TaskSubmitted(
                    task_id=task_id, run_id=run.spec.run_id, key=key, ident=node.name,
                    resources=node.resources, priority=run.priority, image=node.image,
                ))
        if not run.done and all(id(n) in run.values for n in run.nodes):
            out += self._complete(run)
        return out

    def _step_name(self, run: RunEval, node: ExecNode) -> str:
        name, i = node.name, 2
        while name in run.steps:
            name, i = f"{node.name}.{i}", i + 1
        return name

    def _complete(self, run: RunEval) -> list[Event]:
        result: dict[str, FileRef] = {}
        for name, ref in run.result.items():
            if isinstance(ref, FileNode):
                result[name] = run.files[id(ref)]
            else:
                result[name] = run.values[id(ref.node)][ref.name]
        if result:  # linked by the linker process (engine/results.py)
            self.results.submit(run.spec.run_id, result)
        return self._finish(run, ok=True, result=result)

    def _finish(self, run: RunEval, *, ok: bool, error: str | None = None,
                result: dict[str, FileRef] | None = None) -> list[Event]:
        run.done = True
        self.active.pop(run.spec.run_id, None)
        m = self.memo.get(run.spec.run_id)
        if m is not None:
            m.finished = ok
        return [RunFinished(
            run_id=run.spec.run_id, ok=ok, result=result or {}, error=error,
            steps_run=run.steps_run, steps_cached=run.steps_cached, steps=dict(run.steps),
        )]

    def _clear_results(self, run_id: str) -> None:
        if self._results_absent:
            return
        path = f"{self.results_dir}/{run_id}"
        if os.path.lexists(path):  # a new run's dir is absent: one lstat, not rmtree's work
            import shutil

            shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------ tasks

    def spec(self, task_id: str, alloc_id: str, exec_id: str, resources: Any) -> ExecSpec | None:
        """What the executor needs for an assigned attempt; None if no run needs it anymore."""
        work = self.work.get(task_id)
        if work is None:
            return None
        node = work.node
        scalars = {k: scalar_text(v) for k, v in node.inputs.items()
                   if not isinstance(v, (FileNode, OutputRef))}
        return ExecSpec(
            exec_id=exec_id, task_id=task_id, alloc_id=alloc_id, template=node.template,
            inputs=work.inputs, outputs=dict(node.outputs), scalars=scalars, image=node.image,
            resources=resources, env=dict(node.env), network=node.network, ident=node.name,
        )

    def finished(self, ev: TaskFinished) -> list[Event]:
        """A task ended: resolve or fail every run waiting on it."""
        self.task_runs.pop(ev.task_id, None)
        work = self.work.pop(ev.task_id, None)
        if work is None:
            return []
        if self.by_key.get(work.key) == ev.task_id:
            del self.by_key[work.key]
        out: list[Event] = []
        if ev.ok:
            # Known at once to runs started later in this invocation, before the batched
            # cache write (Shell.commit) reaches the index.
            self.known[work.key] = ev.result
            self.pending_cache.append((work.key, ev.result))
        for run, node in work.waiters:
            if run.done:
                continue
            if ev.ok:
                run.values[id(node)] = ev.result
                run.steps_run += 1
                out += self._advance(run)
            else:
                out += self._finish(run, ok=False, error=f"step {node.name!r}: {ev.error}")
        return out

    def flush_cache(self) -> None:
        """Write successful results to the cache index (never failures)."""
        if self.pending_cache:
            self.cache.put_many(self.pending_cache)
            self.pending_cache = []

    def running_runs(self) -> int:
        return len(self.active)

    def repair_results(self, run_ids: set[str]) -> int:
        """Rewrite the results dirs of the done runs `run_ids` that are missing (deleted by
        hand, say). Returns how many."""
        return self.results.repair(
            (r, res) for r, res in self.done_results.items() if r in run_ids)

    def close(self) -> None:
        """Wait until every done run's results are linked; raise if some could not be."""
        self.results.close()


_RESTORE: dict[type, Callable[[Evaluator, Any], None]] = {
    RunDeclared: Evaluator._declared,
    RunPhaseChanged: Evaluator._phase,
    RunFinished: Evaluator._run_finished,
    TaskSubmitted: Evaluator._submitted,
    TaskJoined: Evaluator._joined,
    TaskFinished: Evaluator._task_finished,
}
