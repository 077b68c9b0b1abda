"""Replay check: re-run the pure core over recorded facts and diff its decisions with the log's.

Any difference is a determinism bug (or a log written by another core). Pure: no I/O here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs
from reflowes.engine import core
from reflowes.events.model import Event, Recorded


@attrs.frozen
class Mismatch:
    """The first place where the recorded decisions and the core's differ."""

    fact_seq: int | None  # the fact whose step yields `expected` (None: nothing does)
    decision_seq: int | None  # the recorded decision (None: missing from the log)
    expected: Event | None
    recorded: Event | None
    detail: str

    def __str__(self) -> str:
        return (f"{self.detail} (fact seq {self.fact_seq}, decision seq {self.decision_seq}): "
                f"core says {self.expected!r}, log says {self.recorded!r}")


def check(records: Iterable[Recorded]) -> Mismatch | None:
    """Feed the facts to the core at their `at`; compare decisions in order.

    `records` must come in seq order, as the log reads them (streamed, never held whole).
    """
    state = core.initial()
    expected: deque[tuple[int, Event]] = deque()
    last = None
    for rec in records:
        if last is not None and rec.seq <= last:
            raise ValueError(f"records out of seq order: {rec.seq} after {last}")
        last = rec.seq
        ev = rec.event
        if ev.kind in core.DECISION_KINDS:
            if not expected:
                return Mismatch(None, rec.seq, None, ev, "recorded decision the core does not make")
            fact_seq, want = expected.popleft()
            if want != ev:
                return Mismatch(fact_seq, rec.seq, want, ev, "decision differs")
            continue
        if ev.decision:
            continue  # decisions of others (the evaluator's run phases): not the core's
        if expected:
            fact_seq, want = expected[0]
            return Mismatch(fact_seq, None, want, None, "decision missing before the next fact")
        try:
            state, made = core.step(state, ev, rec.at)
        except core.CoreError as e:
            return Mismatch(rec.seq, None, None, None, f"fact does not fit the core: {e}")
        expected.extend((rec.seq, d) for d in made)
    if expected:
        fact_seq, want = expected[0]
        return Mismatch(fact_seq, None, want, None, "decision missing at the end of the log")
    return None
