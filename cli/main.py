"""The `reflowes` command group: every subcommand is registered here by explicit import."""

from __future__ import annotations

import click
from reflowes.cli.common import ReflowesGroup
from reflowes.cli.ps import ps
from reflowes.cli.replay import replay
from reflowes.cli.status import status


@click.group(cls=ReflowesGroup)
@click.version_option(package_name="reflowes")
def cli() -> None:
    """reflowes runs a batch of workflow runs, one per CSV row, over an embedded event log.

    Example: reflowes run samples.csv --program count.py
    """


cli.add_command(status)
cli.add_command(replay)
cli.add_command(ps)

# ---- `reflowes run` and `reflowes logs` (engine/shell.py, cli/run.py, cli/logs.py): the lead
# ---- registers them here, e.g. `from reflowes.cli.run import run` + `cli.add_command(run)`.
