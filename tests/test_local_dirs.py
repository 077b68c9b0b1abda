"""The local executor's private dirs: the dir of a step that succeeded silently is reused by the
next step (a rename instead of two mkdirs); every step still starts in a clean dir, and a step
that printed, failed or left files keeps its dir. Real processes, a real repository."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.repository import Repository
from reflowes.events.model import Event, ExecExited


@pytest.fixture
def ex(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LocalExecutor(Repository(tmp_path / "repo"), tmp_path / "execs")
    yield e
    e.close()


def one(ex: LocalExecutor, exec_id: str, template: str, **kw: object) -> ExecExited:
    """Run one step to its end and return its outcome."""
    ex.put(ExecSpec(exec_id=exec_id, task_id="t-" + exec_id, alloc_id="a1", template=template,
                    **kw))  # type: ignore[arg-type]
    got: list[Event] = []
    deadline = time.monotonic() + 30
    while ex.running() and time.monotonic() < deadline:
        got += ex.poll(1.0)
    (ev,) = got
    assert isinstance(ev, ExecExited)
    return ev


def test_a_silent_step_leaves_its_dir_to_the_next(ex: LocalExecutor, tmp_path: Path) -> None:
    execs = tmp_path / "execs"
    first = one(ex, "e1", "echo one > {out}", outputs={"out": "file"})
    assert first.exit_code == 0 and first.error is None
    assert (execs / "e1").is_dir()  # kept as a spare until a step needs a dir
    # The next step sees only its own (empty) logs and an empty out/ beside its output.
    second = one(ex, "e2", "ls -A . out > {listing}; cat stdout stderr >> {listing}",
                 outputs={"listing": "file"})
    assert second.error is None
    assert not (execs / "e1").exists()
    assert ex.repo.read_bytes(second.result["listing"]).decode().split() == [
        ".:", "out", "stderr", "stdout", "out:", "listing"]
    # ...and the output of the first is intact in the repository.
    assert ex.repo.read_bytes(first.result["out"]) == b"one\n"


@pytest.mark.parametrize("template", [
    "echo hello; echo x > {out}",          # printed something: its logs are kept
    "echo x > {out}; echo oops >&2",
    "echo x > {out}; touch junk",           # left a file in its dir
    "echo x > {out}; touch out/extra",      # left an undeclared output
    "echo x > {out}; exit 3",               # failed
])
def test_a_step_with_something_to_keep_keeps_its_dir(ex: LocalExecutor, tmp_path: Path,
                                                     template: str) -> None:
    one(ex, "k1", template, outputs={"out": "file"})
    after = one(ex, "k2", "ls -A . > {listing}", outputs={"listing": "file"})
    assert (tmp_path / "execs" / "k1").is_dir()
    assert after.error is None
    assert ex.repo.read_bytes(after.result["listing"]).decode().split() == [
        "out", "stderr", "stdout"]


def test_a_reused_dir_serves_steps_without_outputs_and_with_inputs(ex: LocalExecutor,
                                                                   tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("payload\n")
    ref = ex.repo.put_file(src)
    one(ex, "s1", "echo x > {out}", outputs={"out": "file"})
    quiet = one(ex, "s2", "test ! -e out && test ! -e in")  # no outputs, no inputs: no dirs
    assert quiet.exit_code == 0 and quiet.error is None
    one(ex, "s3", "echo x > {out}", outputs={"out": "file"})
    staged = one(ex, "s4", "cat {src} > {out}", inputs={"src": ref}, outputs={"out": "file"})
    assert staged.error is None and ex.repo.read_bytes(staged.result["out"]) == b"payload\n"


def test_logs_of_a_step_whose_dir_was_reused(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "p.py").write_text(
        "import os\n"
        "import reflowes as rf\n"
        "def main(i: int):\n"  # every cpu: one step at a time, so the later ones reuse dirs
        "    return {'o': rf.exec('echo {i} > {out}', inputs={'i': i}, outputs={'out': rf.FILE},\n"
        "                         cpu=len(os.sched_getaffinity(0)), name='quiet')['out']}\n")
    (tmp_path / "b.csv").write_text("id,i\nr1,1\nr2,2\nr3,3\n")
    env = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reflowes.cli.main", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, check=False)

    assert cli("run", "b.csv", "-p", "p.py", "-q").returncode == 0
    assert (tmp_path / "b.reflowes" / "results" / "r1" / "o").read_text() == "1\n"
    # One step at a time: the dirs of the first two were reused.
    outs = [cli("logs", "b.csv", run, "quiet") for run in ("r1", "r2", "r3")]
    assert all(r.returncode == 0 and "no stdout kept" not in r.stdout for r in outs)
    for r in outs[:2]:
        assert "(empty: the step printed nothing to stdout)" in r.stdout
        assert "(empty: the step printed nothing to stderr)" in r.stdout


def test_a_dir_left_by_an_earlier_controller_is_replaced_even_with_a_spare(
        ex: LocalExecutor, tmp_path: Path) -> None:
    one(ex, "p1", "echo x > {out}", outputs={"out": "file"})  # leaves a spare
    left = tmp_path / "execs" / "p2"
    left.mkdir()
    (left / "junk").write_text("from an earlier controller\n")
    after = one(ex, "p2", "ls -A . > {listing}", outputs={"listing": "file"})
    assert after.error is None
    assert ex.repo.read_bytes(after.result["listing"]).decode().split() == [
        "out", "stderr", "stdout"]
