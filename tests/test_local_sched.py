"""The local executor's spawner runs with the kernel's shortest slice (so a new step and the
spawner waiting on its exec are scheduled at once); steps themselves run with the default one,
and closing the executor gives the controller its default back. Real processes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.localproc import SPAWN_SLICE_NS, short_slice
from reflowes.engine.repository import Repository


def _slice(pid: str = "thread-self") -> int:
    text = Path(f"/proc/{pid}/sched").read_text()
    m = re.search(r"^se\.slice\s*:\s*(\d+)", text, re.MULTILINE)
    assert m is not None
    return int(m.group(1))


@pytest.fixture
def default() -> int:
    if not Path("/proc/thread-self/sched").exists() or "se.slice" not in Path(
            "/proc/thread-self/sched").read_text():
        pytest.skip("no scheduler debug info (/proc/*/sched) on this kernel")
    if not short_slice(False):
        pytest.skip("sched_setattr slices are not supported here")
    return _slice()


def test_the_spawner_is_short_sliced_and_steps_are_not(tmp_path: Path, default: int) -> None:
    ex = LocalExecutor(Repository(tmp_path / "repo"), tmp_path / "execs")
    try:
        assert _slice() == SPAWN_SLICE_NS
        ex.put(ExecSpec(exec_id="e1", task_id="t1", alloc_id="a1",
                        # the shell's own slice (builtins only), read once the spawner
                        # has surely reset it
                        template="sleep 0.3; while read -r k rest; do case $k in se.slice) "
                                 "echo \"$rest\";; esac; done < /proc/$$/sched > {out}",
                        outputs={"out": "file"}))
        got = []
        deadline = time.monotonic() + 30
        while ex.running() and time.monotonic() < deadline:
            got += ex.poll(1.0)
        (ev,) = got
        assert ev.error is None, ev
        line = ex.repo.read_bytes(ev.result["out"]).decode()
        assert int(line.split(":")[1]) == default
    finally:
        ex.close()
    assert _slice() == default
