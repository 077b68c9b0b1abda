"""Resources (cpu, mem, disk, gpu) and their arithmetic: plain values, shared by every layer.

Imports nothing but attrs; the pure core relies on this module staying pure.
"""

from __future__ import annotations

import re

import attrs

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": KiB, "ki": KiB,
    "m": 1000**2, "mb": 1000**2, "mib": MiB, "mi": MiB,
    "g": 1000**3, "gb": 1000**3, "gib": GiB, "gi": GiB,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40, "ti": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as '256MiB', '1.5G', '1024'."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"negative size: {value!r}")
        return int(value)
    m = _SIZE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (try '512MiB', '2GiB' or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    """A short human form of a byte count: 1.5GiB, 256MiB, 12KiB, 7B."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


@attrs.frozen(order=False)
class Resources:
    """An amount of cpu (cores), mem and disk (bytes) and gpus; all of them count when packing."""

    cpu: float = attrs.field(default=0.0, converter=float)
    mem: int = attrs.field(default=0, converter=int)
    disk: int = attrs.field(default=0, converter=int)
    gpu: int = attrs.field(default=0, converter=int)

    def fits_in(self, other: Resources) -> bool:
        """True when every dimension of self is at most that of other."""
        return (
            self.cpu <= other.cpu + 1e-9
            and self.mem <= other.mem
            and self.disk <= other.disk
            and self.gpu <= other.gpu
        )

    def __add__(self, o: Resources) -> Resources:
        return Resources(
            round(self.cpu + o.cpu, 6), self.mem + o.mem, self.disk + o.disk, self.gpu + o.gpu
        )

    def __sub__(self, o: Resources) -> Resources:
        return Resources(
            round(self.cpu - o.cpu, 6), self.mem - o.mem, self.disk - o.disk, self.gpu - o.gpu
        )

    def max(self, o: Resources) -> Resources:
        """Element-wise maximum."""
        return Resources(
            max(self.cpu, o.cpu), max(self.mem, o.mem), max(self.disk, o.disk), max(self.gpu, o.gpu)
        )

    def min(self, o: Resources) -> Resources:
        """Element-wise minimum."""
        return Resources(
            min(self.cpu, o.cpu), min(self.mem, o.mem), min(self.disk, o.disk), min(self.gpu, o.gpu)
        )

    def is_negative(self) -> bool:
        """True when any dimension is below zero (an over-commit)."""
        return self.cpu < -1e-9 or self.mem < 0 or self.disk < 0 or self.gpu < 0

    def is_zero(self) -> bool:
        return self.cpu <= 1e-9 and self.mem == 0 and self.disk == 0 and self.gpu == 0

    def size(self) -> float:
        """A scalar for ordering: Reflow's scaled distance from zero (8 GiB of mem ~ 1 cpu)."""
        return self.cpu + self.mem / (8 * GiB) + self.gpu * 8 + self.disk / (1 << 40)

    def __str__(self) -> str:
        s = f"cpu={self.cpu:g} mem={format_size(self.mem)} disk={format_size(self.disk)}"
        return s + (f" gpu={self.gpu}" if self.gpu else "")
