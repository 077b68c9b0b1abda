"""The append-only event log: a SQLite file (one writer process, any number of readers) and an
in-memory twin with the same interface. Imports no engine or projection code.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any, Protocol, Self

import msgspec
from reflowes.events import codec
from reflowes.events.errors import (
    BadEventBody,
    LogError,
    LogLocked,
    NotALog,
    UnknownEventKind,
)
from reflowes.events.model import BY_KIND, SCHEMA_VERSION, Event, Recorded
from reflowes.events.tail import FORMAT, check, corrupt, follow, integrity, validate

__all__ = ["FORMAT", "EventLog", "MemoryLog", "RawRow", "SqliteLog", "check", "follow"]

APPLICATION_ID = 0x52464C57  # "RFLW" in the SQLite header
CHUNK = 10_000  # rows per statement: a long read never pins the WAL
BUSY_TIMEOUT_MS = 5000

RawRow = tuple[int, float, str, str, int, "bytes | str"]  # seq, at, kind, stream, v, body
_KIND_OF: dict[type, str] = {cls: kind for kind, cls in BY_KIND.items()}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {  # the same typed decoders as codec's
    kind: msgspec.json.Decoder(cls) for kind, cls in BY_KIND.items()
}
_LAST_SEQ = "SELECT max(seq) FROM events"
_INSERT = "INSERT INTO events (seq, at, kind, stream, v, body) VALUES (?, ?, ?, ?, ?, ?)"


class EventLog(Protocol):
    """What the shell, projections and CLIs need from a log; seqs start at 1 and have no gaps."""

    path: str

    def append(self, events: Sequence[Event], at: float | None = None,
               durable: bool = True) -> list[Recorded]: ...

    def read(
        self, after: int = 0, *, until: int | None = None, limit: int | None = None,
        kinds: Collection[str] | None = None, stream_prefix: str | None = None,
    ) -> Iterator[Recorded]: ...

    def read_raw(self, after: int = 0, until: int | None = None) -> Iterator[RawRow]: ...

    def last_seq(self) -> int: ...

    def save_snapshot(self, name: str, seq: int, version: int, blob: bytes) -> None: ...

    def load_snapshot(self, name: str) -> tuple[int, int, bytes] | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def _encode_group(
    events: Sequence[Event], first: int, at: float
) -> tuple[list[RawRow], list[Recorded]]:
    """Rows and envelopes for a group that starts at seq `first`; refuses non-events."""
    rows: list[RawRow] = []
    recs: list[Recorded] = []
    encode, kind_of, rec, v = codec.encode, _KIND_OF, Recorded, SCHEMA_VERSION
    seq = first
    for ev in events:
        kind = kind_of.get(type(ev))
        if kind is None:
            raise TypeError(f"not an event of the vocabulary: {ev!r}")
        rows.append((seq, at, kind, ev.stream(), v, encode(ev).decode()))
        recs.append(rec(seq, at, ev, v))
        seq += 1
    return rows, recs


def _decode(path: str, seq: int, at: float, kind: str, body: bytes | str, v: int) -> Recorded:
    """One stored row as an envelope; errors name the kind, the seq and the file."""
    try:
        return Recorded(seq, at, codec.decode(kind, body), v)
    except UnknownEventKind:
        raise UnknownEventKind(kind, seq, path) from None
    except BadEventBody as e:
        raise BadEventBody(kind, f"{e.detail} (seq {seq} in {path})") from None


def _decode_rows(path: str, rows: list[tuple[int, float, str, str, int]]) -> list[Recorded]:
    """Envelopes of (seq, at, kind, body, v) rows: the hot loop of every replay, kept flat."""
    decoders, rec = _DECODERS, Recorded
    try:
        return [rec(seq, at, decoders[kind].decode(body), v) for seq, at, kind, body, v in rows]
    except (KeyError, msgspec.ValidationError, msgspec.DecodeError):
        for row in rows:
            _decode(path, *row)  # raises the error that names the kind, the seq and the file
        raise


def _check_snapshot(path: str, seq: int, last: int) -> None:
    if not 0 <= seq <= last:
        raise ValueError(f"{path}: snapshot at seq {seq} but the log ends at seq {last}")


# ---------------------------------------------------------------- in memory


class MemoryLog:
    """The log as a Python list, for tests and for differential checks against SqliteLog."""

    def __init__(self) -> None:
        self.path = ":memory:"
        self._rows: list[RawRow] = []
        self._snapshots: dict[str, tuple[int, int, bytes]] = {}

    def append(self, events: Sequence[Event], at: float | None = None,
               durable: bool = True) -> list[Recorded]:
        """Append a group of events atomically; returns their envelopes."""
        if not events:
            return []
        rows, recs = _encode_group(events, len(self._rows) + 1, time.time() if at is None else at)
        self._rows.extend(rows)
        return recs

    def read(
        self, after: int = 0, *, until: int | None = None, limit: int | None = None,
        kinds: Collection[str] | None = None, stream_prefix: str | None = None,
    ) -> Iterator[Recorded]:
        """Events with after < seq <= until (default: the last seq now), in seq order."""
        wanted = None if kinds is None else frozenset(kinds)
        n = 0
        for seq, at, kind, stream, v, body in self.read_raw(after, until):
            if limit is not None and n >= limit:
                return
            if wanted is not None and kind not in wanted:
                continue
            if stream_prefix and not stream.startswith(stream_prefix):
                continue
            n += 1
            yield _decode(self.path, seq, at, kind, body, v)

    def read_raw(self, after: int = 0, until: int | None = None) -> Iterator[RawRow]:
        """Undecoded rows (seq, at, kind, stream, v, body) with after < seq <= until."""
        hi = len(self._rows) if until is None else min(until, len(self._rows))
        return iter(self._rows[max(after, 0):max(hi, 0)])

    def last_seq(self) -> int:
        return len(self._rows)

    def save_snapshot(self, name: str, seq: int, version: int, blob: bytes) -> None:
        """Store (or replace) the snapshot called `name`, taken at `seq`."""
        _check_snapshot(self.path, seq, self.last_seq())
        self._snapshots[name] = (seq, version, bytes(blob))

    def load_snapshot(self, name: str) -> tuple[int, int, bytes] | None:
        return self._snapshots.get(name)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- SQLite


_TRIGGERS = [
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'reflowes event log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'reflowes event log is append-only: DELETE refused'); END""",
]


