"""The Docker pool: one engine's resources carved into allocs, with the LocalPool's grant rules.

Watches the engine (a ping per `ping_interval`): when it stops answering every live alloc dies;
containers of dead allocs (this run's or an earlier controller's) are removed as zombies.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from urllib.parse import urlparse

import docker
import docker.errors
import docker.models.containers
import requests.exceptions
from reflowes.engine.errors import InfraError
from reflowes.engine.localpool import MEM_FRACTION, LocalPool
from reflowes.events.model import AllocDied, Event
from reflowes.events.resources import Resources

log = logging.getLogger(__name__)

LABEL_BATCH, LABEL_EXEC, LABEL_TASK, LABEL_ALLOC = (
    "reflowes.batch", "reflowes.exec", "reflowes.task", "reflowes.alloc")
START_HINT = "start it with scripts/docker-up.sh (as root), or point DOCKER_HOST at a live engine"
# Errors that mean "the engine went away" rather than "the engine said no".
GONE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)


def connect(base_url: str | None = None, timeout: float = 3.0) -> docker.DockerClient:
    """A client for the engine at `base_url` (default DOCKER_HOST); InfraError, fast, if it does
    not answer."""
    url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout, max_pool_size=64)
        client.ping()
    except (docker.errors.DockerException, *GONE) as e:
        raise InfraError(f"Docker engine at {url} is not answering ({e}); {START_HINT}") from None
    client.api.timeout = 120  # long enough for create/remove under load; waits use no timeout
    return client


def ping(client: docker.DockerClient, timeout: float = 2.0) -> str | None:
    """None when the engine answers within `timeout` on a NEW connection, else why not.

    A kept-alive connection is no proof: a dockerd shutting down closes its listener (and
    refuses every new request) but keeps serving the connections it has.
    """
    api = client.api
    path = getattr(api.get_adapter(api.base_url), "socket_path", None)
    url = urlparse(api.base_url)
    try:
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        elif url.scheme == "http":
            sock = socket.create_connection((url.hostname, url.port or 2375), timeout)
        else:  # TLS: fall back to the client's own (pooled) connections
            r = api.get(api._url("/_ping"), timeout=timeout)
            return None if r.status_code == 200 else f"ping answered HTTP {r.status_code}"
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = sock.recv(32)
        ok = head.startswith(b"HTTP/1.") and head[9:12] == b"200"
        return None if ok else f"ping answered {head[:20]!r}"
    except (docker.errors.DockerException, *GONE, OSError) as e:
        return f"{type(e).__name__}: {e}"


def container_name(batch_id: str, exec_id: str) -> str:
    """The deterministic, valid docker name of an exec's container."""
    return "reflowes-" + re.sub(r"[^a-zA-Z0-9_.-]", "_", f"{batch_id[:12]}-{exec_id}")


def batch_containers(client: docker.DockerClient, batch_id: str,
                     **labels: str) -> list[docker.models.containers.Container]:
    """Every container (any state) of this batch, optionally narrowed by more labels."""
    filters = [f"{LABEL_BATCH}={batch_id}"] + [f"reflowes.{k}={v}" for k, v in labels.items()]
    return list(client.containers.list(all=True, filters={"label": filters}, ignore_removed=True))




def engine_resources(client: docker.DockerClient) -> Resources:
    """What the engine offers: its cpus, 95% of its memory, free disk of its data root."""
    try:
        info = client.info()
    except (docker.errors.DockerException, *GONE) as e:
        raise InfraError(f"Docker engine is not answering ({e}); {START_HINT}") from None
    root = info.get("DockerRootDir") or "/"
    while not os.path.exists(root) and root != os.path.dirname(root):
        root = os.path.dirname(root)  # a remote engine's path may not exist here
    return Resources(int(info.get("NCPU") or 1), int(int(info.get("MemTotal") or 0) * MEM_FRACTION),
                     shutil.disk_usage(root).free)


def collect_zombies(client: docker.DockerClient, batch_id: str, keep: set[str],
                    keep_execs: set[str] | None = None) -> list[str]:
    """Remove every container of the batch whose alloc is not in `keep` (or, given
    `keep_execs`, whose exec is not in it); returns their names."""
    removed: list[str] = []
    for c in batch_containers(client, batch_id):
        labels = c.labels or {}
        if labels.get(LABEL_ALLOC, "") in keep and (
                keep_execs is None or labels.get(LABEL_EXEC, "") in keep_execs):
            continue
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
        removed.append(c.name)
    if removed:
        log.info("removed %d zombie container(s) of dead allocs: %s", len(removed),
                 " ".join(removed))
    return removed


class DockerPool(LocalPool):
    """Allocs on one Docker engine; AllocDied for all of them when it stops answering."""

    def __init__(self, client: docker.DockerClient, batch_id: str,
                 resources: Resources | None = None, ping_interval: float = 0.5) -> None:
        super().__init__(resources if resources is not None else engine_resources(client))
        self.client, self.batch_id, self.ping_interval = client, batch_id, ping_interval
        self.down: str | None = None  # why the engine is not answering, while it is not
        self.dead: set[str] = set()  # allocs that died here; their containers are zombies
        self.collected: list[str] = []  # names of the zombie containers removed so far
        self._last_ping = 0.0

    def restore(self, allocs: dict[str, Resources]) -> list[Event]:
        """Re-take the live allocs and remove containers of any other alloc of this batch."""
        why = ping(self.client)
        if why is not None:
            self.down = why
            return [AllocDied(alloc_id=a, reason=f"docker engine not answering: {why}")
                    for a in allocs]
        died = super().restore(allocs)
        gone = {e.alloc_id for e in died if isinstance(e, AllocDied)}
        self.dead |= gone
        self.collect(keep=set(allocs) - gone)
        return died

    def collect(self, keep: set[str] | None = None) -> list[str]:
        """Remove this batch's containers whose alloc is not in `keep` (default: not live)."""
        removed = collect_zombies(self.client, self.batch_id,
                                  set(self.allocs) if keep is None else keep)
        self.collected += removed
        return removed

    def poll(self) -> list[Event]:
        """AllocGranted as capacity allows; AllocDied for every alloc when the engine goes."""
        now = time.monotonic()
        if now - self._last_ping >= self.ping_interval:
            self._last_ping = now
            why = ping(self.client)
            if why is not None and self.down is None:
                self.down = why
                log.warning("docker engine stopped answering (%s): %d alloc(s) died", why,
                            len(self.allocs))
                for alloc_id in list(self.allocs):
                    self._events.append(AllocDied(
                        alloc_id=alloc_id, reason=f"docker engine stopped answering: {why}"))
                    self.dead.add(alloc_id)
                    self.release(alloc_id)
            elif why is None and self.down is not None:
                log.warning("docker engine answers again (was: %s)", self.down)
                self.down = None
                try:
                    self.collect()
                except (docker.errors.DockerException, *GONE) as e:
                    log.warning("zombie collection failed: %s", e)
        return super().poll()

    def _grant(self) -> None:
        if self.down is None:
            super()._grant()
