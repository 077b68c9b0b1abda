"""Loading programs, binding CSV rows to main's parameters, and calling main."""

from __future__ import annotations

import pathlib
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reflowes.engine.errors import ProgramError, SheetError, UserError
from reflowes.engine.program import Program, load_program
from reflowes.engine.sheet import read_sheet

import reflowes as rf

PIPELINE = """
    from __future__ import annotations
    import pathlib
    from typing import Optional
    import reflowes as rf

    def main(sample: str, reads: str, top: int = 10, ratio: float = 0.5,
             paired: bool = False, ref: Optional[pathlib.Path] = None,
             label: str | None = None, note="x"):
        src = rf.file(reads)
        counted = rf.exec(
            "sort {src} | uniq -c | sort -rn | head -n {top} > {out}",
            inputs={"src": src, "top": top}, outputs={"out": rf.FILE}, name="count",
        )
        return {"counts": counted["out"], "reads": src}
"""


def write(tmp_path: pathlib.Path, source: str, name: str = "prog.py") -> pathlib.Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(source))
    return p


@pytest.fixture
def prog(tmp_path: pathlib.Path) -> Program:
    return load_program(write(tmp_path, PIPELINE))


def bind(prog: Program, csv: str = "/data/s.csv", **values: str) -> dict[str, object]:
    return prog.bind(values, id_column="sample", row=2, csv=csv)


# ------------------------------------------------------------------ loading


def test_load_reads_params_digest_and_path(tmp_path: pathlib.Path, prog: Program) -> None:
    import hashlib

    path = tmp_path / "prog.py"
    assert prog.path == str(path)
    assert prog.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(prog.params) == ["sample", "reads", "top", "ratio", "paired", "ref", "label",
                                 "note"]
    p = prog.params
    assert (p["top"].type, p["top"].default, p["top"].required) == (int, 10, False)
    assert p["sample"].required and p["sample"].type is str
    assert p["ref"].type is pathlib.Path and p["ref"].optional
    assert p["label"].type is str and p["label"].optional
    assert p["note"].type is str  # no hint -> str
    assert not prog.accepts_var_kw


def test_load_twice_gives_independent_modules(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "COUNT = []\ndef main():\n    COUNT.append(1)\n    return []\n")
    a, b = load_program(path), load_program(path)
    assert a.module is not b.module and a.module.__name__ != b.module.__name__
    assert a.digest == b.digest


def test_var_kw_detected(tmp_path: pathlib.Path) -> None:
    prog = load_program(write(tmp_path, "def main(sample, **params):\n    return []\n"))
    assert prog.accepts_var_kw and list(prog.params) == ["sample"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def main(:\n    pass\n", "syntax error at line 1"),
        ("x = 1\n\n\nraise RuntimeError('boom')\n", "importing at line 4: RuntimeError: boom"),
        ("import no_such_module_xyz\n", "ModuleNotFoundError"),
        ("def helper():\n    return 1\n", "defines no main()"),
        ("main = 3\n", "main is a int, not a function"),
        ("def main(a: list[str]):\n    pass\n", "cannot be filled from CSV text"),
        ("def main(a, /):\n    pass\n", "passable by name"),
        ("from typing import Literal\ndef main(a: Literal['x', 1]):\n    pass\n",
         "cannot be filled"),
        ("def main(a: 'Nope'):\n    pass\n", "cannot resolve type hint 'Nope'"),
        ("import sys\nsys.exit(3)\ndef main():\n    pass\n", "SystemExit"),
    ],
)
def test_load_errors_name_the_file(tmp_path: pathlib.Path, source: str, message: str) -> None:
    path = write(tmp_path, source)
    with pytest.raises(ProgramError, match=message) as e:
        load_program(path)
    assert str(e.value).startswith(str(path))
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_load_missing_file_and_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ProgramError, match="no such program file"):
        load_program(tmp_path / "nope.py")
    with pytest.raises(ProgramError, match="is a directory"):
        load_program(tmp_path)


# ------------------------------------------------------------------ binding


def test_bind_converts_by_hints(prog: Program) -> None:
    kw = bind(prog, sample="S1", reads="r.fq", top="3", ratio="0.25", paired="yes",
              ref="refs/hg.fa", label="", note="hi")
    assert kw == {"sample": "S1", "reads": "r.fq", "top": 3, "ratio": 0.25, "paired": True,
                  "ref": pathlib.Path("/data/refs/hg.fa"), "label": None, "note": "hi"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("False", False), ("YES", True), ("no", False), ("1", True), ("0", False),
     (" true ", True)],
)
def test_bind_bools(prog: Program, text: str, value: bool) -> None:
    assert bind(prog, sample="S", reads="r", paired=text)["paired"] is value


