"""The local, private visit history: one SQLite file per device, owner-only, crash-safe.

This module is on the app's side of the dependency wall: the standard library and sqlite_utils
only.

- `default_db_path()` picks the file: `$POCKETREC_DB`, else `$FLET_APP_STORAGE_DATA/pocketrec.db`,
  else the platform's user data folder (created 0700);
- `History` opens it in WAL mode with `synchronous=FULL` (a visit that `save_visit` returned is on
  disk, even after SIGKILL or power loss), foreign keys on and a busy timeout, migrates it, and
  keeps every multi-row write in one `BEGIN IMMEDIATE ... COMMIT`;
- `restore()` copies a backup over the live file with SQLite's online backup API, after checking
  that the backup is a sound pocketrec database.

Every failure the clinic can act on is a `HistoryError` naming the file: a read-only location,
a full disk, a file held by another pocketrec instance, a corrupted file, an unknown patient.

All public methods of a `History` serialise on one lock and its connection may be used from any
thread: the app's async handlers hand saves and exports to `asyncio.to_thread` workers.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import io
import json
import os
import sqlite3
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from app.migrations import (
    DECISIONS,
    MIGRATIONS_TABLE,
    PROFILE_FIELDS,
    TABLES,
    applied_migrations,
    migrate,
)

APP_DIR_NAME = "pocketrec"
DB_FILE_NAME = "pocketrec.db"
EXPORT_JSON_NAME = "pocketrec.json"
EXPORT_FORMAT = "pocketrec-export/1"
DEFAULT_BUSY_TIMEOUT = 5.0
DEFAULT_ACTOR = "clinician"
JSON_COLUMNS = {"visits": ("diagnoses", "procedures"), "audit": ("detail",)}
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no space, over quota

__all__ = [
    "DB_FILE_NAME",
    "DEFAULT_BUSY_TIMEOUT",
    "History",
    "HistoryError",
    "default_db_path",
    "restore",
]

_T = TypeVar("_T")


class HistoryError(Exception):
    """A history database problem the user can act on; `path` is the file concerned."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


# ------------------------------------------------------------------ paths and permissions


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Files and folders created inside are owner-only (umask is process-wide: keep it short)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _ensure_private_dir(folder: Path) -> Path:
    """Create `folder` (and missing parents) 0700; an existing folder is left as it is."""
    if folder.is_dir():
        return folder
    try:
        with _private_umask():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(folder, 0o700)
    except OSError as exc:
        if _disk_full(exc):
            raise _full_disk(
                f"the folder {folder}", folder, "it was not created", "try again"
            ) from exc
        raise HistoryError(
            f"cannot create the folder {folder}: {exc.strerror or exc} "
            "(the location is read-only or not accessible)",
            folder,
        ) from exc
    return folder


def _user_data_dir() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(home / "AppData" / "Roaming")
        return Path(base) / APP_DIR_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_DIR_NAME
    xdg = os.environ.get("XDG_DATA_HOME")
    base_dir = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".local" / "share"
    return base_dir / APP_DIR_NAME


def default_db_path() -> Path:
    """Where the history lives: `$POCKETREC_DB`, else `$FLET_APP_STORAGE_DATA/pocketrec.db`, else
    the platform's user data folder (`$XDG_DATA_HOME` or `~/.local/share` on Linux,
    `~/Library/Application Support` on macOS, `%APPDATA%` on Windows) + `pocketrec/pocketrec.db`.

    The folder is created (0700) when missing.
    """
    explicit = os.environ.get("POCKETREC_DB")
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("FLET_APP_STORAGE_DATA"):
        path = Path(os.environ["FLET_APP_STORAGE_DATA"]).expanduser() / DB_FILE_NAME
    else:
        path = _user_data_dir() / DB_FILE_NAME
    _ensure_private_dir(path.parent)
    return path


def _sidecars(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]


