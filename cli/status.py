"""`reflowes status`: each run's phase, tries, error and results, plus batch totals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from reflowes.cli.common import echo_json, json_option, open_batch, path_argument, print_table
from reflowes.engine.layout import BatchLayout
from reflowes.events.model import TaskState
from reflowes.projections.batch import BatchState, RunState
from reflowes.projections.fold import Projections, fold


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def run_results(layout: BatchLayout, run: RunState) -> dict[str, str]:
    """Each output's path under results/<run id>/."""
    base = layout.run_results(run.run_id)
    return {name: str(base / name) for name in sorted(run.result)}


def run_dict(layout: BatchLayout, run: RunState) -> dict[str, Any]:
    """A run for --json: the projection's fields plus its result paths."""
    return {
        "id": run.run_id, "phase": run.phase.value, "tries": run.tries, "error": run.error,
        "results": run_results(layout, run), "program": run.program, "params": run.params,
        "digest": run.digest, "created": run.created, "last_try": run.last_try,
        "completed": run.completed, "steps_run": run.steps_run,
        "steps_cached": run.steps_cached, "resource_minutes": round(run.resource_minutes, 6),
    }


def totals(p: Projections) -> dict[str, Any]:
    """Batch totals: runs per phase, steps, resource-minutes, allocs, tasks, last seq."""
    out = p.batch.totals()
    # A step shared by several runs ran once: count distinct steps, as the run summary does
    # (each run's own count, in its row, still includes the steps it shared).
    out["steps_run"] = sum(1 for per in p.stats.attempts.values()
                           if per[max(per)].state == TaskState.DONE)
    out.update(allocs=p.stats.total_allocs, tasks=p.stats.total_tasks,
               live_execs=len(p.manifests.live()), seq=p.seq)
    return out


def totals_line(t: dict[str, Any]) -> str:
    phases = ", ".join(f"{n} {ph}" for ph, n in t["phases"].items() if n)
    return (f"{t['runs']} runs ({phases or 'none'}); steps {t['steps_run']} run, "
            f"{t['steps_cached']} cached; {t['resource_minutes']:.2f} cpu-minutes; "
            f"{t['allocs']} allocs, {t['tasks']} tasks, {t['live_execs']} execs live; "
            f"log at seq {t['seq']}")


def retried(p: Projections) -> dict[str, list[dict[str, Any]]]:
    """Per run, the steps that took more than one attempt, each attempt with its end."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task_id, per in p.stats.attempts.items():
        if len(per) < 2:
            continue
        first = per[min(per)]
        out.setdefault(first.run_id, []).append({
            "step": first.ident, "task": task_id,
            "attempts": [{"attempt": a.attempt, "state": a.state.value, "error": a.error,
                          "mem": a.resources.mem, "exec": a.exec_id}
                         for _, a in sorted(per.items())],
        })
    return out


def retries_text(steps: list[dict[str, Any]]) -> str:
    """e.g. 'hog x2 (oom)': each retried step, its attempts, and why the first one ended."""
    parts = []
    for s in steps:
        why = (s["attempts"][0]["error"] or s["attempts"][0]["state"]).splitlines()[0][:30]
        parts.append(f"{s['step']} x{len(s['attempts'])} ({why})")
    return "; ".join(parts)


def in_sheet_order(batch: BatchState) -> list[RunState]:
    """Runs in CSV row order (a snapshot keeps finished runs apart, so map order is not it)."""
    return sorted(batch.runs.values(), key=lambda r: (r.row, r.run_id))


def print_runs(layout: BatchLayout, batch: BatchState,
               again: dict[str, list[dict[str, Any]]]) -> None:
    """The runs table."""
    rows = []
    for run in in_sheet_order(batch):
        results = " ".join(_shown(Path(p)) for p in run_results(layout, run).values())
        error = (run.error or "").strip().splitlines()
        rows.append([run.run_id, run.phase.value, str(run.tries),
                     retries_text(again.get(run.run_id, [])),
                     error[-1][:80] if error else "", results])
    print_table(None, ["RUN", "PHASE", "TRIES", "RETRIED STEPS", "ERROR", "RESULTS"], rows)


@click.command()
@path_argument
@json_option
def status(path: Path, as_json: bool) -> None:
    """Show each run's phase, tries, error and result paths, and the batch's totals.

    PATH is the batch's CSV, its state directory (samples.reflowes/) or its log file.
    The log is only read: status is safe while `reflowes run` is writing.

    Example: reflowes status samples.csv --json
    """
    with open_batch(path) as (layout, log):
        p = fold(log)
    t = totals(p)
    again = retried(p)
    if as_json:
        echo_json({"batch": str(layout.state_dir),
                   "runs": [dict(run_dict(layout, r), retried_steps=again.get(r.run_id, []))
                            for r in in_sheet_order(p.batch)], "totals": t})
        return
    print_runs(layout, p.batch, again)
    click.echo(totals_line(t))
