"""`pocketrec app backup` / `restore` through the real CLI on real SQLite files."""

from __future__ import annotations

import subprocess
import sys

from app.storage.database import History


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_backup_then_restore_keeps_every_visit(tmp_path):
    db = tmp_path / "live.db"
    h = History(db)
    pid = h.add_patient("Ada", {"gender": "F"})
    vid = h.save_visit(
        pid,
        ["icd9cm:4019"],
        [],
        [{"code": "C07A", "probability": 0.8, "suggested": True}],
        {"C07A": "accepted"},
        "",
        "demo",
        "v1",
    )
    h.close()
    r = cli("app", "backup", "--db", str(db), "--out", str(tmp_path / "b.db"))
    assert r.returncode == 0, r.stderr
    r = cli("app", "restore", "--backup", str(tmp_path / "b.db"), "--db", str(tmp_path / "new.db"))
    assert r.returncode == 0, r.stderr
    restored = History(tmp_path / "new.db")
    visits = restored.timeline(pid)
    assert [v["id"] for v in visits] == [vid]
    restored.close()


def test_restore_refuses_a_file_that_is_not_a_pocketrec_database(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = cli("app", "restore", "--backup", str(junk), "--db", str(tmp_path / "x.db"))
    assert r.returncode == 2
    assert r.stderr.startswith("pocketrec: error:") and "junk.db" in r.stderr
    assert "Traceback" not in r.stderr


def test_app_refuses_an_unusable_database_or_bundle_before_serving(tmp_path):
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    result = cli("app", "--web", "--db", str(folder))
    assert result.returncode == 2
    assert "pocketrec: error: app:" in result.stderr and "is a folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("app", "--web", "--db", str(tmp_path / "ok.db"), "--bundle", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pocketrec: error: app:" in result.stderr
