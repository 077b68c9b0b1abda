"""From a CSV and a program to the list of runs to evaluate, with every user mistake found
before anything runs (the error names the file, row and column)."""

from __future__ import annotations

from pathlib import Path

import attrs
from reflowes.engine.errors import SheetError
from reflowes.engine.evaluator import RunSpec, run_digest
from reflowes.engine.layout import default_repo
from reflowes.engine.program import Program, load_program
from reflowes.engine.sheet import read_sheet

PROGRAM_COLUMN = "program"


@attrs.frozen(kw_only=True)
class BatchOptions:
    """What `reflowes run` was asked to do."""

    csv: Path
    program: Path | None = None
    id_column: str | None = None
    parallel: int = 50
    reset: bool = False
    pool: str = "local"  # "local": this machine; "docker": the Docker engine's resources
    repo: Path = attrs.field(factory=default_repo)


def plan_runs(opts: BatchOptions) -> list[RunSpec]:
    """Every row of the sheet as a run spec (program loaded, parameters converted)."""
    sheet = read_sheet(opts.csv, id_column=opts.id_column)
    programs: dict[Path, Program] = {}
    base = Path(opts.csv).absolute().parent
    has_program_col = PROGRAM_COLUMN in sheet.columns and sheet.id_column != PROGRAM_COLUMN
    if opts.program is None and not has_program_col:
        raise SheetError(
            str(opts.csv),
            f"no program: pass --program FILE or add a {PROGRAM_COLUMN!r} column",
        )
    specs: list[RunSpec] = []
    given = Path(opts.program).absolute() if opts.program is not None else None
    for row in sheet.rows:
        values = dict(row.values)
        if given is not None:
            path = given
        else:
            name = values.get(PROGRAM_COLUMN, "")
            if not name:
                raise SheetError(str(opts.csv), "empty program", row=row.line,
                                 column=PROGRAM_COLUMN)
            path = (Path(name) if Path(name).is_absolute() else base / name).absolute()
        if has_program_col and opts.program is None:
            values.pop(PROGRAM_COLUMN, None)
        program = programs.get(path)
        if program is None:
            program = programs[path] = load_program(path)
        kwargs = program.bind(values, id_column=sheet.id_column, row=row.line, csv=str(opts.csv))
        specs.append(RunSpec(
            run_id=row.id, row=row.line, program=program, params=values, kwargs=kwargs,
            digest=run_digest(program, values),
        ))
    return specs
