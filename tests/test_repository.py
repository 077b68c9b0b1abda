"""The content-addressed repository on a real directory: round trips, dirs, dedup, intern memo."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reflowes.engine.repository import InputNotFound, Repository
from reflowes.events.model import FileRef


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo")


def test_put_bytes_is_sha256_addressed_and_read_only(repo: Repository) -> None:
    ref = repo.put_bytes(b"hello")
    assert ref == FileRef(hashlib.sha256(b"hello").hexdigest(), 5)
    p = repo.path(ref)
    assert p == repo.root / "objects" / ref.digest[:2] / ref.digest[2:]
    assert p.read_bytes() == b"hello"
    assert not os.stat(p).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert repo.has(ref)
    assert not repo.has(FileRef("0" * 64, 5))
    assert not repo.has(FileRef(ref.digest, 6))  # wrong size: a truncated object is absent


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=3 << 20))
def test_put_file_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    d = tmp_path_factory.mktemp("rt")
    repo = Repository(d / "repo")
    src = d / "src"
    src.write_bytes(data)
    ref = repo.put_file(src)
    assert ref.digest == hashlib.sha256(data).hexdigest() and ref.size == len(data)
    dest = d / "dest"
    repo.materialize(ref, dest)
    assert dest.read_bytes() == data
    assert src.stat().st_mode & stat.S_IWUSR  # copying leaves the source alone
    assert list((repo.root / "tmp").iterdir()) == []


def test_dedup_same_content_one_object(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"same")
    (tmp_path / "b").write_bytes(b"same")
    r1, r2 = repo.put_file(tmp_path / "a"), repo.put_file(tmp_path / "b")
    r3 = repo.put_bytes(b"same")
    assert r1 == r2 == r3
    objects = [p for p in (repo.root / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1


def test_put_file_move_hard_links(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.write_bytes(b"output")
    ref = repo.put_file(src, move=True)
    assert os.stat(src).st_ino == os.stat(repo.path(ref)).st_ino
    assert repo.read_bytes(ref) == b"output"


def test_concurrent_writers_of_one_object(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    (tmp_path / "src").write_bytes(data)
    refs: list[FileRef] = []
    threads = [threading.Thread(target=lambda: refs.append(repo.put_file(tmp_path / "src")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(refs)) == 1
    assert repo.read_bytes(refs[0]) == data


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dir_round_trip_and_listing(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "d"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a")
    (src / "sub" / "b.txt").write_bytes(b"bb")
    (src / "sub" / "deeper" / "c").write_bytes(b"")
    ref = repo.put_dir(src)
    assert ref.kind == "dir"
    listing = repo.listing(ref)
    assert listing["sub/b.txt"] == [hashlib.sha256(b"bb").hexdigest(), 2]
    assert set(listing) == {"a.txt", "sub/b.txt", "sub/deeper/c"}
    dest = tmp_path / "m"
    repo.materialize(ref, dest)
    assert _tree(dest) == _tree(src)
    assert repo.has(ref)
    # same content elsewhere, different mtimes: same digest (canonical listing)
    other = tmp_path / "e"
    repo.materialize(ref, other)
    assert repo.put_dir(other) == ref
    # a dir whose file object vanished is no longer present
    os.unlink(repo.path(FileRef(listing["a.txt"][0], 1)))
    fresh = Repository(repo.root)
    assert not fresh.has(ref)


def test_intern_paths_and_file_urls(repo: Repository, tmp_path: Path) -> None:
    f = tmp_path / "in put.txt"
    f.write_bytes(b"data")
    r1 = repo.intern(str(f))
    r2 = repo.intern("file://" + str(f).replace(" ", "%20"))
    assert r1 == r2 == FileRef(hashlib.sha256(b"data").hexdigest(), 4)
    with pytest.raises(InputNotFound):
        repo.intern(tmp_path / "missing")
    with pytest.raises(InputNotFound):
        repo.intern("s3://bucket/key")
    with pytest.raises(InputNotFound):
        repo.intern(str(f), kind="dir")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_bytes(b"x")
    assert repo.intern(d, kind="dir") == repo.put_dir(d)


def test_intern_memo_skips_rehash_until_file_changes(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for i in range(200):
        p = tmp_path / f"f{i}"
        p.write_bytes(f"content {i}".encode())
        files.append(p)
    first = repo.intern_many(files)
    repo.flush()
    hashed: list[str] = []
    original = Repository.put_file

    def counting(self: Repository, path: str | os.PathLike[str], move: bool = False) -> FileRef:
        hashed.append(os.fspath(path))
        return original(self, path, move)

    monkeypatch.setattr(Repository, "put_file", counting)
    again = Repository(repo.root)  # a new process would start with a fresh object
    assert again.intern_many(files) == first
    assert hashed == []
    files[3].write_bytes(b"changed, and longer")
    assert again.intern(files[3]) == FileRef(
        hashlib.sha256(b"changed, and longer").hexdigest(), 19)
    assert hashed == [str(files[3])]
    # an object removed from the repository is re-stored even though the memo knows the file
    os.unlink(again.path(first[5]))
    assert again.intern(files[5]) == first[5]
    assert again.has(first[5])


def test_materialize_makes_parents_and_replaces(repo: Repository, tmp_path: Path) -> None:
    a, b = repo.put_bytes(b"a"), repo.put_bytes(b"b")
    dest = tmp_path / "results" / "run 1" / "out.txt"
    repo.materialize(a, dest)
    assert dest.read_bytes() == b"a"
    repo.materialize(b, dest)  # a rerun with a new result replaces the old one
    assert dest.read_bytes() == b"b"
    from reflowes.engine.repository import RepositoryError

    with pytest.raises(RepositoryError):
        repo.materialize(FileRef("cd" * 32, 1), tmp_path / "x" / "y")


def test_intern_dir_survives_symlink_cycles(repo: Repository, tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"f")
    (d / "sub" / "up").symlink_to("..")
    ref = repo.intern(d)
    assert set(repo.listing(ref)) == {"sub/f"}


_names = st.text(alphabet="abcxyz._- 0", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
_trees = st.recursive(
    st.binary(max_size=64),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=4),
    max_leaves=12,
)


def _write_tree(root: Path, tree: dict[str, object]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, sub in tree.items():
        if isinstance(sub, bytes):
            (root / name).write_bytes(sub)
        else:
            _write_tree(root / name, sub)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(tree=st.dictionaries(_names, _trees, max_size=5))
def test_dir_round_trip_property(tmp_path_factory: pytest.TempPathFactory,
                                 tree: dict[str, object]) -> None:
    d = tmp_path_factory.mktemp("tree")
    repo = Repository(d / "repo")
    _write_tree(d / "src", tree)
    ref = repo.put_dir(d / "src")
    repo.materialize(ref, d / "copy")
    assert _tree(d / "copy") == _tree(d / "src")
    assert repo.put_dir(d / "copy") == ref  # the listing is canonical: same tree, same digest
    moved = repo.put_dir(d / "copy", move=True)  # a step's output: hard linked, same digest
    assert moved == ref and repo.has(ref)
