"""A user's program: load its module, bind a CSV row to `main`'s parameters, call `main`.

Imports the program file itself; never touches the event log, executors or the network.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import pathlib
import sys
import traceback
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
from reflowes.engine.errors import ProgramError, SheetError
from reflowes.engine.graph import FileNode, OutputRef, base_dir, normalize_result

_TRUE = {"true", "yes", "1", "y", "t", "on"}
_FALSE = {"false", "no", "0", "n", "f", "off"}
_CONVERTIBLE = (str, int, float, bool, pathlib.Path)
_BY_NAME: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}
_counter = itertools.count()


@attrs.frozen
class Param:
    """One parameter of `main`: its name, the type CSV text converts to, and its default."""

    name: str
    type: type = str
    optional: bool = False  # Optional[T]: an empty cell becomes None
    default: Any = inspect.Parameter.empty
    choices: tuple[Any, ...] | None = None  # Literal[...]: the only values accepted

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def convert(self, text: str, csv_dir: str) -> Any:
        """The CSV text as this parameter's type (ValueError with the reason when it is not)."""
        value = self._convert(text, csv_dir)
        defaulted = value is None or (value is self.default and text == "")
        if self.choices is not None and not defaulted and value not in self.choices:
            raise ValueError(f"not one of {', '.join(map(repr, self.choices))}")
        return value

    def _convert(self, text: str, csv_dir: str) -> Any:
        if text == "" and self.optional:
            return None
        if text == "" and self.type is not str and not self.required:
            return self.default
        if self.type is str:
            return text
        if self.type is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("not a bool (use true/false, yes/no or 1/0)")
        if self.type is int:
            try:
                return int(text.strip())
            except ValueError:
                raise ValueError("not an int") from None
        if self.type is float:
            try:
                return float(text.strip())
            except ValueError:
                raise ValueError("not a number") from None
        if not text:
            raise ValueError("empty path")
        return pathlib.Path(csv_dir, os.path.expanduser(text))


def _param_type(path: str, name: str, hint: Any) -> tuple[type, bool, tuple[Any, ...] | None]:
    """(type, optional, choices) for a hint, or ProgramError when CSV text cannot become it."""
    if hint is inspect.Parameter.empty or hint is Any or hint is object:
        return str, False, None
    optional = False
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            hint, optional = args[0], True
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        kinds = {type(c) for c in choices}
        if len(kinds) == 1 and kinds <= {str, int}:
            return kinds.pop(), optional, choices
    if isinstance(hint, type) and issubclass(hint, pathlib.PurePath):
        return pathlib.Path, optional, None
    if hint in _CONVERTIBLE:
        return hint, optional, None
    raise ProgramError(
        path,
        f"main's type hint {hint!r} cannot be filled from CSV text; use str, int, float, "
        "bool, pathlib.Path, Literal[...] of str or of int, or Optional[...] of them",
        param=name,
    )


def _program_line(path: str, tb: types.TracebackType | None) -> int | None:
    """The deepest line of the traceback that is in the program file."""
    line = None
    for frame, lineno in traceback.walk_tb(tb):
        if os.path.abspath(frame.f_code.co_filename) == path:
            line = lineno
    return line


