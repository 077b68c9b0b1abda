"""The scheduler core imports no clock, randomness, SQLite, Docker or AWS: checked in a fresh
interpreter, started without `site` so nothing is preloaded that could hide an import, and by
reading the core modules' import statements."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ["sqlite3", "sqlite_utils", "docker", "boto3", "botocore", "time", "random",
             "socket", "subprocess", "threading"]

# attrs itself (attr/_compat.py) imports `threading`, which imports `time` (monotonic). The core
# cannot do without attrs (the events are attrs classes), so the probe imports the allowed
# third-party dependencies first, notes what forbidden modules *they* bring, then drops every
# forbidden module from sys.modules: any later `import time` by the core (or by anything it
# newly loads) then reaches the spy finder, placed ahead of all others.
DEPENDENCIES = ["attrs", "immutables"]
ATTRS_BRINGS = {"threading", "time"}

# Runs under `python -S`: only the interpreter's own bootstrap modules are loaded; `time` is one
# of them (zipimport uses it) and is dropped too.
_PROBE = r"""
import sys
FORBIDDEN = set(%(forbidden)r)
preloaded = sorted(m for m in FORBIDDEN if m in sys.modules and m != "time")
sys.modules.pop("time", None)
asked = []

class Spy:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            asked.append(name)
        return None

sys.path[:0] = %(paths)r
for finder in %(finders)r:
    __import__(finder).install()
for dep in %(deps)r:
    __import__(dep)
by_deps = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
for m in by_deps:
    del sys.modules[m]
sys.meta_path.insert(0, Spy)
import reflowes.engine.core, reflowes.engine.check
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
sys.meta_path.remove(Spy)
import json
print(json.dumps({"preloaded": preloaded, "by_deps": by_deps, "asked": asked, "loaded": loaded}))
"""


def _probe(modules: str = "") -> dict[str, list[str]]:
    paths = site.getsitepackages() + [site.getusersitepackages()]
    finders = [p.stem for d in paths if Path(d).is_dir()
               for p in Path(d).glob("__editable___reflowes_*_finder.py")]
    code = _PROBE % {"forbidden": FORBIDDEN, "paths": paths, "finders": finders,
                     "deps": DEPENDENCIES}
    if modules:
        code = code.replace("import reflowes.engine.core, reflowes.engine.check", modules)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_core_and_check_import_nothing_impure() -> None:
    got = _probe()
    assert got["preloaded"] == []
    assert set(got["by_deps"]) <= ATTRS_BRINGS, f"a dependency now brings {got['by_deps']}"
    assert got["asked"] == [], f"the core asked for {got['asked']}"
    assert got["loaded"] == [], f"loaded after importing the core: {got['loaded']}"


def test_probe_can_fail() -> None:
    """The same probe notices a module that does import the clock and randomness."""
    got = _probe("import reflowes.engine.core, random, sqlite3, time")
    assert {"random", "sqlite3", "time"} <= set(got["asked"])
    assert {"random", "sqlite3"} <= set(got["loaded"])


CORE_MODULES = ["core", "transition", "decisions", "placement", "schedstate", "pmap", "check"]
ALLOWED = {"__future__", "heapq", "math", "bisect", "collections", "typing", "attrs",
           "immutables", "sortedcontainers", "reflowes"}


def test_core_modules_import_only_allowed_names() -> None:
    """The core's own import statements name only pure stdlib modules and allowed packages."""
    import ast

    from reflowes import engine

    base = Path(engine.__path__[0])
    for name in CORE_MODULES:
        tree = ast.parse((base / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [node.module or ""]
                if node.module == "reflowes.engine":
                    roots = [f"reflowes.engine.{a.name}" for a in node.names]
            else:
                continue
            for mod in roots:
                assert mod.split(".")[0] in ALLOWED, f"engine/{name}.py imports {mod}"
                if mod.startswith("reflowes."):
                    assert mod.startswith(("reflowes.events.", "reflowes.engine.")), mod
                if mod.startswith("reflowes.engine."):
                    assert mod.split(".")[2] in CORE_MODULES, f"engine/{name}.py imports {mod}"
