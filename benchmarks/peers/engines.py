"""The engines under test: how each lays out a workload, the command it runs, how it resumes.

Peers run from their own virtual environment (see venv.py); reflowes from this interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers import workloads as wl
from benchmarks.peers.workloads import Workload


@dataclass
class Fix:
    """What an engine demanded before it would resume, and what we did about it."""

    note: str
    before: list[str] | None = None  # a separate command to run first (e.g. snakemake --unlock)
    flag: str | None = None  # a flag added to the rerun (e.g. --rerun-incomplete)


class Engine:
    """Base: a peer whose outputs are out/<i>.txt (and all.txt) under the work dir."""

    name = "?"
    package = ""

    def __init__(self, venv: Path) -> None:
        self.venv = venv

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def version(self) -> str:
        code = f"import importlib.metadata as m; print(m.version({self.package!r}))"
        res = subprocess.run(
            [self.bin("python"), "-c", code], check=False, capture_output=True, text=True
        )
        return res.stdout.strip() or "?"

    def available(self) -> str | None:
        """None when the engine can run here, else why not."""
        return None if (self.venv / "bin" / "python").exists() else "peers venv missing"

    def prepare(self, wd: Path, w: Workload) -> None:
        (wd / "out").mkdir(parents=True, exist_ok=True)

    def argv(self, w: Workload) -> list[str]:
        raise NotImplementedError

    def env(self, wd: Path) -> dict[str, str]:
        return dict(os.environ)

    def expected(self, w: Workload) -> dict[str, str]:
        return wl.expected_outputs(w)

    def finished_count(self, wd: Path) -> int:
        """How many step outputs exist now (cheap: polled while the engine runs)."""
        try:
            return sum(1 for _ in os.scandir(wd / "out"))
        except FileNotFoundError:
            return 0

    def progress(self, wd: Path) -> int:
        """Steps started or finished so far, as seen from outside (for stall detection)."""
        return self.finished_count(wd) + (wd / "all.txt").exists()

    def fix_for(self, log_text: str, applied: list[str]) -> Fix | None:
        """The fix an engine's refusal to resume asks for, if it refused."""
        return None

    def reran(self, wd: Path, w: Workload, before: dict[str, tuple[int, int]]) -> int | None:
        """Steps complete before the rerun whose output was written again (inode or mtime moved)."""
        return sum(1 for rel, stamp in before.items() if stamp_of(wd / rel) != stamp)

    def snapshot(self, wd: Path, w: Workload) -> dict[str, tuple[int, int]]:
        """Stamps (inode, mtime_ns) of step outputs that are complete now."""
        stamps = {}
        for rel, content in self.expected(w).items():
            p = wd / rel
            try:
                if p.read_text() == content:
                    stamps[rel] = stamp_of(p)
            except (FileNotFoundError, NotADirectoryError):
                pass
        return stamps


def stamp_of(p: Path) -> tuple[int, int]:
    try:
        st = p.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (st.st_ino, st.st_mtime_ns)


def check_outputs(wd: Path, expected: dict[str, str]) -> tuple[int, int]:
    """(missing, wrong) outputs against their expected content."""
    missing = wrong = 0
    for rel, content in expected.items():
        try:
            if (wd / rel).read_text() != content:
                wrong += 1
        except (FileNotFoundError, NotADirectoryError):
            missing += 1
    return missing, wrong


class Xargs(Engine):
    name = "xargs"

    def version(self) -> str:
        res = subprocess.run(["xargs", "--version"], check=False, capture_output=True, text=True)
        return (res.stdout.splitlines() or ["?"])[0].split()[-1]

    def available(self) -> str | None:
        return None if shutil.which("xargs") else "xargs not found"

    def prepare(self, wd: Path, w: Workload) -> None:
        super().prepare(wd, w)
        (wd / "run.sh").write_text(wl.xargs_script(w))

    def argv(self, w: Workload) -> list[str]:
        return ["sh", "run.sh"]


class Snakemake(Engine):
    name = "snakemake"
    package = "snakemake"

    def prepare(self, wd: Path, w: Workload) -> None:
        super().prepare(wd, w)
        (wd / "Snakefile").write_text(wl.snakefile(w))

    def argv(self, w: Workload) -> list[str]:
        return [self.bin("snakemake"), "--cores", "2", "-s", "Snakefile"]

    def fix_for(self, log_text: str, applied: list[str]) -> Fix | None:
        if "--unlock" in log_text and "--unlock" not in applied:
            return Fix("refused: directory locked; ran --unlock", before=["--unlock"])
        if "--rerun-incomplete" in log_text and "--rerun-incomplete" not in applied:
            return Fix(
                "refused: incomplete files; reran with --rerun-incomplete",
                flag="--rerun-incomplete",
            )
        return None


