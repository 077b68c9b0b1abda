"""Real processes: a writer SIGKILLed 20 times mid-stream loses no acked event and no group half;
a reader tailing the log meanwhile sees every event exactly once, in order.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_writer import group_of, line_of
from reflowes.events.log import SqliteLog, check

HELPER = str(Path(__file__).with_name("crash_writer.py"))
KILLS = 20


def verify_new_events(log: SqliteLog, after: int, acks: list[tuple[int, int, str, int]]) -> None:
    """Events after `after` come in whole groups; every acked group is there, seq for seq."""
    by_seq: dict[int, tuple[str, int, int]] = {}
    open_group: tuple[str, int, int] | None = None  # (gid, next index, size) of a group begun
    for rec in log.read(after):
        gid, i, n = by_seq[rec.seq] = group_of(rec.event)
        if open_group is None:
            assert i == 0, f"group {gid} starts at index {i} (seq {rec.seq})"
        else:
            assert (gid, i, n) == open_group, f"partial group {open_group} before seq {rec.seq}"
        open_group = (gid, i + 1, n) if i + 1 < n else None
    assert open_group is None, f"partial group {open_group} at the end of the log"
    for first, last, gid, n in acks:
        assert last - first + 1 == n
        for seq in range(first, last + 1):
            assert by_seq.get(seq) == (gid, seq - first, n), f"acked seq {seq} of {gid} lost"


@pytest.mark.slow
def test_sigkilled_writer_loses_nothing_acked_and_reader_sees_all(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    done, out = tmp_path / "done", tmp_path / "reader.json"
    rng = random.Random(20261122)
    reader = subprocess.Popen([sys.executable, HELPER, "follow", str(path), str(done), str(out)],
                              stderr=subprocess.PIPE, text=True)
    verified, total_acked, unacked_groups = 0, 0, 0
    try:
        for kill in range(KILLS):
            writer = subprocess.Popen([sys.executable, HELPER, "write", str(path), str(kill)],
                                      stdout=subprocess.PIPE, text=True)
            assert writer.stdout is not None
            assert writer.stdout.readline().split() == ["READY", str(verified)]
            time.sleep(rng.uniform(0.03, 0.8))
            writer.send_signal(signal.SIGKILL)
            lines = writer.stdout.read().splitlines()
            writer.wait()
            assert writer.returncode == -signal.SIGKILL
            # A line cut by the kill has no trailing fields; an ACK printed is an ACK returned.
            acks = [(int(a), int(b), g, int(n)) for _, a, b, g, n in
                    (ln.split() for ln in lines if ln.startswith("ACK") and len(ln.split()) == 5)]
            assert check(path) >= (acks[-1][1] if acks else verified)  # integrity_check passes
            with SqliteLog.open(path) as log:
                count = log._live().execute("SELECT count(*), min(seq) FROM events").fetchone()
                assert count[0] == log.last_seq() and count[1] in (1, None), "seqs not contiguous"
                verify_new_events(log, verified, acks)
                if acks:
                    unacked_groups += log.last_seq() > acks[-1][1]
                verified = log.last_seq()
            total_acked += len(acks)
    finally:
        done.touch()
    try:
        reader.wait(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, reader.stderr.read() if reader.stderr else ""
    seen = json.loads(out.read_text())
    assert seen["fresh_last"] == seen["last"], "a group appeared behind the reader's back"
    assert seen["errors"] == []
    digest = hashlib.sha256()
    with SqliteLog.open(path, readonly=True) as log:
        for seq, at, kind, _stream, _v, body in log.read_raw():
            digest.update(line_of(seq, at, kind, body))
        assert seen["count"] == seen["last"] == log.last_seq() == verified
    assert seen["digest"] == digest.hexdigest()
    assert total_acked > KILLS, "the writer should have committed many groups"
    print(f"{KILLS} kills, {total_acked} acked groups, {verified} events, "
          f"{unacked_groups} committed-but-unacked groups")
