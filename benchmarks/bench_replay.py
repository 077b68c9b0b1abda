"""Replay and projections: fold speed against a raw SELECT + json.loads floor, and the time to
open a large log that has a snapshot near its end.

    python -m benchmarks.bench_replay                 # 1,000,000 events
    python -m benchmarks.bench_replay --events 50000  # quick
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from reflowes.events import model as m
from reflowes.events.log import SqliteLog
from reflowes.events.model import FileRef, RunPhase
from reflowes.events.resources import GiB, Resources
from reflowes.projections.fold import fold, snapshot

GROUP = 1000


def workload(n: int, seed: int = 7) -> Iterator[tuple[float, m.Event]]:
    """About n events of a batch: runs of 3-8 steps, some cached, OOM retries, allocs, ticks."""
    rnd = random.Random(seed)
    at = 1_700_000_000.0
    made = 0
    run_no = task_no = alloc_no = 0
    alloc = "a0"
    on_alloc = 0
    yield at, m.BatchOpened(csv="samples.csv", program="count.py", invocation=1, pid=1)
    yield at, m.SchedulerConfigured(max_alloc=Resources(64, 256 * GiB, 2000 * GiB))
    made = 2
    while made < n:
        run_no += 1
        run = f"S{run_no:07d}"
        out: list[m.Event] = [
            m.RunDeclared(run_id=run, program="count.py", digest=f"{run_no:064x}", row=run_no,
                          params={"sample": run, "reads": f"/data/{run}.fq.gz", "top": "10"}),
            m.RunPhaseChanged(run_id=run, phase=RunPhase.EVAL, tries=1),
        ]
        ran = cached = 0
        for _ in range(rnd.randint(3, 8)):
            task_no += 1
            key = f"{task_no:064x}"
            if rnd.random() < 0.2:
                out.append(m.CacheHit(run_id=run, key=key, ident="count.sort",
                                      result={"out": FileRef(key, 1234)}))
                cached += 1
                continue
            if on_alloc == 0:
                alloc_no += 1
                alloc = f"a{alloc_no}"
                req = f"q{alloc_no}"
                big = Resources(16, 64 * GiB, 500 * GiB)
                out += [m.AllocRequested(request_id=req, resources=big, minimum=big),
                        m.AllocGranted(alloc_id=alloc, request_id=req, resources=big)]
            on_alloc = (on_alloc + 1) % 50
            if on_alloc == 0:
                out.append(m.AllocReleased(alloc_id=alloc))
            task = f"t{task_no:08d}"
            res = Resources(rnd.choice((1, 2, 4)), rnd.choice((1, 2, 4)) * GiB, 0)
            out.append(m.TaskSubmitted(task_id=task, run_id=run, key=key, ident="count.sort",
                                       resources=res, image="local/busybox:1"))
            attempts = 2 if rnd.random() < 0.05 else 1
            for attempt in range(1, attempts + 1):
                ex = f"{task}.{attempt}"
                oom = attempt < attempts
                out += [
                    m.TaskAssigned(task_id=task, alloc_id=alloc, attempt=attempt, exec_id=ex,
                                   resources=res),
                    m.ExecCreated(exec_id=ex, task_id=task, alloc_id=alloc, executor="docker",
                                  handle=f"{task_no:012x}", resources=res,
                                  config={"image": "local/busybox:1", "cmd": "sort | uniq -c"}),
                    m.ExecStarted(exec_id=ex, task_id=task),
                    m.ExecExited(exec_id=ex, task_id=task, exit_code=137 if oom else 0, oom=oom,
                                 peak_mem=res.mem, duration=rnd.uniform(1, 600),
                                 result={} if oom else {"out": FileRef(key, 4321)}),
                ]
                if oom:
                    res = Resources(res.cpu, res.mem * 2, 0)
                    out.append(m.TaskRequeued(task_id=task, attempt=attempt + 1, resources=res,
                                              reason="out of memory"))
            out.append(m.TaskFinished(task_id=task, attempt=attempts, ok=True, exit_code=0,
                                      result={"out": FileRef(key, 4321)}))
            ran += 1
            if rnd.random() < 0.3:
                out.append(m.Tick())
        out += [m.RunFinished(run_id=run, ok=True, result={"counts": FileRef(key, 99)},
                              steps_run=ran, steps_cached=cached),
                m.RunPhaseChanged(run_id=run, phase=RunPhase.DONE, tries=1)]
        for ev in out[: n - made]:
            at += 0.01
            yield at, ev
        made += len(out)


def build(path: Path, n: int) -> float:
    """Write the log in groups of GROUP events; returns seconds."""
    t = time.perf_counter()
    with SqliteLog.open(path) as log:
        group: list[m.Event] = []
        last_at = 0.0
        for at, ev in workload(n):
            group.append(ev)
            last_at = at
            if len(group) == GROUP:
                log.append(group, at=last_at)
                group = []
        if group:
            log.append(group, at=last_at)
    return time.perf_counter() - t


def floor_scan(path: Path) -> int:
    """The floor: one SELECT over every event and json.loads of each body."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    loads = json.loads
    n = 0
    for _seq, _at, _kind, _stream, _v, body in conn.execute(
            "SELECT seq, at, kind, stream, v, body FROM events ORDER BY seq"):
        loads(body)
        n += 1
    conn.close()
    return n