def test_bind_literal_choices(tmp_path: pathlib.Path) -> None:
    prog = load_program(write(tmp_path, """
        from typing import Literal, Optional
        def main(mode: Literal["fast", "exact"], k: Optional[Literal[15, 31]] = None):
            return []
    """))
    assert prog.bind({"mode": "fast", "k": "31"}, id_column="x", row=2, csv="s.csv") == {
        "mode": "fast", "k": 31}
    assert prog.bind({"mode": "exact", "k": ""}, id_column="x", row=2, csv="s.csv") == {
        "mode": "exact", "k": None}
    with pytest.raises(SheetError, match="'slow' .*not one of 'fast', 'exact'") as e:
        prog.bind({"mode": "slow"}, id_column="x", row=4, csv="s.csv")
    assert (e.value.row, e.value.column) == (4, "mode")
    with pytest.raises(SheetError, match="not one of 15, 31"):
        prog.bind({"mode": "fast", "k": "21"}, id_column="x", row=2, csv="s.csv")


def test_bind_empty_cells(prog: Program) -> None:
    kw = bind(prog, sample="S", reads="", top="", ref="", label="")
    # str keeps "", a defaulted int takes its default, Optional becomes None
    assert (kw["reads"], kw["top"], kw["ref"], kw["label"]) == ("", 10, None, None)


def test_bind_absolute_path_kept(prog: Program) -> None:
    assert bind(prog, sample="S", reads="r", ref="/abs/x.fa")["ref"] == pathlib.Path("/abs/x.fa")


@pytest.mark.parametrize(
    ("column", "text", "message"),
    [("top", "ten", "not an int"), ("top", "1.5", "not an int"),
     ("ratio", "half", "not a number"), ("paired", "maybe", "not a bool")],
)
def test_bind_conversion_error_names_row_column_value(
    prog: Program, column: str, text: str, message: str
) -> None:
    with pytest.raises(SheetError) as e:
        bind(prog, sample="S", reads="r", **{column: text})
    assert (e.value.path, e.value.row, e.value.column) == ("/data/s.csv", 2, column)
    assert repr(text) in str(e.value) and message in str(e.value)
    assert str(e.value).startswith(f"/data/s.csv, row 2, column {column!r}: ")


def test_bind_unknown_column_is_an_error(prog: Program) -> None:
    with pytest.raises(SheetError, match="not a parameter of main") as e:
        bind(prog, sample="S", reads="r", fastq_9="x")
    assert e.value.column == "fastq_9" and e.value.row == 2


def test_bind_unknown_columns_go_to_var_kw(tmp_path: pathlib.Path) -> None:
    prog = load_program(write(tmp_path, "def main(n: int, **params):\n    return []\n"))
    kw = prog.bind({"id": "r1", "n": "4", "extra": "e"}, id_column="id", row=5, csv="s.csv")
    assert kw == {"n": 4, "extra": "e"}  # the id column is not a parameter: not passed


def test_bind_missing_required_parameter(prog: Program) -> None:
    with pytest.raises(SheetError, match="requires parameter 'reads'") as e:
        bind(prog, sample="S1")
    assert e.value.column == "reads"


def test_bind_id_column_passed_only_when_main_takes_it(tmp_path: pathlib.Path) -> None:
    takes = load_program(write(tmp_path, "def main(sample, reads):\n    return []\n", "a.py"))
    skips = load_program(write(tmp_path, "def main(reads):\n    return []\n", "b.py"))
    row = {"sample": "S1", "reads": "r.fq", "program": "a.py"}
    assert takes.bind(row, id_column="sample", row=2, csv="s.csv") == {
        "sample": "S1", "reads": "r.fq"}
    assert skips.bind(row, id_column="sample", row=2, csv="s.csv") == {"reads": "r.fq"}
    # a column named like the id column is an ordinary column when it is not the id column
    with pytest.raises(SheetError, match="column 'sample'"):
        skips.bind(row, id_column="reads", row=2, csv="s.csv")


def test_program_column_passed_when_main_wants_it(tmp_path: pathlib.Path) -> None:
    prog = load_program(write(tmp_path, "def main(program):\n    return []\n"))
    assert prog.bind({"id": "a", "program": "p.py"}, id_column="id", row=2, csv="s.csv") == {
        "program": "p.py"}


