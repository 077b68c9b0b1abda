"""What every reflowes command shares: the PATH argument, --json, opening a batch's log
read-only, errors as one-line messages, and output that is rich on a terminal and plain otherwise.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
from reflowes.engine.errors import UserError
from reflowes.engine.layout import BatchLayout
from reflowes.events.errors import CorruptLog, ReflowesError
from reflowes.events.log import SqliteLog

F = TypeVar("F", bound=Callable[..., Any])
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ReflowesGroup(click.Group):
    """A click group whose commands report ReflowesError as `Error: <message>` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorruptLog as e:
            good = "unknown" if e.last_good_seq is None else str(e.last_good_seq)
            raise click.ClickException(f"{e} (last good seq: {good})") from None
        except ReflowesError as e:
            raise click.ClickException(str(e)) from None


def path_argument(f: F) -> F:
    """PATH: the batch's CSV, its state directory, or the log file itself."""
    return click.argument("path", type=click.Path(path_type=Path))(f)


def json_option(f: F) -> F:
    """--json: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def resolve(path: Path) -> tuple[BatchLayout, Path]:
    """The batch layout and the log file for a PATH argument."""
    if path.is_file() and path.suffix.lower() != ".csv":
        with path.open("rb") as fh:
            if fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC:  # a log file under any name
                return BatchLayout(path.absolute().parent), path
    layout = BatchLayout.resolve(path)
    return layout, layout.log


@contextmanager
def open_batch(path: Path) -> Iterator[tuple[BatchLayout, SqliteLog]]:
    """The batch's layout and its log opened read-only; a missing batch is a UserError."""
    layout, log_path = resolve(path)
    if not log_path.exists():
        where = f"{path}" if layout.csv is None else f"{path} (state directory {layout.state_dir})"
        raise UserError(f"no reflowes batch at {where}: {log_path} does not exist "
                        "(start one with `reflowes run CSV`)")
    log = SqliteLog.open(log_path, readonly=True)
    try:
        yield layout, log
    finally:
        log.close()


# ---------------------------------------------------------------- time and output


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bound(text: str, now: float | None = None) -> tuple[int | None, float | None]:
    """`--since/--until`: (seq, None) for a number, (None, time) for ISO or relative (10m)."""
    if text.strip().isdigit():
        return int(text), None
    m = _RELATIVE.match(text)
    if m:
        return None, (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return None, datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a seq number, an ISO time (2024-05-01T12:00) nor a relative "
            "time (30s, 10m, 2h, 1d)") from None


def format_time(at: float) -> str:
    """Local wall-clock time with milliseconds."""
    return datetime.fromtimestamp(at).isoformat(sep=" ", timespec="milliseconds")


def format_age(seconds: float) -> str:
    """A short duration: 42s, 3m05s, 2h10m, 3d4h."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def is_terminal() -> bool:
    return sys.stdout.isatty()


def echo_json(data: Any) -> None:
    """One JSON document on a line (enums, attrs values and Structs included)."""
    click.echo(msgspec.json.encode(data).decode())


def print_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table: rich on a terminal, aligned plain columns otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_edge=False, header_style="bold")
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    if title:
        click.echo(title)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
