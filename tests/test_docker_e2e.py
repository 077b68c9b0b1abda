"""Docker steps through the real `reflowes run`: OOM retry, SIGKILLed controller re-attaching,
an engine restart mid-batch, and zombie containers of dead allocs removed at the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest
from reflowes.engine.dockerpool import LABEL_ALLOC, LABEL_BATCH, LABEL_EXEC, batch_containers
from reflowes.events.log import SqliteLog

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OOM_PROGRAM = textwrap.dedent('''
    import reflowes as rf

    def main(sample: str):
        big = rf.exec("head -c 80m /dev/zero | tail -c 80m | wc -c > {out}",
                      outputs={"out": rf.FILE}, image="local/busybox:1", mem="64MiB", name="hog")
        return {"out": big["out"]}
''')

SLOW_PROGRAM = textwrap.dedent('''
    import reflowes as rf

    def main(sample: str, n: int):
        made = rf.exec("sleep {s}; seq {n} > {out}", inputs={"n": n, "s": 3},
                       outputs={"out": rf.FILE}, image="local/busybox:1", mem="64MiB",
                       cpu=0.5, name="slow")
        return {"out": made["out"]}
''')
ROWS = "sample,n\ns1,3\ns2,4\ns3,5\n"


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 180,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reflowes.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reflowes.cli.main", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def setup_batch(d: Path, program: str, rows: str, **env_extra: str) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "prog.py").write_text(program)
    (d / "b.csv").write_text(rows)
    return dict(os.environ, REFLOWES_HOME=str(d / "home"), **env_extra)


def events(d: Path, kind: str) -> list:  # type: ignore[type-arg]
    with SqliteLog.open(d / "b.reflowes" / "log.sqlite", readonly=True) as lg:
        return [r.event for r in lg.read(kinds=[kind])]


def wait_for(pred, timeout: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ok = pred()
        except Exception:  # noqa: BLE001 - the log may not exist yet
            ok = False
        if ok:
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s")


def results(d: Path) -> dict[str, str]:
    root = d / "b.reflowes" / "results"
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def batch_id_of(d: Path, client: docker.DockerClient, since: int) -> str:
    """The batch id the shell gave this batch, read back from the engine's create events."""
    exec_id = events(d, "exec.created")[0].exec_id
    for ev in client.api.events(since=since, until=int(time.time()) + 1, decode=True, filters={
            "type": "container", "event": "create", "label": f"{LABEL_EXEC}={exec_id}"}):
        return str(ev["Actor"]["Attributes"][LABEL_BATCH])
    raise AssertionError(f"no container was created for exec {exec_id}")


def test_oom_is_retried_with_more_memory(tmp_path, docker_engine):  # type: ignore[no-untyped-def]
    env = setup_batch(tmp_path, OOM_PROGRAM, "sample\ns1\n")
    r = cli("run", "b.csv", "--program", "prog.py", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "b.reflowes/results/s1/out").read_text() == "83886080\n"
    exits = events(tmp_path, "exec.exited")
    assert [(e.oom, e.error is None) for e in exits] == [(True, False), (False, True)]
    created = events(tmp_path, "exec.created")
    assert [c.config["mem_limit"] for c in created] == [64 << 20, 96 << 20]
    (requeued,) = events(tmp_path, "task.requeued")
    assert "out of memory" in requeued.reason and requeued.resources.mem == 96 << 20
    replay = cli("replay", "b.csv", cwd=tmp_path, env=env)
    assert "OOM" in replay.stdout and "requeued as attempt 2" in replay.stdout, replay.stdout
    status = cli("status", "b.csv", cwd=tmp_path, env=env)
    assert "done" in status.stdout and "1 tasks" in status.stdout, status.stdout
    assert "hog x2" in status.stdout, status.stdout  # the retried step and its attempts
    js = json.loads(cli("status", "b.csv", "--json", cwd=tmp_path, env=env).stdout)
    (step,) = js["runs"][0]["retried_steps"]
    assert [a["mem"] for a in step["attempts"]] == [64 << 20, 96 << 20]
    assert step["attempts"][0]["state"] == "failed" and step["attempts"][1]["state"] == "done"


