"""The engine: evaluator, shell, executors and the pure scheduler core.

The core (CORE_MODULES) is compiled by mypyc when the build could (setup.py). A compiled core
whose sources have changed since it was built, or any under REFLOWES_PURE=1, is bypassed: its
modules are then loaded from their .py files. COMPILED tells which one runs.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location

from reflowes.engine.corebuild import CORE_MODULES, core_digest

_HERE = os.path.dirname(os.path.abspath(__file__))


class _SourceCore:
    """Meta path finder: the core's modules from their .py files, ahead of any compiled ones."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        pkg, _, mod = name.rpartition(".")
        if pkg == __name__ and mod in CORE_MODULES:
            return spec_from_file_location(name, os.path.join(_HERE, f"{mod}.py"))
        return None


def _compiled_core_usable() -> bool:
    if os.environ.get("REFLOWES_PURE"):
        return False
    try:
        with open(os.path.join(_HERE, "corelib.digest")) as f:
            return f.read().strip() == core_digest(_HERE)
    except OSError:
        return False


COMPILED = (any(f.startswith("corelib__mypyc") for f in os.listdir(_HERE))
            and _compiled_core_usable())
if not COMPILED:  # also when only some of the compiled modules were built
    sys.meta_path.insert(0, _SourceCore)
