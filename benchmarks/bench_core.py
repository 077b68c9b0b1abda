"""Throughput and memory of the pure scheduler core: events/s through step() at 1k, 10k, 100k tasks.

A simulated world (seeded; the randomness lives here, never in the core) submits every task,
grants requested allocs (at most 1,000), starts and exits execs (mostly 0, some OOM, exit 75,
failures), kills an alloc now and then, and ticks at the core's deadline. The facts it fed are
then stepped through the core again with nothing else in the loop (the core is deterministic:
same steps), timed by process CPU time (other processes on a loaded machine do not count) and
by wall time; a third pass under tracemalloc measures the state's memory. Each size runs in its
own process. Usage: python -m benchmarks.bench_core [--sizes 1000,10000,100000] [--default-gc]
(REFLOWES_PURE=1 in the environment: the pure-Python core instead of the compiled one)
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import random
import resource
import subprocess
import sys
import time
import tracemalloc

from reflowes.engine import COMPILED, core, gcpolicy
from reflowes.events.model import (
    AllocDied,
    AllocGranted,
    AllocReleased,
    AllocRequested,
    Event,
    ExecExited,
    ExecStarted,
    SchedulerConfigured,
    TaskAssigned,
    TaskSubmitted,
    Tick,
)
from reflowes.events.resources import GiB, Resources

MAX_ALLOCS = 1000
CONFIG = SchedulerConfigured(max_alloc=Resources(16, 64 * GiB, 1 << 40))
SHAPES = [Resources(c, m * GiB) for c in (1, 2, 4) for m in (1, 2, 4, 8)]


def simulate(n_tasks: int, seed: int = 1) -> tuple[list[tuple[Event, float]], dict[str, float]]:
    """Drive the core through a whole batch of n_tasks; returns the facts fed and counts."""
    rnd = random.Random(seed)
    state = core.initial()
    fed: list[tuple[Event, float]] = []
    events = decisions = 0
    world: list[tuple[float, int, Event]] = []  # (time, tie, fact) the world will report
    tie = 0
    live: set[str] = set()
    granted = 0

    def later(at: float, ev: Event) -> None:
        nonlocal tie
        tie += 1
        heapq.heappush(world, (at, tie, ev))

    def feed(ev: Event, at: float) -> None:
        nonlocal state, events, decisions, granted
        state, made = core.step(state, ev, at)
        fed.append((ev, at))
        events += 1
        decisions += len(made)
        for d in made:
            if isinstance(d, TaskAssigned):
                later(at + 0.1, ExecStarted(exec_id=d.exec_id, task_id=d.task_id))
                r = rnd.random()
                code, oom = (137, True) if r < 0.03 else (75, False) if r < 0.05 else (
                    (1, False) if r < 0.07 else (0, False))
                later(at + rnd.uniform(10, 100), ExecExited(
                    exec_id=d.exec_id, task_id=d.task_id, exit_code=code, oom=oom,
                    peak_mem=int(d.resources.mem * 1.2)))
            elif isinstance(d, AllocRequested) and granted < MAX_ALLOCS:
                granted += 1
                later(at + 1.0, AllocGranted(alloc_id=f"a{granted}", request_id=d.request_id,
                                             resources=d.resources))
            elif isinstance(d, AllocReleased):
                live.discard(d.alloc_id)

    feed(CONFIG, 0.0)
    for i in range(n_tasks):
        feed(TaskSubmitted(task_id=f"t{i}", run_id=f"run{i // 10}", key=f"k{i}", ident="step",
                           resources=rnd.choice(SHAPES), priority=rnd.choice((0, 0, 1, 2))),
             i * 1e-6)
    exits = 0
    now = n_tasks * 1e-6
    while world or core.deadline(state) is not None:
        dl = core.deadline(state)
        if world and (dl is None or world[0][0] <= dl):
            at, _, ev = heapq.heappop(world)
        else:
            at, ev = max(dl or now, now), Tick()
        now = at
        if isinstance(ev, (ExecStarted, ExecExited)) and ev.exec_id not in state.execs:
            continue  # its alloc died: the world never reports it
        if isinstance(ev, AllocGranted):
            live.add(ev.alloc_id)
        if isinstance(ev, ExecExited):
            exits += 1
            if exits % 5000 == 0 and live:
                victim = sorted(live)[rnd.randrange(len(live))]
                live.discard(victim)
                feed(AllocDied(alloc_id=victim, reason="keepalive failed"), at)
        feed(ev, at)
    counts = core.task_counts(state)
    return fed, {"tasks": n_tasks, "events": events, "decisions": decisions,
                 "done": counts[core.TaskState.DONE], "failed": counts[core.TaskState.FAILED],
                 "allocs": granted}


def measure(n_tasks: int, default_gc: bool = False) -> dict[str, float]:
    """Simulate, then time the same steps alone (CPU and wall), then their memory.

    The collector runs under the engine's policy (engine/gcpolicy.py, what `reflowes` sets),
    or CPython's default thresholds with default_gc.
    """
    if not default_gc:
        gcpolicy.tune()
    fed, out = simulate(n_tasks)
    gc.collect()
    # The floor is timed in short bursts between chunks of the timed pass, so it sees the same
    # load as the steps do; the median of the bursts is the reference rate.
    rates: list[float] = []
    cpu = wall = 0.0
    state = core.initial()
    step = core.step
    chunk = max(100, len(fed) // 60)
    for lo in range(0, len(fed), chunk):
        rates.append(reference_rate(20_000, 1))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for ev, at in fed[lo:lo + chunk]:
            state, _ = step(state, ev, at)
        cpu += time.process_time() - cpu0
        wall += time.perf_counter() - wall0
    out["seconds"], out["wall"] = cpu, wall
    out["ref_rate"] = sorted(rates)[len(rates) // 2]
    del state
    gc.collect()
    tracemalloc.start()
    state = core.replay(fed)
    out["state_mib"] = tracemalloc.get_traced_memory()[0] / (1 << 20)
    tracemalloc.stop()
    del state
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def reference_rate(n: int = 200_000, repeat: int = 5) -> float:
    """A floor for this machine right now: plain dict stores per CPU second (best of repeat)."""
    d = dict.fromkeys(range(n), 0)  # overwrite, never grow: the same work every burst
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for i in range(n):
            d[i] = i
        best = min(best, time.process_time() - t0)
    return n / max(best, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--default-gc", action="store_true",
                    help="CPython's default collector thresholds instead of the engine's policy")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.default_gc)))
        return
    floor_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_core", "--one", str(n)]
                             + ["--default-gc"] * args.default_gc,
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
    def units(r: dict[str, float]) -> float:  # CPU cost of an event in floor operations
        return r["seconds"] / r["events"] * r["ref_rate"]

    base = units(rows[0])
    print(f"floor: interpreter + imports peak RSS {floor_rss:.0f} MiB; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus; 'ops' = plain dict stores, timed "
          "in bursts between chunks of the timed steps (median); collector: "
          + ("CPython's default thresholds" if args.default_gc else
             "the engine's policy (engine/gcpolicy.py)"))
    print("core: " + ("compiled by mypyc (setup.py)" if COMPILED else
                      "pure Python (REFLOWES_PURE=1, or not built with mypyc)"))
    print(f"{'tasks':>7} {'allocs':>6} {'events':>7} {'decided':>7} {'done':>6} {'failed':>6} "
          f"{'ev/CPU-s':>8} {'ev/wall-s':>9} {'us/ev':>6} {'Mops/s':>6} {'ops/ev':>6} "
          f"{'ratio':>5} {'CPU ratio':>9} {'state':>9} {'maxRSS':>8}")
    for r in rows:
        per = r["seconds"] / r["events"]
        print(f"{r['tasks']:>7} {r['allocs']:>6} {r['events']:>7} {r['decisions']:>7} "
              f"{r['done']:>6} {r['failed']:>6} {r['events'] / r['seconds']:>8.0f} "
              f"{r['events'] / r['wall']:>9.0f} {per * 1e6:>6.1f} {r['ref_rate'] / 1e6:>6.1f} "
              f"{units(r):>6.0f} {units(r) / base:>5.2f} "
              f"{per / (rows[0]['seconds'] / rows[0]['events']):>9.2f} {r['state_mib']:>5.1f} MiB "
              f"{r['maxrss_mib']:>4.0f} MiB")
    last = rows[-1]
    rate = last["events"] / last["seconds"]
    ratio = units(last) / base
    print(f"goal: >= 50000 events/CPU-s at {last['tasks']} tasks: {rate:.0f} "
          f"({'met' if rate >= 50000 else 'NOT met'}; at 25 Mops/s, an unloaded machine's "
          f"floor, that cost is {25e6 / units(last):.0f} events/s); cost per event vs "
          f"{rows[0]['tasks']} tasks, in floor ops, <= 1.5x: {ratio:.2f}x "
          f"({'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
