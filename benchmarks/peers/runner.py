"""The three scenarios for one engine: cold run, run again with everything done, crash and resume.

Each cold run gets a fresh work dir; the done run repeats the same command in the same dir.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from benchmarks.peers import measure
from benchmarks.peers.engines import Engine, check_outputs
from benchmarks.peers.report import Row
from benchmarks.peers.workloads import Workload

LIMIT_SECONDS = 600.0
STALL_SECONDS = 180.0  # no new step output for this long while some are missing: a hang


def estimate(points: list[tuple[int, float]], n: int) -> float | None:
    """Wall seconds expected at n from earlier sizes: at least linear, steeper if they were."""
    if not points:
        return None
    n1, t1 = points[-1]
    exponent = 1.0
    if len(points) >= 2:
        n0, t0 = points[-2]
        if t0 > 0 and n1 > n0:
            exponent = max(1.0, math.log(t1 / t0) / math.log(n1 / n0))
    return t1 * (n / n1) ** exponent


def _fresh(work: Path, engine: Engine, name: str) -> Path:
    wd = work / engine.name / name
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    return wd


def _run(
    engine: Engine,
    w: Workload,
    wd: Path,
    extra: list[str] | None = None,
    kill_when: Callable[[], bool] | None = None,
) -> measure.Measurement:
    return measure.run(
        engine.argv(w) + (extra or []),
        wd,
        wd / "engine.log",
        engine.env(wd),
        LIMIT_SECONDS,
        kill_when=kill_when,
        pending=lambda: w.steps - engine.progress(wd),
        stall=STALL_SECONDS,
    )


def _verdict(engine: Engine, wd: Path, w: Workload, m: measure.Measurement) -> str:
    if m.stalled:
        return f"FAILED: hung (no new step for {STALL_SECONDS:.0f} s), killed (log {m.log})"
    if m.timed_out:
        done = engine.progress(wd)
        return f"killed at the {LIMIT_SECONDS:.0f} s limit, {done:,} of {w.steps:,} steps done"
    missing, wrong = check_outputs(wd, engine.expected(w))
    problems = []
    if m.returncode != 0:
        problems.append(f"exit {m.returncode} (log {m.log})")
    if missing or wrong:
        problems.append(f"{missing} outputs missing, {wrong} wrong")
    return "FAILED: " + "; ".join(problems) if problems else ""


def cold(engine: Engine, version: str, w: Workload, work: Path, done_too: bool) -> list[Row]:
    """Run w from nothing; then, if asked, the same command again with everything done."""
    wd = _fresh(work, engine, f"{w.kind}{w.n}")
    engine.prepare(wd, w)
    m = _run(engine, w, wd)
    note = _verdict(engine, wd, w, m)
    rows = [
        Row(
            engine.name,
            version,
            w.kind,
            w.n,
            "cold",
            w.steps,
            None if m.timed_out else m.wall,
            m.peak_rss,
            note,
        )
    ]
    print(f"  {engine.name:9} {w.label:10} cold  {m.wall:8.2f} s {note}", flush=True)
    if done_too and not note:
        before = engine.snapshot(wd, w)
        m2 = _run(engine, w, wd)
        note2 = _verdict(engine, wd, w, m2)
        reran = engine.reran(wd, w, before)
        if reran:
            note2 = (note2 + "; " if note2 else "") + f"{reran} steps ran again"
        rows.append(
            Row(
                engine.name,
                version,
                w.kind,
                w.n,
                "done",
                w.steps,
                None if m2.timed_out else m2.wall,
                m2.peak_rss,
                note2,
                reran=reran,
            )
        )
        print(f"  {engine.name:9} {w.label:10} done  {m2.wall:8.2f} s {note2}", flush=True)
    return rows


def crash(engine: Engine, version: str, w: Workload, work: Path) -> Row:
    """SIGKILL the engine's group at ~50% of w, rerun the same command, count steps run again."""
    wd = _fresh(work, engine, f"{w.kind}{w.n}-crash")
    engine.prepare(wd, w)
    target = w.n // 2
    row = Row(engine.name, version, w.kind, w.n, "resume", w.steps)
    m = _run(engine, w, wd, kill_when=lambda: engine.finished_count(wd) >= target)
    if not m.killed:
        row.note = _verdict(engine, wd, w, m) or f"not killed: it ended before {target} outputs"
        return row
    at_kill = engine.finished_count(wd)
    before = engine.snapshot(wd, w)
    notes: list[str] = []
    applied: list[str] = []
    flags: list[str] = []
    wall, peak = 0.0, 0
    log = wd / "engine.log"
    for _ in range(4):
        offset = log.stat().st_size
        m = _run(engine, w, wd, flags)
        wall, peak = wall + m.wall, max(peak, m.peak_rss)
        if m.returncode == 0 or m.timed_out:
            break
        text = log.read_bytes()[offset:].decode(errors="replace")
        fix = engine.fix_for(text, applied)
        if fix is None:
            break
        notes.append(fix.note)
        if fix.before:
            applied.append(fix.before[0])
            mb = _run(engine, w, wd, fix.before)
            wall, peak = wall + mb.wall, max(peak, mb.peak_rss)
        if fix.flag:
            applied.append(fix.flag)
            flags.append(fix.flag)
    verdict = _verdict(engine, wd, w, m)
    reran = engine.reran(wd, w, before)
    missing, wrong = check_outputs(wd, engine.expected(w))
    summary = (
        f"killed at {at_kill}/{w.n} outputs ({len(before)} complete); "
        f"{'?' if reran is None else reran} of them ran again; "
        f"after resume {missing} missing, {wrong} partial/wrong"
    )
    row.note = "; ".join(x for x in [verdict, summary, *notes] if x)
    row.wall, row.peak_rss = (None if m.timed_out else wall), peak
    row.reran, row.refusals = reran, len(notes)
    print(f"  {engine.name:9} {w.label:10} resume {wall:7.2f} s {row.note}", flush=True)
    return row
