"""reflowes: batches of workflow runs over an embedded SQLite event log.

This module holds only the program API (`import reflowes as rf`).
"""

from reflowes.engine.graph import (
    DIR,
    FILE,
    ExecNode,
    FileNode,
    GraphError,
    OutputRef,
    dir,
    exec,
    file,
)

__all__ = [
    "DIR",
    "FILE",
    "ExecNode",
    "FileNode",
    "GraphError",
    "OutputRef",
    "dir",
    "exec",
    "file",
]