def test_sigkilled_run_reattaches_without_second_containers(tmp_path, docker_engine):  # type: ignore[no-untyped-def]
    ref = tmp_path / "ref"
    env = setup_batch(ref, SLOW_PROGRAM, ROWS)
    r = cli("run", "b.csv", "--program", "prog.py", cwd=ref, env=env)
    assert r.returncode == 0, r.stdout + r.stderr

    d = tmp_path / "crash"
    env = setup_batch(d, SLOW_PROGRAM, ROWS)
    since = int(time.time()) - 1
    # The docker pool: its restore() must keep the live allocs' running containers.
    p = start("run", "b.csv", "--program", "prog.py", "--pool", "docker", cwd=d, env=env)
    try:
        wait_for(lambda: len(events(d, "exec.started")) >= 2, what="two containers running")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    batch = batch_id_of(d, docker_engine, since)
    running = [c for c in batch_containers(docker_engine, batch) if c.status == "running"]
    assert running, "the containers must outlive the controller"

    r = cli("run", "b.csv", "--program", "prog.py", "--pool", "docker", cwd=d, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(d) == results(ref)
    # No exec id ever got a second container: count the engine's create events.
    creates = docker_engine.api.events(
        since=since, until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": f"{LABEL_BATCH}={batch}"})
    per_exec: dict[str, int] = {}
    for ev in creates:
        eid = ev["Actor"]["Attributes"][LABEL_EXEC]
        per_exec[eid] = per_exec.get(eid, 0) + 1
    assert len(per_exec) == 3 and set(per_exec.values()) == {1}, per_exec
    assert sorted(e.exec_id for e in events(d, "exec.created")) == sorted(per_exec)
    assert events(d, "exec.lost") == []
    assert batch_containers(docker_engine, batch) == []


@pytest.mark.parametrize("pool", ["docker", "local"])
def test_engine_restart_mid_batch_requeues_and_completes(tmp_path, engine2, pool):  # type: ignore[no-untyped-def]
    env = setup_batch(tmp_path, SLOW_PROGRAM, ROWS, DOCKER_HOST=engine2.url)
    p = start("run", "b.csv", "--program", "prog.py", "--pool", pool, cwd=tmp_path, env=env)
    try:
        wait_for(lambda: len(events(tmp_path, "exec.started")) >= 2, what="containers running")
        engine2.stop()
        time.sleep(1.0)
        engine2.start()
        out, _ = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    assert results(tmp_path) == {f"s{i}/out": "".join(f"{k}\n" for k in range(1, n + 1))
                                 for i, n in ((1, 3), (2, 4), (3, 5))}
    # With the docker pool the allocs die with the engine; either way the attempts in flight
    # are lost and requeued, and nothing is granted or created until the engine is back.
    lost = events(tmp_path, "exec.lost")
    died = events(tmp_path, "alloc.died")
    assert (len(died) >= 1) if pool == "docker" else (len(lost) >= 2 and died == []), (lost, died)
    requeued = events(tmp_path, "task.requeued")
    assert len({e.task_id for e in requeued}) >= 2 and all(
        "lost" in e.reason or "died" in e.reason for e in requeued), requeued
    client = docker.DockerClient(base_url=engine2.url)
    try:  # the lost attempts' containers were removed once the engine was back
        deadline = time.monotonic() + 10
        while client.containers.list(all=True, ignore_removed=True) and (
                time.monotonic() < deadline):
            time.sleep(0.1)
        assert client.containers.list(all=True, ignore_removed=True) == []
    finally:
        client.close()


def test_containers_of_dead_allocs_are_removed_at_next_start(tmp_path, docker_engine):  # type: ignore[no-untyped-def]
    env = setup_batch(tmp_path, SLOW_PROGRAM, "sample,n\ns1,3\n")
    since = int(time.time()) - 1
    r = cli("run", "b.csv", "--program", "prog.py", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    batch = batch_id_of(tmp_path, docker_engine, since)
    # Containers an earlier controller left on allocs that are dead now.
    for i, state in enumerate(("running", "exited")):
        c = docker_engine.containers.create(
            "local/busybox:1", ["sleep", "60"] if state == "running" else ["true"],
            name=f"reflowes-{batch}-zombie{i}", network_mode="none",
            labels={LABEL_BATCH: batch, LABEL_EXEC: f"zombie{i}", LABEL_ALLOC: "a999"})
        c.start()
    (tmp_path / "b.csv").write_text("sample,n\ns1,3\ns2,4\n")
    try:
        r = cli("run", "b.csv", "--program", "prog.py", "--pool", "docker", cwd=tmp_path,
                env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert batch_containers(docker_engine, batch) == []
    finally:
        for c in batch_containers(docker_engine, batch):
            c.remove(force=True)
