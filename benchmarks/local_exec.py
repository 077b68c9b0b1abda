"""Per-exec overhead of the local executor (put + poll + staging + hashing) against floors.

Runs N no-op steps `echo i > {out}` two at a time through LocalExecutor, and the same
commands through `xargs -P 2 sh -c` and a plain two-at-a-time subprocess loop, in this run.
Also times Cache.get_many over 10*N keys. Usage: python -m benchmarks.local_exec [N [REPEATS]]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reflowes.engine.cache import Cache
from reflowes.engine.executor import ExecSpec
from reflowes.engine.local import LocalExecutor
from reflowes.engine.repository import Repository

PARALLEL = 2


def cpu_ms(f: Callable[..., float], *args: object) -> tuple[float, float]:
    """(wall seconds, this process's cpu ms per exec): cpu is robust to a busy machine."""
    c = time.process_time()
    wall = f(*args)
    return wall, (time.process_time() - c) * 1e3 / float(args[0])  # type: ignore[arg-type]


def bench_xargs(n: int, d: Path) -> float:
    d.mkdir()
    script = f"echo $1 > {d}/$1.txt"
    data = "".join(f"{i}\n" for i in range(n)).encode()
    t = time.perf_counter()
    subprocess.run(["xargs", "-P", str(PARALLEL), "-n", "1", "sh", "-c", script, "sh"],
                   input=data, check=True)
    return time.perf_counter() - t


def bench_popen(n: int, d: Path) -> float:
    d.mkdir()
    t = time.perf_counter()
    live: list[subprocess.Popen[bytes]] = []
    for i in range(n):
        if len(live) >= PARALLEL:
            live.pop(0).wait()
        live.append(subprocess.Popen(["/bin/sh", "-c", f"echo {i} > {d}/{i}.txt"]))
    for p in live:
        p.wait()
    return time.perf_counter() - t


def bench_executor(n: int, d: Path, input_ref: bool = False, memory: str = "auto") -> float:
    repo = Repository(d / "repo")
    ex = LocalExecutor(repo, d / "execs", memory=memory)
    inp = repo.put_bytes(b"input\n")
    t = time.perf_counter()
    done = 0
    i = 0
    while done < n:
        while i < n and ex.running() < PARALLEL:
            inputs = {"src": inp} if input_ref else {}
            ex.put(ExecSpec(exec_id=f"e{i}", task_id=f"t{i}", alloc_id="a1",
                            template="echo {i} > {out}", scalars={"i": str(i)},
                            inputs=inputs, outputs={"out": "file"}))
            i += 1
        for ev in ex.poll(1.0):
            assert getattr(ev, "exit_code", 0) == 0 and getattr(ev, "error", None) is None, ev
            done += 1
    elapsed = time.perf_counter() - t
    ex.close()
    return elapsed


def bench_cache(n: int, d: Path) -> tuple[float, float]:
    repo = Repository(d / "repo")
    cache = Cache(d / "repo")
    refs = {f"key{i}": {"out": repo.put_bytes(f"{i}\n".encode())} for i in range(n)}
    t = time.perf_counter()
    cache.put_many(refs)
    put = time.perf_counter() - t
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        hits = cache.get_many(list(refs))
        best = min(best, time.perf_counter() - t)
        assert len(hits) == n
    return put, best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    base = Path(tempfile.mkdtemp(prefix="reflowes-bench-"))
    variants = {
        "xargs -P 2 sh -c (floor)": lambda d: (bench_xargs(n, d), 0.0),
        "subprocess loop": lambda d: cpu_ms(bench_popen, n, d),
        "LocalExecutor (rlimit)": lambda d: cpu_ms(bench_executor, n, d, False, "rlimit"),
        "LocalExecutor (auto: cgroup if any)": lambda d: cpu_ms(bench_executor, n, d, False,
                                                                "auto"),
        "LocalExecutor (rlimit) + 1 input": lambda d: cpu_ms(bench_executor, n, d, True,
                                                             "rlimit"),
    }
    best: dict[str, tuple[float, float]] = {}
    try:
        print(f"{n} no-op execs, {PARALLEL} at a time, {os.cpu_count()} cpus, "
              f"best of {reps} interleaved runs")
        for r in range(reps):
            for i, (name, run) in enumerate(variants.items()):
                wall, cpu = run(base / f"{r}-{i}")
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
        floor = best["xargs -P 2 sh -c (floor)"][0]
        for name, (wall, cpu) in best.items():
            extra = f"  controller cpu {cpu:.3f} ms/exec" if cpu else ""
            print(f"  {name:36s} {wall:7.3f} s  {wall / n * 1e3:6.3f} ms/exec  "
                  f"x{wall / floor:5.2f} floor{extra}")
        (pw, pc), (ew, ec) = best["subprocess loop"], best["LocalExecutor (rlimit)"]
        print(f"  executor (rlimit) overhead vs subprocess loop: wall "
              f"{(ew - pw) / n * 1e3:+.3f} ms/exec, controller cpu {ec - pc:+.3f} ms/exec")
        put, get = bench_cache(n * 10, base / "cache")
        print(f"cache: put_many {n * 10} keys {put * 1e3:.1f} ms; "
              f"get_many {n * 10} keys (best of 5) {get * 1e3:.1f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
