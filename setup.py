"""Build: the scheduler core compiled with mypyc when it can be (REFLOWES_PURE=1 at build: never).

Everything else is in pyproject.toml. The compiled core is used only while its sources are the
ones it was built from (engine/__init__.py checks the digest written here); after editing them,
`pip install -e .` rebuilds it, and until then the pure-Python modules are used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


def _corebuild():  # type: ignore[no-untyped-def]
    """engine/corebuild.py, loaded by path: the package is not importable while it is built."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_reflowes_corebuild",
                                                  HERE / "engine" / "corebuild.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def core_extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("REFLOWES_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # built without the build requirements: the pure core it is
        return []
    # mypyc names a module by its place in a package tree, and the source folders are mapped
    # onto reflowes.* by pyproject: stage what the core's types come from as that tree.
    stage = HERE / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    for src in ("events", "engine"):
        shutil.copytree(HERE / src, stage / "reflowes" / src,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (stage / "reflowes" / "__init__.py").write_text("")  # the core needs none of the program API
    build = _corebuild()
    try:
        exts = mypycify([str(stage / "reflowes" / "engine" / f"{m}.py")
                         for m in build.CORE_MODULES],
                        group_name="reflowes.engine.corelib")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (mypyc exits on type errors)
        print(f"reflowes: the core is not compiled ({e!r}); the pure-Python core will run")
        return []
    (HERE / "engine" / "corelib.digest").write_text(build.core_digest(str(HERE / "engine"))
                                                    + "\n")
    return exts


class OptionalBuildExt(build_ext):
    """No C compiler or headers: install the pure-Python core rather than fail."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 (any compiler failure)
            print(f"reflowes: the core is not compiled ({e!r}); the pure-Python core will run")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            print(f"reflowes: {ext.name} is not compiled ({e!r}); the pure-Python core will run")


setup(ext_modules=core_extensions(), cmdclass={"build_ext": OptionalBuildExt},
      package_data={"reflowes.engine": ["corelib.digest"]})