def test_sheet_drives_main_unchanged(tmp_path: pathlib.Path) -> None:
    (tmp_path / "samples.csv").write_text("sample,fastq_1,fastq_2\nS1,a_1.fq,a_2.fq\n")
    prog = load_program(write(tmp_path, """
        import reflowes as rf
        def main(sample, fastq_1, fastq_2):
            return {"r1": rf.file(fastq_1), "r2": rf.file(fastq_2)}
    """))
    sheet = read_sheet(tmp_path / "samples.csv")
    row = sheet.rows[0]
    kw = prog.bind(row.values, id_column=sheet.id_column, row=row.line, csv=sheet.path)
    result = prog.call(kw, run_id=row.id)
    assert {k: v.source for k, v in result.items()} == {
        "r1": str(tmp_path / "a_1.fq"), "r2": str(tmp_path / "a_2.fq")}


# ------------------------------------------------------------------ calling


def test_call_resolves_relative_paths_against_the_csv(prog: Program) -> None:
    kw = bind(prog, csv="/data/batch/s.csv", sample="S1", reads="in/r.fq", top="2")
    result = prog.call(kw, run_id="S1")
    assert list(result) == ["counts", "reads"]
    counts = result["counts"]
    assert isinstance(counts, rf.OutputRef) and counts.node.name == "count"
    assert counts.node.inputs["top"] == 2
    assert result["reads"].source == "/data/batch/in/r.fq"  # type: ignore[union-attr]
    # explicit base wins
    other = prog.call(kw, run_id="S1", base="/elsewhere")
    assert other["reads"].source == "/elsewhere/in/r.fq"  # type: ignore[union-attr]


def test_call_error_names_file_run_exception_and_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, """
        import reflowes as rf

        def helper(n):
            return 10 // n

        def main(n: int):
            helper(n)
            step = rf.exec("cat {a} > {out}", inputs={"a": rf.file("x")}, outputs={"out": rf.FILE})
            return step["outt"]
    """)
    prog = load_program(path)
    with pytest.raises(ProgramError) as e:
        prog.call({"n": 0}, run_id="S7")
    msg = str(e.value)
    assert msg.startswith(str(path)) and "run 'S7'" in msg
    assert "ZeroDivisionError: integer division or modulo by zero (line 5)" in msg
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    with pytest.raises(ProgramError, match=r"MissingOutput: step 'cat' has no output 'outt'.*"
                       r"\(line 10\)"):
        prog.call({"n": 1}, run_id="S7")


def test_call_bad_return_and_bad_step(tmp_path: pathlib.Path) -> None:
    prog = load_program(write(tmp_path, """
        import reflowes as rf
        def main(mode):
            if mode == "none":
                return None
            return rf.exec("cat {a} > {out}", inputs={"a": "x", "b": 1}, outputs={"out": "file"})
    """))
    with pytest.raises(ProgramError, match="run 'r': GraphError: main returned NoneType"):
        prog.call({"mode": "none"}, run_id="r")
    with pytest.raises(ProgramError, match=r"input 'b' is not used.*\(line 6\)"):
        prog.call({"mode": "step"}, run_id="r")


def test_call_many_rows_each_get_their_own_graph(prog: Program) -> None:
    # 10,000 rows: each call builds a fresh graph (speed: benchmarks/program_call.py).
    results = [prog.call(bind(prog, sample=f"S{i}", reads="r.fq", top=str(i)), run_id=f"S{i}")
               for i in range(10_000)]
    assert results[-1]["counts"].node.inputs["top"] == 9999  # type: ignore[union-attr]


# ------------------------------------------------------------------ the bundled example

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "reads"


