"""`pocketrec app backup` of a database that is not there: refused, and nothing is created
(no empty database, no folder, no backup file). Restore onto a missing --db still works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.storage.database import History
from app.storage.errors import HistoryError


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_backup_of_a_missing_database_is_refused_and_creates_nothing(tmp_path):
    db = tmp_path / "x" / "nonexist.db"
    out = tmp_path / "bk.db"
    r = cli("app", "backup", "--db", str(db), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"pocketrec: error: no history database at {db}: nothing to back up"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no x/, no database, no backup


def test_history_backup_refuses_only_a_database_it_made_and_never_wrote(tmp_path):
    db = tmp_path / "new" / "deeper" / "h.db"
    history = History(db)
    with pytest.raises(HistoryError, match="no history database at .*nothing to back up"):
        history.backup(tmp_path / "b.db")
    assert not (tmp_path / "new").exists() and not (tmp_path / "b.db").exists()
    # the same new database once something is written to it is a history worth copying
    with History(db) as history:
        history.add_patient("Ana")
        assert history.backup(tmp_path / "b.db") == tmp_path / "b.db"
    # and one that was there when the History opened it, even empty, is copied as it is
    History(tmp_path / "empty.db").close()
    with History(tmp_path / "empty.db") as history:
        assert history.backup(tmp_path / "c.db").is_file()


def test_restore_onto_a_missing_database_still_works(tmp_path):
    with History(tmp_path / "live.db") as history:
        history.add_patient("Ana")
        history.backup(tmp_path / "b.db")
    r = cli("app", "restore", "--backup", str(tmp_path / "b.db"), "--db", str(tmp_path / "n.db"))
    assert r.returncode == 0, r.stderr
    with History(tmp_path / "n.db") as history:
        assert [p["display_name"] for p in history.search_patients("")] == ["Ana"]
