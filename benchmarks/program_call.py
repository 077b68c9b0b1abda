"""Per-row cost of the program API: reading the sheet, binding a row, calling main, walking the graph.

Uses the bundled example (examples/reads, 5 steps per row) over a CSV of N rows, against floors
measured in this run: csv.reader over the same bytes, and main(**kwargs) called directly.
Usage: python -m benchmarks.program_call [N]
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

from reflowes.engine.graph import FileNode, OutputRef, base_dir, exec_key, scalar_text, walk
from reflowes.engine.program import load_program
from reflowes.engine.sheet import read_sheet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "reads"


def best(f, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Best wall time of `repeat` calls of f."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def write_csv(n: int, d: Path) -> Path:
    path = d / "samples.csv"
    lines = ["sample,fastq_1,fastq_2,top,program"]
    for i in range(n):
        s = f"S{i % 5 + 1}"
        lines.append(f"R{i:06d},{EXAMPLE}/data/{s}_1.fq,{EXAMPLE}/data/{s}_2.fq,{i % 20 + 1},"
                     f"{EXAMPLE}/pipeline.py")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(n, Path(tmp))
        data = path.read_bytes()

        floor_csv = best(lambda: list(csv.reader(io.StringIO(data.decode(), newline=""))))
        sheet_t = best(lambda: read_sheet(path))
        sheet = read_sheet(path)

        t = time.perf_counter()
        prog = load_program(EXAMPLE / "pipeline.py")
        load_t = time.perf_counter() - t

        def bind_all() -> list[dict[str, object]]:
            return [prog.bind(r.values, id_column=sheet.id_column, row=r.line, csv=str(path))
                    for r in sheet.rows]

        bind_t = best(bind_all)
        kwargs = bind_all()
        direct = [{k: v for k, v in kw.items()} for kw in kwargs]

        def floor_main() -> list[object]:
            with base_dir(tmp):  # keeps every graph alive, as call_all does
                return [prog.main(**kw) for kw in direct]

        def call_all() -> list[dict[str, FileNode | OutputRef]]:
            return [prog.call(kw, run_id=r.id) for kw, r in zip(kwargs, sheet.rows, strict=True)]

        floor_main_t = best(floor_main)
        call_t = best(call_all)
        results = call_all()
        digest = hashlib.sha256(b"x").hexdigest()

        def walk_and_key() -> int:
            keys = set()
            for res in results:
                for node in walk(res):
                    keys.add(exec_key(node, {
                        k: digest for k, v in node.inputs.items()
                        if isinstance(v, (FileNode, OutputRef))
                    }))
                    for v in node.inputs.values():
                        if not isinstance(v, (FileNode, OutputRef)):
                            scalar_text(v)
            return len(keys)

        walk_t = best(walk_and_key)
        nodes = sum(len(walk(r)) for r in results)

    us = 1e6 / n
    print(f"rows={n} steps={nodes} ({nodes / n:.0f} per row)")
    print(f"read_sheet           {sheet_t * 1e3:8.1f} ms  {sheet_t * us:6.2f} us/row  "
          f"x{sheet_t / floor_csv:.2f} of csv.reader floor ({floor_csv * 1e3:.1f} ms)")
    print(f"load_program         {load_t * 1e3:8.1f} ms  (once per batch)")
    print(f"bind                 {bind_t * 1e3:8.1f} ms  {bind_t * us:6.2f} us/row")
    print(f"call (incl. main)    {call_t * 1e3:8.1f} ms  {call_t * us:6.2f} us/row  "
          f"x{call_t / floor_main_t:.2f} of main(**kw) floor ({floor_main_t * 1e3:.1f} ms)")
    overhead = bind_t + call_t - floor_main_t
    print(f"bind+call overhead   {overhead * 1e3:8.1f} ms  {overhead * us:6.2f} us/row  "
          "beyond main itself")
    print(f"walk + exec_key      {walk_t * 1e3:8.1f} ms  {walk_t * 1e6 / nodes:6.2f} us/step")


if __name__ == "__main__":
    main()
