"""Writes the example's synthetic data: a small reference and paired FASTQ files per sample.

Deterministic (fixed seed): running it again rewrites byte-identical files. Needs only Python.
Usage: python examples/reads/make_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 20261122
REF_LENGTH = 6000
READ_LENGTH = 75
PAIRS = 120
FRAGMENT = (180, 300)

# name: (error rate, contaminant fraction, contaminant GC, quality drop along the read)
SAMPLES = {
    "S1": (0.002, 0.00, 0.50, 0),
    "S2": (0.020, 0.05, 0.50, 5),
    "S3": (0.005, 0.30, 0.68, 0),
    "S4": (0.004, 0.10, 0.50, 22),
    "S5": (0.010, 0.60, 0.30, 8),
}

HERE = Path(__file__).resolve().parent
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def random_seq(rnd: random.Random, n: int, gc: float) -> str:
    """n bases with the given GC fraction."""
    return "".join(
        rnd.choice("GC") if rnd.random() < gc else rnd.choice("AT") for _ in range(n)
    )


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def mutate(rnd: random.Random, seq: str, rate: float) -> str:
    return "".join(rnd.choice("ACGT".replace(b, "")) if rnd.random() < rate else b for b in seq)


def quality(rnd: random.Random, n: int, drop: int) -> str:
    """Phred+33 qualities around 36, falling by up to `drop` towards the 3' end."""
    quals = []
    for i in range(n):
        q = 36 - drop * i / n + rnd.gauss(0, 2)
        quals.append(chr(33 + max(2, min(41, round(q)))))
    return "".join(quals)


def fastq_record(name: str, seq: str, qual: str) -> str:
    return f"@{name}\n{seq}\n+\n{qual}\n"


def write_sample(rnd: random.Random, name: str, ref: str, params: tuple) -> None:
    error, contam, contam_gc, drop = params
    r1, r2 = [], []
    for i in range(PAIRS):
        length = rnd.randint(*FRAGMENT)
        if rnd.random() < contam:
            fragment = random_seq(rnd, length, contam_gc)
        else:
            start = rnd.randrange(0, len(ref) - length)
            fragment = ref[start:start + length]
            if rnd.random() < 0.5:
                fragment = revcomp(fragment)
        a = mutate(rnd, fragment[:READ_LENGTH], error)
        b = mutate(rnd, revcomp(fragment)[:READ_LENGTH], error)
        r1.append(fastq_record(f"{name}:{i + 1:04d}/1", a, quality(rnd, READ_LENGTH, drop)))
        r2.append(fastq_record(f"{name}:{i + 1:04d}/2", b, quality(rnd, READ_LENGTH, drop)))
    (HERE / "data" / f"{name}_1.fq").write_text("".join(r1))
    (HERE / "data" / f"{name}_2.fq").write_text("".join(r2))


def main() -> None:
    rnd = random.Random(SEED)
    (HERE / "data").mkdir(exist_ok=True)
    ref = random_seq(rnd, REF_LENGTH, 0.45)
    lines = [ref[i:i + 60] for i in range(0, len(ref), 60)]
    (HERE / "data" / "ref.fa").write_text(">chrSynthetic synthetic reference\n" + "\n".join(lines)
                                          + "\n")
    for name, params in SAMPLES.items():
        write_sample(rnd, name, ref, params)


if __name__ == "__main__":
    main()
