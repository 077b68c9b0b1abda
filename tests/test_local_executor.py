"""The local executor and pool with real processes: outputs, staging, quoting, errors, OOM,
idempotence, recovery, and no step process outliving a SIGKILLed controller."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import MARKER, LocalExecutor, LocalPool
from reflowes.engine.localmem import MemoryGroups
from reflowes.engine.repository import Repository
from reflowes.events.model import (
    AllocDied, AllocGranted, Event, ExecCreated, ExecExited, ExecLost, FileRef,
)
from reflowes.events.resources import GiB, MiB, Resources


def cgroup_or_skip() -> None:
    probe = MemoryGroups.open()
    if probe is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    probe.close()


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo")


@pytest.fixture(params=["cgroup", "rlimit"])
def ex(repo: Repository, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Both ways of running a step: a resident shell's subshell in a memory cgroup, or a
    `sh -c` exec'd under RLIMIT_AS."""
    if request.param == "cgroup":
        cgroup_or_skip()
    e = LocalExecutor(repo, tmp_path / "execs", memory=request.param)
    yield e
    e.close()


def spec(exec_id: str, template: str, **kw: object) -> ExecSpec:
    return ExecSpec(exec_id=exec_id, task_id="t-" + exec_id, alloc_id="a1", template=template,
                    **kw)  # type: ignore[arg-type]


def run_all(ex: LocalExecutor, timeout: float = 30) -> dict[str, Event]:
    out: dict[str, Event] = {}
    deadline = time.monotonic() + timeout
    while ex.running() and time.monotonic() < deadline:
        for ev in ex.poll(1.0):
            out[ev.exec_id] = ev  # type: ignore[union-attr]
    assert not ex.running(), "execs did not finish in time"
    return out


