"""The cache index: step cache key -> result (dict[str, FileRef]) in SQLite at root/cache.sqlite.

Shared by every batch of a user (several processes): WAL, busy_timeout, short transactions.
Also holds the repository's intern memo. A hit whose objects are gone is a miss.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from reflowes.engine.errors import InfraError
from reflowes.events.model import FileRef, Result

if TYPE_CHECKING:
    from reflowes.engine.repository import Repository

DB_NAME = "cache.sqlite"
_BUSY_MS = 10_000
_MEMO_BATCH = 512
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY, result TEXT NOT NULL, created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intern_memo (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, digest TEXT NOT NULL
) WITHOUT ROWID;
"""
_Result = dict[str, FileRef]
_encode = msgspec.json.Encoder().encode
_decode_list = msgspec.json.Decoder(list[_Result]).decode
_decode_one = msgspec.json.Decoder(_Result).decode


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection to a shared cache db: WAL, NORMAL sync (the cache is losable), busy wait."""
    db = sqlite3.connect(os.fspath(path), timeout=_BUSY_MS / 1000, isolation_level=None,
                         check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "wal":
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def _decode_rows(texts: list[str]) -> list[_Result | None]:
    """Decode stored results in one pass; a bad row (older writer) decodes to None."""
    try:
        return list(_decode_list(("[" + ",".join(texts) + "]").encode()))
    except (msgspec.DecodeError, msgspec.ValidationError):
        out: list[_Result | None] = []
        for t in texts:
            try:
                out.append(_decode_one(t))
            except (msgspec.DecodeError, msgspec.ValidationError):
                out.append(None)
        return out


class CacheError(InfraError):
    """The cache database cannot be used; it only speeds things up, so it may be deleted."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message} (the cache index can be deleted safely: it is "
                         "rebuilt as steps run)")
        self.path = path


class Cache:
    """key -> successful step result; `get_many` answers a whole batch with one query."""

    def __init__(self, root: str | os.PathLike[str], repo: Repository | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.db = connect(self.root / DB_NAME)
        except sqlite3.DatabaseError as e:
            raise CacheError(str(self.root / DB_NAME), str(e)) from e
        self._repo = repo
        self._memo_mem: dict[str, tuple[int, int, int, str]] = {}
        self._memo_dirs: set[str] = set()
        self._memo_buf: list[tuple[str, int, int, int, str]] = []
        self._memo_since = 0.0
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        try:
            self.flush_memo()
        except sqlite3.Error:
            pass

    def _repository(self) -> Repository:
        if self._repo is None:
            from reflowes.engine.repository import Repository

            self._repo = Repository(self.root)
        return self._repo

    def close(self) -> None:
        """Flush the memo and close the database."""
        self.flush_memo()
        atexit.unregister(self._at_exit)
        self.db.close()

    # ------------------------------------------------------------ the index

    def get(self, key: str) -> dict[str, FileRef] | None:
        """The result stored under `key`, unless absent or its objects are gone."""
        row = self.db.execute("SELECT result FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            result = _decode_one(row[0])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        repo = self._repository()
        return result if all(repo.has(r) for r in result.values()) else None

    def get_many(self, keys: list[str]) -> dict[str, dict[str, FileRef]]:
        """{key: result} for every key that hits (one query; missing objects are misses)."""
        if not keys:
            return {}
        rows = self.db.execute(
            "SELECT key, result FROM cache WHERE key IN (SELECT value FROM json_each(?))",
            (_encode(list(keys)).decode(),),
        ).fetchall()
        repo = self._repository()
        objs = repo._objects_s
        present: dict[str, bool] = {}
        hits: dict[str, dict[str, FileRef]] = {}
        for (key, _), result in zip(rows, _decode_rows([r[1] for r in rows])):
            if result is None:
                continue
            ok = True
            for ref in result.values():
                digest = ref.digest
                known = present.get(digest)
                if known is None:
                    if ref.kind == "dir":
                        known = repo.has(ref)
                    else:
                        try:
                            known = os.stat(f"{objs}/{digest[:2]}/{digest[2:]}").st_size == ref.size
                        except FileNotFoundError:
                            known = False
                    present[digest] = known
                if not known:
                    ok = False
                    break
            if ok:
                hits[key] = result
        return hits

    def put(self, key: str, result: dict[str, FileRef]) -> None:
        """Remember a successful step's result (the shell never puts failures)."""
        self.put_many({key: result})

    def put_many(
        self, results: Mapping[str, Result] | Iterable[tuple[str, Result]]
    ) -> None:
        """Remember many results (a mapping or (key, result) pairs) in one short transaction."""
        pairs = results.items() if isinstance(results, Mapping) else results
        now = time.time()
        rows = [(k, _encode(v).decode(), now) for k, v in pairs]
        if not rows:
            return
        with self._txn():
            self.db.executemany(
                "INSERT OR REPLACE INTO cache(key, result, created) VALUES (?, ?, ?)", rows
            )

    def delete(self, key: str) -> None:
        """Forget a key (e.g. a result found unusable)."""
        with self._txn():
            self.db.execute("DELETE FROM cache WHERE key = ?", (key,))

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM cache").fetchone()[0])

    # ------------------------------------------------------------ the intern memo

    def memo_get_many(self, entries: list[tuple[str, int, int, int]]) -> dict[str, str]:
        """{path: digest} for the (path, size, mtime_ns, inode) entries that are unchanged.
        Reads the memo a directory at a time (one range query), then from memory."""
        dirs = {os.path.dirname(e[0]) for e in entries} - self._memo_dirs
        for d in dirs:
            lo = d.rstrip("/") + "/"
            rows = self.db.execute(
                "SELECT path, size, mtime_ns, inode, digest FROM intern_memo "
                "WHERE path >= ? AND path < ?", (lo, lo[:-1] + "0"),
            ).fetchall()
            for p, size, mtime, ino, digest in rows:
                self._memo_mem.setdefault(p, (size, mtime, ino, digest))
            self._memo_dirs.add(d)
        out: dict[str, str] = {}
        for p, size, mtime, ino in entries:
            m = self._memo_mem.get(p)
            if m is not None and m[0] == size and m[1] == mtime and m[2] == ino:
                out[p] = m[3]
        return out

    def memo_put_many(self, entries: list[tuple[str, int, int, int, str]]) -> None:
        """Remember (path, size, mtime_ns, inode, digest) entries; written in batches (a memo
        lost in a crash only costs a re-hash)."""
        for p, size, mtime, ino, digest in entries:
            self._memo_mem[p] = (size, mtime, ino, digest)
        if not self._memo_buf:
            self._memo_since = time.monotonic()
        self._memo_buf.extend(entries)
        if len(self._memo_buf) >= _MEMO_BATCH or time.monotonic() - self._memo_since > 1.0:
            self.flush_memo()

    def flush_memo(self) -> None:
        """Write the buffered intern memo entries."""
        if not self._memo_buf:
            return
        buf, self._memo_buf = self._memo_buf, []
        with self._txn():
            self.db.executemany(
                "INSERT OR REPLACE INTO intern_memo(path, size, mtime_ns, inode, digest) "
                "VALUES (?, ?, ?, ?, ?)", buf,
            )

    def _txn(self) -> _Txn:
        return _Txn(self.db)


class _Txn:
    """BEGIN IMMEDIATE ... COMMIT (rollback on error): writers queue on the lock up front."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
