"""Copies of the history out and back in: CSV + JSON exports, backups, restores.

- `write_export` writes one snapshot of the tables as `<table>.csv` and `pocketrec.json`, each
  file atomically (temporary file, fsync, rename);
- `copy_database` copies the live database with SQLite's online backup API (consistent even
  while the app writes) into one self-contained 0600 file;
- `restore_copy` copies a backup over the live file, after checking that the backup is a sound
  pocketrec database; `app.storage.database.restore` calls it, then migrates and audits.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from app.storage.errors import HistoryError, disk_full, full_disk, translate
from app.storage.migrations import MIGRATIONS_TABLE, decode_json_columns, utc_now
from app.storage.paths import (
    chmod_private,
    connect,
    ensure_private_dir,
    private_umask,
    sidecars,
)
from contract.files import atomic_write_bytes, fsync_dir

EXPORT_JSON_NAME = "pocketrec.json"
EXPORT_FORMAT = "pocketrec-export/1"

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_JSON_NAME",
    "check_destination",
    "copy_database",
    "restore_copy",
    "write_export",
]

Snapshot = dict[str, tuple[list[str], list[dict]]]  # table -> (column names, rows)


# ------------------------------------------------------------------ export


def _write_file(path: Path, data: bytes) -> None:
    """`data` into `path` atomically and durably (`contract.files`: a 0600 temporary file
    beside it, fsynced, renamed over it); a failure is a HistoryError naming the file."""
    try:
        atomic_write_bytes(path, data, durable=True)
    except OSError as exc:
        if disk_full(exc):
            raise full_disk(str(path), path, "the file was not written", "try again") from exc
        raise HistoryError(f"cannot write {path}: {exc.strerror or exc}", path) from exc


def write_export(
    folder: str | os.PathLike[str],
    data: Snapshot,
    migrations: list[str],
    patient_id: str | None,
) -> list[Path]:
    """`data` as `<table>.csv` (one per table) and `pocketrec.json` in `folder` (created 0700);
    `patient_id` None means the whole database. Returns the paths written."""
    target = ensure_private_dir(Path(folder).expanduser())
    written = []
    for table, (columns, rows) in data.items():
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        path = target / f"{table}.csv"
        _write_file(path, buffer.getvalue().encode("utf-8"))
        written.append(path)
    document = {
        "format": EXPORT_FORMAT,
        "exported_at": utc_now(),
        "scope": "all" if patient_id is None else "patient",
        "patient_id": patient_id,
        "migrations": migrations,
        "tables": {
            table: [decode_json_columns(table, dict(row)) for row in rows]
            for table, (_, rows) in data.items()
        },
    }
    path = target / EXPORT_JSON_NAME
    _write_file(path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode())
    written.append(path)
    return written


# ------------------------------------------------------------------ backup


def check_destination(live: Path, dest: Path) -> None:
    """Refuse a backup destination that is the live file `live` or a folder, and make its
    folder (0700); HistoryError naming it otherwise."""
    if dest.exists() and dest.resolve() == live.resolve():
        raise HistoryError(f"cannot back up {live} onto itself", dest)
    if dest.is_dir():
        raise HistoryError(f"cannot write the backup {dest}: it is a folder", dest)
    ensure_private_dir(dest.parent)


def copy_database(conn: sqlite3.Connection, live: Path, dest_path: str | os.PathLike[str]) -> Path:
    """Copy the database open on `conn` (the file `live`) to `dest_path` as one self-contained
    0600 file (rollback journal, no -wal): written to a temporary file beside it, checked with
    `PRAGMA integrity_check`, then renamed over it."""
    dest = Path(dest_path).expanduser()
    check_destination(live, dest)
    try:
        with private_umask():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        if disk_full(exc):
            raise full_disk(
                f"the backup {dest}", dest, "the backup was not written", "back up again"
            ) from exc
        raise HistoryError(f"cannot write the backup {dest}: {exc.strerror or exc}", dest) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        target = sqlite3.connect(str(tmp))
        try:
            conn.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
            (status,) = target.execute("PRAGMA integrity_check").fetchone()
            if status != "ok":
                raise HistoryError(f"the backup copy {tmp} failed its check: {status}", tmp)
        finally:
            target.close()
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException as exc:
        for file in sidecars(tmp):
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
        if isinstance(exc, OSError | sqlite3.Error) and disk_full(exc):
            raise full_disk(  # the temporary copy and its journal were removed above
                f"the backup {dest}", dest, "the backup was not written", "back up again"
            ) from exc
        if isinstance(exc, OSError | sqlite3.Error) and not isinstance(exc, HistoryError):
            raise HistoryError(f"cannot write the backup {dest}: {exc}", dest) from exc
        raise
    chmod_private(dest)
    return dest


# ------------------------------------------------------------------ restore


def _open_source(path: Path) -> sqlite3.Connection:
    """Open a backup for reading: read-only, except a WAL-mode file (a copied live database),
    which a read-only connection could not tidy up after (it would leave -wal/-shm behind)."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02":
        return sqlite3.connect(str(path))
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _check_pocketrec_file(path: Path) -> None:
    """Raise HistoryError unless `path` is a sound SQLite file with pocketrec's `_migrations`."""
    if not path.is_file():
        raise HistoryError(f"no backup file at {path}", path)
    try:
        conn = _open_source(path)
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"cannot open the backup {path}: {exc}", path) from exc
    try:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
        ).fetchone()
        if row is None:
            raise HistoryError(
                f"{path} is not a pocketrec database (it has no {MIGRATIONS_TABLE} table); "
                "refusing to restore it",
                path,
            )
        (status,) = conn.execute("PRAGMA integrity_check").fetchone()
        if status != "ok":
            raise HistoryError(
                f"the backup {path} is corrupted (integrity_check: {status}); refusing to restore",
                path,
            )
    except sqlite3.DatabaseError as exc:
        raise HistoryError(
            f"{path} is not a pocketrec database or is corrupted ({exc}); refusing to restore it",
            path,
        ) from exc
    finally:
        conn.close()


