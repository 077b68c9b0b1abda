"""The SQLite log on real files: append-only enforced by SQLite, clear errors for bad files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import sqlite_utils
from reflowes.events.errors import (
    BadEventBody,
    CorruptLog,
    LogError,
    LogLocked,
    NewerSchema,
    NotALog,
    ReflowesError,
    UnknownEventKind,
)
from reflowes.events.log import MemoryLog, SqliteLog, check, follow
from reflowes.events.model import SCHEMA_VERSION, ExecExited, RunDeclared, Tick

RUN = [RunDeclared(run_id=f"r{i}", program="p.py", params={"n": "x" * 150}, digest="d") for i in
       range(3000)]


def make_log(path: Path, n: int = 3000, group: int = 100) -> None:
    with SqliteLog.open(path) as log:
        for i in range(0, n, group):
            log.append(RUN[i:i + group], at=1000.0 + i)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "log.sqlite"
    make_log(path)
    return path


def test_append_is_one_group_with_contiguous_seqs(tmp_path: Path) -> None:
    with SqliteLog.open(tmp_path / "log.sqlite") as log:
        assert log.append([]) == [] and log.last_seq() == 0
        recs = log.append([Tick(), RUN[0], Tick()], at=5.0)
        assert [(r.seq, r.at) for r in recs] == [(1, 5.0), (2, 5.0), (3, 5.0)]
        assert log.append([Tick()])[0].seq == 4
        with pytest.raises(TypeError, match="not an event"):
            log.append([Tick(), "tick"])  # type: ignore[list-item]
        assert log.last_seq() == 4
    with SqliteLog.open(tmp_path / "log.sqlite") as log:
        assert [r.seq for r in log.read()] == [1, 2, 3, 4]
        assert next(iter(log.read(kinds=["run.declared"]))).event == RUN[0]


def test_update_and_delete_are_refused_by_sqlite_itself(log_path: Path) -> None:
    db = sqlite3.connect(log_path)
    for sql in ("UPDATE events SET kind = 'x' WHERE seq = 1", "DELETE FROM events WHERE seq = 2",
                "DELETE FROM events", "UPDATE events SET seq = seq + 1",
                "UPDATE events SET body = '{}' WHERE seq = 3000"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()
    sdb = sqlite_utils.Database(log_path)  # the friendly tooling is refused too
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sdb["events"].delete_where("seq < 10")  # type: ignore[union-attr]
    sdb.close()
    assert check(log_path) == 3000


def test_check_finds_gaps_written_around_the_api(log_path: Path) -> None:
    # INSERT is not guarded by a trigger (it cost ~2 us per row, 40-70% of an insert: see
    # benchmarks/README.md); check() still finds a gap, and the writer notices the stranger.
    with SqliteLog.open(log_path) as log:
        db = sqlite3.connect(log_path)
        db.execute("INSERT INTO events VALUES (3005, 0, 'clock.tick', 'clock', 1, '{}')")
        db.commit()
        db.close()
        with pytest.raises(LogError, match="ends at seq 3005 but this writer expected 3000"):
            log.append([Tick()])
    with pytest.raises(CorruptLog, match="not 1..3001") as info:
        check(log_path)
    _assert_error(info.value, log_path, CorruptLog)


def test_schema_and_pragmas(log_path: Path) -> None:
    db = sqlite_utils.Database(log_path)
    assert db["events"].columns_dict == {  # type: ignore[union-attr]
        "seq": int, "at": float, "kind": str, "stream": str, "v": int, "body": str}
    assert db["events"].pks == ["seq"]  # type: ignore[union-attr]
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert meta["format"] == "reflowes-log"
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db["events"].indexes == []  # type: ignore[union-attr]
    db.close()



def test_schema_is_what_sqlite_utils_would_have_made(log_path: Path, tmp_path: Path) -> None:
    """Logs are created with plain sqlite3 now; the tables must be those of older logs."""
    ref = sqlite_utils.Database(tmp_path / "ref.sqlite")
    ref["events"].create(  # type: ignore[union-attr]
        {"seq": int, "at": float, "kind": str, "stream": str, "v": int, "body": str},
        pk="seq", not_null={"at", "kind", "stream", "v", "body"})
    ref["snapshots"].create(  # type: ignore[union-attr]
        {"name": str, "seq": int, "version": int, "at": float, "blob": bytes},
        pk="name", not_null={"seq", "version", "blob"})
    ref["meta"].create({"key": str, "value": str}, pk="key")  # type: ignore[union-attr]
    tables = "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
    want = ref.execute(tables).fetchall()
    ref.close()
    conn = sqlite3.connect(log_path)
    assert conn.execute(tables).fetchall() == want
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x52464C57
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {"events_no_update", "events_no_delete"}
    conn.close()

def _assert_error(exc: BaseException, path: Path, cls: type) -> None:
    assert isinstance(exc, cls) and isinstance(exc, ReflowesError)
    assert str(path) in str(exc)


@pytest.mark.parametrize("readonly", [True, False])
@pytest.mark.parametrize("content", [
    b"sample,fastq_1,fastq_2\ns1,a.fq,b.fq\n",
    b"",
    b"SQLite format 3\x00" + b"\x00" * 200,
    bytes(range(256)) * 64,
], ids=["csv", "empty", "sqlite-magic-only", "binary"])
def test_a_file_that_is_not_a_log(tmp_path: Path, readonly: bool, content: bytes) -> None:
    path = tmp_path / "samples.csv"
    path.write_bytes(content)
    with pytest.raises(LogError) as info:
        SqliteLog.open(path, readonly=readonly)
    assert isinstance(info.value, (NotALog, CorruptLog))
    _assert_error(info.value, path, LogError)
    assert path.read_bytes() == content, "a failed open must not touch the file"
    assert os.listdir(tmp_path) == ["samples.csv"], "nor leave anything beside it"


def test_empty_file_and_csv_are_not_logs(tmp_path: Path) -> None:
    for name, content in (("empty", b""), ("s.csv", b"id,x\n1,2\n")):
        path = tmp_path / name
        path.write_bytes(content)
        for readonly in (True, False):
            with pytest.raises(NotALog) as info:
                SqliteLog.open(path, readonly=readonly)
            _assert_error(info.value, path, NotALog)
        with pytest.raises(NotALog):
            check(path)


@pytest.mark.parametrize("readonly", [True, False])
def test_other_sqlite_databases_are_not_logs(tmp_path: Path, readonly: bool) -> None:
    other = tmp_path / "dogs.db"
    sqlite_utils.Database(other)["dogs"].insert({"name": "Cleo"})  # type: ignore[union-attr]
    with pytest.raises(NotALog, match="not a reflowes event log") as info:
        SqliteLog.open(other, readonly=readonly)
    _assert_error(info.value, other, NotALog)
    lookalike = tmp_path / "lookalike.db"
    db = sqlite_utils.Database(lookalike)
    db["meta"].insert({"key": "format", "value": "something-else"})  # type: ignore[union-attr]
    db["events"].insert({"seq": 1})  # type: ignore[union-attr]
    db.close()
    with pytest.raises(NotALog, match="something-else"):
        SqliteLog.open(lookalike, readonly=readonly)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotALog, match="no such file") as info:
        SqliteLog.open(tmp_path / "nope.sqlite", readonly=True)
    _assert_error(info.value, tmp_path / "nope.sqlite", NotALog)
    with pytest.raises(NotALog, match="directory"):
        SqliteLog.open(tmp_path)
    with pytest.raises(LogError) as err:
        SqliteLog.open(tmp_path / "no-dir" / "log.sqlite")
    _assert_error(err.value, tmp_path / "no-dir" / "log.sqlite", LogError)
    assert not (tmp_path / "nope.sqlite").exists()


@pytest.mark.parametrize("readonly", [True, False])
def test_newer_schema_is_refused(log_path: Path, readonly: bool) -> None:
    db = sqlite3.connect(log_path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(NewerSchema, match="upgrade reflowes") as info:
        SqliteLog.open(log_path, readonly=readonly)
    _assert_error(info.value, log_path, NewerSchema)
    assert info.value.found == SCHEMA_VERSION + 1


def test_truncated_log_reports_last_good_seq(log_path: Path) -> None:
    size = log_path.stat().st_size
    os.truncate(log_path, size // 2)
    for readonly in (True, False):
        with pytest.raises(CorruptLog) as info:
            SqliteLog.open(log_path, readonly=readonly)
        _assert_error(info.value, log_path, CorruptLog)
        good = info.value.last_good_seq
        assert good is not None and 0 < good < 3000
        assert f"1..{good}" in str(info.value)
    with pytest.raises(CorruptLog) as checked:
        check(log_path)
    assert checked.value.last_good_seq == good


def test_garbage_page_is_found_by_check_and_by_reading(tmp_path: Path, log_path: Path) -> None:
    with open(log_path, "r+b") as f:
        f.seek(4096 * 60)
        f.write(bytes(range(256)) * 16)
    with pytest.raises(CorruptLog, match="integrity_check") as info:
        check(log_path)
    _assert_error(info.value, log_path, CorruptLog)
    good = info.value.last_good_seq
    assert good is not None and 0 < good < 3000
    with SqliteLog.open(log_path, readonly=True) as log:
        seen = 0
        with pytest.raises(CorruptLog) as read_info:
            for rec in log.read():
                seen = rec.seq
        assert seen <= good == read_info.value.last_good_seq
    with pytest.raises(CorruptLog):
        SqliteLog.open(log_path, verify=True)


def test_unknown_kind_and_bad_body_name_kind_seq_and_file(log_path: Path) -> None:
    db = sqlite3.connect(log_path)
    db.execute("INSERT INTO events VALUES (3001, 1.0, 'martian.landed', 'mars', 1, '{}')")
    db.execute("INSERT INTO events VALUES (3002, 1.0, 'run.declared', 'run:x', 1, '{\"a\":1}')")
    db.commit()
    db.close()
    with SqliteLog.open(log_path, readonly=True) as log:
        assert len(list(log.read(until=3000))) == 3000
        with pytest.raises(UnknownEventKind) as info:
            list(log.read(2990))
        assert "martian.landed" in str(info.value) and "3001" in str(info.value)
        assert str(log_path) in str(info.value) and info.value.seq == 3001
        with pytest.raises(BadEventBody, match="seq 3002") as bad:
            list(log.read(3001))
        assert str(log_path) in str(bad.value)
        assert [r[0] for r in log.read_raw(3000)] == [3001, 3002]  # raw reads never decode


WRITER = textwrap.dedent("""
    import sys
    from reflowes.events.log import SqliteLog, _INSERT, _encode_group
    from reflowes.events.model import Tick
    log = SqliteLog.open(sys.argv[1])
    log.append([Tick()] * 10, at=1.0)
    rows, _ = _encode_group([Tick()] * 5, 11, 2.0)
    log._conn.execute("BEGIN IMMEDIATE")       # hold a write transaction open, mid-append
    log._conn.executemany(_INSERT, rows)
    print("mid-append", flush=True)
    sys.stdin.readline()
    log._conn.execute("COMMIT")
    print("committed", flush=True)
    sys.stdin.readline()
