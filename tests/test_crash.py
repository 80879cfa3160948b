"""Crash safety: SIGKILL a process that is saving visits, many times, at random moments; every
visit it reported as saved must be there, whole, and no visit may be partial.

The child (tests/crash_writer.py) reports a visit only after `save_visit` returned. Python and
sqlite_utils take ~0.5 s to import, so the random 20-150 ms delay before the kill is counted from
the child's READY line (database open, patient saved): the kill lands in the middle of the save
loop (inside a transaction, a COMMIT's fsync, a checkpoint, or between visits).

SIGKILL tests process death; the OS page cache survives it, so this cannot prove durability
across power loss (that is `synchronous=FULL`'s job, asserted in test_history.py).
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

WRITER = Path(__file__).with_name("crash_writer.py")
RUNS = 25
TIME_BUDGET_S = 40.0
MIN_RUNS = 10
SEED = 20251126
NOTE = re.compile(r"^s=(\d+) d=(\d+)$")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")


def _run_once(db_path: Path, run: int, delay_s: float) -> dict[str, tuple[int, int]]:
    """Start the writer, kill it `delay_s` after READY; return the visits it reported."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db_path), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the writer did not start within 30 s"
        first = proc.stdout.readline()
        if not first.startswith(b"READY "):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"writer failed to start: {first!r} {err.decode(errors='replace')}")
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    reported = {}
    complete, _, _ = out.rpartition(b"\n")  # a torn last line (if any) was never reported
    for line in complete.decode().splitlines():
        kind, visit_id, n_s, n_d = line.split()
        assert kind == "VISIT"
        reported[visit_id] = (int(n_s), int(n_d))
    return reported


def _check(db_path: Path, reported: dict[str, tuple[int, int]]) -> tuple[int, int, int]:
    """(committed, lost, partial) as a fresh connection sees the file after all the kills."""
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        visits = {vid: note for vid, note in conn.execute("SELECT id, note FROM visits").fetchall()}
        suggestions = dict(
            conn.execute("SELECT visit_id, count(*) FROM suggestions GROUP BY visit_id")
        )
        decisions = dict(conn.execute("SELECT visit_id, count(*) FROM decisions GROUP BY visit_id"))
        audits = dict(
            conn.execute(
                "SELECT visit_id, count(*) FROM audit WHERE action = 'save_visit' GROUP BY visit_id"
            )
        )
    finally:
        conn.close()

    def whole(vid: str, n_s: int, n_d: int) -> bool:
        return (
            suggestions.get(vid, 0) == n_s
            and decisions.get(vid, 0) == n_d
            and audits.get(vid, 0) == 1
        )

    lost = sum(
        1 for vid, (n_s, n_d) in reported.items() if vid not in visits or not whole(vid, n_s, n_d)
    )
    partial = 0
    for vid, note in visits.items():
        match = NOTE.match(note or "")
        if match is None or not whole(vid, int(match.group(1)), int(match.group(2))):
            partial += 1
    orphans = (set(suggestions) | set(decisions) | set(audits)) - set(visits)
    partial += len(orphans)
    return len(visits), lost, partial


@pytest.mark.slow
def test_sigkill_never_loses_or_splits_a_visit(tmp_path):
    rng = random.Random(SEED)
    db_path = tmp_path / "crash.db"
    reported: dict[str, tuple[int, int]] = {}
    started = time.monotonic()
    runs = 0
    for run in range(RUNS):
        if time.monotonic() - started > TIME_BUDGET_S:
            break
        reported.update(_run_once(db_path, run, rng.uniform(0.020, 0.150)))
        runs += 1

    # the database opens normally afterwards (WAL recovery) and shows the reported visits
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app.storage.database import History

    with History(db_path) as history:
        patients = history.search_patients("crash patient")
        shown = {v["id"] for p in patients for v in history.timeline(p["id"])}
    assert set(reported) <= shown

    committed, lost, partial = _check(db_path, reported)
    print(
        f"\ncrash test: runs={runs} committed={committed} reported={len(reported)} "
        f"lost={lost} partial={partial} ({time.monotonic() - started:.1f} s)"
    )
    assert runs >= MIN_RUNS
    assert len(reported) > runs  # the kills really landed inside the save loop
    assert committed >= len(reported)
    assert lost == 0
    assert partial == 0