def _is_sound(path: Path, busy_timeout: float) -> bool:
    """False when the live file is unreadable as a database (so the backup API cannot write it)."""
    try:
        conn = connect(path, busy_timeout)
    except sqlite3.Error:
        return False
    try:
        (status,) = conn.execute("PRAGMA quick_check").fetchone()
        return status == "ok"
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            raise
        return False
    finally:
        conn.close()


def restore_copy(source: Path, dest: Path, busy_timeout: float) -> None:
    """Replace the database at `dest` with the content of the backup `source`, using SQLite's
    online backup API.

    Refuses a backup that is not a pocketrec database (no `_migrations` table) or fails
    `PRAGMA integrity_check`. A live file that is itself corrupted is moved aside to
    `<name>.corrupt-<UTC time>` first (it cannot be written through SQLite). A file held by
    another instance raises HistoryError.
    """
    _check_pocketrec_file(source)
    if dest.exists() and dest.resolve() == source.resolve():
        raise HistoryError(f"cannot restore {dest} from itself", dest)
    ensure_private_dir(dest.parent)
    try:
        if dest.exists() and not _is_sound(dest, busy_timeout):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            for file in sidecars(dest):
                if file.exists():
                    file.rename(file.with_name(f"{file.name}.corrupt-{stamp}"))
        with private_umask():
            src = _open_source(source)
            try:
                target = connect(dest, busy_timeout)
                try:
                    # fail fast (after the busy timeout) if another instance holds the file:
                    # the backup loop itself would retry a busy destination forever
                    target.execute("BEGIN IMMEDIATE")
                    target.execute("ROLLBACK")
                    src.backup(target)
                finally:
                    target.close()
            finally:
                src.close()
        chmod_private(dest)
    except (sqlite3.Error, OSError) as exc:
        err = translate(exc, dest, busy_timeout, "the backup was not restored", "restore again")
        if err is None:
            raise
        raise err from exc