@attrs.define
class Program:
    """A loaded program: its `main`, the parameters it takes and the digest of its source."""

    path: str
    digest: str
    main: Callable[..., Any]
    params: dict[str, Param]
    accepts_var_kw: bool
    module: types.ModuleType
    # The directory relative paths resolve against in `call`: the CSV's, learnt from `bind`.
    base: str | None = None

    def bind(
        self,
        values: Mapping[str, str],
        *,
        id_column: str,
        row: int,
        csv: str,
        reserved: Collection[str] = ("program",),
    ) -> dict[str, object]:
        """Keyword arguments for `main` from one CSV row (strings converted by type hints).

        The id column and `reserved` columns (the `program` column) are passed only when `main`
        has a parameter of that name. `row` is the CSV line number (the spreadsheet row).
        """
        csv_dir = os.path.dirname(os.path.abspath(csv))
        self.base = csv_dir
        kwargs: dict[str, object] = {}
        for column, text in values.items():
            param = self.params.get(column)
            if param is None:
                if column == id_column or column in reserved:
                    continue
                if not self.accepts_var_kw:
                    raise SheetError(
                        csv,
                        f"column is not a parameter of main in {self.path} (main takes: "
                        f"{', '.join(self.params) or 'nothing'}); rename or remove the column, "
                        "or add **params to main",
                        row=row,
                        column=column,
                    )
                kwargs[column] = text
                continue
            try:
                kwargs[column] = param.convert(text, csv_dir)
            except ValueError as e:
                raise SheetError(
                    csv,
                    f"{text!r} for main's parameter {column!r} ({param.type.__name__}): {e}",
                    row=row,
                    column=column,
                ) from None
        for name, param in self.params.items():
            if param.required and name not in kwargs:
                raise SheetError(
                    csv,
                    f"main in {self.path} requires parameter {name!r} but the CSV has no "
                    f"column {name!r}",
                    row=row,
                    column=name,
                )
        return kwargs

    def call(
        self, kwargs: Mapping[str, object], *, run_id: str, base: str | None = None
    ) -> dict[str, FileNode | OutputRef]:
        """Run `main` (relative paths against the CSV's directory) and normalize its result."""
        with base_dir(base or self.base or os.getcwd()):
            try:
                return normalize_result(self.main(**kwargs))
            except (Exception, SystemExit) as e:
                line = _program_line(self.path, e.__traceback__)
                where = f" (line {line})" if line else ""
                raise ProgramError(
                    self.path, f"run {run_id!r}: {type(e).__name__}: {e}{where}"
                ) from e


def _signature(path: str, main: Callable[..., Any]) -> tuple[dict[str, Param], bool]:
    try:
        sig = inspect.signature(main)
    except (TypeError, ValueError) as e:
        raise ProgramError(path, f"cannot read main's signature: {e}") from None
    try:
        hints = typing.get_type_hints(main)
    except Exception:  # noqa: BLE001 - any unresolvable annotation: fall back to the text
        hints = {}
    params: dict[str, Param] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.kind is p.POSITIONAL_ONLY:
            raise ProgramError(
                path, "main's parameters must be passable by name (no '/')", param=p.name
            )
        else:
            hint = hints.get(p.name, p.annotation)
            if isinstance(hint, str):
                hint = _BY_NAME.get(hint, hint)
            if isinstance(hint, str):
                raise ProgramError(path, f"cannot resolve type hint {hint!r}", param=p.name)
            kind, optional, choices = _param_type(path, p.name, hint)
            params[p.name] = Param(p.name, kind, optional, p.default, choices)
    return params, var_kw


def load_program(path: str | os.PathLike[str]) -> Program:
    """Import the program file under a unique module name and inspect its `main`."""
    path = os.path.abspath(os.fspath(path))
    try:
        source = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise ProgramError(path, "no such program file") from None
    except IsADirectoryError:
        raise ProgramError(path, "is a directory, not a program file") from None
    except OSError as e:
        raise ProgramError(path, f"cannot read: {e.strerror or e}") from None
    digest = hashlib.sha256(source).hexdigest()
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise ProgramError(path, f"syntax error at line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # e.g. null bytes
        raise ProgramError(path, f"cannot compile: {e}") from None
    name = f"reflowes_program_{digest[:12]}_{next(_counter)}"
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module  # so dataclasses/pickle inside the program can find it
    # As `python pipeline.py` would, let the program import modules that sit beside it.
    sys.path.insert(0, os.path.dirname(path))
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the user's program is the point
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        line = _program_line(path, e.__traceback__)
        where = f" at line {line}" if line else ""
        raise ProgramError(
            path, f"failed while importing{where}: {type(e).__name__}: {e}"
        ) from e
    finally:
        sys.path.remove(os.path.dirname(path))
    main = module.__dict__.get("main")
    if main is None:
        raise ProgramError(path, "defines no main(); add def main(...) that builds the steps")
    if not callable(main):
        raise ProgramError(path, f"main is a {type(main).__name__}, not a function")
    params, var_kw = _signature(path, main)
    return Program(path, digest, main, params, var_kw, module)
