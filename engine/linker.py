"""A helper process that links runs' results into place, off the controller's loop.

A results dir costs the kernel ~100 us on this ext4 (up to 450 us after mass deletions: the
inode allocator skips recently freed inodes), on the loop's CPU, once per run. The linker takes
that work to another process (a thread would need the GIL between its syscalls, which measured
worse). It reads one JSON line per run, `[dest, [[name, source], ...]]`, links each source (an
object of the repository) as `dest/name`, whole: made as `.<name>.partial` beside `dest` and
renamed into place. It naps between reads (a blocking reader would be woken by every write).
A failure is one JSON line `[dest, error]` on its stdout; `close` returns them.
"""

from __future__ import annotations

import json
import subprocess
import sys

from reflowes.engine.localproc import READ_LINES

PARTIAL = ".partial"

_LINKER = READ_LINES + """
import json, shutil

def write(dest, items):
    head, tail = os.path.split(dest)
    tmp = os.path.join(head, "." + tail + PARTIAL)
    try:
        os.mkdir(tmp)
    except FileExistsError:
        shutil.rmtree(tmp)
        os.mkdir(tmp)
    except FileNotFoundError:
        os.makedirs(tmp)
    for name, src in items:
        target = os.path.join(tmp, name)
        try:
            os.link(src, target)
        except FileNotFoundError:
            raise
        except OSError:  # another filesystem: a read-only copy
            shutil.copyfile(src, target)
            os.chmod(target, 0o444)
    try:
        os.rename(tmp, dest)
    except OSError:  # an earlier dir of the run is in the way
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)

def run(line):
    dest, items = json.loads(line)
    try:
        write(dest, items)
    except OSError as e:
        print(json.dumps([dest, str(e)]), flush=True)

read_lines(run, 0.05)
""".replace("PARTIAL", repr(PARTIAL))


class Linker:
    """The controller's end: `link` queues a run's results; `close` waits for all of them."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def link(self, dest: str, items: list[tuple[str, str]]) -> None:
        """Link each (name, source path) as dest/name, soon."""
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LINKER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                bufsize=0)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps([dest, items]).encode() + b"\n")

    def close(self) -> list[tuple[str, str]]:
        """Wait until every queued run is linked; the (dest, error) of those that failed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return []
        out, _ = proc.communicate()
        return [tuple(json.loads(line)) for line in out.splitlines() if line.strip()]
