"""Where the history lives, keeping it owner-only, and opening it.

`default_db_path()` picks the file: `$POCKETREC_DB`, else `$FLET_APP_STORAGE_DATA/pocketrec.db`,
else the platform's user data folder (created 0700). Every folder the history creates is 0700
and the database file with its -wal/-shm is 0600.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from app.storage.errors import HistoryError, disk_full, full_disk

APP_DIR_NAME = "pocketrec"
DB_FILE_NAME = "pocketrec.db"

__all__ = [
    "DB_FILE_NAME",
    "chmod_private",
    "connect",
    "default_db_path",
    "ensure_private_dir",
    "private_umask",
    "sidecars",
]


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders created inside are owner-only (umask is process-wide: keep it short)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def ensure_private_dir(folder: Path) -> Path:
    """Create `folder` (and missing parents) 0700; an existing folder is left as it is."""
    if folder.is_dir():
        return folder
    try:
        with private_umask():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(folder, 0o700)
    except OSError as exc:
        if disk_full(exc):
            raise full_disk(
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
    ensure_private_dir(path.parent)
    return path


def sidecars(path: Path) -> list[Path]:
    """The database file and the -wal, -shm and -journal files SQLite keeps beside it."""
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]


def chmod_private(path: Path) -> None:
    """Make the database file and its -wal/-shm owner-only (SQLite gives new -wal/-shm files the
    database file's mode, so this sticks)."""
    if os.name != "posix":
        return
    for file in sidecars(path):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(file, 0o600)


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the database file that waits up to `busy_timeout` s for another writer
    and may be used from any thread (callers serialise on their own lock)."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn
