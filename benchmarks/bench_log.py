"""Event log throughput against raw sqlite3 floors measured in the same run.

    python -m benchmarks.bench_log                   # appends at groups 1/100/1000, 1M-event scan
    python -m benchmarks.bench_log --events 100000   # a smaller scan log

Rows marked NORMAL: append(durable=False) beside a floor at synchronous=NORMAL (no fsync).

Appends: SqliteLog.append (synchronous=FULL) beside a stdlib loop of INSERTs of pre-serialized
200-byte bodies, BEGIN...COMMIT per group, same columns. Scan: raw SELECT + json.loads (floor)
beside SqliteLog.read() (typed msgspec decode into attrs events) and read_raw().
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

from reflowes.events import codec
from reflowes.events import model as m
from reflowes.events.log import SqliteLog
from reflowes.events.resources import GiB, Resources

ONE = Resources(1, 1 * GiB, 0)
BIG = Resources(8, 32 * GiB, 100 * GiB)
FLOOR_SQL = """CREATE TABLE events (seq INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL,
    stream TEXT NOT NULL, v INTEGER NOT NULL, body TEXT NOT NULL)"""


def batch_events() -> Iterator[m.Event]:
    """An endless, realistic stream: runs declared, tasks submitted, assigned, run, finished."""
    run = 0
    while True:
        run += 1
        rid = f"sample-{run:06d}"
        yield m.RunDeclared(run_id=rid, program="pipelines/align.py", digest=f"{run:064x}",
                            params={"sample": rid, "fastq_1": f"/data/{rid}_R1.fastq.gz"}, row=run)
        yield m.RunPhaseChanged(run_id=rid, phase=m.RunPhase.EVAL)
        for step in range(3):
            tid = f"{run:08x}{step:02x}" + "ab" * 10
            eid = f"{tid}-1"
            yield m.TaskSubmitted(task_id=tid, run_id=rid, key=f"{run * 7 + step:064x}",
                                  ident=f"align.step{step}", resources=ONE, image="local/bwa:1")
            if step == 0:
                yield m.AllocRequested(request_id=f"q{run}", resources=BIG, minimum=ONE)
                yield m.AllocGranted(alloc_id=f"a{run}", request_id=f"q{run}", resources=BIG)
            yield m.TaskAssigned(task_id=tid, alloc_id=f"a{run}", attempt=1, exec_id=eid,
                                 resources=ONE)
            yield m.ExecCreated(exec_id=eid, task_id=tid, alloc_id=f"a{run}", executor="docker",
                                handle=f"{run:064x}", resources=ONE)
            yield m.ExecStarted(exec_id=eid, task_id=tid)
            out = {"out": m.FileRef(f"{run * 3 + step:064x}", 12345)}
            yield m.ExecExited(exec_id=eid, task_id=tid, exit_code=0, peak_mem=300 << 20,
                               result=out, duration=12.5)
            yield m.TaskFinished(task_id=tid, attempt=1, ok=True, result=out, exit_code=0)
            yield m.Tick()
        yield m.RunFinished(run_id=rid, ok=True, steps_run=3)


def take(n: int) -> list[m.Event]:
    it = batch_events()
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------- appends


def floor_append(path: str, group: int, seconds: float, body: str, durable: bool = True
                 ) -> tuple[float, float]:
    """Raw stdlib: INSERT loop of pre-serialized bodies, BEGIN...COMMIT per group."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute(FLOOR_SQL)
    seq, n, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        conn.execute("BEGIN")
        for _ in range(group):
            seq += 1
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                         (seq, 1.0, "task.submitted", "task:abc", 1, body))
        conn.execute("COMMIT")
        n += group
    rates = n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    conn.close()
    return rates


def log_append(path: str, group: int, seconds: float, events: list[m.Event],
               durable: bool = True) -> tuple[float, float]:
    """SqliteLog.append: encode with msgspec, one BEGIN IMMEDIATE...COMMIT per group."""
    groups = [events[i:i + group] for i in range(0, len(events) - group + 1, group)]
    with SqliteLog.open(path) as log:
        n, i, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            log.append(groups[i % len(groups)], at=1.0, durable=durable)
            n += group
            i += 1
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


def bench_appends(tmp: str, seconds: float, reps: int) -> None:
    events = take(20_000)
    sizes = [len(codec.encode(ev)) for ev in events]
    print(f"append: mixed events, mean body {statistics.mean(sizes):.0f} B; floor bodies 200 B; "
          f"WAL, synchronous=FULL; median of {reps} interleaved runs of {seconds:g} s")
    print(f"{'group':>10} {'floor ev/s':>12} {'SqliteLog ev/s':>15} {'ratio':>6}   "
          f"{'CPU us/ev floor':>15} {'SqliteLog':>9}")
    for group, durable in ((1, True), (100, True), (1000, True), (1, False), (100, False)):
        floors, logs = [], []
        for rep in range(reps):
            for fn, out in ((floor_append, floors), (log_append, logs)):
                path = os.path.join(tmp, f"append-{group}-{durable}-{rep}-{fn.__name__}.sqlite")
                arg: object = "x" * 200 if fn is floor_append else events
                out.append(fn(path, group, seconds, arg, durable))  # type: ignore[operator]
        f, g = (statistics.median(r for r, _ in floors), statistics.median(r for r, _ in logs))
        fc, gc = (statistics.median(c for _, c in floors), statistics.median(c for _, c in logs))
        label = f"{group}" if durable else f"{group} NORMAL"
        print(f"{label:>10} {f:>12,.0f} {g:>15,.0f} {g / f:>6.2f}   {fc:>15.1f} {gc:>9.1f}")


# ---------------------------------------------------------------- scans


def build(path: str, n: int) -> float:
    it = batch_events()
    t0 = time.perf_counter()
    with SqliteLog.open(path) as log:
        at = 1.7e9
        while log.last_seq() < n:
            log.append([next(it) for _ in range(min(1000, n - log.last_seq()))], at=at)
            at += 0.5
    return time.perf_counter() - t0


def timed(fns: list[tuple[str, Callable[[], int]]], reps: int
          ) -> dict[str, tuple[float, float, int]]:
    """Median (events/s wall, events/s CPU, count) per fn, the fns interleaved rep by rep."""
    walls: dict[str, list[float]] = {name: [] for name, _ in fns}
    cpus: dict[str, list[float]] = {name: [] for name, _ in fns}
    counts: dict[str, int] = {}
    for _ in range(reps):
        for name, fn in fns:
            t0, c0 = time.perf_counter(), time.process_time()
            counts[name] = fn()
            walls[name].append(counts[name] / (time.perf_counter() - t0))
            cpus[name].append(counts[name] / max(time.process_time() - c0, 1e-9))
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name]), counts[name])
            for name, _ in fns}


def bench_scan(tmp: str, n: int, reps: int) -> None:
    path = os.path.join(tmp, "scan.sqlite")
    took = build(path, n)
    mb = os.path.getsize(path) / 1e6
    print(f"\nscan: {n:,} events, {mb:.0f} MB, built in {took:.1f} s "
          f"({n / took:,.0f} ev/s at group 1000); page cache warm; median of {reps}")

    def floor() -> int:
        conn = sqlite3.connect(path)
        k = 0
        for _seq, _at, _kind, _stream, _v, body in conn.execute(
                "SELECT seq, at, kind, stream, v, body FROM events ORDER BY seq"):
            json.loads(body)
            k += 1
        conn.close()
        return k

    def fetch_only() -> int:
        conn = sqlite3.connect(path)
        k = sum(1 for _ in conn.execute("SELECT seq, at, kind, stream, v, body FROM events"))
        conn.close()
        return k

    def read_raw() -> int:
        with SqliteLog.open(path, readonly=True) as log:
            return sum(1 for _ in log.read_raw())

    def read() -> int:
        with SqliteLog.open(path, readonly=True) as log:
            return sum(1 for _ in log.read())

    def read_kinds() -> int:
        with SqliteLog.open(path, readonly=True) as log:
            return sum(1 for _ in log.read(kinds=["run.declared", "run.finished"]))

    results = timed([("raw SELECT + json.loads (floor)", floor), ("raw SELECT only", fetch_only),
                     ("SqliteLog.read_raw()", read_raw), ("SqliteLog.read() typed", read)], reps)
    fl, fl_cpu, _ = results["raw SELECT + json.loads (floor)"]
    print(f"{'scan':<34} {'ev/s':>12} {'ratio':>6} {'CPU ratio':>10}")
    for name, (rate, cpu, count) in results.items():
        assert count == n, (name, count)
        print(f"{name:<34} {rate:>12,.0f} {rate / fl:>6.2f} {cpu / fl_cpu:>10.2f}")

    def read_prefix() -> int:
        with SqliteLog.open(path, readonly=True) as log:
            return sum(1 for _ in log.read(stream_prefix="run:sample-0000"))

    print("filtered reads (no secondary index: every row is scanned)")
    filtered = timed([("read(kinds=[run.declared, run.finished])", read_kinds),
                      ("read(stream_prefix='run:sample-0000')", read_prefix)], reps)
    for name, (rate, _cpu, count) in filtered.items():
        print(f"  {name:<44} {count:>7,} hits {n / (count / rate):>12,.0f} rows scanned/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the scan log")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per append cell")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--dir", default=None, help="where to put the logs (default: a temp dir)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-log-", dir=args.dir)
    try:
        print(f"sqlite {sqlite3.sqlite_version}, load average {os.getloadavg()[0]:.1f}")
        bench_appends(tmp, args.seconds, args.reps)
        bench_scan(tmp, args.events, args.reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
