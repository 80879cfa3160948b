"""File writing that a reader never sees half done, and file hashing.

Every file pocketrec writes for someone else to read (run folders, bundles, caches, settings,
exports) goes through `atomic_path` or a helper built on it: the data lands in a temporary file
beside the target, which is renamed over it only once complete; on any error the temporary file
is removed and the old target, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "install_dir",
    "json_text",
    "sha256_file",
    "staging_dir",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside `folder` survive a power cut (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str = ".tmp", durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer to fill; rename it over `path` when
    the block ends without error, remove it otherwise.

    The temporary file exists (empty, mode 0600) when the block starts, so writers that open
    by name work. `durable` fsyncs the file and the folder, for data that must survive a crash
    (the history's exports and settings), at the cost of two syncs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def json_text(obj: Any, *, compact: bool = False) -> str:
    """The project's two JSON spellings, newline-terminated, non-ASCII kept: `compact` for
    files sized for devices, one-space indents for files people read."""
    if compact:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, compact: bool = False, durable: bool = False
) -> None:
    atomic_write_text(path, json_text(obj, compact=compact), durable=durable)


def install_dir(tmp: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Put the finished folder `tmp` (a sibling of `out_dir`) in place of `out_dir`: renames
    only, so a reader sees the old folder or the new one, never a mix."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out_dir` to build a folder in; install it in place
    of `out_dir` when the block succeeds, delete it otherwise. A non-empty `out_dir` is only
    replaced with `force`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        install_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
