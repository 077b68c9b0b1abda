"""Event bodies to JSON and back: one cattrs converter (the reference) and msgspec (the hot path).

cattrs gives readable structuring errors and the tagged union keyed by `kind`; msgspec decodes
the same JSON straight into the same attrs classes about 4x faster (see peers/eventlog.md).
Tests hold the two to the same bytes. Imports no sqlite.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import msgspec
from reflowes.events.errors import BadEventBody, UnknownEventKind
from reflowes.events.model import BY_KIND, Event

if TYPE_CHECKING:
    import cattrs

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(cls) for kind, cls in BY_KIND.items()
}


def make_converter() -> cattrs.Converter:
    """The one converter: every event kind as a tagged union on `kind`."""
    import cattrs  # not on the hot path: importing it and building this cost every CLI ~50 ms
    from cattrs.strategies import configure_tagged_union

    conv = cattrs.Converter(forbid_extra_keys=True)
    configure_tagged_union(
        Event,
        conv,
        tag_generator=lambda cl: cl.kind,  # type: ignore[attr-defined]
        tag_name="kind",
    )
    return conv


@cache
def _converter() -> cattrs.Converter:
    return make_converter()


def __getattr__(name: str) -> Any:
    if name == "converter":  # the module attribute it used to be, made on first use
        return _converter()
    raise AttributeError(name)


def encode(event: Event) -> bytes:
    """The JSON body of an event (its fields, without the kind)."""
    return _encoder.encode(event)


def decode(kind: str, body: str | bytes) -> Event:
    """The event of that kind from its JSON body; errors name the kind and the field."""
    dec = _decoders.get(kind)
    if dec is None:
        raise UnknownEventKind(kind)
    try:
        return dec.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as e:
        raise BadEventBody(kind, str(e)) from None
    except msgspec.DecodeError as e:
        raise BadEventBody(kind, f"not JSON: {e}") from None


def to_dict(event: Event) -> dict[str, Any]:
    """The tagged-union form: the event's fields plus `kind` (for --json output and tests)."""
    return _converter().unstructure(event, Event)  # type: ignore[no-any-return]


def from_dict(data: dict[str, Any]) -> Event:
    """The event from its tagged-union form; cattrs' errors are made readable."""
    kind = data.get("kind")
    if kind not in BY_KIND:
        raise UnknownEventKind(str(kind))
    import cattrs

    try:
        return _converter().structure(data, Event)  # type: ignore[arg-type]
    except cattrs.BaseValidationError as e:
        msgs = "; ".join(cattrs.transform_error(e))
        raise BadEventBody(str(kind), msgs) from None
