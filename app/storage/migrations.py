"""Schema migrations for the local history database: every table pocketrec keeps in it.

Each migration is a function `mNNN_description(db)` registered, in order, with `@migration`.
`migrate(db)` applies the ones not yet recorded in the `_migrations` table; each runs inside its
own `BEGIN IMMEDIATE ... COMMIT` together with the row that records it, so a crash or an error
leaves the database either before or after a migration, never half-way through one.

Migrations are append-only: once a version of the app has shipped with a migration, never edit
it; add the next `mNNN_...` instead. Only the standard library and sqlite_utils are used here.
`utc_now()` is the timestamp format of every `created` / `at` / `applied_at` column.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from sqlite_utils import Database

MIGRATIONS_TABLE = "_migrations"
PROFILE_FIELDS = (
    "gender",
    "age_band",
    "insurance",
    "language",
    "marital_status",
    "race",
    "religion",
)
DECISIONS = ("accepted", "rejected", "added")
TABLES = ("patients", "visits", "suggestions", "decisions", "audit")
ITEM_VECTORS_TABLE = "item_vectors"
DRAFTS_TABLE = "drafts"
JSON_COLUMNS = {"visits": ("diagnoses", "procedures"), "audit": ("detail",), "drafts": ("data",)}
DEFAULT_ACTOR = "clinician"  # the audit's actor when a caller names none

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []
_NAME = re.compile(r"^m(\d{3})_[a-z0-9_]+$")

__all__ = [
    "DECISIONS",
    "DEFAULT_ACTOR",
    "DRAFTS_TABLE",
    "ITEM_VECTORS_TABLE",
    "JSON_COLUMNS",
    "MIGRATIONS",
    "MIGRATIONS_TABLE",
    "PROFILE_FIELDS",
    "TABLES",
    "applied_migrations",
    "decode_json_columns",
    "migrate",
    "migration",
    "utc_now",
]


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration; names must be `mNNN_...` with NNN increasing."""
    match = _NAME.match(fn.__name__)
    if match is None:
        raise ValueError(f"migration {fn.__name__!r} is not named mNNN_description")
    if MIGRATIONS:
        last = _NAME.match(MIGRATIONS[-1].__name__)
        assert last is not None
        if int(match.group(1)) <= int(last.group(1)):
            raise ValueError(
                f"migration {fn.__name__!r} must come after {MIGRATIONS[-1].__name__!r}"
            )
    MIGRATIONS.append(fn)
    return fn


def _run(db: Database, script: str) -> None:
    """Execute a script statement by statement inside the caller's open transaction
    (`sqlite3.Connection.executescript` would COMMIT it first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()!r}")


@migration
def m001_initial(db: Database) -> None:
    """Patients, their visits, the model's suggestions, the clinician's decisions, the audit."""
    profile_columns = ",\n".join(f"    {name} TEXT" for name in PROFILE_FIELDS)
    _run(
        db,
        f"""
CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    created TEXT NOT NULL,
{profile_columns}
);
CREATE TABLE visits (
    id TEXT PRIMARY KEY NOT NULL,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    created TEXT NOT NULL,
    diagnoses TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(diagnoses)),
    procedures TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(procedures)),
    note TEXT,
    bundle_name TEXT,
    bundle_version TEXT,
    status TEXT NOT NULL DEFAULT 'saved'
);
CREATE TABLE suggestions (
    visit_id TEXT NOT NULL REFERENCES visits(id),
    rank INTEGER NOT NULL,
    drug_code TEXT NOT NULL,
    probability REAL NOT NULL,
    suggested INTEGER NOT NULL CHECK (suggested IN (0, 1))
);
CREATE TABLE decisions (
    visit_id TEXT NOT NULL REFERENCES visits(id),
    drug_code TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected', 'added'))
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    patient_id TEXT,
    visit_id TEXT,
    detail TEXT CHECK (detail IS NULL OR json_valid(detail))
);
CREATE INDEX idx_visits_patient_created ON visits (patient_id, created);
CREATE INDEX idx_suggestions_visit ON suggestions (visit_id);
CREATE INDEX idx_decisions_visit ON decisions (visit_id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: rows cannot be updated');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: rows cannot be deleted');
END;
""",
    )


@migration
def m002_news(db: Database) -> None:
    """The News tab: the reader's clicks (oldest first by id) and the articles imported from
    a MIND news.tsv."""
    _run(
        db,
        """
