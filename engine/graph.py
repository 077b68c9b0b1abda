"""The program graph: files, exec steps and output references that `main` builds, plus cache keys.

Pure data and pure functions: no I/O (paths are resolved as text only), no clock, no randomness.
`file`, `dir` and `exec` deliberately shadow builtins: they are the `rf.*` API.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from reflowes.engine.errors import UserError
from reflowes.engine.executor import placeholders
from reflowes.events.resources import Resources, parse_size

FILE = "file"
DIR = "dir"
KINDS = (FILE, DIR)

# Bump when the meaning of a key changes, so old cache entries are never confused with new ones.
KEY_SALT = "reflowes-exec-key-v1"

_BASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("reflowes_base_dir", default=None)


class GraphError(UserError):
    """A step or result built wrongly in `main` (bad placeholder, input, output or resource)."""


class MissingOutput(GraphError, KeyError):
    """`node[name]` names an output the step does not declare."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class base_dir:  # lower case: used as a function
    """Within this block, relative `rf.file`/`rf.dir` paths resolve against `path`. A class,
    not a generator context manager: it is entered once per run (~5x cheaper)."""

    __slots__ = ("_token", "absolute")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.absolute = os.path.abspath(path)

    def __enter__(self) -> str:
        self._token = _BASE.set(self.absolute)
        return self.absolute

    def __exit__(self, *exc: object) -> None:
        _BASE.reset(self._token)


def current_base_dir() -> str:
    """The directory relative paths resolve against now (the CSV's, or the cwd)."""
    return _BASE.get() or os.getcwd()


@attrs.frozen(eq=False)
class FileNode:
    """A file or directory given to the program: an absolute path or a URL (e.g. s3://...)."""

    source: str
    kind: str = FILE

    def __repr__(self) -> str:
        return f"rf.{self.kind}({self.source!r})"


@attrs.frozen(eq=False)
class ExecNode:
    """One shell step: a command template, its inputs, declared outputs and resources."""

    template: str
    inputs: dict[str, Any]
    outputs: dict[str, str]
    image: str | None
    resources: Resources
    env: dict[str, str]
    network: bool
    name: str

    def __getitem__(self, output: str) -> OutputRef:
        if output not in self.outputs:
            have = ", ".join(repr(o) for o in self.outputs) or "none"
            raise MissingOutput(
                f"step {self.name!r} has no output {output!r} (its outputs: {have})"
            )
        return OutputRef(self, output)

    def __repr__(self) -> str:
        return f"<exec {self.name!r} outputs={list(self.outputs)}>"


@attrs.frozen
class OutputRef:
    """One declared output of an exec step, usable as another step's input or as a result.

    Equal (and hashed alike) when naming the same output of the same node (nodes compare by
    identity), so `node["out"] == node["out"]`.
    """

    node: ExecNode
    name: str

    @property
    def kind(self) -> str:
        return self.node.outputs[self.name]

    def __repr__(self) -> str:
        return f"{self.node.name}[{self.name!r}]"


Scalar = str | int | float | bool
Value = FileNode | OutputRef | str | int | float | bool


def _source(path: str | os.PathLike[str], kind: str) -> FileNode:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise GraphError(f"rf.{kind}() needs a non-empty path or URL, got {path!r}")
    if path.startswith("file://"):
        path = path[len("file://"):]
        if not path.startswith("/"):
            raise GraphError(f"file:// URL must be absolute (file:///abs/path), got {path!r}")
    elif "://" in path:
        return FileNode(path, kind)  # a URL for the evaluator's fetchers; kept as given
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(current_base_dir(), path)
    return FileNode(os.path.normpath(path), kind)


def file(path: str | os.PathLike[str]) -> FileNode:
    """A file input: a path (relative to the CSV's directory) or a URL."""
    return _source(path, FILE)


def dir(path: str | os.PathLike[str]) -> FileNode:
    """A directory input: a path (relative to the CSV's directory) or a URL."""
    return _source(path, DIR)


@functools.lru_cache(maxsize=4096)
def _template_names(template: str) -> tuple[str, ...]:
    try:
        return tuple(placeholders(template))
    except ValueError as e:
        raise GraphError(
            f"command {template!r}: {e}; write literal braces as {{{{ and }}}} (e.g. awk "
            "'{{print $1}}')"
        ) from None


