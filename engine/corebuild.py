"""Which modules make the compiled core, and the digest of their sources: setup.py records it at
build, engine/__init__.py compares it at import. Stdlib only: setup.py loads this file by path."""

from __future__ import annotations

import hashlib
import os

CORE_MODULES = ("core", "transition", "decisions", "schedstate", "placement", "pmap")


def core_digest(folder: str) -> str:
    """sha256 over the core's sources in `folder` (the engine's), in CORE_MODULES order."""
    h = hashlib.sha256()
    for m in CORE_MODULES:
        with open(os.path.join(folder, f"{m}.py"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()
