"""Wall time against N per engine, log-log; run by the peers' venv python (it has matplotlib).

Usage: python plot.py results.json out.png. Imports nothing from reflowes.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, dst: str) -> None:
    with open(src) as f:
        rows = [r for r in json.load(f) if r["kind"] == "W" and r["scenario"] == "cold"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for engine in dict.fromkeys(r["engine"] for r in rows):
        pts = sorted((r["n"], r["wall"]) for r in rows if r["engine"] == engine and r["wall"])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=engine)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("independent steps N (W(N), parallelism 2)")
    ax.set_ylabel("wall seconds")
    ax.set_title("reflowes and peers: wall time against N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
