"""Errors of the event layer; every reflowes error descends from ReflowesError."""

from __future__ import annotations


class ReflowesError(Exception):
    """The root of every error reflowes raises on purpose (shown to users without a traceback)."""


class UnknownEventKind(ReflowesError, ValueError):
    """A stored event's kind is not in this version's vocabulary."""

    def __init__(self, kind: str, seq: int | None = None, path: str | None = None) -> None:
        where = "".join([f" at seq {seq}" if seq is not None else "", f" in {path}" if path else ""])
        super().__init__(f"unknown event kind {kind!r}{where} (written by a newer reflowes?)")
        self.kind = kind
        self.seq = seq
        self.path = path


class BadEventBody(ReflowesError, ValueError):
    """A stored event's body does not match its kind."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"event of kind {kind!r} has a bad body: {detail}")
        self.kind = kind
        self.detail = detail


class LogError(ReflowesError, OSError):
    """The log file cannot be used; `path` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class NotALog(LogError):
    """The file is not a reflowes event log."""


class CorruptLog(LogError):
    """The log fails SQLite's integrity check; `last_good_seq` is the last readable event."""

    def __init__(self, path: str, message: str, last_good_seq: int | None) -> None:
        super().__init__(path, message)
        self.last_good_seq = last_good_seq


class NewerSchema(LogError):
    """The log was written by a newer schema version than this reflowes reads."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            path, f"written with event schema v{found}; this reflowes reads up to v{supported} "
            "(upgrade reflowes)"
        )
        self.found = found
        self.supported = supported


class LogLocked(LogError):
    """Another process holds the log's only write connection (read-only opens still work)."""
