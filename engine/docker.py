"""The Docker executor: each exec is one container on the engine at DOCKER_HOST (docker SDK only).

Containers are named and labelled from the batch and exec ids, so `put` and `recover` find them
again after a controller crash; a thread per container starts it, waits, and harvests its exit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import docker
import docker.errors
from reflowes.engine.dockerpool import (
    GONE,
    LABEL_ALLOC,
    LABEL_BATCH,
    LABEL_EXEC,
    LABEL_TASK,
    collect_zombies,
    connect,
    container_name,
    ping,
)
from reflowes.engine.dockerwrap import WRAPPER, read_meta, stage, tail
from reflowes.engine.dockerwrap import duration as duration_of
from reflowes.engine.executor import ExecSpec, render
from reflowes.engine.repository import Repository, RepositoryError
from reflowes.events.model import Event, ExecCreated, ExecExited, ExecLost, ExecStarted, FileRef

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "local/busybox:1"
LOST_WAIT = 30.0  # seconds an exec that met an absent engine waits before it is reported lost
LABEL_OUTPUTS = "reflowes.outputs"  # "name:kind,..." so a harvest needs nothing but the container
@attrs.define
class _Live:
    """An exec this executor watches, with what its harvest needs."""

    exec_id: str
    task_id: str
    cid: str
    outputs: str  # the LABEL_OUTPUTS value
    mem_limit: int
    start: bool  # the container still has to be started (by the watcher)
    killed: bool = False


class DockerExecutor:
    """Runs ExecSpecs as containers; idempotent by exec id through the container's name.

    `put` creates the container and returns ExecCreated; ExecStarted and the outcome
    (ExecExited/ExecLost) come through `poll`, in that order, so `put` never waits on the
    engine's slow part (a container start costs 0.3-0.7 s here, mostly its network namespace).
    """

    kind = "docker"

    def __init__(self, repo: Repository, workdir: str | os.PathLike[str],
                 client: docker.DockerClient | None = None, batch_id: str = "") -> None:
        if not batch_id:
            raise ValueError("DockerExecutor needs a batch_id (it names and labels containers)")
        self.repo, self.workdir, self.batch_id = repo, Path(workdir), batch_id
        self.client = client if client is not None else connect()
        self.api = self.client.api
        self._own_client = client is None
        self._live: dict[str, _Live] = {}
        self._queue: queue.Queue[tuple[str, Event | None, bool]] = queue.Queue()
        self._pending = 0  # failures queued by put itself (no container), not yet polled
        self._lock = threading.Lock()  # guards _live, _pending and the repository
        self._images: set[str] = set()
        self._closed = False
        self._cleanups: list[threading.Thread] = []
        self.uid_gid = f"{os.getuid()}:{os.getgid()}"

    # ------------------------------------------------------------ the Executor contract

    def put(self, spec: ExecSpec) -> list[Event]:
        """Create the exec's container (started by its watcher) unless it exists."""
        if spec.exec_id in self._live:
            return []
        d = self.workdir / spec.exec_id
        d.mkdir(parents=True, exist_ok=True)
        # One put per exec id at a time, across controllers: the loser finds the container.
        with open(d / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if (d / "meta").exists():  # staged by an earlier put, which may have created it
                    found = self._inspect(spec.exec_id)
                    if found is not None:
                        return self._adopt(found, spec.exec_id, spec.task_id)
                return self._create(spec, d)
            except GONE as e:
                return self._lost_later(spec, f"{type(e).__name__}: {e}")

    def poll(self, timeout: float) -> list[Event]:
        """ExecStarted and outcomes (harvested already), waiting up to `timeout` for the first."""
        out: list[Event] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return out
        while True:
            exec_id, ev, final = item
            with self._lock:
                live = self._live.pop(exec_id, None) if final else self._live.get(exec_id)
                if final and live is None:
                    self._pending -= 1
            if ev is not None and not (live is not None and live.killed):
                out.append(ev)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out

    def recover(self, exec_id: str, task_id: str, handle: str | None) -> list[Event]:
        """Re-attach to a running container, harvest an exited one now, or report it lost."""
        if exec_id in self._live:
            return []
        attrs_ = self._inspect(exec_id)
        if attrs_ is None:
            return [ExecLost(exec_id=exec_id, task_id=task_id,
                             reason=f"container {container_name(self.batch_id, exec_id)} "
                                    "not found on the engine")]
        if attrs_["State"]["Status"] in ("exited", "dead"):
            live = _live_of(attrs_, exec_id, task_id)
            return [self._harvest(live, attrs_["State"], None)]
        return self._adopt(attrs_, exec_id, task_id)

    def kill(self, exec_id: str) -> None:
        """Remove the exec's container; nothing more is reported for it."""
        with self._lock:
            live = self._live.get(exec_id)
            if live is not None:
                live.killed = True
        self._remove(live.cid if live is not None else container_name(self.batch_id, exec_id))

    def running(self) -> int:
        """Execs in flight, counting outcomes not yet returned by poll."""
        with self._lock:
            return len(self._live) + self._pending

    def collect(self, live_allocs: set[str], open_execs: set[str] | None = None) -> list[str]:
        """Zombie collection at a controller's start (before `recover`): remove this batch's
        containers whose alloc is not live, or whose exec is not open (its outcome is already
        in the log); returns their names."""
        return collect_zombies(self.client, self.batch_id, set(live_allocs),
                               None if open_execs is None else set(open_execs))

    def close(self) -> None:
        """Stop watching; containers keep running and are re-attached by the next controller."""
        self._closed = True
        deadline = time.monotonic() + 5  # removals of lost execs' containers, if quick
        for t in self._cleanups:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._own_client:
            self.client.close()

    # ------------------------------------------------------------ creation

    def _create(self, spec: ExecSpec, d: Path) -> list[Event]:
        image = spec.image or DEFAULT_IMAGE
        why = self._ensure_image(image)
        if why is not None:
            return self._fail_later(spec, 125, why, {"image": image})
        try:
            mounts, values = stage(self.repo, spec, d)
        except RepositoryError as e:
            return self._fail_later(spec, 125, f"cannot stage inputs: {e}", {"image": image})
        try:
            cmd = render(spec.template, values)
        except (KeyError, IndexError, ValueError) as e:
            return self._fail_later(spec, 125, f"cannot render the command: {e!r}",
                                    {"image": image})
        res, name, labels = spec.resources, container_name(self.batch_id, spec.exec_id), {
            LABEL_BATCH: self.batch_id, LABEL_EXEC: spec.exec_id, LABEL_TASK: spec.task_id,
            LABEL_ALLOC: spec.alloc_id,
            LABEL_OUTPUTS: ",".join(f"{k}:{v}" for k, v in sorted(spec.outputs.items()))}
        limits: dict[str, Any] = {}
        if res.mem > 0:
            limits.update(mem_limit=res.mem, memswap_limit=res.mem)
        if res.cpu > 0:
            limits["nano_cpus"] = int(res.cpu * 1e9)
        network = "host" if spec.network else "none"
        host_config = self.api.create_host_config(mounts=mounts, network_mode=network, **limits)
        kwargs: dict[str, Any] = {
            "image": image, "command": ["sh", "-c", WRAPPER, "reflowes", cmd], "name": name,
            "labels": labels, "user": self.uid_gid, "working_dir": "/tmp",
            "environment": dict(spec.env), "host_config": host_config,
            # Our PID 1 ignores SIGTERM: make `docker stop` and engine shutdowns quick.
            "stop_timeout": 2}
        try:
            cid = self.api.create_container(**kwargs)["Id"]
        except docker.errors.APIError as e:
            if e.status_code != 409:
                return self._fail_later(spec, 125, f"cannot create container: {e.explanation}",
                                        {"image": image, "cmd": cmd})
            # A stale container of this name whose exec dir is gone (e.g. a reset batch): its
            # mounts point nowhere, so it can only fail; replace it.
            self._remove(name)
            cid = self.api.create_container(**kwargs)["Id"]
        self._watch(_Live(spec.exec_id, spec.task_id, cid, labels[LABEL_OUTPUTS], res.mem, True))
        return [ExecCreated(
            exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
            executor=self.kind, handle=cid, resources=res,
            config={"image": image, "cmd": cmd, "name": name, "network_mode": network,
                    "mounts": [f"{m['Source']}:{m['Target']}:{'ro' if m['ReadOnly'] else 'rw'}"
                               for m in mounts],
                    "mem_limit": res.mem, "nano_cpus": limits.get("nano_cpus", 0)})]

    def _ensure_image(self, image: str) -> str | None:
        """None when the image is here (pulled if need be), else why it cannot be had."""
        if image in self._images:
            return None
        try:
            self.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            try:
                self.client.images.pull(image)
            except (docker.errors.APIError, *GONE) as e:
                why = getattr(e, "explanation", None) or str(e)
                return f"image {image!r} not found locally and cannot be pulled: {why}"
        self._images.add(image)
        return None

    def _fail_later(self, spec: ExecSpec, code: int, error: str,
                    config: dict[str, Any]) -> list[Event]:
        """An exec that could not even be created: ExecCreated (no handle) now, its ExecExited
        through the next poll (as the local executor does)."""
        log.warning("exec %s: %s", spec.exec_id, error)
        with self._lock:
            self._pending += 1
        self._queue.put((spec.exec_id, ExecExited(
            exec_id=spec.exec_id, task_id=spec.task_id, exit_code=code, error=error,
            stderr_tail=error), True))
        return [ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                            executor=self.kind, handle="", config=config,
                            resources=spec.resources)]

    def _lost_later(self, spec: ExecSpec, why: str) -> list[Event]:
        """The engine is away: ExecLost through poll once it answers again (or after
        LOST_WAIT seconds), so the retry it causes does not spin while the engine restarts."""
        log.warning("exec %s: docker engine not answering: %s", spec.exec_id, why)
        with self._lock:
            self._pending += 1

        def later() -> None:
            deadline = time.monotonic() + LOST_WAIT
            while ping(self.client, 1.0) is not None and time.monotonic() < deadline:
                time.sleep(0.25)
            self._queue.put((spec.exec_id, ExecLost(
                exec_id=spec.exec_id, task_id=spec.task_id,
                reason=f"docker engine not answering when creating the container: {why}"), True))

        threading.Thread(target=later, daemon=True).start()
        return [ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                            executor=self.kind, handle="", config={"image": spec.image},
                            resources=spec.resources)]

    def _inspect(self, exec_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.inspect_container(
                container_name(self.batch_id, exec_id))
            return found
        except docker.errors.NotFound:
            return None

    def _adopt(self, attrs_: dict[str, Any], exec_id: str, task_id: str) -> list[Event]:
        """Watch a container that already exists (started by the watcher if it never was)."""
        live = _live_of(attrs_, exec_id, task_id)
        live.start = attrs_["State"]["Status"] == "created"
        self._watch(live)
        return []

    def _remove(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: removal already in progress
                raise

    # ------------------------------------------------------------ watching and harvesting

    def _watch(self, live: _Live) -> None:
        with self._lock:
            self._live[live.exec_id] = live
        threading.Thread(target=self._run, args=(live,), daemon=True,
                         name=f"docker-{live.exec_id[:12]}").start()

    def _run(self, live: _Live) -> None:
        """Start the container if need be, wait for its exit, harvest it into an outcome."""
        ev: Event | None
        t0 = time.monotonic()
        try:
            if live.start:
                try:
                    self.api.start(live.cid)
                except docker.errors.APIError as e:
                    if e.status_code == 404:
                        raise
                    self._remove(live.cid)
                    self._emit(live, ExecExited(
                        exec_id=live.exec_id, task_id=live.task_id, exit_code=127,
                        error=f"cannot start container: {e.explanation}"), True)
                    return
                t0 = time.monotonic()
                self._emit(live, ExecStarted(exec_id=live.exec_id, task_id=live.task_id), False)
            code = int(self.api.wait(live.cid, timeout=None)["StatusCode"])
        except docker.errors.NotFound:
            self._emit(live, ExecLost(exec_id=live.exec_id, task_id=live.task_id,
                                      reason="container removed by someone else"), True)
            return
        except (docker.errors.DockerException, *GONE, OSError) as e:
            # The connection broke: the engine stopped or restarted (without live-restore the
            # container died with it). Whatever state it is in now, this attempt has no answer.
            self._emit(live, ExecLost(
                exec_id=live.exec_id, task_id=live.task_id,
                reason=f"docker engine connection lost while waiting: {type(e).__name__}"), True)
            self._remove_when_back(live.cid)
            return
        if self._closed or live.killed:  # closed: the next controller harvests it (recover)
            self._emit(live, None, True)
            return
        try:
            ev = self._harvest(live, {"ExitCode": code}, time.monotonic() - t0)
        except (docker.errors.DockerException, *GONE, OSError) as e:
            ev = ExecLost(exec_id=live.exec_id, task_id=live.task_id,
                          reason=f"harvest failed: {type(e).__name__}: {e}")
            self._remove_when_back(live.cid)
        self._emit(live, ev, True)

    def _remove_when_back(self, cid: str) -> None:
        """The container of a lost exec goes once the engine answers again (within a while)."""
        def remove() -> None:
            deadline = time.monotonic() + 4 * LOST_WAIT
            while ping(self.client, 1.0) is not None and time.monotonic() < deadline:
                time.sleep(0.25)
            try:
                self._remove(cid)
            except (docker.errors.DockerException, *GONE, OSError) as e:
                log.warning("cannot remove container %s of a lost exec: %s", cid[:12], e)

        t = threading.Thread(target=remove, daemon=True, name=f"docker-rm-{cid[:12]}")
        self._cleanups.append(t)
        t.start()

    def _emit(self, live: _Live, ev: Event | None, final: bool) -> None:
        if not self._closed:
            self._queue.put((live.exec_id, None if live.killed else ev, final))

    def _harvest(self, live: _Live, state: dict[str, Any], duration: float | None) -> Event:
        """ExecExited for an exited container: outputs hashed in, logs kept, container removed.
        `state` is docker's State (or just the exit code, inspected here when it may matter)."""
        d = self.workdir / live.exec_id
        meta = read_meta(d / "meta")
        code = int(state["ExitCode"])
        if (code != 0 or "rc" not in meta) and "OOMKilled" not in state:
            state = self.api.inspect_container(live.cid)["State"]
        if duration is None:
            duration = duration_of(state.get("StartedAt"), state.get("FinishedAt"))
        # As Reflow does, any OOM kill in the container counts, even one a pipeline hid from the
        # exit status (its output is likely truncated); a SIGKILLed step under a limit is a
        # probable OOM (docker's flag and the cgroup counter are racy under load).
        oom = (bool(state.get("OOMKilled")) or meta.get("oom_kill", 0) > 0
               or (code == 137 and live.mem_limit > 0 and "rc" in meta))
        peak = meta.get("peak", 0)
        if code != 0 and "rc" not in meta and not oom:
            # PID 1 (our wrapper) never finished and no OOM was seen: the container was stopped
            # or killed from outside (docker stop/kill, an engine shutdown) - no answer.
            self._remove(live.cid)
            return ExecLost(exec_id=live.exec_id, task_id=live.task_id,
                            reason=f"container stopped from outside (exit {code}) before the "
                                   f"step finished: {state.get('Error') or 'no error recorded'}")
        result: dict[str, FileRef] = {}
        error: str | None = None
        if oom:
            error = (f"exited with status {code} (out of memory: limit {live.mem_limit} bytes, "
                     f"peak {peak}, {meta.get('oom_kill', 0)} process(es) killed)")
        elif code == 0:
            with self._lock:
                result, error = self._collect(d / "out", live.outputs)
        else:
            error = f"exited with status {code}" + (
                f": {state['Error']}" if state.get("Error") else "")
        self._remove(live.cid)
        shutil.rmtree(d / "in", ignore_errors=True)
        shutil.rmtree(d / "out", ignore_errors=True)
        return ExecExited(exec_id=live.exec_id, task_id=live.task_id, exit_code=code, oom=oom,
                          peak_mem=peak, result=result, error=error,
                          stderr_tail=tail(d / "stderr"), duration=duration)

    def _collect(self, out: Path, outputs: str) -> tuple[dict[str, FileRef], str | None]:
        result: dict[str, FileRef] = {}
        for item in filter(None, outputs.split(",")):
            name, _, kind = item.partition(":")
            p = out / name
            if kind == "dir" and p.is_dir():
                result[name] = self.repo.put_dir(p, move=True)
            elif kind != "dir" and p.is_file():
                result[name] = self.repo.put_file(p, move=True)
            else:
                return {}, f"step produced no declared output {name!r} ({kind} at /out/{name})"
        return result, None


def _live_of(attrs_: dict[str, Any], exec_id: str, task_id: str) -> _Live:
    labels = attrs_["Config"].get("Labels") or {}
    return _Live(exec_id, task_id, attrs_["Id"], labels.get(LABEL_OUTPUTS, ""),
                 int(attrs_["HostConfig"].get("Memory") or 0), False)