_SCHEMA = [  # the tables as sqlite-utils spells them (logs made before stay identical)
    ('CREATE TABLE "events" (\n   "seq" INTEGER PRIMARY KEY,\n   "at" REAL NOT NULL,\n'
     '   "kind" TEXT NOT NULL,\n   "stream" TEXT NOT NULL,\n   "v" INTEGER NOT NULL,\n'
     '   "body" TEXT NOT NULL\n)'),
    ('CREATE TABLE "snapshots" (\n   "name" TEXT PRIMARY KEY,\n   "seq" INTEGER NOT NULL,\n'
     '   "version" INTEGER NOT NULL,\n   "at" REAL,\n   "blob" BLOB NOT NULL\n)'),
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" TEXT\n)',
    *_TRIGGERS,
]


def _create(path: str) -> None:
    """Write an empty log beside `path`, then link it into place: a log file is whole or absent.

    Plain sqlite3: importing sqlite-utils (and numpy with it) cost every new batch ~0.6 s."""
    tmp = path + ".creating"
    for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA journal_mode = WAL").fetchall()
        db.execute("BEGIN")
        for sql in _SCHEMA:
            db.execute(sql)
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("format", FORMAT), ("schema_version", str(SCHEMA_VERSION)),
            ("created_at", repr(time.time())),
        ])
        db.execute("COMMIT")
    finally:
        db.close()
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # created meanwhile by a writer that ignored the lock; validation decides
    finally:
        os.unlink(tmp)


