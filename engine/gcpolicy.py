"""The engine's garbage-collector policy: fewer, larger young-generation collections.

The scheduler core and the projections keep millions of small immutable records that mostly
survive, so CPython's default (a young collection every 700 allocations, each promoting
survivors that later full collections walk again) spends 20-30% of a 100k-task fold in the
collector (benchmarks/README.md, "Scheduler core"). Nothing here forms reference cycles on the
hot path, so collecting less often only delays freeing rare cycles.
"""

from __future__ import annotations

import gc

YOUNG = 50_000  # allocations between young collections (CPython default: 700)
MIDDLE = 20  # young collections per middle-generation collection (default: 10)
OLD = 100  # middle collections per full collection, still bounded by CPython's 25% rule


def tune() -> None:
    """Apply the policy to this process (idempotent; never lowers a larger threshold)."""
    young, middle, old = gc.get_threshold()
    if young != 0:  # 0: collection disabled by the user; leave it so
        gc.set_threshold(max(young, YOUNG), max(middle, MIDDLE), max(old, OLD))
