"""Results as rows, ratios to the floor (xargs) and to reflowes, a markdown table, README section."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

FLOOR = "xargs"
SELF = "reflowes"
SCENARIOS = {"cold": "", "done": " done", "resume": " resume"}


@dataclass
class Row:
    """One engine on one workload in one scenario (cold, done = everything cached, resume)."""

    engine: str
    version: str
    kind: str
    n: int
    scenario: str
    steps: int
    wall: float | None = None  # None: skipped or failed, see note
    peak_rss: int | None = None  # bytes
    note: str = ""
    reran: int | None = None  # done/resume: finished steps that ran again
    refusals: int = 0  # resume: times the engine refused the plain rerun

    @property
    def workload(self) -> str:
        return f"{self.kind}({self.n:,}){SCENARIOS[self.scenario]}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ratio(rows: list[Row], row: Row, against: str) -> float | None:
    """row.wall over the same workload's wall for engine `against`, if both ran."""
    for other in rows:
        same = (other.engine, other.kind, other.n, other.scenario) == (
            against,
            row.kind,
            row.n,
            row.scenario,
        )
        if same and other.wall and row.wall is not None:
            return row.wall / other.wall
    return None


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def table(rows: list[Row]) -> str:
    """A markdown table, one line per row, in the order given."""
    head = (
        "| engine | version | workload | wall s | ms/step | peak RSS MiB | × floor | × reflowes "
        "| notes |\n|---|---|---|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        ms = None if r.wall is None else r.wall / r.steps * 1000
        rss = None if r.peak_rss is None else r.peak_rss / 2**20
        lines.append(
            f"| {r.engine} | {r.version} | {r.workload} | {_num(r.wall, '.2f')} | "
            f"{_num(ms, '.2f')} | {_num(rss, '.0f')} | {_num(ratio(rows, r, FLOOR), '.1f')} | "
            f"{_num(ratio(rows, r, SELF), '.2f')} | {r.note} |"
        )
    return head + "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model, cores, RAM, OS: where the figures come from."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, {platform.system()} {platform.release()}"


def replace_section(text: str, title: str, body: str) -> str:
    """text with its `## title` section (up to the next `## ` heading) replaced, or appended."""
    section = f"## {title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + section


def _find(rows: list[Row], engine: str, kind: str, n: int, scenario: str) -> Row | None:
    for r in rows:
        if (r.engine, r.kind, r.n, r.scenario) == (engine, kind, n, scenario):
            return r
    return None


def headlines(rows: list[Row], engines: list[str], n: int, fan_in: int) -> list[str]:
    """A few summary lines: peers against reflowes per scenario, and what a crash cost each."""
    out = []
    for kind, size, scenario, label in (
        ("W", n, "cold", f"W({n:,}) from nothing"),
        ("D", fan_in, "cold", f"D({fan_in:,}) fan-in"),
        ("W", n, "done", f"W({n:,}) already done"),
    ):
        base = _find(rows, SELF, kind, size, scenario)
        if base is None or base.wall is None:
            continue
        parts = []
        for e in engines:
            r = _find(rows, e, kind, size, scenario)
            if e != SELF and r is not None and r.wall is not None:
                parts.append(f"{e} {r.wall:.1f} s ({r.wall / base.wall:.1f}×)")
        out.append(f"{label}: reflowes {base.wall:.1f} s; " + ", ".join(parts) + " (× reflowes).")
    crashes = []
    for e in engines:
        r = _find(rows, e, "W", n, "resume")
        if r is not None and r.reran is not None:
            refused = f" (after refusing {r.refusals}×)" if r.refusals else ""
            crashes.append(f"{e} {r.reran}{refused}")
    if crashes:
        out.append(
            f"Finished steps run again after a SIGKILL at 50% of W({n:,}): "
            + ", ".join(crashes)
            + "."
        )
    return out
