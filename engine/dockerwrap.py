"""The container's side of a docker exec: its files (staging and bind mounts), the tiny sh
wrapper around the step, and the parsing of what it leaves (exit code, peak memory, OOM kills).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from docker.types import Mount
from reflowes.engine.executor import ExecSpec
from reflowes.engine.repository import Repository

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


def stage(repo: Repository, spec: ExecSpec, d: Path) -> tuple[list[Mount], dict[str, str]]:
    """Fresh `d/in/` (inputs linked in), `d/out/`, stdout, stderr, meta; the bind mounts and
    the values the command's placeholders take inside the container (/in/x, /out/y)."""
    for sub in ("in", "out"):  # leftovers of a put that crashed before creating
        shutil.rmtree(d / sub, ignore_errors=True)
        (d / sub).mkdir()
    values: dict[str, str] = dict(spec.scalars)
    for name, ref in spec.inputs.items():
        repo.materialize(ref, d / "in" / name)
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


def read_meta(path: Path) -> dict[str, int]:
    """What the wrapper recorded: rc, peak (bytes), oom_kill (count); {} if it never finished."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = max(out.get(k, 0), int(v))
    except OSError:
        pass
    return out


def tail(path: Path, lines: int = 20, limit: int = 8192) -> str:
    """The last `lines` lines of a log file (as the local executor keeps them)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            data = f.read()
    except OSError:
        return ""
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:]).decode("utf-8", "replace")


def duration(started: str | None, finished: str | None) -> float:
    """Seconds between docker's RFC 3339 nanosecond timestamps (0.0 when unknown)."""
    def parse(ts: str) -> float:
        base, _, frac = ts.rstrip("Z").partition(".")
        return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))
    try:
        return max(0.0, parse(finished or "") - parse(started or ""))
    except ValueError:
        return 0.0
