"""The local executor: each exec is a shell script in a private dir `workdir/<exec id>/`
(inputs under in/, outputs under out/, stdout, stderr; HOME and TMPDIR point there; the host's
PATH and nothing else of its environment; the dir of a step that succeeded silently is reused).
With memory cgroups (reused, one per running exec) it runs in a subshell of a resident shell
(localshell.py: no exec per step), whose process group the guardian watches; else it is a
`/bin/sh -c` process in its own process group under RLIMIT_AS. Imports no docker."""

from __future__ import annotations

import os
import re
import resource
import select
import shlex
import shutil
import signal
import time

from reflowes.engine.errors import InfraError
from reflowes.engine.executor import ExecSpec, render
from reflowes.engine.localcollect import Outputs
from reflowes.engine.localmem import Group, MemoryGroups
from reflowes.engine.localpool import LocalPool
from reflowes.engine.localproc import MARKER, Guardian, kill_if_ours, kill_marked, tail
from reflowes.engine.localshell import Resident, Shells, exportable
from reflowes.engine.repository import Repository, RepositoryError
from reflowes.events.model import Event, ExecCreated, ExecExited, ExecLost
from reflowes.events.resources import format_size

__all__ = ["MARKER", "LocalExecutor", "LocalPool"]

SHELL = "/bin/sh"
# Python ignores these; a step must not inherit that (`yes | head` would print EPIPE errors).
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)
_SPARES = 64  # at most this many finished execs' dirs kept for reuse
# An allocation failing under RLIMIT_AS shows up as an error message, not a signal.
_OOM_TEXT = re.compile(
    rb"MemoryError|Cannot allocate memory|out of memory|bad_alloc|memory exhausted|"
    rb"failed to allocate|Out of memory|cannot allocate|std::bad_alloc|ENOMEM", re.IGNORECASE
)


class _Exec:
    """One exec in flight."""

    __slots__ = ("cgroup", "dir", "killed", "limit", "pid", "pidfd", "shell", "spec", "started")

    def __init__(self, spec: ExecSpec, d: str, pid: int, pidfd: int, limit: int,
                 cgroup: Group | None, shell: Resident | None = None) -> None:
        self.spec, self.dir, self.pid, self.pidfd, self.limit = spec, d, pid, pidfd, limit
        self.cgroup, self.shell = cgroup, shell
        self.started = time.monotonic()
        self.killed = False


