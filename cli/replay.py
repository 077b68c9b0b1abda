"""`reflowes replay`: the log as a timeline, filtered; the projections at a seq; `--check` diffs
the pure core's decisions against the recorded ones. Opens the log read-only and never writes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import msgspec
from reflowes.cli.common import (
    echo_json,
    format_time,
    is_terminal,
    json_option,
    open_batch,
    parse_bound,
    path_argument,
    print_table,
)
from reflowes.cli.ps import print_execs
from reflowes.cli.status import print_runs, retried, totals, totals_line
from reflowes.engine.errors import UserError
from reflowes.engine.layout import BatchLayout
from reflowes.events import codec
from reflowes.events.log import SqliteLog, follow
from reflowes.events.model import BY_KIND, Recorded
from reflowes.projections.fold import Projections, fold
from reflowes.projections.timeline import describe, short


def expand_kinds(patterns: Iterable[str]) -> list[str]:
    """Exact kinds for `--kind` values: a kind, or a prefix such as `exec.` or `exec`."""
    out: list[str] = []
    for pat in patterns:
        stem = pat.rstrip(".*")
        hits = [k for k in BY_KIND if k == pat or k.startswith(stem + ".")]
        if not hits:
            raise UserError(f"--kind {pat!r} matches no event kind; kinds are: "
                            + ", ".join(sorted(BY_KIND)))
        out += [k for k in hits if k not in out]
    return out


class Related:
    """Follows which tasks and execs belong to the runs, tasks and allocs asked for.

    Ids are learnt as the log goes by (TaskSubmitted links a task to its run, TaskAssigned and
    ExecCreated an exec to its task and alloc), so the filter must see every event in order.
    """

    def __init__(self, runs: tuple[str, ...], tasks: tuple[str, ...], allocs: tuple[str, ...]):
        # Task ids are digests (a prefix will do); run and alloc ids are short and exact.
        self.runs, self.task_prefixes, self.allocs = set(runs), tasks, set(allocs)
        self.run_tasks: set[str] = set()
        self.run_execs: set[str] = set()
        self.tasks: set[str] = set()
        self.task_execs: set[str] = set()
        self.alloc_execs: set[str] = set()

    @property
    def active(self) -> bool:
        return bool(self.runs or self.task_prefixes or self.allocs)

    def _learn(self, ev: object) -> None:
        task = getattr(ev, "task_id", None)
        alloc = getattr(ev, "alloc_id", None)
        exec_id = getattr(ev, "exec_id", None)
        if task is not None and task not in self.tasks and task.startswith(self.task_prefixes):
            self.tasks.add(task)
        if getattr(ev, "run_id", None) in self.runs and task is not None:
            self.run_tasks.add(task)
        if exec_id is not None and task is not None:
            if task in self.run_tasks:
                self.run_execs.add(exec_id)
            if task in self.tasks:
                self.task_execs.add(exec_id)
            if alloc is not None and alloc in self.allocs:
                self.alloc_execs.add(exec_id)

    def matches(self, rec: Recorded) -> bool:
        """Learn from the event, then say whether it concerns every entity asked for."""
        ev = rec.event
        self._learn(ev)
        task = getattr(ev, "task_id", None)
        exec_id = getattr(ev, "exec_id", None)
        if self.runs and not (getattr(ev, "run_id", None) in self.runs
                              or task in self.run_tasks or exec_id in self.run_execs):
            return False
        if self.task_prefixes and not (task in self.tasks or exec_id in self.task_execs):
            return False
        return not self.allocs or (
            getattr(ev, "alloc_id", None) in self.allocs or exec_id in self.alloc_execs)


def timeline(
    log: SqliteLog, related: Related, kinds: list[str] | None,
    since: tuple[int | None, float | None], until: tuple[int | None, float | None],
    following: bool = False,
) -> Iterator[Recorded]:
    """The events to show, in seq order; with `following`, then those appended later."""
    after = 0 if related.active or since[0] is None else since[0] - 1
    wanted = None if kinds is None else frozenset(kinds)
    records: Iterable[Recorded]
    if following:
        records = _flushing(follow(log.path, after, poll=0.1))
    else:  # entity filters must see every kind to learn ids; otherwise SQL filters kinds
        records = log.read(after, until=until[0], kinds=None if related.active else kinds)
    for rec in records:
        if until[0] is not None and rec.seq > until[0]:
            return
        if since[0] is not None and rec.seq < since[0]:
            if related.active:
                related.matches(rec)
            continue
        if until[1] is not None and rec.at > until[1]:
            continue
        if related.active and not related.matches(rec):
            continue
        if since[1] is not None and rec.at < since[1]:
            continue
        if wanted is not None and rec.kind not in wanted:
            continue
        yield rec


def _flushing(records: Iterator[Recorded]) -> Iterator[Recorded]:
    """Flush stdout after each line while following: a pipe must see events as they come."""
    for rec in records:
        yield rec
        sys.stdout.flush()


def _print_lines(records: Iterable[Recorded], as_json: bool) -> int:
    n = 0
    if as_json:
        write = sys.stdout.write
        for rec in records:
            d = {"seq": rec.seq, "at": rec.at, "kind": rec.kind, "stream": rec.stream}
            d.update(codec.to_dict(rec.event))
            write(msgspec.json.encode(d).decode() + "\n")
            n += 1
        return n
    if is_terminal():
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False)
        for rec in records:
            style = "bold" if rec.event.decision else "dim" if rec.kind == "clock.tick" else ""
            console.print(
                f"[cyan]{rec.seq:>7}[/] {format_time(rec.at)} [{style or 'default'}]"
                f"{rec.kind:<16}[/] [green]{escape(rec.stream):<24}[/] "
                f"{escape(describe(rec.event))}", soft_wrap=True)
            n += 1
        return n
    write = sys.stdout.write
    for rec in records:
        write(f"{rec.seq:>7}  {format_time(rec.at)}  {rec.kind:<16}  {rec.stream:<24}  "
              f"{describe(rec.event)}\n")
        n += 1
    return n


def _print_projections(layout: BatchLayout, p: Projections, as_json: bool) -> None:
    if as_json:
        echo_json(p.to_dict())
        return
    click.echo(f"as of seq {p.seq}")
    print_runs(layout, p.batch, retried(p))
    allocs = [[a.alloc_id, "dead" if a.dead else "released" if a.released else "live",
               str(a.resources), str(a.available), str(len(a.task_ids))]
              for a in p.stats.allocs.values()]
    print_table("allocs", ["ALLOC", "STATE", "RESOURCES", "AVAILABLE", "TASKS"], allocs)
    attempts = [[short(t.task_id), str(t.attempt), t.ident, t.run_id, t.state.value,
                 t.alloc_id or "", (t.error or "")[:60]]
                for per in p.stats.attempts.values() for t in per.values()]
    print_table("task attempts", ["TASK", "ATTEMPT", "IDENT", "RUN", "STATE", "ALLOC", "ERROR"],
                attempts)
    execs = sorted(p.manifests.execs.values(), key=lambda x: x.created)
    if execs:
        click.echo("execs")
        print_execs(execs, p.at)  # ages as they were at that seq
    click.echo(totals_line(totals(p)))


def _check(log: SqliteLog) -> None:
    from reflowes.engine.check import check
    from reflowes.engine.core import DECISION_KINDS

    decisions = 0

    def counted() -> Iterator[Recorded]:
        nonlocal decisions
        for rec in log.read():
            decisions += rec.kind in DECISION_KINDS
            yield rec

    mismatch = check(counted())
    if mismatch is not None:
        click.echo(f"mismatch: {mismatch}")
        raise SystemExit(1)
    click.echo(f"ok: {decisions} decisions match")


@click.command()
@path_argument
@click.option("--run", "runs", multiple=True, metavar="ID",
              help="Only events of this run, its tasks and their execs (repeatable).")
@click.option("--task", "tasks", multiple=True, metavar="ID",
              help="Only events of this task (an id prefix will do) and its execs.")
@click.option("--alloc", "allocs", multiple=True, metavar="ID",
              help="Only events of this alloc and the execs placed on it.")
@click.option("--kind", "kinds", multiple=True, metavar="K",
              help="Only events of this kind; a prefix such as `exec.` or `run` works.")
@click.option("--since", metavar="SEQ|TIME",
              help="From this seq, or time: ISO (2024-05-01T12:00) or relative (10m, 2h).")
@click.option("--until", metavar="SEQ|TIME", help="Up to this seq or time (inclusive).")
@click.option("--follow", "-f", "following", is_flag=True,
              help="Keep printing events as the batch appends them (Ctrl-C stops).")
@click.option("--at", "at_seq", type=click.IntRange(min=0), metavar="SEQ",
              help="Print the projections (runs, allocs, attempts, execs) as of this seq.")
@click.option("--check", "check", is_flag=True,
              help="Re-run the scheduler core over the log; exit 1 at the first decision "
                   "that differs from the recorded one.")
@json_option
def replay(path: Path, runs: tuple[str, ...], tasks: tuple[str, ...], allocs: tuple[str, ...],
           kinds: tuple[str, ...], since: str | None, until: str | None, following: bool,
           at_seq: int | None, check: bool, as_json: bool) -> None:
    """Show what happened in a batch, in order: one line per event (seq, time, kind, stream,
    summary). Filters combine: an event is shown when it passes all of them.

    PATH is the batch's CSV, its state directory or its log file. The log is opened
    read-only, so replay is safe while `reflowes run` is writing.

    Example: reflowes replay samples.csv --run S1 --kind exec. --since 10m
    """
    now = time.time()
    lo = parse_bound(since, now) if since else (None, None)
    hi = parse_bound(until, now) if until else (None, None)
    with open_batch(path) as (layout, log):
        if check:
            _check(log)
            return
        if at_seq is not None:
            _print_projections(layout, fold(log, until=at_seq), as_json)
            return
        wanted = expand_kinds(kinds) if kinds else None
        related = Related(runs, tasks, allocs)
        try:
            n = _print_lines(timeline(log, related, wanted, lo, hi, following), as_json)
        except KeyboardInterrupt:
            if not following:
                raise
            return
    if n == 0 and not as_json:
        click.echo("no events match", err=True)
