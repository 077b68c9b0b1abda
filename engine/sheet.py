"""The CSV sample sheet: one run per row, the run id from the `id` column (or a chosen/first one).

Reads one file; every problem is a SheetError naming the file, the row (its line) and the column.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterator

import attrs
from reflowes.engine.errors import SheetError

ID_COLUMN = "id"


@attrs.frozen
class Row:
    """One data row: its run id, every column's text, and the CSV line where it starts."""

    id: str
    values: dict[str, str]
    line: int


@attrs.frozen
class Sheet:
    """A parsed sample sheet: the header, which column holds run ids, and the rows."""

    path: str
    columns: list[str]
    id_column: str
    rows: list[Row]


def _decode(path: str, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SheetError(path, "the file is UTF-16 (e.g. 'Unicode text'); re-save it as CSV UTF-8")
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        line = data[:at].count(b"\n") + 1
        raise SheetError(
            path,
            f"not UTF-8: byte 0x{data[at]:02x} at byte offset {at} (line {line}); "
            "re-save the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)",
            row=line,
        ) from None


def _records(path: str, text: str) -> Iterator[tuple[int, list[str]]]:
    """(starting line, fields) of each non-blank record."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise SheetError(path, f"malformed CSV: {e}", row=start) from None
        if (fields and fields[0].strip()) or any(f.strip() for f in fields):
            yield start, fields
        start = reader.line_num + 1


def _header(path: str, fields: list[str], line: int) -> list[str]:
    columns = [f.strip() for f in fields]
    if len(columns) == 1:
        for sep, what in (("\t", "tab"), (";", "semicolon")):
            if sep in columns[0]:
                raise SheetError(
                    path,
                    f"the header looks {what}-separated; reflowes reads comma-separated CSV "
                    "(re-save it as CSV, or replace the separators with commas)",
                    row=line,
                )
    seen: dict[str, int] = {}
    for i, name in enumerate(columns, 1):
        if not name:
            raise SheetError(
                path,
                f"header field {i} is empty; the first line must name every column "
                "(e.g. sample,fastq_1,fastq_2)",
                row=line,
            )
        if name in seen:
            raise SheetError(
                path,
                f"header names column {name!r} twice (fields {seen[name]} and {i})",
                row=line,
                column=name,
            )
        seen[name] = i
    return columns


def _choose_id(path: str, columns: list[str], id_column: str | None) -> str:
    # An explicit --id-column wins; else `id`; else the first column (sample sheets).
    if id_column is not None:
        if id_column not in columns:
            raise SheetError(
                path, f"no column {id_column!r} to take run ids from (columns: {columns})"
            )
        return id_column
    return ID_COLUMN if ID_COLUMN in columns else columns[0]


def _check_id(path: str, run_id: str, line: int, column: str) -> None:
    if not run_id.strip():
        raise SheetError(path, "empty run id", row=line, column=column)
    if (
        run_id != run_id.strip()
        or run_id in (".", "..")
        or "/" in run_id
        or "\\" in run_id
        or not run_id.isprintable()
    ):
        raise SheetError(
            path,
            f"run id {run_id!r} cannot name a results directory (no '/', '\\', '.', '..', "
            "control characters, or surrounding spaces)",
            row=line,
            column=column,
        )


def parse_sheet(path: str, data: bytes, *, id_column: str | None = None) -> Sheet:
    """A Sheet from the CSV's bytes (`path` only names it in errors)."""
    records = _records(path, _decode(path, data))
    first = next(records, None)
    if first is None:
        raise SheetError(path, "empty file; expected a header row such as sample,fastq_1,fastq_2")
    header_line, header_fields = first
    columns = _header(path, header_fields, header_line)
    id_col = _choose_id(path, columns, id_column)
    id_index = columns.index(id_col)
    rows: list[Row] = []
    lines_by_id: dict[str, int] = {}
    for line, fields in records:
        if len(fields) != len(columns):
            more = "many" if len(fields) > len(columns) else "few"
            raise SheetError(
                path,
                f"too {more} fields: expected {len(columns)} (as in the header), "
                f"found {len(fields)}",
                row=line,
            )
        run_id = fields[id_index]
        _check_id(path, run_id, line, id_col)
        if run_id in lines_by_id:
            raise SheetError(
                path,
                f"duplicate run id {run_id!r} (rows {lines_by_id[run_id]} and {line})",
                row=line,
                column=id_col,
            )
        lines_by_id[run_id] = line
        rows.append(Row(run_id, dict(zip(columns, fields, strict=True)), line))
    if not rows:
        raise SheetError(path, "no rows: the file has a header but no samples below it")
    return Sheet(path, columns, id_col, rows)


def read_sheet(path: str | os.PathLike[str], *, id_column: str | None = None) -> Sheet:
    """Read and check a CSV sample sheet."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SheetError(name, "no such file") from None
    except IsADirectoryError:
        raise SheetError(name, "is a directory, not a CSV file") from None
    except OSError as e:
        raise SheetError(name, f"cannot read: {e.strerror or e}") from None
    return parse_sheet(name, data, id_column=id_column)
