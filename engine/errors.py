"""Errors of the engine: user mistakes (bad CSV, bad program) and infrastructure failures.

Each carries structured fields so the CLI can name the file, row, column or parameter.
"""

from __future__ import annotations

from reflowes.events.errors import ReflowesError


class UserError(ReflowesError, ValueError):
    """A mistake in what the user gave us; shown as a one-line message, never a traceback."""


class SheetError(UserError):
    """The CSV is unusable; names the file, and the row and column when known."""

    def __init__(
        self, path: str, message: str, row: int | None = None, column: str | None = None
    ) -> None:
        where = path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.column = path, row, column


class ProgramError(UserError):
    """The program file is missing, has no main, raised in main, or got bad parameters."""

    def __init__(self, path: str, message: str, param: str | None = None) -> None:
        where = path + (f", parameter {param!r}" if param else "")
        super().__init__(f"{where}: {message}")
        self.path, self.param = path, param


class InfraError(ReflowesError, RuntimeError):
    """The machine or engine failed us (Docker not answering, disk gone); says how to fix it."""
