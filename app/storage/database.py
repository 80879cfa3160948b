"""The local, private visit history: one SQLite file per device, owner-only, crash-safe.

This package is on the app's side of the dependency wall: the standard library and sqlite_utils
only.

- `History` opens the file (`app.storage.paths.default_db_path()` when none is given) in WAL
  mode with `synchronous=FULL` (a visit that `save_visit` returned is on disk, even after
  SIGKILL or power loss), foreign keys on and a busy timeout, migrates it
  (`app.storage.migrations`), and keeps every multi-row write in one `BEGIN IMMEDIATE ...
  COMMIT`. Patients and visits come from `app.storage.records`; exports and backups are written
  by `app.storage.backup`. A domain with tables of its own (the News tab,
  `app.news.history`) writes them through `write()` and reads them through `query()`;
- `restore()` copies a backup over the live file, after checking that the backup is a sound
  pocketrec database, then migrates it and audits the restore.

Every failure the clinic can act on is a `HistoryError` naming the file (`app.storage.errors`).
All public methods of a `History` serialise on one lock and its connection may be used from any
thread: the app's async handlers hand saves and exports to `asyncio.to_thread` workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from app.storage.backup import check_destination, copy_database, restore_copy, write_export
from app.storage.errors import NOT_SAVED, HistoryError, guard, guarded, translate
from app.storage.migrations import (
    DEFAULT_ACTOR,
    TABLES,
    applied_migrations,
    decode_json_columns,
    migrate,
    utc_now,
)
from app.storage.paths import (
    chmod_private,
    connect,
    default_db_path,
    ensure_private_dir,
    private_umask,
    sidecars,
)
from app.storage.records import Records, casefold

DEFAULT_BUSY_TIMEOUT = 5.0

__all__ = ["DEFAULT_BUSY_TIMEOUT", "History", "restore"]


class History(Records):
    """The visit history in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.RLock()
        self._closed = True
        self._depth = 0
        # what opening makes where there was no database (the file and missing folders,
        # innermost first), until something is written: `backup` refuses to copy it and
        # removes it again, so that a mistyped path creates nothing
        self._made: list[Path] = []
        if not self.path.exists():
            self._made = [self.path]
            folder = self.path.parent
            while not folder.exists() and folder.parent != folder:
                self._made.append(folder)
                folder = folder.parent
        ensure_private_dir(self.path.parent)
        if self.path.is_dir():
            raise HistoryError(f"the history database {self.path} is a folder", self.path)
        conn: sqlite3.Connection | None = None
        try:
            with private_umask():
                conn = connect(self.path, self.busy_timeout)
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise HistoryError(
                        f"cannot switch the history database {self.path} to WAL mode "
                        f"(journal_mode is {mode})",
                        self.path,
                    )
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA fullfsync = ON")  # macOS: F_FULLFSYNC, not plain fsync
                conn.execute("PRAGMA foreign_keys = ON")
                self.db = Database(conn, execute_plugins=False)
                self.db.register_function(casefold, deterministic=True, name="pr_casefold")
                migrate(self.db)
            chmod_private(self.path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, HistoryError) or not isinstance(exc, sqlite3.Error | OSError):
                raise
            lost = "it could not be opened or set up"
            err = translate(exc, self.path, self.busy_timeout, lost, "open it again")
            if err is None:
                raise
            raise err from exc
        self._closed = False

    # -- lifecycle

    def close(self) -> None:
        """Close the connection (idempotent). The last connection to close checkpoints the WAL."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.db.conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<History {str(self.path)!r}{' closed' if self._closed else ''}>"

    # -- transactions

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One `BEGIN IMMEDIATE ... COMMIT` (rolled back on any exception); nested calls join."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        conn = self.db.conn
        if conn.in_transaction:
            raise RuntimeError("the history connection has a stray open transaction")
        conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        self._made = []  # written to: a database of its own now, whoever made it
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        """A deferred transaction, so that several SELECTs see one snapshot."""
        if self._depth:
            yield
            return
        conn = self.db.conn
        conn.execute("BEGIN")
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _insert_audit(
        self,
        action: str,
        *,
        actor: str,
        patient_id: str | None = None,
        visit_id: str | None = None,
        detail: Any = None,
    ) -> int:
        table = self.db.table("audit")
        table.insert(
            {
                "at": utc_now(),
                "actor": actor,
                "action": action,
                "patient_id": patient_id,
                "visit_id": visit_id,
                "detail": None if detail is None else json.dumps(detail, sort_keys=True),
            }
        )
        assert table.last_rowid is not None
        return int(table.last_rowid)

    # -- a domain's own tables

    @contextlib.contextmanager
    def write(self, lost: str = NOT_SAVED) -> Iterator[sqlite3.Connection]:
        """The connection inside one `BEGIN IMMEDIATE ... COMMIT` under the instance lock, with
        the failures a user can act on as HistoryError (`lost` words a full disk). Audit rows
        written with `log` inside it are part of the same transaction."""
        with guard(self, lost), self._write():
            yield self.db.conn

    @guarded
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """Rows of one SELECT as dicts (column -> value)."""
        return self._rows(sql, params)

    # -- audit

    @guarded
    def log(
        self,
        action: str,
        *,
        actor: str = DEFAULT_ACTOR,
        patient_id: str | None = None,
        visit_id: str | None = None,
        detail: Any = None,
    ) -> int:
        """Append one audit row (the table refuses UPDATE and DELETE); returns its id."""
        if not isinstance(action, str) or not action:
            raise ValueError("action must be a non-empty string")
        with self._write():
            return self._insert_audit(
                action, actor=actor, patient_id=patient_id, visit_id=visit_id, detail=detail
            )

    @guarded
    def audit(self, patient_id: str | None = None) -> list[dict]:
        """Audit rows, oldest first (all, or one patient's); `detail` decoded."""
        if patient_id is None:
            rows = self._rows("SELECT * FROM audit ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM audit WHERE patient_id = ? ORDER BY id", (patient_id,))
        return [decode_json_columns("audit", row) for row in rows]

    # -- export, backup

    def _snapshot(self, patient_id: str | None) -> dict[str, tuple[list[str], list[dict]]]:
        """{table: (column names, rows)} for everything, or for one patient; one snapshot."""
        where = {
            "patients": ("WHERE id = ?", "id"),
            "visits": ("WHERE patient_id = ?", "created, rowid"),
            "suggestions": (
                "WHERE visit_id IN (SELECT id FROM visits WHERE patient_id = ?)",
                "rowid",
            ),
            "decisions": (
                "WHERE visit_id IN (SELECT id FROM visits WHERE patient_id = ?)",
                "rowid",
            ),
            "audit": ("WHERE patient_id = ?", "id"),
        }
        out = {}
        with self._read():
            if patient_id is not None:
                self._require_patient(patient_id)
            for table in TABLES:
                columns = [c.name for c in self.db.table(table).columns]
                clause, order = where[table]
                if patient_id is None:
                    rows = self._rows(f"SELECT * FROM {table} ORDER BY {order}")
                else:
                    rows = self._rows(
                        f"SELECT * FROM {table} {clause} ORDER BY {order}", (patient_id,)
                    )
                out[table] = (columns, rows)
        return out

    def _export(self, folder: str | os.PathLike[str], patient_id: str | None) -> list[Path]:
        data = self._snapshot(patient_id)
        migrations = [m["name"] for m in applied_migrations(self.db)]
        return write_export(folder, data, migrations, patient_id)

    @guarded
    def export_patient(
        self, patient_id: str, folder: str | os.PathLike[str], *, actor: str = DEFAULT_ACTOR
    ) -> list[Path]:
        """Write one patient's rows as `<table>.csv` (one per table) and `pocketrec.json` into
        `folder`, each file atomically (temp file, then rename). Returns the paths written."""
        paths = self._export(folder, patient_id)
        with self._write():
            self._insert_audit(
                "export_patient", actor=actor, patient_id=patient_id, detail={"folder": str(folder)}
            )
        return paths

    @guarded
    def export_all(
        self, folder: str | os.PathLike[str], *, actor: str = DEFAULT_ACTOR
    ) -> list[Path]:
        """Like `export_patient`, for the whole database."""
        paths = self._export(folder, None)
        with self._write():
            self._insert_audit("export_all", actor=actor, detail={"folder": str(folder)})
        return paths

    @guarded
    def backup(self, dest_path: str | os.PathLike[str], *, actor: str = DEFAULT_ACTOR) -> Path:
        """Copy the live database to `dest_path` with SQLite's online backup API (consistent even
        while the app writes), as one self-contained 0600 file (rollback journal, no -wal):
        written to a temporary file beside it, checked, then renamed over it.

        Refuses (HistoryError) when there was no database at `path` when this History opened
        it and nothing has been written since, after the destination's own checks: the empty
        database that opening made is closed and removed with the folders it needed, so a
        mistyped path creates nothing."""
        check_destination(self.path, Path(dest_path).expanduser())
        if self._made:
            made, self._made = self._made, []
            self.close()
            for file in sidecars(self.path):
                file.unlink(missing_ok=True)
            for folder in made[1:]:
                with contextlib.suppress(OSError):  # a folder someone else filled meanwhile
                    folder.rmdir()
            raise HistoryError(f"no history database at {self.path}: nothing to back up", self.path)
        dest = copy_database(self.db.conn, self.path, dest_path)
        with self._write():
            self._insert_audit("backup", actor=actor, detail={"dest": str(dest)})
        return dest


def restore(
    backup_path: str | os.PathLike[str],
    db_path: str | os.PathLike[str] | None = None,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    actor: str = DEFAULT_ACTOR,
) -> Path:
    """Replace the database at `db_path` (default: `default_db_path()`) with the backup's
    content, using SQLite's online backup API, then migrate it and audit the restore.

    Refuses a backup that is not a pocketrec database (no `_migrations` table) or fails
    `PRAGMA integrity_check`. A live file that is itself corrupted is moved aside to
    `<name>.corrupt-<UTC time>` first (it cannot be written through SQLite). Close every History
    on `db_path` first; a file held by another instance raises HistoryError.
    """
    source = Path(backup_path).expanduser()
    dest = Path(db_path).expanduser() if db_path is not None else default_db_path()
    restore_copy(source, dest, busy_timeout)
    with History(dest, busy_timeout=busy_timeout) as history:
        history.log("restore", actor=actor, detail={"from": str(source)})
    return dest
