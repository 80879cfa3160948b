"""What can go wrong with the history database, in words the clinic can act on.

Every failure a user can do something about is a `HistoryError` naming the file: a read-only
location, a full disk, a file held by another pocketrec instance, a corrupted file, an unknown
patient. `translate` turns SQLite's and the OS's errors into one; `guard` (and the `guarded`
method decorator) wraps a History operation in the instance lock and that translation.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no space, over quota
NOT_SAVED = "the change was not saved"
# what a full disk costs a write method (the default: NOT_SAVED)
LOST_WHEN_FULL = {
    "save_visit": "the visit was not saved",
    "add_patient": "the new patient was not saved",
    "update_patient": "the patient's changes were not saved",
}

__all__ = [
    "HistoryError",
    "disk_full",
    "full_disk",
    "guard",
    "guarded",
    "translate",
]

_T = TypeVar("_T")


class HistoryError(Exception):
    """A history database problem the user can act on; `path` is the file concerned."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL from SQLite, or ENOSPC / EDQUOT from our own file writes. Also
    SQLITE_IOERR_SHMSIZE: opening a cleanly closed database on a full disk cannot allocate the
    -shm file (SQLite reports a bare "disk I/O error" then)."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    code = getattr(exc, "sqlite_errorcode", None)  # extended code: the primary is its low byte
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE
    return "database or disk is full" in str(exc).lower()


def full_disk(where: str, path: Path, lost: str, retry: str) -> HistoryError:
    """What a full disk cost and what to do. Nothing is ever half-written: SQLite rolls the
    transaction back, and our own writes go to a temporary file that is removed."""
    return HistoryError(
        f"the disk holding {where} is full: {lost} (nothing was half-written); "
        f"free some space and {retry}",
        path,
    )


def translate(
    exc: BaseException,
    path: Path,
    busy_timeout: float,
    lost: str = NOT_SAVED,
    retry: str = "save again",
) -> HistoryError | None:
    """A HistoryError for the SQLite failures a user can act on, else None; `lost` and `retry`
    word the full-disk message for the operation that failed."""
    if isinstance(exc, HistoryError):
        return exc
    if disk_full(exc):
        return full_disk(f"the history database {path}", path, lost, retry)
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
            "restore it from a backup (app.storage.database.restore)",
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


@contextlib.contextmanager
def guard(history: Any, lost: str = NOT_SAVED) -> Iterator[None]:
    """Hold `history`'s lock, refuse a closed one, and turn actionable SQLite errors into
    HistoryError (`lost` words a full disk); a constraint violation is a programming error and
    stays an sqlite3.IntegrityError."""
    with history._lock:
        if history._closed:
            raise HistoryError(f"the history database {history.path} is closed", history.path)
        try:
            yield
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise
            err = translate(exc, history.path, history.busy_timeout, lost)
            if err is None:
                raise
            raise err from exc


def guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """A History method under `guard`, its full-disk wording from LOST_WHEN_FULL."""
    lost = LOST_WHEN_FULL.get(method.__name__, NOT_SAVED)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
        with guard(self, lost):
            return method(self, *args, **kwargs)

    return wrapper
