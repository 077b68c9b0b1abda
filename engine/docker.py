"""The Docker executor: each exec is one container on the engine at DOCKER_HOST (docker SDK only).

Containers are named and labelled from the batch and exec ids, so `put` and `recover` find them
again after a controller crash; a waiter thread per container reports its exit through `poll`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import attrs
import docker
import docker.errors
from docker.models.containers import Container
from docker.types import Mount
from reflowes.engine.dockerpool import (
    GONE,
    LABEL_ALLOC,
    LABEL_BATCH,
    LABEL_EXEC,
    LABEL_TASK,
    connect,
    container_name,
)
from reflowes.engine.executor import ExecSpec, render
from reflowes.engine.repository import Repository
from reflowes.events.model import Event, ExecCreated, ExecExited, ExecLost, ExecStarted, FileRef

log = logging.getLogger(__name__)

LABEL_OUTPUTS = "reflowes.outputs"  # "name:kind,..." so a harvest needs nothing but the container
CTL = "/.reflowes"  # in-container dir holding the wrapper's stdout, stderr and meta files

# PID 1 of every container: runs the step as a child (so an OOM kill usually hits the step, not
# us), then records its exit code, the cgroup's peak memory and OOM-kill counter (v1 and v2).
# Builtins only, so any image with a POSIX sh works.
WRAPPER = f"""sh -c "$1" >{CTL}/stdout 2>{CTL}/stderr; rc=$?; c=/sys/fs/cgroup
{{ echo "rc $rc"
for f in $c/memory/memory.max_usage_in_bytes $c/memory.peak; do
  if [ -r $f ]; then read v < $f; echo "peak $v"; fi; done
for f in $c/memory/memory.oom_control $c/memory.events; do
  if [ -r $f ]; then while read k v; do [ "$k" = oom_kill ] && echo "oom_kill $v"; done < $f; fi
done; }} > {CTL}/meta 2>/dev/null
exit $rc"""


@attrs.define
class _Live:
    """An exec this executor watches: its container, and whether we killed it ourselves."""

    exec_id: str
    task_id: str
    container: Container
    killed: bool = False


class DockerExecutor:
    """Runs ExecSpecs as containers; idempotent by exec id through the container's name."""

    kind = "docker"

    def __init__(self, repo: Repository, workdir: str | os.PathLike[str],
                 client: docker.DockerClient | None = None, batch_id: str = "") -> None:
        if not batch_id:
            raise ValueError("DockerExecutor needs a batch_id (it names and labels containers)")
        self.repo, self.workdir, self.batch_id = repo, Path(workdir), batch_id
        self.client = client if client is not None else connect()
        self._own_client = client is None
        self._live: dict[str, _Live] = {}
        self._outcomes: queue.Queue[tuple[str, Event | None]] = queue.Queue()
        self._pending = 0  # outcomes queued by put itself (no container), not yet polled
        self._lock = threading.Lock()  # guards _live and the repository
        self._images: set[str] = set()
        self._closed = False
        self.uid_gid = f"{os.getuid()}:{os.getgid()}"

    # ------------------------------------------------------------ the Executor contract

    def put(self, spec: ExecSpec) -> list[Event]:
        """Create and start the exec's container unless it exists; ExecCreated + ExecStarted."""
        if spec.exec_id in self._live:
            return []
        d = self.workdir / spec.exec_id
        d.mkdir(parents=True, exist_ok=True)
        # One put per exec id at a time, across controllers: the loser finds the container.
        with open(d / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._put_locked(spec, d)

    def _put_locked(self, spec: ExecSpec, d: Path) -> list[Event]:
        name = container_name(self.batch_id, spec.exec_id)
        existing = self._find(spec.exec_id)
        if existing is not None:
            return self._adopt(existing, spec.exec_id, spec.task_id)
        image = spec.image or "local/busybox:1"
        why = self._ensure_image(image)
        if why is not None:
            return self._fail_later(spec, 125, why, {"image": image})
        mounts, values = self._stage(spec, d)
        cmd = render(spec.template, values)
        res = spec.resources
        kwargs: dict[str, Any] = {
            "image": image, "command": ["sh", "-c", WRAPPER, "reflowes", cmd], "name": name,
            "labels": self._labels(spec), "mounts": mounts, "user": self.uid_gid,
            "working_dir": "/tmp", "network_mode": "host" if spec.network else "none",
            "environment": dict(spec.env), "detach": True}
        if res.mem > 0:
            kwargs.update(mem_limit=res.mem, memswap_limit=res.mem)
        if res.cpu > 0:
            kwargs["nano_cpus"] = int(res.cpu * 1e9)
        try:
            c = self.client.containers.create(**kwargs)
        except docker.errors.APIError as e:
            if e.status_code == 409:  # another put of the same exec won the race
                found = self._find(spec.exec_id)
                if found is not None:
                    return self._adopt(found, spec.exec_id, spec.task_id)
            return self._fail_later(spec, 125, f"cannot create container: {e.explanation or e}",
                                    {"image": image, "cmd": cmd})
        created = ExecCreated(
            exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
            executor=self.kind, handle=c.id, resources=res,
            config={"image": image, "cmd": cmd, "name": name,
                    "mounts": [f"{m['Source']}:{m['Target']}:{'ro' if m['ReadOnly'] else 'rw'}"
                               for m in mounts],
                    "mem_limit": res.mem, "nano_cpus": kwargs.get("nano_cpus", 0),
                    "network_mode": kwargs["network_mode"]})
        try:
            c.start()
        except docker.errors.APIError as e:
            self._remove(c)
            self._fail_later(spec, 127, f"cannot start container: {e.explanation or e}", {})
            return [created]
        self._watch(_Live(spec.exec_id, spec.task_id, c))
        return [created, ExecStarted(exec_id=spec.exec_id, task_id=spec.task_id)]

    def poll(self, timeout: float) -> list[Event]:
        """Outcomes of containers that exited (already harvested), waiting up to `timeout`."""
        out: list[Event] = []
        try:
            item = self._outcomes.get(timeout=timeout) if timeout > 0 else \
                self._outcomes.get_nowait()
        except queue.Empty:
            return out
        while True:
            exec_id, ev = item
            with self._lock:
                live = self._live.pop(exec_id, None)
                if live is None:
                    self._pending -= 1
            if ev is not None and not (live is not None and live.killed):
                out.append(ev)
            try:
                item = self._outcomes.get_nowait()
            except queue.Empty:
                return out

    def recover(self, exec_id: str, task_id: str, handle: str | None) -> list[Event]:
        """Re-attach to a running container, harvest an exited one now, or report it lost."""
        if exec_id in self._live:
            return []
        c = self._find(exec_id)
        if c is None:
            return [ExecLost(exec_id=exec_id, task_id=task_id,
                             reason=f"container {container_name(self.batch_id, exec_id)} "
                                    "not found on the engine")]
        status = c.status
        if status in ("exited", "dead"):
            return [self._harvest(c, exec_id, task_id)]
        return self._adopt(c, exec_id, task_id)

    def kill(self, exec_id: str) -> None:
        """Remove the exec's container; its outcome is dropped."""
        with self._lock:
            live = self._live.get(exec_id)
            if live is not None:
                live.killed = True
        c = live.container if live is not None else self._find(exec_id)
        if c is not None:
            self._remove(c)

    def running(self) -> int:
        """Execs in flight, counting outcomes not yet returned by poll."""
        with self._lock:
            return len(self._live) + self._pending

    def close(self) -> None:
        """Stop watching; containers keep running and are re-attached by the next controller."""
        self._closed = True
        if self._own_client:
            self.client.close()

    # ------------------------------------------------------------ staging and creation

    def _labels(self, spec: ExecSpec) -> dict[str, str]:
        return {LABEL_BATCH: self.batch_id, LABEL_EXEC: spec.exec_id, LABEL_TASK: spec.task_id,
                LABEL_ALLOC: spec.alloc_id,
                LABEL_OUTPUTS: ",".join(f"{k}:{v}" for k, v in sorted(spec.outputs.items()))}

    def _stage(self, spec: ExecSpec, d: Path) -> tuple[list[Mount], dict[str, str]]:
        """Fresh in/ (inputs linked in), out/, stdout, stderr, meta; the mounts and the values
        the command's placeholders take inside the container."""
        for sub in ("in", "out"):  # leftovers of a put that crashed before creating
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir()
        values: dict[str, str] = dict(spec.scalars)
        for name, ref in spec.inputs.items():
            self.repo.materialize(ref, d / "in" / name)
            values[name] = f"/in/{name}"
        for name, kind in spec.outputs.items():
            if kind == "dir":
                (d / "out" / name).mkdir()
            values[name] = f"/out/{name}"
        mounts = [Mount("/out", str(d / "out"), type="bind")]
        if spec.inputs:
            mounts.append(Mount("/in", str(d / "in"), type="bind", read_only=True))
        for f in ("stdout", "stderr", "meta"):
            (d / f).write_bytes(b"")
            mounts.append(Mount(f"{CTL}/{f}", str(d / f), type="bind"))
        return mounts, values

    def _ensure_image(self, image: str) -> str | None:
        """None when the image is here (pulled if need be), else why it cannot be had."""
        if image in self._images:
            return None
        try:
            self.client.images.get(image)
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
        """An exec that could not even start: ExecCreated (no handle) now, its ExecExited
        through the next poll (as the local executor does)."""
        log.warning("exec %s: %s", spec.exec_id, error)
        with self._lock:
            self._pending += 1
        self._outcomes.put((spec.exec_id, ExecExited(
            exec_id=spec.exec_id, task_id=spec.task_id, exit_code=code, error=error,
            stderr_tail=error)))
        if not config:
            return []
        return [ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                            executor=self.kind, handle="", config=config,
                            resources=spec.resources)]

    def _find(self, exec_id: str) -> Container | None:
        try:
            return self.client.containers.get(container_name(self.batch_id, exec_id))
        except docker.errors.NotFound:
            return None

    def _adopt(self, c: Container, exec_id: str, task_id: str) -> list[Event]:
        """Watch a container that already exists; start it if it never was."""
        events: list[Event] = []
        if c.status == "created":
            c.start()
            events.append(ExecStarted(exec_id=exec_id, task_id=task_id))
        self._watch(_Live(exec_id, task_id, c))
        return events

    def _remove(self, c: Container) -> None:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: removal already in progress
                raise

    # ------------------------------------------------------------ waiting and harvesting

    def _watch(self, live: _Live) -> None:
        with self._lock:
            self._live[live.exec_id] = live
        threading.Thread(target=self._wait, args=(live,), daemon=True,
                         name=f"wait-{live.exec_id[:12]}").start()

    def _wait(self, live: _Live) -> None:
        """Block until the container exits, then harvest it into an outcome."""
        ev: Event | None
        try:
            self.client.api.wait(live.container.id, timeout=None)
        except docker.errors.NotFound:
            ev = None if live.killed else ExecLost(
                exec_id=live.exec_id, task_id=live.task_id, reason="container removed by someone")
        except (docker.errors.DockerException, *GONE, OSError) as e:
            # The connection broke: the engine stopped or restarted (without live-restore the
            # container died with it). Whatever state it is in now, this attempt has no answer.
            ev = None if (live.killed or self._closed) else ExecLost(
                exec_id=live.exec_id, task_id=live.task_id,
                reason=f"docker engine connection lost while waiting: {type(e).__name__}")
        else:
            if self._closed:  # the next controller harvests it (recover)
                return
            try:
                ev = None if live.killed else self._harvest(
                    live.container, live.exec_id, live.task_id)
            except (docker.errors.DockerException, *GONE, OSError) as e:
                ev = ExecLost(exec_id=live.exec_id, task_id=live.task_id,
                              reason=f"harvest failed: {type(e).__name__}: {e}")
        if not self._closed:
            self._outcomes.put((live.exec_id, ev))

    def _harvest(self, c: Container, exec_id: str, task_id: str) -> Event:
        """ExecExited for an exited container: outputs hashed in, logs kept, container removed."""
        c.reload()
        state, labels = c.attrs["State"], c.attrs["Config"]["Labels"] or {}
        mem_limit = int(c.attrs["HostConfig"].get("Memory") or 0)
        d = self.workdir / exec_id
        meta = _read_meta(d / "meta")
        code = int(state.get("ExitCode", -1))
        oom_kills = meta.get("oom_kill", 0)
        oom = code != 0 and (bool(state.get("OOMKilled")) or oom_kills > 0
                             or (code == 137 and mem_limit > 0))  # killed execs are never harvested
        stderr_tail = _tail(d / "stderr")
        result: dict[str, FileRef] = {}
        error: str | None = None
        if code == 0:
            with self._lock:
                result, error = self._collect(d / "out", labels.get(LABEL_OUTPUTS, ""))
        elif oom:
            error = (f"exited with status {code} (out of memory: limit {mem_limit} bytes, "
                     f"peak {meta.get('peak', 0)})")
        else:
            error = f"exited with status {code}" + (
                f": {state['Error']}" if state.get("Error") else "")
        self._remove(c)
        shutil.rmtree(d / "in", ignore_errors=True)
        shutil.rmtree(d / "out", ignore_errors=True)
        return ExecExited(exec_id=exec_id, task_id=task_id, exit_code=code, oom=oom,
                          peak_mem=meta.get("peak", 0), result=result, error=error,
                          stderr_tail=stderr_tail,
                          duration=_duration(state.get("StartedAt"), state.get("FinishedAt")))

    def _collect(self, out: Path, spec: str) -> tuple[dict[str, FileRef], str | None]:
        result: dict[str, FileRef] = {}
        for item in filter(None, spec.split(",")):
            name, _, kind = item.partition(":")
            p = out / name
            if kind == "dir" and p.is_dir():
                result[name] = self.repo.put_dir(p, move=True)
            elif kind != "dir" and p.is_file():
                result[name] = self.repo.put_file(p, move=True)
            else:
                return {}, f"step produced no declared output {name!r} ({kind} at /out/{name})"
        return result, None


def _read_meta(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = max(out.get(k, 0), int(v))
    except OSError:
        pass
    return out


def _tail(path: Path, lines: int = 20, limit: int = 8192) -> str:
    """The last `lines` lines of a log file (as the local executor keeps them)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            data = f.read()
    except OSError:
        return ""
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:]).decode("utf-8", "replace")


def _duration(started: str | None, finished: str | None) -> float:
    """Seconds between docker's RFC 3339 nanosecond timestamps (0.0 when unknown)."""
    def parse(ts: str) -> float:
        from datetime import datetime

        base, _, frac = ts.rstrip("Z").partition(".")
        t = datetime.fromisoformat(base + "+00:00").timestamp()
        return t + float("0." + (frac or "0"))
    try:
        return max(0.0, parse(finished or "") - parse(started or ""))
    except ValueError:
        return 0.0

