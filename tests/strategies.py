"""Hypothesis strategies for every event kind, built from the attrs fields of events.model.

Reusable by any test: `events()` draws any event, `event_of(cls)` one kind, `groups()` lists.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import attrs
from hypothesis import strategies as st
from reflowes.events.model import EVENT_TYPES, FileRef
from reflowes.events.resources import Resources

# No lone surrogates: they cannot be stored as UTF-8 text, and nothing in reflowes makes them.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
idents = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_:.", min_size=1, max_size=10)
int64s = st.integers(-(2**63), 2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | int64s | floats | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
resources = st.builds(
    Resources,
    cpu=st.floats(0, 1024, allow_nan=False),
    mem=st.integers(0, 2**50),
    disk=st.integers(0, 2**50),
    gpu=st.integers(0, 16),
)
file_refs = st.builds(
    FileRef, digest=st.text("0123456789abcdef", min_size=8, max_size=64),
    size=st.integers(0, 2**50), kind=st.sampled_from(["file", "dir"]),
)

_NAMED: dict[str, st.SearchStrategy[Any]] = {
    # Fields whose values are ids: short, so that streams collide and prefixes match.
    name: idents for name in (
        "run_id", "task_id", "alloc_id", "exec_id", "request_id", "key", "ident", "digest",
    )
}


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for one field type of the vocabulary (str, int, Optional, dict, ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return texts
    if tp is bool:
        return st.booleans()
    if tp is int:
        return int64s
    if tp is float:
        return floats
    if tp is Any:
        return json_values
    if tp is Resources:
        return resources
    if tp is FileRef:
        return file_refs
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin in (typing.Union, types.UnionType):
        return st.one_of([st.none() if a is type(None) else for_type(a) for a in args])
    if origin is dict:
        return st.dictionaries(for_type(args[0]), for_type(args[1]), max_size=3)
    if origin is list:
        return st.lists(for_type(args[0]), max_size=3)
    raise NotImplementedError(f"no strategy for field type {tp!r}: add one to tests/strategies.py")


def event_of(cls: type) -> st.SearchStrategy[Any]:
    """Events of one class; fields with defaults are sometimes left to their default."""
    hints = typing.get_type_hints(cls)
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in attrs.fields(cls):
        strat = _NAMED.get(f.name) if hints[f.name] is str else None
        if strat is None:
            strat = for_type(hints[f.name])
        (required if f.default is attrs.NOTHING else optional)[f.name] = strat
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


EVENT_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {cls: event_of(cls) for cls in EVENT_TYPES}


def events() -> st.SearchStrategy[Any]:
    """Any event of the vocabulary."""
    return st.one_of(list(EVENT_STRATEGIES.values()))


def groups(max_size: int = 8) -> st.SearchStrategy[list[Any]]:
    """A group commit: a short list of events (possibly empty)."""
    return st.lists(events(), max_size=max_size)