def marked_pids(exec_ids: set[str]) -> list[int]:
    """Live processes whose environment carries the marker of one of `exec_ids`."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            env = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(f"{MARKER}={e}".encode() in env for e in exec_ids):
            found.append(int(p))
    return found


def gone(exec_ids: set[str], timeout: float = 5.0) -> bool:
    """True once no process of `exec_ids` is alive (SIGKILL lands asynchronously)."""
    deadline = time.monotonic() + timeout
    while marked_pids(exec_ids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_step_output_is_hashed_with_the_right_content(ex: LocalExecutor, repo: Repository) -> None:
    evs = ex.put(spec("e1", "printf 'hello %s' {who} > {out}", scalars={"who": "world"},
                      outputs={"out": "file"}))
    (created,) = evs  # made and started at once: one event, no ExecStarted
    assert isinstance(created, ExecCreated) and created.started
    assert created.executor == "local" and int(created.handle) > 0
    assert created.config["workdir"].endswith("/e1") and "printf" in created.config["cmd"]
    done = run_all(ex)["e1"]
    assert isinstance(done, ExecExited) and done.exit_code == 0 and done.error is None
    ref = done.result["out"]
    assert ref == FileRef(hashlib.sha256(b"hello world").hexdigest(), 11)
    assert repo.read_bytes(ref) == b"hello world"
    assert done.duration > 0


def test_inputs_staged_read_only_files_and_dirs(
    ex: LocalExecutor, repo: Repository, tmp_path: Path
) -> None:
    f = repo.put_bytes(b"line1\nline2\n")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_bytes(b"x")
    dref = repo.put_dir(d)
    ex.put(spec("e2", "wc -l < {src} > {out}; cat {dd}/sub/x >> {out}; "
                      "test -w {src} && echo writable >&2; stat -c %a {src} >&2",
                inputs={"src": f, "dd": dref}, outputs={"out": "file"}))
    done = run_all(ex)["e2"]
    assert isinstance(done, ExecExited) and done.exit_code == 0, done
    assert repo.read_bytes(done.result["out"]) == b"2\nx"
    staged = Path(ex.workdir) / "e2" / "in" / "src"
    assert not staged.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert staged.stat().st_ino == repo.path(f).stat().st_ino  # hard linked, not copied
    assert (Path(ex.workdir) / "e2" / "stderr").read_text().splitlines()[-1] == "444"


def test_scalars_are_just_values(ex: LocalExecutor, repo: Repository, tmp_path: Path) -> None:
    victim = tmp_path / "x"
    victim.mkdir()
    nasty = "a b;rm -rf x $(touch pwned) `id` 'q' \"dq\" *"
    ex.put(spec("e3", "cd {where} && printf %s {v} > {out}",
                scalars={"v": nasty, "where": str(tmp_path)}, outputs={"out": "file"}))
    done = run_all(ex)["e3"]
    assert isinstance(done, ExecExited) and done.exit_code == 0, done
    assert repo.read_bytes(done.result["out"]).decode() == nasty
    assert victim.is_dir() and not (tmp_path / "pwned").exists()


def test_env_is_minimal_and_private(ex: LocalExecutor, repo: Repository,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLOWES_TEST_SECRET", "leak")
    ex.put(spec("e4", 'echo "${{REFLOWES_TEST_SECRET-unset}} $HOME $TMPDIR $MINE $(pwd)" > {out}',
                env={"MINE": "mine"}, outputs={"out": "file"}))
    done = run_all(ex)["e4"]
    assert isinstance(done, ExecExited)
    d = f"{ex.workdir}/e4"
    assert repo.read_bytes(done.result["out"]).decode().split() == [
        "unset", d, d, "mine", d]


def test_nonzero_exit_carries_stderr_tail(ex: LocalExecutor) -> None:
    ex.put(spec("e5", "for i in $(seq 1 50); do echo line$i >&2; done; exit 3",
                outputs={"out": "file"}))
    done = run_all(ex)["e5"]
    assert isinstance(done, ExecExited)
    assert done.exit_code == 3 and not done.oom and done.result == {}
    assert done.stderr_tail.splitlines() == [f"line{i}" for i in range(31, 51)]
    assert done.error is None  # the exit code and the tail say it all


def test_missing_declared_output(ex: LocalExecutor) -> None:
    ex.put(spec("e6", "echo made > {a}", outputs={"a": "file", "b": "file"}))
    ex.put(spec("e6d", "rmdir {d}", outputs={"d": "dir"}))
    done = run_all(ex)
    for eid, name in (("e6", "b"), ("e6d", "d")):
        ev = done[eid]
        assert isinstance(ev, ExecExited) and ev.exit_code == 0 and ev.result == {}
        assert ev.error == f"step produced no declared output {name!r}"


def test_dir_output(ex: LocalExecutor, repo: Repository) -> None:
    ex.put(spec("e7", "mkdir {d}/s && echo 1 > {d}/s/one && echo 2 > {d}/two",
                outputs={"d": "dir"}))
    done = run_all(ex)["e7"]
    assert isinstance(done, ExecExited) and done.exit_code == 0, done
    ref = done.result["d"]
    assert ref.kind == "dir" and set(repo.listing(ref)) == {"s/one", "two"}


@pytest.mark.parametrize("memory", ["cgroup", "rlimit"])
def test_memory_hog_is_oom(repo: Repository, tmp_path: Path, memory: str) -> None:
    if memory == "cgroup":
        cgroup_or_skip()
    ex = LocalExecutor(repo, tmp_path / "execs", memory=memory)
    try:
        ex.put(spec("e8", f"{sys.executable} -c 'bytearray(400 << 20)'",
                    resources=Resources(1, 100 * MiB)))
        ex.put(spec("e8ok", f"{sys.executable} -c 'bytearray(80 << 20)'",
                    resources=Resources(1, 300 * MiB)))
        done = run_all(ex)
    finally:
        ex.close()
    hog = done["e8"]
    assert isinstance(hog, ExecExited) and hog.oom and hog.exit_code != 0, hog
    assert "out of memory" in (hog.error or "")
    assert hog.peak_mem >= 90 * MiB
    ok = done["e8ok"]
    assert isinstance(ok, ExecExited) and ok.exit_code == 0 and not ok.oom, ok
    if memory == "cgroup":  # the exact peak of the step alone, not the controller's
        assert hog.exit_code == 137
        assert 80 * MiB <= ok.peak_mem < 200 * MiB, ok.peak_mem


def test_put_is_idempotent_by_exec_id(ex: LocalExecutor) -> None:
    first = ex.put(spec("e9", "sleep 0.2; echo x > {o}", outputs={"o": "file"}))
    assert len(first) == 1
    assert ex.put(spec("e9", "echo other > {o}", outputs={"o": "file"})) == []
    done = run_all(ex)
    assert list(done) == ["e9"]
    assert ex.put(spec("e9", "echo other > {o}", outputs={"o": "file"})) == []
    assert ex.poll(0) == [] and ex.running() == 0


def test_staging_failure_is_an_outcome(ex: LocalExecutor) -> None:
    evs = ex.put(spec("e10", "cat {x}", inputs={"x": FileRef("ab" * 32, 3)}))
    assert [type(e) for e in evs] == [ExecCreated]
    done = run_all(ex)["e10"]
    assert isinstance(done, ExecExited) and done.exit_code == -1
    assert "missing" in (done.error or "")


def test_kill_reports_nothing_and_leaves_nothing(ex: LocalExecutor) -> None:
    ex.put(spec("e11", "sleep 300 | cat"))
    time.sleep(0.2)
    assert marked_pids({"e11"})
    ex.kill("e11")
    assert run_all(ex) == {}
    assert gone({"e11"})


def test_background_leftovers_die_with_the_step(ex: LocalExecutor) -> None:
    ex.put(spec("e12", "sleep 300 & echo ok > {o}", outputs={"o": "file"}))
    done = run_all(ex)["e12"]
    assert isinstance(done, ExecExited) and done.exit_code == 0
    assert gone({"e12"})


def test_a_step_gets_the_default_sigpipe_not_pythons_ignore(ex: LocalExecutor) -> None:
    """Python ignores SIGPIPE; a step must not inherit that: `yes | head` ends quietly (yes is
    killed by SIGPIPE) instead of `yes` reporting a broken pipe on stderr."""
    ex.put(spec("pipe", "yes 2> {e} | head -n 1 > {o}", outputs={"o": "file", "e": "file"}))
    done = run_all(ex)["pipe"]
    assert isinstance(done, ExecExited) and done.exit_code == 0, done
    assert ex.repo.read_bytes(done.result["o"]) == b"y\n"
    assert ex.repo.read_bytes(done.result["e"]) == b""


def test_recover_dead_and_live_pids(ex: LocalExecutor, repo: Repository, tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    lost = ex.recover("gone", "t", str(p.pid))
    assert [type(e) for e in lost] == [ExecLost]
    assert ex.recover("none", "t", None)[0].reason  # type: ignore[union-attr]
    # a process of an earlier controller, still running: killed, reported lost
    old = f"old-{os.getpid()}-{time.monotonic_ns()}"
    other = LocalExecutor(repo, tmp_path / "execs")
    try:
        created = other.put(spec(old, "sleep 300"))[0]
        assert isinstance(created, ExecCreated)
        while not marked_pids({old}):  # the environment shows once exec is complete
            time.sleep(0.01)
        events = ex.recover(old, "t-old", created.handle)
        assert isinstance(events[0], ExecLost) and "killed" in events[0].reason
        assert gone({old})
        run_all(other)  # `other` reaps what recover killed
    finally:
        other.close()
    # a pid that is alive but not ours is left alone
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        ex.recover("x", "t", str(bystander.pid))
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


_CONTROLLER = """
import sys, time
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.repository import Repository
ex = LocalExecutor(Repository(sys.argv[1]), sys.argv[2])
for i, cmd in enumerate(["sleep 300", "sleep 300 | cat", "(sleep 300 &) ; sleep 300"]):
    ex.put(ExecSpec(exec_id=f"c{i}", task_id="t", alloc_id="a", template=cmd))
