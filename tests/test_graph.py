"""The program graph: rf.file/rf.dir/rf.exec validation, cache keys, results and walk order."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reflowes.engine.executor import render
from reflowes.engine.graph import (
    ExecNode,
    GraphError,
    base_dir,
    exec_key,
    normalize_result,
    scalar_text,
    walk,
)
from reflowes.events.resources import MiB, Resources

import reflowes as rf


def count(src: rf.FileNode | rf.OutputRef, **kw: object) -> ExecNode:
    base: dict[str, object] = {
        "inputs": {"src": src, "top": 10}, "outputs": {"out": rf.FILE}, "name": "count"
    }
    base.update(kw)
    return rf.exec("sort {src} | uniq -c | head -n {top} > {out}", **base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ files


def test_file_relative_resolves_against_base_dir(tmp_path: pathlib.Path) -> None:
    with base_dir(tmp_path):
        f = rf.file("data/a.fq")
        d = rf.dir("refs/")
    assert f.source == str(tmp_path / "data" / "a.fq") and f.kind == rf.FILE
    assert d.source == str(tmp_path / "refs") and d.kind == rf.DIR


def test_file_default_base_is_cwd_and_context_restores(tmp_path: pathlib.Path) -> None:
    with base_dir(tmp_path / "x"):
        with base_dir(tmp_path / "y"):
            assert rf.file("a").source == str(tmp_path / "y" / "a")
        assert rf.file("a").source == str(tmp_path / "x" / "a")
    assert rf.file("a").source == os.path.join(os.getcwd(), "a")


def test_file_absolute_url_and_pathlike(tmp_path: pathlib.Path) -> None:
    assert rf.file("/abs/../abs/a.fq").source == "/abs/a.fq"
    assert rf.file("file:///data/a.fq").source == "/data/a.fq"
    assert rf.file("s3://bucket/key.fq").source == "s3://bucket/key.fq"
    assert rf.file(tmp_path / "p").source == str(tmp_path / "p")


@pytest.mark.parametrize("bad", ["", None, 3, "file://relative/x"])
def test_file_rejects_bad_paths(bad: object) -> None:
    with pytest.raises(GraphError):
        rf.file(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ exec validation


def test_exec_builds_node_with_defaults() -> None:
    n = rf.exec("wc -l {src} > {out}", inputs={"src": rf.file("/a")}, outputs={"out": rf.FILE})
    assert n.name == "wc"
    assert n.resources == Resources(1, 500 * MiB, 0, 0)
    assert n.image is None and n.env == {} and n.network is False
    ref = n["out"]
    assert ref.node is n and ref.name == "out" and ref.kind == rf.FILE


def test_exec_resources_parse() -> None:
    n = count(rf.file("/a"), cpu=0.5, mem="2GiB", disk="1G", gpu=1)
    assert n.resources == Resources(0.5, 2 << 30, 10**9, 1)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"cpu": 0}, "cpu"),
        ({"cpu": "two"}, "cpu"),
        ({"cpu": True}, "cpu"),
        ({"cpu": float("inf")}, "cpu"),
        ({"cpu": float("nan")}, "cpu"),
        ({"mem": "lots"}, "mem"),
        ({"mem": 0}, "mem"),
        ({"mem": -5}, "mem"),
        ({"disk": "1 parsec"}, "disk"),
        ({"disk": [1]}, "disk"),
        ({"gpu": 1.5}, "gpu"),
        ({"gpu": -1}, "gpu"),
    ],
)
def test_exec_bad_resources_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(GraphError, match=rf"step 'count': {field}="):
        count(rf.file("/a"), **kw)


def test_missing_output_names_it_and_the_existing_ones() -> None:
    n = count(rf.file("/a"))
    with pytest.raises(KeyError) as e:
        n["counts"]
    assert isinstance(e.value, GraphError)
    assert str(e.value) == "step 'count' has no output 'counts' (its outputs: 'out')"


@pytest.mark.parametrize(
    ("template", "inputs", "outputs", "message"),
    [
        ("cat {a} > {out}", {}, {"out": "file"}, r"uses \{a\} but it is neither"),
        ("cat {a} > {out}", {"a": "x", "b": "y"}, {"out": "file"}, "input 'b' is not used"),
        ("cat {a}", {"a": "x"}, {"out": "file"}, "output 'out' is not used"),
        ("cat {a} > {a}", {"a": "x"}, {"a": "file"}, "'a' is both an input and an output"),
        ("cat {a} > {out}", {"a": "x"}, {"out": "fifo"}, "must be rf.FILE or rf.DIR"),
        ("awk '{print $1}' {a} > {out}", {"a": "x"}, {"out": "file"}, r"literal braces"),
        ("echo } {a} > {out}", {"a": "x"}, {"out": "file"}, r"literal braces"),
        ("   ", {}, {}, "non-empty command"),
        ("cat {a} > {out}", {"a": "x"}, {"out": "file", "1x": "file"}, "not an identifier"),
    ],
)
def test_exec_template_errors(
    template: str, inputs: dict[str, object], outputs: dict[str, str], message: str
) -> None:
    with pytest.raises(GraphError, match=message):
        rf.exec(template, inputs=inputs, outputs=outputs)  # type: ignore[arg-type]


def test_exec_escaped_braces_are_fine() -> None:
    n = rf.exec("awk '{{print $1}}' {a} > {out}", inputs={"a": rf.file("/a")},
                outputs={"out": rf.FILE})
    assert n.name == "awk"


def test_exec_whole_node_as_input_says_to_index_it() -> None:
    first = count(rf.file("/a"))
    with pytest.raises(GraphError, match=r'index it.*count\["out"\]'):
        rf.exec("cat {x} > {out}", inputs={"x": first}, outputs={"out": rf.FILE})  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, pathlib.Path("/a"), b"bytes"])
def test_exec_rejects_other_input_types(value: object) -> None:
    with pytest.raises(GraphError, match="input 'x'"):
        rf.exec("cat {x} > {out}", inputs={"x": value}, outputs={"out": rf.FILE})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "kw", [{"image": ""}, {"env": {"A": 1}}, {"env": {"A=B": "x"}}, {"network": "yes"},
           {"name": ""}, {"inputs": [("src", "x")]}, {"outputs": ["out"]}, {"env": ["A=1"]}]
)
def test_exec_rejects_bad_options(kw: dict[str, object]) -> None:
    with pytest.raises(GraphError):
        count(rf.file("/a"), **kw)


# ------------------------------------------------------------------ keys


def test_scalar_text() -> None:
    assert [scalar_text(v) for v in (True, False, 3, 0.1, 1e20, "x y")] == [
        "true", "false", "3", "0.1", "1e+20", "x y"
    ]


def key_of(**kw: object) -> str:
    template = str(kw.pop("template", "sort {src} | uniq -c | head -n {top} > {out}"))
    digest = str(kw.pop("digest", "d1"))
    node = rf.exec(
        template,
        inputs={"src": rf.file("/a"), "top": kw.pop("top", 10)},  # type: ignore[dict-item]
        outputs={"out": kw.pop("out", rf.FILE)},  # type: ignore[dict-item]
        **kw,  # type: ignore[arg-type]
    )
    return exec_key(node, {"src": digest})


def test_key_is_stable_for_the_same_step() -> None:
    a = key_of()
    assert a == key_of() and len(a) == 64 and int(a, 16) >= 0
    # the file's path does not matter, only its digest
    n = rf.exec("sort {src} | uniq -c | head -n {top} > {out}",
                inputs={"src": rf.file("/elsewhere"), "top": 10}, outputs={"out": rf.FILE})
    assert exec_key(n, {"src": "d1"}) == a


@pytest.mark.parametrize(
    "change",
    [
        {"image": "busybox:1"},
        {"template": "sort -u {src} | uniq -c | head -n {top} > {out}"},
        {"digest": "d2"},
        {"top": 11},
        {"top": "10 "},
        {"out": rf.DIR},
        {"env": {"LC_ALL": "C"}},
        {"network": True},
    ],
)
def test_key_changes_with_what_determines_outputs(change: dict[str, object]) -> None:
    assert key_of(**change) != key_of()


@pytest.mark.parametrize(
    "change", [{"cpu": 4}, {"mem": "8GiB"}, {"disk": "10GiB"}, {"gpu": 1}, {"name": "other"}]
)
def test_key_ignores_resources_and_name(change: dict[str, object]) -> None:
    assert key_of(**change) == key_of()


def test_key_same_rendered_scalar_same_key() -> None:
    # int 10 and str "10" render the same command, so they may share a key
    assert key_of(top="10") == key_of(top=10)


def test_key_needs_every_file_digest() -> None:
    n = count(rf.file("/a"))
    with pytest.raises(GraphError, match="no digest given for input 'src'"):
        exec_key(n, {})


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_hostile_scalars_are_shell_quoted(tmp_path_factory: pytest.TempPathFactory,
                                          value: str) -> None:
    value = value.replace("\0", "")
    n = rf.exec("printf %s {v} > {out}", inputs={"v": value}, outputs={"out": rf.FILE})
    d = tmp_path_factory.mktemp("q")
    out = d / "out"
    cmd = render(n.template, {"v": scalar_text(value), "out": str(out)})
    subprocess.run(["sh", "-c", cmd], check=True, cwd=d)
    assert out.read_bytes() == value.encode("utf-8", "surrogateescape")
    assert sorted(p.name for p in d.iterdir()) == ["out"]  # nothing else got created


@pytest.mark.parametrize(
    "value", ["$(touch pwned)", "`touch pwned`", "x; touch pwned", "'; touch pwned; '",
              "a\nb", "--help", "*", "$HOME"]
)
def test_known_hostile_scalars(tmp_path: pathlib.Path, value: str) -> None:
    cmd = render("printf %s {v} > {out}", {"v": value, "out": str(tmp_path / "out")})
    subprocess.run(["sh", "-c", cmd], check=True, cwd=tmp_path)
    assert (tmp_path / "out").read_text() == value
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ results and walk


def test_normalize_result_shapes() -> None:
    n = count(rf.file("/a"))
    f = rf.file("/b")
    assert normalize_result(n["out"]) == {"result": n["out"]}
    assert normalize_result(f) == {"result": f}
    assert normalize_result([n["out"], f]) == {"0": n["out"], "1": f}
    assert normalize_result((f,)) == {"0": f}
    assert normalize_result({"qc/report": f, "counts": n["out"]}) == {
        "qc/report": f, "counts": n["out"]
    }
    assert normalize_result({}) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "main returned NoneType"),
        ("counts.txt", "main returned str"),
        ({"x": 3}, "result 'x' is a int"),
        ({"x": "path"}, "result 'x' is a str"),
        ({"../x": rf.file("/a")}, "must be a relative name"),
        ({"/x": rf.file("/a")}, "must be a relative name"),
        ({"a//b": rf.file("/a")}, "must be a relative name"),
        ({".": rf.file("/a")}, "must be a relative name"),
        ({"": rf.file("/a")}, "non-empty string"),
        ({1: rf.file("/a")}, "non-empty string"),
        ({"a": rf.file("/a"), "a/b": rf.file("/b")}, "clash"),
        ([[rf.file("/a")]], "result '0' is a list"),
    ],
)
def test_normalize_result_errors(value: object, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        normalize_result(value)


def test_normalize_result_whole_node_says_to_index() -> None:
    n = count(rf.file("/a"))
    with pytest.raises(GraphError, match=r'return an output of it, e.g. count\["out"\]'):
        normalize_result({"counts": n})


def test_walk_dependencies_first_each_once() -> None:
    a = count(rf.file("/a"), name="a")
    b = count(a["out"], name="b")
    c = rf.exec("cat {x} {y} > {o}", inputs={"x": a["out"], "y": b["out"]},
                outputs={"o": rf.FILE}, name="c")
    d = count(rf.file("/d"), name="d")
    order = walk({"c": c["o"], "b": b["out"], "d": d["out"], "f": rf.file("/f")})
    assert [n.name for n in order] == ["a", "b", "c", "d"]
    assert walk({"f": rf.file("/f")}) == []


def test_walk_is_deterministic_and_topological_on_random_dags() -> None:
    import random

    rnd = random.Random(7)
    nodes: list[ExecNode] = []
    for i in range(200):
        deps = rnd.sample(nodes, min(len(nodes), rnd.randint(0, 3)))
        inputs = {f"i{j}": d["out"] for j, d in enumerate(deps)} or {"i0": rf.file("/s")}
        tmpl = " ".join("{" + k + "}" for k in inputs) + " {out}"
        nodes.append(rf.exec("cat " + tmpl, inputs=inputs, outputs={"out": rf.FILE},
                             name=f"n{i}"))
    result = {f"r{i}": n["out"] for i, n in enumerate(nodes[-20:])}
    first = walk(result)
    assert [id(n) for n in first] == [id(n) for n in walk(result)]
    pos = {id(n): i for i, n in enumerate(first)}
    assert len(pos) == len(first)
    for n in first:
        for v in n.inputs.values():
            if isinstance(v, rf.OutputRef):
                assert pos[id(v.node)] < pos[id(n)]


def test_walk_long_chain_has_no_recursion_limit() -> None:
    node = count(rf.file("/a"))
    for _ in range(5000):
        node = count(node["out"])
    assert len(walk({"x": node["out"]})) == 5001


def test_validation_caches_do_not_confuse_equal_values_of_other_types() -> None:
    # True == 1 and hash alike: a cached check for cpu=1/network=True must not pass cpu=True
    count(rf.file("/a"), cpu=1, network=True)
    with pytest.raises(GraphError, match="cpu=True"):
        count(rf.file("/a"), cpu=True)
    with pytest.raises(GraphError, match="network must be True or False, got 1"):
        count(rf.file("/a"), network=1)


def test_errors_repeat_for_the_same_bad_step() -> None:
    for _ in range(2):
        with pytest.raises(GraphError, match="input 'b' is not used"):
            rf.exec("cat {a} > {o}", inputs={"a": "x", "b": "y"}, outputs={"o": rf.FILE})


def test_key_ignores_dict_order() -> None:
    t = "cat {a} {b} > {x} && cp {a} {y}"
    one = rf.exec(t, inputs={"a": rf.file("/a"), "b": 1}, outputs={"x": rf.FILE, "y": rf.DIR},
                  env={"A": "1", "B": "2"})
    two = rf.exec(t, inputs={"b": 1, "a": rf.file("/a")}, outputs={"y": rf.DIR, "x": rf.FILE},
                  env={"B": "2", "A": "1"})
    assert exec_key(one, {"a": "d"}) == exec_key(two, {"a": "d"})


input_value = st.one_of(
    st.tuples(st.just("f"), st.text(min_size=1, max_size=8)),  # a file input by digest
    st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(input_value, min_size=2, max_size=2), st.lists(input_value, min_size=2,
                                                                max_size=2))
def test_key_is_injective_on_what_the_step_sees(a: list[object], b: list[object]) -> None:
    def key(values: list[object]) -> tuple[str, tuple[tuple[str, str], ...]]:
        inputs: dict[str, object] = {}
        digests: dict[str, str] = {}
        seen = []
        for i, v in enumerate(values):
            if isinstance(v, tuple):
                inputs[f"i{i}"], digests[f"i{i}"] = rf.file("/x"), v[1]
                seen.append(("file", v[1]))
            else:
                inputs[f"i{i}"] = v
                seen.append(("s", scalar_text(v)))  # type: ignore[arg-type]
        node = rf.exec("cat {i0} {i1} > {out}", inputs=inputs,  # type: ignore[arg-type]
                       outputs={"out": rf.FILE})
        return exec_key(node, digests), tuple(seen)

    (ka, sa), (kb, sb) = key(a), key(b)
    assert (ka == kb) == (sa == sb)
