"""The cache index in a real SQLite file: get/put, get_many, missing objects, shared writers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reflowes.engine.cache import DB_NAME, Cache
from reflowes.engine.repository import Repository
from reflowes.events.model import FileRef


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_get_put_round_trip(root: Path) -> None:
    repo = Repository(root)
    cache = Cache(root)
    out = repo.put_bytes(b"out")
    assert cache.get("k1") is None
    cache.put("k1", {"out": out})
    assert cache.get("k1") == {"out": out}
    assert (root / DB_NAME).exists()
    again = Cache(root)  # another process's view: persisted
    assert again.get("k1") == {"out": out}
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_get_many_one_query_for_a_batch(root: Path) -> None:
    repo = Repository(root)
    cache = Cache(root)
    refs = {f"k{i}": {"out": repo.put_bytes(str(i).encode())} for i in range(3000)}
    cache.put_many(refs)
    cache.put_many([("pair", {"x": refs["k1"]["out"]})])  # (key, result) pairs work too
    keys = [f"k{i}" for i in range(0, 4000, 2)] + ["pair"]
    hits = cache.get_many(keys)
    assert set(hits) == {f"k{i}" for i in range(0, 3000, 2)} | {"pair"}
    assert hits["k42"] == refs["k42"]
    assert cache.get_many([]) == {}
    assert len(cache) == 3001


def test_hit_with_missing_object_is_a_miss(root: Path) -> None:
    repo = Repository(root)
    cache = Cache(root)
    a, b = repo.put_bytes(b"a"), repo.put_bytes(b"b")
    cache.put_many({"both": {"x": a, "y": b}, "only_a": {"x": a}})
    os.unlink(repo.path(b))
    assert cache.get("both") is None
    assert cache.get_many(["both", "only_a"]) == {"only_a": {"x": a}}


def test_dir_results(root: Path, tmp_path: Path) -> None:
    repo = Repository(root)
    cache = Cache(root)
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"f")
    ref = repo.put_dir(d)
    cache.put("k", {"dir": ref})
    assert cache.get("k") == {"dir": ref}
    os.unlink(repo.path(FileRef(repo.listing(ref)["f"][0], 1)))
    assert Cache(root).get("k") is None


def test_put_overwrites_and_bad_rows_are_misses(root: Path) -> None:
    repo = Repository(root)
    cache = Cache(root)
    a, b = repo.put_bytes(b"a"), repo.put_bytes(b"b")
    cache.put("k", {"x": a})
    cache.put("k", {"x": b})
    assert cache.get("k") == {"x": b}
    cache.db.execute("INSERT INTO cache VALUES ('bad', '{\"x\": 3}', 0)")
    assert cache.get_many(["k", "bad"]) == {"k": {"x": b}}


_WRITER = """
import sys
from reflowes.engine.cache import Cache
from reflowes.engine.repository import Repository
root, tag = sys.argv[1], sys.argv[2]
repo, cache = Repository(root), Cache(root)
for i in range(150):
    cache.put(f"{tag}{i}", {"out": repo.put_bytes(f"{tag}{i}".encode())})
"""


def test_several_processes_share_the_cache(root: Path) -> None:
    Cache(root)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), t]) for t in "abc"]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    hits = Cache(root).get_many([f"{t}{i}" for t in "abc" for i in range(150)])
    assert len(hits) == 450


def test_a_damaged_cache_file_is_a_clear_error(root: Path) -> None:
    from reflowes.engine.cache import CacheError

    root.mkdir(parents=True)
    (root / DB_NAME).write_bytes(b"this is not a database, just junk bytes" * 100)
    with pytest.raises(CacheError, match="deleted safely"):
        Cache(root)
