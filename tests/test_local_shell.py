"""Steps run by resident shells (cgroup mode): each step is a subshell of a long-lived
`/bin/sh`, so nothing one step does may reach the shell, the next step, or the controller."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.localmem import MemoryGroups
from reflowes.engine.repository import Repository
from reflowes.events.model import Event, ExecCreated, ExecExited, ExecLost


@pytest.fixture
def ex(tmp_path: Path):  # type: ignore[no-untyped-def]
    probe = MemoryGroups.open()
    if probe is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    probe.close()
    e = LocalExecutor(Repository(tmp_path / "repo"), tmp_path / "execs", memory="cgroup")
    yield e
    e.close()


def run(ex: LocalExecutor, exec_id: str, template: str, **kw: object) -> Event:
    """Put one step and wait for its outcome."""
    made = ex.put(ExecSpec(exec_id=exec_id, task_id="t-" + exec_id, alloc_id="a",
                           template=template, outputs={"o": "file"}, **kw))  # type: ignore[arg-type]
    assert [type(e) for e in made] == [ExecCreated]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for ev in ex.poll(1.0):
            if getattr(ev, "exec_id", None) == exec_id:
                return ev
    raise AssertionError(f"{exec_id} did not finish")


def text(ex: LocalExecutor, ev: Event) -> str:
    assert isinstance(ev, ExecExited) and ev.exit_code == 0, ev
    return ex.repo.read_bytes(ev.result["o"]).decode()


def test_steps_share_a_shell_but_no_state(ex: LocalExecutor) -> None:
    first = run(ex, "s1", "export LEAK=1; SHVAR=2; cd /; umask 077; trap 'echo t' EXIT; "
                          "set -e; alias ll=ls; f() {{ :; }}; echo > {o}")
    second = run(ex, "s2", 'echo "${{LEAK-unset}} ${{SHVAR-unset}} $(umask) '
                           '$(command -v f || echo nof) $(alias ll 2>/dev/null || echo noalias) '
                           '$(pwd)" > {o}; false; echo after >> {o}')
    assert text(ex, first) == "\n"
    mask = os.umask(0o22)
    os.umask(mask)
    assert text(ex, second).split() == ["unset", "unset", f"{mask:04o}", "nof", "noalias",
                                        f"{ex.workdir}/s2", "after"]
    assert len(ex._shells.by_fd) == 1  # one slot used at a time: one shell served both


def test_stdin_is_empty_not_the_shells_commands(ex: LocalExecutor) -> None:
    assert text(ex, run(ex, "in", "cat > {o}; wc -c < /dev/stdin >> {o}")).split() == ["0"]
    assert text(ex, run(ex, "next", "echo still > {o}")) == "still\n"


def test_a_syntax_error_fails_the_step_only(ex: LocalExecutor) -> None:
    bad = run(ex, "bad", 'echo "unclosed > {o}')
    assert isinstance(bad, ExecExited) and bad.exit_code == 2
    assert "unterminated" in bad.stderr_tail or "Syntax" in bad.stderr_tail, bad.stderr_tail
    closing = run(ex, "paren", "echo ) ; echo > {o}")
    assert isinstance(closing, ExecExited) and closing.exit_code == 2
    assert text(ex, run(ex, "good", "echo fine > {o}")) == "fine\n"


def test_exit_codes_exec_and_signals(ex: LocalExecutor) -> None:
    code = run(ex, "exit3", "exit 3")
    assert isinstance(code, ExecExited) and code.exit_code == 3
    assert text(ex, run(ex, "exec", "exec sh -c 'echo replaced > \"$1\"' sh {o}")) == "replaced\n"
    sig = run(ex, "term", "sh -c 'kill -TERM $$'")
    assert isinstance(sig, ExecExited) and sig.exit_code == 143


def test_a_step_that_kills_its_shell_is_lost_and_the_next_runs(ex: LocalExecutor) -> None:
    lost = run(ex, "killer", "kill -9 $$")
    assert isinstance(lost, ExecLost) and "died" in lost.reason
    assert text(ex, run(ex, "after", "echo ok > {o}")) == "ok\n"
    assert len(ex._shells.by_fd) == 1


def test_a_shell_dying_while_idle_is_replaced(ex: LocalExecutor) -> None:
    assert text(ex, run(ex, "one", "echo 1 > {o}")) == "1\n"
    (sh,) = ex._shells.by_fd.values()
    os.kill(sh.pid, 9)
    time.sleep(0.1)
    assert text(ex, run(ex, "two", "echo 2 > {o}")) == "2\n"
    assert sh.pid not in [s.pid for s in ex._shells.by_fd.values()]


def test_kill_stops_the_step_and_its_shell(ex: LocalExecutor) -> None:
    ex.put(ExecSpec(exec_id="long", task_id="t", alloc_id="a", template="sleep 300"))
    time.sleep(0.2)
    ex.kill("long")
    deadline = time.monotonic() + 5
    while ex.running() and time.monotonic() < deadline:
        assert ex.poll(0.5) == []
    assert ex.running() == 0
    assert text(ex, run(ex, "then", "echo ok > {o}")) == "ok\n"


def test_an_env_name_no_shell_can_export_runs_the_step_as_sh_c(ex: LocalExecutor) -> None:
    done = run(ex, "oddenv", "tr '\\0' '\\n' < /proc/$$/environ | grep '^A-B=' > {o}",
               env={"A-B": "x y"})  # the shell exec'd with it (dash then hides such names)
    assert text(ex, done) == "A-B=x y\n"
    assert not ex._shells.by_fd  # no resident shell was used
