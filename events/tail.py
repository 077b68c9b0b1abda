"""Reading a log file from outside its writer: the checks on open, damage reports with the
last good seq, SQLite's integrity check, and `follow` (tail a log another process appends to).
Imports no engine or projection code.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator

from reflowes.events.errors import CorruptLog, LogError, LogLocked, NewerSchema, NotALog
from reflowes.events.model import SCHEMA_VERSION, Recorded

FORMAT = "reflowes-log"
SCAN_CHUNK = 10_000


def scan_last_good(conn: sqlite3.Connection) -> int:
    """The highest seq such that every event 1..seq can still be read (0 if none)."""
    last = 0
    try:
        while True:
            cur = conn.execute(
                "SELECT seq, length(body), kind FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, SCAN_CHUNK),
            )
            n = 0
            for seq, _, _ in cur:  # row by row: the rows before a bad page still count
                if seq != last + 1:
                    return last
                last, n = seq, n + 1
            if n < SCAN_CHUNK:
                return last
    except sqlite3.DatabaseError:
        return last


def salvage_last_good(path: str) -> int | None:
    """The last good seq of a damaged file, read past SQLite's size check (None if unreadable)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        # writable_schema makes SQLite trust the file's size over the header's (truncated files);
        # nothing is written through this read-only connection.
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        return scan_last_good(conn)
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def corrupt(path: str, problem: str, conn: sqlite3.Connection | None) -> CorruptLog:
    """A CorruptLog naming the end of the readable prefix (found through either route)."""
    good = max(scan_last_good(conn) if conn is not None else 0, salvage_last_good(path) or 0)
    return CorruptLog(path, f"corrupt ({problem}); events 1..{good} are still readable", good)


def validate(conn: sqlite3.Connection, path: str) -> int:
    """Check that `conn` holds a reflowes log this version can read; returns its last seq."""
    if os.path.getsize(path) == 0:
        raise NotALog(path, "empty file, not a reflowes event log")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.OperationalError as e:  # cannot open, locked, I/O error: not damage
        cls = LogLocked if "locked" in str(e) or "busy" in str(e) else LogError
        raise cls(path, f"cannot read the log: {e}") from None
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e) or "encrypted" in str(e):
            raise NotALog(path, "not an SQLite database, so not a reflowes event log") from None
        raise corrupt(path, str(e), None) from None
    if not {"meta", "events"} <= tables:
        raise NotALog(path, "an SQLite database, but not a reflowes event log (no meta/events)")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise corrupt(path, f"meta table: {e}", conn) from None
    if meta.get("format") != FORMAT:
        raise NotALog(path, f"an SQLite database, but its format is {meta.get('format')!r}, "
                      f"not {FORMAT!r}")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise NotALog(path, f"bad schema version {meta.get('schema_version')!r}") from None
    if version > SCHEMA_VERSION:
        raise NewerSchema(path, version, SCHEMA_VERSION)
    try:
        check_size(conn, path)
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        conn.execute("SELECT length(body) FROM events WHERE seq = ?", (last,)).fetchall()
    except sqlite3.DatabaseError as e:
        raise corrupt(path, str(e), conn) from None
    return int(last)


def check_size(conn: sqlite3.Connection, path: str) -> None:
    """Catch a truncated file early: with no WAL pending, every page must be in the file."""
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        return
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    actual = os.path.getsize(path)
    if pages * size > actual:
        raise corrupt(path, f"truncated: {actual} bytes on disk, {pages * size} expected", conn)


def integrity(conn: sqlite3.Connection, path: str, pragma: str) -> None:
    try:
        problems = [r[0] for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
    except sqlite3.DatabaseError as e:
        problems = [str(e)]
    if problems != ["ok"]:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise corrupt(path, f"fails {pragma}: {'; '.join(problems[:3])}{more}", conn)


def check(path: str | os.PathLike[str]) -> int:
    """Run SQLite's integrity_check on a log; returns its last seq or raises CorruptLog."""
    from reflowes.events.log import SqliteLog

    with SqliteLog.open(path, readonly=True) as log:
        conn = log._live()
        integrity(conn, log.path, "integrity_check")
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM events").fetchone()
        if count and (low != 1 or high != count):
            raise corrupt(log.path, f"seqs are not 1..{count}: {count} events from seq {low} to "
                          f"{high} (written around the log's API?)", conn)
        return log.last_seq()


def follow(path: str | os.PathLike[str], after: int = 0, poll: float = 0.02,
           stop: Callable[[], bool] | None = None) -> Iterator[Recorded]:
    """Tail a log another process appends to: every event after `after`, once, in order.

    Waits for the file to appear. Ends when `stop()` turns true, after a last drain.
    """
    from reflowes.events.log import SqliteLog

    p = os.fspath(path)
    while not os.path.exists(p):
        if stop is not None and stop():
            return
        time.sleep(poll)
    with SqliteLog.open(p, readonly=True) as log:
        last, seen = after, -1
        while True:
            stopping = stop is not None and stop()
            version = log.data_version()
            if version != seen or stopping:
                seen = version
                while True:
                    n = 0
                    for rec in log.read(last, limit=1000):
                        last, n = rec.seq, n + 1
                        yield rec
                    if n < 1000:
                        break
            if stopping:
                return
            time.sleep(poll)
