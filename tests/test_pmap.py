"""RerootMap: every version reads as a plain dict snapshot would, whatever order versions are
stepped and read in (branches included)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reflowes.engine.pmap import RerootMap

KEYS = st.sampled_from("abcdef")
# (version to start from, op, key, value): op 0 set, 1 delete, 2 read back.
OPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2), KEYS, st.integers(0, 9)),
               max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_every_version_reads_as_its_snapshot(ops: list[tuple[int, int, str, int]]) -> None:
    versions: list[RerootMap[str, int]] = [RerootMap()]
    models: list[dict[str, int]] = [{}]
    for pick, op, key, value in ops:
        i = pick % len(versions)
        v, model = versions[i], models[i]
        if op == 0:
            versions.append(v.set(key, value))
            models.append({**model, key: value})
        elif op == 1:
            if key in model:
                versions.append(v.delete(key))
                models.append({k: x for k, x in model.items() if k != key})
            else:
                with pytest.raises(KeyError):
                    v.delete(key)
        else:
            assert v.get(key) == model.get(key)
            assert (key in v) == (key in model)
    for v, model in reversed(list(zip(versions, models, strict=True))):
        assert dict(v.items()) == model
        assert len(v) == len(model) and sorted(v) == sorted(model)
    for v, model in zip(versions, models, strict=True):
        assert v == model and v == RerootMap(model)


def test_the_shared_empty_map_never_grows() -> None:
    empty: RerootMap[str, int] = RerootMap()
    a, b = empty.set("x", 1), empty.set("y", 2)
    assert dict(a.items()) == {"x": 1} and dict(b.items()) == {"y": 2} and len(empty) == 0


def test_listing_a_version_is_a_copy() -> None:
    v1 = RerootMap({"a": 1, "b": 2})
    keys = iter(v1)
    v2 = v1.delete("a")
    assert sorted(keys) == ["a", "b"] and v2.keys() == ["b"]


def test_pickles_as_its_contents() -> None:
    v = RerootMap({"a": 1}).set("b", 2)
    assert pickle.loads(pickle.dumps(v)) == {"a": 1, "b": 2}
