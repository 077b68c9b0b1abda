"""The `reflowes` command group: every subcommand is registered here by explicit import."""

from __future__ import annotations

import click
from reflowes.cli.common import ReflowesGroup
from reflowes.cli.logs import logs
from reflowes.cli.ps import ps
from reflowes.cli.replay import replay
from reflowes.cli.run import run
from reflowes.cli.status import status
from reflowes.engine import gcpolicy


@click.group(cls=ReflowesGroup)
@click.version_option(package_name="reflowes")
def cli() -> None:
    """reflowes runs a batch of workflow runs, one per CSV row, over an embedded event log.

    Example: reflowes run samples.csv --program count.py
    """
    gcpolicy.tune()


cli.add_command(run)
cli.add_command(status)
cli.add_command(replay)
cli.add_command(ps)
cli.add_command(logs)


if __name__ == "__main__":
    cli()
