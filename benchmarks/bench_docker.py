"""Per-step overhead of the Docker executor (put + poll + harvest of a `true` step) against the
floor measured in the same run: a raw docker-SDK create/start/wait/remove loop with the same
network mode and the same bind mounts. Sequential and with 2 in flight; blocks interleaved.

    python -m benchmarks.bench_docker [--steps 200] [--block 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
from docker.types import Mount
from reflowes.engine.docker import DockerExecutor
from reflowes.engine.dockerpool import batch_containers
from reflowes.engine.dockerwrap import CTL
from reflowes.engine.executor import ExecSpec
from reflowes.engine.repository import Repository
from reflowes.events.model import ExecExited, ExecStarted
from reflowes.events.resources import MiB, Resources

IMAGE = "local/busybox:1"
RES = Resources(1, 64 * MiB)


def floor_block(client: docker.DockerClient, tmp: Path, n: int, inflight: int) -> list[float]:
    """n raw create/start/wait/remove cycles (same mounts, network none, limits), split over
    `inflight` threads; returns each cycle's seconds."""
    d = tmp / "floor"
    (d / "out").mkdir(parents=True, exist_ok=True)
    mounts = [Mount("/out", str(d / "out"), type="bind")]
    for f in ("stdout", "stderr", "meta"):
        (d / f).touch()
        mounts.append(Mount(f"{CTL}/{f}", str(d / f), type="bind"))
    times: list[float] = []

    def loop(k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            c = client.containers.create(IMAGE, ["true"], network_mode="none", mounts=mounts,
                                         mem_limit=RES.mem, memswap_limit=RES.mem,
                                         nano_cpus=int(RES.cpu * 1e9), detach=True)
            c.start()
            client.api.wait(c.id, timeout=None)
            c.remove(force=True)
            times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop, args=(n // inflight,)) for _ in range(inflight)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return times


def ours_block(ex: DockerExecutor, n: int, inflight: int) -> list[float]:
    """n `true` steps through put + poll (harvest included), `inflight` at a time."""
    started: dict[str, float] = {}
    times: list[float] = []
    todo = n

    def put() -> None:
        nonlocal todo
        eid = "b" + uuid.uuid4().hex[:16]
        started[eid] = time.perf_counter()
        ex.put(ExecSpec(exec_id=eid, task_id="t" + eid, alloc_id="a1", template="true",
                        image=IMAGE, resources=RES))
        todo -= 1

    for _ in range(min(inflight, todo)):
        put()
    while started:
        for ev in ex.poll(5.0):
            if isinstance(ev, ExecStarted):
                continue
            assert isinstance(ev, ExecExited) and ev.exit_code == 0, ev
            times.append(time.perf_counter() - started.pop(ev.exec_id))
            if todo:
                put()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--block", type=int, default=20, help="steps per interleaved block")
    args = ap.parse_args()
    client = docker.from_env(timeout=120, max_pool_size=16)
    batch = "bench" + uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        ex = DockerExecutor(Repository(tmp / "repo"), tmp / "execs", client, batch_id=batch)
        ours_block(ex, 4, 1)  # warm up both paths (image cache, first netns)
        floor_block(client, tmp, 4, 1)
        print(f"{args.steps} trivial steps each, blocks of {args.block} interleaved; "
              f"network none, {RES}")
        print(f"{'mode':<14}{'floor ms/step':>15}{'ours ms/step':>14}{'ratio':>8}"
              f"{'floor p50':>11}{'ours p50':>10}")
        for inflight in (1, 2):
            fl: list[float] = []
            ou: list[float] = []
            wall_f = wall_o = 0.0
            for _ in range(max(1, args.steps // args.block)):
                t0 = time.perf_counter()
                fl += floor_block(client, tmp, args.block, inflight)
                t1 = time.perf_counter()
                ou += ours_block(ex, args.block, inflight)
                wall_f += t1 - t0
                wall_o += time.perf_counter() - t1
            per_f, per_o = wall_f / len(fl) * 1000, wall_o / len(ou) * 1000
            print(f"{f'{inflight} in flight':<14}{per_f:>15.1f}{per_o:>14.1f}"
                  f"{per_o / per_f:>8.2f}{statistics.median(fl) * 1000:>11.1f}"
                  f"{statistics.median(ou) * 1000:>10.1f}")
        ex.close()
        for c in batch_containers(client, batch):
            c.remove(force=True)
    client.close()


if __name__ == "__main__":
    main()
