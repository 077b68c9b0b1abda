"""Every event kind round-trips through msgspec (hot path) and cattrs (reference), same JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reflowes.events import codec
from reflowes.events.errors import BadEventBody, UnknownEventKind
from reflowes.events.model import BY_KIND, EVENT_TYPES
from strategies import EVENT_STRATEGIES, events


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.kind)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_kind_round_trips(cls: type, data: st.DataObject) -> None:
    ev = data.draw(EVENT_STRATEGIES[cls])
    body = codec.encode(ev)
    assert codec.decode(cls.kind, body) == ev  # type: ignore[attr-defined]
    assert codec.decode(cls.kind, body.decode()) == ev  # type: ignore[attr-defined]
    as_dict = codec.to_dict(ev)
    assert as_dict["kind"] == cls.kind  # type: ignore[attr-defined]
    assert codec.from_dict(as_dict) == ev
    # The msgspec bytes are the JSON of cattrs' unstructured form (less the tag), key order aside.
    reference = json.loads(json.dumps({k: v for k, v in as_dict.items() if k != "kind"}))
    assert json.loads(body) == reference
    # And a dict that went through JSON text structures back to the same event.
    assert codec.from_dict(json.loads(json.dumps(as_dict))) == ev


def test_strategies_cover_the_whole_vocabulary() -> None:
    assert set(EVENT_STRATEGIES) == set(EVENT_TYPES)
    assert set(BY_KIND) == {c.kind for c in EVENT_TYPES}  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(events())
def test_body_has_no_kind_tag_and_decodes_only_as_its_kind(ev: Any) -> None:
    body = json.loads(codec.encode(ev))
    assert "kind" not in body  # the kind lives in its own column, never in the body
    with pytest.raises(UnknownEventKind) as info:
        codec.decode("no.such.kind", codec.encode(ev))
    assert "no.such.kind" in str(info.value)


def test_bad_bodies_name_the_kind() -> None:
    with pytest.raises(BadEventBody, match="run.declared"):
        codec.decode("run.declared", b"{not json")
    with pytest.raises(BadEventBody, match="run_id"):
        codec.decode("run.declared", b'{"program": "p", "params": {}, "digest": "d"}')
    with pytest.raises(BadEventBody, match="run.declared"):
        codec.from_dict({"kind": "run.declared", "run_id": 3})
    with pytest.raises(UnknownEventKind, match="martian"):
        codec.from_dict({"kind": "martian"})
