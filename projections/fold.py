"""The three projections as one bundle, folded from a log, resumed from its newest snapshot.

Snapshots are discardable caches (msgpack of the bundle + the seq it covers + VERSION); a
snapshot of another VERSION is ignored and the log folded from seq 0. Imports only
reflowes.events, the projections, msgspec and the stdlib; the log is passed in, never opened.
"""

from __future__ import annotations

import gc
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import msgspec
from reflowes.events.errors import BadEventBody, UnknownEventKind
from reflowes.events.model import BY_KIND, EVENT_TYPES, Recorded
from reflowes.projections import batch, manifests, stats

SNAPSHOT_NAME = "projections"
VERSION = 1  # bump whenever a projection's state shape or meaning changes


class Projections(msgspec.Struct, array_like=True, gc=False):
    """Stats, batch state and executor manifests as of `seq` (0: nothing applied)."""

    seq: int = 0
    at: float = 0.0
    stats: stats.StatsState = msgspec.field(default_factory=stats.initial)
    batch: batch.BatchState = msgspec.field(default_factory=batch.initial)
    manifests: manifests.ManifestsState = msgspec.field(default_factory=manifests.initial)

    def apply(self, rec: Recorded) -> Projections:
        """Fold one event into all three (in place) and return self."""
        handlers = _TABLE.get(type(rec.event))
        if handlers:
            parts = (self.stats, self.batch, self.manifests)
            for fn, i in handlers:
                fn(parts[i], rec.event, rec.at)
        self.seq, self.at = rec.seq, rec.at
        return self

    def apply_all(self, records: Iterable[Recorded]) -> Projections:
        """Fold many events in order. If reading fails midway, `seq` names the last applied."""
        table = _TABLE
        parts = (self.stats, self.batch, self.manifests)
        last = None
        try:
            with _gc_paused():
                for rec in records:
                    ev = rec.event
                    handlers = table.get(type(ev))
                    if handlers:
                        at = rec.at
                        for fn, i in handlers:
                            fn(parts[i], ev, at)
                    last = rec
        finally:
            if last is not None:
                self.seq, self.at = last.seq, last.at
        return self

    def apply_rows(self, rows: Iterable[RawRow], path: str = "log") -> Projections:
        """Fold stored rows (seq, at, kind, stream, v, body) in order, decoding only the kinds
        some projection handles: the hot loop of replay and recovery. If a row cannot be
        decoded, the error names it and `seq` names the last row applied."""
        table = _KIND_TABLE
        parts = (self.stats, self.batch, self.manifests)
        done_seq, done_at = self.seq, self.at
        try:
            with _gc_paused():
                for seq, at, kind, _, _, body in rows:
                    entry = table.get(kind)
                    if entry is not None:
                        dec, handlers = entry
                        try:
                            ev = dec(body)
                        except (msgspec.ValidationError, msgspec.DecodeError) as e:
                            raise BadEventBody(kind, f"{e} (seq {seq} in {path})") from None
                        for fn, i in handlers:
                            fn(parts[i], ev, at)
                    elif kind not in BY_KIND:
                        raise UnknownEventKind(kind, seq, path)
                    done_seq, done_at = seq, at
        finally:
            self.seq, self.at = done_seq, done_at
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of all three."""
        return {
            "seq": self.seq,
            "at": self.at,
            "stats": stats.to_dict(self.stats),
            "batch": batch.to_dict(self.batch),
            "manifests": manifests.to_dict(self.manifests),
        }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The fold and snapshot decoding build millions of long-lived, acyclic objects: the cyclic
    collector would rescan them again and again (measured: half the decode time) for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _table() -> dict[type, tuple[tuple[Callable[[Any, Any, float], None], int], ...]]:
    out = {}
    for t in EVENT_TYPES:
        hs = tuple(
            (mod.HANDLERS[t], i)
            for i, mod in enumerate((stats, batch, manifests))
            if t in mod.HANDLERS
        )
        if hs:
            out[t] = hs
    return out


_TABLE = _table()
# kind -> (typed decoder, handlers): the same msgspec decoding as events.codec.decode, minus
# one Python call per event; kinds no projection handles are never decoded.
_KIND_TABLE = {
    t.kind: (msgspec.json.Decoder(t).decode, hs)  # type: ignore[attr-defined]
    for t, hs in _TABLE.items()
}
_wire = msgspec.msgpack.Decoder(tuple[int, float, msgspec.Raw, msgspec.Raw, msgspec.Raw])


def initial() -> Projections:
    """Nothing applied yet."""
    return Projections()


def dumps(p: Projections) -> bytes:
    """Snapshot bytes of the bundle (finished records are moved to cold segments, see records)."""
    parts = (stats.dumps(p.stats), batch.dumps(p.batch), manifests.dumps(p.manifests))
    return msgspec.msgpack.encode((p.seq, p.at, *(msgspec.Raw(b) for b in parts)))


def loads(blob: bytes) -> Projections:
    """The bundle from snapshot bytes (msgspec.DecodeError if they are not one)."""
    with _gc_paused():
        seq, at, s, b, m = _wire.decode(blob)
        return Projections(seq, at, stats.loads(s), batch.loads(b), manifests.loads(m))


RawRow = tuple[int, float, str, str, int, "bytes | str"]  # as events.log.read_raw yields them


class ReadableLog(Protocol):
    """What fold needs of a log (events.log's SqliteLog and MemoryLog both fit)."""

    path: str

    def read_raw(self, after: int = 0, until: int | None = None) -> Iterable[RawRow]: ...

    def load_snapshot(self, name: str) -> tuple[int, int, bytes] | None: ...


class WritableLog(ReadableLog, Protocol):
    def save_snapshot(self, name: str, seq: int, version: int, blob: bytes) -> None: ...


def from_snapshot(log: ReadableLog, until: int | None = None) -> Projections:
    """The newest usable snapshot (version matches, covers no more than `until`), else empty."""
    snap = log.load_snapshot(SNAPSHOT_NAME)
    if snap is not None:
        seq, version, blob = snap
        if version == VERSION and (until is None or seq <= until):
            try:
                p = loads(blob)
            except (msgspec.DecodeError, ValueError, zlib.error):
                return initial()  # a damaged cache is no reason to fail: fold from 0
            if p.seq == seq:
                return p
    return initial()


def fold(log: ReadableLog, until: int | None = None, use_snapshot: bool = True) -> Projections:
    """The projections as of seq `until` (default: the end): snapshot, then the tail after it."""
    p = from_snapshot(log, until) if use_snapshot else initial()
    return p.apply_rows(log.read_raw(p.seq, until), log.path)


def snapshot(log: WritableLog, p: Projections) -> None:
    """Store the bundle as the newest snapshot (writer process only)."""
    log.save_snapshot(SNAPSHOT_NAME, p.seq, VERSION, dumps(p))
