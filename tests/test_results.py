"""A batch's results dir: runs' results linked by the linker process (whole, renamed into
place), dir results written in the controller, failures raised at close naming the run, and
the dirs of done runs that are missing written again. Real files, a real linker process."""

from __future__ import annotations

from pathlib import Path

import pytest
from reflowes.engine.repository import Repository
from reflowes.engine.results import Results, ResultsNotLinked
from reflowes.events.model import FileRef


def _ref(repo: Repository, tmp_path: Path, text: str) -> FileRef:
    src = tmp_path / f"src-{text}"
    src.write_text(text)
    return repo.put_file(src)


def test_the_linker_links_whole_dirs_and_replaces_an_earlier_one(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    res = Results(repo, str(out))
    a, b = _ref(repo, tmp_path, "a"), _ref(repo, tmp_path, "b")
    res.submit("r1", {"x": a, "y": b})
    res.submit("r2", {"x": b})
    res.close()
    assert sorted(p.name for p in out.iterdir()) == ["r1", "r2"]  # nothing partial left
    assert (out / "r1/x").read_text() == "a" and (out / "r1/y").read_text() == "b"
    assert (out / "r1/x").stat().st_ino == repo.path(a).stat().st_ino  # a link, not a copy
    (out / "r1/stale").write_text("from an earlier try")
    res.submit("r1", {"x": b})
    res.close()
    assert sorted(p.name for p in (out / "r1").iterdir()) == ["x"]
    assert (out / "r1/x").read_text() == "b"


def test_a_dir_result_is_written_at_once(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_text("leaf")
    ref = repo.put_dir(src)
    res = Results(repo, str(tmp_path / "results"))
    res.submit("r", {"d": ref})
    assert (tmp_path / "results/r/d/sub/f").read_text() == "leaf"  # before close
    res.close()


def test_a_failure_to_link_is_raised_at_close_naming_the_run(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    res = Results(repo, str(tmp_path / "results"))
    good = _ref(repo, tmp_path, "a")
    res.submit("r9", {"x": FileRef("ab" * 32, 3)})  # no such object
    res.submit("r8", {"x": good})
    with pytest.raises(ResultsNotLinked, match=r"results/r9: cannot link the run's results"):
        res.close()
    assert (tmp_path / "results/r8/x").read_text() == "a"  # the others are linked
    res.close()  # reported once


def test_repair_writes_only_missing_dirs_and_drops_partial_ones(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    out = tmp_path / "results"
    (out / "done").mkdir(parents=True)
    (out / ".half.partial").mkdir()  # as a linker killed mid-run leaves it
    res = Results(repo, str(out))
    a = _ref(repo, tmp_path, "a")
    assert res.repair([("done", {"x": a}), ("lost", {"x": a}), ("empty", {})]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["done", "lost"]
    assert list((out / "done").iterdir()) == []  # present: left as it is
    assert (out / "lost/x").read_text() == "a"
    assert Results(repo, str(tmp_path / "none")).repair([("r", {})]) == 0  # no results/ yet
