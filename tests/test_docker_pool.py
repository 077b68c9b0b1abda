"""DockerPool against real engines: capacity, grants, zombie collection, and a second dockerd
(own socket, data root, exec root, pidfile) stopped and restarted under a live pool."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import docker
import pytest
from reflowes.engine.docker import DockerExecutor
from reflowes.engine.dockerpool import DockerPool, batch_containers
from reflowes.engine.executor import ExecSpec
from reflowes.engine.repository import Repository
from reflowes.events.model import AllocDied, AllocGranted, Event, ExecLost, ExecStarted
from reflowes.events.resources import GiB, MiB, Resources

pytestmark = pytest.mark.docker
ONE = Resources(1, 1 * GiB)


@pytest.fixture
def batch(docker_engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    b = "pool" + uuid.uuid4().hex[:12]
    yield b
    for c in batch_containers(docker_engine, b):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:  # removed meanwhile by a harvest
            pass


def poll_until(pool: DockerPool, pred, timeout: float = 20) -> list[Event]:  # type: ignore[no-untyped-def]
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += pool.poll()
        if pred(got):
            return got
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s; got {got}")


def sleeper(exec_id: str, alloc_id: str) -> ExecSpec:
    return ExecSpec(exec_id=exec_id, task_id="t-" + exec_id, alloc_id=alloc_id,
                    template="sleep 60", image="local/busybox:1",
                    resources=Resources(0.1, 32 * MiB))


def test_capacity_comes_from_the_engine(docker_engine, batch):  # type: ignore[no-untyped-def]
    info = docker_engine.info()
    cap = DockerPool(docker_engine, batch).capacity()
    assert cap.cpu == info["NCPU"] and cap.mem == int(info["MemTotal"] * 0.95)
    assert cap.disk > 0


def test_grants_follow_the_local_rules(docker_engine, batch):  # type: ignore[no-untyped-def]
    pool = DockerPool(docker_engine, batch, resources=Resources(2, 4 * GiB, 10 * GiB))
    assert pool.restore({}) == []
    pool.request("r1", Resources(1, 3 * GiB, GiB), Resources(1, GiB, GiB))
    pool.request("r2", Resources(2, 2 * GiB, GiB), Resources(1, GiB, GiB))
    pool.request("r3", Resources(1, GiB, GiB), Resources(1, GiB, GiB))
    got = pool.poll()
    assert got == [
        AllocGranted(alloc_id="a1", request_id="r1", resources=Resources(1, 3 * GiB, GiB)),
        AllocGranted(alloc_id="a2", request_id="r2", resources=Resources(1, GiB, GiB)),
    ]
    pool.release("a1")
    assert pool.poll() == [
        AllocGranted(alloc_id="a3", request_id="r3", resources=Resources(1, GiB, GiB))]


def test_restore_collects_containers_of_dead_allocs(docker_engine, batch, tmp_path):  # type: ignore[no-untyped-def]
    ex = DockerExecutor(Repository(tmp_path / "repo"), tmp_path / "execs", docker_engine,
                        batch_id=batch)
    ex.put(sleeper("e-live", "a1"))
    ex.put(sleeper("e-zombie", "a2"))
    ex.close()  # a controller died with both running
    # An unrelated batch's container must survive.
    other = "pool" + uuid.uuid4().hex[:12]
    ex2 = DockerExecutor(Repository(tmp_path / "repo"), tmp_path / "execs2", docker_engine,
                         batch_id=other)
    ex2.put(sleeper("e-other", "a2"))
    ex2.close()
    try:
        pool = DockerPool(docker_engine, batch)
        assert pool.restore({"a1": ONE}) == []
        left = {c.labels["reflowes.exec"] for c in batch_containers(docker_engine, batch)}
        assert left == {"e-live"}
        assert len(pool.collected) == 1 and pool.collected[0].endswith("-e-zombie")
        assert len(batch_containers(docker_engine, other)) == 1
        assert pool.allocs == {"a1": ONE}
    finally:
        for c in batch_containers(docker_engine, other):
            c.remove(force=True)


@pytest.mark.slow
def test_engine_down_kills_allocs_and_comes_back(engine2, tmp_path):  # type: ignore[no-untyped-def]
    client = docker.DockerClient(base_url=engine2.url, timeout=30)
    batch = "down" + uuid.uuid4().hex[:12]
    pool = DockerPool(client, batch, ping_interval=0.1)
    assert pool.restore({}) == []
    ex = DockerExecutor(Repository(tmp_path / "repo"), tmp_path / "execs", client, batch_id=batch)
    pool.request("r1", ONE, ONE)
    pool.request("r2", ONE, ONE)
    got = poll_until(pool, lambda g: len(g) == 2)
    assert {e.alloc_id for e in got if isinstance(e, AllocGranted)} == {"a1", "a2"}
    ex.put(sleeper("e1", "a1"))

    engine2.stop()
    got = poll_until(pool, lambda g: len(g) >= 2)
    assert sorted(e.alloc_id for e in got if isinstance(e, AllocDied)) == ["a1", "a2"]
    assert all("stopped answering" in e.reason for e in got)  # type: ignore[union-attr]
    lost: list[Event] = []
    deadline = time.monotonic() + 20
    while not lost and time.monotonic() < deadline:
        lost = [e for e in ex.poll(0.5) if not isinstance(e, ExecStarted)]
    assert [type(e) for e in lost] == [ExecLost] and ex.running() == 0
    pool.request("r3", ONE, ONE)
    time.sleep(0.3)
    assert pool.poll() == []  # no grants while the engine is away
    # A put meeting the absent engine: created without a handle, lost once the engine is back.
    (created,) = ex.put(sleeper("e2", "a2"))
    assert created.handle == "" and ex.running() == 1
    assert ex.poll(0.5) == []
    # A controller starting now sees its logged allocs die.
    fresh = DockerPool(client, batch, resources=Resources(2, 4 * GiB))
    assert [type(e) for e in fresh.restore({"a9": ONE})] == [AllocDied]

    engine2.start()
    got = poll_until(pool, lambda g: any(isinstance(e, AllocGranted) for e in g))
    assert got == [AllocGranted(alloc_id="a3", request_id="r3", resources=ONE)]
    # The container of the dead alloc (exited with its engine) is gone: collected by the pool
    # when the engine came back, or by the executor's own clean-up of lost execs (whichever
    # came second got 409 "removal in progress": allow the first a moment to finish).
    deadline = time.monotonic() + 10
    while batch_containers(client, batch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert batch_containers(client, batch) == []
    lost = []
    deadline = time.monotonic() + 20
    while not lost and time.monotonic() < deadline:
        lost = ex.poll(0.5)
    assert [type(e) for e in lost] == [ExecLost] and "not answering" in lost[0].reason  # type: ignore[union-attr]
    assert ex.running() == 0
    ex.close()
    client.close()
