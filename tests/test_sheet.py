"""The CSV sample sheet: the id column rule and every bad input, from real files."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reflowes.engine.errors import SheetError
from reflowes.engine.sheet import Row, parse_sheet, read_sheet


def sheet_file(tmp_path: pathlib.Path, data: bytes | str, name: str = "s.csv") -> pathlib.Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def fails(tmp_path: pathlib.Path, data: bytes | str, **kw: str) -> SheetError:
    p = sheet_file(tmp_path, data)
    with pytest.raises(SheetError) as e:
        read_sheet(p, **kw)
    assert str(e.value).startswith(str(p))
    assert e.value.path == str(p)
    return e.value


# ------------------------------------------------------------------ good sheets


def test_sample_sheet_first_column_is_id(tmp_path: pathlib.Path) -> None:
    s = read_sheet(sheet_file(tmp_path, "sample,fastq_1,fastq_2\nA,a1.fq,a2.fq\nB,b1.fq,b2.fq\n"))
    assert s.columns == ["sample", "fastq_1", "fastq_2"] and s.id_column == "sample"
    assert s.rows == [
        Row("A", {"sample": "A", "fastq_1": "a1.fq", "fastq_2": "a2.fq"}, 2),
        Row("B", {"sample": "B", "fastq_1": "b1.fq", "fastq_2": "b2.fq"}, 3),
    ]


def test_id_column_named_id_wins_over_first(tmp_path: pathlib.Path) -> None:
    s = read_sheet(sheet_file(tmp_path, "sample,id\nA,r1\nA,r2\n"))
    assert s.id_column == "id" and [r.id for r in s.rows] == ["r1", "r2"]


def test_explicit_id_column(tmp_path: pathlib.Path) -> None:
    s = read_sheet(sheet_file(tmp_path, "x,name,id\n1,n1,i\n2,n2,i2\n"), id_column="name")
    assert s.id_column == "name" and [r.id for r in s.rows] == ["n1", "n2"]
    e = fails(tmp_path, "a,b\n1,2\n", id_column="sample")
    assert "no column 'sample'" in str(e)


def test_bom_crlf_quotes_and_blank_lines(tmp_path: pathlib.Path) -> None:
    data = (
        b"\xef\xbb\xbfsample,desc,n\r\n"
        b"S1,\"has, comma\",1\r\n"
        b"\r\n"
        b"S2,\"two\r\nlines\",2\r\n"
        b"S3,\"say \"\"hi\"\"\",3\r\n"
        b"\r\n\r\n"
    )
    s = read_sheet(sheet_file(tmp_path, data))
    assert s.columns == ["sample", "desc", "n"]  # no BOM in the first column name
    assert [(r.id, r.values["desc"], r.line) for r in s.rows] == [
        ("S1", "has, comma", 2), ("S2", "two\r\nlines", 4), ("S3", 'say "hi"', 6)]


def test_line_numbers_after_multiline_fields(tmp_path: pathlib.Path) -> None:
    e = fails(tmp_path, 'id,note\na,"1\n2\n3"\nb,x\nc,x,extra\n')
    assert e.row == 6 and "expected 2 (as in the header), found 3" in str(e)


def test_header_whitespace_trimmed_values_kept(tmp_path: pathlib.Path) -> None:
    s = read_sheet(sheet_file(tmp_path, "sample , reads\nA, r.fq\n"))
    assert s.columns == ["sample", "reads"] and s.rows[0].values["reads"] == " r.fq"


def test_lone_cr_line_endings(tmp_path: pathlib.Path) -> None:
    s = read_sheet(sheet_file(tmp_path, b"id,a\rx,1\ry,2\r"))
    assert [(r.id, r.line) for r in s.rows] == [("x", 2), ("y", 3)]


# ------------------------------------------------------------------ bad sheets


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xef\xbb\xbf", b" \r\n"])
def test_empty_file(tmp_path: pathlib.Path, data: bytes) -> None:
    assert "empty file" in str(fails(tmp_path, data))


def test_header_only_is_no_rows(tmp_path: pathlib.Path) -> None:
    assert "no rows" in str(fails(tmp_path, "sample,reads\n\n"))


@pytest.mark.parametrize("header", ["sample,,reads", "sample,reads,", ",sample"])
def test_empty_column_name(tmp_path: pathlib.Path, header: str) -> None:
    e = fails(tmp_path, header + "\n1,2,3\n")
    assert e.row == 1 and "header field" in str(e) and "is empty" in str(e)


def test_duplicate_column_name(tmp_path: pathlib.Path) -> None:
    e = fails(tmp_path, "sample,reads,reads\nA,1,2\n")
    assert e.row == 1 and e.column == "reads" and "fields 2 and 3" in str(e)


def test_duplicate_ids_name_both_rows(tmp_path: pathlib.Path) -> None:
    e = fails(tmp_path, "sample,r\nA,1\nB,2\n\nA,3\n")
    assert (e.row, e.column) == (5, "sample")
    assert "duplicate run id 'A' (rows 2 and 5)" in str(e)


@pytest.mark.parametrize("run_id", ["", "  "])
def test_empty_id(tmp_path: pathlib.Path, run_id: str) -> None:
    e = fails(tmp_path, f"sample,r\nA,1\n{run_id},2\n")
    assert (e.row, e.column) == (3, "sample") and "empty run id" in str(e)


@pytest.mark.parametrize("run_id", ["a/b", "..", ".", " a", "a\\b", "tab\there"])
def test_id_must_name_a_directory(tmp_path: pathlib.Path, run_id: str) -> None:
    e = fails(tmp_path, f'sample,r\n"{run_id}",2\n')
    assert e.row == 2 and "cannot name a results directory" in str(e)


@pytest.mark.parametrize(
    ("row", "message"),
    [("A,1,2,3", "too many fields: expected 3 (as in the header), found 4"),
     ("A,1", "too few fields: expected 3 (as in the header), found 2"),
     ("A", "too few fields: expected 3 (as in the header), found 1")],
)
def test_ragged_rows(tmp_path: pathlib.Path, row: str, message: str) -> None:
    e = fails(tmp_path, f"sample,a,b\nZ,0,0\n{row}\n")
    assert e.row == 3 and message in str(e)


def test_latin1_bytes_name_line_and_offset(tmp_path: pathlib.Path) -> None:
    data = "sample,city\nA,Paris\nB,Münster\n".encode("latin-1")
    e = fails(tmp_path, data)
    offset = data.index(b"\xfc")
    assert e.row == 3
    assert f"byte 0xfc at byte offset {offset} (line 3)" in str(e) and "UTF-8" in str(e)


def test_latin1_offset_counts_the_bom(tmp_path: pathlib.Path) -> None:
    data = b"\xef\xbb\xbfid\n\xe9\n"
    e = fails(tmp_path, data)
    assert "byte offset 6 (line 2)" in str(e)


def test_unterminated_quote(tmp_path: pathlib.Path) -> None:
    e = fails(tmp_path, 'sample,a\nA,"open\nB,2\n')
    assert e.row == 2


def test_missing_file_and_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SheetError, match="no such file"):
        read_sheet(tmp_path / "none.csv")
    with pytest.raises(SheetError, match="is a directory"):
        read_sheet(tmp_path)


# ------------------------------------------------------------------ property


cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(cell, min_size=3, max_size=3), min_size=1, max_size=8),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_round_trip_of_written_csv(rows: list[list[str]], newline: str, bom: bool) -> None:
    import csv
    import io

    rows = [[f"r{i}", *r[1:]] for i, r in enumerate(rows)]
    buf = io.StringIO()
    # csv.writer leaves a lone \r unquoted unless it is in lineterminator: quote all then
    bare_cr = any("\r" in c for r in rows for c in r)
    w = csv.writer(buf, lineterminator=newline,
                   quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL)
    w.writerow(["id", "a", "b"])
    w.writerows(rows)
    text = buf.getvalue()
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    # Rows whose every cell is blank are skipped as blank lines; ids here never are.
    s = parse_sheet("mem.csv", data)
    assert [list(r.values.values()) for r in s.rows] == rows
    # each row's line is where its record starts in the text
    lines = list(io.StringIO(text, newline=""))  # the physical lines csv counts
    for r in s.rows:
        assert lines[r.line - 1].lstrip("\"").startswith(r.id + ("\"" if bare_cr else ","))


@pytest.mark.parametrize(("data", "what"), [("sample\tfastq_1\nA\ta.fq\n", "tab"),
                                             ("sample;fastq_1\nA;a.fq\n", "semicolon")])
def test_other_separators_are_named(tmp_path: pathlib.Path, data: str, what: str) -> None:
    e = fails(tmp_path, data)
    assert e.row == 1 and f"looks {what}-separated" in str(e)


def test_utf16_file(tmp_path: pathlib.Path) -> None:
    e = fails(tmp_path, "sample,reads\nA,a.fq\n".encode("utf-16"))
    assert "UTF-16" in str(e) and "UTF-8" in str(e)
