"""A full disk under app.storage: a clear HistoryError naming the file, the visit (or backup, or
export) not written at all, every visit committed before still whole, and the same History
saving again once space is freed.

Two real fault injections, no mock of SQLite or of the file system:

- SQLite's own limit, `PRAGMA max_page_count` on the History's connection: SQLite answers
  SQLITE_FULL exactly as on a full disk. Always available.
- A really full file system: a tmpfs of a few hundred KiB mounted in a private mount namespace
  (`unshare`) for a child process (tests/disk_full_writer.py), where the kernel answers ENOSPC to
  SQLite's and our own writes. Skipped, with the reason, where no such mount can be made.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from disk_full_writer import as_read, big_visit, new_visit, sound

import app.storage.database as history_module
import app.storage.migrations as migrations_module
from app.storage.database import History
from app.storage.errors import HistoryError

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("disk_full_writer.py")
MOUNT = 'mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@"'


def limit_pages(conn: sqlite3.Connection, extra: int) -> None:
    """Let the database grow by `extra` pages at most (SQLite never lowers the limit below the
    current size, so 0 means "not one more page")."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def assert_full_message(message: str, path: Path, lost: str) -> None:
    assert f"the disk holding the history database {path} is full" in message, message
    assert lost in message and "nothing was half-written" in message, message
    assert "free some space" in message, message


# ------------------------------------------------------------------ SQLite's page limit


def test_full_database_refuses_the_whole_visit_and_saves_again_after(tmp_path):
    db = tmp_path / "pocketrec.db"
    rng = random.Random(7)
    history = History(db)
    patient = history.add_patient("Ada")
    committed = {}
    for _ in range(3):
        visit = new_visit(rng)
        committed[history.save_visit(patient, **visit)] = visit
    limit_pages(history.db.conn, 2)
    before_full = len(committed)
    with pytest.raises(HistoryError) as info:
        for _ in range(2000):
            visit = new_visit(rng)
            committed[history.save_visit(patient, **visit)] = visit
    assert len(committed) > before_full  # the limit left room for some visits, then ran out
    assert_full_message(str(info.value), db, "the visit was not saved")
    assert str(info.value).endswith("free some space and save again")
    assert info.value.path == db
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)  # real SQLITE_FULL
    assert not history.db.conn.in_transaction

    # everything save_visit returned is there, whole; the failed visit left no row anywhere
    timeline = {v["id"]: as_read(v) for v in history.timeline(patient)}
    assert timeline == committed
    assert len(history.history_for_model(patient)) == len(committed)
    on_disk = sound(db)
    assert on_disk == {
        "integrity": "ok",
        "fk_violations": 0,
        "visits": len(committed),
        "partial": 0,
    }

    with pytest.raises(HistoryError, match="is full"):  # still full: fails the same way
        history.save_visit(patient, **big_visit(rng))
    history.db.conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    visit = new_visit(rng)
    committed[history.save_visit(patient, **visit)] = visit
    history.close()
    with History(db) as again:
        assert {v["id"]: as_read(v) for v in again.timeline(patient)} == committed
    assert sound(db)["partial"] == 0
    print(f"\nmax_page_count: {len(committed) - 1} visits committed before SQLITE_FULL")


def test_full_database_while_creating_or_migrating_it(tmp_path, monkeypatch):
    connect = history_module.connect

    def connect_with_no_room(path, busy_timeout):
        conn = connect(path, busy_timeout)
        conn.execute("PRAGMA max_page_count = 1")  # not one page more than the file has now
        return conn

    # a new database: its first migration needs pages
    db = tmp_path / "new.db"
    monkeypatch.setattr(history_module, "connect", connect_with_no_room)
    with pytest.raises(HistoryError) as info:
        History(db)
    assert_full_message(str(info.value), db, "it could not be opened or set up")
    assert str(info.value).endswith("free some space and open it again")
    monkeypatch.setattr(history_module, "connect", connect)
    with History(db) as history:
        patient = history.add_patient("Ada")
        visit = new_visit(random.Random(3))
        vid = history.save_visit(patient, **visit)
        names = [r[0] for r in history.db.conn.execute("SELECT name FROM _migrations")]
    assert names == [fn.__name__ for fn in migrations_module.MIGRATIONS]

    # an existing database and a pending migration that needs room: not applied, not recorded
    def m999_needs_room(db):
        db.execute("CREATE TABLE filler (blob BLOB)")
        db.execute("INSERT INTO filler VALUES (zeroblob(65536))")

    monkeypatch.setattr(
        migrations_module, "MIGRATIONS", [*migrations_module.MIGRATIONS, m999_needs_room]
    )
    monkeypatch.setattr(history_module, "connect", connect_with_no_room)
    with pytest.raises(HistoryError) as info:
        History(db)
    assert_full_message(str(info.value), db, "it could not be opened or set up")
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        recorded = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    finally:
        conn.close()
    assert "filler" not in tables and "m999_needs_room" not in recorded
    assert sound(db) == {"integrity": "ok", "fk_violations": 0, "visits": 1, "partial": 0}
    monkeypatch.setattr(history_module, "connect", connect)
    with History(db) as history:  # room again: the migration runs, the visit is intact
        assert "filler" in history.db.table_names()
        assert [as_read(v) for v in history.timeline(patient)] == [visit]
        assert history.timeline(patient)[0]["id"] == vid


