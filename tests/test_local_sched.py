"""Steps get the scheduler's defaults: the controller's slice, every CPU it may use, for them
and their children; spawning them changes nothing of the controller's own. (Pinning the
spawner around each spawn and a short slice for it were tried and made 10,000 steps 1.3-1.6x
slower: benchmarks/README.md.) Real processes."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.repository import Repository
from reflowes.events.model import ExecExited


def _slice(pid: str = "thread-self") -> int:
    text = Path(f"/proc/{pid}/sched").read_text()
    m = re.search(r"^se\.slice\s*:\s*(\d+)", text, re.MULTILINE)
    assert m is not None
    return int(m.group(1))


def _exits(ex: LocalExecutor, timeout: float = 60) -> list[ExecExited]:
    """The outcomes of every exec put, once all have ended."""
    got = []
    deadline = time.monotonic() + timeout
    while ex.running() and time.monotonic() < deadline:
        got += ex.poll(1.0)
    return [e for e in got if isinstance(e, ExecExited)]


@pytest.fixture
def default() -> int:
    if not Path("/proc/thread-self/sched").exists() or "se.slice" not in Path(
            "/proc/thread-self/sched").read_text():
        pytest.skip("no scheduler debug info (/proc/*/sched) on this kernel")
    return _slice()


def test_a_step_gets_the_controllers_slice_and_the_controller_keeps_it(
        tmp_path: Path, default: int) -> None:
    ex = LocalExecutor(Repository(tmp_path / "repo"), tmp_path / "execs")
    try:
        assert _slice() == default
        ex.put(ExecSpec(exec_id="e1", task_id="t1", alloc_id="a1",
                        # the shell's own slice, read with builtins only
                        template="while read -r k rest; do case $k in se.slice) "
                                 "echo \"$rest\";; esac; done < /proc/$$/sched > {out}",
                        outputs={"out": "file"}))
        assert _slice() == default
        (ev,) = _exits(ex)
        assert ev.error is None, ev
        line = ex.repo.read_bytes(ev.result["out"]).decode()
        assert int(line.split(":")[1]) == default
    finally:
        ex.close()
    assert _slice() == default


def test_steps_and_their_children_may_use_every_cpu(tmp_path: Path) -> None:
    """Neither a step nor anything it starts is pinned, and the controller keeps its CPUs."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing is pinned")
    ex = LocalExecutor(Repository(tmp_path / "repo"), tmp_path / "execs")
    try:
        for i in range(20):  # a race lost would show now and then: give it chances
            ex.put(ExecSpec(exec_id=f"c{i}", task_id=f"t{i}", alloc_id="a1",
                            template="grep Cpus_allowed_list /proc/$$/status > {out}; "
                                     "sh -c 'grep Cpus_allowed_list /proc/$$/status' >> {out}",
                            outputs={"out": "file"}))
        exits = _exits(ex)
        assert len(exits) == 20 and all(e.error is None for e in exits)
        assert os.sched_getaffinity(0) == cpus
        for e in exits:
            lines = ex.repo.read_bytes(e.result["out"]).decode().splitlines()
            assert len(lines) == 2
            for line in lines:
                assert _cpu_list(line.split(":")[1].strip()) == cpus, line
    finally:
        ex.close()


def _cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
