"""Persistent indexes of the scheduler core: a sorted index, per-shape FIFO buckets, bin packing.

Every update returns a new value and shares the rest with the old one, so a core state is never
copied whole. Imports only stdlib (math), attrs and reflowes.events.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Final

import attrs
from reflowes.events.resources import Resources

_LOAD: Final = 64  # chunk length of SortedIndex: an update copies one chunk and the chunk directory

# (priority, cpu, mem, disk, gpu). Typed loosely on purpose: mypyc keeps a fixed-length tuple
# type unboxed and builds a new tuple (and new numbers) each time one is used as a dict key.
BucketKey = tuple[Any, ...]
Need = tuple[float, int, int, int]  # (cpu, mem, disk, gpu) as plain numbers
# An item of a SortedIndex: (free size or idle since, alloc id); loosely typed like BucketKey,
# so that the same tuple is stored, listed and compared, never rebuilt.
Pair = tuple[Any, ...]


class SortedIndex:
    """An immutable sorted sequence of unique (number, name) pairs, kept in chunks of ~_LOAD.

    add/remove copy one chunk and the directory of chunks (pointer copies at C speed), never
    the whole sequence; lookups bisect, comparing the number as a C double and the name only on
    a tie (the order of the pairs as tuples). The order is total (pairs are unique), so
    iteration never depends on hashing.
    """

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self, chunks: list[list[Pair]] | None = None, maxes: list[Pair] | None = None,
                 n: int = 0) -> None:
        # lists for mypyc's fast indexing, never changed once given here (copy on write)
        self._chunks: list[list[Pair]] = chunks if chunks is not None else []
        self._maxes: list[Pair] = maxes if maxes is not None else []
        self._len = n

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Pair]:
        for chunk in self._chunks:
            yield from chunk

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SortedIndex) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def first(self) -> Pair | None:
        """The smallest item, or None."""
        return self._chunks[0][0] if self._chunks else None

    def __contains__(self, item: Pair) -> bool:
        return _find(self._chunks, self._maxes, item) is not None

    def add(self, item: Pair) -> SortedIndex:
        """A copy with `item` inserted (it must not be present)."""
        chunks, maxes = list(self._chunks), list(self._maxes)
        _insert(chunks, maxes, item)
        return SortedIndex(chunks, maxes, self._len + 1)

    def remove(self, item: Pair) -> SortedIndex:
        """A copy without `item` (KeyError if absent)."""
        chunks, maxes = list(self._chunks), list(self._maxes)
        _delete(chunks, maxes, item)
        return SortedIndex(chunks, maxes, self._len - 1)

    def replace(self, old: Pair, new: Pair) -> SortedIndex:
        """A copy with `old` (KeyError if absent) swapped for `new`, in one copy of the
        directory (and of one chunk when both belong to the same one)."""
        chunks, maxes = list(self._chunks), list(self._maxes)
        at = _find(chunks, maxes, old)
        if at is None:
            raise KeyError(old)
        i, j = at
        chunk = chunks[i]
        k = _bisect(maxes, new)
        if len(chunk) > 1 and (k == i or k == i + 1 == len(maxes)):
            # new sorts within chunk i (above the previous chunk's max, at most this one's, or
            # past the last chunk's): one rebuild of the chunk
            lst = chunk.copy()
            del lst[j]
            lst.insert(_bisect(lst, new), new)
            chunks[i] = lst
            maxes[i] = lst[-1]
        else:
            _delete(chunks, maxes, old)
            _insert(chunks, maxes, new)
        return SortedIndex(chunks, maxes, self._len)

    def irange(self, lo: Pair) -> Iterator[Pair]:
        """Items >= lo, in order."""
        chunks = self._chunks
        i = _bisect(self._maxes, lo)
        if i == len(chunks):
            return
        chunk = chunks[i]
        yield from chunk[_bisect(chunk, lo):]
        for k in range(i + 1, len(chunks)):
            yield from chunks[k]


def _bisect(seq: list[Pair], item: Pair) -> int:
    """bisect_left of `item` in the sorted `seq`."""
    lo, hi = 0, len(seq)
    x: float = item[0]
    while lo < hi:
        mid = (lo + hi) // 2
        k = seq[mid]
        y: float = k[0]
        if y < x or (y == x and k[1] < item[1]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _insert(chunks: list[list[Pair]], maxes: list[Pair], item: Pair) -> None:
    """Insert into a SortedIndex's chunk lists in place (the chunk touched is copied)."""
    if not chunks:
        chunks.append([item])
        maxes.append(item)
        return
    i = _bisect(maxes, item)
    if i == len(maxes):
        i -= 1
    chunk = chunks[i].copy()
    chunk.insert(_bisect(chunk, item), item)
    if len(chunk) > 2 * _LOAD:
        chunks[i:i + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
        maxes[i:i + 1] = [chunk[_LOAD - 1], chunk[-1]]
    else:
        chunks[i] = chunk
        maxes[i] = chunk[-1]


def _find(chunks: list[list[Pair]], maxes: list[Pair], item: Pair) -> tuple[int, int] | None:
    """(chunk, position) of `item` in a SortedIndex's chunks, or None when absent."""
    i = _bisect(maxes, item)
    if i == len(maxes):
        return None
    chunk = chunks[i]
    j = _bisect(chunk, item)
    if j < len(chunk):
        k = chunk[j]
        x: float = k[0]
        y: float = item[0]
        if x == y and k[1] == item[1]:
            return (i, j)
    return None


def _delete(chunks: list[list[Pair]], maxes: list[Pair], item: Pair) -> None:
    """Remove from a SortedIndex's chunk lists in place (KeyError if absent)."""
    at = _find(chunks, maxes, item)
    if at is None:
        raise KeyError(item)
    i, j = at
    chunk = chunks[i]
    if len(chunk) == 1:
        del chunks[i], maxes[i]
    else:
        lst = chunk.copy()
        del lst[j]
        chunks[i] = lst
        maxes[i] = lst[-1]


_COMPACT: Final = 4096  # a bucket's list drops its served prefix past this many (and half)


class Bucket:
    """Pending tasks of one (priority, shape), first in first out; `covered` of them are
    expected to be served by outstanding alloc requests.

    The queue is items[head:tail] of an append-only list shared between versions: push appends
    in place when this version owns the list's end (no later version appended), else it copies
    items[:tail] first; pop only moves head. No version ever sees another's change, so a Bucket
    is a value, and push/pop cost O(1) instead of a persistent-map update.
    """

    __slots__ = ("covered", "head", "items", "need", "priority", "shape", "tail", "weight")

    def __init__(self, priority: int, shape: Resources, weight: float,
                 need: tuple[float, int, int, int], items: list[tuple[int, str]], head: int = 0,
                 tail: int = 0, covered: int = 0) -> None:
        self.priority = priority
        self.shape = shape
        self.weight = weight  # shape.size()
        self.need = need  # shape as a plain tuple, for fit tests
        self.items = items  # (enqueue seq, task id); this version's are [head:tail]
        self.head = head
        self.tail = tail
        self.covered = covered

    @property
    def waiting(self) -> int:
        return self.tail - self.head

    @property
    def uncovered(self) -> int:
        return max(0, self.tail - self.head - self.covered)

    def peek(self) -> tuple[int, str]:
        return self.items[self.head]

    def push(self, seq: int, task_id: str) -> Bucket:
        items, tail = self.items, self.tail
        if len(items) != tail:
            items = items[:tail]  # a later version appended to the shared list: fork it
        items.append((seq, task_id))
        return Bucket(self.priority, self.shape, self.weight, self.need, items, self.head,
                      tail + 1, self.covered)

    def pop(self) -> Bucket:
        head, tail, items = self.head + 1, self.tail, self.items
        if head >= _COMPACT and 2 * head >= tail:
            items, head, tail = items[head:tail], 0, tail - head
        return Bucket(self.priority, self.shape, self.weight, self.need, items, head, tail,
                      self.covered)

    def cover(self, n: int) -> Bucket:
        return Bucket(self.priority, self.shape, self.weight, self.need, self.items, self.head,
                      self.tail, max(0, self.covered + n))

    def task_ids(self) -> list[str]:
        return [tid for _, tid in self.items[self.head:self.tail]]

    def __repr__(self) -> str:
        return (f"Bucket(priority={self.priority!r}, shape={self.shape!r}, head={self.head!r}, "
                f"tail={self.tail!r}, covered={self.covered!r})")


def bucket_key(priority: int, r: Resources) -> BucketKey:
    return (priority, r.cpu, r.mem, r.disk, r.gpu)


def new_bucket(priority: int, shape: Resources) -> Bucket:
    return Bucket(priority, shape, shape.size(), (shape.cpu, shape.mem, shape.disk, shape.gpu),
                  [])


def fit_count(shape: Need, room: Need, limit: int) -> int:
    """How many copies of `shape` (at most `limit`) fit in `room`, every dimension counted."""
    n = limit
    if shape[0] > 1e-9:
        n = min(n, math.floor((room[0] + 1e-9) / shape[0]))
    for i in (1, 2, 3):
        if shape[i] > 0:
            n = min(n, int(room[i]) // int(shape[i]))
    return max(n, 0)


@attrs.frozen
class Bin:
    """One alloc's worth of leftovers: what they sum to, the largest of them, and how many of
    each bucket went in."""

    used: Resources
    largest: Resources
    counts: tuple[tuple[BucketKey, int], ...]


def pack(
    leftovers: list[tuple[BucketKey, Resources, int]], capacity: Resources, nbins: int
) -> list[Bin]:
    """First-fit decreasing of counted shapes into at most `nbins` bins of `capacity`.

    `leftovers` come in the order to honour (priority, then size descending); filling one bin
    at a time in that order gives the same bins as classic first-fit decreasing. Arithmetic is
    on plain tuples; Resources are built once per bin.
    """
    left = [n for _, _, n in leftovers]
    needs = [(r.cpu, r.mem, r.disk, r.gpu) for _, r, _ in leftovers]
    cap = (capacity.cpu, capacity.mem, capacity.disk, capacity.gpu)
    bins: list[Bin] = []
    while len(bins) < nbins and any(left):
        c, m, d, g = cap
        big = (0.0, 0, 0, 0)
        counts: list[tuple[BucketKey, int]] = []
        for i, (key, _, _) in enumerate(leftovers):
            if not left[i]:
                continue
            n = needs[i]
            k = fit_count(n, (c, m, d, g), left[i])
            if k == 0:
                continue
            c, m, d, g = round(c - n[0] * k, 6), m - n[1] * k, d - n[2] * k, g - n[3] * k
            big = (max(big[0], n[0]), max(big[1], n[1]), max(big[2], n[2]), max(big[3], n[3]))
            left[i] -= k
            counts.append((key, k))
        if not counts:
            break  # nothing left fits an empty bin (cannot happen for tasks under max_alloc)
        used = Resources(round(cap[0] - c, 6), cap[1] - m, cap[2] - d, cap[3] - g)
        bins.append(Bin(used, Resources(*big), tuple(counts)))
    return bins
