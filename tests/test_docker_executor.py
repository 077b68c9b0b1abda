"""DockerExecutor against the real engine: outputs, inputs, quoting, exits, OOM, idempotence,
recovery, missing images and an absent engine."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reflowes.engine.docker import DockerExecutor
from reflowes.engine.dockerpool import LABEL_BATCH, LABEL_EXEC, batch_containers, connect
from reflowes.engine.errors import InfraError
from reflowes.engine.executor import ExecSpec
from reflowes.engine.repository import Repository
from reflowes.events.model import Event, ExecCreated, ExecExited, ExecLost, ExecStarted
from reflowes.events.resources import MiB, Resources

pytestmark = pytest.mark.docker
IMAGE = "local/busybox:1"


@pytest.fixture
def batch(docker_engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh batch id; every container labelled with it is removed afterwards."""
    b = "test" + uuid.uuid4().hex[:12]
    yield b
    for c in batch_containers(docker_engine, b):
        try:
            c.remove(force=True)
        except docker.errors.APIError:  # removed (or being removed) meanwhile by a harvest
            pass


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo")


@pytest.fixture
def ex(docker_engine, repo: Repository, tmp_path: Path, batch: str) -> Iterator[DockerExecutor]:  # type: ignore[no-untyped-def]
    e = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    yield e
    e.close()


def spec(template: str, exec_id: str | None = None, **kw: object) -> ExecSpec:
    kw.setdefault("image", IMAGE)
    kw.setdefault("resources", Resources(1, 256 * MiB))
    kw.setdefault("alloc_id", "a1")
    eid = exec_id or "e" + uuid.uuid4().hex[:16]
    return ExecSpec(exec_id=eid, task_id="t-" + eid, template=template,
                    **kw)  # type: ignore[arg-type]