def _check_value(step: str, name: str, value: object) -> None:
    if isinstance(value, (FileNode, OutputRef, str, int, float, bool)):
        return
    if isinstance(value, ExecNode):
        outs = list(value.outputs)
        hint = f'{value.name}["{outs[0]}"]' if outs else "an output of it"
        raise GraphError(
            f"step {step!r}: input {name!r} is a whole step ({value.name!r}); "
            f"index it to pick an output, e.g. {hint}"
        )
    if isinstance(value, pathlib.PurePath):
        raise GraphError(
            f"step {step!r}: input {name!r} is a path object; wrap it with rf.file(...) or "
            "rf.dir(...) to stage it, or str(...) to pass the text"
        )
    raise GraphError(
        f"step {step!r}: input {name!r} has type {type(value).__name__}; inputs are "
        "rf.file/rf.dir, a step's output (node['out']), str, int, float or bool"
    )


def _resources(step: str, cpu: object, mem: object, disk: object, gpu: object) -> Resources:
    def bad(field: str, value: object, why: str) -> GraphError:
        return GraphError(f"step {step!r}: {field}={value!r}: {why}")

    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 < cpu < float("inf"):
        raise bad("cpu", cpu, "must be a positive number of cores (e.g. 1 or 0.5)")
    sizes = {}
    for field, value in (("mem", mem), ("disk", disk)):
        try:
            sizes[field] = parse_size(value)  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError) as e:
            raise bad(field, value, f"{e}") from None
    if sizes["mem"] <= 0:
        raise bad("mem", mem, "must be positive (e.g. '256MiB')")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise bad("gpu", gpu, "must be a whole number >= 0")
    return Resources(float(cpu), sizes["mem"], sizes["disk"], gpu)


@functools.lru_cache(maxsize=4096)
def _check_shape(
    template: str, inputs: tuple[str, ...], outputs: tuple[tuple[str, str], ...], name: str
) -> None:
    used = set(_template_names(template))
    outs = dict(outputs)
    for kind, names in (("input", inputs), ("output", tuple(outs))):
        for n in names:
            if not isinstance(n, str) or not n.isidentifier():
                raise GraphError(f"step {name!r}: {kind} name {n!r} is not an identifier")
    both = sorted(set(inputs) & set(outs))
    if both:
        raise GraphError(f"step {name!r}: {both[0]!r} is both an input and an output")
    unknown = sorted(used - set(inputs) - set(outs))
    if unknown:
        raise GraphError(
            f"step {name!r}: command uses {{{unknown[0]}}} but it is neither an input nor an "
            f"output (inputs: {sorted(inputs)}, outputs: {sorted(outs)})"
        )
    for kind, names in (("input", inputs), ("output", tuple(outs))):
        for n in names:
            if n not in used:
                raise GraphError(f"step {name!r}: {kind} {n!r} is not used in the command")
    for n, k in outputs:
        if k not in KINDS:
            raise GraphError(f"step {name!r}: output {n!r} must be rf.FILE or rf.DIR, got {k!r}")


@functools.lru_cache(maxsize=4096, typed=True)
def _check_options(
    image: str | None, env: tuple[tuple[str, str], ...], network: bool, name: str
) -> None:
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise GraphError(f"step {name!r}: image must be a non-empty string or None, got {image!r}")
    for k, v in env:
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise GraphError(f"step {name!r}: env name {k!r} is not valid")
        if not isinstance(v, str):
            raise GraphError(f"step {name!r}: env {k}={v!r} must be a string")
    if not isinstance(network, bool):
        raise GraphError(f"step {name!r}: network must be True or False, got {network!r}")


_cached_resources = functools.lru_cache(maxsize=1024, typed=True)(_resources)


def exec(
    template: str,
    inputs: Mapping[str, Value] | None = None,
    outputs: Mapping[str, str] | None = None,
    *,
    image: str | None = None,
    cpu: float = 1,
    mem: int | str = "500MiB",
    disk: int | str = 0,
    gpu: int = 0,
    env: Mapping[str, str] | None = None,
    network: bool = False,
    name: str | None = None,
) -> ExecNode:
    """A shell step; every `{placeholder}` must be an input or an output, and each one used."""
    if not isinstance(template, str) or not template.strip():
        raise GraphError(f"rf.exec needs a non-empty command string, got {template!r}")
    if name is None:
        first = template.split()[0]
        name = os.path.basename(first.strip("{}")) or "exec"
    elif not isinstance(name, str) or not name:
        raise GraphError(f"rf.exec name must be a non-empty string, got {name!r}")
    for what, arg in (("inputs", inputs), ("outputs", outputs), ("env", env)):
        if arg is not None and not isinstance(arg, Mapping):
            raise GraphError(f"step {name!r}: {what} must be a dict, got {type(arg).__name__}")
    inputs = dict(inputs or {})
    outputs = dict(outputs or {})
    envd = dict(env or {})
    try:  # the shape of a step repeats on every row: check each distinct one once
        _check_shape(template, tuple(inputs), tuple(outputs.items()), name)
        _check_options(image, tuple(envd.items()), network, name)
    except TypeError:  # unhashable names, kinds or env values: check without the cache
        _check_shape.__wrapped__(template, tuple(inputs), tuple(outputs.items()), name)
        _check_options.__wrapped__(image, tuple(envd.items()), network, name)
    for n, v in inputs.items():
        _check_value(name, n, v)
    try:
        res = _cached_resources(name, cpu, mem, disk, gpu)
    except TypeError:  # e.g. mem=[1]: unhashable, let the check say what is wrong
        res = _resources(name, cpu, mem, disk, gpu)
    return ExecNode(template, inputs, outputs, image, res, envd, network, name)


