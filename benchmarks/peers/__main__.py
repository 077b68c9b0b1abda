"""`python -m benchmarks.peers`: reflowes, Snakemake, redun and Luigi against an xargs floor.

Prints a table, writes the `## Peers` section of benchmarks/README.md and benchmarks/peers_wall.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peers import engines, report, runner, venv
from benchmarks.peers.report import Row
from benchmarks.peers.workloads import Workload

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
DEFAULT_ENGINES = "xargs,reflowes,luigi,redun,snakemake"
ORDER = {"cold": 0, "done": 1, "resume": 2}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    p.add_argument("--sizes", default="100,1000,10000", help="W(N) sizes, comma separated")
    p.add_argument("--engines", default=DEFAULT_ENGINES, help="engines, comma separated")
    p.add_argument("--fan-in", type=int, default=1000, help="D(N): steps before the cat step")
    p.add_argument("--crash-n", type=int, default=1000, help="W(N) killed at 50%% and resumed")
    p.add_argument("--skip-crash", action="store_true", help="no crash-and-resume scenario")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sizes 20,100, D(100), crash at W(100); README not written",
    )
    p.add_argument("--no-write", action="store_true", help="print only; no README, no plot")
    p.add_argument("--work", type=Path, default=venv.CACHE / "work", help="scratch directory")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.fan_in, args.crash_n, args.no_write = "20,100", 100, 100, True
    args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s})
    args.engines = [e for e in args.engines.split(",") if e]
    return args


def run_all(
    ready: list[engines.Engine], versions: dict[str, str], args: argparse.Namespace
) -> list[Row]:
    """Workload by workload, every engine in turn (so a workload's rows see similar load); W sizes
    ascending, an engine skipping a size its earlier sizes extrapolate past 10 minutes."""
    rows: list[Row] = []
    points: dict[str, list[tuple[int, float]]] = {e.name: [] for e in ready}
    for n in args.sizes:
        w = Workload("W", n)
        print(f"{w.label} ...", flush=True)
        for e in ready:
            est = runner.estimate(points[e.name], n)
            if est is not None and est > runner.LIMIT_SECONDS:
                why = f"skipped: estimated {est:.0f} s > {runner.LIMIT_SECONDS:.0f} s"
                rows.append(Row(e.name, versions[e.name], "W", n, "cold", w.steps, note=why))
                print(f"  {e.name:9} {w.label:10} {why}", flush=True)
                continue
            done_too = n >= 1000 or n == args.sizes[-1]
            got = runner.cold(e, versions[e.name], w, args.work, done_too)
            rows += got
            ok = got[0].wall is not None and not got[0].note
            # A failed or timed-out size makes every bigger one "estimated" over the limit.
            points[e.name].append((n, got[0].wall if ok else 2 * runner.LIMIT_SECONDS))
    d = Workload("D", args.fan_in)
    print(f"{d.label} ...", flush=True)
    for e in ready:
        rows += runner.cold(e, versions[e.name], d, args.work, done_too=False)
    if not args.skip_crash:
        print(f"W({args.crash_n:,}) crash and resume ...", flush=True)
        for e in ready:
            rows.append(runner.crash(e, versions[e.name], Workload("W", args.crash_n), args.work))
    return rows


def sort_key(names: list[str]):  # type: ignore[no-untyped-def]
    return lambda r: (ORDER[r.scenario], r.kind != "W", r.n, names.index(r.engine))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM unwinds like ^C, so measure.run kills the engine's process group on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.load_start = os.getloadavg()[0]
    t0 = time.monotonic()
    env_dir = venv.ensure()
    chosen = engines.make(args.engines, env_dir)
    versions: dict[str, str] = {}
    absent: dict[str, str] = {}
    for e in chosen:
        why = e.available()
        if why:
            absent[e.name] = why
            print(f"{e.name}: not run ({why})", flush=True)
            continue
        versions[e.name] = e.version()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    rows = run_all([e for e in chosen if e.name in versions], versions, args)
    rows.sort(key=sort_key([e.name for e in chosen]))
    text = report.table(rows)
    minutes = (time.monotonic() - t0) / 60
    heads = report.headlines(rows, args.engines, args.crash_n, args.fan_in)
    print("\n" + text + "\n" + "\n".join(heads) + f"\n(total {minutes:.1f} min)")
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.json"
    results.write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    if not args.no_write:
        write_outputs(args, rows, versions, absent, minutes, results)
    failed = [r for r in rows if "FAILED" in r.note]
    return 1 if failed and args.quick else 0


def write_outputs(
    args: argparse.Namespace,
    rows: list[Row],
    versions: dict[str, str],
    absent: dict[str, str],
    minutes: float,
    results: Path,
) -> None:
    """The PNG plot (drawn by the peers' venv, which has matplotlib) and the README section."""
    png = BENCH / "peers_wall.png"
    py = str(venv.VENV / "bin" / "python")
    res = subprocess.run([py, str(HERE / "plot.py"), str(results), str(png)], check=False)
    if res.returncode:
        print("plot failed", file=sys.stderr)
    readme = BENCH / "README.md"
    old = readme.read_text() if readme.exists() else "# Benchmarks\n"
    body = section(args, rows, versions, absent, minutes)
    readme.write_text(report.replace_section(old, "Peers", body))
    print(f"wrote {readme} ## Peers and {png}")


def section(
    args: argparse.Namespace,
    rows: list[Row],
    versions: dict[str, str],
    absent: dict[str, str],
    minutes: float,
) -> str:
    """The README `## Peers` section: command, date, machine, headlines, table, method, caveats."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    not_run = "".join(f"- {k}: not run ({v}).\n" for k, v in absent.items())
    opts = f"--sizes {','.join(map(str, args.sizes))} --engines {','.join(args.engines)}"
    opts += " --skip-crash" if args.skip_crash else ""
    heads = report.headlines(rows, args.engines, args.crash_n, args.fan_in)
    head_text = "".join(f"- {h}\n" for h in heads)
    return f"""Command: `python -m benchmarks.peers` (this run: `{opts}`, {minutes:.0f} min).

- When and where: {now}; {report.machine()}.
- Versions: {vers}.
- Load average (1 min): {args.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.
  Other sessions share these 2 cores, so absolute figures are noisy (an earlier measurement on
  this machine, W(1,000): xargs 0.86 s, luigi 10.0 s, redun 27.8 s, snakemake 45.1 s); compare
  within a workload, whose rows ran minutes apart.

{head_text}
{report.table(rows)}
![wall time against N, log-log](peers_wall.png)

How it is measured:

- Every engine runs the same shell command per step, `echo i > out/i.txt`, with parallelism 2
  (2 cores). **W(N)**: N independent steps. **D(N)**: N steps, then one `cat` of all their
  outputs into `all.txt`. **done**: the same command again in the same directory, everything
  finished. **resume**: the engine's whole process group SIGKILLed once half of W(N)'s outputs
  exist, then the same command again (a flag only when the engine refuses without it; the note
  says which); wall is the rerun(s) only. "Ran again" counts steps whose output was complete at
  the kill and was written again (inode or mtime changed); for reflowes, `exec.created` events
  after the kill for a task that had an `exec.exited` before it (`reflowes replay --json`).
  Every output's content is checked after each run ("partial/wrong").
- Floor: `xargs -P 2` running `sh -c 'test -s out/i.txt || echo i > out/i.txt'` (the test lets
  its rerun skip finished steps, as make would). × floor / × reflowes: wall over the wall of
  xargs / reflowes on the same workload.
- reflowes: `reflowes run w.csv --program prog.py --parallel 1000`, one CSV row per step,
  `rf.exec("echo {{i}} > {{out}}", cpu=1, mem="64MiB")` (D: one row whose `main(n)` builds n
  steps and a `cat` of all of them); a fresh `REFLOWES_HOME` per cold run.
- Snakemake: one wildcard rule, `snakemake --cores 2`. Luigi: one Task per step with a
  LocalTarget, its `run()` a `subprocess.run` of the command, `luigi.build(workers=2,
  local_scheduler=True)`. redun: one `@task` per step running the command with `subprocess`
  and returning its `File`, local executor `max_workers = 2`, sqlite backend (redun's own
  `script()` wraps each command in temp files and staging and was ~10× slower per step here).
  Default logging for all, captured to a file.
- Peak RSS: the largest sum of RSS over the engine's process tree, sampled every 50 ms
  (psutil; not ru_maxrss, which on Linux keeps the forking harness's RSS). A size is skipped when the
  previous sizes extrapolate (at least linearly) past 10 minutes; a run with no new step
  output for 3 minutes is killed and reported as hung.
- Nextflow: not run — it needs a JVM download and this machine has no network but PyPI/Debian.
{not_run}- Peers live in their own venv (`~/.cache/reflowes-bench/peers-venv`, `pip install snakemake
  redun luigi matplotlib`), never in the project's dependencies. Work dirs, engine logs and
  `results.json` are under `~/.cache/reflowes-bench/work`. `--quick` is a 1-2 minute smoke run
  (W(20), W(100), D(100), crash at W(100)) that writes nothing.
"""


if __name__ == "__main__":
    sys.exit(main())