""")


def test_readonly_reads_while_a_writer_is_mid_append(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout
    try:
        assert proc.stdout.readline().strip() == "mid-append"
        with SqliteLog.open(path, readonly=True) as ro:
            assert ro.last_seq() == 10
            assert [r.seq for r in ro.read()] == list(range(1, 11))
            with pytest.raises(LogLocked, match=f"pid {proc.pid}") as info:
                SqliteLog.open(path)
            _assert_error(info.value, path, LogLocked)
            with pytest.raises(LogError, match="read-only"):
                ro.append([Tick()])
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "committed"
            assert [r.at for r in ro.read(9)] == [1.0] + [2.0] * 5
            assert check(path) == 15
    finally:
        proc.kill()
        proc.wait()
    with SqliteLog.open(path) as log:  # the writer died: its lock died with it
        assert log.append([Tick()])[0].seq == 16


def test_follow_sees_each_event_once_while_a_thread_appends(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        seen.extend(r.seq for r in follow(path, after=0, poll=0.005, stop=done.is_set))

    t = threading.Thread(target=tail)
    t.start()
    with SqliteLog.open(path) as log:
        for i in range(50):
            log.append([Tick()] * (i % 7 + 1), at=float(i))
        total = log.last_seq()
    done.set()
    t.join(10)
    assert seen == list(range(1, total + 1))
    assert [r.seq for r in follow(path, after=total - 3, stop=lambda: True)] == [
        total - 2, total - 1, total]


def test_snapshots_replace_per_name_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    for log in (MemoryLog(), SqliteLog.open(path)):
        with log:
            log.append([Tick()] * 3)
            assert log.load_snapshot("stats") is None
            log.save_snapshot("stats", 2, 1, b"\x00old")
            log.save_snapshot("stats", 3, 2, b"\x00new")
            log.save_snapshot("batch", 0, 1, b"")
            with pytest.raises(ValueError, match="ends at seq 3"):
                log.save_snapshot("stats", 4, 1, b"")
            assert log.load_snapshot("stats") == (3, 2, b"\x00new")
    with SqliteLog.open(path, readonly=True) as ro:
        assert ro.load_snapshot("stats") == (3, 2, b"\x00new")
        assert ro.load_snapshot("batch") == (0, 1, b"")


def test_copy_of_a_live_log_with_its_wal_opens(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = SqliteLog.open(path)
    log.append([ExecExited(exec_id="e", task_id="t", exit_code=0)] * 3)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)
    shutil.copy(str(path) + "-wal", str(copy) + "-wal")
    log.close()
    assert check(copy) == 3


def test_a_creation_cut_short_leaves_no_log_and_is_redone(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    # What a writer killed while creating the log leaves: a half-made file beside it, never
    # the log itself (the log is linked into place only once its schema is committed).
    (tmp_path / "log.sqlite.creating").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(NotALog, match="no such file"):
        SqliteLog.open(path, readonly=True)
    with SqliteLog.open(path) as log:
        assert log.append([Tick()])[0].seq == 1
    assert not (tmp_path / "log.sqlite.creating").exists()
    assert check(path) == 1


def test_non_durable_groups_are_ordinary_commits(tmp_path: Path) -> None:
    """durable=False only skips the fsync: the group is committed, ordered and readable."""
    path = tmp_path / "log.sqlite"

    def synchronous(log: SqliteLog) -> int:
        return int(log._live().execute("PRAGMA synchronous").fetchone()[0])

    with SqliteLog.open(path) as log:
        log.append([Tick()], at=1.0)
        assert synchronous(log) == 2  # FULL
        log.append([Tick(), Tick()], at=2.0, durable=False)
        assert synchronous(log) == 1  # NORMAL, for that group only
        log.append([Tick()], at=3.0)
        assert synchronous(log) == 2
    with SqliteLog.open(path, readonly=True) as log:
        assert [(r.seq, r.at) for r in log.read()] == [(1, 1.0), (2, 2.0), (3, 2.0), (4, 3.0)]


IN_DOUBT_WRITER = textwrap.dedent("""
    import sys
    from reflowes.events.log import SqliteLog
    from reflowes.events.model import Tick
    path = sys.argv[1]
    log = SqliteLog.open(path)
    log.append([Tick()] * 10, at=1.0)
    print("10", flush=True)
    sys.stdin.readline()
    with open(path + "-shm", "rb") as f:
        index = f.read()
    log.append([Tick()] * 5, at=2.0)
    # Die as if killed inside COMMIT: the group is in the WAL, the shared index does not show it.
    with open(path + "-shm", "r+b") as f:
        f.write(index)
    print("in doubt", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("settle", [True, False], ids=["settled", "without-settle"])
def test_a_group_left_in_doubt_never_appears_behind_a_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settle: bool) -> None:
    from reflowes.events import log as log_module

    if not settle:
        monkeypatch.setattr(log_module, "_settle", lambda conn: None)
    path = tmp_path / "log.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", IN_DOUBT_WRITER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdin and writer.stdout
    assert writer.stdout.readline().strip() == "10"
    reader = SqliteLog.open(path, readonly=True)  # keeps the shared index alive throughout
    assert reader.last_seq() == 10
    writer.stdin.write("\n")
    writer.stdin.flush()
    assert writer.stdout.readline().strip() == "in doubt"
    writer.kill()
    writer.wait()
    assert reader.last_seq() == 10
    with SqliteLog.open(path) as log:  # the next writer
        assert log.last_seq() == 10
    assert reader.last_seq() == 10
    reader.close()
    with SqliteLog.open(path, readonly=True) as fresh:  # every connection closed: index rebuilt
        # Settled at the writer's open, the unacknowledged group is gone for good; unsettled,
        # SQLite's recovery brings it back after readers and the next writer went on without it.
        assert fresh.last_seq() == (10 if settle else 15)