def _chmod_private(path: Path) -> None:
    """Make the database file and its -wal/-shm owner-only (SQLite gives new -wal/-shm files the
    database file's mode, so this sticks)."""
    if os.name != "posix":
        return
    for file in _sidecars(path):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(file, 0o600)


def _disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL from SQLite, or ENOSPC / EDQUOT from our own file writes. Also
    SQLITE_IOERR_SHMSIZE: opening a cleanly closed database on a full disk cannot allocate the
    -shm file (SQLite reports a bare "disk I/O error" then)."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    code = getattr(exc, "sqlite_errorcode", None)  # extended code: the primary is its low byte
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE
    return "database or disk is full" in str(exc).lower()


def _full_disk(where: str, path: Path, lost: str, retry: str) -> HistoryError:
    """What a full disk cost and what to do. Nothing is ever half-written: SQLite rolls the
    transaction back, and our own writes go to a temporary file that is removed."""
    return HistoryError(
        f"the disk holding {where} is full: {lost} (nothing was half-written); "
        f"free some space and {retry}",
        path,
    )


def _translate(
    exc: BaseException,
    path: Path,
    busy_timeout: float,
    lost: str = "the change was not saved",
    retry: str = "save again",
) -> HistoryError | None:
    """A HistoryError for the SQLite failures a user can act on, else None; `lost` and `retry`
    word the full-disk message for the operation that failed."""
    if isinstance(exc, HistoryError):
        return exc
    if _disk_full(exc):
        return _full_disk(f"the history database {path}", path, lost, retry)
    message = str(exc).lower()
    if "locked" in message or "busy" in message:
        return HistoryError(
            f"the history database {path} is locked: another pocketrec instance holds it "
            f"(waited {busy_timeout:g} s); close the other instance and try again",
            path,
        )
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return HistoryError(
            f"the history database {path} is corrupted ({exc}); "
            "restore it from a backup (app.history.restore)",
            path,
        )
    if "unable to open" in message or "readonly" in message or "read-only" in message:
        return HistoryError(
            f"cannot create or write the history database {path} ({exc}): "
            "the location is read-only or not accessible",
            path,
        )
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return HistoryError(
            f"cannot create or write the history database {path} ({exc})",
            path,
        )
    return None


# what a full disk costs a write method (the default: "the change was not saved")
_LOST_WHEN_FULL = {
    "save_visit": "the visit was not saved",
    "add_patient": "the new patient was not saved",
    "update_patient": "the patient's changes were not saved",
}


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """Serialise on the instance lock and turn actionable SQLite errors into HistoryError."""

    @functools.wraps(method)
    def wrapper(self: History, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            if self._closed:
                raise HistoryError(f"the history database {self.path} is closed", self.path)
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.IntegrityError):  # a constraint: a programming error
                    raise
                lost = _LOST_WHEN_FULL.get(method.__name__, "the change was not saved")
                err = _translate(exc, self.path, self.busy_timeout, lost)
                if err is None:
                    raise
                raise err from exc

    return wrapper


# ------------------------------------------------------------------ small helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _codes(values: Iterable[Any], what: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a list of codes, not a string")
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what}: every code must be a non-empty string, got {value!r}")
        out.append(value)
    return out


def _profile_columns(profile: Mapping[str, Any] | None) -> dict[str, str | None]:
    profile = dict(profile or {})
    unknown = sorted(set(profile) - set(PROFILE_FIELDS))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; expected {list(PROFILE_FIELDS)}")
    out: dict[str, str | None] = {}
    for key, value in profile.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"profile field {key!r} must be a string or None, got {value!r}")
        out[key] = value if value else None
    return out


def _check_decisions(decisions: Mapping[str, str]) -> None:
    for code, decision in decisions.items():
        if decision not in DECISIONS:
            raise ValueError(f"decision for {code!r} is {decision!r}; expected one of {DECISIONS}")


def _display_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("display_name must be a non-empty string")
    return name.strip()


