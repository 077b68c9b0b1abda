"""`reflowes run`: run every row of a CSV, resumably, with live progress and a summary."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from reflowes.engine.batchplan import BatchOptions
from reflowes.engine.layout import BatchLayout, default_repo
from reflowes.engine.shell import Progress, drive
from reflowes.events.errors import ReflowesError
from reflowes.events.log import SqliteLog
from reflowes.events.model import Recorded
from reflowes.projections import fold as projections


def _line(p: Progress) -> str:
    return (
        f"runs {p.finished}/{p.runs_total} (done {p.runs_done + p.runs_skipped}, "
        f"running {p.runs_running}, failed {p.runs_failed}) | steps run {p.steps_run}, "
        f"cached {p.steps_cached}, executing {p.execs_running} | {p.elapsed:.1f}s"
    )


class _Display:
    """A rich progress bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stdout.isatty() and not quiet
        self.bar: Any = None
        self.last_plain = 0.0

    def __enter__(self) -> _Display:  # noqa: PYI034
        if self.tty:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("[bold]runs"), BarColumn(), TextColumn("{task.description}"),
                           TimeElapsedColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, p: Progress) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=p.runs_total or None, completed=p.finished,
                            description=_line(p))
        elif not self.quiet and p.elapsed - self.last_plain >= 5.0:
            self.last_plain = p.elapsed
            click.echo(_line(p), err=True)


def _summary(p: Progress, layout: BatchLayout, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "runs": p.runs_total, "done": p.runs_done, "unchanged": p.runs_skipped,
            "failed": p.runs_failed, "steps_run": p.steps_run, "steps_cached": p.steps_cached,
            "elapsed": round(p.elapsed, 3), "cpu": round(time.process_time(), 3),
            "results": str(layout.results),
            "failures": [{"run": r, "error": e} for r, e in p.failures],
        }))
        return
    click.echo(
        f"{p.runs_total} runs: {p.runs_done} done, {p.runs_skipped} already done, "
        f"{p.runs_failed} failed; {p.steps_run} steps run, {p.steps_cached} cached; "
        f"{p.elapsed:.1f}s"
    )
    for run_id, error in p.failures[:20]:
        click.echo(f"  failed {run_id}: {error}")
    if len(p.failures) > 20:
        click.echo(f"  ... and {len(p.failures) - 20} more (reflowes status {layout.csv})")
    click.echo(f"results: {layout.results}")


# A snapshot at most this many events behind the log's end is left as it is (readers fold the
# short tail): resuming a finished batch then neither loads nor stores the whole bundle.
SNAPSHOT_SLACK = 5000
# Groups are folded into the live projections this many events at a time: one fold over a
# chunk runs with its code and data in the CPU's caches, ~600 small ones interleaved with the
# loop's other work do not.
FOLD_CHUNK = 2000


class _Projector:
    """The projections kept current from the groups the writer commits (folding envelopes
    already in memory costs a third of reading and decoding the log again), stored as the
    snapshot at checkpoints and at the end, so status and replay read only the tail."""

    def __init__(self) -> None:
        self.live: projections.Projections | None = None
        self.base = -1  # the seq before this invocation's first group
        self.pending: list[Recorded] = []  # its groups, until the live bundle is needed
        self.unfolded: list[Recorded] = []  # groups for the live bundle, folded by the chunk

    def recorded(self, log: SqliteLog, recs: list[Recorded]) -> None:
        if not recs:
            return
        if self.live is not None:
            self.unfolded += recs
            if len(self.unfolded) >= FOLD_CHUNK:
                self._fold()
            return
        if self.base < 0:
            self.base = recs[0].seq - 1
        self.pending += recs
        if self.base == 0 or len(self.pending) > SNAPSHOT_SLACK:
            self._materialize(log)

    def _fold(self) -> None:
        recs, self.unfolded = self.unfolded, []
        live = self.live
        if live is not None and recs and live.seq == recs[0].seq - 1:
            live.apply_all(recs)  # else it fell behind: folded from the log when needed

    def _materialize(self, log: SqliteLog) -> None:
        """The bundle as of `base` (snapshot + tail), then this invocation's groups."""
        live = projections.fold(log, until=self.base)
        if self.pending and self.pending[0].seq == live.seq + 1:
            live.apply_all(self.pending)
        self.live, self.pending = live, []

    def checkpoint(self, log: SqliteLog) -> None:
        """Store the projections as of now (folded from the log if the live ones fell behind)."""
        if self.live is None and self.pending:
            self._materialize(log)
        self._fold()
        live = self.live
        if live is None or live.seq != log.last_seq():
            live = self.live = projections.fold(log)
        projections.snapshot(log, live)

    def snapshot(self, layout: BatchLayout) -> None:
        """The checkpoint on the way out, unless the stored snapshot is recent enough."""
        if not layout.log.exists():
            return
        with SqliteLog.open(layout.log) as log:
            if self.live is None:
                stored = log.load_snapshot(projections.SNAPSHOT_NAME)
                if (stored is not None and stored[1] == projections.VERSION
                        and stored[0] >= log.last_seq() - SNAPSHOT_SLACK):
                    return
            self.checkpoint(log)


@click.command("run")
@click.argument("csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--program", "-p", type=click.Path(dir_okay=False, path_type=Path),
              help="The program file (its main() is called once per row); default: the CSV's "
                   "'program' column.")
@click.option("--id-column", help="Column holding the run id (default: 'id', else the first).")
@click.option("--parallel", default=50, show_default=True, type=click.IntRange(1),
              help="How many runs evaluate at once.")
@click.option("--reset", is_flag=True, help="Forget this batch's state and start over "
                                            "(the shared cache is kept).")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Repository and cache directory [default: $REFLOWES_HOME or "
                   "~/.cache/reflowes].")
@click.option("--pool", type=click.Choice(["local", "docker"]), default="local",
              show_default=True,
              help="Where allocs come from: this machine, or the Docker engine (which it watches: "
                   "if it stops answering, its steps are requeued).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output, only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(csv: Path, program: Path | None, id_column: str | None, parallel: int, reset: bool,
        repo: Path | None, pool: str, quiet: bool, as_json: bool) -> None:
    """Run the program once per row of CSV; running it again resumes.

    State lives beside the CSV (samples.csv -> samples.reflowes/): the event log, step logs
    and results/<run id>/. Done runs stay done, cached steps do not run again, added rows
    run, changed rows run again. Exits 1 if any run failed.

    \b
    Example:
      reflowes run examples/reads/samples.csv
      reflowes run samples.csv --program pipeline.py --parallel 8
      reflowes run samples.csv --pool docker    # steps with image= in containers
    """
    opts = BatchOptions(csv=csv, program=program, id_column=id_column, parallel=parallel,
                        reset=reset, repo=repo or default_repo(), pool=pool)
    layout = BatchLayout.for_csv(csv)
    # SIGTERM stops as cleanly as Ctrl-C: the log is consistent and a rerun resumes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    projector = _Projector()
    try:
        with _Display(quiet or as_json) as display:
            progress = drive(opts, on_progress=display, checkpoint=projector.checkpoint,
                             on_recorded=projector.recorded)
    except KeyboardInterrupt:
        projector.snapshot(layout)
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    except ReflowesError as e:
        raise click.ClickException(str(e)) from None
    projector.snapshot(layout)
    _summary(progress, layout, as_json)
    if progress.runs_failed or progress.finished < progress.runs_total:
        sys.exit(1)