def decode_only(path: Path) -> int:
    with SqliteLog.open(path, readonly=True) as log:
        return sum(1 for _ in log.read())


def fold_all(path: Path) -> int:
    with SqliteLog.open(path, readonly=True) as log:
        return fold(log, use_snapshot=False).seq


def open_with_snapshot(path: Path) -> int:
    with SqliteLog.open(path, readonly=True) as log:
        return fold(log).seq


def timed(fn, path: Path, reps: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Median CPU seconds over reps (the machine is shared: wall time is noisy), the result."""
    times, walls, out = [], [], 0
    for _ in range(reps):
        gc.collect()
        c, t = time.process_time(), time.perf_counter()
        out = fn(path)
        times.append(time.process_time() - c)
        walls.append(time.perf_counter() - t)
    WALL[fn.__name__] = statistics.median(walls)
    return statistics.median(times), out


WALL: dict[str, float] = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--snapshot-gap", type=int, default=1000,
                    help="events between the snapshot and the end of the log")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the log (tmp)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "log.sqlite"
        secs = build(path, args.events)
        size = path.stat().st_size
        print(f"built {args.events:,} events in {secs:.1f}s ({args.events / secs:,.0f} ev/s), "
              f"{size / 1e6:.0f} MB ({size / args.events:.0f} B/event)")
        floor, n = timed(floor_scan, path, args.reps)
        dec, _ = timed(decode_only, path, args.reps)
        fol, seq = timed(fold_all, path, args.reps)
        assert n == seq == args.events, (n, seq)
        print("CPU seconds, median of", args.reps, "(wall in brackets)")
        print(f"floor  SELECT + json.loads:        {n / floor:>10,.0f} ev/s  {floor:.2f}s "
              f"[{WALL['floor_scan']:.2f}s]")
        print(f"read   SqliteLog.read (typed):     {n / dec:>10,.0f} ev/s  {dec:.2f}s "
              f"[{WALL['decode_only']:.2f}s]  ratio {floor / dec:.2f}x floor")
        print(f"fold   read + stats/batch/manif.:  {n / fol:>10,.0f} ev/s  {fol:.2f}s "
              f"[{WALL['fold_all']:.2f}s]  ratio {floor / fol:.2f}x floor (goal >= 0.5x)")

        with SqliteLog.open(path) as log:
            t = time.perf_counter()
            p = fold(log, until=args.events - args.snapshot_gap, use_snapshot=False)
            t_fold = time.perf_counter() - t
            t = time.perf_counter()
            snapshot(log, p)
            t_snap = time.perf_counter() - t
            blob = log.load_snapshot("projections")
            assert blob is not None
        print(f"snapshot at seq {p.seq:,}: {len(blob[2]) / 1e6:.1f} MB written in {t_snap:.2f}s "
              f"({len(p.batch.runs):,} runs, {len(p.manifests.execs):,} execs)")
        opened, seq = timed(open_with_snapshot, path, args.reps)
        assert seq == args.events
        print(f"open   log + snapshot + {args.snapshot_gap:,}-event tail: {opened:.3f}s "
              f"[{WALL['open_with_snapshot']:.3f}s] (goal < 0.5s; full fold to that seq "
              f"{t_fold:.2f}s wall)")
        with SqliteLog.open(path, readonly=True) as log:
            p = fold(log)
            c = time.process_time()
            runs = len(list(p.batch.runs.values()))
            t_runs = time.process_time() - c
            c = time.process_time()
            execs = len(list(p.manifests.execs.values())) + len(list(p.stats.attempts.values()))
            t_all = time.process_time() - c
        print(f"thaw   {runs:,} finished runs (status) {t_runs:.3f}s; execs + attempts "
              f"({execs:,}, ps --all / replay --at) {t_all:.3f}s")
        full = fold_all(path)
        with SqliteLog.open(path, readonly=True) as log:
            assert fold(log) == fold(log, use_snapshot=False) and full == args.events


if __name__ == "__main__":
    main()
