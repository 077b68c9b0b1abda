"""`reflowes run`, `status` and `logs` end to end, through the real CLI on real files."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from reflowes.events.log import SqliteLog

PROGRAM = textwrap.dedent('''
    import reflowes as rf

    def main(sample: str, n: int, word: str = "x"):
        made = rf.exec("seq {n} > {out}", inputs={"n": n}, outputs={"out": rf.FILE}, name="make")
        shared = rf.exec("echo shared > {out}", outputs={"out": rf.FILE}, name="shared")
        tagged = rf.exec(
            "cat {src} {common} > {out}; printf '%s\\n' {word} >> {out}",
            inputs={"src": made["out"], "common": shared["out"], "word": word},
            outputs={"out": rf.FILE}, name="tag",
        )
        return {"tagged": tagged["out"]}
''')


def reflowes(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reflowes.cli.main", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "prog.py").write_text(PROGRAM)
    (tmp_path / "b.csv").write_text("sample,n,word\ns1,3,alpha\ns2,5,beta\ns3,2,gamma\n")
    env = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home"))
    return tmp_path, env


def kinds(log: Path, kind: str) -> list:
    with SqliteLog.open(log, readonly=True) as lg:
        return [r.event for r in lg.read(kinds=[kind])]


def test_runs_every_row_then_resumes_without_rerunning(batch):
    d, env = batch
    r = reflowes("run", "b.csv", "--program", "prog.py", cwd=d, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = (d / "b.reflowes/results/s2/tagged").read_text()
    assert out == "1\n2\n3\n4\n5\nshared\nbeta\n"
    log = d / "b.reflowes/log.sqlite"
    # the shared step ran once for three runs (single-flight + cache)
    submitted = kinds(log, "task.submitted")
    assert sorted(e.ident for e in submitted).count("shared") == 1
    assert len(kinds(log, "exec.created")) == 7
    # a new run's first try begins with its declaration: no run.phase event for it
    assert [e.tries for e in kinds(log, "run.declared")] == [1, 1, 1]
    assert kinds(log, "run.phase") == []
    r2 = reflowes("run", "b.csv", "--program", "prog.py", "--json", cwd=d, env=env)
    assert r2.returncode == 0, r2.stderr
    summary = json.loads(r2.stdout)
    assert summary["unchanged"] == 3 and summary["steps_run"] == 0
    assert 0 < summary["cpu"] < 60  # the controller's own CPU seconds (bench_run reads it)
    assert len(kinds(log, "exec.created")) == 7


def test_a_missing_results_dir_is_written_again_without_running_anything(batch):
    """Results are derived from the log: a rerun rewrites a done run's dir that is missing."""
    d, env = batch
    assert reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env).returncode == 0
    results = d / "b.reflowes/results"
    want = (results / "s2/tagged").read_bytes()
    for f in (results / "s2").iterdir():
        f.unlink()
    (results / "s2").rmdir()
    r = reflowes("run", "b.csv", "-p", "prog.py", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps_run"] == 0
    assert (results / "s2/tagged").read_bytes() == want
    assert sorted(p.name for p in results.iterdir()) == ["s1", "s2", "s3"]


def test_added_and_changed_rows_run_again(batch):
    d, env = batch
    assert reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env).returncode == 0
    (d / "b.csv").write_text("sample,n,word\ns1,3,alpha\ns2,5,BETA\ns3,2,gamma\ns4,1,delta\n")
    r = reflowes("run", "b.csv", "-p", "prog.py", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["unchanged"] == 2 and summary["done"] == 2
    assert (d / "b.reflowes/results/s2/tagged").read_text().endswith("BETA\n")
    assert (d / "b.reflowes/results/s4/tagged").read_text() == "1\nshared\ndelta\n"
    # s2's first two steps were cached: only its "tag" step and s4's "make" and "tag" ran
    assert summary["steps_run"] == 3


def test_hostile_scalar_is_just_a_value(batch):
    d, env = batch
    (d / "b.csv").write_text('sample,n,word\ns1,2,"a b;rm -rf x $(touch pwned)"\n')
    r = reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    text = (d / "b.reflowes/results/s1/tagged").read_text()
    assert text.endswith("a b;rm -rf x $(touch pwned)\n")
    assert not list(d.rglob("pwned"))


def test_failing_step_fails_its_run_with_stderr_tail_and_rerun_retries(batch):
    d, env = batch
    (d / "bad.py").write_text(textwrap.dedent('''
        import reflowes as rf
        def main(sample: str, n: int, word: str):
            return {"o": rf.exec("echo boom-{n} >&2; exit 3", inputs={"n": n},
                                 outputs={"out": rf.FILE}, name="fail")["out"]}
    ''').replace('"echo boom-{n} >&2; exit 3"', '"echo boom-{n} >&2; exit 3; : {out}"'))
    r = reflowes("run", "b.csv", "-p", "bad.py", cwd=d, env=env)
    assert r.returncode == 1
    assert "boom-3" in r.stdout and "exit" in r.stdout
    r = reflowes("status", "b.csv", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert "boom-5" in r.stdout
    before = len(kinds(d / "b.reflowes/log.sqlite", "exec.created"))
    r = reflowes("run", "b.csv", "-p", "bad.py", cwd=d, env=env)
    assert r.returncode == 1
    assert len(kinds(d / "b.reflowes/log.sqlite", "exec.created")) == before + 3
    r = reflowes("status", "b.csv", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert {run["tries"] for run in json.loads(r.stdout)["runs"]} == {2}  # second try


def test_missing_output_and_missing_input_are_clear(batch):
    d, env = batch
    (d / "p2.py").write_text(textwrap.dedent('''
        import reflowes as rf
        def main(sample: str, n: int, word: str):
            if sample == "s1":
                return {"o": rf.exec("true {out}", outputs={"out": rf.FILE}, name="lazy")["out"]}
            return {"o": rf.file("nowhere-" + sample + ".txt")}
    ''').replace('"true {out}"', '": {out}"'))
    r = reflowes("run", "b.csv", "-p", "p2.py", cwd=d, env=env)
    assert r.returncode == 1
    assert "no declared output" in r.stdout and "'out'" in r.stdout
    assert "nowhere-s2.txt" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("sample,n,word\ns1,3,a\ns1,4,b\n", "duplicate"),
    ("sample,n,word\ns1,3\n", "row 2"),
    ("sample,n,word,colour\ns1,3,a,red\n", "colour"),
    ("sample,n,word\ns1,three,a\n", "three"),
])
def test_bad_sheet_is_one_clear_line_and_keeps_what_was_done(batch, content, needle):
    d, env = batch
    assert reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env).returncode == 0
    log = d / "b.reflowes/log.sqlite"
    n_before = len(kinds(log, "run.finished"))
    (d / "b.csv").write_text(content)
    r = reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env)
    assert r.returncode != 0
    assert needle in r.stderr and "b.csv" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(kinds(log, "run.finished")) == n_before
    assert (d / "b.reflowes/results/s1/tagged").exists()


