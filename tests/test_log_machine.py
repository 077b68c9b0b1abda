"""Differential state machine: MemoryLog and SqliteLog (a real file) must agree on everything."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from reflowes.events import log as log_module
from reflowes.events.errors import LogError
from reflowes.events.log import MemoryLog, SqliteLog
from reflowes.events.model import BY_KIND, Recorded
from strategies import groups

seqs = st.integers(-2, 40)
kind_sets = st.none() | st.sets(st.sampled_from([*BY_KIND, "no.such.kind"]), max_size=4)
prefixes = st.none() | st.sampled_from(["", "run:", "task:", "alloc:", "exec:", "batch", "cl"]) \
    | st.text(max_size=3)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="reflowes-logm-")
        self.path = os.path.join(self.dir, "log.sqlite")
        self.saved_chunk = log_module.CHUNK
        log_module.CHUNK = 3  # tiny windows, so reads cross many statement boundaries
        self.mem = MemoryLog()
        self.sql = SqliteLog.open(self.path)
        self.model: list[tuple[float, Any]] = []  # (at, event), independent of both logs

    def teardown(self) -> None:
        log_module.CHUNK = self.saved_chunk
        self.sql.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(group=groups(), at=st.floats(0, 4e9, allow_nan=False), durable=st.booleans())
    def append(self, group: list[Any], at: float, durable: bool) -> None:
        a = self.mem.append(group, at=at, durable=durable)
        b = self.sql.append(group, at=at, durable=durable)
        assert a == b
        first = len(self.model) + 1
        assert a == [Recorded(first + i, at, ev) for i, ev in enumerate(group)]
        self.model += [(at, ev) for ev in group]

    @rule(after=seqs, until=st.none() | seqs, limit=st.none() | st.integers(0, 12),
          kinds=kind_sets, prefix=prefixes)
    def read(self, after: int, until: int | None, limit: int | None,
             kinds: set[str] | None, prefix: str | None) -> None:
        args: dict[str, Any] = {
            "until": until, "limit": limit, "kinds": kinds, "stream_prefix": prefix}
        a = list(self.mem.read(after, **args))
        b = list(self.sql.read(after, **args))
        assert a == b
        expected = [
            Recorded(seq, at, ev) for seq, (at, ev) in enumerate(self.model, 1)
            if seq > after and (until is None or seq <= until)
            and (kinds is None or ev.kind in kinds)
            and (not prefix or ev.stream().startswith(prefix))
        ]
        assert a == expected[:limit]

    @rule(after=seqs, until=st.none() | seqs)
    def read_raw(self, after: int, until: int | None) -> None:
        a = list(self.mem.read_raw(after, until))
        b = list(self.sql.read_raw(after, until))
        assert a == b
        n = len(self.model)
        hi = n if until is None else min(until, n)
        assert [r[0] for r in a] == list(range(max(after, 0) + 1, hi + 1))

    @rule(name=st.sampled_from(["stats", "batch"]), version=st.integers(0, 5),
          blob=st.binary(max_size=64), data=st.data())
    def save_snapshot(self, name: str, version: int, blob: bytes, data: st.DataObject) -> None:
        seq = data.draw(st.integers(0, len(self.model)))
        self.mem.save_snapshot(name, seq, version, blob)
        self.sql.save_snapshot(name, seq, version, blob)

    @rule(name=st.sampled_from(["stats", "batch"]), ahead=st.integers(1, 3))
    def snapshot_beyond_the_log_is_refused(self, name: str, ahead: int) -> None:
        for log in (self.mem, self.sql):
            try:
                log.save_snapshot(name, len(self.model) + ahead, 1, b"x")
            except ValueError:
                continue
            raise AssertionError(f"{log} accepted a snapshot past its end")

    @rule(name=st.sampled_from(["stats", "batch", "never"]))
    def load_snapshot(self, name: str) -> None:
        assert self.mem.load_snapshot(name) == self.sql.load_snapshot(name)

    @rule()
    def reopen(self) -> None:
        self.sql.close()
        self.sql = SqliteLog.open(self.path)

    @rule(after=seqs)
    def read_only_reader_sees_the_same(self, after: int) -> None:
        with SqliteLog.open(self.path, readonly=True) as ro:
            assert list(ro.read(after)) == list(self.mem.read(after))
            assert ro.load_snapshot("stats") == self.mem.load_snapshot("stats")
            if self.model:
                with pytest.raises(LogError, match="read-only"):
                    ro.append([self.model[0][1]])

    @precondition(lambda self: self.model)
    @rule()
    def second_writer_is_refused(self) -> None:
        with pytest.raises(LogError, match="log.sqlite"):
            SqliteLog.open(self.path)

    @invariant()
    def same_end(self) -> None:
        assert self.mem.last_seq() == self.sql.last_seq() == len(self.model)


LogMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLogMachine = LogMachine.TestCase
