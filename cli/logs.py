"""`reflowes logs`: a run's steps, and a step's stdout/stderr, found through the event log."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import click
from reflowes.engine.layout import BatchLayout
from reflowes.events.errors import ReflowesError
from reflowes.events.log import SqliteLog
from reflowes.events.model import (
    CacheHit,
    ExecExited,
    RunDeclared,
    RunFinished,
    TaskAssigned,
    TaskSubmitted,
)


@attrs.define
class StepLog:
    """One step of a run and where its logs are."""

    name: str
    key: str
    cached: bool = False
    exec_ids: list[str] = attrs.Factory(list)
    exit_code: int | None = None


def steps_of(log_path: Path, run_id: str) -> list[StepLog] | None:
    """The run's steps in order (None when the log has no such run)."""
    known = False
    steps: dict[str, StepLog] = {}
    key_tasks: dict[str, list[str]] = {}
    task_execs: dict[str, list[str]] = {}
    exits: dict[str, int] = {}
    with SqliteLog.open(log_path, readonly=True) as log:
        for rec in log.read():
            ev = rec.event
            if isinstance(ev, RunDeclared) and ev.run_id == run_id:
                known, steps = True, {}
            elif isinstance(ev, TaskSubmitted):
                key_tasks.setdefault(ev.key, []).append(ev.task_id)
                if ev.run_id == run_id and ev.ident not in steps:
                    steps[ev.ident] = StepLog(ev.ident, ev.key)
            elif isinstance(ev, CacheHit) and ev.run_id == run_id and ev.ident not in steps:
                steps[ev.ident] = StepLog(ev.ident, ev.key, cached=True)
            elif isinstance(ev, TaskAssigned):
                task_execs.setdefault(ev.task_id, []).append(ev.exec_id)
            elif isinstance(ev, ExecExited):
                exits[ev.exec_id] = ev.exit_code
            elif isinstance(ev, RunFinished) and ev.run_id == run_id:
                cached = {s.key for s in steps.values() if s.cached}
                steps = {name: StepLog(name, key, cached=key in cached)
                         for name, key in ev.steps.items()}
    if not known:
        return None
    for step in steps.values():
        for task_id in key_tasks.get(step.key, []):
            step.exec_ids += task_execs.get(task_id, [])
        if step.exec_ids:
            step.exit_code = exits.get(step.exec_ids[-1])
    return list(steps.values())


@click.command("logs")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("run_id", metavar="RUN")
@click.argument("step", required=False)
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both",
              show_default=True, help="Which output of the step to print.")
@click.option("--json", "as_json", is_flag=True, help="List the run's steps as JSON lines.")
def logs(path: Path, run_id: str, step: str | None, stream: str, as_json: bool) -> None:
    """List a run's steps, or print one step's stdout and stderr (its latest attempt).

    PATH is the batch's CSV or its state directory.

    \b
    Example:
      reflowes logs examples/reads/samples.csv s1
      reflowes logs examples/reads/samples.csv s1 gc --stream stderr
    """
    layout = BatchLayout.resolve(path)
    if not layout.log.exists():
        raise click.ClickException(f"{path}: no reflowes batch here (no {layout.log})")
    try:
        steps = steps_of(layout.log, run_id)
    except ReflowesError as e:
        raise click.ClickException(str(e)) from None
    if steps is None:
        raise click.ClickException(f"{layout.log}: no run {run_id!r} in this batch")
    if step is None:
        for s in steps:
            if as_json:
                click.echo(json.dumps(attrs.asdict(s)))
            else:
                how = "cached" if s.cached and not s.exec_ids else (
                    f"exit {s.exit_code}" if s.exit_code is not None else "running")
                execs = ", ".join(s.exec_ids) or "-"
                click.echo(f"{s.name:<20} {how:<10} key {s.key[:12]}  execs {execs}")
        return
    match = [s for s in steps if s.name == step]
    if not match:
        names = ", ".join(s.name for s in steps) or "none"
        raise click.ClickException(f"run {run_id!r} has no step {step!r} (steps: {names})")
    s = match[0]
    if not s.exec_ids:
        click.echo(f"step {step!r} was a cache hit (key {s.key[:12]}): it did not run in "
                   "this batch, so there is no log here")
        return
    exec_dir = layout.exec_dir(s.exec_ids[-1])
    for name in ("stdout", "stderr"):
        if stream not in ("both", name):
            continue
        f = exec_dir / name
        if stream == "both":
            click.echo(f"==> {name} of {s.exec_ids[-1]} <==")
        if f.exists():
            click.echo(f.read_text(errors="replace"), nl=False)
        elif s.exit_code == 0 and not exec_dir.exists():
            # A step that succeeded and printed nothing leaves no dir (the executor reuses it).
            click.echo(f"(empty: the step printed nothing to {name})")
        else:
            click.echo(f"(no {name} kept at {f})")
