"""Shared fixtures: `docker_engine`, a client for the real Docker engine (started when needed)."""

from __future__ import annotations

import subprocess
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
