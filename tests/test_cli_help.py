"""Every reflowes command has help, and that help ends with an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from reflowes.cli.main import cli

COMMANDS = sorted(cli.commands)


def test_the_group_registers_the_read_commands() -> None:
    assert {"replay", "status", "ps"} <= set(COMMANDS)


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_every_command_has_help_ending_with_an_example(name: str) -> None:
    cmd: click.Command = cli.commands[name] if name else cli
    assert cmd.help, f"{name or 'reflowes'} has no help"
    last = cmd.help.strip().splitlines()[-1].strip()
    assert last.startswith("Example: reflowes "), f"{name}: help ends with {last!r}"
    if name:
        assert last.split()[2] == name, f"{name}'s example runs another command: {last!r}"
    res = CliRunner().invoke(cli, [name, "--help"] if name else ["--help"])
    assert res.exit_code == 0 and "Example: reflowes" in res.output