@pytest.mark.parametrize("program,needle", [
    ("missing.py", "missing.py"),
    ("nomain.py", "main"),
])
def test_bad_program_is_clear(batch, program, needle):
    d, env = batch
    (d / "nomain.py").write_text("x = 1\n")
    r = reflowes("run", "b.csv", "-p", program, cwd=d, env=env)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr


def test_main_raising_fails_only_that_run(batch):
    d, env = batch
    (d / "raiser.py").write_text(textwrap.dedent('''
        import reflowes as rf
        def main(sample: str, n: int, word: str):
            if n == 5:
                raise ValueError("five is not allowed")
            return {"o": rf.exec("seq {n} > {out}", inputs={"n": n}, outputs={"out": rf.FILE})["out"]}
    '''))
    r = reflowes("run", "b.csv", "-p", "raiser.py", "--json", cwd=d, env=env)
    assert r.returncode == 1
    summary = json.loads(r.stdout)
    assert summary["done"] == 2 and summary["failed"] == 1
    assert "five is not allowed" in summary["failures"][0]["error"]


def test_logs_lists_steps_and_prints_output(batch):
    d, env = batch
    assert reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env).returncode == 0
    r = reflowes("logs", "b.csv", "s1", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert "make" in r.stdout and "tag" in r.stdout
    (d / "noisy.py").write_text(textwrap.dedent('''
        import reflowes as rf
        def main(sample: str, n: int, word: str):
            return {"o": rf.exec("echo to-out-{n}; echo to-err-{n} >&2; echo x > {out}",
                                 inputs={"n": n}, outputs={"out": rf.FILE}, name="noisy")["out"]}
    '''))
    (d / "c.csv").write_text("sample,n,word\nq1,7,a\n")
    assert reflowes("run", "c.csv", "-p", "noisy.py", cwd=d, env=env).returncode == 0
    r = reflowes("logs", "c.csv", "q1", "noisy", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert "to-out-7" in r.stdout and "to-err-7" in r.stdout
    r = reflowes("logs", "c.csv", "nope", cwd=d, env=env)
    assert r.returncode != 0 and "nope" in r.stderr


def test_reset_starts_over_but_keeps_the_cache(batch):
    d, env = batch
    assert reflowes("run", "b.csv", "-p", "prog.py", cwd=d, env=env).returncode == 0
    r = reflowes("run", "b.csv", "-p", "prog.py", "--reset", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 3 and summary["steps_run"] == 0 and summary["steps_cached"] == 9
    assert (d / "b.reflowes/results/s3/tagged").exists()


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(batch):
    d, env = batch
    (d / "slow.py").write_text(textwrap.dedent('''
        import reflowes as rf
        def main(sample: str, n: int, word: str):
            return {"o": rf.exec("sleep 1; seq {n} > {out}", inputs={"n": n},
                                 outputs={"out": rf.FILE}, name="slow")["out"]}
    '''))
    p = subprocess.Popen([sys.executable, "-m", "reflowes.cli.main", "run", "b.csv", "-p",
                          "slow.py"], cwd=d, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    log = d / "b.reflowes/log.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and kinds(log, "exec.created"):  # a local exec: made and started
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    r = reflowes("run", "b.csv", "-p", "slow.py", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"] == 3
    assert (d / "b.reflowes/results/s2/o").read_text() == "1\n2\n3\n4\n5\n"


def test_bundled_example_runs(tmp_path):
    import shutil

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "examples" / "reads", tmp_path / "reads",
                    ignore=shutil.ignore_patterns("*.reflowes"))
    env = dict(os.environ, REFLOWES_HOME=str(tmp_path / "home"))
    r = reflowes("run", "reads/samples.csv", "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 5 and summary["steps_run"] == 21
    report = tmp_path / "reads/samples.reflowes/results/S3/report/summary.tsv"
    assert report.read_text().startswith("sample\tS3\nreads\t")


@pytest.mark.parametrize("chunk", [7, 2000])
def test_long_invocation_checkpoints_projections(batch, monkeypatch, chunk):
    """The CLI keeps the projections current from the groups as they are committed (folded
    `chunk` events at a time), stores them at each checkpoint and at the end: each snapshot is
    what folding the log gives."""
    from reflowes.cli import run as cli_run
    from reflowes.cli.run import _Projector
    from reflowes.engine import shell
    from reflowes.engine.batchplan import BatchOptions
    from reflowes.engine.layout import BatchLayout
    from reflowes.projections import fold

    d, _env = batch
    monkeypatch.setattr(shell, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(cli_run, "FOLD_CHUNK", chunk)
    seqs: list[int] = []
    snaps: list[tuple[int, bytes]] = []
    projector = _Projector()

    def checkpoint(log):
        seqs.append(log.last_seq())
        projector.checkpoint(log)
        seq, _version, blob = log.load_snapshot(fold.SNAPSHOT_NAME)
        snaps.append((seq, blob))

    progress = shell.drive(BatchOptions(csv=d / "b.csv", program=d / "prog.py",
                                        repo=d / "home"), checkpoint=checkpoint,
                           on_recorded=projector.recorded)
    assert progress.runs_done == 3
    assert len(seqs) >= 2 and all(b - a >= 20 for a, b in itertools.pairwise(seqs))
    layout = BatchLayout.for_csv(d / "b.csv")
    with SqliteLog.open(layout.log, readonly=True) as log:
        seq, _version, _blob = log.load_snapshot(fold.SNAPSHOT_NAME)
        assert seq == seqs[-1]
        for seq, blob in snaps:
            assert seq in seqs
            assert fold.loads(blob).to_dict() == fold.fold(log, until=seq,
                                                           use_snapshot=False).to_dict()
    projector.snapshot(layout)  # as `reflowes run` does on its way out
    with SqliteLog.open(layout.log, readonly=True) as log:
        seq, _version, blob = log.load_snapshot(fold.SNAPSHOT_NAME)
        assert seq == log.last_seq()
        assert fold.loads(blob).to_dict() == fold.fold(log, use_snapshot=False).to_dict()


def test_a_step_finished_earlier_in_the_same_invocation_is_not_run_again(batch):
    """Runs one after another (--parallel 1) share a step: it runs for the first only, even
    though the cache index is written in batches."""
    d, env = batch
    r = reflowes("run", "b.csv", "-p", "prog.py", "--parallel", "1", "--json", cwd=d, env=env)
    assert r.returncode == 0, r.stderr
    log = d / "b.reflowes/log.sqlite"
    assert [e.ident for e in kinds(log, "task.submitted")].count("shared") == 1
    assert [e.ident for e in kinds(log, "task.cached")].count("shared") == 2


def test_resuming_a_finished_batch_only_records_the_invocation(batch):
    """Nothing to run and no exec in flight: the resume does not replay the log into the
    core, even though the finished run left alloc requests outstanding."""
    from reflowes.projections import fold

    d, env = batch
    assert reflowes("run", "b.csv", "--program", "prog.py", cwd=d, env=env).returncode == 0
    log = d / "b.reflowes/log.sqlite"
    granted = {e.request_id for e in kinds(log, "alloc.granted")}
    assert {e.request_id for e in kinds(log, "alloc.requested")} - granted  # still outstanding
    with SqliteLog.open(log, readonly=True) as lg:
        before = lg.last_seq()
        assert lg.load_snapshot(fold.SNAPSHOT_NAME)[0] == before  # stored on the way out
    r = reflowes("run", "b.csv", "--program", "prog.py", "--json", cwd=d, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["unchanged"] == 3, r.stderr
    with SqliteLog.open(log, readonly=True) as lg:
        assert [rec.kind for rec in lg.read(after=before)] == ["batch.opened"]
        # a one-event tail: the snapshot is left as it was, and readers fold the tail
        assert lg.load_snapshot(fold.SNAPSHOT_NAME)[0] == before
        assert fold.fold(lg).to_dict() == fold.fold(lg, use_snapshot=False).to_dict()
    # a later invocation with work replays the log (requests included) and runs it
    (d / "b.csv").write_text("sample,n,word\ns1,3,alpha\ns2,5,beta\ns3,2,gamma\ns4,1,delta\n")
    r = reflowes("run", "b.csv", "--program", "prog.py", "--json", cwd=d, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["done"] == 1, r.stderr
    assert (d / "b.reflowes/results/s4/tagged").read_text() == "1\nshared\ndelta\n"