def _decode_json_columns(table: str, row: dict) -> dict:
    for column in JSON_COLUMNS.get(table, ()):
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    return row


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a 0600 temporary file beside `path`, fsync it, then rename it over."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            if _disk_full(exc):
                raise _full_disk(str(path), path, "the file was not written", "try again") from exc
            raise HistoryError(f"cannot write {path}: {exc.strerror or exc}", path) from exc
        raise


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=busy_timeout, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


# ------------------------------------------------------------------ the history


class History:
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
        _ensure_private_dir(self.path.parent)
        if self.path.is_dir():
            raise HistoryError(f"the history database {self.path} is a folder", self.path)
        conn: sqlite3.Connection | None = None
        try:
            with _private_umask():
                conn = _connect(self.path, self.busy_timeout)
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
                self.db.register_function(_casefold, deterministic=True, name="pr_casefold")
                migrate(self.db)
            _chmod_private(self.path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, HistoryError) or not isinstance(exc, sqlite3.Error | OSError):
                raise
            lost = "it could not be opened or set up"
            err = _translate(exc, self.path, self.busy_timeout, lost, "open it again")
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

    def _require_patient(self, patient_id: str) -> dict:
        rows = self._rows("SELECT * FROM patients WHERE id = ?", (patient_id,))
        if not rows:
            raise HistoryError(f"unknown patient {patient_id!r} in {self.path}", self.path)
        return rows[0]

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
                "at": _now(),
                "actor": actor,
                "action": action,
                "patient_id": patient_id,
                "visit_id": visit_id,
                "detail": None if detail is None else json.dumps(detail, sort_keys=True),
            }
        )
        assert table.last_rowid is not None
        return int(table.last_rowid)

    # -- patients

    @_guarded
    def add_patient(
        self,
        display_name: str,
        profile: Mapping[str, str | None] | None = None,
        *,
        actor: str = DEFAULT_ACTOR,
    ) -> str:
        """Create a patient; `profile` holds any of PROFILE_FIELDS. Returns the new id."""
        row: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "display_name": _display_name(display_name),
            "created": _now(),
        }
        fields = _profile_columns(profile)
        row.update({name: fields.get(name) for name in PROFILE_FIELDS})
        with self._write():
            self.db.table("patients").insert(row)
            self._insert_audit(
                "add_patient", actor=actor, patient_id=row["id"], detail={"fields": sorted(fields)}
            )
        return row["id"]

    @_guarded
    def update_patient(
        self,
        patient_id: str,
        display_name: str | None = None,
        profile: Mapping[str, str | None] | None = None,
        *,
        actor: str = DEFAULT_ACTOR,
    ) -> dict:
        """Change the name and/or profile fields given (a None/empty value clears a field).
        Returns the updated patient."""
        updates: dict[str, Any] = dict(_profile_columns(profile))
        if display_name is not None:
            updates["display_name"] = _display_name(display_name)
        with self._write():
            self._require_patient(patient_id)
            if updates:
                self.db.table("patients").update(patient_id, updates)
                self._insert_audit(
                    "update_patient",
                    actor=actor,
                    patient_id=patient_id,
                    detail={"fields": sorted(updates)},
                )
            return self._require_patient(patient_id)

    @_guarded
    def get_patient(self, patient_id: str) -> dict:
        """The patient's row (id, display_name, created and the profile fields)."""
        return self._require_patient(patient_id)

    @_guarded
    def profile(self, patient_id: str) -> dict[str, str]:
        """The patient's non-empty profile fields, as the recommender takes them."""
        row = self._require_patient(patient_id)
        return {name: row[name] for name in PROFILE_FIELDS if row[name]}

    @_guarded
    def search_patients(self, text: str = "", *, limit: int = 100) -> list[dict]:
        """Patients whose name contains `text` or whose id starts with it (case-insensitive,
        Unicode-aware); names that start with `text` come first. Empty text lists everyone."""
        needle = _casefold(text.strip())
        return self._rows(
            """
            SELECT * FROM patients
            WHERE ? = ''
               OR instr(pr_casefold(display_name), ?) > 0
               OR substr(id, 1, length(?)) = ?
            ORDER BY instr(pr_casefold(display_name), ?) <> 1, pr_casefold(display_name), id
            LIMIT ?
            """,
            (needle, needle, needle, needle, needle, int(limit)),
        )

    # -- visits

    @_guarded
    def save_visit(
        self,
        patient_id: str,
        diagnoses: Iterable[str],
        procedures: Iterable[str],
        suggestions: Sequence[Mapping[str, Any]],
        decisions: Mapping[str, str],
        note: str | None = None,
        bundle_name: str | None = None,
        bundle_version: str | None = None,
        actor: str = DEFAULT_ACTOR,
    ) -> str:
        """Record one visit, the suggestions as shown (rank = position, from 1) and the
        clinician's decisions {code: 'accepted'|'rejected'|'added'}, with its audit row, in ONE
        transaction: when this returns, all of it is durably on disk; if it raises, none is."""
        dx = _codes(diagnoses, "diagnoses")
        px = _codes(procedures, "procedures")
        decisions = dict(decisions)
        _codes(decisions, "decision codes")
        _check_decisions(decisions)
        visit_id = uuid.uuid4().hex
        suggestion_rows = []
        for rank, item in enumerate(suggestions, start=1):
            try:
                code, probability = item["code"], float(item["probability"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"suggestion #{rank} needs 'code' and a numeric 'probability': {item!r}"
                ) from exc
            suggestion_rows.append(
                {
                    "visit_id": visit_id,
                    "rank": rank,
                    "drug_code": _codes([code], "suggestion code")[0],
                    "probability": probability,
                    "suggested": 1 if item.get("suggested") else 0,
                }
            )
        decision_rows = [
            {"visit_id": visit_id, "drug_code": code, "decision": decision}
            for code, decision in decisions.items()
        ]
        counts = {d: sum(1 for v in decisions.values() if v == d) for d in DECISIONS}
        with self._write():
            self._require_patient(patient_id)
            self.db.table("visits").insert(
                {
                    "id": visit_id,
                    "patient_id": patient_id,
                    "created": _now(),
                    "diagnoses": json.dumps(dx),
                    "procedures": json.dumps(px),
                    "note": note,
                    "bundle_name": bundle_name,
                    "bundle_version": bundle_version,
                    "status": "saved",
                }
            )
            if suggestion_rows:
                self.db.table("suggestions").insert_all(suggestion_rows)
            if decision_rows:
                self.db.table("decisions").insert_all(decision_rows)
            self._insert_audit(
                "save_visit",
                actor=actor,
                patient_id=patient_id,
                visit_id=visit_id,
                detail={
                    "suggestions": len(suggestion_rows),
                    "decisions": counts,
                    "bundle_name": bundle_name,
                    "bundle_version": bundle_version,
                },
            )
        return visit_id

    @_guarded
    def timeline(self, patient_id: str) -> list[dict]:
        """The patient's visits, newest first; each with `diagnoses` and `procedures` (lists),
        `suggestions` ([{rank, code, probability, suggested}] by rank) and `decisions`
        ({code: decision})."""
        with self._read():
            self._require_patient(patient_id)
            visits = self._rows(
                "SELECT * FROM visits WHERE patient_id = ? ORDER BY created DESC, rowid DESC",
                (patient_id,),
            )
            suggestions = self._rows(
                """
                SELECT s.visit_id, s.rank, s.drug_code, s.probability, s.suggested
                FROM suggestions s JOIN visits v ON v.id = s.visit_id
                WHERE v.patient_id = ? ORDER BY s.visit_id, s.rank
                """,
                (patient_id,),
            )
            decisions = self._rows(
                """
                SELECT d.visit_id, d.drug_code, d.decision
                FROM decisions d JOIN visits v ON v.id = d.visit_id
                WHERE v.patient_id = ? ORDER BY d.rowid
                """,
                (patient_id,),
            )
        by_visit: dict[str, dict] = {}
        for visit in visits:
            _decode_json_columns("visits", visit)
            visit["suggestions"] = []
            visit["decisions"] = {}
            by_visit[visit["id"]] = visit
        for s in suggestions:
            by_visit[s["visit_id"]]["suggestions"].append(
                {
                    "rank": s["rank"],
                    "code": s["drug_code"],
                    "probability": s["probability"],
                    "suggested": bool(s["suggested"]),
                }
            )
        for d in decisions:
            by_visit[d["visit_id"]]["decisions"][d["drug_code"]] = d["decision"]
        return visits

    @_guarded
    def history_for_model(self, patient_id: str) -> list[tuple[list[str], list[str], list[str]]]:
        """(diagnoses, procedures, medications) per visit, oldest first, where medications are
        the codes the clinician accepted or added: the recommender's `history` argument."""
        out = []
        for visit in reversed(self.timeline(patient_id)):
            given = [code for code, d in visit["decisions"].items() if d in ("accepted", "added")]
            out.append((visit["diagnoses"], visit["procedures"], given))
        return out

    # -- audit

    @_guarded
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

    @_guarded
    def audit(self, patient_id: str | None = None) -> list[dict]:
        """Audit rows, oldest first (all, or one patient's); `detail` decoded."""
        if patient_id is None:
            rows = self._rows("SELECT * FROM audit ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM audit WHERE patient_id = ? ORDER BY id", (patient_id,))
        return [_decode_json_columns("audit", row) for row in rows]

    # -- news

    @_guarded
    def add_news_click(self, item_id: str, *, actor: str = DEFAULT_ACTOR) -> int:
        """Record that the reader opened `item_id`; returns the click's id."""
        if not isinstance(item_id, str) or not item_id:
            raise ValueError("item_id must be a non-empty string")
        with self._write():
            cursor = self.db.conn.execute(
                "INSERT INTO news_clicks (item_id, at) VALUES (?, ?)", (item_id, _now())
            )
            self._insert_audit("news_click", actor=actor, detail={"item_id": item_id})
            return int(cursor.lastrowid or 0)

    @_guarded
    def news_clicks(self) -> list[str]:
        """The reader's clicked item ids, oldest first (an item opened twice is there twice)."""
        return [r[0] for r in self.db.conn.execute("SELECT item_id FROM news_clicks ORDER BY id")]

    @_guarded
    def save_news_articles(
        self, articles: Sequence[Mapping[str, str]], *, source: str, actor: str = DEFAULT_ACTOR
    ) -> tuple[int, int]:
        """Insert or replace imported articles (item_id, title, category, abstract, url) in one
        transaction; returns (new, replaced)."""
        now = _now()
        rows = [
            (
                a["item_id"],
                a["title"],
                a.get("category", ""),
                a.get("abstract", ""),
                a.get("url", ""),
                source,
                now,
            )
            for a in articles
        ]
        with self._write():
            conn = self.db.conn
            wanted = {row[0] for row in rows}
            known = {r[0] for r in conn.execute("SELECT item_id FROM news_articles")} & wanted
            conn.executemany(
                "INSERT OR REPLACE INTO news_articles "
                "(item_id, title, category, abstract, url, source, imported) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._insert_audit(
                "news_import", actor=actor, detail={"source": source, "articles": len(rows)}
            )
        return len(wanted - known), len(known)

    @_guarded
    def news_articles(self) -> dict[str, dict]:
        """Imported articles: item id -> {title, category, abstract, url, source, imported}."""
        rows = self._rows("SELECT * FROM news_articles ORDER BY imported, item_id")
        return {r.pop("item_id"): r for r in rows}

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
        target = _ensure_private_dir(Path(folder).expanduser())
        written = []
        for table, (columns, rows) in data.items():
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(rows)
            path = target / f"{table}.csv"
            _atomic_write(path, buffer.getvalue().encode("utf-8"))
            written.append(path)
        document = {
            "format": EXPORT_FORMAT,
            "exported_at": _now(),
            "scope": "all" if patient_id is None else "patient",
            "patient_id": patient_id,
            "migrations": [m["name"] for m in applied_migrations(self.db)],
            "tables": {
                table: [_decode_json_columns(table, dict(row)) for row in rows]
                for table, (_, rows) in data.items()
            },
        }
        path = target / EXPORT_JSON_NAME
        _atomic_write(path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode())
        written.append(path)
        return written

    @_guarded
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

    @_guarded
    def export_all(
        self, folder: str | os.PathLike[str], *, actor: str = DEFAULT_ACTOR
    ) -> list[Path]:
        """Like `export_patient`, for the whole database."""
        paths = self._export(folder, None)
        with self._write():
            self._insert_audit("export_all", actor=actor, detail={"folder": str(folder)})
        return paths

    @_guarded
    def backup(self, dest_path: str | os.PathLike[str], *, actor: str = DEFAULT_ACTOR) -> Path:
        """Copy the live database to `dest_path` with SQLite's online backup API (consistent even
        while the app writes), as one self-contained 0600 file (rollback journal, no -wal):
        written to a temporary file beside it, checked, then renamed over it."""
        dest = Path(dest_path).expanduser()
        if dest.exists() and dest.resolve() == self.path.resolve():
            raise HistoryError(f"cannot back up {self.path} onto itself", dest)
        _ensure_private_dir(dest.parent)
        try:
            with _private_umask():
                fd, tmp_name = tempfile.mkstemp(
                    prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent
                )
        except OSError as exc:
            if _disk_full(exc):
                raise _full_disk(
                    f"the backup {dest}", dest, "the backup was not written", "back up again"
                ) from exc
            raise HistoryError(
                f"cannot write the backup {dest}: {exc.strerror or exc}", dest
            ) from exc
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            target = sqlite3.connect(str(tmp))
            try:
                self.db.conn.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")
                (status,) = target.execute("PRAGMA integrity_check").fetchone()
                if status != "ok":
                    raise HistoryError(f"the backup copy {tmp} failed its check: {status}", tmp)
            finally:
                target.close()
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException as exc:
            for file in _sidecars(tmp):
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
            if isinstance(exc, OSError | sqlite3.Error) and _disk_full(exc):
                raise _full_disk(  # the temporary copy and its journal were removed above
                    f"the backup {dest}", dest, "the backup was not written", "back up again"
                ) from exc
            if isinstance(exc, OSError | sqlite3.Error) and not isinstance(exc, HistoryError):
                raise HistoryError(f"cannot write the backup {dest}: {exc}", dest) from exc
            raise
        _chmod_private(dest)
        with self._write():
            self._insert_audit("backup", actor=actor, detail={"dest": str(dest)})
        return dest


def _casefold(value: Any) -> str:
    return "" if value is None else str(value).casefold()


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
        conn = _connect(path, busy_timeout)
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
    _check_pocketrec_file(source)
    if dest.exists() and dest.resolve() == source.resolve():
        raise HistoryError(f"cannot restore {dest} from itself", dest)
    _ensure_private_dir(dest.parent)
    try:
        if dest.exists() and not _is_sound(dest, busy_timeout):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            for file in _sidecars(dest):
                if file.exists():
                    file.rename(file.with_name(f"{file.name}.corrupt-{stamp}"))
        with _private_umask():
            src = _open_source(source)
            try:
                target = _connect(dest, busy_timeout)
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
        _chmod_private(dest)
    except (sqlite3.Error, OSError) as exc:
        err = _translate(exc, dest, busy_timeout, "the backup was not restored", "restore again")
        if err is None:
            raise
        raise err from exc
    with History(dest, busy_timeout=busy_timeout) as history:
        history.log("restore", actor=actor, detail={"from": str(source)})
    return dest
