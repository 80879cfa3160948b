"""app.storage on real SQLite files in tmp_path: patients, visits (one transaction each),
timeline and model history, export, backup/restore, file modes, and the errors a clinic sees."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

import app.storage.records as records_module
from app.storage.database import History, restore
from app.storage.errors import HistoryError
from app.storage.paths import default_db_path

SUGGESTIONS = [
    {"code": "N02B", "probability": 0.91, "suggested": True},
    {"code": "A02B", "probability": 0.64, "suggested": True},
    {"code": "B01A", "probability": 0.12, "suggested": False},
]
DECISIONS = {"N02B": "accepted", "A02B": "rejected", "C07A": "added"}


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "data" / "pocketrec.db"


@pytest.fixture
def hist(db_path):
    with History(db_path) as h:
        yield h


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def raw_counts(path) -> dict[str, int]:
    """Row counts as a brand-new connection sees the file: what is durably committed."""
    conn = sqlite3.connect(path)
    try:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("patients", "visits", "suggestions", "decisions", "audit")
        }
    finally:
        conn.close()


def save(h: History, patient_id: str, **overrides) -> str:
    args = {
        "diagnoses": ["I10", "E11"],
        "procedures": ["0DB"],
        "suggestions": SUGGESTIONS,
        "decisions": DECISIONS,
        "note": "follow up in 2 weeks",
        "bundle_name": "med-student",
        "bundle_version": "2025-11-20T10:00:00Z/abc123",
    }
    args.update(overrides)
    return h.save_visit(patient_id, **args)


# ------------------------------------------------------------------ connection settings


def test_connection_is_wal_full_sync_with_foreign_keys(hist):
    conn = hist.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations")]
    assert names == ["m001_initial", "m002_news", "m003_item_vectors", "m004_drafts"]


def test_reopening_does_not_migrate_again(db_path):
    with History(db_path) as h:
        first = h.db.execute("SELECT * FROM _migrations").fetchall()
    with History(db_path) as h:
        assert h.db.execute("SELECT * FROM _migrations").fetchall() == first


# ------------------------------------------------------------------ patients


def test_patient_crud(hist):
    pid = hist.add_patient("  Ana Lima ", {"gender": "F", "age_band": "40-49", "race": ""})
    assert len(pid) == 32 and int(pid, 16) >= 0  # uuid4 hex
    patient = hist.get_patient(pid)
    assert patient["display_name"] == "Ana Lima"
    assert patient["gender"] == "F" and patient["age_band"] == "40-49"
    assert patient["race"] is None and patient["religion"] is None
    assert hist.profile(pid) == {"gender": "F", "age_band": "40-49"}

    updated = hist.update_patient(pid, display_name="Ana L. Souza", profile={"gender": None})
    assert updated["display_name"] == "Ana L. Souza"
    assert updated["gender"] is None and updated["age_band"] == "40-49"
    assert hist.get_patient(pid) == updated
    assert hist.update_patient(pid) == updated  # nothing to change

    actions = [(a["action"], a["patient_id"]) for a in hist.audit()]
    assert actions == [("add_patient", pid), ("update_patient", pid)]
    assert hist.audit()[1]["detail"] == {"fields": ["display_name", "gender"]}

    with pytest.raises(ValueError, match="unknown profile field"):
        hist.add_patient("Bob", {"shoe_size": "42"})
    with pytest.raises(ValueError, match="display_name"):
        hist.add_patient("   ")
    with pytest.raises(ValueError, match="unknown profile field"):
        hist.update_patient(pid, profile={"height": "1.8"})


def test_search_patients(hist):
    ana = hist.add_patient("Ana Lima")
    joana = hist.add_patient("Joana Ana")
    strasse = hist.add_patient("Heinz Straße")
    hist.add_patient("Zed 100% Real")

    def names(text):
        return [p["display_name"] for p in hist.search_patients(text)]

    assert names("ana") == ["Ana Lima", "Joana Ana"]  # name prefix first, then contains
    assert names("ANA LI") == ["Ana Lima"]
    assert names("strasse") == ["Heinz Straße"]  # Unicode case folding
    assert names("%") == ["Zed 100% Real"]  # no LIKE wildcards
    assert names("_") == []
    assert names("nobody") == []
    assert len(names("")) == 4
    assert [p["id"] for p in hist.search_patients(joana[:6])] == [joana]
    assert [p["id"] for p in hist.search_patients(strasse.upper())] == [strasse]
    assert [p["id"] for p in hist.search_patients(f"  {ana} ")] == [ana]
    assert len(hist.search_patients("", limit=2)) == 2


def test_unknown_patient_is_a_history_error(hist, tmp_path):
    calls = [
        lambda: hist.get_patient("nope"),
        lambda: hist.update_patient("nope", display_name="X"),
        lambda: hist.timeline("nope"),
        lambda: hist.history_for_model("nope"),
        lambda: save(hist, "nope"),
        lambda: hist.export_patient("nope", tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(HistoryError, match="unknown patient 'nope'") as info:
            call()
        assert str(hist.path) in str(info.value)
    assert raw_counts(hist.path)["visits"] == 0
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ visits


def test_save_visit_round_trip(hist):
    pid = hist.add_patient("Ana")
    other = hist.add_patient("Bea")
    first = save(hist, pid)
    second = save(
        hist,
        pid,
        diagnoses=["J45"],
        procedures=[],
        suggestions=[{"code": "R03A", "probability": 0.8, "suggested": 1}],
        decisions={"R03A": "accepted", "H02A": "added"},
        note=None,
    )
    save(hist, other, decisions={})

    timeline = hist.timeline(pid)
    assert [v["id"] for v in timeline] == [second, first]  # newest first
    latest, earliest = timeline
    assert earliest["diagnoses"] == ["I10", "E11"] and earliest["procedures"] == ["0DB"]
    assert earliest["note"] == "follow up in 2 weeks"
    assert earliest["bundle_name"] == "med-student"
    assert earliest["bundle_version"] == "2025-11-20T10:00:00Z/abc123"
    assert earliest["status"] == "saved" and earliest["patient_id"] == pid
    assert earliest["suggestions"] == [
        {"rank": 1, "code": "N02B", "probability": 0.91, "suggested": True},
        {"rank": 2, "code": "A02B", "probability": 0.64, "suggested": True},
        {"rank": 3, "code": "B01A", "probability": 0.12, "suggested": False},
    ]
    assert earliest["decisions"] == DECISIONS
    assert latest["procedures"] == [] and latest["note"] is None
    assert latest["created"] > earliest["created"]

    assert hist.history_for_model(pid) == [
        (["I10", "E11"], ["0DB"], ["N02B", "C07A"]),  # accepted + added, not rejected
        (["J45"], [], ["R03A", "H02A"]),
    ]
    assert hist.history_for_model(other) == [(["I10", "E11"], ["0DB"], [])]

    audit = [a for a in hist.audit(pid) if a["action"] == "save_visit"]
    assert [a["visit_id"] for a in audit] == [first, second]
    assert audit[0]["actor"] == "clinician"
    assert audit[0]["detail"]["suggestions"] == 3
    assert audit[0]["detail"]["decisions"] == {"accepted": 1, "rejected": 1, "added": 1}
    assert raw_counts(hist.path) == {
        "patients": 2,
        "visits": 3,
        "suggestions": 7,
        "decisions": 5,
        "audit": 5,
    }


def test_save_visit_validates_before_writing(hist):
    pid = hist.add_patient("Ana")
    with pytest.raises(ValueError, match="expected one of"):
        save(hist, pid, decisions={"N02B": "maybe"})
    with pytest.raises(ValueError, match="probability"):
        save(hist, pid, suggestions=[{"code": "N02B"}])
    with pytest.raises(TypeError, match="not a string"):
        save(hist, pid, diagnoses="I10")
    with pytest.raises(ValueError, match="non-empty string"):
        save(hist, pid, procedures=[""])
    assert raw_counts(hist.path)["visits"] == 0


def assert_nothing_partial(path, patient_audit_rows: int) -> None:
    counts = raw_counts(path)
    assert counts["visits"] == 0
    assert counts["suggestions"] == 0
    assert counts["decisions"] == 0
    assert counts["audit"] == patient_audit_rows


def test_failure_after_the_visit_insert_leaves_no_partial_visit(hist, monkeypatch):
    pid = hist.add_patient("Ana")
    real_insert_audit = History._insert_audit

    def explode(self, action, **kwargs):
        if action == "save_visit":
            # the visit, its suggestions and decisions are in, uncommitted
            assert self.db.execute("SELECT count(*) FROM visits").fetchone() == (1,)
            assert self.db.execute("SELECT count(*) FROM suggestions").fetchone() == (3,)
            raise RuntimeError("disk on fire")
        return real_insert_audit(self, action, **kwargs)

    monkeypatch.setattr(History, "_insert_audit", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(hist, pid)
    assert not hist.db.conn.in_transaction
    assert hist.timeline(pid) == []
    assert_nothing_partial(hist.path, patient_audit_rows=1)

    monkeypatch.setattr(History, "_insert_audit", real_insert_audit)
    visit = save(hist, pid)  # the connection is usable again
    assert [v["id"] for v in hist.timeline(pid)] == [visit]


def test_check_constraint_violation_mid_visit_rolls_everything_back(hist, monkeypatch):
    pid = hist.add_patient("Ana")
    monkeypatch.setattr(records_module, "_check_decisions", lambda decisions: None)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        save(hist, pid, decisions={"N02B": "accepted", "A02B": "maybe"})
    assert not hist.db.conn.in_transaction
    assert_nothing_partial(hist.path, patient_audit_rows=1)


def test_log_appends_audit_rows_that_cannot_change(hist):
    pid = hist.add_patient("Ana")
    row_id = hist.log("print_summary", actor="dr.who", patient_id=pid, detail={"pages": 2})
    entry = hist.audit(pid)[-1]
    assert entry["id"] == row_id
    assert (entry["action"], entry["actor"], entry["detail"]) == (
        "print_summary",
        "dr.who",
        {"pages": 2},
    )
    assert datetime.fromisoformat(entry["at"]).utcoffset().total_seconds() == 0
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        hist.db.execute("UPDATE audit SET actor = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        hist.db.execute("DELETE FROM audit WHERE id = ?", [row_id])
    with pytest.raises(ValueError):
        hist.log("")
    assert len(hist.audit()) == 2


def test_history_can_be_used_from_several_threads(hist):
    pid = hist.add_patient("Ana")
    errors = []

    def worker():
        try:
            for _ in range(5):
                save(hist, pid)
                hist.timeline(pid)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(hist.timeline(pid)) == 20
    assert raw_counts(hist.path)["suggestions"] == 60


# ------------------------------------------------------------------ export


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_patient_writes_only_that_patient(hist, tmp_path):
    ana = hist.add_patient('Ana, "the" first', {"language": "PT"})
    bea = hist.add_patient("Bea")
    visit = save(hist, ana, note="line one\nline two")
    save(hist, bea)
    out = tmp_path / "export" / "ana"
    paths = hist.export_patient(ana, out)
    assert sorted(p.name for p in paths) == [
        "audit.csv",
        "decisions.csv",
        "patients.csv",
        "pocketrec.json",
        "suggestions.csv",
        "visits.csv",
    ]
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)  # no temp files left
    for p in paths:
        assert mode(p) == 0o600
    assert mode(out) == 0o700

    patients = read_csv(out / "patients.csv")
    assert [p["id"] for p in patients] == [ana]
    assert patients[0]["display_name"] == 'Ana, "the" first' and patients[0]["language"] == "PT"
    assert list(patients[0]) == [
        "id", "display_name", "created", "gender", "age_band", "insurance", "language",
        "marital_status", "race", "religion",
    ]  # fmt: skip
    visits = read_csv(out / "visits.csv")
    assert [(v["id"], v["note"]) for v in visits] == [(visit, "line one\nline two")]
    assert json.loads(visits[0]["diagnoses"]) == ["I10", "E11"]
    suggestions = read_csv(out / "suggestions.csv")
    assert [(s["rank"], s["drug_code"], s["suggested"]) for s in suggestions] == [
        ("1", "N02B", "1"),
        ("2", "A02B", "1"),
        ("3", "B01A", "0"),
    ]
    assert {d["drug_code"]: d["decision"] for d in read_csv(out / "decisions.csv")} == DECISIONS
    assert {a["action"] for a in read_csv(out / "audit.csv")} == {"add_patient", "save_visit"}
    assert all(a["patient_id"] == ana for a in read_csv(out / "audit.csv"))

    document = json.loads((out / "pocketrec.json").read_text(encoding="utf-8"))
    assert document["format"] == "pocketrec-export/1"
    assert document["scope"] == "patient" and document["patient_id"] == ana
    assert document["migrations"] == [
        "m001_initial",
        "m002_news",
        "m003_item_vectors",
        "m004_drafts",
    ]
    assert [p["id"] for p in document["tables"]["patients"]] == [ana]
    assert document["tables"]["visits"][0]["diagnoses"] == ["I10", "E11"]  # decoded JSON
    assert len(document["tables"]["suggestions"]) == 3
    assert document["tables"]["audit"][1]["detail"]["suggestions"] == 3

    assert hist.audit(ana)[-1]["action"] == "export_patient"


def test_export_all_and_overwrite(hist, tmp_path):
    ana = hist.add_patient("Ana")
    bea = hist.add_patient("Bea")
    save(hist, ana)
    save(hist, bea)
    out = tmp_path / "all"
    hist.export_all(out)
    assert {p["id"] for p in read_csv(out / "patients.csv")} == {ana, bea}
    assert len(read_csv(out / "suggestions.csv")) == 6
    document = json.loads((out / "pocketrec.json").read_text(encoding="utf-8"))
    assert document["scope"] == "all" and document["patient_id"] is None
    assert len(document["tables"]["visits"]) == 2
    hist.add_patient("Cid")
    hist.export_all(out)  # replaces the files in place
    assert len(read_csv(out / "patients.csv")) == 3
    assert len(os.listdir(out)) == 6
    # empty tables still get a header row
    with History(out.parent / "empty.db") as empty:
        empty.export_all(out.parent / "empty")
    text = (out.parent / "empty" / "visits.csv").read_text(encoding="utf-8")
    assert text.startswith("id,patient_id,created,diagnoses,procedures,note")
    assert read_csv(out.parent / "empty" / "visits.csv") == []


# ------------------------------------------------------------------ backup / restore


def test_backup_and_restore_round_trip(db_path, tmp_path):
    backup_file = tmp_path / "backups" / "pocketrec-backup.db"
    with History(db_path) as h:
        ana = h.add_patient("Ana")
        visit = save(h, ana)
        assert h.backup(backup_file) == backup_file
        assert h.audit()[-1]["action"] == "backup"
        later = h.add_patient("Added after the backup")
        save(h, later)
    assert mode(backup_file) == 0o600
    assert sorted(os.listdir(backup_file.parent)) == ["pocketrec-backup.db"]  # one file, no -wal
    conn = sqlite3.connect(backup_file)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()

    assert restore(backup_file, db_path) == db_path
    with History(db_path) as h:
        assert [p["id"] for p in h.search_patients("")] == [ana]
        assert [v["id"] for v in h.timeline(ana)] == [visit]
        assert h.timeline(ana)[0]["decisions"] == DECISIONS
        actions = [a["action"] for a in h.audit()]
        assert actions == ["add_patient", "save_visit", "restore"]  # the backup's own log + restore
        assert h.audit()[-1]["detail"] == {"from": str(backup_file)}
    assert mode(db_path) == 0o600


def test_backup_refuses_its_own_file(hist):
    with pytest.raises(HistoryError, match="onto itself"):
        hist.backup(hist.path)


def test_restore_refuses_a_file_that_is_not_a_pocketrec_database(db_path, tmp_path):
    with History(db_path) as h:
        ana = h.add_patient("Ana")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not sqlite " * 200)
    foreign = tmp_path / "other-app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    for bad, message in [
        (garbage, "not a pocketrec database"),
        (foreign, "not a pocketrec database"),
        (tmp_path / "missing.db", "no backup file"),
    ]:
        with pytest.raises(HistoryError, match=message) as info:
            restore(bad, db_path)
        assert str(bad) in str(info.value)
    with History(db_path) as h:  # untouched
        assert [p["id"] for p in h.search_patients("")] == [ana]


def test_restore_replaces_a_corrupted_database(db_path, tmp_path):
    backup_file = tmp_path / "b.db"
    with History(db_path) as h:
        ana = h.add_patient("Ana")
        h.backup(backup_file)
    db_path.write_bytes(b"\x00garbage" * 4096)
    with pytest.raises(HistoryError, match="corrupted"):
        History(db_path)
    restore(backup_file, db_path)
    with History(db_path) as h:
        assert h.get_patient(ana)["display_name"] == "Ana"
    moved = [p for p in os.listdir(db_path.parent) if ".corrupt-" in p]
    assert len(moved) == 1  # the damaged file is kept aside, not deleted


def test_restore_refuses_while_another_instance_writes(db_path, tmp_path):
    backup_file = tmp_path / "b.db"
    with History(db_path) as h:
        h.add_patient("Ana")
        h.backup(backup_file)
        h.db.conn.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(HistoryError, match="another pocketrec instance"):
            restore(backup_file, db_path, busy_timeout=0.2)
        assert time.monotonic() - started < 3
        h.db.conn.execute("ROLLBACK")


# ------------------------------------------------------------------ paths and file modes


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("POCKETREC_DB", "FLET_APP_STORAGE_DATA", "XDG_DATA_HOME", "APPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.mark.skipif(sys.platform != "linux", reason="Linux paths")
def test_default_db_path_precedence(clean_env, tmp_path):
    home = tmp_path / "home"
    assert default_db_path() == home / ".local" / "share" / "pocketrec" / "pocketrec.db"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "pocketrec" / "pocketrec.db"
    clean_env.setenv("FLET_APP_STORAGE_DATA", str(tmp_path / "flet"))
    assert default_db_path() == tmp_path / "flet" / "pocketrec.db"
    clean_env.setenv("POCKETREC_DB", str(tmp_path / "explicit" / "my.db"))
    assert default_db_path() == tmp_path / "explicit" / "my.db"
    for folder in ("home/.local/share/pocketrec", "xdg/pocketrec", "flet", "explicit"):
        assert mode(tmp_path / folder) == 0o700


def test_default_db_path_on_macos_and_windows(clean_env, tmp_path):
    clean_env.setattr(sys, "platform", "darwin")
    expected = tmp_path / "home" / "Library" / "Application Support" / "pocketrec" / "pocketrec.db"
    assert default_db_path() == expected
    clean_env.setattr(sys, "platform", "win32")
    clean_env.setenv("APPDATA", str(tmp_path / "roaming"))
    assert default_db_path() == tmp_path / "roaming" / "pocketrec" / "pocketrec.db"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_modes_are_owner_only(clean_env, tmp_path):
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the files
    try:
        path = default_db_path()
        data_dir = path.parent
        assert data_dir == tmp_path / "xdg" / "pocketrec"
        assert mode(data_dir) == 0o700
        with History() as h:
            assert h.path == path
            save(h, h.add_patient("Ana"))
            for suffix in ("", "-wal", "-shm"):
                file = Path(f"{path}{suffix}")
                assert file.exists(), file
                assert mode(file) == 0o600, (file, oct(mode(file)))
            assert mode(data_dir) == 0o700
        assert os.umask(0o022) == 0o022  # History restored the process umask
    finally:
        os.umask(old_umask)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_existing_loose_files_are_tightened(tmp_path):
    path = tmp_path / "loose.db"
    sqlite3.connect(path).close()
    path.touch()
    os.chmod(path, 0o644)
    with History(path):
        assert mode(path) == 0o600


# ------------------------------------------------------------------ errors


def test_second_instance_blocked_by_a_writer_gets_a_clear_error(db_path):
    first = History(db_path)
    try:
        first.add_patient("Ana")
        first.db.conn.execute("BEGIN IMMEDIATE")  # first instance holds the write lock
        second = History(db_path, busy_timeout=0.2)  # reading and opening still work
        try:
            assert len(second.search_patients("")) == 1
            started = time.monotonic()
            with pytest.raises(HistoryError, match="another pocketrec instance holds it") as info:
                second.add_patient("Bea")
            waited = time.monotonic() - started
            assert 0.15 < waited < 3
            assert str(db_path) in str(info.value)
            assert not second.db.conn.in_transaction
            first.db.conn.execute("ROLLBACK")
            second.add_patient("Bea")  # free again
        finally:
            second.close()
    finally:
        first.close()


def test_open_blocked_by_an_exclusive_lock_gets_a_clear_error(tmp_path):
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(HistoryError, match="another pocketrec instance holds it"):
            History(path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with History(path) as h:  # fine once released
        assert h.search_patients("") == []


def test_corrupted_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(HistoryError, match="is corrupted") as info:
        History(path)
    message = str(info.value)
    assert str(path) in message and "restore" in message and "backup" in message
    assert info.value.path == path


def test_read_only_folder_gets_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user (root) who can write a 0500 folder")
        with pytest.raises(HistoryError, match="read-only") as info:
            History(folder / "pocketrec.db")
        assert str(folder / "pocketrec.db") in str(info.value)
        with pytest.raises(HistoryError, match="cannot create"):
            History(folder / "sub" / "pocketrec.db")
    finally:
        os.chmod(folder, 0o700)


def test_location_that_cannot_exist_gets_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(HistoryError, match="cannot create") as info:
        History(blocker / "pocketrec.db")
    assert str(blocker) in str(info.value)
    with pytest.raises(HistoryError, match="is a folder"):
        History(tmp_path)


def test_export_and_backup_destinations_that_cannot_be_written(hist, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(HistoryError, match="cannot create the folder") as info:
        hist.export_all(blocker / "out")
    assert str(blocker / "out") in str(info.value)
    with pytest.raises(HistoryError, match="cannot create the folder"):
        hist.backup(blocker / "b.db")
    out = tmp_path / "out"
    (out / "pocketrec.json").mkdir(parents=True)  # a folder where the JSON file must go
    with pytest.raises(HistoryError, match="cannot write") as info:
        hist.export_all(out)
    assert str(out / "pocketrec.json") in str(info.value)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # temp files cleaned up
    (tmp_path / "b.db").mkdir()
    with pytest.raises(HistoryError, match="cannot write the backup"):
        hist.backup(tmp_path / "b.db")
    assert os.listdir(tmp_path / "b.db") == []
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_closed_history_refuses_calls(db_path):
    h = History(db_path)
    h.close()
    h.close()  # idempotent
    with pytest.raises(HistoryError, match="closed"):
        h.search_patients("")
