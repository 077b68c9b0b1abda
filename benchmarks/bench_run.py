"""`reflowes run` on N independent no-op steps (each writes one small file), beside the same
shell commands run by `xargs -P 2` in the same run (the floor); then the fully cached reruns.

    python -m benchmarks.bench_run --steps 1000,10000 [--repeat 3] [--was OLD_TREE]

Prints wall seconds, ms per step, the ratio to the floor, the controller's own CPU per step
(`reflowes run --json` reports it: steady across a busy machine, unlike wall time), the rerun of
the same batch (resume: everything done), a new batch of the same rows (every step a cache hit),
and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROGRAM = '''import reflowes as rf

def main(i: int):
    return {"out": rf.exec("echo {i} > {out}", inputs={"i": i}, outputs={"out": rf.FILE},
                           cpu=1, mem="64MiB")["out"]}
'''


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
          shell: bool = False) -> tuple[float, int, str]:
    """Wall seconds, the peak RSS (KiB) of the child tree that ran `cmd`, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(cmd if not shell else cmd[0], cwd=cwd, env=env, shell=shell,
                       capture_output=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed: {p.stderr.decode()[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before), p.stdout.decode()


def floor(n: int, d: Path) -> float:
    out = d / "out"
    out.mkdir(parents=True)
    wall, _, _ = timed([f"seq 0 {n - 1} | xargs -P 2 -I{{}} sh -c 'echo {{}} > out/{{}}.txt'"],
                       cwd=d, shell=True)
    assert len(list(out.iterdir())) == n
    return wall


def reflowes_run(d: Path, env: dict[str, str], csv: str = "w.csv") -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) and the controller's own CPU seconds."""
    wall, peak, out = timed([sys.executable, "-m", "reflowes.cli.main", "run", csv, "-p",
                             "prog.py", "--json", "--parallel", "1000"], cwd=d, env=env)
    return wall, peak, float(json.loads(out).get("cpu", "nan"))  # older CLIs: no cpu


def bench(n: int, root: Path, pythonpath: str | None = None) -> dict[str, float]:
    d = root / f"w{n}"
    d.mkdir(parents=True)
    (d / "prog.py").write_text(PROGRAM)
    (d / "w.csv").write_text("id,i\n" + "".join(f"r{i},{i}\n" for i in range(n)))
    env = dict(os.environ, REFLOWES_HOME=str(root / f"home{n}"))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    fl = floor(n, root / f"floor{n}")
    load = os.getloadavg()[0]
    cold, peak, cpu = reflowes_run(d, env)
    results = d / "w.reflowes" / "results"
    assert sum(1 for _ in results.iterdir()) == n, "not every run produced its result"
    resume, _, _ = reflowes_run(d, env)
    # A new batch of the same rows beside it: every step is in the shared cache.
    shutil.copy(d / "w.csv", d / "w2.csv")
    warm, peak_warm, _ = reflowes_run(d, env, csv="w2.csv")
    return {"n": n, "floor": fl, "cold": cold, "cpu": cpu, "resume": resume, "warm": warm,
            "peak_mb": max(peak, peak_warm) / 1024, "load": load}


def precompile(pythonpath: str | None) -> None:
    """Write the bytecode of the reflowes under test, as `pip install` does for an installed
    package. An editable install with PYTHONDONTWRITEBYTECODE=1 (set on this machine) would
    otherwise compile every module from source in each invocation (~0.15-0.25 s)."""
    import compileall
    import importlib.util

    if pythonpath is None:
        spec = importlib.util.find_spec("reflowes.engine")
        assert spec is not None and spec.origin is not None
        root = Path(spec.origin).parent.parent  # the editable tree: engine/ beside cli/, ...
        dirs = [root / d for d in ("engine", "events", "projections", "cli", "reflowes")]
    else:
        dirs = [Path(pythonpath)]
    for d in dirs:
        compileall.compile_dir(str(d), quiet=1, workers=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rows per size (each with its own floor): the machine's speed drifts")
    ap.add_argument("--was", metavar="PYTHONPATH",
                    help="a tree holding an older reflowes package (e.g. from git archive): "
                         "each row is run with it too, interleaved, in this one invocation "
                         "(separate invocations skew each other: ext4 makes inodes slowly "
                         "for ~30 s after the previous one's clean-up deleted many)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="reflowes-bench-run-"))
    try:
        print(f"{'':4}{'steps':>6} {'xargs -P2 s':>11} {'reflowes s':>10} {'ms/step':>8} "
              f"{'x floor':>8} {'cpu ms/step':>11} {'resume s':>8} {'new+cached s':>12} "
              f"{'peak MB':>8} {'load':>5}")
        sizes = [int(x) for x in args.steps.split(",")]
        trees = [("now", None)] + ([("was", args.was)] if args.was else [])
        for _, pythonpath in trees:
            precompile(pythonpath)
        for k, n in enumerate(n for n in sizes for _ in range(args.repeat)):
            for label, pythonpath in trees[k % len(trees):] + trees[:k % len(trees)]:
                r = bench(n, root / f"{k}{label}", pythonpath)
                print(f"{label if args.was else '':4}{n:>6} {r['floor']:>11.2f} {r['cold']:>10.2f} {1000 * r['cold'] / n:>8.2f} "
                      f"{r['cold'] / r['floor']:>8.2f} {1000 * r['cpu'] / n:>11.2f} "
                      f"{r['resume']:>8.2f} {r['warm']:>12.2f} {r['peak_mb']:>8.0f} "
                      f"{r['load']:>5.1f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
