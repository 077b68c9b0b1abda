"""Records: an id -> record map whose finished records can stay encoded ("cold") in a snapshot.

Opening a big log must not decode every finished run, attempt and exec: a snapshot stores them
as zlib-compressed msgpack segments plus their ids, and the first lookup of a cold id (or any
full listing) decodes them all ("thaws"). Hot and cold ids never overlap. Segments written by
one snapshot are reused as they are by the next. Imports only msgspec and the stdlib.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")
Segment = tuple[bytes, bytes]  # zlib(msgpack(ids)), zlib(msgpack({id: record}))
Wire = tuple[msgspec.Raw, list[Segment]]  # hot records encoded, then the cold segments

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_ids = msgspec.msgpack.Decoder(list[str])


def _decoder(value_type: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _decoders.get(value_type)
    if dec is None:
        dec = _decoders[value_type] = msgspec.msgpack.Decoder(dict[str, value_type])
    return dec


class Records(Generic[T]):
    """A dict-like map of records by id; lookups of hot ids cost one dict lookup."""

    # `get` is an instance slot: the C `dict.get` of the hot map while nothing is cold (every
    # fold from seq 0, and any map once thawed), the checking `_get` otherwise.
    __slots__ = ("_cold", "_segments", "_type", "get", "hot")

    def __init__(self, value_type: Any, hot: dict[str, T] | None = None,
                 segments: list[Segment] | None = None) -> None:
        self.hot: dict[str, T] = {} if hot is None else hot
        self._segments: list[Segment] = segments or []
        self._cold: set[str] = set()
        for ids, _ in self._segments:
            self._cold.update(_ids.decode(zlib.decompress(ids)))
        self._type = value_type
        self.get: Callable[..., T | None] = self._get if self._cold else self.hot.get

    # ------------------------------------------------------------ lookups

    def _get(self, key: str, default: T | None = None) -> T | None:
        v = self.hot.get(key)
        if v is None and key in self._cold:
            self.thaw()
            v = self.hot.get(key)
        return default if v is None else v

    def __getitem__(self, key: str) -> T:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: T) -> None:
        if key in self._cold:
            self.thaw()
        self.hot[key] = value

    def pop(self, key: str, default: T | None = None) -> T | None:
        if key in self._cold:
            self.thaw()
        return self.hot.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.hot or key in self._cold

    def __len__(self) -> int:
        return len(self.hot) + len(self._cold)

    def __iter__(self) -> Iterator[str]:
        self.thaw()
        return iter(self.hot)

    def values(self) -> Iterator[T]:
        """Every record (thaws)."""
        self.thaw()
        return iter(self.hot.values())

    def items(self) -> Iterator[tuple[str, T]]:
        """Every (id, record) (thaws)."""
        self.thaw()
        return iter(self.hot.items())

    def unfinished(self) -> Iterator[T]:
        """The hot records only: a superset of those not finished when the snapshot was taken."""
        return iter(self.hot.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Records):
            return NotImplemented
        self.thaw()
        other.thaw()
        return self.hot == other.hot

    def __repr__(self) -> str:
        return f"Records({len(self.hot)} hot, {len(self._cold)} cold)"

    # ------------------------------------------------------------ snapshots

    def thaw(self) -> None:
        """Decode every cold record back into the hot map."""
        if not self._segments:
            return
        dec = _decoder(self._type)
        merged: dict[str, T] = {}
        for _, packed in self._segments:
            merged.update(dec.decode(zlib.decompress(packed)))
        merged.update(self.hot)
        self.hot = merged
        self._segments = []
        self._cold = set()
        self.get = merged.get

    def freeze(self, finished: Callable[[T], bool]) -> Wire:
        """Move finished hot records into a new cold segment; the map's snapshot form."""
        done = {k: v for k, v in self.hot.items() if finished(v)}
        if done:
            self._segments.append((zlib.compress(_encoder.encode(list(done)), 1),
                                   zlib.compress(_encoder.encode(done), 1)))
            self._cold.update(done)
            for k in done:
                del self.hot[k]
            self.get = self._get
        return msgspec.Raw(_encoder.encode(self.hot)), self._segments

    @classmethod
    def unfreeze(cls, value_type: Any, wire: Wire) -> Records[T]:
        """The map from its snapshot form: hot records decoded, cold ones left encoded."""
        hot, segments = wire
        return cls(value_type, _decoder(value_type).decode(hot), list(segments))


def encode(parts: tuple[Any, ...]) -> bytes:
    """A projection's snapshot bytes: a tuple of scalars and Records wire forms."""
    return _encoder.encode(parts)


def wire_decoder(shape: Any) -> msgspec.msgpack.Decoder[Any]:
    """A decoder for a projection's snapshot tuple (use `Wire` for each Records slot)."""
    return msgspec.msgpack.Decoder(shape)