class LocalExecutor:
    """Runs execs as local processes; outcomes are collected by `poll` through pidfds."""

    kind = "local"

    def __init__(
        self, repo: Repository, workdir: str | os.PathLike[str], memory: str = "auto"
    ) -> None:
        """`memory`: "cgroup" (cgroup v1 memory groups, reused: RSS+cache limit, exact peak,
        OOM kills counted), "rlimit" (RLIMIT_AS: an address-space limit; failed allocations
        read as OOM; peak from ru_maxrss), "auto" (cgroup if the controller's memory cgroup
        is writable, else rlimit)."""
        if memory not in ("auto", "cgroup", "rlimit"):
            raise ValueError(f"memory must be auto, cgroup or rlimit, not {memory!r}")
        self._mem = MemoryGroups.open() if memory != "rlimit" else None
        if memory == "cgroup" and self._mem is None:
            raise InfraError("no writable cgroup v1 memory controller for local steps "
                             "(run as root, or use memory='rlimit')")
        self.memory = "cgroup" if self._mem else "rlimit"
        self._mem_required = memory == "cgroup"
        self.repo = repo
        self.workdir = os.path.abspath(os.fspath(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        self._known: set[str] = set()
        self._spare: list[tuple[str, bool]] = []  # dirs of finished execs to reuse (has out/)
        self._live: dict[int, _Exec] = {}  # by pidfd
        self._ready: list[Event] = []  # outcomes decided at put time (staging failures)
        self._poller = select.poll()
        self._outputs = Outputs(repo, self._poller)
        self._guardian = Guardian(self._mem.base if self._mem is not None else None)
        self._path = os.environ.get("PATH") or os.defpath
        self._null_fds = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        # A resident shell's MARKER value: the batch's workdir (one controller per batch).
        self._marker = f"shell:{self.workdir}"
        self._shells = Shells(SHELL, self._path, (MARKER, self._marker), self._poller,
                              self._guardian)

    # ------------------------------------------------------------ put

    def put(self, spec: ExecSpec) -> list[Event]:
        """Stage the inputs, start the process; nothing when this exec id was put before."""
        if spec.exec_id in self._known:
            return []
        self._known.add(spec.exec_id)
        d = self._make_dir(spec)
        values: dict[str, str] = dict(spec.scalars)
        try:
            for name, ref in spec.inputs.items():
                dest = values[name] = f"{d}/in/{name}"
                self.repo.materialize(ref, dest)
            for name, kind in spec.outputs.items():
                dest = values[name] = f"{d}/out/{name}"
                if kind == "dir":
                    os.mkdir(dest)
            cmd = render(spec.template, values)
        except RepositoryError as e:
            return self._failed(spec, d, f"cannot stage inputs: {e}")
        except (KeyError, IndexError, ValueError) as e:
            return self._failed(spec, d, f"cannot render the command: {e!r}")
        limit = spec.resources.mem
        # The child creates its own log files (after exec, in the prologue): creating files is
        # slow on a busy disk and posix_spawn blocks the controller until the exec.
        prologue = f"cd {shlex.quote(d)} || exit 126\nexec >stdout 2>stderr\n"
        cgroup = None
        if self._mem is not None:
            try:
                cgroup = self._mem.acquire(limit)
                prologue += self._mem.prologue(cgroup)
            except OSError as e:
                if self._mem_required:
                    raise InfraError(f"cannot make a memory cgroup for a step: {e}") from e
                self._mem, self.memory = None, "rlimit"  # writable but refused: fall back
        if cgroup is None and limit > 0:
            prologue += f"ulimit -v {max(limit >> 10, 1)} 2>/dev/null\n"
        if cgroup is not None and exportable(spec.env):
            started = self._run_resident(spec, d, cmd, limit, cgroup)
            if started is not None:
                return started
        env = {"PATH": self._path, "HOME": d, "TMPDIR": d}
        env.update(spec.env)
        env[MARKER] = spec.exec_id
        # The step gets the scheduler's defaults: pinning the spawner to its CPU around the
        # spawn, and a short slice for it, made 10,000 steps 1.3-1.6x slower (session 5).
        try:
            pid = os.posix_spawn(SHELL, [SHELL, "-c", prologue + cmd], env, setpgroup=0,
                                 file_actions=self._null_fds, setsigdef=_SIGDEF)
        except OSError as e:  # e.g. a command beyond the kernel's argument size limit
            if cgroup is not None and self._mem is not None:
                self._mem.release(cgroup)
            return self._failed(spec, d, f"cannot start {SHELL}: {e}")
        self._guardian.add(pid)  # at once: the controller may die before its next poll
        self._guardian.flush(lambda: [*self._live_pids(), pid])
        pidfd = os.pidfd_open(pid)
        self._live[pidfd] = _Exec(spec, d, pid, pidfd, limit, cgroup)
        self._poller.register(pidfd, select.POLLIN)
        return [
            ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                        executor="local", handle=str(pid), resources=spec.resources,
                        config={"cmd": cmd, "workdir": d, "memory": self.memory},
                        started=True),
        ]

    def _run_resident(self, spec: ExecSpec, d: str, cmd: str, limit: int,
                      cgroup: Group) -> list[Event] | None:
        """Start the step in a resident shell's subshell; None if no shell can be had."""
        env = {**spec.env, MARKER: spec.exec_id}
        sh = self._shells.start(d, env, cgroup.join, cmd)
        if sh is None:
            return None
        self._guardian.flush(self._live_pids)  # a new shell's group, at once
        self._live[sh.report_fd] = _Exec(spec, d, sh.pid, sh.report_fd, limit, cgroup, sh)
        return [
            ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                        executor="local", handle=str(sh.pid), resources=spec.resources,
                        config={"cmd": cmd, "workdir": d, "memory": self.memory},
                        started=True),
        ]

    def _make_dir(self, spec: ExecSpec) -> str:
        """The exec's private dir: a spare one renamed (a rename allocates nothing; a mkdir
        costs 20-400 us of kernel CPU on a busy ext4), else made, with in/ and out/ if used."""
        d = f"{self.workdir}/{spec.exec_id}"
        reused = has_out = False
        if self._spare:
            spare, has_out = self._spare.pop()
            try:  # fails if `d` was left non-empty by an earlier controller (handled below)
                os.rename(spare, d)
                reused = True
            except OSError:
                has_out = False
        if not reused:
            try:
                os.mkdir(d)
            except FileExistsError:  # left by an earlier controller: its process must not live on
                kill_marked(spec.exec_id)
                try:
                    shutil.rmtree(d)
                except OSError:  # e.g. read-only dirs a step made: set it aside instead
                    os.rename(d, f"{d}.stale-{time.time_ns()}")
                os.mkdir(d)
        # Every mkdir costs (metadata ops are slow on a busy disk): only the dirs needed.
        if spec.inputs:
            os.mkdir(f"{d}/in")
        if spec.outputs and not has_out:
            os.mkdir(f"{d}/out")
        elif has_out and not spec.outputs:
            os.rmdir(f"{d}/out")
        return d

    def _recycle(self, ex: _Exec) -> None:
        """Keep the dir of an exec that succeeded and left nothing to read (empty stdout and
        stderr, no file but its outputs, which are in the repository now) as a spare for
        the next exec. Such an exec leaves no dir behind; `reflowes logs` says so."""
        spec, d = ex.spec, ex.dir
        if spec.inputs or len(self._spare) >= _SPARES:
            return
        try:
            if os.stat(f"{d}/stdout").st_size or os.stat(f"{d}/stderr").st_size:
                return
            names = os.listdir(d)
            if len(names) != (3 if spec.outputs else 2):
                return
            if spec.outputs:
                if sorted(os.listdir(f"{d}/out")) != sorted(spec.outputs):
                    return
                for name in spec.outputs:
                    os.unlink(f"{d}/out/{name}")
        except OSError:
            return
        self._spare.append((d, bool(spec.outputs)))

    def _live_pids(self) -> list[int]:
        """The process groups the guardian must kill: steps' and resident shells'."""
        return ([e.pid for e in self._live.values() if e.shell is None]
                + self._shells.pids())

    def _failed(self, spec: ExecSpec, d: str, error: str) -> list[Event]:
        self._ready.append(ExecExited(exec_id=spec.exec_id, task_id=spec.task_id, exit_code=-1,
                                      error=error))
        return [ExecCreated(exec_id=spec.exec_id, task_id=spec.task_id, alloc_id=spec.alloc_id,
                            executor="local", handle="", config={"workdir": d},
                            resources=spec.resources)]

    # ------------------------------------------------------------ poll

    def poll(self, timeout: float) -> list[Event]:
        """Outcomes of the execs that ended, waiting up to `timeout` seconds for the first."""
        self._guardian.flush(self._live_pids)
        out, self._ready = self._ready, []
        if out:
            timeout = 0
        ready = self._poller.poll(max(0, int(timeout * 1000)) if timeout > 0 else 0)
        for fd, _ in ready:
            ex = self._live.get(fd)
            if ex is None:
                if fd in self._shells.by_fd:  # an idle shell died
                    self._shells.drop(self._shells.by_fd[fd])
                continue
            if ex.shell is not None:
                ev = self._shell_exited(ex)
                if ev is not None:
                    out.append(ev)
                continue
            try:
                pid, status, usage = os.wait4(ex.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the outcome is unknown
                self._forget(ex)
                out.append(ExecLost(exec_id=ex.spec.exec_id, task_id=ex.spec.task_id,
                                    reason="the step's process was reaped by someone else"))
                continue
            if pid == 0:
                continue
            self._forget(ex)
            if ex.cgroup is not None:
                peak, oom_killed = MemoryGroups.read(ex.cgroup)
                assert self._mem is not None
                self._mem.release(ex.cgroup)
            else:
                peak, oom_killed = self._peak(usage.ru_maxrss << 10), False
            if not ex.killed:
                code = os.waitstatus_to_exitcode(status)
                if code < 0:
                    code = 128 - code  # like a shell (and Docker): killed by signal N -> 128 + N
                ev = self._outcome(ex, code, peak, oom_killed)
                if ev is not None:
                    out.append(ev)
        out += self._outputs.ready()
        return out

    def _shell_exited(self, ex: _Exec) -> Event | None:
        """The outcome of a step run by a resident shell, once the shell reported it."""
        sh = ex.shell
        assert sh is not None and ex.cgroup is not None and self._mem is not None
        code = sh.status()
        if code is None:
            return None
        del self._live[sh.report_fd]
        peak, oom_killed = MemoryGroups.read(ex.cgroup)
        self._mem.release(ex.cgroup)  # kills what the step left running
        self._shells.done(sh, code)
        if ex.killed:
            return None
        if code < 0:
            return ExecLost(exec_id=ex.spec.exec_id, task_id=ex.spec.task_id,
                            reason=f"the shell running the step (pid {sh.pid}) died")
        return self._outcome(ex, code, peak, oom_killed)

    def _peak(self, maxrss: int) -> int:
        """The step's peak RSS, or 0 when unknown: a spawned process inherits the spawner's
        high-water mark (Linux exec_mmap), so values up to the controller's own are noise."""
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
        return maxrss if maxrss > floor else 0

    def _forget(self, ex: _Exec) -> None:
        try:  # leftovers of the step (background jobs) go with it, as in a container
            os.killpg(ex.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._guardian.remove(ex.pid)
        self._poller.unregister(ex.pidfd)
        os.close(ex.pidfd)
        del self._live[ex.pidfd]

    def _outcome(self, ex: _Exec, code: int, peak: int, oom_killed: bool) -> ExecExited | None:
        """The exec's outcome; None when its outputs are being hashed on a worker thread."""
        spec = ex.spec
        duration = time.monotonic() - ex.started
        if code != 0:
            last = tail(f"{ex.dir}/stderr")
            # cgroup: the kernel's OOM-kill counter says; rlimit: a failed allocation's message
            oom = oom_killed or (ex.cgroup is None and ex.limit > 0
                                 and _OOM_TEXT.search(last.encode()) is not None)
            if oom:  # the step needed more than its limit: the core's retry reads this
                peak = max(peak, ex.limit)
            return ExecExited(exec_id=spec.exec_id, task_id=spec.task_id, exit_code=code,
                              oom=oom, peak_mem=peak, stderr_tail=last, duration=duration,
                              error=(f"out of memory (limit {format_size(ex.limit)}, "
                                     f"{self.memory})") if oom else None)
        out = self._outputs.collect(spec, ex.dir, peak, duration)
        if out is not None and out.error is None:
            self._recycle(ex)
        return out

    # ------------------------------------------------------------ recover, kill, close

    def recover(self, exec_id: str, task_id: str, handle: str | None) -> list[Event]:
        """A local exec cannot be re-attached: kill it if it still runs, report it lost."""
        if exec_id in self._known:
            return []  # ours, in this controller: its outcome comes through poll
        self._known.add(exec_id)
        pid = int(handle) if handle and handle.isdigit() else 0
        # A step of an earlier controller: its own process, or the resident shell that ran it
        # (marked by the batch's workdir: one controller at a time per batch).
        killed = pid > 0 and (kill_if_ours(pid, exec_id) or kill_if_ours(pid, self._marker))
        reason = (f"process {pid} killed: a local exec cannot be re-attached after a restart"
                  if killed else "the controller restarted and the step's process is gone")
        return [ExecLost(exec_id=exec_id, task_id=task_id, reason=reason)]

    def kill(self, exec_id: str) -> None:
        """Stop the exec (its whole process group); no outcome is reported for it."""
        for ex in self._live.values():
            if ex.spec.exec_id == exec_id:
                ex.killed = True
                try:
                    os.killpg(ex.pid, signal.SIGKILL)  # a resident shell goes with its step
                except ProcessLookupError:
                    pass
                break
        self._outputs.drop(exec_id)
        self._ready = [e for e in self._ready if getattr(e, "exec_id", None) != exec_id]

    def running(self) -> int:
        """How many execs are in flight (including outcomes not yet polled)."""
        return len(self._live) + len(self._ready) + self._outputs.pending()

    def close(self) -> None:
        """Kill every exec still running and stop the guardian."""
        for ex in list(self._live.values()):
            ex.killed = True
            try:
                os.killpg(ex.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ex in list(self._live.values()):
            if ex.shell is not None:
                del self._live[ex.pidfd]
            else:
                try:
                    os.waitpid(ex.pid, 0)
                except ChildProcessError:
                    pass
                self._forget(ex)
            if ex.cgroup is not None:
                ex.cgroup.close()
        self._shells.close()
        self._outputs.close()
        self._guardian.flush(list)
        if self._mem is not None:
            self._mem.close()
        self._guardian.close()
