"""A batch's results dir: runs' results linked in (replacing files of the same names), and the
dirs of done runs that are missing written again. Real files."""

from __future__ import annotations

from pathlib import Path

from reflowes.engine.repository import Repository
from reflowes.engine.results import Results
from reflowes.events.model import FileRef


def _ref(repo: Repository, tmp_path: Path, text: str) -> FileRef:
    src = tmp_path / f"src-{text}"
    src.write_text(text)
    return repo.put_file(src)


def test_results_are_linked_and_replace_files_of_the_same_names(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    res = Results(repo, str(out))
    a, b = _ref(repo, tmp_path, "a"), _ref(repo, tmp_path, "b")
    res.write("r1", {"x": a, "y": b})
    assert sorted(p.name for p in out.iterdir()) == ["r1"]
    assert (out / "r1/x").read_text() == "a" and (out / "r1/y").read_text() == "b"
    res.write("r1", {"x": b})
    assert (out / "r1/x").read_text() == "b"


def test_repair_writes_only_the_missing_dirs(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    (out / "done").mkdir(parents=True)
    res = Results(repo, str(out))
    a = _ref(repo, tmp_path, "a")
    assert res.repair([("done", {"x": a}), ("lost", {"x": a}), ("empty", {})]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["done", "lost"]
    assert list((out / "done").iterdir()) == []  # present: left as it is
    assert (out / "lost/x").read_text() == "a"
    assert Results(repo, str(tmp_path / "none")).repair([("r", {})]) == 0  # no results/ yet