def _take_writer_lock(path: str) -> int:
    """An exclusive flock on `<path>-writer`; the kernel drops it when the writer dies."""
    lock = path + "-writer"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LogError(path, f"cannot open the writer lock {lock}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LogLocked(
            path, f"pid {holder} holds the only write connection to this log; open it read-only "
            "or stop that process"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SqliteLog:
    """The log in one SQLite file (WAL, synchronous=FULL).

    Exactly one process may open a log for writing (a flock on `<path>-writer` enforces it;
    a second writer gets LogLocked). Any number of processes may open it read-only meanwhile.
    Not for concurrent use by several threads: hand it to one thread at a time.
    """

    def __init__(
        self, path: str, conn: sqlite3.Connection, readonly: bool, lock_fd: int | None
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._last = 0
        self._durable = True  # synchronous=FULL, as open() sets it

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False,
             verify: bool = False) -> SqliteLog:
        """Open (and, unless readonly, create when missing) a log; `verify` runs quick_check."""
        p = os.fspath(path)
        if not os.path.exists(p) and readonly:
            raise NotALog(p, "no such file")
        if os.path.isdir(p):
            raise NotALog(p, "is a directory, not a reflowes event log")
        stray_lock = not readonly and not os.path.exists(p + "-writer")
        lock_fd = None if readonly else _take_writer_lock(p)
        try:
            if not readonly and not os.path.exists(p):
                _create(p)
            conn = _connect(p, readonly)
            try:
                last = validate(conn, p)
                if verify:
                    integrity(conn, p, "quick_check")
                if not readonly:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = FULL")
                    _settle(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException as e:
            if lock_fd is not None:
                os.close(lock_fd)
                if stray_lock and isinstance(e, NotALog):
                    os.unlink(p + "-writer")  # leave nothing beside a file that is no log
            raise
        log = cls(p, conn, readonly, lock_fd)
        log._last = last
        return log

    # ------------------------------------------------------------ writing

    def append(self, events: Sequence[Event], at: float | None = None,
               durable: bool = True) -> list[Recorded]:
        """Append a group in ONE transaction (group commit); returns the envelopes with seqs.

        `durable=False` skips the fsync of this commit (synchronous=NORMAL): the group still
        survives a crash of the process, and the next durable commit makes it power-safe too
        (WAL commits are ordered). For groups whose loss on power failure only means redoing
        work, never a decision performed without its record."""
        if not events:
            return []
        rows, recs = _encode_group(events, self._last + 1, time.time() if at is None else at)
        if durable != self._durable:
            self._live().execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        conn = self._writer()
        try:  # _transaction() spelled out: this is the hot path, a generator costs ~2 us
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(_LAST_SEQ).fetchone()[0] or 0
                if found != self._last:
                    raise LogError(self.path, f"log ends at seq {found} but this writer "
                                   f"expected {self._last}: another process wrote to it")
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise self._wrap(e) from None
        self._last = rows[-1][0]
        return recs

    def save_snapshot(self, name: str, seq: int, version: int, blob: bytes) -> None:
        """Store (or replace) the snapshot called `name`, taken at `seq`."""
        _check_snapshot(self.path, seq, self.last_seq())
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (name, seq, version, at, blob) "
                "VALUES (?, ?, ?, ?, ?)", (name, seq, version, time.time(), bytes(blob)))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors name the file."""
        conn = self._writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise self._wrap(e) from None

    # ------------------------------------------------------------ reading

    def last_seq(self) -> int:
        """The seq of the newest committed event (0 for an empty log)."""
        if not self.readonly:
            return self._last
        return int(self._query("SELECT max(seq) FROM events", ())[0][0] or 0)

    def read(
        self, after: int = 0, *, until: int | None = None, limit: int | None = None,
        kinds: Collection[str] | None = None, stream_prefix: str | None = None,
    ) -> Iterator[Recorded]:
        """Events with after < seq <= until (default: the last seq now), in seq order."""
        where, params = "", list[object]()
        if kinds is not None:
            kinds = list(kinds)
            if not kinds:
                return iter(())
            where += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += kinds
        if stream_prefix:
            where += " AND substr(stream, 1, ?) = ?"
            params += [len(stream_prefix), stream_prefix]
        sql = ("SELECT seq, at, kind, body, v FROM events WHERE seq > ? AND seq <= ?"
               f"{where} ORDER BY seq LIMIT ?")
        return chain.from_iterable(self._decoded_chunks(sql, after, until, params, limit))

    def _decoded_chunks(self, sql: str, after: int, until: int | None, params: list[object],
                        limit: int | None) -> Iterator[list[Recorded]]:
        left = -1 if limit is None else limit
        if left == 0:
            return
        for lo, top in self._windows(after, until):
            rows = self._query(sql, (lo, top, *params, left))
            yield _decode_rows(self.path, rows)
            left -= len(rows)
            if left == 0:
                return

    def read_raw(self, after: int = 0, until: int | None = None) -> Iterator[RawRow]:
        """Undecoded rows (seq, at, kind, stream, v, body) for folds that decode lazily."""
        sql = "SELECT seq, at, kind, stream, v, body FROM events WHERE seq > ? AND seq <= ?"
        # chain iterates each chunk's list in C: no Python frame per row.
        return chain.from_iterable(self._query(sql, w) for w in self._windows(after, until))

    def load_snapshot(self, name: str) -> tuple[int, int, bytes] | None:
        """(seq, version, blob) of the snapshot called `name`, or None."""
        rows = self._query("SELECT seq, version, blob FROM snapshots WHERE name = ?", (name,))
        return None if not rows else (int(rows[0][0]), int(rows[0][1]), bytes(rows[0][2]))

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap probe before polling."""
        return int(self._query("PRAGMA data_version", ())[0][0])

    def _windows(self, after: int, until: int | None) -> Iterator[tuple[int, int]]:
        """Seq windows of CHUNK rows up to `until` or the last seq now: one statement each."""
        last = self.last_seq()
        hi = last if until is None else min(until, last)
        lo = max(after, 0)
        while lo < hi:
            top = min(lo + CHUNK, hi)
            yield lo, top
            lo = top

    def _query(self, sql: str, params: Sequence[object]) -> list[Any]:
        try:
            return self._live().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise self._wrap(e) from None

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection and release the writer lock (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writer(self) -> sqlite3.Connection:
        if self.readonly:
            raise LogError(self.path, "opened read-only; only the writer process appends")
        return self._live()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LogError(self.path, "log is closed")
        return self._conn

    def _wrap(self, e: sqlite3.DatabaseError) -> LogError:
        """A SQLite error as a log error naming the file (corruption reports the last good seq)."""
        msg = str(e)
        if isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
            return LogLocked(self.path, f"{msg} (after waiting {BUSY_TIMEOUT_MS} ms)")
        if "malformed" in msg or "not a database" in msg or not isinstance(
                e, (sqlite3.IntegrityError, sqlite3.OperationalError)):
            return corrupt(self.path, msg, self._conn)
        return LogError(self.path, msg)


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + ("?mode=ro" if readonly else "")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as e:
        raise LogError(path, f"cannot open: {e}") from None
    return conn


def _settle(conn: sqlite3.Connection) -> None:
    """Decide, before this writer appends, the fate of a group a crashed writer left in doubt.

    A writer killed inside COMMIT can leave a whole committed transaction in the WAL that the
    shared-memory index does not show yet: invisible to every open connection, it would appear
    later, when the last connection closes and the next one rebuilds the index. Truncating the
    WAL here (it copies only visible frames) settles it: such a group, never acknowledged, is
    gone for good, and nothing appears behind a reader's back. Best effort: if a reader holds a
    snapshot past the busy timeout, the next append overwrites those frames anyway.
    """
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:
        pass