# ------------------------------------------------------------------ a really full file system


@functools.cache
def _unshare_prefix() -> list[str] | str:
    """The command prefix that runs a child in a private mount namespace where it may mount a
    tmpfs, or why there is none here."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux mount namespaces (this is {sys.platform})"
    if shutil.which("unshare") is None:
        return "needs unshare(1) from util-linux, which is not installed"
    tried = []
    candidates = [["unshare", "--user", "--map-root-user", "--mount"]]
    if os.geteuid() == 0:
        candidates.append(["unshare", "--mount"])
    for prefix in candidates:
        with tempfile.TemporaryDirectory() as folder:
            probe = subprocess.run(
                [*prefix, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", folder],
                capture_output=True,
                text=True,
                timeout=30,
            )
        if probe.returncode == 0:
            return prefix
        tried.append(f"`{' '.join(prefix)} mount -t tmpfs` failed: {probe.stderr.strip()}")
    return "cannot mount a private tmpfs here: " + "; ".join(tried)


def on_tiny_disk(tmp_path: Path, mode: str, *args: str, size: str = "1m") -> dict:
    """Run tests/disk_full_writer.py MODE on an empty tmpfs of `size`; its JSON report."""
    prefix = _unshare_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [*prefix, "sh", "-c", MOUNT, "sh", size, str(disk)]
    command += [sys.executable, str(WRITER), mode, str(disk), *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert os.listdir(disk) == []  # the tmpfs was the child's alone; nothing was written here
    return json.loads(run.stdout)


def test_save_visit_on_a_really_full_disk(tmp_path):
    report = on_tiny_disk(tmp_path, "save")
    db = Path(report["db"])
    print(
        f"\ntmpfs: {report['committed']} visits committed before ENOSPC, "
        f"{report['read_back']} read back, {report['on_disk']['partial']} partial"
    )
    assert report["error"] is not None, "the disk never filled"
    assert report["error"]["type"] == "HistoryError", report["error"]
    assert_full_message(report["error"]["message"], db, "the visit was not saved")
    assert report["committed"] >= 5  # the disk filled in the middle of the saves
    assert not report["in_transaction_after"]
    assert report["read_back"] == report["committed"]
    assert report["extra"] == 0
    assert report["model_history"] == report["committed"]
    assert report["on_disk"] == {
        "integrity": "ok",
        "fk_violations": 0,
        "visits": report["committed"],
        "partial": 0,
    }
    assert report["second_error"]["type"] == "HistoryError"
    assert "is full" in report["second_error"]["message"]
    assert report["saved_after_free"] is True
    assert report["read_back_after_reopen"] == report["visits_after_reopen"]
    assert report["visits_after_reopen"] == report["committed"] + 1
    assert report["final"]["integrity"] == "ok" and report["final"]["partial"] == 0


def test_open_on_a_really_full_disk(tmp_path):
    # room for the clean close's checkpoint (WAL into the database file, then both removed),
    # so that the reopen on a full disk has to allocate a new -shm file
    report = on_tiny_disk(tmp_path, "open", size="512k")
    db = Path(report["db"])
    for key in ("create_error", "reopen_full"):
        assert report[key]["type"] == "HistoryError", (key, report[key])
        assert_full_message(report[key]["message"], db, "it could not be opened or set up")
    assert report["migrations"] == [fn.__name__ for fn in migrations_module.MIGRATIONS]
    assert report["visits_after_free"] == 1
    assert report["final"] == {"integrity": "ok", "fk_violations": 0, "visits": 1, "partial": 0}


def test_cli_backup_and_export_onto_a_really_full_disk(tmp_path):
    live = tmp_path / "live.db"
    rng = random.Random(11)
    with History(live) as history:
        patient = history.add_patient("Ada")
        for _ in range(40):
            history.save_visit(patient, **new_visit(rng))
    report = on_tiny_disk(tmp_path, "backup", str(live), size="512k")
    out = report["out"]
    assert report["live_bytes"] > 100_000  # a third of it is less than the copy needs

    full = report["full"]
    assert full["rc"] == 2, full
    assert full["stderr"].startswith(f"pocketrec: error: the disk holding the backup {out} is full")
    assert "the backup was not written" in full["stderr"] and "free some space" in full["stderr"]
    assert "Traceback" not in full["stderr"]
    assert full["left"] == []  # no backup, no temporary copy, no journal

    assert report["export_error"]["type"] == "HistoryError", report["export_error"]
    assert "is full" in report["export_error"]["message"]
    assert "free some space and try again" in report["export_error"]["message"]
    assert report["export_left"] == []  # no half-written CSV, no temporary file

    assert report["after_free"]["rc"] == 0, report["after_free"]
    assert report["backup"] == {"integrity": "ok", "fk_violations": 0, "visits": 40, "partial": 0}
    assert report["live"]["visits"] == 40 and report["live"]["partial"] == 0
