"""Process plumbing of the local executor: the guardian that kills step process groups when
the controller dies, markers that tell our processes apart, and log tails. Imports no engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

MARKER = "REFLOWES_EXEC"  # in every step's environment: how recover() knows a pid is ours
TAIL_LINES = 20
_TAIL_BYTES = 8192

# The loop of a helper process fed lines on its stdin by the controller (the guardian, the
# linker): reads without blocking, napping between reads (a blocked reader would be woken and
# scheduled by every write, which cost the controller ~0.5 ms per poll on a busy machine);
# calls handle(line) for each line, returns at EOF (the controller exited or died).
READ_LINES = """
import os, time
def read_lines(handle, nap):
    os.set_blocking(0, False)
    rest = b""
    while True:
        try:
            data = os.read(0, 1 << 16)
        except BlockingIOError:
            time.sleep(nap)
            continue
        if not data:
            return
        *lines, rest = (rest + data).split(b"\\n")
        for line in lines:
            handle(line)
"""

# Reads "+pgid" / "-pgid" lines; at EOF (the controller exited or died) kills every group left.
_GUARDIAN = READ_LINES + """
import signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
groups = set()
def group(line):
    try:
        pg = int(line[1:])
    except ValueError:
        return
    if line[:1] == b"+":
        groups.add(pg)
    else:
        groups.discard(pg)
read_lines(group, 0.1)
for pg in groups:
    try:
        os.killpg(pg, signal.SIGKILL)
    except OSError:
        pass
deadline = time.monotonic() + 2
while len(sys.argv) > 1 and os.path.isdir(sys.argv[1]) and time.monotonic() < deadline:
    for e in os.scandir(sys.argv[1]):
        try:
            os.rmdir(e.path)
        except OSError:
            pass
    try:
        os.rmdir(sys.argv[1])
    except OSError:
        time.sleep(0.02)
"""


class Guardian:
    """A small process that holds the list of live step process groups and kills them (and
    removes the controller's memory cgroups) when its pipe closes: when the controller exits
    or dies. Ends of groups are buffered until the next `flush`; the guardian naps between
    reads, so a write does not wake it (a wake-up per write cost ~0.7 ms on a busy machine)."""

    def __init__(self, cgroup_base: str | None = None) -> None:
        self.cgroup_base = cgroup_base
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf: list[bytes] = []

    @property
    def started(self) -> bool:
        return self._proc is not None

    def add(self, pgid: int) -> None:
        self._buf.append(b"+%d\n" % pgid)

    def remove(self, pgid: int) -> None:
        self._buf.append(b"-%d\n" % pgid)

    def flush(self, live: Callable[[], list[int]]) -> None:
        """Send the buffered messages (starting the guardian, or a new one for the `live()`
        groups if the old one was killed)."""
        if not self._buf:
            return
        data, self._buf = b"".join(self._buf), []
        if self._proc is None:
            argv = [sys.executable, "-I", "-S", "-c", _GUARDIAN]
            if self.cgroup_base:
                argv.append(self.cgroup_base)
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, bufsize=0,
            )
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self._proc = None
            self._buf = [b"+%d\n" % pg for pg in live()]
            self.flush(live)

    def close(self) -> None:
        """Stop the guardian (it kills whatever groups it still lists)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()


def tail(path: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:]).decode("utf-8", "replace")


def is_ours(pid: int, exec_id: str) -> bool:
    """True when `pid` runs a step of exec `exec_id` (its environment carries the marker)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return f"{MARKER}={exec_id}".encode() in env.split(b"\0")


def kill_if_ours(pid: int, exec_id: str) -> bool:
    if not is_ours(pid, exec_id):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
    return True


def kill_marked(exec_id: str) -> None:
    """Kill any process left running for `exec_id` by an earlier controller (rare path)."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        kill_if_ours(pid, exec_id)