def outcome(ex: DockerExecutor, exec_id: str, timeout: float = 60,
            seen: list[Event] | None = None) -> Event:
    """Poll until the exec's outcome (ExecExited/ExecLost) arrives; `seen` gets every event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in ex.poll(1.0):
            if seen is not None:
                seen.append(ev)
            if ev.exec_id == exec_id and not isinstance(ev, ExecStarted):  # type: ignore[union-attr]
                return ev
    raise AssertionError(f"no outcome for {exec_id} in {timeout}s")


def run(ex: DockerExecutor, s: ExecSpec) -> ExecExited:
    """put, then poll: ExecCreated, then ExecStarted, then ExecExited."""
    facts = ex.put(s)
    assert [type(f) for f in facts] == [ExecCreated]
    seen: list[Event] = []
    ev = outcome(ex, s.exec_id, seen=seen)
    assert [type(e) for e in seen] == [ExecStarted, ExecExited], seen
    assert isinstance(ev, ExecExited), ev
    return ev


def containers_of(client, batch: str, exec_id: str) -> list:  # type: ignore[no-untyped-def]
    return client.containers.list(
        all=True, filters={"label": [f"{LABEL_BATCH}={batch}", f"{LABEL_EXEC}={exec_id}"]},
        ignore_removed=True)


def test_output_is_hashed_owned_and_container_removed(ex, repo, docker_engine, batch, tmp_path):  # type: ignore[no-untyped-def]
    s = spec("echo to-stdout; printf 'hello %s' {who} > {out}; mkdir -p {d}/sub; "
             "echo x > {d}/sub/f", scalars={"who": "docker"}, outputs={"out": "file", "d": "dir"})
    facts = ex.put(s)
    created = facts[0]
    assert isinstance(created, ExecCreated) and created.executor == "docker"
    assert len(created.handle) == 64 and created.config["mem_limit"] == 256 * MiB
    assert created.config["nano_cpus"] == 10**9 and created.config["image"] == IMAGE
    assert ex.running() == 1
    ev = outcome(ex, s.exec_id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 0 and ev.error is None, ev
    ref = ev.result["out"]
    assert ref.digest == hashlib.sha256(b"hello docker").hexdigest() and ref.size == 12
    assert repo.read_bytes(ref) == b"hello docker"
    assert os.stat(repo.path(ref)).st_uid == os.getuid()
    assert ev.result["d"].kind == "dir" and list(repo.listing(ev.result["d"])) == ["sub/f"]
    assert (tmp_path / "execs" / s.exec_id / "stdout").read_text() == "to-stdout\n"
    assert ev.peak_mem > 0 and not ev.oom
    assert containers_of(docker_engine, batch, s.exec_id) == []
    assert ex.running() == 0


def test_inputs_are_read_only(ex, repo):  # type: ignore[no-untyped-def]
    src = repo.put_bytes(b"line1\nline2\n")
    tree = repo.put_dir(_make_tree(repo))
    s = spec("if echo x >> {src} 2>/dev/null; then exit 9; fi; "
             "if touch {tree}/new 2>/dev/null; then exit 8; fi; "
             "cat {src} {tree}/a/b > {out}", inputs={"src": src, "tree": tree},
             outputs={"out": "file"})
    ev = run(ex, s)
    assert ev.exit_code == 0, ev
    assert repo.read_bytes(ev.result["out"]) == b"line1\nline2\nbee\n"
    assert repo.read_bytes(src) == b"line1\nline2\n"


def _make_tree(repo: Repository) -> Path:
    d = repo.root.parent / "tree"
    (d / "a").mkdir(parents=True)
    (d / "a" / "b").write_text("bee\n")
    return d


def test_scalars_are_quoted(ex, repo):  # type: ignore[no-untyped-def]
    nasty = {"a": "it's", "b": 'say "hi" $HOME `id` $(id)', "c": "semi; rm -rf /out; echo",
             "d": "new\nline", "e": "", "f": "*"}
    tmpl = "; ".join(f"printf '%s|' {{{k}}} >> {{out}}" for k in nasty)
    ev = run(ex, spec(tmpl, scalars=nasty, outputs={"out": "file"}))
    assert ev.exit_code == 0, ev
    assert repo.read_bytes(ev.result["out"]).decode() == "".join(v + "|" for v in nasty.values())


def test_nonzero_exit_keeps_stderr_tail(ex):  # type: ignore[no-untyped-def]
    ev = run(ex, spec("for i in $(seq 1 40); do echo line$i >&2; done; exit 3",
                      outputs={"out": "file"}))
    assert ev.exit_code == 3 and not ev.oom and ev.result == {}
    assert ev.error is not None and "status 3" in ev.error
    assert ev.stderr_tail.splitlines() == [f"line{i}" for i in range(21, 41)]


def test_missing_output_is_an_error(ex):  # type: ignore[no-untyped-def]
    ev = run(ex, spec("true", outputs={"out": "file"}))
    assert ev.exit_code == 0 and ev.error is not None and "'out'" in ev.error


def test_memory_hog_is_oom_with_plausible_peak(ex):  # type: ignore[no-untyped-def]
    ev = run(ex, spec("tail -c 200000000 /dev/zero", resources=Resources(1, 64 * MiB)))
    assert ev.exit_code == 137 and ev.oom, ev
    assert 32 * MiB <= ev.peak_mem <= 64 * MiB + 4 * MiB, ev.peak_mem
    assert "out of memory" in (ev.error or "")


def test_concurrent_hogs_are_all_oom(ex):  # type: ignore[no-untyped-def]
    # docker's OOMKilled flag misses some kills when several containers OOM at once (infra.md);
    # the wrapper's cgroup counter does not.
    specs = [spec("tail -c 200000000 /dev/zero", resources=Resources(0.5, 32 * MiB))
             for _ in range(4)]
    for s in specs:
        ex.put(s)
    seen: list[Event] = []
    deadline = time.monotonic() + 60
    while len([e for e in seen if isinstance(e, ExecExited)]) < 4 and time.monotonic() < deadline:
        seen += ex.poll(1.0)
    evs = [e for e in seen if not isinstance(e, ExecStarted)]
    assert len(evs) == 4 and all(isinstance(e, ExecExited) and e.oom and e.exit_code == 137 for e in evs), evs


def test_oom_hidden_by_a_pipeline_still_counts(ex):  # type: ignore[no-untyped-def]
    ev = run(ex, spec("head -c 80m /dev/zero | tail -c 80m | wc -c > {out}",
                      outputs={"out": "file"}, resources=Resources(1, 64 * MiB)))
    assert ev.exit_code == 0 and ev.oom and ev.result == {}, ev


def test_environment_network_and_limits(ex, repo, docker_engine, batch, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REFLOWES_HOST_SECRET", "leak")
    s = spec("env > {out}; ls /sys/class/net >> {out}; sleep 1",
             env={"GREETING": "hi there"}, outputs={"out": "file"},
             resources=Resources(0.5, 96 * MiB))
    ex.put(s)
    (c,) = containers_of(docker_engine, batch, s.exec_id)
    hc = c.attrs["HostConfig"]
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"]) == (96 * MiB, 96 * MiB, 5 * 10**8)
    assert hc["NetworkMode"] == "none" and hc["AutoRemove"] is False
    assert c.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    ev = outcome(ex, s.exec_id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 0, ev
    text = repo.read_bytes(ev.result["out"]).decode()
    assert "GREETING=hi there" in text and "REFLOWES_HOST_SECRET" not in text
    assert text.strip().splitlines()[-1] == "lo"


def test_put_is_idempotent_through_the_engine(ex, docker_engine, repo, tmp_path, batch):  # type: ignore[no-untyped-def]
    s = spec("sleep 1; echo done > {out}", outputs={"out": "file"})
    # Two controllers racing on the same exec id, and a repeated put.
    other = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    results: list[list[Event]] = []
    threads = [threading.Thread(target=lambda e=e: results.append(e.put(s))) for e in (ex, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert ex.put(s) == [] and other.put(s) == []
    assert len(containers_of(docker_engine, batch, s.exec_id)) == 1
    other.close()  # one harvester: the other controller goes away
    ev = outcome(ex, s.exec_id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 0
    assert containers_of(docker_engine, batch, s.exec_id) == []


def test_missing_image_fails_fast_and_clearly(ex):  # type: ignore[no-untyped-def]
    s = spec("true", image="reflowes-test/no-such-image:1")
    t0 = time.monotonic()
    facts = ex.put(s)
    assert [type(f) for f in facts] == [ExecCreated] and facts[0].handle == ""
    assert ex.running() == 1
    ev = outcome(ex, s.exec_id, timeout=30)
    assert time.monotonic() - t0 < 30
    assert isinstance(ev, ExecExited) and ev.exit_code == 125
    assert "image 'reflowes-test/no-such-image:1' not found locally and cannot be pulled" in (
        ev.error or "")
    assert ex.running() == 0


def test_kill_removes_and_reports_nothing(ex, docker_engine, batch):  # type: ignore[no-untyped-def]
    s = spec("sleep 30")
    ex.put(s)
    ex.kill(s.exec_id)
    assert containers_of(docker_engine, batch, s.exec_id) == []
    deadline = time.monotonic() + 10
    while ex.running() and time.monotonic() < deadline:
        assert ex.poll(0.2) == []
    assert ex.running() == 0


def test_recover_running_reattaches(ex, docker_engine, repo, tmp_path, batch):  # type: ignore[no-untyped-def]
    s = spec("sleep 1; echo late > {out}", outputs={"out": "file"})
    ex.put(s)
    ex.close()  # the controller goes away; the container keeps running
    again = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    assert again.recover(s.exec_id, s.task_id, None) == []
    assert again.running() == 1
    ev = outcome(again, s.exec_id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 0
    assert repo.read_bytes(ev.result["out"]) == b"late\n"
    assert len(containers_of(docker_engine, batch, s.exec_id)) == 0
    again.close()


def test_recover_exited_harvests_now(ex, docker_engine, repo, tmp_path, batch):  # type: ignore[no-untyped-def]
    s = spec("echo early > {out}; exit 0", outputs={"out": "file"})
    ex.put(s)
    ex.close()
    (c,) = containers_of(docker_engine, batch, s.exec_id)
    c.wait(timeout=30)
    again = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    (ev,) = again.recover(s.exec_id, s.task_id, c.id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 0
    assert repo.read_bytes(ev.result["out"]) == b"early\n"
    assert containers_of(docker_engine, batch, s.exec_id) == []
    assert again.running() == 0
    again.close()


def test_recover_missing_is_lost(ex):  # type: ignore[no-untyped-def]
    (ev,) = ex.recover("e-never-made", "t-x", "deadbeef")
    assert isinstance(ev, ExecLost) and "not found" in ev.reason


def test_engine_not_answering_is_infra_error_fast(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    t0 = time.monotonic()
    with pytest.raises(InfraError, match="docker-up.sh"):
        DockerExecutor(Repository(tmp_path / "repo"), tmp_path / "execs", batch_id="b")
    with pytest.raises(InfraError, match="not answering"):
        connect("tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 5


def test_container_killed_from_outside_is_lost_not_oom(ex, docker_engine, batch):  # type: ignore[no-untyped-def]
    s = spec("sleep 30", resources=Resources(1, 64 * MiB))
    ex.put(s)
    (c,) = containers_of(docker_engine, batch, s.exec_id)
    deadline = time.monotonic() + 10
    while c.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        c.reload()
    c.kill()  # exit 137 under a memory limit, but neither the kernel nor we did it
    ev = outcome(ex, s.exec_id)
    assert isinstance(ev, ExecLost) and "from outside" in ev.reason, ev
    assert containers_of(docker_engine, batch, s.exec_id) == []


def test_recover_created_container_starts_it(ex, docker_engine, repo, tmp_path, batch,
                                             monkeypatch):  # type: ignore[no-untyped-def]
    # A controller that died between create and start: the container exists, never ran.
    s = spec("echo ran > {out}", outputs={"out": "file"})
    monkeypatch.setattr(ex, "_watch", lambda live: None)  # dies before its watcher starts it
    ex.put(s)
    (c,) = containers_of(docker_engine, batch, s.exec_id)
    assert c.status == "created"
    again = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    assert again.recover(s.exec_id, s.task_id, c.id) == []
    seen: list[Event] = []
    ev = outcome(again, s.exec_id, seen=seen)
    assert [type(e) for e in seen] == [ExecStarted, ExecExited]
    assert isinstance(ev, ExecExited) and repo.read_bytes(ev.result["out"]) == b"ran\n"
    again.close()


def test_stale_container_of_a_deleted_exec_dir_is_replaced(ex, docker_engine, repo, tmp_path,
                                                           batch, monkeypatch):  # type: ignore[no-untyped-def]
    s = spec("echo fresh > {out}", outputs={"out": "file"})
    monkeypatch.setattr(ex, "_watch", lambda live: None)
    ex.put(s)  # created, never started; then the batch's exec dirs are wiped (--reset)
    old = containers_of(docker_engine, batch, s.exec_id)[0].id
    import shutil

    shutil.rmtree(tmp_path / "execs")
    again = DockerExecutor(repo, tmp_path / "execs", docker_engine, batch_id=batch)
    (created,) = again.put(s)
    assert isinstance(created, ExecCreated) and created.handle != old
    ev = outcome(again, s.exec_id)
    assert isinstance(ev, ExecExited) and repo.read_bytes(ev.result["out"]) == b"fresh\n"
    assert containers_of(docker_engine, batch, s.exec_id) == []
    again.close()


def test_collect_removes_containers_of_dead_allocs_and_closed_execs(ex, docker_engine, batch):  # type: ignore[no-untyped-def]
    keep, closed, dead = spec("sleep 30"), spec("sleep 30"), spec("sleep 30", alloc_id="a9")
    for s in (keep, closed, dead):
        ex.put(s)
    ex.close()
    removed = ex.collect({"a1"}, {keep.exec_id, dead.exec_id})
    assert sorted(removed) == sorted(
        f"reflowes-{batch[:12]}-{s.exec_id}" for s in (closed, dead))
    assert [c.labels[LABEL_EXEC] for c in batch_containers(docker_engine, batch)] == [
        keep.exec_id]


def test_missing_input_object_fails_the_step_not_the_controller(ex):  # type: ignore[no-untyped-def]
    from reflowes.events.model import FileRef

    ghost = FileRef("0" * 64, 3)
    s = spec("cat {src}", inputs={"src": ghost})
    assert [type(f) for f in ex.put(s)] == [ExecCreated]
    ev = outcome(ex, s.exec_id)
    assert isinstance(ev, ExecExited) and ev.exit_code == 125
    assert "cannot stage inputs" in (ev.error or "")


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\x00"), max_size=40),
                       min_size=1, max_size=12))
def test_any_scalars_arrive_verbatim(ex, repo, values):  # type: ignore[no-untyped-def]
    scalars = {f"v{i}": v for i, v in enumerate(values)}
    tmpl = "; ".join(f"printf '%s\\0' {{{k}}} >> {{out}}" for k in scalars)
    ev = run(ex, spec(tmpl, scalars=scalars, outputs={"out": "file"}))
    assert ev.exit_code == 0, ev
    assert repo.read_bytes(ev.result["out"]).decode().split("\0")[:-1] == values


def test_network_is_host_only_when_asked(ex, docker_engine, batch):  # type: ignore[no-untyped-def]
    s = spec("sleep 30", network=True)
    (created,) = ex.put(s)
    assert created.config["network_mode"] == "host"
    (c,) = containers_of(docker_engine, batch, s.exec_id)
    assert c.attrs["HostConfig"]["NetworkMode"] == "host"
    ex.kill(s.exec_id)
    assert containers_of(docker_engine, batch, s.exec_id) == []
