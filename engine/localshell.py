"""Resident shells for local steps: a `/bin/sh` per running step slot that reads steps on its
stdin and runs each in a subshell (a fork of a small process, no exec), reporting the exit
status on fd 3. Starting a step is a pipe write for the controller, and the step costs ~0.3 ms
of CPU instead of the ~1.2 ms of exec'ing a new shell (measured: 3,000 `echo` steps, 0.86 s
against 3.55 s for `sh -c` per step). Imports only localproc."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal

from reflowes.engine.localproc import Guardian

_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # what `export` accepts


class Resident:
    """One resident shell: its own session (the guardian kills its group if the controller
    dies), commands written to `cmd_fd`, exit statuses read from `report_fd`."""

    __slots__ = ("_rest", "busy", "cmd_fd", "pid", "report_fd")

    def __init__(self, shell: str, path: str, marker: tuple[str, str]) -> None:
        cmd_r, self.cmd_fd = os.pipe()
        self.report_fd, report_w = os.pipe()
        try:
            self.pid = os.posix_spawn(
                shell, [shell], {"PATH": path, marker[0]: marker[1]}, setsid=True,
                file_actions=[(os.POSIX_SPAWN_DUP2, cmd_r, 0),
                              (os.POSIX_SPAWN_DUP2, report_w, 3),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_RDWR, 0),
                              (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_RDWR, 0)],
                setsigdef=_SIGDEF)
        except OSError:
            os.close(self.cmd_fd)
            os.close(self.report_fd)
            raise
        finally:
            os.close(cmd_r)
            os.close(report_w)
        os.set_blocking(self.report_fd, False)
        self.busy = False
        self._rest = b""

    def run(self, d: str, env: dict[str, str], prologue: str, cmd: str) -> None:
        """Run `cmd` in a subshell: in dir `d` (HOME and TMPDIR too), stdout/stderr to files
        there, stdin from /dev/null, only `env` exported beside PATH, HOME and TMPDIR. Raises
        OSError if the shell is gone."""
        q = shlex.quote
        qd = q(d)
        exports = "".join([f" {k}={q(v)}" for k, v in env.items()])
        script = (f"(cd {qd} || exit 126\nexec >stdout 2>stderr </dev/null 3>&-\n{prologue}"
                  f"export HOME={qd} TMPDIR={qd}{exports}\neval {q(cmd)}\n)\necho $? >&3\n")
        data = script.encode()
        while data:
            data = data[os.write(self.cmd_fd, data):]
        self.busy = True

    def status(self) -> int | None:
        """The exit status of the step, when reported; -1 when the shell died (EOF); None
        when nothing complete was read yet."""
        try:
            data = os.read(self.report_fd, 64)
        except BlockingIOError:
            return None
        if not data:
            self.busy = False
            return -1
        line, nl, self._rest = (self._rest + data).partition(b"\n")
        if not nl:
            self._rest = line
            return None
        self.busy = False
        return int(line)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop the shell (EOF on its stdin ends it when idle; a busy one is killed) and reap it."""
        if self.busy:
            self.kill()
        os.close(self.cmd_fd)
        os.close(self.report_fd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def exportable(env: dict[str, str]) -> bool:
    """True when every name can be exported by a shell (else the step is exec'd directly)."""
    return all(NAME.match(k) for k in env)


class Shells:
    """The resident shells of one executor: idle ones are reused, one is started when none
    is idle (so there are as many as steps ever ran at once). Each shell's report fd is in the
    executor's poller for the shell's whole life; a readable idle shell has died."""

    def __init__(self, shell: str, path: str, marker: tuple[str, str], poller: select.poll,
                 guardian: Guardian) -> None:
        self.shell, self.path, self.marker = shell, path, marker
        self._poller, self._guardian = poller, guardian
        self._idle: list[Resident] = []
        self.by_fd: dict[int, Resident] = {}  # every shell, by its report fd

    def start(self, d: str, env: dict[str, str], prologue: str, cmd: str) -> Resident | None:
        """Run a step (see Resident.run) in an idle or new shell; None if no shell starts."""
        while True:
            sh = self._idle.pop() if self._idle else self._new()
            if sh is None:
                return None
            try:
                sh.run(d, env, prologue, cmd)
                return sh
            except OSError:  # it died while idle: its EOF is still unread
                self.drop(sh)

    def done(self, sh: Resident, code: int) -> None:
        """The step of `sh` reported `code` (-1: the shell died)."""
        if code < 0:
            self.drop(sh)
        else:
            self._idle.append(sh)

    def _new(self) -> Resident | None:
        try:
            sh = Resident(self.shell, self.path, self.marker)
        except OSError:
            return None
        self.by_fd[sh.report_fd] = sh
        self._poller.register(sh.report_fd, select.POLLIN)
        self._guardian.add(sh.pid)  # the guardian kills its group if the controller dies
        return sh

    def drop(self, sh: Resident) -> None:
        if self.by_fd.pop(sh.report_fd, None) is None:
            return
        if sh in self._idle:
            self._idle.remove(sh)
        self._poller.unregister(sh.report_fd)
        self._guardian.remove(sh.pid)
        sh.close()

    def pids(self) -> list[int]:
        return [sh.pid for sh in self.by_fd.values()]

    def close(self) -> None:
        for sh in list(self.by_fd.values()):
            self.drop(sh)
