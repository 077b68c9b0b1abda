"""The results writer: whole dirs renamed into place, replaced when there, failures named at
close (not lost on the worker thread). Real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from reflowes.engine.repository import Repository
from reflowes.engine.results import ResultsWriter, ResultsWriteError
from reflowes.events.model import FileRef


def _ref(repo: Repository, tmp_path: Path, text: str) -> FileRef:
    src = tmp_path / f"src-{text}"
    src.write_text(text)
    return repo.put_file(src)


def test_results_are_linked_whole_and_replace_an_earlier_dir(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    w = ResultsWriter(repo, str(out))
    a, b = _ref(repo, tmp_path, "a"), _ref(repo, tmp_path, "b")
    w.submit("r1", {"x": a, "y": b})
    w.close()
    assert sorted(p.name for p in out.iterdir()) == ["r1"]
    assert (out / "r1/x").read_text() == "a" and (out / "r1/y").read_text() == "b"
    (out / "r1/stale").write_text("from an earlier try")
    w.submit("r1", {"x": b})
    w.close()
    assert sorted(p.name for p in (out / "r1").iterdir()) == ["x"]
    assert (out / "r1/x").read_text() == "b"


def test_repair_writes_only_missing_dirs_and_drops_partial_ones(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    (out / "done").mkdir(parents=True)
    (out / ".half.partial").mkdir()
    w = ResultsWriter(repo, str(out))
    a = _ref(repo, tmp_path, "a")
    assert w.repair([("done", {"x": a}), ("lost", {"x": a}), ("empty", {})]) == 1
    w.close()
    assert sorted(p.name for p in out.iterdir()) == ["done", "lost"]
    assert list((out / "done").iterdir()) == []  # present: left as it is
    assert (out / "lost/x").read_text() == "a"


def test_a_failure_to_link_is_raised_at_close_naming_the_run(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    w = ResultsWriter(repo, str(tmp_path / "results"))
    w.submit("r9", {"x": FileRef("ab" * 32, 3)})  # no such object
    with pytest.raises(ResultsWriteError, match="r9: cannot link the run's results"):
        w.close()
    w.close()  # reported once
