"""Shared fixtures: `docker_engine`, a client for the real Docker engine (started when needed),
and `engine2`, a disposable second dockerd that tests may stop and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER_UP = ROOT / "scripts" / "docker-up.sh"
BUSYBOX = "local/busybox:1"


def _ready() -> bool:
    import docker

    try:
        client = docker.from_env(timeout=5)
        try:
            labels = client.images.get(BUSYBOX).labels or {}
            return labels.get("reflowes.busybox") == "full"
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "run the script"
        return False


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[object]:
    """A docker.DockerClient for the engine at DOCKER_HOST with the full busybox image; runs
    scripts/docker-up.sh once if needed, and fails (never skips) when that cannot make one."""
    import docker

    if not _ready():
        proc = subprocess.run([str(DOCKER_UP)], check=False, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0 or not _ready():
            pytest.fail(f"no Docker engine: {DOCKER_UP} exited {proc.returncode}:\n"
                        f"{proc.stderr[-2000:]}")
    client = docker.from_env(timeout=120, max_pool_size=64)
    yield client
    client.close()


class SecondEngine:
    """A dockerd of its own, started by scripts/docker-up.sh; never the main engine."""

    count = 0

    def __init__(self) -> None:
        SecondEngine.count += 1
        tag = f"rfx-test-{os.getpid()}-{SecondEngine.count}"
        self.env = dict(
            os.environ, DOCKER_SOCK=f"/run/{tag}.sock", DOCKER_DATA_ROOT=f"/var/lib/{tag}",
            DOCKER_EXEC_ROOT=f"/run/{tag}", DOCKER_PIDFILE=f"/run/{tag}.pid",
            DOCKERD_LOG=f"/tmp/{tag}.log", SKIP_APT="1",
            DOCKERD_FLAGS=f"--iptables=false --bridge=none --cgroup-parent={tag}")
        self.url = f"unix://{self.env['DOCKER_SOCK']}"

    def start(self) -> None:
        proc = subprocess.run([str(DOCKER_UP)], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr

    def pid(self) -> int:
        try:
            return int(Path(self.env["DOCKER_PIDFILE"]).read_text())
        except (OSError, ValueError):
            return 0

    def stop(self) -> None:
        """SIGTERM this engine's dockerd (by its own pidfile) and wait until it is gone."""
        pid = self.pid()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def destroy(self) -> None:
        self.stop()
        roots = (self.env["DOCKER_EXEC_ROOT"], self.env["DOCKER_DATA_ROOT"])
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(roots)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        subprocess.run(["rm", "-rf", *roots, self.env["DOCKER_SOCK"]], check=False)


def _alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here reaps late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def engine2(docker_engine) -> Iterator[SecondEngine]:  # type: ignore[no-untyped-def]
    """A second dockerd with the busybox image, destroyed afterwards (the main one is untouched)."""
    e = SecondEngine()
    try:
        e.start()
        yield e
    finally:
        e.destroy()
