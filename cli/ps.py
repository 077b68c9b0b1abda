"""`reflowes ps`: the execs that are live (created or running), from the manifests projection."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from reflowes.cli.common import (
    echo_json,
    format_age,
    json_option,
    open_batch,
    path_argument,
    print_table,
)
from reflowes.projections.fold import fold
from reflowes.projections.manifests import LIVE, Manifest, ManifestsState
from reflowes.projections.plain import plain
from reflowes.projections.timeline import short


def chosen(manifests: ManifestsState, everything: bool) -> list[Manifest]:
    """Live execs oldest first, or every exec with --all."""
    if everything:
        return sorted(manifests.execs.values(), key=lambda x: x.created)
    return manifests.live()


def age(man: Manifest, now: float) -> float:
    """Seconds since creation for a live exec; its lifetime once it ended."""
    end = now if man.state in LIVE or man.ended is None else man.ended
    return end - man.created


def print_execs(execs: list[Manifest], now: float) -> None:
    rows = [[short(x.exec_id), short(x.task_id), x.executor, x.handle[:12], x.state.value,
             format_age(age(x, now)), str(x.resources)] for x in execs]
    print_table(None, ["EXEC", "TASK", "EXECUTOR", "HANDLE", "STATE", "AGE", "RESOURCES"], rows)


@click.command()
@path_argument
@json_option
@click.option("--all", "everything", is_flag=True, help="Also list execs that exited or were lost.")
def ps(path: Path, as_json: bool, everything: bool) -> None:
    """List the batch's live execs (created or running): process id or container, age, resources.

    PATH is the batch's CSV, its state directory or its log file. Read-only.

    Example: reflowes ps samples.csv --all
    """
    with open_batch(path) as (_, log):
        p = fold(log)
    now = time.time()
    execs = chosen(p.manifests, everything)
    if as_json:
        out: list[dict[str, Any]] = []
        for x in execs:
            d = plain(x)
            d["age"] = round(age(x, now), 3)
            out.append(d)
        echo_json(out)
        return
    if not execs:
        click.echo("no live execs" if not everything else "no execs")
        return
    print_execs(execs, now)