class Luigi(Engine):
    name = "luigi"
    package = "luigi"

    def prepare(self, wd: Path, w: Workload) -> None:
        super().prepare(wd, w)
        (wd / "wf.py").write_text(wl.luigi_script(w))

    def argv(self, w: Workload) -> list[str]:
        return [self.bin("python"), "wf.py"]


class Redun(Engine):
    name = "redun"
    package = "redun"

    def prepare(self, wd: Path, w: Workload) -> None:
        super().prepare(wd, w)
        (wd / "wf.py").write_text(wl.redun_script(w))
        (wd / ".redun").mkdir(exist_ok=True)
        (wd / ".redun" / "redun.ini").write_text(wl.REDUN_INI)

    def argv(self, w: Workload) -> list[str]:
        return [self.bin("redun"), "run", "wf.py", "main"]


class Reflowes(Engine):
    """reflowes run over a CSV; cache in a per-work-dir REFLOWES_HOME so cold runs are cold."""

    name = "reflowes"
    _mark = 0  # exec events in the log when the rerun started (set by snapshot)

    def version(self) -> str:
        import importlib.metadata as m

        return m.version("reflowes")

    def available(self) -> str | None:
        exe = shutil.which("reflowes")
        if not exe:
            return "reflowes CLI not installed"
        res = subprocess.run([exe, "run", "--help"], check=False, capture_output=True, text=True)
        return None if res.returncode == 0 else "`reflowes run` not available yet"

    def prepare(self, wd: Path, w: Workload) -> None:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "prog.py").write_text(wl.reflowes_program(w))
        (wd / "w.csv").write_text(wl.reflowes_csv(w))

    def argv(self, w: Workload) -> list[str]:
        exe = shutil.which("reflowes") or "reflowes"
        return [exe, "run", "w.csv", "--program", "prog.py", "--parallel", "1000"]

    def env(self, wd: Path) -> dict[str, str]:
        return {**os.environ, "REFLOWES_HOME": str(wd / "home")}

    def expected(self, w: Workload) -> dict[str, str]:
        return wl.reflowes_expected(w)

    def finished_count(self, wd: Path) -> int:
        try:
            return sum(1 for _ in os.scandir(wd / "w.reflowes" / "results"))
        except FileNotFoundError:
            return 0

    def progress(self, wd: Path) -> int:
        try:
            return sum(1 for _ in os.scandir(wd / "w.reflowes" / "execs"))
        except FileNotFoundError:
            return 0

    def exec_events(self, wd: Path) -> list[dict[str, object]]:
        """exec.created / exec.exited events from `reflowes replay --json`, in log order."""
        exe = shutil.which("reflowes") or "reflowes"
        res = subprocess.run(
            [exe, "replay", "w.csv", "--json", "--kind", "exec."],
            cwd=wd,
            env=self.env(wd),
            check=False,
            capture_output=True,
            text=True,
        )
        events = []
        for line in res.stdout.splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict) and ev.get("kind") in ("exec.created", "exec.exited"):
                events.append(ev)
        return events

    def snapshot(self, wd: Path, w: Workload) -> dict[str, tuple[int, int]]:
        self._mark = len(self.exec_events(wd))
        return super().snapshot(wd, w)

    def reran(self, wd: Path, w: Workload, before: dict[str, tuple[int, int]]) -> int | None:
        """exec.created after the crash for a step that already had an exec.exited before it."""
        events = self.exec_events(wd)
        if not events:
            return None
        exited: set[str] = set()
        count = 0
        for k, ev in enumerate(events):
            key = _step_key(ev)
            if ev["kind"] == "exec.exited":
                exited.add(key)
            elif k >= self._mark and key in exited:
                count += 1
        return count


def _step_key(ev: dict[str, object]) -> str:
    """What identifies a step across attempts and invocations: its task id (derived from the step's
    cache key, so the same after a restart), else the nearest id the event carries."""
    for field in ("task_id", "key", "exec_id", "id"):
        if field in ev:
            return str(ev[field])
    data = ev.get("data")
    if isinstance(data, dict):
        return _step_key(data)
    return json.dumps(ev, sort_keys=True)


ENGINES = {
    "xargs": Xargs,
    "reflowes": Reflowes,
    "snakemake": Snakemake,
    "redun": Redun,
    "luigi": Luigi,
}


def make(names: list[str], venv: Path) -> list[Engine]:
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        sys.exit(f"unknown engine(s): {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    return [ENGINES[n](venv) for n in names]
