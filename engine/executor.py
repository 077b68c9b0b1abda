"""What the shell asks of executors and pools: the contract the local and Docker ones fulfil.

Executors and pools are the imperative edge: they touch processes, containers and files, and
report what happened as fact events (ExecCreated/ExecStarted/ExecExited/ExecLost,
AllocGranted/AllocDied). They never call back into the scheduler core.
"""

from __future__ import annotations

import shlex
import string
from typing import Protocol

import attrs

from reflowes.events.model import Event, FileRef
from reflowes.events.resources import Resources


@attrs.frozen(kw_only=True)
class ExecSpec:
    """One attempt of one step, as an executor needs it.

    `template` is the step's command with `{name}` placeholders (`{{`/`}}` for braces).
    Each name is an input (a FileRef in the repository, staged in read-only), an output
    ("file" or "dir", collected and hashed into the repository on exit 0), or a scalar
    (a string). The executor picks the paths; `render` shell-quotes every value.
    """

    exec_id: str
    task_id: str
    alloc_id: str
    template: str
    inputs: dict[str, FileRef] = attrs.field(factory=dict)
    outputs: dict[str, str] = attrs.field(factory=dict)
    scalars: dict[str, str] = attrs.field(factory=dict)
    image: str | None = None
    resources: Resources = Resources(1, 500 << 20, 0, 0)
    env: dict[str, str] = attrs.field(factory=dict)
    network: bool = False
    ident: str = ""


def placeholders(template: str) -> list[str]:
    """The `{name}` placeholders of a command template, in order (ValueError if malformed)."""
    names = []
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier() or spec or conv:
            raise ValueError(f"bad placeholder {{{field}}} in command (use {{name}})")
        names.append(field)
    return names


def render(template: str, values: dict[str, str]) -> str:
    """The template with every placeholder replaced by its shell-quoted value."""
    return template.format_map({k: shlex.quote(str(v)) for k, v in values.items()})


class Executor(Protocol):
    """Runs execs on allocs; every call is idempotent by exec id."""

    kind: str  # "local" | "docker"

    def put(self, spec: ExecSpec) -> list[Event]:
        """Create and start the exec unless one with this id exists; returns the facts known
        now (ExecCreated, and ExecStarted when starting is synchronous — else it comes through
        poll); none when it already existed."""
        ...

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` seconds for outcomes; returns ExecExited/ExecLost facts
        (outputs already hashed into the repository)."""
        ...

    def recover(self, exec_id: str, task_id: str, handle: str | None) -> list[Event]:
        """After a controller restart: re-attach to a live exec (its outcome comes later
        through poll), collect an exited one (ExecExited now), or report ExecLost."""
        ...

    def kill(self, exec_id: str) -> None:
        """Stop the exec if it runs; no outcome is reported for it afterwards."""
        ...

    def running(self) -> int:
        """How many execs are in flight."""
        ...

    def close(self) -> None:
        """Stop waiting; execs still running are killed (local) or left to re-attach (docker)."""
        ...


class Pool(Protocol):
    """Carves allocs out of a machine's (or an engine's) resources."""

    def capacity(self) -> Resources:
        """The largest alloc this pool can ever grant (the core's max_alloc)."""
        ...

    def request(self, request_id: str, want: Resources, minimum: Resources) -> None:
        """Ask for an alloc of `want`, accepting down to `minimum`; the grant comes via poll."""
        ...

    def release(self, alloc_id: str) -> None:
        """Give an alloc back."""
        ...

    def restore(self, allocs: dict[str, Resources]) -> list[Event]:
        """After a restart: take back the allocs the log says are live; returns AllocDied
        for any that cannot be (and collects zombies of allocs that are not listed)."""
        ...

    def poll(self) -> list[Event]:
        """AllocGranted / AllocDied facts since the last call."""
        ...
