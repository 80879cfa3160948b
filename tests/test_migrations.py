"""app.storage.migrations on real SQLite files: the schema a blank database gets, idempotence, the
_migrations record, constraints, the append-only audit, and a failing migration rolling back."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pytest
import sqlite_utils

from app.storage import migrations
from app.storage.migrations import MIGRATIONS_TABLE, applied_migrations, migrate, migration

# table -> [(column, declared type, NOT NULL, primary key position)]
EXPECTED_COLUMNS = {
    "_migrations": [("name", "TEXT", 0, 1), ("applied_at", "TEXT", 0, 0)],
    "patients": [
        ("id", "TEXT", 1, 1),
        ("display_name", "TEXT", 1, 0),
        ("created", "TEXT", 1, 0),
        ("gender", "TEXT", 0, 0),
        ("age_band", "TEXT", 0, 0),
        ("insurance", "TEXT", 0, 0),
        ("language", "TEXT", 0, 0),
        ("marital_status", "TEXT", 0, 0),
        ("race", "TEXT", 0, 0),
        ("religion", "TEXT", 0, 0),
    ],
    "visits": [
        ("id", "TEXT", 1, 1),
        ("patient_id", "TEXT", 1, 0),
        ("created", "TEXT", 1, 0),
        ("diagnoses", "TEXT", 1, 0),
        ("procedures", "TEXT", 1, 0),
        ("note", "TEXT", 0, 0),
        ("bundle_name", "TEXT", 0, 0),
        ("bundle_version", "TEXT", 0, 0),
        ("status", "TEXT", 1, 0),
    ],
    "suggestions": [
        ("visit_id", "TEXT", 1, 0),
        ("rank", "INTEGER", 1, 0),
        ("drug_code", "TEXT", 1, 0),
        ("probability", "REAL", 1, 0),
        ("suggested", "INTEGER", 1, 0),
    ],
    "decisions": [
        ("visit_id", "TEXT", 1, 0),
        ("drug_code", "TEXT", 1, 0),
        ("decision", "TEXT", 1, 0),
    ],
    "audit": [
        ("id", "INTEGER", 0, 1),
        ("at", "TEXT", 1, 0),
        ("actor", "TEXT", 1, 0),
        ("action", "TEXT", 1, 0),
        ("patient_id", "TEXT", 0, 0),
        ("visit_id", "TEXT", 0, 0),
        ("detail", "TEXT", 0, 0),
    ],
    "sqlite_sequence": [("name", "", 0, 0), ("seq", "", 0, 0)],  # from AUTOINCREMENT
    "news_clicks": [("id", "INTEGER", 0, 1), ("item_id", "TEXT", 1, 0), ("at", "TEXT", 1, 0)],
    "news_articles": [
        ("item_id", "TEXT", 1, 1),
        ("title", "TEXT", 1, 0),
        ("category", "TEXT", 1, 0),
        ("abstract", "TEXT", 1, 0),
        ("url", "TEXT", 1, 0),
        ("source", "TEXT", 1, 0),
        ("imported", "TEXT", 1, 0),
    ],
    "item_vectors": [
        ("item_id", "TEXT", 0, 1),
        ("bundle_sha", "TEXT", 1, 0),
        ("text_sha", "TEXT", 1, 0),
        ("title", "TEXT", 1, 0),
        ("category", "TEXT", 1, 0),
        ("added", "INTEGER", 1, 0),
        ("vec", "BLOB", 1, 0),
    ],
    "drafts": [("patient_id", "TEXT", 1, 1), ("updated", "TEXT", 1, 0), ("data", "TEXT", 1, 0)],
}
# explicit (non-automatic) indexes: name -> (table, columns, unique)
EXPECTED_INDEXES = {
    "idx_visits_patient_created": ("visits", ["patient_id", "created"], 0),
    "idx_suggestions_visit": ("suggestions", ["visit_id"], 0),
    "idx_decisions_visit": ("decisions", ["visit_id"], 0),
    "idx_news_clicks_item": ("news_clicks", ["item_id"], 0),
}
EXPECTED_TRIGGERS = {"audit_no_update": "audit", "audit_no_delete": "audit"}
# (table, column) -> (other table, other column)
EXPECTED_FOREIGN_KEYS = {
    ("visits", "patient_id"): ("patients", "id"),
    ("suggestions", "visit_id"): ("visits", "id"),
    ("decisions", "visit_id"): ("visits", "id"),
    ("drafts", "patient_id"): ("patients", "id"),
}


@pytest.fixture
def db(tmp_path):
    database = sqlite_utils.Database(tmp_path / "blank.db")
    database.execute("PRAGMA foreign_keys = ON")
    yield database
    database.close()


def schema_of(db: sqlite_utils.Database) -> dict:
    tables = {
        name: [(c.name, c.type, c.notnull, c.is_pk) for c in db.table(name).columns]
        for name in db.table_names()
    }
    indexes = {
        index.name: (name, index.columns, index.unique)
        for name in db.table_names()
        for index in db.table(name).indexes
        if index.origin == "c"
    }
    triggers = {t.name: t.table for t in db.triggers}
    foreign_keys = {
        (fk.table, fk.column): (fk.other_table, fk.other_column)
        for name in db.table_names()
        for fk in db.table(name).foreign_keys
    }
    return {"tables": tables, "indexes": indexes, "triggers": triggers, "fks": foreign_keys}


def master_rows(db: sqlite_utils.Database) -> list[tuple]:
    return db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    ).fetchall()


def test_blank_database_gets_the_expected_schema(db):
    assert db.table_names() == []
    assert migrate(db) == ["m001_initial", "m002_news", "m003_item_vectors", "m004_drafts"]
    schema = schema_of(db)
    assert schema["tables"] == EXPECTED_COLUMNS
    assert schema["indexes"] == EXPECTED_INDEXES
    assert schema["triggers"] == EXPECTED_TRIGGERS
    assert schema["fks"] == EXPECTED_FOREIGN_KEYS
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not db.conn.in_transaction


def test_migrating_twice_is_a_no_op(db, tmp_path):
    migrate(db)
    before_schema, before_rows = master_rows(db), applied_migrations(db)
    assert migrate(db) == []
    assert master_rows(db) == before_schema
    assert applied_migrations(db) == before_rows
    # and through a second connection to the same file
    other = sqlite_utils.Database(tmp_path / "blank.db")
    assert migrate(other) == []
    other.close()
    assert applied_migrations(db) == before_rows


def test_migrations_table_lists_every_migration_in_order(db):
    migrate(db)
    rows = applied_migrations(db)
    names = [row["name"] for row in rows]
    assert names == [fn.__name__ for fn in migrations.MIGRATIONS]
    assert names[0] == "m001_initial"
    assert all(name.startswith(f"m{i:03d}_") for i, name in enumerate(names, start=1))
    for row in rows:
        assert datetime.fromisoformat(row["applied_at"]).utcoffset().total_seconds() == 0
    raw = db.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY rowid").fetchall()
    assert [r[0] for r in raw] == names


def _audit_row(db) -> int:
    db.execute(
        "INSERT INTO audit (at, actor, action, detail) VALUES ('t', 'tester', 'x', '{\"a\": 1}')"
    )
    return db.execute("SELECT max(id) FROM audit").fetchone()[0]


def test_audit_rows_cannot_be_updated_or_deleted(db):
    migrate(db)
    row_id = _audit_row(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'mallory' WHERE id = ?", [row_id])
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE id = ?", [row_id])
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    assert db.execute("SELECT id, actor FROM audit").fetchall() == [(row_id, "tester")]
    assert not db.conn.in_transaction
    _audit_row(db)  # appending still works
    assert db.execute("SELECT count(*) FROM audit").fetchone() == (2,)


def test_constraints_guard_the_tables(db):
    migrate(db)
    db.execute("INSERT INTO patients (id, display_name, created) VALUES ('p1', 'Ann', 't')")
    db.execute("INSERT INTO visits (id, patient_id, created) VALUES ('v1', 'p1', 't')")
    row = db.execute("SELECT diagnoses, procedures, status FROM visits").fetchone()
    assert row == ("[]", "[]", "saved")
    bad = [
        "INSERT INTO decisions (visit_id, drug_code, decision) VALUES ('v1', 'A', 'maybe')",
        "INSERT INTO suggestions VALUES ('v1', 1, 'A', 0.5, 2)",
        "INSERT INTO visits (id, patient_id, created, diagnoses) VALUES ('v2', 'p1', 't', 'no')",
        "INSERT INTO visits (id, patient_id, created) VALUES ('v3', 'nobody', 't')",
        "INSERT INTO decisions (visit_id, drug_code, decision) VALUES ('v9', 'A', 'added')",
        "INSERT INTO patients (id, display_name, created) VALUES (NULL, 'Bob', 't')",
        "INSERT INTO audit (at, actor, action, detail) VALUES ('t', 'a', 'x', '{oops')",
    ]
    for sql in bad:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(sql)
    db.execute("INSERT INTO decisions (visit_id, drug_code, decision) VALUES ('v1', 'A', 'added')")
    assert db.execute("SELECT count(*) FROM decisions").fetchone() == (1,)


def test_a_database_of_the_first_release_is_upgraded_in_place(db, monkeypatch):
    with monkeypatch.context() as m:  # a database written when m001 was the only migration
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        assert migrate(db) == ["m001_initial"]
    db.execute("INSERT INTO patients (id, display_name, created) VALUES ('p1', 'Ann', 't')")
    assert migrate(db) == ["m002_news", "m003_item_vectors", "m004_drafts"]
    assert schema_of(db)["tables"] == EXPECTED_COLUMNS
    assert db.execute("SELECT display_name FROM patients").fetchall() == [("Ann",)]


def test_failing_migration_rolls_back_and_stays_pending(db, monkeypatch):
    registry = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", registry)
    calls = []

    @migration
    def m005_flaky(database):
        database.execute("CREATE TABLE half_done (x INTEGER)")
        database.execute("INSERT INTO half_done VALUES (1)")
        if not calls:
            calls.append(1)
            raise RuntimeError("boom")

    assert registry[-1] is m005_flaky
    with pytest.raises(RuntimeError, match="boom"):
        migrate(db)
    assert [row["name"] for row in applied_migrations(db)] == [
        "m001_initial",
        "m002_news",
        "m003_item_vectors",
        "m004_drafts",
    ]
    assert "half_done" not in db.table_names()
    assert "patients" in db.table_names()
    assert not db.conn.in_transaction
    assert migrate(db) == ["m005_flaky"]
    assert [row["name"] for row in applied_migrations(db)] == [
        "m001_initial",
        "m002_news",
        "m003_item_vectors",
        "m004_drafts",
        "m005_flaky",
    ]
    assert db.execute("SELECT x FROM half_done").fetchall() == [(1,)]


def test_a_database_whose_item_vector_cache_came_before_its_migration(db, monkeypatch):
    """Before m003 the news store created `item_vectors` itself: such a database keeps its
    table and its cached rows, and gets m003 recorded."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        assert migrate(db) == ["m001_initial", "m002_news"]
    db.execute(  # the store's own statement of that time
        "CREATE TABLE IF NOT EXISTS item_vectors (item_id TEXT PRIMARY KEY, bundle_sha TEXT NOT "
        "NULL, text_sha TEXT NOT NULL, title TEXT NOT NULL, category TEXT NOT NULL, added "
        "INTEGER NOT NULL, vec BLOB NOT NULL)"
    )
    db.execute("INSERT INTO item_vectors VALUES ('N1', 'b', 't', 'Title', 'c', 0, x'00')")
    db.conn.commit()
    assert migrate(db) == ["m003_item_vectors", "m004_drafts"]
    assert schema_of(db)["tables"] == EXPECTED_COLUMNS
    assert db.execute("SELECT item_id FROM item_vectors").fetchall() == [("N1",)]


def test_migration_decorator_checks_names_and_order(monkeypatch):
    before = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", list(before))

    def initial_schema(database):  # not mNNN_...
        pass

    def m001_again(database):  # not after m001_initial
        pass

    with pytest.raises(ValueError, match="mNNN"):
        migration(initial_schema)
    with pytest.raises(ValueError, match="must come after"):
        migration(m001_again)
    assert migrations.MIGRATIONS == before


def test_migrate_refuses_an_open_transaction(db):
    db.execute("BEGIN")
    with pytest.raises(RuntimeError, match="open transaction"):
        migrate(db)
    db.execute("ROLLBACK")
