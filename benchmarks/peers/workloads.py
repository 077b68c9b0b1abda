"""The workloads as text: one generator per engine for W(N) (independent steps) and D(N) (fan-in).

Pure: returns file contents and paths; writes nothing. Every engine runs the same shell command
per step, `echo i > out/i.txt`, and the fan-in step `cat out/0.txt ... > all.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """W(n): n independent steps; D(n): n steps and one that concatenates their outputs."""

    kind: str  # "W" or "D"
    n: int

    def __post_init__(self) -> None:
        if self.kind not in ("W", "D") or self.n < 1:
            raise ValueError(f"bad workload {self.kind}({self.n})")

    @property
    def label(self) -> str:
        return f"{self.kind}({self.n:,})"

    @property
    def steps(self) -> int:
        """Steps that run: n, plus the fan-in step for D."""
        return self.n + (1 if self.kind == "D" else 0)


def step_command(i: int) -> str:
    """The shell command of step i, as every engine runs it (paths relative to the work dir)."""
    return f"echo {i} > out/{i}.txt"


def cat_command(n: int) -> str:
    """The fan-in command: all step outputs, in order, into all.txt."""
    return "cat " + " ".join(f"out/{i}.txt" for i in range(n)) + " > all.txt"


def expected_outputs(w: Workload) -> dict[str, str]:
    """Relative path -> exact content of every output once the workload is done."""
    out = {f"out/{i}.txt": f"{i}\n" for i in range(w.n)}
    if w.kind == "D":
        out["all.txt"] = "".join(f"{i}\n" for i in range(w.n))
    return out


def xargs_script(w: Workload) -> str:
    """The floor: xargs -P 2 over the same commands; `test -s` makes a rerun skip finished steps."""
    lines = [
        "set -e",
        "mkdir -p out",
        f"seq 0 {w.n - 1} | xargs -P 2 -I{{}} sh -c 'test -s out/{{}}.txt || echo {{}} > out/{{}}.txt'",
    ]
    if w.kind == "D":
        lines.append(cat_command(w.n))
    return "\n".join(lines) + "\n"


def snakefile(w: Workload) -> str:
    """A rule per step through a wildcard; D adds a rule whose input is every step's output."""
    target = f'expand("out/{{i}}.txt", i=range({w.n}))' if w.kind == "W" else '"all.txt"'
    text = (
        'wildcard_constraints:\n    i=r"\\d+"\n\n'
        f"rule all:\n    input: {target}\n\n"
        'rule w:\n    output: "out/{i}.txt"\n    shell: "echo {wildcards.i} > {output}"\n'
    )
    if w.kind == "D":
        text += (
            f'\nrule cat:\n    input: expand("out/{{i}}.txt", i=range({w.n}))\n'
            '    output: "all.txt"\n    shell: "cat {input} > {output}"\n'
        )
    return text


def luigi_script(w: Workload) -> str:
    """One luigi Task per step with a LocalTarget; workers=2 and the local scheduler."""
    tasks = f"[W(i=i) for i in range({w.n})]" if w.kind == "W" else f"[Cat(n={w.n})]"
    return f"""import subprocess
import sys

import luigi


class W(luigi.Task):
    i = luigi.IntParameter()

    def output(self):
        return luigi.LocalTarget(f"out/{{self.i}}.txt")

    def run(self):
        subprocess.run(f"echo {{self.i}} > out/{{self.i}}.txt", shell=True, check=True)


class Cat(luigi.Task):
    n = luigi.IntParameter()

    def requires(self):
        return [W(i=i) for i in range(self.n)]

    def output(self):
        return luigi.LocalTarget("all.txt")

    def run(self):
        paths = " ".join(f"out/{{i}}.txt" for i in range(self.n))
        subprocess.run(f"cat {{paths}} > all.txt", shell=True, check=True)


if __name__ == "__main__":
    tasks = {tasks}
    sys.exit(0 if luigi.build(tasks, workers=2, local_scheduler=True) else 1)
"""


def redun_script(w: Workload) -> str:
    """One redun @task per step running the shell command and returning its File; D adds cat.

    A plain task with subprocess, not redun's `script()`: script() wraps each command in temp
    files and staging and cost ~0.5 s a step here, ten times this.
    """
    body = "[step(i) for i in range(n)]" if w.kind == "W" else "cat([step(i) for i in range(n)])"
    return f"""import subprocess

from redun import File, task

redun_namespace = "bench"


@task()
def step(i: int) -> File:
    subprocess.run(f"echo {{i}} > out/{{i}}.txt", shell=True, check=True)
    return File(f"out/{{i}}.txt")


@task()
def cat(parts: list) -> File:
    paths = " ".join(p.path for p in parts)
    subprocess.run(f"cat {{paths}} > all.txt", shell=True, check=True)
    return File("all.txt")


@task()
def main(n: int = {w.n}):
    return {body}
"""


REDUN_INI = """[backend]
db_uri = sqlite:///redun.db

[executors.default]
type = local
max_workers = 2
"""


def reflowes_program(w: Workload) -> str:
    """The reflowes program: W has one step per CSV row; D one row building n steps and a cat."""
    if w.kind == "W":
        return """import reflowes as rf


def main(i: int):
    step = rf.exec("echo {i} > {out}", inputs={"i": i}, outputs={"out": rf.FILE},
                   cpu=1, mem="64MiB")
    return {"out": step["out"]}
"""
    return """import reflowes as rf


def main(n: int):
    parts = [
        rf.exec("echo {i} > {out}", inputs={"i": i}, outputs={"out": rf.FILE},
                cpu=1, mem="64MiB")["out"]
        for i in range(n)
    ]
    cmd = "cat " + " ".join("{a%d}" % k for k in range(n)) + " > {out}"
    inputs = {"a%d" % k: p for k, p in enumerate(parts)}
    cat = rf.exec(cmd, inputs=inputs, outputs={"out": rf.FILE}, cpu=1, mem="64MiB")
    return {"out": cat["out"]}
"""


def reflowes_csv(w: Workload) -> str:
    """W: header id,i and one row per step; D: one row id,n."""
    if w.kind == "W":
        return "id,i\n" + "".join(f"{i},{i}\n" for i in range(w.n))
    return f"id,n\n0,{w.n}\n"


def reflowes_expected(w: Workload) -> dict[str, str]:
    """Relative path under the batch dir -> content, for reflowes' materialized results."""
    if w.kind == "W":
        return {f"w.reflowes/results/{i}/out": f"{i}\n" for i in range(w.n)}
    return {"w.reflowes/results/0/out": "".join(f"{i}\n" for i in range(w.n))}
