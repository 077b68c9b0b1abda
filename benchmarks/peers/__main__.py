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


def run_engine(e: engines.Engine, version: str, args: argparse.Namespace) -> list[Row]:
    """Every scenario for one engine; W sizes ascending, skipping those estimated over 10 min."""
    rows: list[Row] = []
    points: list[tuple[int, float]] = []
    for n in args.sizes:
        w = Workload("W", n)
        est = runner.estimate(points, n)
        if est is not None and est > runner.LIMIT_SECONDS:
            why = f"skipped: estimated {est:.0f} s > {runner.LIMIT_SECONDS:.0f} s"
            rows.append(Row(e.name, version, "W", n, "cold", w.steps, note=why))
            print(f"  {e.name:9} {w.label:10} {why}", flush=True)
            continue
        done_too = n >= 1000 or n == args.sizes[-1]
        got = runner.cold(e, version, w, args.work, done_too)
        rows += got
        if got[0].wall is None or got[0].note:
            points.append((n, runner.LIMIT_SECONDS * 2))  # failed or timed out: skip bigger sizes
        else:
            points.append((n, got[0].wall))
    rows += runner.cold(e, version, Workload("D", args.fan_in), args.work, done_too=False)
    if not args.skip_crash:
        rows.append(runner.crash(e, version, Workload("W", args.crash_n), args.work))
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
    rows: list[Row] = []
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
    for e in chosen:
        if e.name in versions:
            print(f"{e.name} ...", flush=True)
            rows += run_engine(e, versions[e.name], args)
    rows.sort(key=sort_key([e.name for e in chosen]))
    text = report.table(rows)
    minutes = (time.monotonic() - t0) / 60
    print("\n" + text + f"\n(total {minutes:.1f} min)")
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.json"
    results.write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    if not args.no_write:
        write_outputs(args, rows, text, versions, absent, minutes, results)
    failed = [r for r in rows if r.note.startswith("FAILED") or "rerun FAILED" in r.note]
    return 1 if failed and args.quick else 0


def write_outputs(
    args: argparse.Namespace,
    rows: list[Row],
    text: str,
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
    body = section(args, text, versions, absent, minutes)
    readme.write_text(report.replace_section(old, "Peers", body))
    print(f"wrote {readme} ## Peers and {png}")


def section(
    args: argparse.Namespace,
    text: str,
    versions: dict[str, str],
    absent: dict[str, str],
    minutes: float,
) -> str:
    """The README `## Peers` section: command, date, machine, table, method, caveats."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    not_run = "".join(f"- {k}: not run ({v}).\n" for k, v in absent.items())
    return f"""Command: `python -m benchmarks.peers` (this run: `--sizes {",".join(map(str, args.sizes))}
--engines {",".join(args.engines)}`{" --skip-crash" if args.skip_crash else ""}; {minutes:.0f} min).
{now}; {report.machine()}. Versions: {vers}.
Load average (1 min) {args.load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end:
other sessions share these 2 cores, so absolute figures are noisy; ratios within a row group
were measured minutes apart under similar load.

Every engine runs the same shell command per step, `echo i > out/i.txt` (reflowes:
`echo {{i}} > {{out}}`, one CSV row per step), with parallelism 2. **W(N)**: N independent steps.
**D(N)**: N steps and one `cat` of all their outputs. **done**: the same command again in the same
directory with everything finished. **resume**: the engine's whole process group SIGKILLed when
half of W(N)'s outputs exist, then the same command run again (a flag only if the engine refuses
without it; the note says so); "ran again" counts steps whose output was complete at the kill and
was written again (inode or mtime changed; reflowes: `exec.created` after the kill for a step
with an earlier `exec.exited` in `reflowes replay --json`). Wall for resume is the rerun(s) only.
The floor is `xargs -P 2` running `sh -c 'test -s out/i.txt || echo i > out/i.txt'` (the test makes
its rerun skip finished steps, like make). Peak RSS: largest sum of RSS over the engine's process
tree, sampled every 50 ms (psutil). A size is skipped when the previous sizes extrapolate past 10
minutes (at least linearly). × floor / × reflowes: wall over the same row's wall for xargs /
reflowes.

{text}
![wall time against N, log-log](peers_wall.png)

- Nextflow: not run — it needs a JVM download and this machine has no network but PyPI/Debian.
{not_run}- Peers live in their own venv (`~/.cache/reflowes-bench/peers-venv`, `pip install snakemake
  redun luigi matplotlib`), never in the project's dependencies. Work dirs and `results.json`
  are under `~/.cache/reflowes-bench/work`.
"""


if __name__ == "__main__":
    sys.exit(main())