CREATE TABLE news_clicks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE news_articles (
    item_id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '',
    abstract TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    imported TEXT NOT NULL
);
CREATE INDEX idx_news_clicks_item ON news_clicks (item_id);
""",
    )


@migration
def m003_item_vectors(db: Database) -> None:
    """The News tab's item-vector cache, kept by `app.news.store.ItemStore`: `vec` is a float32
    vector's bytes, `bundle_sha` the sha256 of the manifest of the bundle that computed it,
    `text_sha` that of the text it was computed from, `added` 1 for items added after the
    bundle (imported articles). IF NOT EXISTS: before this migration the store created the
    table itself, so a database from then already has it, with exactly these columns."""
    _run(
        db,
        f"""
CREATE TABLE IF NOT EXISTS {ITEM_VECTORS_TABLE} (
    item_id TEXT PRIMARY KEY,
    bundle_sha TEXT NOT NULL,
    text_sha TEXT NOT NULL,
    title TEXT NOT NULL,
    category TEXT NOT NULL,
    added INTEGER NOT NULL,
    vec BLOB NOT NULL
);
""",
    )


@migration
def m004_drafts(db: Database) -> None:
    """The visit being entered, kept while it changes (`Records.save_draft`): one draft per
    patient, `data` the visit's inputs, decisions and note as JSON, `updated` when it was last
    written. A saved visit or a discarded draft deletes its row."""
    _run(
        db,
        f"""
CREATE TABLE {DRAFTS_TABLE} (
    patient_id TEXT PRIMARY KEY NOT NULL REFERENCES patients(id),
    updated TEXT NOT NULL,
    data TEXT NOT NULL CHECK (json_valid(data))
);
""",
    )


def decode_json_columns(table: str, row: dict) -> dict:
    """`row` of `table` with its JSON_COLUMNS decoded (in place)."""
    for column in JSON_COLUMNS.get(table, ()):
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    return row


def utc_now() -> str:
    """The stored timestamp: UTC, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def applied_migrations(db: Database) -> list[dict]:
    """Rows of `_migrations` (name, applied_at) in the order they were applied; [] if none."""
    conn = db.conn
    if not _has_table(conn, MIGRATIONS_TABLE):
        return []
    cursor = conn.execute(f"SELECT name, applied_at FROM {MIGRATIONS_TABLE} ORDER BY rowid")
    return [{"name": name, "applied_at": at} for name, at in cursor.fetchall()]


def _is_applied(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = ?", (name,)).fetchone()
    return row is not None


def _in_write_transaction(conn: sqlite3.Connection, body: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        body()
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(db: Database) -> list[str]:
    """Apply the pending migrations, each in one transaction; return the names applied.

    Reads first and takes the write lock only when something is pending, so opening an
    up-to-date database never waits for another writer. Each migration re-checks, under the
    lock, that no other process applied it meanwhile.
    """
    conn = db.conn
    if conn.in_transaction:
        raise RuntimeError("migrate() needs a connection with no open transaction")
    done: list[str] = []
    if not _has_table(conn, MIGRATIONS_TABLE):
        _in_write_transaction(
            conn,
            lambda: db.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
                "(name TEXT PRIMARY KEY, applied_at TEXT)"
            ),
        )
    known = {row["name"] for row in applied_migrations(db)}
    for fn in MIGRATIONS:
        name = fn.__name__
        if name in known:
            continue

        def apply(fn: Migration = fn, name: str = name) -> None:
            if _is_applied(conn, name):  # another process got there first
                return
            fn(db)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                (name, utc_now()),
            )
            done.append(name)

        _in_write_transaction(conn, apply)
    return done