print("started", flush=True)
while True:
    if sys.argv[3] == "poll":
        ex.poll(1.0)
    else:  # busy elsewhere (evaluating, writing the log): the guardian must know already
        time.sleep(1.0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["poll", "no poll"])
def test_sigkill_of_the_controller_leaves_no_step_alive(tmp_path: Path, loop: str) -> None:
    ctl = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CONTROLLER), str(tmp_path / "repo"),
         str(tmp_path / "execs"), loop], stdout=subprocess.PIPE, text=True,
    )
    assert ctl.stdout is not None and ctl.stdout.readline().strip() == "started"
    ids = {"c0", "c1", "c2"}
    time.sleep(0.3)
    assert len(marked_pids(ids)) >= 5
    ctl.send_signal(signal.SIGKILL)
    ctl.wait()
    deadline = time.monotonic() + 10
    while marked_pids(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_pids(ids) == []
    # a restarted controller finds the leftover dirs and starts the exec afresh
    repo = Repository(tmp_path / "repo")
    again = LocalExecutor(repo, tmp_path / "execs")
    try:
        (made,) = again.put(ExecSpec(exec_id="c0", task_id="t", alloc_id="a",
                                     template="echo fresh > {o}", outputs={"o": "file"}))
        assert isinstance(made, ExecCreated) and made.started
        done = run_all(again)["c0"]
        assert isinstance(done, ExecExited) and repo.read_bytes(done.result["o"]) == b"fresh\n"
    finally:
        again.close()


def test_close_kills_running_steps(repo: Repository, tmp_path: Path) -> None:
    e = LocalExecutor(repo, tmp_path / "execs")
    e.put(spec("k1", "sleep 300"))
    e.put(spec("k2", "sleep 300 | cat"))
    time.sleep(0.1)
    e.close()
    assert gone({"k1", "k2"})


# ---------------------------------------------------------------- the pool


def test_pool_capacity_is_the_machine(tmp_path: Path) -> None:
    pool = LocalPool(repo_root=tmp_path)
    cap = pool.capacity()
    assert cap.cpu == len(os.sched_getaffinity(0))
    assert 0 < cap.mem < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert cap.disk > 0


def test_pool_grants_min_release_restore() -> None:
    pool = LocalPool(Resources(2, 4 * GiB, 10 * GiB))
    pool.request("r1", Resources(1, 3 * GiB, GiB), Resources(1, GiB, GiB))
    (g1,) = pool.poll()
    assert g1 == AllocGranted(alloc_id="a1", request_id="r1", resources=Resources(1, 3 * GiB, GiB))
    # wants more than is free: granted what is left, since the minimum fits
    pool.request("r2", Resources(2, 2 * GiB, GiB), Resources(1, GiB, GiB))
    (g2,) = pool.poll()
    assert g2.resources == Resources(1, GiB, GiB)  # type: ignore[union-attr]
    # nothing left: waits; a repeated request is not granted twice
    pool.request("r3", Resources(1, GiB, GiB), Resources(1, GiB, GiB))
    pool.request("r3", Resources(1, GiB, GiB), Resources(1, GiB, GiB))
    assert pool.poll() == []
    pool.release("a1")
    pool.release("a1")
    assert pool.poll() == [AllocGranted(alloc_id="a3", request_id="r3",
                                        resources=Resources(1, GiB, GiB))]
    assert pool.free() == Resources(0, 2 * GiB, 8 * GiB)
    # after a restart: take back what the log lists; what does not fit has died
    fresh = LocalPool(Resources(2, 4 * GiB, 10 * GiB))
    died = fresh.restore({"a2": Resources(1, GiB, GiB), "a3": Resources(1, GiB, GiB),
                          "a9": Resources(1, GiB, GiB)})
    assert died == [AllocDied(alloc_id="a9", reason=died[0].reason)]  # type: ignore[union-attr]
    assert fresh.free() == Resources(0, 2 * GiB, 8 * GiB)


def test_outputs_never_touch_files_outside_the_exec(
    ex: LocalExecutor, repo: Repository, tmp_path: Path
) -> None:
    outside = tmp_path / "user.txt"
    outside.write_bytes(b"user data")
    outside.chmod(0o644)
    inp = repo.put_bytes(b"input")
    ex.put(spec("o1", "ln -s {src} {a}; ln {user} {b}", inputs={"src": inp},
                scalars={"user": str(outside)}, outputs={"a": "file", "b": "file"}))
    ex.put(spec("o2", "ln -s / {d}/root", outputs={"d": "dir"}))
    ex.put(spec("o3", "rmdir {d} && ln -s / {d}", outputs={"d": "dir"}))
    done = run_all(ex)
    o1 = done["o1"]
    assert isinstance(o1, ExecExited) and o1.error is None, o1
    assert o1.result["a"] == inp and repo.read_bytes(o1.result["b"]) == b"user data"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # not made read-only
    assert outside.stat().st_ino != repo.path(o1.result["b"]).stat().st_ino  # copied
    for eid in ("o2", "o3"):
        ev = done[eid]
        assert isinstance(ev, ExecExited) and "symlink" in (ev.error or ""), ev


def test_big_outputs_are_hashed_off_the_loop(ex: LocalExecutor, repo: Repository) -> None:
    ex.put(spec("big", "head -c 20000000 /dev/zero > {out}; mkdir {d}/s; echo x > {d}/s/f",
                outputs={"out": "file", "d": "dir"}))
    ex.put(spec("small", "sleep 0.3; echo small > {out}", outputs={"out": "file"}))
    ex.put(spec("dropped", "echo x > {d}/f", outputs={"d": "dir"}))
    ex.kill("dropped")
    done = run_all(ex)
    assert set(done) == {"big", "small"}
    big = done["big"]
    assert isinstance(big, ExecExited) and big.error is None, big
    assert big.result["out"] == FileRef(hashlib.sha256(bytes(20_000_000)).hexdigest(),
                                        20_000_000)
    assert set(repo.listing(big.result["d"])) == {"s/f"}
    assert ex.running() == 0


def test_a_command_too_long_to_exec_is_a_failed_outcome(repo: Repository,
                                                        tmp_path: Path) -> None:
    ex = LocalExecutor(repo, tmp_path / "execs", memory="rlimit")  # steps exec'd as `sh -c`
    try:
        evs = ex.put(spec("huge", "echo {v}", scalars={"v": "x" * (1 << 21)}))  # > MAX_ARG_STRLEN
        assert [type(e) for e in evs] == [ExecCreated]
        done = run_all(ex)["huge"]
        assert isinstance(done, ExecExited) and done.exit_code == -1
        assert "cannot start" in (done.error or "")
        assert ex.put(spec("after", "echo ok > {o}", outputs={"o": "file"}))  # still usable
        assert isinstance(run_all(ex)["after"], ExecExited)
    finally:
        ex.close()


def test_a_resident_shell_runs_a_command_beyond_the_exec_limit(repo: Repository,
                                                              tmp_path: Path) -> None:
    cgroup_or_skip()
    ex = LocalExecutor(repo, tmp_path / "execs", memory="cgroup")  # steps run by a shell's fork
    try:
        ex.put(spec("huge", "printf %s {v} | wc -c > {o}", scalars={"v": "x" * (1 << 21)},
                    outputs={"o": "file"}))
        done = run_all(ex)["huge"]
        assert isinstance(done, ExecExited) and done.exit_code == 0, done
        assert repo.path(done.result["o"]).read_text().strip() == str(1 << 21)
    finally:
        ex.close()


def test_pool_memory_is_capped_by_the_cgroup_limit(tmp_path: Path) -> None:
    from reflowes.engine.localmem import own_memory_cgroup

    own = own_memory_cgroup()
    if own is None or not os.access(own, os.W_OK):
        pytest.skip("no writable cgroup v1 memory controller here")
    group = Path(own) / f"reflowes-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(3 * GiB))
        code = ("import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()));"
                "from reflowes.engine.localpool import LocalPool;"
                "print(LocalPool(repo_root=sys.argv[2]).capacity().mem)")
        out = subprocess.run([sys.executable, "-c", code, str(group), str(tmp_path)],
                             capture_output=True, text=True, check=True).stdout
        assert int(out) == int(3 * GiB * 0.95)
    finally:
        group.rmdir()


def test_memory_groups_are_reused_and_relimited(tmp_path: Path) -> None:
    groups = MemoryGroups.open()
    if groups is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    try:
        g = groups.acquire(100 * MiB)
        assert Path(g.path, "memory.limit_in_bytes").read_text().strip() == str(100 * MiB)
        proc = subprocess.run(["/bin/sh", "-c", groups.prologue(g) + f"{sys.executable} -c "
                               "'bytearray(60 << 20)'"], check=True)
        assert proc.returncode == 0
        peak, oom = MemoryGroups.read(g)
        assert 60 * MiB <= peak <= 100 * MiB and not oom
        groups.release(g)
        again = groups.acquire(300 * MiB)
        assert again is g  # the same group, a new limit, a fresh peak
        assert Path(g.path, "memory.limit_in_bytes").read_text().strip() == str(300 * MiB)
        assert MemoryGroups.read(g)[0] < 60 * MiB
        groups.release(again)
    finally:
        groups.close()
    assert not Path(groups.base).exists()