def run_by_hand(csv: pathlib.Path, work: pathlib.Path) -> tuple[dict[str, dict[str, str]],
                                                                 list[tuple[str, str, str]]]:
    """Evaluate every row and run each distinct step once with sh (what `reflowes run` does,
    without the scheduler): returns each run's result paths and (run, step, key) in order."""
    import hashlib
    import os
    import subprocess

    from reflowes.engine.executor import render
    from reflowes.engine.graph import exec_key, scalar_text, walk

    sheet = read_sheet(csv)
    prog = load_program(csv.parent / sheet.rows[0].values["program"])
    by_key: dict[str, dict[str, str]] = {}
    steps, results = [], {}
    for row in sheet.rows:
        kw = prog.bind(row.values, id_column=sheet.id_column, row=row.line, csv=sheet.path)
        result = prog.call(kw, run_id=row.id)
        made: dict[int, dict[str, str]] = {}
        for node in walk(result):
            values, digests = {}, {}
            for name, v in node.inputs.items():
                if isinstance(v, (rf.FileNode, rf.OutputRef)):
                    path = v.source if isinstance(v, rf.FileNode) else made[id(v.node)][v.name]
                    values[name] = path
                    digests[name] = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
                else:
                    values[name] = scalar_text(v)
            key = exec_key(node, digests)
            if key not in by_key:
                d = work / key
                d.mkdir()
                outs = {n: str(d / n) for n in node.outputs}
                subprocess.run(["sh", "-c", render(node.template, {**values, **outs})],
                               check=True, env={**os.environ, **node.env})
                by_key[key] = outs
            made[id(node)] = by_key[key]
            steps.append((row.id, node.name, key))
        results[row.id] = {
            name: ref.source if isinstance(ref, rf.FileNode) else made[id(ref.node)][ref.name]
            for name, ref in result.items()
        }
    return results, steps


def test_example_pipeline_runs_and_shares_the_reference_step(tmp_path: pathlib.Path) -> None:
    results, steps = run_by_hand(EXAMPLE / "samples.csv", tmp_path)
    assert list(results) == ["S1", "S2", "S3", "S4", "S5"]
    expected = {  # as documented in examples/reads/README.md
        "S1": ("100.00", "44.07", "35.99"), "S2": ("96.67", "44.41", "33.56"),
        "S3": ("65.83", "51.74", "35.96"), "S4": ("87.50", "45.16", "25.14"),
        "S5": ("40.83", "35.94", "32.04"),
    }
    for run, paths in results.items():
        assert sorted(paths) == ["kmers", "ref_hits", "report", "stats"]
        report = pathlib.Path(paths["report"])
        assert sorted(p.name for p in report.iterdir()) == ["summary.tsv", "top_kmers.tsv"]
        summary = dict(line.split("\t") for line in
                       (report / "summary.tsv").read_text().splitlines())
        assert summary["sample"] == run and summary["reads"] == "240"
        got = (summary["ref_percent"], summary["gc_percent"], summary["mean_quality"])
        assert got == expected[run]
        top = 5 if run == "S4" else 10
        assert len(pathlib.Path(paths["kmers"]).read_text().splitlines()) == top
    keys = {(run, step): key for run, step, key in steps}
    assert len({keys[(r, "ref_index")] for r in results}) == 1  # one key for the batch
    for step in ("stats", "kmers", "ref_hits", "report"):
        assert len({keys[(r, step)] for r in results}) == 5
    assert len({key for _, _, key in steps}) == 4 * 5 + 1


def test_example_data_is_reproducible(tmp_path: pathlib.Path) -> None:
    import shutil
    import subprocess
    import sys

    shutil.copy(EXAMPLE / "make_data.py", tmp_path)
    subprocess.run([sys.executable, str(tmp_path / "make_data.py")], check=True)
    made = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert made == sorted(p.name for p in (EXAMPLE / "data").iterdir())
    for name in made:
        assert (tmp_path / "data" / name).read_bytes() == (EXAMPLE / "data" / name).read_bytes()


def test_program_imports_modules_beside_it(tmp_path: pathlib.Path) -> None:
    import sys

    write(tmp_path, "SUFFIX = '.counts'\n", "rfx_helper_mod.py")
    prog = load_program(write(tmp_path, """
        import reflowes as rf
        from rfx_helper_mod import SUFFIX
        def main(x):
            return rf.file(x + SUFFIX)
    """))
    assert str(tmp_path) not in sys.path  # only while importing
    assert prog.call({"x": "a"}, run_id="r", base=str(tmp_path))["result"].source == str(
        tmp_path / "a.counts")  # type: ignore[union-attr]



@pytest.fixture(scope="module")
def module_prog(tmp_path_factory: pytest.TempPathFactory) -> Program:
    return load_program(write(tmp_path_factory.mktemp("prog"), PIPELINE))


@settings(max_examples=200, deadline=None)
@given(st.integers(), st.floats(allow_nan=False), st.booleans(),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_bind_round_trips_what_a_csv_can_hold(
    module_prog: Program, i: int, x: float, b: bool, s: str
) -> None:
    values = {"sample": s, "reads": "r", "top": str(i), "ratio": repr(x), "paired": str(b)}
    kw = module_prog.bind(values, id_column="id", row=2, csv="/d/s.csv")
    assert (kw["sample"], kw["top"], kw["ratio"], kw["paired"]) == (s, i, x, b)
