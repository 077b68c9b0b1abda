"""Smoke test of the peer benchmark harness's pure parts and its floor; installs no peers."""

from __future__ import annotations

import runpy
import subprocess
from pathlib import Path

import pytest

from benchmarks.peers import engines, measure, report, runner
from benchmarks.peers import workloads as wl
from benchmarks.peers.report import Row


def test_workload_labels_steps_and_expected_outputs() -> None:
    w, d = wl.Workload("W", 1000), wl.Workload("D", 3)
    assert (w.label, w.steps) == ("W(1,000)", 1000)
    assert (d.label, d.steps) == ("D(3)", 4)
    assert wl.expected_outputs(d) == {
        "out/0.txt": "0\n",
        "out/1.txt": "1\n",
        "out/2.txt": "2\n",
        "all.txt": "0\n1\n2\n",
    }
    assert wl.reflowes_csv(wl.Workload("W", 2)) == "id,i\n0,0\n1,1\n"
    assert wl.reflowes_expected(d) == {"w.reflowes/results/0/out": "0\n1\n2\n"}
    with pytest.raises(ValueError):
        wl.Workload("X", 3)


def test_generated_peer_files_are_valid_python_and_name_every_step() -> None:
    for w in (wl.Workload("W", 5), wl.Workload("D", 5)):
        for text in (wl.luigi_script(w), wl.redun_script(w), wl.reflowes_program(w)):
            compile(text, "<generated>", "exec")
        assert "range(5)" in wl.snakefile(w)
    assert 'output: "all.txt"' in wl.snakefile(wl.Workload("D", 5))


@pytest.mark.parametrize(("kind", "rows", "steps"), [("W", 1, 1), ("D", 1, 6)])
def test_reflowes_programs_build_the_graph_the_workload_names(
    tmp_path: Path, kind: str, rows: int, steps: int
) -> None:
    from reflowes.engine.graph import normalize_result, walk

    w = wl.Workload(kind, 5)
    prog = tmp_path / "prog.py"
    prog.write_text(wl.reflowes_program(w))
    scope = runpy.run_path(str(prog))
    result = normalize_result(scope["main"](5) if kind == "D" else scope["main"](3))
    nodes = walk(result)
    assert list(result) == ["out"] and len(nodes) == steps
    if kind == "D":
        assert nodes[-1].template == "cat {a0} {a1} {a2} {a3} {a4} > {out}"
    assert wl.reflowes_csv(w).count("\n") - 1 == (5 if kind == "W" else rows)


@pytest.mark.parametrize("kind", ["W", "D"])
def test_floor_script_produces_exactly_the_expected_outputs(tmp_path: Path, kind: str) -> None:
    w = wl.Workload(kind, 30)
    (tmp_path / "run.sh").write_text(wl.xargs_script(w))
    subprocess.run(["sh", "run.sh"], cwd=tmp_path, check=True)
    assert engines.check_outputs(tmp_path, wl.expected_outputs(w)) == (0, 0)
    (tmp_path / "out" / "7.txt").write_text("")  # a partial output is redone by the rerun
    subprocess.run(["sh", "run.sh"], cwd=tmp_path, check=True)
    assert engines.check_outputs(tmp_path, wl.expected_outputs(w)) == (0, 0)


def test_ratios_and_table_against_floor_and_reflowes() -> None:
    rows = [
        Row("xargs", "4.9", "W", 1000, "cold", 1000, wall=0.5, peak_rss=2**20),
        Row("reflowes", "0.1", "W", 1000, "cold", 1000, wall=2.0, peak_rss=50 * 2**20),
        Row("luigi", "3.8", "W", 1000, "cold", 1000, wall=10.0, peak_rss=99 * 2**20),
        Row("luigi", "3.8", "W", 10000, "cold", 10000, note="skipped: estimated 700 s > 600 s"),
    ]
    assert report.ratio(rows, rows[2], "xargs") == pytest.approx(20.0)
    assert report.ratio(rows, rows[2], "reflowes") == pytest.approx(5.0)
    assert report.ratio(rows, rows[3], "xargs") is None
    lines = report.table(rows).splitlines()
    assert lines[0].startswith("| engine | version | workload | wall s | ms/step | peak RSS MiB")
    assert lines[4] == "| luigi | 3.8 | W(1,000) | 10.00 | 10.00 | 99 | 20.0 | 5.00 |  |"
    assert lines[5].startswith("| luigi | 3.8 | W(10,000) | – | – | – | – | – | skipped")


