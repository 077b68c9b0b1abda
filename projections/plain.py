"""JSON-ready forms of projection records: Structs as dicts (their snapshot form is arrays).

Imports only msgspec and the stdlib.
"""

from __future__ import annotations

from typing import Any

import msgspec
from reflowes.projections.records import Records


def plain(value: Any) -> Any:
    """Structs as dicts by field name, recursively; enums, attrs values and the rest as builtins."""
    if isinstance(value, msgspec.Struct):
        return {f: plain(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, Records):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return msgspec.to_builtins(value)
