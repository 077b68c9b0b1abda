"""Child processes for tests/test_log_crash.py: a writer to be SIGKILLed, and a tailing reader.

    python tests/crash_writer.py write LOG SEED      appends random groups, prints ACK per commit
    python tests/crash_writer.py follow LOG DONE OUT tails LOG until the file DONE exists
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

from reflowes.events import codec
from reflowes.events.log import SqliteLog, follow
from reflowes.events.model import Event, ExecExited, Recorded, RunDeclared, TaskSubmitted
from reflowes.events.resources import Resources


def make_event(rng: random.Random, gid: str, i: int, n: int) -> Event:
    """Event i of n in group gid; `group_of` reads (gid, i, n) back from any of them."""
    pick = rng.random()
    if pick < 0.4:
        return RunDeclared(run_id=gid, program="p.py", params={"i": str(i), "n": str(n)},
                           digest=f"{i:08x}" * 8)
    if pick < 0.8:
        return TaskSubmitted(task_id=f"{gid}/{i}/{n}", run_id=gid, key="k" * 64, ident="step",
                             resources=Resources(1, 1 << 30))
    tail = "x" * rng.choice([0, 10, 200, 5000])  # some bodies spill into overflow pages
    return ExecExited(exec_id=gid, task_id=f"{i}/{n}", exit_code=rng.choice([0, 1, 137]),
                      stderr_tail=tail)


def group_of(ev: Event) -> tuple[str, int, int]:
    """(group id, index, size) of an event made by `make_event`."""
    if isinstance(ev, RunDeclared):
        return ev.run_id, int(ev.params["i"]), int(ev.params["n"])
    if isinstance(ev, TaskSubmitted):
        gid, i, n = ev.task_id.rsplit("/", 2)
        return gid, int(i), int(n)
    assert isinstance(ev, ExecExited)
    i, n = ev.task_id.split("/")
    return ev.exec_id, int(i), int(n)


def line_of(seq: int, at: float, kind: str, body: str | bytes) -> bytes:
    """What the reader hashes per event; the test hashes the final log the same way."""
    raw = body.encode() if isinstance(body, str) else body
    return f"{seq} {at!r} {kind} ".encode() + raw + b"\n"


def write(path: str, seed: int) -> None:
    rng = random.Random(seed)
    log = SqliteLog.open(path)
    print(f"READY {log.last_seq()}", flush=True)
    k = 0
    while True:
        n = rng.randint(1, 500)
        gid = f"{os.getpid()}-{k}"
        # Some groups skip the fsync, as the shell's do: a process crash must not tell them apart.
        recs = log.append([make_event(rng, gid, i, n) for i in range(n)],
                          durable=rng.random() < 0.7)
        print(f"ACK {recs[0].seq} {recs[-1].seq} {gid} {n}", flush=True)
        k += 1
        time.sleep(rng.random() * 0.02)  # a batch engine breathes between group commits


def follow_log(path: str, done: str, out: str) -> None:
    digest, count, prev, errors = hashlib.sha256(), 0, 0, []
    rec: Recorded
    for rec in follow(path, poll=0.005, stop=lambda: os.path.exists(done)):
        if rec.seq != prev + 1:
            errors.append(f"seq {rec.seq} after {prev}")
        prev, count = rec.seq, count + 1
        digest.update(line_of(rec.seq, rec.at, rec.kind, codec.encode(rec.event)))
    with SqliteLog.open(path, readonly=True) as fresh:  # what a new connection sees, to debug
        fresh_last = fresh.last_seq()
    with open(out, "w") as f:
        json.dump({"count": count, "last": prev, "digest": digest.hexdigest(),
                   "errors": errors[:10], "fresh_last": fresh_last}, f)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]))
    else:
        follow_log(sys.argv[2], sys.argv[3], sys.argv[4])