def test_readme_section_replaced_in_place_and_others_kept() -> None:
    text = "# Benchmarks\n\n## Replay\n\nmine\n\n## Peers\n\nold\n\n## Local\n\ntheirs\n"
    new = report.replace_section(text, "Peers", "fresh table")
    assert (
        new
        == "# Benchmarks\n\n## Replay\n\nmine\n\n## Peers\n\nfresh table\n\n## Local\n\ntheirs\n"
    )
    assert report.replace_section("# B\n", "Peers", "t") == "# B\n\n## Peers\n\nt\n"
    assert report.replace_section(new, "Peers", "again").count("## Peers") == 1


def test_size_estimate_is_at_least_linear_and_follows_steeper_growth() -> None:
    assert runner.estimate([], 100) is None
    assert runner.estimate([(100, 1.0)], 1000) == pytest.approx(10.0)
    assert runner.estimate([(100, 5.0), (1000, 10.0)], 10000) == pytest.approx(100.0)
    assert runner.estimate([(100, 1.0), (1000, 100.0)], 10000) == pytest.approx(10000.0)


def test_snakemake_refusals_map_to_the_flags_it_demands() -> None:
    e = engines.Snakemake(Path("/nonexistent"))
    fix = e.fix_for("Error: Directory cannot be locked. ... run snakemake --unlock", [])
    assert fix is not None and fix.before == ["--unlock"]
    fix = e.fix_for("IncompleteFilesException ... --rerun-incomplete", ["--unlock"])
    assert fix is not None and fix.flag == "--rerun-incomplete"
    assert e.fix_for("all fine", []) is None


def test_measure_kills_the_whole_group_on_cue_and_on_a_stall(tmp_path: Path) -> None:
    script = "sleep 30 & sleep 30 & echo started; wait"
    m = measure.run(["sh", "-c", script], tmp_path, tmp_path / "log", kill_when=lambda: True)
    assert m.killed and not m.timed_out and m.wall < 5
    assert "started" in (tmp_path / "log").read_text() or m.wall < 5
    m = measure.run(["sh", "-c", script], tmp_path, tmp_path / "log", pending=lambda: 3, stall=0.3)
    assert m.stalled and m.timed_out and not m.killed and m.wall < 5
    assert 0 < m.peak_rss < 64 * 2**20  # sh and two sleeps, sampled; never the harness's RSS
    m = measure.run(["sh", "-c", "echo ok"], tmp_path, tmp_path / "log", pending=lambda: 0)
    assert (m.returncode, m.killed, m.timed_out) == (0, False, False)


def test_headlines_compare_peers_to_reflowes_and_count_reruns_after_a_crash() -> None:
    def row(engine: str, scenario: str, wall: float, **kw: object) -> Row:
        return Row(engine, "1", "W", 1000, scenario, 1000, wall=wall, **kw)  # type: ignore[arg-type]

    rows = [
        row("reflowes", "cold", 10.0),
        row("snakemake", "cold", 45.0),
        row("reflowes", "resume", 5.0, reran=0),
        row("snakemake", "resume", 20.0, reran=1, refusals=2),
    ]
    heads = report.headlines(rows, ["reflowes", "snakemake"], 1000, 1000)
    assert heads == [
        "W(1,000) from nothing: reflowes 10.0 s; snakemake 45.0 s (4.5×) (× reflowes).",
        (
            "Finished steps run again after a SIGKILL at 50% of W(1,000): reflowes 0, "
            "snakemake 1 (after refusing 2×)."
        ),
    ]