def scalar_text(value: Scalar) -> str:
    """The canonical text of a scalar input: what the command sees (before shell quoting)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    raise TypeError(f"not a scalar: {value!r}")


@functools.lru_cache(maxsize=4096)
def _static_key(
    image: str | None,
    template: str,
    outputs: tuple[tuple[str, str], ...],
    env: tuple[tuple[str, str], ...],
    network: bool,
) -> str:
    doc = {
        "salt": KEY_SALT,
        "image": image,
        "template": template,
        "outputs": sorted(outputs),
        "env": sorted(env),
        "network": network,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def exec_key(node: ExecNode, input_digests: Mapping[str, str]) -> str:
    """The step's cache key: sha256 of what determines its outputs (not resources, not name)."""
    ins: list[tuple[str, str, str]] = []
    for n, v in node.inputs.items():
        if isinstance(v, (FileNode, OutputRef)):
            digest = input_digests.get(n)
            if not digest:
                raise GraphError(f"step {node.name!r}: no digest given for input {n!r}")
            ins.append((n, v.kind, digest))
        else:
            ins.append((n, "s", scalar_text(v)))
    ins.sort()
    static = _static_key(
        node.image, node.template, tuple(node.outputs.items()), tuple(node.env.items()),
        node.network,
    )
    text = static + json.dumps(ins, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_result_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise GraphError(f"result name {name!r} must be a non-empty string")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise GraphError(
            f"result name {name!r} must be a relative name like 'counts' or 'qc/report' "
            "(no leading '/', no '.', '..' or empty parts)"
        )
    return name


def _check_result_value(name: str, value: object) -> FileNode | OutputRef:
    if isinstance(value, (FileNode, OutputRef)):
        return value
    if isinstance(value, ExecNode):
        outs = list(value.outputs)
        hint = f'{value.name}["{outs[0]}"]' if outs else "one of its outputs"
        raise GraphError(f"result {name!r} is a whole step; return an output of it, e.g. {hint}")
    raise GraphError(
        f"result {name!r} is a {type(value).__name__}; results are step outputs (node['out']) "
        "or rf.file/rf.dir"
    )


def normalize_result(value: object) -> dict[str, FileNode | OutputRef]:
    """What `main` returned as a {name: ref} mapping (dict, single ref, or list/tuple)."""
    if isinstance(value, (FileNode, OutputRef)):
        return {"result": value}
    if isinstance(value, (list, tuple)):
        items: list[tuple[object, object]] = [(str(i), v) for i, v in enumerate(value)]
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise GraphError(
            f"main returned {type(value).__name__}; it must return a step output "
            "(node['out']), rf.file/rf.dir, a list of them, or a dict of name -> them"
        )
    out: dict[str, FileNode | OutputRef] = {}
    for k, v in items:
        name = _check_result_name(k)
        out[name] = _check_result_value(name, v)
    for b in out:
        parts = b.split("/")
        for i in range(1, len(parts)):
            a = "/".join(parts[:i])
            if a in out:
                raise GraphError(f"result names {a!r} and {b!r} clash: {a!r} cannot be both")
    return out


def walk(result: Mapping[str, Any]) -> list[ExecNode]:
    """Every exec node reachable from the results, dependencies first, in a stable order."""
    order: list[ExecNode] = []
    seen: set[int] = set()
    for ref in result.values():
        if not isinstance(ref, OutputRef) or id(ref.node) in seen:
            continue
        # Iterative post-order DFS: long chains must not hit the recursion limit.
        stack: list[tuple[ExecNode, Iterator[Any]]] = [(ref.node, iter(ref.node.inputs.values()))]
        seen.add(id(ref.node))
        while stack:
            node, it = stack[-1]
            for v in it:
                if isinstance(v, OutputRef) and id(v.node) not in seen:
                    seen.add(id(v.node))
                    stack.append((v.node, iter(v.node.inputs.values())))
                    break
            else:
                stack.pop()
                order.append(node)
    return order
