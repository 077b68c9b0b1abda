"""Persistent maps by rerooting (Baker's trick): the newest version owns a plain dict; every older
version is one undo step toward a newer one, applied (and inverted) when that version is read.

Stepping the newest version costs a dict store and one small node, whatever the size; reading an
older version costs the number of changes between it and the version read last. Every version
stays valid (branches included), so the scheduler core stays a pure function of its inputs. The
versions of one lineage share one dict: use them from one thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class _Absent:
    """The value of a key a version does not hold."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final[Any] = _Absent()


class RerootMap(Generic[K, V]):
    """An immutable mapping: set() and delete() return a new version, the old one still reads as
    it did. A root version has `_d` (the dict) and `_to` None; any other is "`_to` with `_k` bound
    to `_v`" (`_v` absent: `_k` unbound)."""

    __slots__ = ("_d", "_k", "_to", "_v")

    def __init__(self, items: Mapping[K, V] | None = None,
                 _own: dict[Any, Any] | None = None) -> None:
        # _own: a dict the new root version takes over (internal: set() and delete()).
        self._d: dict[Any, Any] | None = _own if _own is not None else (
            dict(items) if items else {})
        self._to: RerootMap[K, V] | None = None
        self._k: Any = None
        self._v: Any = None

    def _dict(self) -> dict[Any, Any]:
        """This version's contents, making it the root (undoing the changes on the way)."""
        if self._to is None:
            return self._d  # type: ignore[return-value]
        path = []
        node = self
        while node._to is not None:
            path.append(node)
            node = node._to
        d = node._d
        assert d is not None
        for x in reversed(path):  # from the version next to the root back to self
            y = x._to
            assert y is not None
            k, v = x._k, x._v
            old = d.get(k, _ABSENT)
            if v is _ABSENT:
                del d[k]
            else:
                d[k] = v
            y._d, y._k, y._v, y._to = None, k, old, x
            x._d, x._k, x._v, x._to = d, None, None, None
        return d

    def set(self, key: K, value: V) -> RerootMap[K, V]:
        """A new version with key bound to value."""
        d = self._dict()
        if not d:  # empty maps are shared (defaults): never grow one in place
            return RerootMap(None, {key: value})
        old = d.get(key, _ABSENT)
        d[key] = value
        n: RerootMap[K, V] = RerootMap(None, d)
        self._d, self._k, self._v, self._to = None, key, old, n
        return n

    def delete(self, key: K) -> RerootMap[K, V]:
        """A new version without key; KeyError (and nothing changed) if it is not there."""
        d = self._dict()
        old = d[key]
        del d[key]
        n: RerootMap[K, V] = RerootMap(None, d)
        self._d, self._k, self._v, self._to = None, key, old, n
        return n

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._dict().get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._dict()[key]  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __len__(self) -> int:
        return len(self._dict())

    def __bool__(self) -> bool:
        return bool(self._dict())

    # Listings are copies: reading another version while iterating would change the dict.
    def keys(self) -> list[K]:
        return list(self._dict())

    def values(self) -> list[V]:
        return list(self._dict().values())

    def items(self) -> list[tuple[K, V]]:
        return list(self._dict().items())

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._dict()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RerootMap):
            mine = dict(self._dict())  # a copy: other may be a version of the same dict
            return mine == other._dict()
        if isinstance(other, Mapping):
            return self._dict() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (RerootMap, (dict(self._dict()),))

    def __repr__(self) -> str:
        return f"RerootMap({self._dict()!r})"


Mapping.register(RerootMap)
