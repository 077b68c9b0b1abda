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
    _, found, tail = cmd.help.strip().rpartition("Example")
    assert found, f"{name or 'reflowes'}: help has no example"
    examples = [line.strip() for line in tail.lstrip("s:").splitlines() if line.strip()]
    want = f"reflowes {name} " if name else "reflowes "
    assert examples and all(e.startswith(want) for e in examples), (
        f"{name or 'reflowes'}: help does not end with examples of itself: {examples!r}")
    res = CliRunner().invoke(cli, [name, "--help"] if name else ["--help"])
    assert res.exit_code == 0 and examples[-1] in res.output
